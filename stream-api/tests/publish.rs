//! Publishing: single, bulk (JSON and NDJSON), CloudEvents, and reading back from Redis, verified by an
//! independent Kafka consumer and by the Redis-backed read API.

mod common;

use axum::http::StatusCode;
use common::{event, TestApp, ADMIN};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// POST /events answers 202 with the broker's placement, and the record in Kafka has the tenant as key, the
/// CloudEvents headers, and the enriched envelope as payload.
#[tokio::test]
async fn single_event_is_in_kafka_with_key_headers_and_payload() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let r = app.post("/events", &key, &event(&tenant)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(r.body["topic"], app.events_topic.as_str());

    let recs = app.records_for(&app.events_topic, &tenant, 1, WAIT).await;
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.partition, r.body["partition"].as_i64().expect("partition") as i32);
    assert_eq!(rec.offset, r.body["offset"].as_i64().expect("offset"));
    assert_eq!(rec.headers["ce_id"], id);
    assert_eq!(rec.headers["ce_type"], "RISK_CREATED");
    assert_eq!(rec.headers["ce_source"], "FRONTEND_APP");
    assert_eq!(rec.headers["ce_specversion"], "1.0");
    assert!(rec.headers["ce_time"].starts_with("20"), "{:?}", rec.headers);
    assert_eq!(rec.headers["tenant_id"], tenant);
    let p = rec.json();
    assert_eq!(p["id"], id.as_str());
    assert_eq!(p["tenantId"], tenant.as_str());
    assert_eq!(p["data"], json!({"title": "Vendor breach", "riskScore": 82}));
    assert_eq!(p["metadata"]["region"], "eu");
    assert_eq!(p["schemaVersion"], "1.0");
    assert!(p["receivedAt"].is_string() && p["occurredAt"].is_string() && p["correlationId"].is_string());

    let evs = app.wait_redis(&tenant, &key, |e| !e.is_empty()).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0], p, "Redis holds the same envelope as Kafka");
}

/// A tenant's events keep their order on one partition.
#[tokio::test]
async fn a_tenants_events_stay_ordered_on_one_partition() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let mut e = event(&tenant);
        e["entityId"] = json!(format!("risk-{i}"));
        let r = app.post("/events", &key, &e).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        ids.push(r.body["id"].as_str().expect("id").to_string());
    }
    let recs = app.records_for(&app.events_topic, &tenant, 10, WAIT).await;
    let parts: std::collections::HashSet<i32> = recs.iter().map(|r| r.partition).collect();
    assert_eq!(parts.len(), 1, "one partition per tenant");
    let got: Vec<String> = recs.iter().map(|r| r.headers["ce_id"].clone()).collect();
    assert_eq!(got, ids, "Kafka order = request order");
    // Newest first from Redis.
    let evs = app.wait_redis(&tenant, &key, |e| e.len() == 10).await;
    let redis_ids: Vec<&str> = evs.iter().filter_map(|e| e["id"].as_str()).collect();
    let mut rev = ids.clone();
    rev.reverse();
    assert_eq!(redis_ids, rev);
}

/// Bulk JSON with one bad item: 207, per-item results in request order, and exactly the good ones in Kafka.
#[tokio::test]
async fn bulk_json_reports_each_item_in_order() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let bad =
        json!({"tenantId": tenant, "eventType": "RISK_CREATED", "source": "FRONTEND_APP", "data": {"riskScore": 500}});
    let body = json!({"events": [event(&tenant), bad, event(&tenant)]});
    let r = app.post("/events/bulk", &key, &body).await;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{:?}", r.body);
    assert_eq!(r.body["accepted"], 2);
    assert_eq!(r.body["rejected"], 1);
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results.iter().map(|x| x["index"].as_u64().expect("index")).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[1]["errors"][0]["field"], "data.riskScore");
    assert_eq!(results[2]["status"], "accepted");
    let recs = app.records_for(&app.events_topic, &tenant, 2, WAIT).await;
    let mut got: Vec<String> = recs.iter().map(|r| r.headers["ce_id"].clone()).collect();
    let mut want: Vec<String> = [0, 2].iter().map(|i| results[*i]["id"].as_str().expect("id").to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Bulk items that are valid events but refused by the tenant rules get their own codes, and a refused item's
/// dead letter keeps the document as sent; an item whose tenant id is written with an escape is the same tenant.
#[tokio::test]
async fn bulk_items_refused_by_tenant_rules_are_dead_lettered_as_sent() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let (other, _) = app.tenant().await;
    let marker = testkit::unique("marker");
    let mut not_allowed = event(&tenant);
    not_allowed["source"] = json!("SOMETHING_ELSE");
    not_allowed["entityId"] = json!(marker);
    let escaped = serde_json::to_string(&event(&tenant)).expect("json").replace(
        &format!("\"tenantId\":\"{}", &tenant[..1]),
        &format!("\"tenantId\":\"\\u{:04x}", tenant.as_bytes()[0]),
    );
    assert!(escaped.contains("\\u"), "{escaped}");
    let body = format!("{{\"events\":[{},{},{},{escaped}]}}", event(&tenant), not_allowed, event(&other));
    let r = app.call("POST", "/events/bulk", Some(&key), Some("application/json"), body).await;
    assert_eq!(r.status, StatusCode::MULTI_STATUS, "{:?}", r.body);
    let codes: Vec<&str> =
        r.body["results"].as_array().expect("results").iter().map(|x| x["code"].as_str().unwrap_or("ok")).collect();
    assert_eq!(codes, ["ok", "source_not_allowed", "forbidden_tenant", "ok"], "{:?}", r.body);
    assert_eq!(app.records_for(&app.events_topic, &tenant, 2, WAIT).await.len(), 2);

    let dead = testkit::read_topic(&app.brokers, &app.deadletter_topic, WAIT, |rs| {
        rs.iter().any(|r| r.json()["original"].as_str().is_some_and(|o| o.contains(&marker)))
    })
    .await
    .expect("read");
    let letter = dead
        .iter()
        .map(testkit::Record::json)
        .find(|d| d["original"].as_str().is_some_and(|o| o.contains(&marker)))
        .expect("the refused item is dead-lettered");
    assert_eq!(letter["reason"], "source_not_allowed");
    let original: Value = serde_json::from_str(letter["original"].as_str().expect("original")).expect("json");
    assert_eq!(original, not_allowed);
}

/// NDJSON bulk, all good: 202 and every event in Kafka; a bulk where nothing is valid is a 422 problem document
/// that still lists every item.
#[tokio::test]
async fn bulk_ndjson_and_all_rejected() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let lines: String = (0..5).map(|_| format!("{}\n", event(&tenant))).collect();
    let r = app.call("POST", "/events/bulk", Some(&key), Some("application/x-ndjson"), lines).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["status"], "all_accepted");
    assert_eq!(app.records_for(&app.events_topic, &tenant, 5, WAIT).await.len(), 5);

    let r =
        app.call("POST", "/events/bulk", Some(&key), Some("application/x-ndjson"), "{\"tenantId\":\nnot json\n").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert!(r.content_type().starts_with("application/problem+json"));
    assert_eq!(r.body["code"], "all_rejected");
    assert_eq!(r.body["results"].as_array().expect("results").len(), 2);
    assert_eq!(r.body["results"][1]["code"], "malformed_json");
}

/// CloudEvents structured and binary mode map onto the envelope.
#[tokio::test]
async fn cloudevents_structured_and_binary() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let ce = json!({"specversion": "1.0", "id": "ce-1", "type": "com.acme.grc.CONTROL_FAILED", "source": "ARCHER_GRC",
                    "time": "2026-03-01T10:00:00Z", "subject": "ctl-9", "tenantid": tenant, "data": {"controlId": "ctl-9"}});
    let r = app.call("POST", "/events", Some(&key), Some("application/cloudevents+json"), ce.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["id"], "ce-1");

    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/events")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "ce-2")
        .header("ce-type", "USER_ACTION")
        .header("ce-source", "FRONTEND_APP")
        .header("ce-tenantid", &tenant)
        .header("ce-region", "eu")
        .body(axum::body::Body::from(r#"{"userId":"u1"}"#))
        .expect("request");
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);

    let recs = app.records_for(&app.events_topic, &tenant, 2, WAIT).await;
    let by_id = |id: &str| recs.iter().find(|r| r.headers["ce_id"] == id).expect("record").json();
    let a = by_id("ce-1");
    assert_eq!(
        (a["eventType"].as_str(), a["entityId"].as_str(), a["occurredAt"].as_str()),
        (Some("CONTROL_FAILED"), Some("ctl-9"), Some("2026-03-01T10:00:00Z"))
    );
    let b = by_id("ce-2");
    assert_eq!(b["data"]["userId"], "u1");
    assert_eq!(b["metadata"]["ce_region"], "eu");

    // A binary-mode event without its tenant names the missing header.
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/events")
        .header("authorization", format!("Bearer {key}"))
        .header("ce-specversion", "1.0")
        .header("ce-type", "USER_ACTION")
        .body(axum::body::Body::empty())
        .expect("request");
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["errors"].as_array().expect("errors").iter().any(|e| e["field"] == "ce-tenantid"), "{:?}", r.body);
}

/// GET /events filters by type, source and time, newest first, and honours `limit`.
#[tokio::test]
async fn recent_events_filters() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    for (t, s) in [("RISK_CREATED", "FRONTEND_APP"), ("USER_ACTION", "FRONTEND_APP"), ("RISK_CREATED", "MCP_SERVER")] {
        let r = app.post("/events", &key, &json!({"tenantId": tenant, "eventType": t, "source": s})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    app.wait_redis(&tenant, &key, |e| e.len() == 3).await;
    let q = |qs: &str| format!("/events/{tenant}?{qs}");
    let r = app.get(&q("eventType=RISK_CREATED"), &key).await;
    assert_eq!(r.body["count"], 2);
    let r = app.get(&q("eventType=RISK_CREATED&source=MCP_SERVER"), &key).await;
    assert_eq!(r.body["count"], 1);
    let r = app.get(&q("limit=1"), &key).await;
    assert_eq!(r.body["events"][0]["source"], "MCP_SERVER", "newest first");
    let r = app.get(&q("since=2999-01-01T00:00:00Z"), &key).await;
    assert_eq!(r.body["count"], 0);
    let r = app.get(&q("limit=0"), &key).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["field"], "limit");
}

/// The window stores a bulk request's events as batches of up to 64 per stream entry, and reads them back one by
/// one: newest first across entries, with filters and `limit` counting events, alongside an entry of one event in
/// the layout from before batches (field `event`). The live tail unpacks a batch in order.
#[tokio::test]
async fn window_entries_are_batches_read_event_by_event() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let stream = format!("evstream:{tenant}:events");
    let mut conn = redis::Client::open(testkit::redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // An entry as instances before batches wrote it.
    let old = json!({"id": "0192f0a0-0000-7000-8000-000000000001", "tenantId": tenant, "eventType": "USER_ACTION",
                     "source": "FRONTEND_APP", "data": {}, "metadata": {}, "occurredAt": "2026-01-01T00:00:00Z",
                     "receivedAt": "2026-01-01T00:00:00Z", "schemaVersion": "1.0", "correlationId": "c"});
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("event")
        .arg(old.to_string())
        .query_async(&mut conn)
        .await
        .expect("xadd");

    let base = app.serve().await;
    let http = testkit::http();
    let mut sse = http.get(format!("{base}/events/{tenant}/stream")).bearer_auth(&key).send().await.expect("sse");
    assert_eq!(sse.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<Value> = (0..100)
        .map(|i| {
            let mut e = event(&tenant);
            e["entityId"] = json!(format!("risk-{i}"));
            if i % 10 == 0 {
                e["eventType"] = json!("USER_ACTION");
                e["data"] = json!({});
            }
            e
        })
        .collect();
    let r = app.post("/events/bulk", &key, &json!({ "events": events })).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);

    let all = app.wait_redis(&tenant, &key, |e| e.len() == 101).await;
    assert_eq!(all.len(), 101);
    let ids: Vec<&str> = all.iter().map(|e| e["entityId"].as_str().unwrap_or("old")).collect();
    let want: Vec<String> = (0..100).rev().map(|i| format!("risk-{i}")).chain(["old".to_string()]).collect();
    assert_eq!(ids, want, "newest first, across entries");
    // Batches of at most 64 after the old entry, which the writer gave a size of one; the count is their sum.
    let sizes: Vec<u64> =
        redis::cmd("LRANGE").arg(format!("{stream}:sizes")).arg(0).arg(-1).query_async(&mut conn).await.expect("sizes");
    assert_eq!(sizes.first(), Some(&1), "{sizes:?}");
    assert!(sizes.iter().skip(1).all(|n| (1..=64).contains(n)), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<u64>(), 101);
    let count: u64 = redis::cmd("GET").arg(format!("{stream}:count")).query_async(&mut conn).await.expect("count");
    assert_eq!(count, 101);
    let q = |qs: &str| format!("/events/{tenant}?{qs}");
    let r = app.get(&q("limit=70"), &key).await;
    assert_eq!(r.body["count"], 70);
    assert_eq!(r.body["events"][69]["entityId"], "risk-30", "a limit that ends inside an entry");
    // More entries than one page of a small read (four entries): the scan pages back to the oldest entry.
    for i in 100..106 {
        let mut e = event(&tenant);
        e["entityId"] = json!(format!("risk-{i}"));
        assert_eq!(app.post("/events", &key, &e).await.status, StatusCode::ACCEPTED);
        app.wait_redis(&tenant, &key, |evs| evs.len() == i - 100 + 102).await;
    }
    let entries: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.expect("xlen");
    assert!(entries >= 8, "{entries} entries");
    let r = app.get(&q("eventType=USER_ACTION&limit=11"), &key).await;
    assert_eq!(r.body["count"], 11, "ten from the batches and the old one, across pages: {:?}", r.body);
    assert_eq!(r.body["events"][10]["id"], old["id"]);

    let mut buf = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = sse.chunk().await.expect("chunk") {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.matches("event: event").count() >= 100 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "{buf}");
    let order: Vec<usize> = (0..100).filter_map(|i| buf.find(&format!("\"risk-{i}\""))).collect();
    assert_eq!(order.len(), 100);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "the tail keeps the batch's order");
}

/// The live tail over a real socket delivers an event posted after it opened, and Prometheus metrics and the
/// per-tenant metrics count it.
#[tokio::test]
async fn live_tail_and_metrics_over_a_real_socket() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let base = app.serve().await;
    let http = testkit::http();
    let mut sse = http
        .get(format!("{base}/events/{tenant}/stream?eventType=USER_ACTION"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), 200);
    assert!(sse.headers()["content-type"].to_str().expect("ct").starts_with("text/event-stream"));
    // Give the tail a moment to start blocking on the stream, then post one filtered-out and one matching event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in ["RISK_CREATED", "USER_ACTION"] {
        let r = http
            .post(format!("{base}/events"))
            .bearer_auth(&key)
            .json(&json!({"tenantId": tenant, "eventType": t, "source": "FRONTEND_APP"}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
    }
    let mut buf = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = sse.chunk().await.expect("chunk") {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.contains("USER_ACTION") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "{buf}");
    assert!(!buf.contains("RISK_CREATED"), "the filter applies to the tail: {buf}");
    assert!(buf.contains("event: event"));

    let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(text.contains("evstream_events_accepted_total"), "{text}");
    assert!(text.contains("evstream_http_requests_total"));
    // Latency is exported as histograms (buckets add up across instances; the dashboards use `_bucket`).
    for h in ["evstream_ingest_duration_seconds", "evstream_kafka_produce_duration_seconds"] {
        assert!(text.contains(&format!("# TYPE {h} histogram")), "{h} is a histogram: {text}");
    }
    assert!(text.contains("evstream_http_request_duration_seconds_bucket{route=\"/events\",le=\"0.005\"}"), "{text}");
    let m: Value = http
        .get(format!("{base}/metrics/{tenant}"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("m")
        .json()
        .await
        .expect("json");
    assert_eq!(m["totalAccepted"], 2, "{m}");
    assert!(m["ingestLatencyMsP99"].as_f64().is_some());
    assert_eq!(m["topEventTypes"].as_array().expect("types").len(), 2);

    // One sample per accepted event in both histograms: a bulk request of three adds three to each count.
    let counts = || async {
        let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        ["evstream_ingest_duration_seconds", "evstream_kafka_produce_duration_seconds"].map(|h| {
            let line = text.lines().find_map(|l| l.strip_prefix(&format!("{h}_count ")));
            line.and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or_else(|| panic!("{h}_count: {text}"))
        })
    };
    let before = counts().await;
    let events: Vec<Value> = (0..3).map(|_| event(&tenant)).collect();
    assert_eq!(app.post("/events/bulk", &key, &json!({"events": events})).await.status, StatusCode::ACCEPTED);
    let after = counts().await;
    assert_eq!(after[0] - before[0], 3, "ingest samples: {before:?} -> {after:?}");
    // Records of other writers (the audit trail) may land in between; never fewer than the three.
    assert!(after[1] - before[1] >= 3, "produce samples: {before:?} -> {after:?}");
    let _ = ADMIN;
}
