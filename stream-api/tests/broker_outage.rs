//! Broker outage: with the broker stopped, POST /events fails fast with 503 + Retry-After and acknowledges
//! nothing; after the broker is back, ingest works again.

mod common;

use axum::http::StatusCode;
use common::{event, Opts, TestApp};
use std::time::{Duration, Instant};

#[tokio::test]
async fn broker_down_gives_503_within_the_bound_then_recovers() {
    let mut broker = testkit::Broker::start().await.expect("broker");
    let timeout_ms = 2_000;
    let app = TestApp::start_with(Opts {
        brokers: broker.addr(),
        delivery_timeout_ms: timeout_ms,
        idempotence: false,
        ..Opts::default()
    })
    .await;
    let (tenant, key) = app.tenant().await;
    assert_eq!(app.post("/events", &key, &event(&tenant)).await.status, StatusCode::ACCEPTED);

    broker.shutdown().await;
    let started = Instant::now();
    let r = app.post("/events", &key, &event(&tenant)).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.body["code"], "broker_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    // The bound is the configured delivery timeout (plus scheduling slack), not an open-ended hang.
    assert!(took < Duration::from_millis(timeout_ms + 3_000), "took {took:?}");
    let r = app.get("/ready", &key).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["checks"]["kafka"], "down");

    broker.resume().await.expect("broker back");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.post("/events", &key, &event(&tenant)).await;
        if r.status == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            r.status == StatusCode::SERVICE_UNAVAILABLE,
            "only 503 while recovering, got {} {:?}",
            r.status,
            r.body
        );
        assert!(Instant::now() < deadline, "ingest did not recover: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let recs = app.records_for(&app.events_topic, &tenant, 1, Duration::from_secs(20)).await;
    assert!(!recs.is_empty(), "the event acknowledged after recovery is in Kafka");
}
