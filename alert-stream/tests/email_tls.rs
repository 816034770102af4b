//! E-mail over STARTTLS and SMTPS against a real SMTP server (aiosmtpd) with a certificate from a private CA.

use alert_stream::notify::{deliver_email, DeliveryPolicy};
use schemas::receiver::Receiver;
use serde_json::json;
use std::time::Duration;

fn policy() -> DeliveryPolicy {
    DeliveryPolicy { attempts: 1, base_backoff: Duration::from_millis(10), timeout: Duration::from_secs(10) }
}

fn receiver(port: u16, tls: &str, ca: Option<&str>) -> Receiver {
    let mut doc = json!({"type": "email", "host": "127.0.0.1", "port": port, "from": "alerts@evstream.local",
        "to": ["oncall@example.com"], "tls": tls});
    if let Some(ca) = ca {
        doc["caCertificate"] = json!(ca);
    }
    Receiver::from_json(doc).expect("valid receiver")
}

fn message(subject: &str) -> lettre::Message {
    lettre::Message::builder()
        .from("alerts@evstream.local".parse().expect("from"))
        .to("oncall@example.com".parse().expect("to"))
        .subject(subject)
        .body("an alert".to_string())
        .expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_used_verified_and_required() {
    let certs = testkit::TlsFiles::generate().expect("certificates");
    let smtp = testkit::SmtpServer::start_starttls(&certs).await.expect("smtp");

    let ok =
        deliver_email(&policy(), "mail", &receiver(smtp.port, "starttls", Some(&certs.ca_pem)), message("over-tls"))
            .await;
    assert!(ok.ok, "STARTTLS with the CA trusted: delivered ({})", ok.reason);

    // The server refuses mail before STARTTLS: a plain receiver cannot send, nothing goes out in clear.
    let plain = deliver_email(&policy(), "mail", &receiver(smtp.port, "none", None), message("in-clear")).await;
    assert!(!plain.ok, "plain SMTP to a server that requires TLS is refused");

    // A certificate no trusted CA signed is refused.
    let untrusted =
        deliver_email(&policy(), "mail", &receiver(smtp.port, "starttls", None), message("untrusted")).await;
    assert!(!untrusted.ok, "an untrusted certificate is refused");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !smtp.received().contains("over-tls") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = smtp.received();
    assert!(got.contains("Subject: over-tls"), "{got}");
    assert!(!got.contains("in-clear") && !got.contains("Subject: untrusted"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtps_wraps_the_connection_from_the_first_byte() {
    let certs = testkit::TlsFiles::generate().expect("certificates");
    let smtp = testkit::SmtpServer::start_smtps(&certs).await.expect("smtps");
    let t = std::time::Instant::now();
    let ok =
        deliver_email(&policy(), "mail", &receiver(smtp.port, "tls", Some(&certs.ca_pem)), message("wrapped")).await;
    assert!(ok.ok, "SMTPS delivered ({})", ok.reason);
    // STARTTLS against an SMTPS port never reads a greeting: bounded by the delivery timeout.
    let short = DeliveryPolicy { timeout: Duration::from_secs(2), ..policy() };
    let wrong =
        deliver_email(&short, "mail", &receiver(smtp.port, "starttls", Some(&certs.ca_pem)), message("x")).await;
    assert!(!wrong.ok);
    assert!(t.elapsed() < Duration::from_secs(30), "the delivery timeout bounds a silent server: {:?}", t.elapsed());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !smtp.received().contains("wrapped") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(smtp.received().contains("Subject: wrapped"), "{}", smtp.received());
}

#[test]
fn a_bad_ca_certificate_is_refused_with_its_field() {
    let e = Receiver::from_json(json!({"type": "email", "host": "smtp.example.com", "from": "a@example.com",
        "to": ["b@example.com"], "caCertificate": "not a pem"}))
    .expect_err("refused");
    assert_eq!(e[0].field, "caCertificate");
    let r = Receiver::from_json(json!({"type": "email", "host": "smtp.example.com", "from": "a@example.com",
        "to": ["b@example.com"]}))
    .expect("valid");
    assert_eq!(r.masked()["tls"], "starttls", "STARTTLS unless told otherwise");
}
