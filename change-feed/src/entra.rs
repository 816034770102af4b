//! Entra ID (Azure AD) auth for Cosmos DB: a service principal's client-credentials flow
//! (`POST {authority}/{tenant}/oauth2/v2.0/token`), tokens cached until a minute before they expire.

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use std::fmt;
use std::sync::Mutex;
use time::OffsetDateTime;

pub struct ClientSecretCredential {
    token_url: reqwest::Url,
    client_id: String,
    secret: String,
    http: reqwest::Client,
    cached: Mutex<Option<(String, AccessToken)>>,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("ClientSecretCredential").field("token_url", &self.token_url.as_str()).finish_non_exhaustive()
    }
}

/// `application/x-www-form-urlencoded` value encoding.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

impl ClientSecretCredential {
    pub fn new(authority: &str, tenant: &str, client_id: &str, secret: String) -> Result<Self, String> {
        let base = authority.trim_end_matches('/');
        let token_url = reqwest::Url::parse(&format!("{base}/{}/oauth2/v2.0/token", form_encode(tenant)))
            .map_err(|e| format!("authority: {e}"))?;
        producer::install_tls_provider();
        let http = reqwest::Client::builder().build().map_err(|e| e.to_string())?;
        Ok(Self { token_url, client_id: client_id.to_owned(), secret, http, cached: Mutex::new(None) })
    }

    /// The form body of the token request.
    pub fn body(&self, scopes: &[&str]) -> String {
        format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
            form_encode(&self.client_id),
            form_encode(&self.secret),
            form_encode(&scopes.join(" "))
        )
    }
}

#[async_trait::async_trait]
impl TokenCredential for ClientSecretCredential {
    async fn get_token(&self, scopes: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        if let Ok(c) = self.cached.lock() {
            if let Some((k, t)) = c.as_ref() {
                if *k == key && t.expires_on > OffsetDateTime::now_utc() + time::Duration::minutes(1) {
                    return Ok(t.clone());
                }
            }
        }
        let fail = |what: String| azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, what);
        let res = self
            .http
            .post(self.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(self.body(scopes))
            .send()
            .await
            .map_err(|e| fail(format!("token request failed: {e}")))?;
        let status = res.status();
        if !status.is_success() {
            return Err(fail(format!("token endpoint answered {status}")));
        }
        let t: TokenResponse = res.json().await.map_err(|e| fail(format!("token response: {e}")))?;
        let token = AccessToken::new(
            Secret::from(t.access_token),
            OffsetDateTime::now_utc() + time::Duration::seconds(t.expires_in),
        );
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((key, token.clone()));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_follows_the_html_rules() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(form_encode("https://cosmos.azure.com/.default"), "https%3A%2F%2Fcosmos.azure.com%2F.default");
    }

    #[test]
    fn token_request_body_and_url() {
        let c = ClientSecretCredential::new("https://login.example/", "tid", "cid", "s&cret".into()).expect("cred");
        assert_eq!(c.token_url.as_str(), "https://login.example/tid/oauth2/v2.0/token");
        assert_eq!(
            c.body(&["https://acct.documents.azure.com/.default"]),
            "grant_type=client_credentials&client_id=cid&client_secret=s%26cret&scope=https%3A%2F%2Facct.documents.azure.com%2F.default"
        );
        assert!(!format!("{c:?}").contains("s&cret"));
    }
}
