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

    /// A token endpoint on loopback: records each form body and hands out a token valid for an hour.
    async fn token_server(status: u16) -> (String, std::sync::Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // Headers, then a body of content-length bytes.
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            if let Ok(mut l) = log.lock() {
                                l.push(format!("{}\n{}", text.lines().next().unwrap_or(""), &text[end + 4..]));
                            }
                            break;
                        }
                    }
                }
                let body = r#"{"token_type":"Bearer","expires_in":3600,"access_token":"tok-1"}"#;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_token_is_fetched_with_the_client_credentials_flow_and_cached() {
        let (authority, seen) = token_server(200).await;
        let c = ClientSecretCredential::new(&authority, "tid", "cid", "sec".into()).expect("cred");
        let scope = ["https://acct.documents.azure.com/.default"];
        let t = c.get_token(&scope, None).await.expect("token");
        assert_eq!(t.token.secret(), "tok-1");
        assert!(t.expires_on > OffsetDateTime::now_utc() + time::Duration::minutes(59));
        let again = c.get_token(&scope, None).await.expect("cached token");
        assert_eq!(again.token.secret(), "tok-1");
        let requests = seen.lock().expect("log").clone();
        assert_eq!(requests.len(), 1, "the second call is served from the cache: {requests:?}");
        assert!(requests[0].starts_with("POST /tid/oauth2/v2.0/token "), "{}", requests[0]);
        assert!(requests[0].ends_with(&c.body(&scope)), "{}", requests[0]);
    }

    #[tokio::test]
    async fn a_refused_token_request_is_a_credential_error() {
        let (authority, _) = token_server(401).await;
        let c = ClientSecretCredential::new(&authority, "tid", "cid", "wrong".into()).expect("cred");
        let e = c.get_token(&["s"], None).await.expect_err("refused");
        assert_eq!(*e.kind(), azure_core::error::ErrorKind::Credential);
        assert!(!e.to_string().contains("wrong"), "the secret is not in the error");
    }
}
