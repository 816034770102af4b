//! Shared test helpers: an evstream API started in-process against the real broker and Redis.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use producer::sinks::kafka::KafkaSinkConfig;
use schemas::config::Quota;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stream_api::bootstrap::{self, Settings};
use stream_api::{ApiConfig, AppState};
use tower::ServiceExt;

pub const ADMIN: &str = "test-admin-key";

pub struct Opts {
    pub brokers: String,
    pub redis_url: String,
    pub config_topic: String,
    pub alerts_topic: String,
    pub delivery_timeout_ms: u64,
    /// The idempotent producer; off only against the test broker's restart bug (see broker_outage.rs).
    pub idempotence: bool,
    pub api: ApiConfig,
    pub quota: Quota,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            brokers: testkit::kafka_brokers(),
            redis_url: testkit::redis_url(),
            config_topic: testkit::unique("evstream.config"),
            alerts_topic: testkit::unique("evstream.alerts"),
            delivery_timeout_ms: 5_000,
            idempotence: true,
            api: ApiConfig::default(),
            quota: Quota { events_per_second: 1_000_000, bytes_per_second: 1 << 40, burst_seconds: 2 },
        }
    }
}

pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    pub brokers: String,
    pub events_topic: String,
    pub deadletter_topic: String,
    pub config_topic: String,
    pub audit_topic: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(Opts::default()).await
    }

    pub async fn start_with(o: Opts) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,librdkafka=info"))
            .try_init();
        let settings = Settings {
            kafka: KafkaSinkConfig {
                brokers: o.brokers.clone(),
                delivery_timeout_ms: o.delivery_timeout_ms,
                linger_ms: 1,
                idempotence: o.idempotence,
                ..KafkaSinkConfig::default()
            },
            redis_url: o.redis_url.clone(),
            redis_queue: 10_000,
            admin_key: Some(ADMIN.to_string()),
            events_topic: testkit::unique("evstream.events"),
            config_topic: o.config_topic.clone(),
            deadletter_topic: testkit::unique("evstream.deadletter"),
            alerts_topic: o.alerts_topic.clone(),
            alerts_deadletter_topic: testkit::unique("evstream.alerts.deadletter"),
            audit_topic: testkit::unique("evstream.audit"),
            idempotency_window: Duration::from_secs(600),
            default_quota: o.quota,
            api: ApiConfig { partitions: 3, ..o.api },
        };
        let started = bootstrap::start(&settings, prometheus()).await.expect("evstream starts");
        let state = started.state;
        Self {
            router: stream_api::app(state.clone()),
            state,
            brokers: o.brokers,
            events_topic: settings.events_topic,
            deadletter_topic: settings.deadletter_topic,
            config_topic: o.config_topic,
            audit_topic: settings.audit_topic.clone(),
        }
    }

    /// Serves the API on a real socket and returns its base URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = self.state.clone();
        tokio::spawn(stream_api::run(state, listener, std::future::pending()));
        format!("http://{addr}")
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let raw = res.into_body().collect().await.expect("body").to_bytes().to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply { status, headers, body, raw }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        self.send(b.body(body.into()).expect("request")).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(key), Some("application/json"), serde_json::to_vec(body).expect("json")).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.call("GET", path, Some(key), None, Body::empty()).await
    }

    pub async fn put(&self, path: &str, key: &str, body: &Value, if_match: Option<&str>) -> Reply {
        let mut b = Request::builder()
            .method("PUT")
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json");
        if let Some(m) = if_match {
            b = b.header("if-match", m);
        }
        self.send(b.body(Body::from(serde_json::to_vec(body).expect("json"))).expect("request")).await
    }

    /// Registers a fresh tenant and returns (tenant id, tenant key).
    pub async fn tenant(&self) -> (String, String) {
        let id = testkit::unique("tenant");
        let r = self.post("/tenants", ADMIN, &json!({"id": id, "name": "Test tenant"})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let r = self.call("POST", &format!("/tenants/{id}/keys"), Some(ADMIN), None, Body::empty()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        (id, r.body["key"].as_str().expect("key").to_string())
    }

    /// Every record of `topic` whose key is `tenant`, read by an independent consumer until `n` are seen or
    /// `wait` passes.
    pub async fn records_for(&self, topic: &str, tenant: &str, n: usize, wait: Duration) -> Vec<testkit::Record> {
        let all = testkit::read_topic(&self.brokers, topic, wait, |rs| {
            rs.iter().filter(|r| r.key.as_deref() == Some(tenant)).count() >= n
        })
        .await
        .expect("read topic");
        all.into_iter().filter(|r| r.key.as_deref() == Some(tenant)).collect()
    }

    /// Polls `GET /events/{tenant}` until `pred` holds on the events, or 10 s pass.
    pub async fn wait_redis(&self, tenant: &str, key: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get(&format!("/events/{tenant}?limit=1000"), key).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let evs = r.body["events"].as_array().cloned().unwrap_or_default();
            if pred(&evs) || Instant::now() > deadline {
                return evs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn event(tenant: &str) -> Value {
    json!({"tenantId": tenant, "eventType": "RISK_CREATED", "source": "FRONTEND_APP", "action": "CREATE",
           "entityId": "risk-1", "entityType": "risk", "data": {"title": "Vendor breach", "riskScore": 82}, "metadata": {"region": "eu"}})
}

/// One Prometheus recorder per test process.
fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| stream_api::telemetry::install_prometheus().ok()).clone()
}
