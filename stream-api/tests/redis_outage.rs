//! Redis outages: Kafka ingest keeps working, readiness names Redis as down, and the real-time window catches up
//! with what was accepted meanwhile once Redis is back.

mod common;

use axum::http::StatusCode;
use common::{event, Opts, TestApp};
use std::time::{Duration, Instant};

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With Redis stopped, events are still acknowledged and in Kafka, /ready says `redis: down`, reads answer 503;
/// after Redis restarts, the window holds the events accepted during the outage.
#[tokio::test]
async fn ingest_survives_a_redis_outage_and_the_window_catches_up() {
    let mut redis = testkit::RedisServer::start().await.expect("redis");
    let app = TestApp::start_with(Opts { redis_url: redis.url(), ..Opts::default() }).await;
    let (tenant, key) = app.tenant().await;
    assert_eq!(app.post("/events", &key, &event(&tenant)).await.status, StatusCode::ACCEPTED);
    app.wait_redis(&tenant, &key, |e| e.len() == 1).await;

    redis.stop().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let r = app.post("/events", &key, &event(&tenant)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        assert!(started.elapsed() < Duration::from_secs(5), "ingest must not wait on Redis: {:?}", started.elapsed());
        ids.push(r.body["id"].as_str().expect("id").to_string());
    }
    let ready = app.get("/ready", &key).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["checks"]["redis"], "down");
    assert_eq!(ready.body["checks"]["kafka"], "ok");
    assert_eq!(app.get(&format!("/events/{tenant}"), &key).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.records_for(&app.events_topic, &tenant, 4, Duration::from_secs(20)).await.len(), 4);

    // The restarted Redis is empty (no persistence): what the window shows was written after it came back.
    redis.resume().await.expect("redis back");
    until("readiness", async || app.get("/ready", &key).await.status == StatusCode::OK).await;
    let evs = app.wait_redis(&tenant, &key, |e| e.len() >= 3).await;
    let got: Vec<&str> = evs.iter().filter_map(|e| e["id"].as_str()).collect();
    for id in &ids {
        assert!(got.contains(&id.as_str()), "event {id} accepted during the outage is in the window: {got:?}");
    }
}

/// evstream starts while Redis is down, ingests, and connects once Redis appears.
#[tokio::test]
async fn starts_without_redis() {
    let mut redis = testkit::RedisServer::start().await.expect("redis");
    redis.stop().await;
    let app = TestApp::start_with(Opts { redis_url: redis.url(), ..Opts::default() }).await;
    let (tenant, key) = app.tenant().await;
    assert_eq!(app.post("/events", &key, &event(&tenant)).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.get("/ready", &key).await.body["checks"]["redis"], "down");
    redis.resume().await.expect("redis");
    until("readiness", async || app.get("/ready", &key).await.status == StatusCode::OK).await;
    app.wait_redis(&tenant, &key, |e| e.len() == 1).await;
}
