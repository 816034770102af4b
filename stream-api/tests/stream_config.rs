//! Stream configuration: round trip, versioning, its effect on ingest, and replication to other instances.

mod common;

use axum::http::StatusCode;
use common::{event, Opts, TestApp, ADMIN};
use serde_json::json;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// GET returns the default (version 0); PUT stores a new version with an ETag; a stale If-Match gets 412.
#[tokio::test]
async fn round_trip_etag_and_if_match_conflict() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let path = format!("/stream-config/{tenant}");
    let r = app.get(&path, &key).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"], 0);
    assert_eq!(r.headers["etag"], "\"0\"");
    assert_eq!(r.body["enabled"], true);

    let cfg = json!({"enabled": true, "filters": [{"eventTypes": ["RISK_CREATED"], "sources": [], "conditions": {}}], "retentionDays": 30, "batchSize": 50, "compressionEnabled": true});
    let r = app.put(&path, &key, &cfg, Some("\"0\"")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["etag"], "\"1\"");
    let r = app.get(&path, &key).await;
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["retentionDays"], 30);
    assert_eq!(r.body["filters"][0]["eventTypes"], json!(["RISK_CREATED"]));

    // Someone else's write in between: the stale ETag is refused and nothing changes.
    let r = app.put(&path, &key, &json!({"retentionDays": 5}), Some("\"0\"")).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.body["code"], "version_conflict");
    assert_eq!(app.get(&path, &key).await.body["retentionDays"], 30);

    // Invalid documents name the field and change nothing.
    let r = app.put(&path, &key, &json!({"retentionDays": 0}), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["field"], "retentionDays");
    let r = app.put(&path, &key, &json!({"filters": [{"eventTypes": ["NOPE"]}]}), None).await;
    assert_eq!(r.body["errors"][0]["field"], "filters[0].eventTypes[0]");
    assert_eq!(app.get(&path, &key).await.body["version"], 1);
}

/// Filters drop non-matching events (counted as filtered, not stored); a disabled tenant is refused; a per-tenant
/// topic receives the tenant's events.
#[tokio::test]
async fn config_governs_ingest() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let path = format!("/stream-config/{tenant}");
    let own_topic = testkit::unique("grc-own");
    let cfg = json!({"topics": [own_topic], "filters": [{"eventTypes": ["RISK_CREATED"], "conditions": {"data.riskScore": [82, 90]}}]});
    assert_eq!(app.put(&path, &key, &cfg, None).await.status, StatusCode::OK);

    let kept = app.post("/events", &key, &event(&tenant)).await;
    assert_eq!(kept.status, StatusCode::ACCEPTED, "{:?}", kept.body);
    assert_eq!(kept.body["topic"], own_topic.as_str());
    let dropped = app
        .post("/events", &key, &json!({"tenantId": tenant, "eventType": "USER_ACTION", "source": "FRONTEND_APP"}))
        .await;
    assert_eq!(dropped.status, StatusCode::OK);
    assert_eq!(dropped.body["status"], "filtered");
    let mut low = event(&tenant);
    low["data"]["riskScore"] = json!(10);
    assert_eq!(app.post("/events", &key, &low).await.body["status"], "filtered");

    let recs = app.records_for(&own_topic, &tenant, 1, WAIT).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].headers["ce_id"], kept.body["id"].as_str().expect("id"));
    let m = app.get(&format!("/metrics/{tenant}"), &key).await;
    assert_eq!(m.body["totalFiltered"], 2, "{:?}", m.body);
    assert_eq!(m.body["filteredByReason"]["no_filter_matched"], 2);

    // Disabled: refused with a clear error, nothing written.
    let r = app.put(&path, &key, &json!({"enabled": false, "topics": [own_topic]}), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.post("/events", &key, &event(&tenant)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["code"], "tenant_disabled");
    let recs = app.records_for(&own_topic, &tenant, 2, Duration::from_secs(3)).await;
    assert_eq!(recs.len(), 1, "nothing more reached Kafka");
    let r = app.post("/events", &key, &event(&tenant)).await;
    assert!(r.content_type().starts_with("application/problem+json"));
}

/// A topic belongs to one tenant: another tenant cannot route into it.
#[tokio::test]
async fn a_topic_cannot_be_claimed_twice() {
    let app = TestApp::start().await;
    let (a, ka) = app.tenant().await;
    let (b, kb) = app.tenant().await;
    let t = testkit::unique("shared-name");
    assert_eq!(
        app.put(&format!("/stream-config/{a}"), &ka, &json!({"topics": [t]}), None).await.status,
        StatusCode::OK
    );
    let r = app.put(&format!("/stream-config/{b}"), &kb, &json!({"topics": [t]}), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["code"], "topic_taken");
    assert_eq!(app.get(&format!("/stream-config/{b}"), &kb).await.body["version"], 0);
    let r = app.put(&format!("/stream-config/{b}"), &kb, &json!({"topics": ["evstream.events"]}), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["code"], "reserved_topic");
}

/// A second instance replaying the same configuration log sees tenants, keys and a config PUT made on the first.
#[tokio::test]
async fn a_second_instance_sees_a_put_to_the_first() {
    let first = TestApp::start().await;
    let (tenant, key) = first.tenant().await;
    let second = TestApp::start_with(Opts { config_topic: first.config_topic.clone(), ..Opts::default() }).await;
    // The tenant key made on the first instance works on the second.
    let path = format!("/stream-config/{tenant}");
    assert_eq!(second.get(&path, &key).await.status, StatusCode::OK);

    let r = first.put(&path, &key, &json!({"enabled": false}), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = second.get(&path, &key).await;
        if r.body["version"] == 1 {
            assert_eq!(r.body["enabled"], false);
            break;
        }
        assert!(Instant::now() < deadline, "second instance never saw the PUT: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = second.post("/events", &key, &event(&tenant)).await;
    assert_eq!(r.body["code"], "tenant_disabled", "the second instance enforces the new config");
    // A concurrent writer on the second instance with the stale version loses.
    let r = second.put(&path, &key, &json!({"enabled": true}), Some("\"0\"")).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let _ = ADMIN;
}

/// A tenant's `maxLen` bounds its Redis window: after 1,200 events with `maxLen` 100, the window holds at least
/// 100 events and fewer than 100 plus one stream entry's worth (64), the newest ones, and the stream's entries
/// hold exactly what its count says.
#[tokio::test]
async fn max_len_bounds_the_redis_window() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let cfg = json!({"batchSize": 400, "destinations": [{"type": "kafka", "enabled": true, "config": {}},
        {"type": "redis", "enabled": true, "config": {"maxLen": 100}}]});
    assert_eq!(app.put(&format!("/stream-config/{tenant}"), &key, &cfg, None).await.status, StatusCode::OK);
    let mut last = String::new();
    for round in 0..3 {
        let events: Vec<_> = (0..400)
            .map(|i| {
                let mut e = event(&tenant);
                e["entityId"] = json!(format!("risk-{round}-{i}"));
                e
            })
            .collect();
        let r = app.post("/events/bulk", &key, &json!({ "events": events })).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        last = r.body["results"][399]["id"].as_str().expect("id").to_string();
    }
    let client = redis::Client::open(testkit::redis_url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let stream = format!("evstream:{tenant}:events");
    let deadline = Instant::now() + WAIT;
    // Polled until the newest event is in and the window is trimmed: a read may fall between a write and its trim.
    loop {
        let r = app.get(&format!("/events/{tenant}?limit=1000"), &key).await;
        let events = r.body["events"].as_array().cloned().unwrap_or_default();
        let newest_in = events.first().map(|e| e["id"].clone()) == Some(json!(last));
        if newest_in && (100..164).contains(&events.len()) {
            // Newest first, and the newest of all: the last bulk's tail.
            let ids: Vec<&str> = events.iter().filter_map(|e| e["entityId"].as_str()).collect();
            assert_eq!(ids[0], "risk-2-399");
            assert_eq!(ids[1], "risk-2-398");
            // The sizes list matches the entries' own counts, in order, and the count is their sum.
            let entries: Vec<(String, Vec<(String, String)>)> =
                redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
            let ns: Vec<u64> =
                entries.iter().filter_map(|(_, f)| f.iter().find(|(k, _)| k == "n")?.1.parse::<u64>().ok()).collect();
            let sizes: Vec<u64> = redis::cmd("LRANGE")
                .arg(format!("{stream}:sizes"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .expect("sizes");
            let count: u64 =
                redis::cmd("GET").arg(format!("{stream}:count")).query_async(&mut conn).await.expect("count");
            assert_eq!(ns, sizes);
            assert_eq!((ns.iter().sum::<u64>(), count), (events.len() as u64, events.len() as u64));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the window never held the newest event within its bound ({} events kept with maxLen 100)",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A window that gets a few events and then none is still trimmed: the writer trims what waits once it has been
/// idle for a second. With `maxLen` 1, ten events posted one by one leave the newest alone.
#[tokio::test]
async fn a_quiet_window_is_trimmed_within_a_second() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let cfg = json!({"destinations": [{"type": "kafka", "enabled": true, "config": {}},
        {"type": "redis", "enabled": true, "config": {"maxLen": 1}}]});
    assert_eq!(app.put(&format!("/stream-config/{tenant}"), &key, &cfg, None).await.status, StatusCode::OK);
    let mut last = String::new();
    for i in 0..10 {
        let mut e = event(&tenant);
        e["entityId"] = json!(format!("risk-{i}"));
        let r = app.post("/events", &key, &e).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        last = r.body["id"].as_str().expect("id").to_string();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let events = app.get(&format!("/events/{tenant}?limit=100"), &key).await.body["events"].clone();
        let events = events.as_array().cloned().unwrap_or_default();
        if events.len() == 1 && events[0]["id"] == last.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "the window kept {} events with maxLen 1", events.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
