//! The alert stream end to end, against the real broker and Redis and real HTTP receivers on 127.0.0.1 that
//! record what they get: policy match -> alert -> webhook (HMAC-signed), Slack, PagerDuty Events v2 and Teams
//! payloads; grouping; acknowledge/resolve forwarded to PagerDuty with the same dedup key; retries, then the
//! dead-letter topic.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use producer::sinks::kafka::KafkaSinkConfig;
use schemas::config::Quota;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream_api::bootstrap::{self, Settings};
use stream_api::ApiConfig;
use tower::ServiceExt;

const ADMIN: &str = "alerts-admin";

/// One received request: receiver name, headers, JSON body.
type Received = (String, HashMap<String, String>, Value);

#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<Received>>>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

/// `/flaky` fails twice then succeeds; `/broken` always fails; `/slow429` asks to retry after 1 s once.
async fn receive(
    State(r): State<Recorder>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let n = {
        let mut c = r.calls.lock().expect("lock");
        let n = c.entry(name.clone()).or_default();
        *n += 1;
        *n
    };
    let mut out = HeaderMap::new();
    let status = match name.as_str() {
        "flaky" if n <= 2 => StatusCode::INTERNAL_SERVER_ERROR,
        "broken" => StatusCode::SERVICE_UNAVAILABLE,
        "slow429" if n == 1 => {
            out.insert("retry-after", "1".parse().expect("header"));
            StatusCode::TOO_MANY_REQUESTS
        }
        _ => StatusCode::OK,
    };
    if status == StatusCode::OK {
        let h = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // Keep the raw body for signature checks.
        let mut v = v;
        v["__raw"] = Value::String(String::from_utf8_lossy(&body).into_owned());
        r.got.lock().expect("lock").push((name, h, v));
    }
    (status, out)
}

impl Recorder {
    fn of(&self, name: &str) -> Vec<(HashMap<String, String>, Value)> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, h, v)| (h.clone(), v.clone()))
            .collect()
    }
    async fn wait(&self, name: &str, n: usize, secs: u64) -> Vec<(HashMap<String, String>, Value)> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.of(name);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn call(app: &Router, method: &str, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut b =
        axum::http::Request::builder().method(method).uri(path).header("authorization", format!("Bearer {key}"));
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b.body(axum::body::Body::from(body.map(|v| v.to_string()).unwrap_or_default())).expect("request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The services under test: an evstream API on the real broker and Redis, a recording receiver on loopback, and
/// alert-stream consumers started on demand.
struct Harness {
    rec: Recorder,
    base: String,
    settings: Settings,
    state: stream_api::AppState,
    app: Router,
}

impl Harness {
    async fn start(partitions: i32) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .try_init();
        let rec = Recorder::default();
        let recv_app = Router::new().route("/{name}", post(receive)).with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, recv_app).await });
        let settings = Settings {
            kafka: KafkaSinkConfig { brokers: testkit::kafka_brokers(), linger_ms: 1, ..KafkaSinkConfig::default() },
            redis_url: testkit::redis_url(),
            redis_queue: 1000,
            admin_key: Some(ADMIN.into()),
            events_topic: testkit::unique("evstream.events"),
            config_topic: testkit::unique("evstream.config"),
            deadletter_topic: testkit::unique("evstream.deadletter"),
            alerts_topic: testkit::unique("evstream.alerts"),
            alerts_deadletter_topic: testkit::unique("evstream.alerts.deadletter"),
            audit_topic: testkit::unique("evstream.audit"),
            api: ApiConfig { partitions, ..ApiConfig::default() },
            idempotency_window: Duration::from_secs(600),
            default_quota: Quota { events_per_second: 100_000, bytes_per_second: 1 << 30, burst_seconds: 2 },
        };
        let started = bootstrap::start(&settings, None).await.expect("start");
        let state = started.state.clone();
        let app = stream_api::app(started.state);
        Self { rec, base, settings, state, app }
    }

    fn config(&self, group: &str, attempts: u32) -> alert_stream::AlertStreamConfig {
        alert_stream::AlertStreamConfig {
            brokers: self.settings.kafka.brokers.clone(),
            topics: vec![self.settings.events_topic.clone()],
            alerts_topic: self.settings.alerts_topic.clone(),
            deadletter_topic: self.settings.alerts_deadletter_topic.clone(),
            group_id: group.to_string(),
            start_from: "earliest".into(),
            session_timeout_ms: 6000,
            delivery: alert_stream::notify::DeliveryPolicy {
                attempts,
                base_backoff: Duration::from_millis(100),
                timeout: Duration::from_secs(2),
            },
            max_deliveries: 100,
            sweep_every: Duration::from_secs(1),
            reclaim_after: Duration::from_secs(5),
        }
    }

    /// Starts one alert-stream consumer that runs until `stop` resolves.
    fn consumer(
        &self,
        cfg: alert_stream::AlertStreamConfig,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<(), alert_stream::AlertStreamError>> {
        let (configs, store, kafka) =
            (self.state.pipeline.configs().clone(), self.state.alerts.clone(), self.state.pipeline.kafka().clone());
        tokio::spawn(alert_stream::run(cfg, configs, store, kafka, stop))
    }
}

#[tokio::test]
async fn policies_raise_alerts_and_receivers_get_their_payloads() {
    let h = Harness::start(2).await;
    let (rec, base, app, settings) = (h.rec.clone(), h.base.clone(), h.app.clone(), h.settings.clone());
    h.consumer(h.config(&testkit::unique("alerts-group"), 3), std::future::pending());

    // Tenant, receivers, policies.
    let tenant = testkit::unique("tenant");
    assert_eq!(call(&app, "POST", "/tenants", ADMIN, Some(json!({"id": tenant}))).await.0, StatusCode::CREATED);
    let t = |p: &str| format!("/tenants/{tenant}/{p}");
    let smtp = testkit::SmtpServer::start().await.expect("smtp");
    let receivers = [
        (
            "mail",
            json!({"type": "email", "host": "127.0.0.1", "port": smtp.port, "tls": "none", "from": "alerts@evstream.local", "to": ["oncall@example.com"]}),
        ),
        ("hook", json!({"type": "webhook", "url": format!("{base}/hook"), "secret": "s3cret"})),
        ("slack", json!({"type": "slack", "webhookUrl": format!("{base}/slack")})),
        ("pd", json!({"type": "pagerduty", "routingKey": "R0UTINGKEY0123456789", "url": format!("{base}/pd")})),
        ("teams", json!({"type": "teams", "webhookUrl": format!("{base}/teams")})),
        ("flaky", json!({"type": "webhook", "url": format!("{base}/flaky")})),
        ("broken", json!({"type": "webhook", "url": format!("{base}/broken")})),
        ("slow429", json!({"type": "webhook", "url": format!("{base}/slow429")})),
    ];
    for (id, doc) in receivers {
        assert_eq!(call(&app, "PUT", &t(&format!("receivers/{id}")), ADMIN, Some(doc)).await.0, StatusCode::CREATED);
    }
    let policy = json!({"name": "High risk", "eventTypes": ["RISK_CREATED"], "severity": "critical", "groupBy": ["entityId"],
        "condition": {"rules": [{"field": "data.riskScore", "operator": "gte", "value": 80}]},
        "summaryTemplate": "Risk {entityId} scored {data.riskScore}", "messageTemplate": "{data.title}",
        "receivers": ["hook", "slack", "pd", "teams", "mail"]});
    assert_eq!(call(&app, "PUT", &t("policies/high-risk"), ADMIN, Some(policy)).await.0, StatusCode::CREATED);
    let retry_policy = json!({"name": "Control failed", "eventTypes": ["CONTROL_FAILED"], "severity": "medium",
        "condition": {"rules": [{"field": "data.controlId", "operator": "exists"}]}, "receivers": ["flaky", "broken", "slow429"]});
    assert_eq!(
        call(&app, "PUT", &t("policies/control-failed"), ADMIN, Some(retry_policy)).await.0,
        StatusCode::CREATED
    );

    // A matching event, a non-matching one, and a second one of the same group.
    let ev = |score: i64, entity: &str| json!({"tenantId": tenant, "eventType": "RISK_CREATED", "source": "ARCHER_GRC", "entityId": entity, "data": {"title": "Vendor breach", "riskScore": score}});
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev(91, "risk-1"))).await.0, StatusCode::ACCEPTED);
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev(10, "risk-2"))).await.0, StatusCode::ACCEPTED);

    // Webhook: signed JSON (the consumer group join can take a while on the test broker).
    let hook = rec.wait("hook", 1, 60).await;
    assert_eq!(hook.len(), 1, "webhook delivered once");
    let (h, body) = &hook[0];
    let raw = body["__raw"].as_str().expect("raw");
    assert_eq!(h["x-evstream-signature"], format!("sha256={}", alert_stream::notify::sign("s3cret", raw.as_bytes())));
    assert_eq!(h["x-evstream-event"], "alert.opened");
    assert_eq!(body["alert"]["summary"], "Risk risk-1 scored 91");
    assert_eq!(body["alert"]["severity"], "critical");
    let alert_id = body["alert"]["id"].as_str().expect("id").to_string();

    // Slack, PagerDuty and Teams got their documented shapes.
    let slack = rec.wait("slack", 1, 10).await;
    assert!(slack[0].1["text"].as_str().expect("text").contains("Risk risk-1 scored 91"));
    assert_eq!(slack[0].1["attachments"][0]["color"], "#b71c1c");
    let pd = rec.wait("pd", 1, 10).await;
    assert_eq!(pd[0].1["routing_key"], "R0UTINGKEY0123456789");
    assert_eq!(pd[0].1["event_action"], "trigger");
    assert_eq!(pd[0].1["dedup_key"], alert_id.as_str());
    assert_eq!(pd[0].1["payload"]["severity"], "critical");
    assert_eq!(pd[0].1["payload"]["summary"], "Risk risk-1 scored 91");
    assert!(pd[0].1["payload"]["source"].as_str().expect("source").starts_with("evstream/"));
    let teams = rec.wait("teams", 1, 10).await;
    assert_eq!(teams[0].1["@type"], "MessageCard");
    // E-mail through a real SMTP server: subject, and both a text and an HTML part.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !smtp.received().contains("text/html") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mail = smtp.received();
    assert!(mail.contains("Subject: [CRITICAL] Risk risk-1 scored 91"), "{mail}");
    assert!(
        mail.contains("To: oncall@example.com") && mail.contains("text/plain") && mail.contains("text/html"),
        "{mail}"
    );

    // Grouping: a second event of the same entity updates the alert, notifies nobody.
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev(95, "risk-1"))).await.0, StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, a) = call(&app, "GET", &t(&format!("alerts/{alert_id}")), ADMIN, None).await;
        if a["count"] == 2 {
            assert_eq!(a["summary"], "Risk risk-1 scored 95");
            break;
        }
        assert!(Instant::now() < deadline, "alert never updated: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rec.of("hook").len(), 1, "no new notification for a grouped event");
    let (_, list) = call(&app, "GET", &t("alerts?status=active"), ADMIN, None).await;
    assert_eq!(list["count"], 1, "{list}");

    // Acknowledge and resolve through the API reach PagerDuty with the same dedup key.
    let (s, a) = call(&app, "POST", &t(&format!("alerts/{alert_id}/acknowledge")), ADMIN, None).await;
    assert_eq!((s, a["status"].as_str()), (StatusCode::OK, Some("acknowledged")));
    let pd = rec.wait("pd", 2, 20).await;
    assert_eq!(pd[1].1["event_action"], "acknowledge");
    assert_eq!(pd[1].1["dedup_key"], alert_id.as_str());
    call(&app, "POST", &t(&format!("alerts/{alert_id}/resolve")), ADMIN, None).await;
    let pd = rec.wait("pd", 3, 20).await;
    assert_eq!(pd[2].1["event_action"], "resolve");
    assert_eq!(rec.of("slack").len(), 1, "Slack does not follow acknowledge/resolve");

    // Retries: flaky succeeds on the third attempt, 429 honours Retry-After, broken ends in the dead-letter topic.
    let control = json!({"tenantId": tenant, "eventType": "CONTROL_FAILED", "source": "ARCHER_GRC", "data": {"controlId": "c-1"}});
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(control)).await.0, StatusCode::ACCEPTED);
    assert_eq!(rec.wait("flaky", 1, 30).await.len(), 1);
    assert_eq!(rec.wait("slow429", 1, 30).await.len(), 1);
    let calls = rec.calls.lock().expect("lock").clone();
    assert_eq!(calls.get("flaky"), Some(&3));
    assert_eq!(calls.get("slow429"), Some(&2));
    let dead = testkit::read_topic(
        &settings.kafka.brokers,
        &settings.alerts_deadletter_topic,
        Duration::from_secs(30),
        |rs| !rs.is_empty(),
    )
    .await
    .expect("read");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].json()["receiver"], "broken");
    assert_eq!(dead[0].json()["reason"], "server_error");
    assert_eq!(calls.get("broken"), Some(&3));
    // The attempts are in the alert's history.
    let (_, list) = call(&app, "GET", &t("alerts?policy=control-failed"), ADMIN, None).await;
    let cid = list["alerts"][0]["id"].as_str().expect("id").to_string();
    let (_, a) = call(&app, "GET", &t(&format!("alerts/{cid}")), ADMIN, None).await;
    let attempts = a["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["kind"] == "delivery" && h["receiver"] == "flaky")
        .count();
    assert_eq!(attempts, 3, "{a}");

    // A topic the tenant adds later is followed: events routed there are evaluated too.
    let own = testkit::unique("tenant-own");
    let (s, _) = call(&app, "PUT", &format!("/stream-config/{tenant}"), ADMIN, Some(json!({"topics": [own]}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev(99, "risk-own"))).await.1["topic"], own.as_str());
    // The webhook also followed the acknowledge and resolve above (opened, acknowledged, resolved, opened).
    let hooks = rec.wait("hook", 4, 60).await;
    let kinds: Vec<&str> = hooks.iter().filter_map(|(_, b)| b["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        vec!["opened", "acknowledged", "resolved", "opened"],
        "the event on the tenant's own topic raised an alert"
    );
    assert_eq!(hooks[3].1["alert"]["summary"], "Risk risk-own scored 99");

    // Transitions are published on the alerts topic, keyed by alert id.
    let resolved = |r: &testkit::Record| r.key.as_deref() == Some(alert_id.as_str()) && r.json()["kind"] == "resolved";
    let transitions =
        testkit::read_topic(&settings.kafka.brokers, &settings.alerts_topic, Duration::from_secs(20), |rs| {
            rs.iter().any(resolved)
        })
        .await
        .expect("read");
    let kinds: Vec<String> = transitions
        .iter()
        .filter(|r| r.key.as_deref() == Some(alert_id.as_str()))
        .map(|r| r.json()["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds,
        vec!["opened", "acknowledged", "resolved"],
        "one partition per alert keeps its transitions in order"
    );
}

/// A resolve condition (an Alertmanager-style `resolved` event of the same group) resolves the alert and tells
/// PagerDuty; `autoResolveAfterSecs` resolves an alert that went quiet.
#[tokio::test]
async fn resolve_condition_and_auto_resolve() {
    let h = Harness::start(2).await;
    let (rec, base, app) = (h.rec.clone(), h.base.clone(), h.app.clone());
    let group = testkit::unique("alerts-group");
    h.consumer(h.config(&group, 2), std::future::pending());

    let tenant = testkit::unique("tenant");
    assert_eq!(call(&app, "POST", "/tenants", ADMIN, Some(json!({"id": tenant}))).await.0, StatusCode::CREATED);
    let t = |p: &str| format!("/tenants/{tenant}/{p}");
    let pd = json!({"type": "pagerduty", "routingKey": "R0UTINGKEY0123456789", "url": format!("{base}/pd")});
    assert_eq!(call(&app, "PUT", &t("receivers/pd"), ADMIN, Some(pd)).await.0, StatusCode::CREATED);
    let firing = json!({"name": "Cloud alert", "eventTypes": ["CLOUD_ALERT"], "severity": "high", "groupBy": ["data.alertName"],
        "condition": {"rules": [{"field": "data.status", "operator": "eq", "value": "firing"}]},
        "resolveCondition": {"rules": [{"field": "data.status", "operator": "eq", "value": "resolved"}]},
        "summaryTemplate": "{data.alertName} firing", "receivers": ["pd"]});
    assert_eq!(call(&app, "PUT", &t("policies/cloud"), ADMIN, Some(firing)).await.0, StatusCode::CREATED);
    let quiet = json!({"name": "Quiet", "eventTypes": ["SYSTEM_ERROR"], "severity": "low", "autoResolveAfterSecs": 2,
        "condition": {"rules": [{"field": "data.component", "operator": "exists"}]}, "receivers": ["pd"]});
    assert_eq!(call(&app, "PUT", &t("policies/quiet"), ADMIN, Some(quiet)).await.0, StatusCode::CREATED);

    let cloud = |status: &str| json!({"tenantId": tenant, "eventType": "CLOUD_ALERT", "source": "ALERTMANAGER", "data": {"alertName": "HighCPU", "status": status}});
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(cloud("firing"))).await.0, StatusCode::ACCEPTED);
    let got = rec.wait("pd", 1, 60).await;
    assert_eq!(got[0].1["event_action"], "trigger");
    let key = got[0].1["dedup_key"].as_str().expect("dedup").to_string();
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(cloud("resolved"))).await.0, StatusCode::ACCEPTED);
    let got = rec.wait("pd", 2, 30).await;
    assert_eq!(got[1].1["event_action"], "resolve");
    assert_eq!(got[1].1["dedup_key"], key.as_str());
    let (_, a) = call(&app, "GET", &t(&format!("alerts/{key}")), ADMIN, None).await;
    assert_eq!(a["status"], "resolved");

    let err =
        json!({"tenantId": tenant, "eventType": "SYSTEM_ERROR", "source": "BACKEND_API", "data": {"component": "db"}});
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(err)).await.0, StatusCode::ACCEPTED);
    let got = rec.wait("pd", 4, 30).await;
    assert_eq!(got.len(), 4, "trigger, then auto-resolve");
    assert_eq!(
        (got[2].1["event_action"].as_str(), got[3].1["event_action"].as_str()),
        (Some("trigger"), Some("resolve"))
    );
    assert_eq!(got[2].1["dedup_key"], got[3].1["dedup_key"]);

    // Throttle: the cloud alert was notified minutes ago, so firing again re-opens it silently ...
    let throttled = json!({"name": "Throttled", "eventTypes": ["SECURITY_EVENT"], "severity": "high", "groupBy": ["data.user"],
        "throttleMinutes": 10, "condition": {"rules": [{"field": "data.user", "operator": "exists"}]},
        "resolveCondition": {"rules": [{"field": "data.outcome", "operator": "eq", "value": "success"}]}, "receivers": ["pd"]});
    assert_eq!(call(&app, "PUT", &t("policies/throttled"), ADMIN, Some(throttled)).await.0, StatusCode::CREATED);
    // ... and at most one alert per hour for this policy, whatever the group.
    let capped = json!({"name": "Capped", "eventTypes": ["DATA_ANOMALY"], "severity": "low", "groupBy": ["entityId"], "maxAlertsPerHour": 1,
        "condition": {"rules": [{"field": "entityId", "operator": "exists"}]}, "receivers": ["pd"]});
    assert_eq!(call(&app, "PUT", &t("policies/capped"), ADMIN, Some(capped)).await.0, StatusCode::CREATED);
    let sec = |outcome: &str| json!({"tenantId": tenant, "eventType": "SECURITY_EVENT", "source": "AWS", "data": {"user": "mallory", "outcome": outcome}});
    let anomaly = |e: &str| json!({"tenantId": tenant, "eventType": "DATA_ANOMALY", "source": "AWS", "entityId": e});
    for ev in [sec("denied"), sec("success"), sec("denied"), anomaly("a-1"), anomaly("a-2")] {
        assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev)).await.0, StatusCode::ACCEPTED);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (suppressed, list) = loop {
        let (_, list) = call(&app, "GET", &t("alerts?status=suppressed"), ADMIN, None).await;
        if list["count"] == 2 || Instant::now() > deadline {
            break (list["count"].clone(), list);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(suppressed, 2, "{list}");
    let reasons: Vec<&str> =
        list["alerts"].as_array().expect("alerts").iter().filter_map(|a| a["reason"].as_str()).collect();
    assert!(reasons.contains(&"throttled") && reasons.contains(&"max_alerts_per_hour"), "{reasons:?}");
    // Notified: the first security alert (trigger), its resolve, the first anomaly — and nothing for the suppressed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let actions: Vec<String> =
        rec.of("pd").iter().skip(4).map(|(_, b)| b["event_action"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(actions, vec!["trigger", "resolve", "trigger"], "{actions:?}");

    // A silence mutes matching alerts while it is in force.
    let until = "2999-01-01T00:00:00Z";
    let silence = json!({"matchers": {"rules": [{"field": "event.data.userId", "operator": "eq", "value": "maintenance-bot"}]}, "endsAt": until, "comment": "planned work"});
    assert_eq!(call(&app, "PUT", &t("silences/maintenance"), ADMIN, Some(silence)).await.0, StatusCode::CREATED);
    let user = json!({"name": "User action", "eventTypes": ["USER_ACTION"], "severity": "medium", "groupBy": ["data.userId"],
        "condition": {"rules": [{"field": "data.userId", "operator": "exists"}]}, "receivers": ["pd"]});
    assert_eq!(call(&app, "PUT", &t("policies/user"), ADMIN, Some(user)).await.0, StatusCode::CREATED);
    // An inhibition rule: a firing critical alert mutes low ones of the same group.
    let inhibit = json!({"source": {"rules": [{"field": "severity", "operator": "eq", "value": "critical"}]},
        "target": {"rules": [{"field": "severity", "operator": "eq", "value": "low"}]}, "equal": ["groupKey"]});
    assert_eq!(
        call(&app, "PUT", &t("inhibit-rules/outage-mutes-degraded"), ADMIN, Some(inhibit)).await.0,
        StatusCode::CREATED
    );
    let outage = json!({"name": "Outage", "eventTypes": ["CLOUD_OUTAGE"], "severity": "critical", "groupBy": ["data.region"],
        "condition": {"rules": [{"field": "data.region", "operator": "exists"}]}, "receivers": ["pd"]});
    let degraded = json!({"name": "Degraded", "eventTypes": ["SYSTEM_PERFORMANCE"], "severity": "low", "groupBy": ["data.region"],
        "condition": {"rules": [{"field": "data.region", "operator": "exists"}]}, "receivers": ["pd"]});
    assert_eq!(call(&app, "PUT", &t("policies/outage"), ADMIN, Some(outage)).await.0, StatusCode::CREATED);
    assert_eq!(call(&app, "PUT", &t("policies/degraded"), ADMIN, Some(degraded)).await.0, StatusCode::CREATED);
    let before = rec.of("pd").len();
    let evs = [
        json!({"tenantId": tenant, "eventType": "USER_ACTION", "source": "FRONTEND_APP", "data": {"userId": "maintenance-bot"}}),
        json!({"tenantId": tenant, "eventType": "CLOUD_OUTAGE", "source": "AWS", "data": {"provider": "aws", "region": "eu"}}),
    ];
    for ev in evs {
        assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev)).await.0, StatusCode::ACCEPTED);
    }
    rec.wait("pd", before + 1, 30).await;
    for region in ["eu", "us"] {
        let ev =
            json!({"tenantId": tenant, "eventType": "SYSTEM_PERFORMANCE", "source": "AWS", "data": {"region": region}});
        assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev)).await.0, StatusCode::ACCEPTED);
    }
    let got = rec.wait("pd", before + 2, 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summaries: Vec<String> = rec.of("pd")[before..]
        .iter()
        .map(|(_, b)| b["payload"]["component"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        summaries,
        vec!["outage", "degraded"],
        "only the outage and the us degradation were notified ({})",
        got.len()
    );
    let (_, list) = call(&app, "GET", &t("alerts?status=suppressed"), ADMIN, None).await;
    let reasons: Vec<&str> =
        list["alerts"].as_array().expect("alerts").iter().filter_map(|a| a["reason"].as_str()).collect();
    assert!(reasons.contains(&"silenced") && reasons.contains(&"inhibited"), "{reasons:?}");

    // Absence: no backup event within 2 s raises an alert; the next backup event resolves it.
    let heartbeat = json!({"name": "Backups", "eventTypes": ["AUDIT_EVENT"], "severity": "high", "absenceSecs": 2,
        "condition": {"rules": [{"field": "data.auditEventType", "operator": "eq", "value": "backup_done"}]}, "receivers": ["pd"]});
    let before = rec.of("pd").len();
    assert_eq!(call(&app, "PUT", &t("policies/heartbeat"), ADMIN, Some(heartbeat)).await.0, StatusCode::CREATED);
    let got = rec.wait("pd", before + 1, 30).await;
    assert_eq!(got[before].1["event_action"], "trigger");
    assert_eq!(got[before].1["payload"]["component"], "heartbeat");
    assert!(got[before].1["payload"]["summary"].as_str().expect("summary").contains("no matching event for 2 s"));
    let backup = json!({"tenantId": tenant, "eventType": "AUDIT_EVENT", "source": "BACKEND_API", "data": {"auditEventType": "backup_done"}});
    assert_eq!(call(&app, "POST", "/events", ADMIN, Some(backup)).await.0, StatusCode::ACCEPTED);
    let got = rec.wait("pd", before + 2, 30).await;
    assert_eq!(got[before + 1].1["event_action"], "resolve");
    assert_eq!(got[before + 1].1["dedup_key"], got[before].1["dedup_key"]);

    // Crash recovery: a notification another instance took from the outbox and never finished is delivered by
    // this one once it has been pending longer than `reclaim_after`.
    let alert = producer::alerts::Alert {
        id: "abcdef0123456789abcdef01".into(),
        tenant_id: tenant.clone(),
        policy_id: "cloud".into(),
        group_key: "orphan".into(),
        status: producer::alerts::AlertStatus::Active,
        severity: schemas::policy::Severity::High,
        summary: "orphaned notification".into(),
        message: None,
        count: 1,
        first_seen: "2026-01-01T00:00:00Z".into(),
        last_seen: "2026-01-01T00:00:00Z".into(),
        reason: None,
        last_event_id: "e-orphan".into(),
    };
    let job = alert_stream::Job { tenant: tenant.clone(), receiver: "pd".into(), kind: "opened".into(), alert };
    let client = redis::Client::open(testkit::redis_url()).expect("redis");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let key = alert_stream::outbox_key(&group);
    // Atomically (MULTI/EXEC), so that the dead instance, not the live one, takes it; and it never delivers it.
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("job")
        .arg(serde_json::to_string(&job).expect("job"))
        .ignore()
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("deliverers")
        .arg("dead-instance")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .ignore();
    let _: () = pipe.query_async(&mut conn).await.expect("outbox job taken by the dead instance");
    let taken_at = Instant::now();
    // (The absence policy above keeps firing while no backup arrives: look for this notification only.)
    let orphan =
        |rec: &Recorder| rec.of("pd").iter().filter(|(_, b)| b["dedup_key"] == "abcdef0123456789abcdef01").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while orphan(&rec) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(orphan(&rec), 1, "the orphaned notification was delivered");
    assert!(
        taken_at.elapsed() >= Duration::from_secs(5),
        "delivered only after reclaim_after: {:?}",
        taken_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(orphan(&rec), 1, "delivered once");
}

/// Two alert-stream processes in one consumer group split the work and never notify an alert twice; when one
/// stops, the other takes over its partitions and nothing is lost or repeated; when all stop and one restarts, it
/// picks up where the group left off.
#[tokio::test]
async fn two_consumers_share_the_work_without_duplicates() {
    let h = Harness::start(4).await;
    let (rec, base, app) = (h.rec.clone(), h.base.clone(), h.app.clone());
    let group = testkit::unique("alerts-group");
    let consumer = |stop: tokio::sync::oneshot::Receiver<()>| {
        h.consumer(h.config(&group, 2), async move {
            let _ = stop.await;
        })
    };
    let (stop_a, rx_a) = tokio::sync::oneshot::channel();
    let (stop_b, rx_b) = tokio::sync::oneshot::channel::<()>();
    let a = consumer(rx_a);
    let b = consumer(rx_b);

    let tenants: Vec<String> = (0..6).map(|_| testkit::unique("tenant")).collect();
    for tenant in &tenants {
        assert_eq!(call(&app, "POST", "/tenants", ADMIN, Some(json!({"id": tenant}))).await.0, StatusCode::CREATED);
        let hook = json!({"type": "webhook", "url": format!("{base}/hook")});
        assert_eq!(
            call(&app, "PUT", &format!("/tenants/{tenant}/receivers/hook"), ADMIN, Some(hook)).await.0,
            StatusCode::CREATED
        );
        let p = json!({"name": "Every action", "eventTypes": ["USER_ACTION"], "severity": "info", "groupBy": ["data.n"],
            "condition": {"rules": [{"field": "data.n", "operator": "exists"}]}, "receivers": ["hook"]});
        assert_eq!(
            call(&app, "PUT", &format!("/tenants/{tenant}/policies/every"), ADMIN, Some(p)).await.0,
            StatusCode::CREATED
        );
    }
    let post = |n: usize| {
        let tenant = tenants[n % tenants.len()].clone();
        let app = app.clone();
        async move {
            let ev =
                json!({"tenantId": tenant, "eventType": "USER_ACTION", "source": "FRONTEND_APP", "data": {"n": n}});
            assert_eq!(call(&app, "POST", "/events", ADMIN, Some(ev)).await.0, StatusCode::ACCEPTED);
        }
    };
    for n in 0..30 {
        post(n).await;
    }
    assert_eq!(rec.wait("hook", 30, 90).await.len(), 30);
    // One consumer leaves; the other must take over its partitions.
    let _ = stop_a.send(());
    let _ = a.await;
    for n in 30..50 {
        post(n).await;
    }
    let got = rec.wait("hook", 50, 90).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got_after = rec.of("hook");
    assert_eq!(got_after.len(), got.len(), "late duplicates arrived");
    let mut ns: Vec<u64> =
        got_after.iter().filter_map(|(_, b)| b["alert"]["groupKey"].as_str()?.parse().ok()).collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..50).collect::<Vec<u64>>(), "every alert exactly once");

    // The last consumer stops too; events arrive while none runs; a restarted one raises each exactly once.
    let _ = stop_b.send(());
    let _ = b.await;
    for n in 50..70 {
        post(n).await;
    }
    let (_stop_c, rx_c) = tokio::sync::oneshot::channel::<()>();
    let _c = consumer(rx_c);
    rec.wait("hook", 70, 90).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ns: Vec<u64> =
        rec.of("hook").iter().filter_map(|(_, b)| b["alert"]["groupKey"].as_str()?.parse().ok()).collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..70).collect::<Vec<u64>>(), "after a restart: nothing lost, nothing repeated");
}
