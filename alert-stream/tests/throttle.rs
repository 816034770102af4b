//! Throttling and the hourly limit on a clock the test moves: the decisions are made on `Firing::at_ms`, so an hour
//! passes without waiting one (state in the real Redis, transitions on the real broker).

use producer::alerts::{alert_id, AlertStatus, AlertStore, Firing, Raised};
use producer::audit::AuditLog;
use producer::redis_conn::RedisConn;
use producer::sinks::kafka::KafkaSinkConfig;
use schemas::policy::Severity;
use schemas::TenantId;

const MINUTE: i64 = 60_000;

async fn store() -> AlertStore {
    let redis = RedisConn::connect(&testkit::redis_url()).await.expect("redis");
    let kafka =
        KafkaSinkConfig { brokers: testkit::kafka_brokers(), ..KafkaSinkConfig::default() }.build().expect("kafka");
    let audit = AuditLog::new(kafka.clone(), testkit::unique("evstream.audit"));
    AlertStore::new(redis, kafka, testkit::unique("evstream.alerts"), audit)
}

struct Fire<'a> {
    store: &'a AlertStore,
    tenant: &'a TenantId,
    n: std::cell::Cell<u32>,
}

impl Fire<'_> {
    /// One matching event of `group` at `at_ms`; returns what the store decided (`opened`, `suppressed:<reason>`,
    /// `updated`).
    async fn at(&self, group: &str, at_ms: i64, throttle_minutes: u32, max: Option<u32>) -> String {
        self.n.set(self.n.get() + 1);
        let event_id = format!("e{}", self.n.get());
        let f = Firing {
            tenant: self.tenant,
            policy_id: "p",
            group_key: group,
            severity: Severity::High,
            summary: "s".into(),
            message: None,
            event_id: &event_id,
            throttle_minutes,
            max_alerts_per_hour: max,
            mute: None,
            at_ms,
        };
        match self.store.raise(f).await.expect("raise") {
            Raised::Opened { .. } => "opened".into(),
            Raised::Suppressed(a) => format!("suppressed:{}", a.reason.unwrap_or_default()),
            Raised::Updated(_) => "updated".into(),
            Raised::Seen => "seen".into(),
        }
    }

    async fn resolve(&self, group: &str) {
        let id = alert_id(self.tenant, "p", group);
        self.store.transition(self.tenant.as_str(), &id, AlertStatus::Resolved).await.expect("resolve");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_notified_within_the_throttle_window_is_raised_silently() {
    let store = store().await;
    let tenant = TenantId::new(testkit::unique("thr")).expect("tenant");
    let fire = Fire { store: &store, tenant: &tenant, n: Default::default() };
    let t0 = producer::alerts::now_ms();
    assert_eq!(fire.at("db-1", t0, 15, None).await, "opened");
    fire.resolve("db-1").await;
    // It flaps back 5 minutes later: inside the 15-minute window.
    assert_eq!(fire.at("db-1", t0 + 5 * MINUTE, 15, None).await, "suppressed:throttled");
    // Another group of the same policy is not throttled by it.
    assert_eq!(fire.at("db-2", t0 + 5 * MINUTE, 15, None).await, "opened");
    // 14 minutes 59 s after the notification: still throttled; the suppressed alert stays suppressed.
    assert_eq!(fire.at("db-1", t0 + 15 * MINUTE - 1_000, 15, None).await, "suppressed:throttled");
    // The window is measured from the notification, not from the silent raises: at 15 minutes it notifies again.
    assert_eq!(fire.at("db-1", t0 + 15 * MINUTE, 15, None).await, "opened");
    // While open, further events only update it.
    assert_eq!(fire.at("db-1", t0 + 16 * MINUTE, 15, None).await, "updated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_alerts_per_hour_then_silence_until_the_next_hour() {
    let store = store().await;
    let tenant = TenantId::new(testkit::unique("mph")).expect("tenant");
    let fire = Fire { store: &store, tenant: &tenant, n: Default::default() };
    // The start of an hour (of the epoch, UTC), an hour ago, so the limit's buckets are ones nobody else used.
    let hour = (producer::alerts::now_ms() / 3_600_000 - 1) * 3_600_000;
    let mut got = Vec::new();
    for (i, minute) in [1, 10, 20, 59].into_iter().enumerate() {
        got.push(fire.at(&format!("vm-{i}"), hour + minute * MINUTE, 0, Some(2)).await);
    }
    assert_eq!(got, ["opened", "opened", "suppressed:max_alerts_per_hour", "suppressed:max_alerts_per_hour"]);
    // The next hour starts a new count.
    assert_eq!(fire.at("vm-9", hour + 60 * MINUTE, 0, Some(2)).await, "opened");
    assert_eq!(fire.at("vm-2", hour + 61 * MINUTE, 0, Some(2)).await, "opened", "a suppressed group opens now");
    assert_eq!(fire.at("vm-8", hour + 62 * MINUTE, 0, Some(2)).await, "suppressed:max_alerts_per_hour");
}
