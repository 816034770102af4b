//! Receivers on the wire: the payload each service documents, and delivery with retries.
//!
//! - generic webhook: the transition as JSON, `X-Evstream-Signature: sha256=<hex HMAC-SHA256 of the body>` when a
//!   secret is set, `X-Evstream-Event: alert.<kind>`, `X-Evstream-Delivery: <uuid>`;
//! - Slack incoming webhook: `text` plus a colour-coded attachment with fields;
//! - PagerDuty Events API v2: `trigger` / `acknowledge` / `resolve` with `dedup_key` = the alert id;
//! - Microsoft Teams incoming webhook: a MessageCard.
//!
//! Delivery retries 5xx, timeouts and 429 (honouring `Retry-After`) with exponential backoff and jitter; other
//! 4xx are final. What still fails goes to the alerts dead-letter topic with the reason.

use hmac::{Hmac, Mac};
use producer::alerts::{Alert, HistoryEntry};
use rand::Rng;
use schemas::policy::Severity;
use schemas::receiver::{Receiver, SmtpTls, PAGERDUTY_EVENTS_URL};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

fn colour(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "#b71c1c",
        Severity::High => "#e65100",
        Severity::Medium => "#f9a825",
        Severity::Low => "#1565c0",
        Severity::Info => "#607d8b",
    }
}

/// PagerDuty's four severities.
fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "info",
    }
}

/// One HTTP request to a receiver.
pub struct Request {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// The request for one receiver: URL, body and extra headers. `None` when the receiver has nothing to say about
/// this transition (only PagerDuty follows acknowledge and resolve).
pub fn request(r: &Receiver, kind: &str, a: &Alert) -> Option<Request> {
    match r {
        Receiver::Webhook { url, secret } => {
            let body =
                serde_json::to_vec(&json!({"version": "1", "kind": kind, "tenantId": a.tenant_id, "alert": a})).ok()?;
            let mut headers = vec![
                ("x-evstream-event", format!("alert.{kind}")),
                ("x-evstream-delivery", uuid::Uuid::new_v4().to_string()),
            ];
            if let Some(s) = secret {
                headers.push(("x-evstream-signature", format!("sha256={}", sign(s.expose(), &body))));
            }
            Some(Request { url: url.expose().to_string(), body, headers })
        }
        Receiver::Slack { webhook_url } => {
            if !matches!(kind, "opened" | "reopened") {
                return None;
            }
            let body = json!({
                "text": format!("[{}] {}", a.severity.as_str().to_uppercase(), a.summary),
                "attachments": [{
                    "color": colour(a.severity),
                    "title": a.summary,
                    "text": a.message.clone().unwrap_or_default(),
                    "fields": [
                        {"title": "Severity", "value": a.severity.as_str(), "short": true},
                        {"title": "Policy", "value": a.policy_id, "short": true},
                        {"title": "Group", "value": a.group_key, "short": true},
                        {"title": "Alert", "value": a.id, "short": true}
                    ],
                    "footer": format!("evstream · tenant {}", a.tenant_id)
                }]
            });
            Some(Request {
                url: webhook_url.expose().to_string(),
                body: serde_json::to_vec(&body).ok()?,
                headers: vec![],
            })
        }
        Receiver::Pagerduty { routing_key, url } => {
            let action = match kind {
                "opened" | "reopened" => "trigger",
                "acknowledged" => "acknowledge",
                "resolved" => "resolve",
                _ => return None,
            };
            let mut body = json!({"routing_key": routing_key.expose(), "event_action": action, "dedup_key": a.id});
            if action == "trigger" {
                body["payload"] = json!({
                    "summary": a.summary.chars().take(1024).collect::<String>(),
                    "source": format!("evstream/{}", a.tenant_id),
                    "severity": pagerduty_severity(a.severity),
                    "component": a.policy_id,
                    "group": a.group_key,
                    "custom_details": {"message": a.message, "count": a.count, "firstSeen": a.first_seen, "lastEventId": a.last_event_id}
                });
            }
            let url = url.clone().unwrap_or_else(|| PAGERDUTY_EVENTS_URL.to_string());
            Some(Request { url, body: serde_json::to_vec(&body).ok()?, headers: vec![] })
        }
        Receiver::Teams { webhook_url } => {
            if !matches!(kind, "opened" | "reopened") {
                return None;
            }
            let body = json!({
                "@type": "MessageCard",
                "@context": "http://schema.org/extensions",
                "themeColor": colour(a.severity).trim_start_matches('#'),
                "summary": a.summary,
                "title": a.summary,
                "text": a.message.clone().unwrap_or_default(),
                "sections": [{"facts": [
                    {"name": "Severity", "value": a.severity.as_str()},
                    {"name": "Policy", "value": a.policy_id},
                    {"name": "Group", "value": a.group_key},
                    {"name": "Tenant", "value": a.tenant_id}
                ]}]
            });
            Some(Request {
                url: webhook_url.expose().to_string(),
                body: serde_json::to_vec(&body).ok()?,
                headers: vec![],
            })
        }
        // E-mail is not an HTTP request: see `email`.
        Receiver::Email { .. } => None,
    }
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: the error case cannot happen.
    <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .map(|mut mac| {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        })
        .unwrap_or_default()
}

/// The e-mail for an opened or re-opened alert: a text part and an HTML part.
pub fn email(r: &Receiver, kind: &str, a: &Alert) -> Option<lettre::Message> {
    let Receiver::Email { from, to, .. } = r else { return None };
    if !matches!(kind, "opened" | "reopened") {
        return None;
    }
    let subject = format!("[{}] {}", a.severity.as_str().to_uppercase(), a.summary);
    let text = format!(
        "{}\n\n{}\n\nSeverity: {}\nPolicy: {}\nGroup: {}\nAlert: {}\nTenant: {}\nFirst seen: {}\n",
        a.summary,
        a.message.clone().unwrap_or_default(),
        a.severity.as_str(),
        a.policy_id,
        a.group_key,
        a.id,
        a.tenant_id,
        a.first_seen
    );
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let html = format!(
        "<html><body><h2 style=\"color:{}\">{}</h2><p>{}</p><table><tr><td>Severity</td><td>{}</td></tr><tr><td>Policy</td><td>{}</td></tr><tr><td>Group</td><td>{}</td></tr><tr><td>Alert</td><td>{}</td></tr><tr><td>Tenant</td><td>{}</td></tr></table></body></html>",
        colour(a.severity),
        esc(&a.summary),
        esc(&a.message.clone().unwrap_or_default()),
        a.severity.as_str(),
        esc(&a.policy_id),
        esc(&a.group_key),
        esc(&a.id),
        esc(&a.tenant_id)
    );
    let mut b = lettre::Message::builder().from(from.parse().ok()?).subject(subject);
    for t in to {
        b = b.to(t.parse().ok()?);
    }
    b.multipart(lettre::message::MultiPart::alternative_plain_html(text, html)).ok()
}

/// Sends an e-mail with the same retry policy as HTTP receivers: transient SMTP failures (4xx replies, connection
/// problems) are retried, permanent ones (5xx) are final.
pub async fn deliver_email(p: &DeliveryPolicy, receiver_id: &str, r: &Receiver, msg: lettre::Message) -> Delivered {
    use lettre::AsyncTransport;
    let Receiver::Email { host, port, username, password, tls, ca_certificate, .. } = r else {
        return Delivered { ok: false, reason: "not_email", attempts: vec![] };
    };
    let mut b = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host.as_str())
        .port(*port)
        .timeout(Some(p.timeout));
    if *tls != SmtpTls::None {
        let mut params = lettre::transport::smtp::client::TlsParameters::builder(host.clone());
        if let Some(pem) = ca_certificate {
            match lettre::transport::smtp::client::Certificate::from_pem(pem.as_bytes()) {
                Ok(c) => params = params.add_root_certificate(c),
                Err(_) => return Delivered { ok: false, reason: "bad_ca_certificate", attempts: vec![] },
            }
        }
        let Ok(params) = params.build_rustls() else {
            return Delivered { ok: false, reason: "tls_setup", attempts: vec![] };
        };
        b = b.tls(match tls {
            SmtpTls::Tls => lettre::transport::smtp::client::Tls::Wrapper(params),
            _ => lettre::transport::smtp::client::Tls::Required(params),
        });
    }
    if let (Some(u), Some(pw)) = (username, password) {
        b = b
            .credentials(lettre::transport::smtp::authentication::Credentials::new(u.clone(), pw.expose().to_string()));
    }
    let transport = b.build();
    let mut attempts = Vec::new();
    let mut reason = "exhausted";
    for n in 1..=p.attempts {
        // The transport's timeout covers each command, not a server that never greets (a TLS port spoken to in
        // clear): bound the whole exchange too.
        let res = tokio::time::timeout(p.timeout, transport.send(msg.clone())).await;
        let (ok, permanent, status) = match &res {
            Err(_) => (false, false, "timeout".to_string()),
            Ok(Ok(resp)) => (resp.is_positive(), false, resp.code().to_string()),
            Ok(Err(e)) => (
                false,
                e.is_permanent(),
                if e.is_permanent() { "permanent".to_string() } else { "transient".to_string() },
            ),
        };
        attempts.push(HistoryEntry {
            at: producer::now_rfc3339(),
            kind: "delivery".into(),
            receiver: Some(receiver_id.to_string()),
            status: Some(status),
            detail: Some(format!("attempt {n}")),
        });
        if ok {
            return Delivered { ok: true, reason: "ok", attempts };
        }
        if permanent {
            return Delivered { ok: false, reason: "rejected", attempts };
        }
        reason = "smtp_error";
        if n < p.attempts {
            tokio::time::sleep(p.base_backoff * 2u32.pow(n - 1)).await;
        }
    }
    Delivered { ok: false, reason, attempts }
}

#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub attempts: u32,
    pub base_backoff: Duration,
    pub timeout: Duration,
}

/// The outcome of delivering to one receiver, with every attempt for the alert's history.
pub struct Delivered {
    pub ok: bool,
    /// Why it finally failed (bounded reason code).
    pub reason: &'static str,
    pub attempts: Vec<HistoryEntry>,
}

pub async fn deliver(
    http: &reqwest::Client,
    p: &DeliveryPolicy,
    receiver_id: &str,
    url: &str,
    body: &[u8],
    headers: &[(&'static str, String)],
) -> Delivered {
    let mut attempts = Vec::new();
    let mut reason = "exhausted";
    for n in 1..=p.attempts {
        let mut req = http.post(url).timeout(p.timeout).header("content-type", "application/json").body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let (status, retry_after, detail) = match req.send().await {
            Ok(r) => {
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                (Some(r.status().as_u16()), retry_after, None)
            }
            Err(e) => (None, None, Some(if e.is_timeout() { "timeout" } else { "connection" })),
        };
        attempts.push(HistoryEntry {
            at: producer::now_rfc3339(),
            kind: "delivery".into(),
            receiver: Some(receiver_id.to_string()),
            status: Some(status.map_or_else(|| detail.unwrap_or("error").to_string(), |s| s.to_string())),
            detail: Some(format!("attempt {n}")),
        });
        match status {
            Some(s) if (200..300).contains(&s) => return Delivered { ok: true, reason: "ok", attempts },
            Some(429) => reason = "rate_limited",
            Some(s) if (400..500).contains(&s) => return Delivered { ok: false, reason: "rejected", attempts },
            Some(_) => reason = "server_error",
            None => reason = detail.unwrap_or("error"),
        }
        if n < p.attempts {
            let backoff = p.base_backoff * 2u32.pow(n - 1);
            let jitter = Duration::from_millis(rand::rng().random_range(0..=(backoff.as_millis() as u64 / 2).max(1)));
            let wait = retry_after.map_or(backoff + jitter, |s| Duration::from_secs(s.min(60)));
            tokio::time::sleep(wait).await;
        }
    }
    Delivered { ok: false, reason, attempts }
}

/// The JSON of a dead-lettered notification.
pub fn dead_letter(receiver_id: &str, kind: &str, reason: &str, a: &Alert) -> Value {
    json!({"reason": reason, "receiver": receiver_id, "kind": kind, "alertId": a.id, "tenantId": a.tenant_id, "policyId": a.policy_id, "at": producer::now_rfc3339()})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn hmac_sha256_known_vector() {
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
