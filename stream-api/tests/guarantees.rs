//! Ingest guarantees: idempotent retries (also across instances and inside one bulk request) and per-tenant
//! quotas shared by every instance.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{event, Opts, TestApp, ADMIN};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A retry with the same event id returns the first placement, marked duplicate, and Kafka holds one record.
#[tokio::test]
async fn a_retry_with_the_same_id_writes_nothing() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let mut e = event(&tenant);
    e["id"] = json!(testkit::unique("evt"));
    let first = app.post("/events", &key, &e).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = app.post("/events", &key, &e).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["duplicate"], true);
    for f in ["id", "topic", "partition", "offset"] {
        assert_eq!(again.body[f], first.body[f], "{f}");
    }
    // Concurrent retries too.
    let replies = futures::future::join_all((0..8).map(|_| app.post("/events", &key, &e))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::ACCEPTED && r.body["offset"] == first.body["offset"]));
    let recs = app.records_for(&app.events_topic, &tenant, 2, Duration::from_secs(4)).await;
    assert_eq!(recs.len(), 1, "exactly one record for one id");
}

/// `Idempotency-Key` de-duplicates events that carry no id of their own.
#[tokio::test]
async fn idempotency_key_header() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let send = |k: &str| {
        Request::builder()
            .method("POST")
            .uri("/events")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .header("idempotency-key", k)
            .body(Body::from(event(&tenant).to_string()))
            .expect("request")
    };
    let a = app.send(send("order-1")).await;
    let b = app.send(send("order-1")).await;
    let c = app.send(send("order-2")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(b.body["id"], a.body["id"]);
    assert_eq!(b.body["duplicate"], true);
    assert_ne!(c.body["id"], a.body["id"]);
    assert_eq!(app.records_for(&app.events_topic, &tenant, 3, Duration::from_secs(4)).await.len(), 2);
}

/// A retry sent to another instance is still recognised (the state is in Redis, not in process memory).
#[tokio::test]
async fn a_retry_on_another_instance_writes_nothing() {
    let first = TestApp::start().await;
    let (tenant, key) = first.tenant().await;
    let second = TestApp::start_with(Opts { config_topic: first.config_topic.clone(), ..Opts::default() }).await;
    let mut e = event(&tenant);
    e["id"] = json!(testkit::unique("evt"));
    let a = first.post("/events", &key, &e).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let mut b = second.post("/events", &key, &e).await;
    for _ in 0..50 {
        if b.status != StatusCode::UNAUTHORIZED {
            break;
        }
        // The second instance may still be replaying the key.
        tokio::time::sleep(Duration::from_millis(100)).await;
        b = second.post("/events", &key, &e).await;
    }
    assert_eq!(b.status, StatusCode::ACCEPTED, "{:?}", b.body);
    assert_eq!(b.body["duplicate"], true);
    assert_eq!(b.body["offset"], a.body["offset"]);
}

/// An id repeated inside one bulk request is written once.
#[tokio::test]
async fn an_id_repeated_in_one_bulk_is_written_once() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let mut e = event(&tenant);
    e["id"] = json!(testkit::unique("evt"));
    let r = app.post("/events/bulk", &key, &json!({"events": [e, e, event(&tenant)]})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["results"][1]["duplicate"], true);
    assert_eq!(r.body["results"][1]["offset"], r.body["results"][0]["offset"]);
    assert_eq!(app.records_for(&app.events_topic, &tenant, 3, Duration::from_secs(4)).await.len(), 2);
}

/// Over its quota a tenant gets 429 with Retry-After, nothing is written, and the rejection is counted; a
/// tenant key cannot change its own quota.
#[tokio::test]
async fn quota_limits_a_tenant() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let path = format!("/stream-config/{tenant}");
    let quota = json!({"quota": {"eventsPerSecond": 1, "bytesPerSecond": 1_000_000, "burstSeconds": 5}});
    let r = app.put(&path, &key, &quota, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["errors"][0]["field"], "quota");
    assert_eq!(app.put(&path, ADMIN, &quota, None).await.status, StatusCode::OK);

    // A bulk larger than the whole burst can never pass and says so (413, nothing taken from the bucket).
    let r = app.post("/events/bulk", &key, &json!({"events": vec![event(&tenant); 6]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["results"][0]["code"], "quota_request_too_large");
    for _ in 0..5 {
        assert_eq!(app.post("/events", &key, &event(&tenant)).await.status, StatusCode::ACCEPTED);
    }
    let r = app.post("/events", &key, &event(&tenant)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.body["code"], "quota_exceeded");
    assert!(r.headers["retry-after"].to_str().expect("ascii").parse::<u64>().expect("seconds") >= 1);
    assert_eq!(app.records_for(&app.events_topic, &tenant, 6, Duration::from_secs(4)).await.len(), 5);
    let m = app.get(&format!("/metrics/{tenant}"), &key).await;
    assert_eq!(m.body["rejectedByReason"]["quota_exceeded"], 1, "{:?}", m.body);
    // The tenant may still PUT its config as long as it leaves the quota alone (omitted keeps it).
    assert_eq!(app.put(&path, &key, &json!({"retentionDays": 3}), None).await.status, StatusCode::OK);
    assert_eq!(app.get(&path, &key).await.body["quota"]["eventsPerSecond"], 1);
}

/// Two instances on one config topic and a tenant whose quota (events/s, burst seconds; 1 MB/s) the first one set.
async fn two_instances_with_quota(events_per_second: u64, burst_seconds: u64) -> (TestApp, TestApp, String, String) {
    let first = TestApp::start().await;
    let (tenant, key) = first.tenant().await;
    let quota = json!({"quota": {"eventsPerSecond": events_per_second, "bytesPerSecond": 1_000_000,
        "burstSeconds": burst_seconds}});
    assert_eq!(first.put(&format!("/stream-config/{tenant}"), ADMIN, &quota, None).await.status, StatusCode::OK);
    let second = TestApp::start_with(Opts { config_topic: first.config_topic.clone(), ..Opts::default() }).await;
    (first, second, tenant, key)
}

/// Two instances draw from the same bucket.
#[tokio::test]
async fn quota_is_shared_by_instances() {
    let (first, second, tenant, key) = two_instances_with_quota(1, 4).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let app = if i % 2 == 0 { &first } else { &second };
        statuses.push(app.post("/events", &key, &event(&tenant)).await.status);
    }
    let accepted = statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((accepted, limited), (4, 2), "{statuses:?}");
    let _ = WAIT;
}

/// An instance takes quota ahead, in leases of a tenth of a second of the tenant's rate: twenty requests in a row
/// make one call to the shared buckets (seen as writes to the tenant's bucket key in Redis), not twenty.
#[tokio::test]
async fn quota_is_taken_ahead_in_leases() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let client = redis::Client::open(testkit::redis_url()).expect("redis url");
    let mut admin = client.get_multiplexed_async_connection().await.expect("redis");
    // Keyspace events for hash commands (the buckets are hashes); other tests' keys do not reach this channel.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Kh")
        .query_async(&mut admin)
        .await
        .expect("config");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(format!("__keyspace@0__:evstream:{tenant}:quota:events")).await.expect("subscribe");
    for _ in 0..20 {
        assert_eq!(app.post("/events", &key, &event(&tenant)).await.status, StatusCode::ACCEPTED);
    }
    let mut messages = pubsub.on_message();
    let mut writes = 0;
    while tokio::time::timeout(Duration::from_millis(500), messages.next()).await.ok().flatten().is_some() {
        writes += 1;
    }
    // One lease lasts 100 ms; a slow machine may need a few for twenty requests, never one per request.
    assert!((1..=10).contains(&writes), "{writes} writes to the bucket for 20 requests");
}

/// Leases never admit more than the buckets hold: two instances sharing a bucket of 50 events (50/s, burst 1 s)
/// and sending 120 events between them admit at most what the bucket held plus what it refilled meanwhile.
#[tokio::test]
async fn leases_never_admit_more_than_the_quota() {
    let (first, second, tenant, key) = two_instances_with_quota(50, 1).await;
    let started = std::time::Instant::now();
    let mut accepted = 0;
    for i in 0..120 {
        let app = if i % 2 == 0 { &first } else { &second };
        if app.post("/events", &key, &event(&tenant)).await.status == StatusCode::ACCEPTED {
            accepted += 1;
        }
    }
    let bound = 50.0 + 50.0 * started.elapsed().as_secs_f64();
    assert!(accepted as f64 <= bound.floor(), "{accepted} accepted, the bucket allowed at most {bound:.1}");
    assert!(accepted >= 40, "only {accepted} accepted of a bucket of 50");
    // Each test instance has a topic of its own.
    let written = first.records_for(&first.events_topic, &tenant, accepted + 1, Duration::from_secs(3)).await.len()
        + second.records_for(&second.events_topic, &tenant, accepted + 1, Duration::from_secs(3)).await.len();
    assert_eq!(written, accepted);
}

/// Requests in flight are bounded: beyond the bound the API answers 503 `overloaded` at once instead of queueing,
/// and health endpoints still answer.
#[tokio::test]
async fn overload_is_refused_fast() {
    let app = TestApp::start_with(Opts {
        api: stream_api::ApiConfig { max_in_flight: 1, body_timeout_ms: 5_000, ..Default::default() },
        ..Opts::default()
    })
    .await;
    let (tenant, key) = app.tenant().await;
    // One request holds the only slot: its body never finishes arriving.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    tx.send(Ok(bytes::Bytes::from_static(b"{"))).await.expect("send");
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let held = Request::builder()
        .method("POST")
        .uri("/events")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("request");
    let router = app.router.clone();
    let holder = tokio::spawn(async move { tower::ServiceExt::oneshot(router, held).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    let r = app.post("/events", &key, &event(&tenant)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.body["code"], "overloaded");
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once");
    assert_eq!(app.get("/health", &key).await.status, StatusCode::OK);
    drop(tx);
    let _ = holder.await;
    // With the slot free again, ingest works.
    assert_eq!(app.post("/events", &key, &event(&tenant)).await.status, StatusCode::ACCEPTED);
}
