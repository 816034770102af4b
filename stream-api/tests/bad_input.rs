//! Bad input: each case gets the right 4xx as `application/problem+json` naming what is wrong, the process stays
//! healthy, and nothing reaches the event topics (rejections after parsing go to the dead-letter topic only).

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{event, Opts, TestApp};
use serde_json::{json, Value};
use std::time::Duration;
use stream_api::ApiConfig;

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
    /// A field the problem document must name, if any.
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: impl Into<Vec<u8>>,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case { name, path, content_type, body: body.into(), status, code, field }
}

/// The bad-input table of the ingest API.
#[tokio::test]
async fn every_bad_input_gets_a_4xx_problem_and_nothing_reaches_kafka() {
    let app = TestApp::start_with(Opts {
        api: ApiConfig { max_body_bytes: 64 * 1024, max_bulk_items: 5, ..ApiConfig::default() },
        ..Opts::default()
    })
    .await;
    let (tenant, key) = app.tenant().await;
    let ev = |patch: Value| {
        let mut e = event(&tenant);
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                e.as_object_mut().expect("object").remove(k);
            } else {
                e[k] = v.clone();
            }
        }
        e.to_string()
    };
    let json = "application/json";
    let s = StatusCode::BAD_REQUEST;
    let u = StatusCode::UNPROCESSABLE_ENTITY;
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    let mut invalid_utf8 = ev(json!({})).into_bytes();
    let pos = invalid_utf8.iter().position(|b| *b == b'V').expect("V of Vendor");
    invalid_utf8[pos] = 0xff;
    let cases = vec![
        case("malformed JSON", "/events", json, "{\"tenantId\": ", s, "malformed_json", None),
        case("truncated JSON", "/events", json, &ev(json!({}))[..40], s, "malformed_json", None),
        case("not an object", "/events", json, "[1,2,3]", u, "invalid_event", Some("")),
        case("wrong type", "/events", json, ev(json!({"tenantId": 5})), u, "invalid_event", Some("tenantId")),
        case("wrong type of data", "/events", json, ev(json!({"data": "text"})), u, "invalid_event", Some("data")),
        case(
            "missing fields",
            "/events",
            json,
            format!("{{\"tenantId\":\"{tenant}\"}}"),
            u,
            "invalid_event",
            Some("eventType"),
        ),
        case(
            "unknown event type",
            "/events",
            json,
            ev(json!({"eventType": "RISK_EXPLODED"})),
            u,
            "invalid_event",
            Some("eventType"),
        ),
        case(
            "schema violation",
            "/events",
            json,
            ev(json!({"data": {"riskScore": 101}})),
            u,
            "invalid_event",
            Some("data.riskScore"),
        ),
        case(
            "invalid tenant id",
            "/events",
            json,
            ev(json!({"tenantId": "no such/tenant"})),
            u,
            "invalid_event",
            Some("tenantId"),
        ),
        case(
            "invalid source",
            "/events",
            json,
            ev(json!({"source": "lower case"})),
            u,
            "invalid_event",
            Some("source"),
        ),
        case(
            "source not allowed",
            "/events",
            json,
            ev(json!({"source": "SOMETHING_ELSE"})),
            u,
            "source_not_allowed",
            Some("source"),
        ),
        case(
            "bad timestamp",
            "/events",
            json,
            ev(json!({"occurredAt": "yesterday"})),
            u,
            "invalid_event",
            Some("occurredAt"),
        ),
        case(
            "NUL byte in a field",
            "/events",
            json,
            ev(json!({"entityId": "a\u{0}b"})),
            u,
            "invalid_event",
            Some("entityId"),
        ),
        case("unknown field", "/events", json, ev(json!({"tenant": "x"})), u, "invalid_event", Some("tenant")),
        case("invalid UTF-8", "/events", json, invalid_utf8, s, "malformed_json", None),
        case("deep nesting", "/events", json, deep, s, "malformed_json", None),
        case(
            "oversize body",
            "/events",
            json,
            format!("{{\"data\":\"{}\"}}", "x".repeat(70 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            None,
        ),
        case(
            "huge number",
            "/events",
            json,
            ev(json!({"data": {"riskScore": 1e300}})),
            u,
            "invalid_event",
            Some("data.riskScore"),
        ),
        case(
            "wrong media type",
            "/events",
            "text/plain",
            ev(json!({})),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        case(
            "too many bulk items",
            "/events/bulk",
            json,
            json!({"events": vec![json!({}); 6]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_items",
            Some("events"),
        ),
        case("bulk events not an array", "/events/bulk", json, "{\"events\": 5}", u, "invalid_event", Some("events")),
        case("bulk malformed", "/events/bulk", json, "{\"events\": [", s, "malformed_json", None),
    ];
    for c in &cases {
        let r = app.call("POST", c.path, Some(&key), Some(c.content_type), Body::from(c.body.clone())).await;
        assert_eq!(r.status, c.status, "{}: {:?}", c.name, r.body);
        assert!(r.content_type().starts_with("application/problem+json"), "{}: {}", c.name, r.content_type());
        assert_eq!(r.body["code"], c.code, "{}: {:?}", c.name, r.body);
        assert_eq!(r.body["status"], c.status.as_u16(), "{}", c.name);
        assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{}", c.name);
        if let Some(f) = c.field {
            let named = r.body["errors"].as_array().is_some_and(|es| es.iter().any(|e| e["field"] == f));
            assert!(named, "{}: field {f} not named in {:?}", c.name, r.body);
        }
    }
    assert_eq!(app.get("/health", &key).await.status, StatusCode::OK, "the process is still healthy");

    // Nothing reached the event topic; the post-parse rejections are in the dead-letter topic with reasons.
    let recs = app.records_for(&app.events_topic, &tenant, 1, Duration::from_secs(3)).await;
    assert!(recs.is_empty(), "bad input reached Kafka: {recs:?}");
    let reason = |r: &testkit::Record| r.json()["reason"].as_str().unwrap_or_default().to_string();
    let dead = testkit::read_topic(&app.brokers, &app.deadletter_topic, Duration::from_secs(20), |rs| {
        rs.iter().any(|r| reason(r) == "schema_violation")
    })
    .await
    .expect("read");
    let reasons: Vec<String> = dead.iter().map(reason).collect();
    assert!(reasons.iter().any(|r| r == "schema_violation"), "{reasons:?}");
    assert!(dead.iter().all(|r| r.headers.contains_key("reason")));
}

/// Headers far beyond the server's limit are refused (431) at the connection level; the server stays up.
#[tokio::test]
async fn huge_headers_are_refused() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let base = app.serve().await;
    let http = testkit::http();
    let r = http
        .post(format!("{base}/events"))
        .bearer_auth(&key)
        .header("x-filler", "a".repeat(512 * 1024))
        .json(&event(&tenant))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        // hyper may close the connection before the client finished sending; that is a refusal too.
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    let r = http.get(format!("{base}/health")).send().await.expect("health");
    assert_eq!(r.status(), 200);
    let recs = app.records_for(&app.events_topic, &tenant, 1, Duration::from_secs(2)).await;
    assert!(recs.is_empty());
}

/// Slow-loris bodies time out with 408 instead of holding a request forever.
#[tokio::test]
async fn slow_bodies_time_out() {
    let app = TestApp::start_with(Opts {
        api: ApiConfig { body_timeout_ms: 500, ..ApiConfig::default() },
        ..Opts::default()
    })
    .await;
    let (_, key) = app.tenant().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    tx.send(Ok(bytes::Bytes::from_static(b"{\"tenantId\":"))).await.expect("send");
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let r = app.call("POST", "/events", Some(&key), Some("application/json"), Body::from_stream(stream)).await;
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(r.body["code"], "body_timeout");
    drop(tx);
}

/// Replaces every `{{TENANT}}` in `body` with `tenant`, byte-wise (bodies may be invalid UTF-8 on purpose).
fn with_tenant(body: &[u8], tenant: &str) -> Vec<u8> {
    let pat = b"{{TENANT}}";
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(pat) {
            out.extend_from_slice(tenant.as_bytes());
            i += pat.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// The checked-in corpus (`tests/corpus/bad-input.json`): every case gets its 4xx problem document with the
/// documented code (and field), the process stays healthy, and nothing reaches Kafka.
#[tokio::test]
async fn the_bad_input_corpus() {
    let api = ApiConfig {
        max_body_bytes: 65536,
        max_bulk_bytes: 262_144,
        max_bulk_items: 5,
        body_timeout_ms: 1000,
        ..ApiConfig::default()
    };
    let app = TestApp::start_with(Opts { api, ..Opts::default() }).await;
    let (tenant, key) = app.tenant().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(dir.join("bad-input.json")).expect("manifest")).expect("manifest JSON");
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().expect("name");
        let raw: Vec<u8> = if let Some(b) = c["body"].as_str() {
            b.as_bytes().to_vec()
        } else if let Some(f) = c["body_file"].as_str() {
            std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{name}: {f}: {e}"))
        } else {
            let g = &c["generate"];
            let s = |k: &str| g[k].as_str().unwrap_or_default().to_string();
            let count = g["count"].as_u64().expect("count") as usize;
            format!("{}{}{}", s("prefix"), s("unit").repeat(count), s("suffix")).into_bytes()
        };
        let mut req = axum::http::Request::builder()
            .method("POST")
            .uri(c["path"].as_str().expect("path"))
            .header("authorization", format!("Bearer {key}"));
        if let Some(ct) = c["content_type"].as_str() {
            req = req.header("content-type", ct);
        }
        if let Some(h) = c["headers"].as_object() {
            for (k, v) in h {
                req = req.header(k.as_str(), v.as_str().expect("header value"));
            }
        }
        let r = app.send(req.body(Body::from(with_tenant(&raw, &tenant))).expect("request")).await;
        let want = &c["expect"];
        let mut problems = Vec::new();
        if r.status.as_u16() as u64 != want["status"].as_u64().expect("status") {
            problems.push(format!("status {} (want {})", r.status, want["status"]));
        }
        if r.body["code"] != want["code"] {
            problems.push(format!("code {} (want {})", r.body["code"], want["code"]));
        }
        if !r.content_type().starts_with("application/problem+json") {
            problems.push(format!("content type {}", r.content_type()));
        }
        if let Some(f) = want["field"].as_str() {
            let named = r.body["errors"].as_array().is_some_and(|es| es.iter().any(|e| e["field"] == f))
                || r.body["results"].as_array().is_some_and(|rs| {
                    rs.iter().any(|i| i["errors"].as_array().is_some_and(|es| es.iter().any(|e| e["field"] == f)))
                });
            if !named {
                problems.push(format!("field {f} not named"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {} — {}", problems.join("; "), r.body));
        }
    }
    assert!(failures.is_empty(), "{} of {} corpus cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(app.get("/health", &key).await.status, StatusCode::OK);
    let recs = app.records_for(&app.events_topic, &tenant, 1, Duration::from_secs(3)).await;
    assert!(recs.is_empty(), "bad input reached Kafka: {:?}", recs.iter().map(|r| r.json()).collect::<Vec<_>>());
}
