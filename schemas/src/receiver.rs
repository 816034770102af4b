//! Alert receivers: where a tenant's alerts are delivered. Secrets (webhook URLs, signing secrets, routing keys)
//! are held in [`Secret`], which never prints its value and is masked in API answers.

use crate::field::FieldError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;

/// A secret value. `Debug` and `Display` print `***`; serialising it for an API answer masks it (see
/// [`Receiver::masked`]); only the delivery code reads it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// `****` plus the last 4 characters, for showing which secret is configured.
    pub fn hint(&self) -> String {
        let tail: String = self.0.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        format!("****{tail}")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

// Stored in the configuration log in clear (that topic must be protected like a secret store); never logged.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Receiver {
    /// Generic webhook: JSON body, `X-Evstream-Signature: sha256=<hex HMAC of the body>` when a secret is set.
    Webhook {
        url: Secret,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<Secret>,
    },
    /// Slack incoming webhook.
    Slack {
        #[serde(rename = "webhookUrl")]
        webhook_url: Secret,
    },
    /// PagerDuty Events API v2.
    Pagerduty {
        #[serde(rename = "routingKey")]
        routing_key: Secret,
        /// The Events API endpoint; default `https://events.pagerduty.com/v2/enqueue`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// Microsoft Teams incoming webhook.
    Teams {
        #[serde(rename = "webhookUrl")]
        webhook_url: Secret,
    },
    /// E-mail over SMTP: STARTTLS by default (`tls`), optional AUTH with `username`/`password`.
    Email {
        host: String,
        #[serde(default = "smtp_port")]
        port: u16,
        from: String,
        to: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<Secret>,
        #[serde(default)]
        tls: SmtpTls,
        /// PEM of a CA that signs the server's certificate, trusted besides the system's roots (an internal relay).
        #[serde(default, rename = "caCertificate", skip_serializing_if = "Option::is_none")]
        ca_certificate: Option<String>,
    },
}

/// How an e-mail receiver secures its SMTP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Upgrade with STARTTLS, verifying the certificate; a server that cannot is refused (never sent in clear).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// Plain SMTP, for a relay on a trusted network.
    None,
}

fn smtp_port() -> u16 {
    25
}

/// A plausible mailbox: `local@domain`, no spaces or angle brackets (they would let a header be injected).
fn mailbox(s: &str) -> bool {
    let ok_chars = !s.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
    ok_chars
        && s.len() <= 254
        && s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && (d.contains('.') || d == "localhost"))
}

pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

fn http_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.len() <= 2048 && !s.chars().any(char::is_whitespace)
}

impl Receiver {
    pub fn from_json(v: Value) -> Result<Self, Vec<FieldError>> {
        let r: Receiver = crate::field::deserialize(v, "type")?;
        let bad = |f: &str| Err(vec![FieldError::new(f, "invalid_url", "an http(s) URL")]);
        // A document read back from the API shows secrets masked; storing the mask would break the receiver.
        let masked = |s: &Secret| s.expose().starts_with("****");
        let masked_field = match &r {
            Receiver::Webhook { secret: Some(s), .. } if masked(s) => Some("secret"),
            Receiver::Pagerduty { routing_key, .. } if masked(routing_key) => Some("routingKey"),
            Receiver::Email { password: Some(p), .. } if masked(p) => Some("password"),
            _ => None,
        };
        if let Some(f) = masked_field {
            return Err(vec![FieldError::new(
                f,
                "masked_secret",
                "send the secret itself, not the masked value the API shows",
            )]);
        }
        match &r {
            Receiver::Webhook { url, .. } if !http_url(url.expose()) => bad("url"),
            Receiver::Slack { webhook_url } | Receiver::Teams { webhook_url } if !http_url(webhook_url.expose()) => {
                bad("webhookUrl")
            }
            Receiver::Pagerduty { url: Some(u), .. } if !http_url(u) => bad("url"),
            Receiver::Pagerduty { routing_key, .. }
                if routing_key.expose().is_empty() || routing_key.expose().len() > 64 =>
            {
                Err(vec![FieldError::new("routingKey", "invalid_value", "a PagerDuty integration (routing) key")])
            }
            Receiver::Email { host, .. }
                if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c == '/') =>
            {
                Err(vec![FieldError::new("host", "invalid_value", "an SMTP host name or address")])
            }
            Receiver::Email { ca_certificate: Some(pem), .. }
                if pem.len() > 64 * 1024 || !pem.contains("-----BEGIN CERTIFICATE-----") =>
            {
                Err(vec![FieldError::new("caCertificate", "invalid_value", "a PEM certificate (at most 64 KiB)")])
            }
            Receiver::Email { from, .. } if !mailbox(from) => {
                Err(vec![FieldError::new("from", "invalid_address", "an e-mail address")])
            }
            Receiver::Email { to, .. } if to.is_empty() || to.len() > 50 => {
                Err(vec![FieldError::new("to", "invalid_value", "1-50 e-mail addresses")])
            }
            Receiver::Email { to, .. } if !to.iter().all(|a| mailbox(a)) => {
                let i = to.iter().position(|a| !mailbox(a)).unwrap_or(0);
                Err(vec![FieldError::new(format!("to[{i}]"), "invalid_address", "an e-mail address")])
            }
            _ => Ok(r),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Receiver::Webhook { .. } => "webhook",
            Receiver::Slack { .. } => "slack",
            Receiver::Pagerduty { .. } => "pagerduty",
            Receiver::Teams { .. } => "teams",
            Receiver::Email { .. } => "email",
        }
    }

    /// The receiver as an API answer shows it: every secret masked.
    pub fn masked(&self) -> Value {
        match self {
            Receiver::Webhook { url, secret } => {
                serde_json::json!({"type": "webhook", "url": url.hint(), "secret": secret.as_ref().map(Secret::hint)})
            }
            Receiver::Slack { webhook_url } => serde_json::json!({"type": "slack", "webhookUrl": webhook_url.hint()}),
            Receiver::Pagerduty { routing_key, url } => {
                serde_json::json!({"type": "pagerduty", "routingKey": routing_key.hint(), "url": url})
            }
            Receiver::Teams { webhook_url } => serde_json::json!({"type": "teams", "webhookUrl": webhook_url.hint()}),
            Receiver::Email { host, port, from, to, username, password, tls, ca_certificate } => serde_json::json!({
                "type": "email", "host": host, "port": port, "from": from, "to": to, "username": username,
                "password": password.as_ref().map(Secret::hint), "tls": tls, "caCertificate": ca_certificate
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_never_print() {
        let r = Receiver::from_json(
            json!({"type": "slack", "webhookUrl": "https://hooks.slack.com/services/T0/B0/abcdefsecret"}),
        )
        .unwrap();
        assert!(!format!("{r:?}").contains("abcdef"));
        assert_eq!(r.masked()["webhookUrl"], "****cret");
    }

    #[test]
    fn validation_names_fields() {
        assert_eq!(Receiver::from_json(json!({"type": "webhook", "url": "ftp://x"})).unwrap_err()[0].field, "url");
        assert_eq!(Receiver::from_json(json!({"type": "pager"})).unwrap_err()[0].field, "type");
        assert_eq!(
            Receiver::from_json(json!({"type": "pagerduty", "routingKey": ""})).unwrap_err()[0].field,
            "routingKey"
        );
    }
}
