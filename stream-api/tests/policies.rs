//! Alert policies over the HTTP API: stored, versioned, replicated, validated with the field named, isolated per
//! tenant, and testable against a sample event.

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{Opts, TestApp};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn high_risk() -> Value {
    json!({"name": "High risk", "eventTypes": ["RISK_CREATED"], "severity": "high",
           "condition": {"matchAll": true, "rules": [
               {"field": "data.riskScore", "operator": "gte", "value": 80},
               {"matchAll": false, "rules": [
                   {"field": "source", "operator": "eq", "value": "ARCHER_GRC"},
                   {"field": "data.owner", "operator": "regex", "value": "^sec", "caseSensitive": false}]}]},
           "summaryTemplate": "Risk {entityId} scored {data.riskScore}", "messageTemplate": "owner {data.owner}, user {data.user_id}",
           "groupBy": ["entityId"], "throttleMinutes": 10, "receivers": ["oncall"]})
}

/// Create (201), read with ETag, replace (200), stale If-Match (412), list, delete (204), then 404.
#[tokio::test]
async fn policy_crud_round_trip() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let path = format!("/tenants/{tenant}/policies/high-risk");
    let r = app.put(&path, &key, &high_risk(), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.headers["etag"], "\"1\"");
    assert_eq!(r.body["id"], "high-risk");
    let r = app.get(&path, &key).await;
    assert_eq!(r.body["condition"]["rules"][1]["rules"][1]["operator"], "regex");
    assert_eq!(r.body["severity"], "high");
    // A read-back document can be PUT again as it is.
    let mut changed = r.body.clone();
    changed["severity"] = json!("critical");
    let r = app.put(&path, &key, &changed, Some("\"1\"")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["etag"], "\"2\"");
    let r = app.put(&path, &key, &high_risk(), Some("\"1\"")).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = app.get(&format!("/tenants/{tenant}/policies"), &key).await;
    assert_eq!(r.body["policies"].as_array().expect("list").len(), 1);
    assert_eq!(r.body["policies"][0]["severity"], "critical");
    let r = app.call("DELETE", &path, Some(&key), None, Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path, &key).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("/tenants/{tenant}/policies"), &key).await.body["policies"], json!([]));
    // The id can be used again after a delete.
    assert_eq!(app.put(&path, &key, &high_risk(), None).await.status, StatusCode::CREATED);
}

/// Invalid policies are refused with the offending field named, and nothing is stored.
#[tokio::test]
async fn invalid_policies_name_the_field() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let path = format!("/tenants/{tenant}/policies/p1");
    let cases = [
        (
            json!({"name": "x", "severity": "high", "condition": {"rules": [{"field": "data.x", "operator": "gt", "value": "big"}]}}),
            "condition.rules[0].value",
        ),
        (
            json!({"name": "x", "severity": "high", "condition": {"rules": [{"field": "data.x", "operator": "regex", "value": "(unclosed"}]}}),
            "condition.rules[0].value",
        ),
        (
            json!({"name": "x", "severity": "loud", "condition": {"rules": [{"field": "a", "operator": "exists"}]}}),
            "severity",
        ),
        (
            json!({"name": "x", "severity": "low", "eventTypes": ["NOPE"], "condition": {"rules": [{"field": "a", "operator": "exists"}]}}),
            "eventTypes[0]",
        ),
        (
            json!({"name": "x", "severity": "low", "receivers": ["Bad Name"], "condition": {"rules": [{"field": "a", "operator": "exists"}]}}),
            "receivers[0]",
        ),
        (
            json!({"name": "x", "severity": "low", "activeWindows": [{"start": "09:00", "end": "17:00", "timeZone": "Mars/Base"}], "condition": {"rules": [{"field": "a", "operator": "exists"}]}}),
            "activeWindows[0].timeZone",
        ),
    ];
    for (doc, field) in cases {
        let r = app.put(&path, &key, &doc, None).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{doc}: {:?}", r.body);
        assert_eq!(r.body["code"], "invalid_policy");
        assert!(
            r.body["errors"].as_array().expect("errors").iter().any(|e| e["field"] == field),
            "{field} not named in {:?}",
            r.body
        );
    }
    assert_eq!(app.get(&path, &key).await.status, StatusCode::NOT_FOUND);
    let r = app.put(&format!("/tenants/{tenant}/policies/Not_Valid"), &key, &high_risk(), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// `POST .../test` shows each rule's verdict and the alert that would be raised, with templates rendered and a
/// missing field shown as such.
#[tokio::test]
async fn test_endpoint_explains_a_sample_event() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let path = format!("/tenants/{tenant}/policies/high-risk");
    assert_eq!(app.put(&path, &key, &high_risk(), None).await.status, StatusCode::CREATED);
    let sample = json!({"tenantId": tenant, "eventType": "RISK_CREATED", "source": "FRONTEND_APP", "entityId": "risk-7",
                        "data": {"riskScore": 91, "owner": "SecOps"}});
    let r = app.post(&format!("{path}/test"), &key, &sample).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["matched"], true);
    let rules = r.body["rules"].as_array().expect("rules");
    assert_eq!(
        rules.iter().map(|x| x["matched"].as_bool().expect("bool")).collect::<Vec<_>>(),
        vec![true, false, true]
    );
    assert_eq!(r.body["alert"]["summary"], "Risk risk-7 scored 91");
    assert_eq!(r.body["alert"]["message"], "owner SecOps, user {data.user_id:missing}");
    assert_eq!(r.body["alert"]["groupKey"], "risk-7");
    assert_eq!(r.body["alert"]["severity"], "high");

    let mut low = sample.clone();
    low["data"]["riskScore"] = json!(10);
    let r = app.post(&format!("{path}/test"), &key, &low).await;
    assert_eq!(r.body["matched"], false);
    assert!(r.body["alert"].is_null());
    // Another event type is not evaluated by this policy.
    let mut other = sample.clone();
    other["eventType"] = json!("CONTROL_FAILED");
    assert_eq!(app.post(&format!("{path}/test"), &key, &other).await.body["matched"], false);
}

/// Tenant A cannot read, write or test tenant B's policies; a second instance sees a policy written on the first.
#[tokio::test]
async fn policies_are_isolated_and_replicated() {
    let first = TestApp::start().await;
    let (a, ka) = first.tenant().await;
    let (b, kb) = first.tenant().await;
    assert_eq!(
        first.put(&format!("/tenants/{b}/policies/p"), &kb, &high_risk(), None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(first.get(&format!("/tenants/{b}/policies/p"), &ka).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        first.put(&format!("/tenants/{b}/policies/p"), &ka, &high_risk(), None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(first.get(&format!("/tenants/{a}/policies/p"), &ka).await.status, StatusCode::NOT_FOUND);

    let second = TestApp::start_with(Opts { config_topic: first.config_topic.clone(), ..Opts::default() }).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = second.get(&format!("/tenants/{b}/policies/p"), &kb).await;
        if r.status == StatusCode::OK {
            assert_eq!(r.body["name"], "High risk");
            break;
        }
        assert!(Instant::now() < deadline, "second instance never saw the policy: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Receivers are stored like policies, validated with the field named, and never show their secrets.
#[tokio::test]
async fn receivers_hide_their_secrets() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let path = format!("/tenants/{tenant}/receivers/oncall");
    let doc =
        json!({"type": "webhook", "url": "http://127.0.0.1:9/hook/very-secret-token", "secret": "hmac-secret-value"});
    let r = app.put(&path, &key, &doc, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for body in [
        r.body.clone(),
        app.get(&path, &key).await.body,
        app.get(&format!("/tenants/{tenant}/receivers"), &key).await.body,
    ] {
        let text = body.to_string();
        assert!(!text.contains("very-secret-token") && !text.contains("hmac-secret-value"), "secret shown: {text}");
    }
    assert_eq!(app.get(&path, &key).await.body["url"], "****oken");
    let r = app.put(&path, &key, &json!({"type": "slack", "webhookUrl": "not a url"}), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["field"], "webhookUrl");
    let r = app.put(&path, &key, &json!({"type": "pagerduty", "routingKey": "R0UT1NGKEY", "extra": 1}), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A built-in pack is listed, enabled for a tenant with its receivers, and its policies work.
#[tokio::test]
async fn policy_packs() {
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    let r = app.get("/policy-packs", &key).await;
    let names: Vec<&str> =
        r.body["packs"].as_array().expect("packs").iter().filter_map(|p| p["pack"].as_str()).collect();
    assert_eq!(names, vec!["resource-thresholds", "security", "platform-health"]);
    let r = app
        .post(&format!("/tenants/{tenant}/policy-packs/resource-thresholds"), &key, &json!({"receivers": ["oncall"]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app.get(&format!("/tenants/{tenant}/policies"), &key).await;
    let ps = r.body["policies"].as_array().expect("policies");
    assert_eq!(ps.len(), 4);
    assert!(ps.iter().all(|p| p["receivers"] == json!(["oncall"])));
    let sample = json!({"tenantId": tenant, "eventType": "RESOURCE_METRIC", "source": "AWS", "data": {"metric": "cpu", "value": 97.5, "unit": "%", "resourceId": "vm-7"}});
    let r = app.post(&format!("/tenants/{tenant}/policies/pack-resource-cpu/test"), &key, &sample).await;
    assert_eq!(r.body["matched"], true);
    assert_eq!(r.body["alert"]["summary"], "CPU above 90%: vm-7 at 97.5%");
    assert_eq!(
        app.post(&format!("/tenants/{tenant}/policy-packs/nope"), &key, &json!({})).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Configuration and alert actions land on the audit topic as a hash chain, with who did them; a forged record
/// breaks the chain where it was inserted.
#[tokio::test]
async fn actions_are_audited_in_a_hash_chain() {
    use producer::audit::{verify, AuditRecord};
    let app = TestApp::start().await;
    let (tenant, key) = app.tenant().await;
    assert_eq!(
        app.put(&format!("/tenants/{tenant}/policies/p1"), &key, &high_risk(), None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.put(&format!("/stream-config/{tenant}"), &key, &json!({"retentionDays": 3}), None).await.status,
        StatusCode::OK
    );
    // A refused action is not an action.
    assert_eq!(
        app.put(&format!("/tenants/{tenant}/policies/p2"), &key, &json!({"name": "x"}), None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let read = || async {
        let recs = testkit::read_topic(&app.brokers, &app.audit_topic, Duration::from_secs(20), |rs| rs.len() >= 4)
            .await
            .expect("read");
        recs.iter()
            .map(|r| serde_json::from_slice::<AuditRecord>(&r.payload).expect("audit record"))
            .collect::<Vec<_>>()
    };
    let records = read().await;
    assert_eq!(records.len(), 4, "tenant, key, policy, stream config");
    assert_eq!(verify(&records).expect("intact").chains, 1);
    let actions: Vec<(&str, &str)> =
        records.iter().map(|r| (r.entry.actor.as_str(), r.entry.action.as_str())).collect();
    assert!(actions.contains(&("admin", "POST /tenants")));
    assert!(actions
        .iter()
        .any(|(actor, action)| actor.starts_with("key:") && *action == "PUT /tenants/{tenant}/policies/{id}"));
    assert!(!records.iter().any(|r| r.entry.subject.contains("p2")));
    // Forge: append a record claiming to be next in the chain, but with a made-up previous hash.
    let last = records.iter().max_by_key(|r| r.seq).expect("last").clone();
    let mut forged = last.clone();
    forged.seq += 1;
    forged.entry.action = "DELETE /tenants/{tenant}/policies/{id}".into();
    forged.prev_hash = "f".repeat(64);
    forged.hash = forged.compute_hash();
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", &app.brokers).create().expect("producer");
    let payload = serde_json::to_vec(&forged).expect("json");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&app.audit_topic).key(&forged.chain_id).payload(&payload),
            Duration::from_secs(5),
        )
        .await
        .expect("forged record written");
    let recs = testkit::read_topic(&app.brokers, &app.audit_topic, Duration::from_secs(20), |rs| rs.len() >= 5)
        .await
        .expect("read");
    let records: Vec<AuditRecord> =
        recs.iter().map(|r| serde_json::from_slice(&r.payload).expect("audit record")).collect();
    let broken = verify(&records).expect_err("the forgery is detected");
    assert_eq!(broken.seq, forged.seq);
}
