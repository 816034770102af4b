//! evstream's alert stream: a Kafka consumer group over the event topics that evaluates each tenant's alert
//! policies, raises and groups alerts (state in Redis, transitions on the alerts topic), and delivers
//! notifications to the tenant's receivers without blocking the consumer.
//!
//! Layout:
//! - [`run`] (this file): the consumer loop — at-least-once (offsets stored after an event is fully handled),
//!   the per-tenant compiled policy cache, and the dispatch of notifications.
//! - [`notify`]: each receiver's wire format (webhook with HMAC signature, Slack, PagerDuty Events v2, Teams) and
//!   delivery with retries, backoff, jitter and `Retry-After`.
//!
//! Two processes in one consumer group split the partitions; a tenant's events are on one partition (key =
//! tenant), so one process at a time handles a tenant, and raising is idempotent per event, so redelivery after a
//! restart raises nothing twice.

pub mod notify;

use futures::StreamExt;
use notify::DeliveryPolicy;
use producer::alerts::{Alert, AlertStore, Firing, Raised, Transition};
use producer::config_log::{ConfigLog, ObjectKind};
use producer::sinks::kafka::KafkaSink;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use schemas::policy::{AlertPolicy, CompiledPolicy, InhibitRule, Matcher, PolicySet, Silence};
use schemas::receiver::Receiver;
use schemas::TenantId;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AlertStreamConfig {
    pub brokers: String,
    /// Event topics to evaluate (the shared events topic; tenant topics known at start are added).
    pub topics: Vec<String>,
    pub alerts_topic: String,
    pub deadletter_topic: String,
    pub group_id: String,
    /// `earliest` or `latest`: where a new consumer group starts.
    pub start_from: String,
    pub session_timeout_ms: u64,
    pub delivery: DeliveryPolicy,
    /// Notifications in flight at once, across tenants.
    pub max_deliveries: usize,
    /// How often alerts are checked for `autoResolveAfterSecs`.
    pub sweep_every: Duration,
    /// A notification taken by an instance that has not finished it after this long (the instance died) is
    /// delivered by another. Longer than a delivery with all its retries can take.
    pub reclaim_after: Duration,
}

/// One notification to deliver: the outbox record. Written to a Redis stream before the event's offset is stored,
/// so that a crash between raising an alert and notifying its receivers loses nothing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub tenant: String,
    pub receiver: String,
    pub kind: String,
    pub alert: Alert,
}

/// The outbox stream of a deployment (one per alert consumer group).
pub fn outbox_key(group: &str) -> String {
    format!("evstream:alerts:outbox:{group}")
}

const DELIVERERS: &str = "deliverers";

#[derive(Debug, thiserror::Error)]
pub enum AlertStreamError {
    #[error("kafka consumer failed")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// The group key of absence alerts (one per policy).
const ABSENCE_GROUP: &str = "absence";

/// A tenant's compiled policies, silences and inhibition rules, rebuilt when the configuration log changes.
struct PolicyCache {
    generation: u64,
    sets: HashMap<TenantId, Arc<TenantRules>>,
}

struct TenantRules {
    policies: PolicySet,
    silences: Vec<(Silence, Matcher)>,
    /// (source, target, labels that must be equal)
    inhibits: Vec<(Matcher, Matcher, Vec<String>)>,
}

/// The labels silences and inhibition rules match on.
fn labels(policy_id: &str, severity: &str, group_key: &str, event: Option<&Value>) -> Value {
    let mut v = serde_json::json!({"policyId": policy_id, "severity": severity, "groupKey": group_key});
    if let Some(e) = event {
        v["event"] = e.clone();
    }
    v
}

struct Ctx {
    cfg: AlertStreamConfig,
    configs: ConfigLog,
    store: AlertStore,
    kafka: KafkaSink,
    http: reqwest::Client,
    cache: Mutex<PolicyCache>,
    deliveries: Arc<tokio::sync::Semaphore>,
}

impl Ctx {
    fn rules(&self, t: &TenantId) -> Arc<TenantRules> {
        let generation = self.configs.generation();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != generation {
            cache.sets.clear();
            cache.generation = generation;
        }
        if let Some(s) = cache.sets.get(t) {
            return s.clone();
        }
        let compiled: Vec<CompiledPolicy> = self
            .configs
            .objects(t, ObjectKind::Policy)
            .into_iter()
            .filter_map(|(id, o)| {
                let p = AlertPolicy::from_json(o.body?).ok()?;
                CompiledPolicy::compile(&id, p).ok()
            })
            .collect();
        let silences = self
            .configs
            .objects(t, ObjectKind::Silence)
            .into_iter()
            .filter_map(|(_, o)| {
                let s = Silence::from_json(o.body?).ok()?;
                let m = Matcher::new(&s.matchers, "matchers").ok()?;
                Some((s, m))
            })
            .collect();
        let inhibits = self
            .configs
            .objects(t, ObjectKind::InhibitRule)
            .into_iter()
            .filter_map(|(_, o)| {
                let r = InhibitRule::from_json(o.body?).ok()?;
                Some((Matcher::new(&r.source, "source").ok()?, Matcher::new(&r.target, "target").ok()?, r.equal))
            })
            .collect();
        let set = Arc::new(TenantRules { policies: PolicySet::new(compiled), silences, inhibits });
        cache.sets.insert(t.clone(), set.clone());
        set
    }

    fn receiver(&self, t: &TenantId, id: &str) -> Option<Receiver> {
        let o = self.configs.object(t, ObjectKind::Receiver, id)?;
        serde_json::from_value(o.body?).ok()
    }

    /// Sends one transition to each of the policy's receivers, each on its own task: a slow receiver delays
    /// nothing else. Attempts go to the alert's history; failures after the last retry to the dead-letter topic.
    /// Queues one notification per receiver in the outbox (awaited: the caller stores its offset afterwards).
    /// When Redis is unreachable the notification is sent directly, without the crash protection.
    async fn notify(self: &Arc<Self>, tenant: &TenantId, receivers: &[String], kind: &str, alert: &Alert) {
        for rid in receivers {
            let job =
                Job { tenant: tenant.to_string(), receiver: rid.clone(), kind: kind.to_string(), alert: alert.clone() };
            let mut c = redis::cmd("XADD");
            c.arg(outbox_key(&self.cfg.group_id))
                .arg("*")
                .arg("job")
                .arg(serde_json::to_string(&job).unwrap_or_default());
            if let Err(e) = self.store.redis().query::<String>(&c).await {
                tracing::warn!(error = %e, "outbox unavailable; delivering directly");
                let ctx = self.clone();
                tokio::spawn(async move { ctx.deliver_job(job).await });
            }
        }
    }

    /// Delivers one notification with retries; records every attempt; dead-letters a final failure.
    async fn deliver_job(self: &Arc<Self>, job: Job) {
        let Ok(tenant) = TenantId::new(job.tenant.as_str()) else { return };
        let Some(r) = self.receiver(&tenant, &job.receiver) else {
            tracing::warn!(receiver = %job.receiver, "policy names an unknown receiver");
            return;
        };
        let (rid, kind, alert) = (&job.receiver, job.kind.as_str(), &job.alert);
        let email = notify::email(&r, kind, alert);
        let req = notify::request(&r, kind, alert);
        let Ok(_permit) = self.deliveries.clone().acquire_owned().await else { return };
        let d = match (email, req) {
            (Some(msg), _) => notify::deliver_email(&self.cfg.delivery, rid, &r, msg).await,
            (None, Some(req)) => {
                notify::deliver(&self.http, &self.cfg.delivery, rid, &req.url, &req.body, &req.headers).await
            }
            (None, None) => return,
        };
        metrics::counter!("evstream_alert_notifications_total", "receiver" => r.kind(), "result" => if d.ok { "ok" } else { d.reason }).increment(1);
        for a in &d.attempts {
            self.store.record(&alert.tenant_id, &alert.id, a).await;
        }
        if !d.ok {
            let dl = notify::dead_letter(rid, kind, d.reason, alert);
            let payload = serde_json::to_vec(&dl).unwrap_or_default();
            if let Err(e) =
                self.kafka.send(&self.cfg.deadletter_topic, &alert.id, &payload, OwnedHeaders::new(), false).await
            {
                tracing::warn!(error = %e, "alert dead letter not written");
            }
        }
    }

    /// Evaluates one event; raises what matches.
    async fn on_event(self: &Arc<Self>, event: &Value) {
        let Some(tenant) = schemas::event::peek_tenant(event) else { return };
        let rules = self.rules(&tenant);
        let set = &rules.policies;
        if set.is_empty() {
            return;
        }
        let event_id = event.get("id").and_then(Value::as_str).unwrap_or_default();
        // Resolve conditions first: a "resolved" event closes the open alert of its group.
        for p in set.resolving(event) {
            let id = producer::alerts::alert_id(&tenant, &p.id, &p.group_key(event));
            self.resolve(&tenant, &id, &p.policy.receivers).await;
        }
        let now = time::OffsetDateTime::now_utc();
        for p in set.matching(event) {
            let pol = &p.policy;
            if !pol.active_at(now) {
                continue;
            }
            if pol.absence_secs.is_some() {
                // An absence policy: a matching event is the heartbeat, and ends an open absence alert.
                if let Err(e) = self.store.heartbeat(tenant.as_str(), &p.id).await {
                    tracing::warn!(error = %e, "absence heartbeat not recorded");
                }
                let id = producer::alerts::alert_id(&tenant, &p.id, ABSENCE_GROUP);
                self.resolve(&tenant, &id, &pol.receivers).await;
                continue;
            }
            let group_key = p.group_key(event);
            let mute = self.mute(&tenant, &rules, &p.id, pol.severity.as_str(), &group_key, event).await;
            let firing = Firing {
                mute,
                tenant: &tenant,
                policy_id: &p.id,
                group_key: &group_key,
                severity: pol.severity,
                summary: p.summary(event),
                message: p.message(event),
                event_id,
                throttle_minutes: pol.throttle_minutes,
                max_alerts_per_hour: pol.max_alerts_per_hour,
                at_ms: producer::alerts::now_ms(),
            };
            match self.store.raise(firing).await {
                Ok(Raised::Opened { alert, reopened }) => {
                    metrics::counter!("evstream_alerts_raised_total", "severity" => alert.severity.as_str())
                        .increment(1);
                    self.notify(&tenant, &pol.receivers, if reopened { "reopened" } else { "opened" }, &alert).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "alert not raised (redis unavailable)"),
            }
        }
    }

    /// Whether a new alert must be raised silently: a silence in force matches it, or a firing alert matching an
    /// inhibition rule's source (with equal labels) mutes it.
    async fn mute(
        &self,
        tenant: &TenantId,
        rules: &TenantRules,
        policy_id: &str,
        severity: &str,
        group_key: &str,
        event: &Value,
    ) -> Option<&'static str> {
        let l = labels(policy_id, severity, group_key, Some(event));
        let now = time::OffsetDateTime::now_utc();
        if rules.silences.iter().any(|(s, m)| s.active(now) && m.matches(&l)) {
            return Some("silenced");
        }
        let targeted: Vec<&(Matcher, Matcher, Vec<String>)> =
            rules.inhibits.iter().filter(|(_, target, _)| target.matches(&l)).collect();
        if targeted.is_empty() {
            return None;
        }
        let firing = self.store.list(tenant.as_str(), 1000).await.ok()?;
        for a in firing.iter().filter(|a| {
            matches!(a.status, producer::alerts::AlertStatus::Active | producer::alerts::AlertStatus::Acknowledged)
        }) {
            let sl = labels(&a.policy_id, a.severity.as_str(), &a.group_key, None);
            for (source, _, equal) in &targeted {
                if a.policy_id != policy_id && source.matches(&sl) && equal.iter().all(|k| sl.get(k) == l.get(k)) {
                    return Some("inhibited");
                }
            }
        }
        None
    }

    async fn resolve(self: &Arc<Self>, tenant: &TenantId, id: &str, receivers: &[String]) {
        match self.store.transition_by(tenant.as_str(), id, producer::alerts::AlertStatus::Resolved, "policy").await {
            Ok(Some((a, true))) => self.notify(tenant, receivers, "resolved", &a).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "alert not resolved (redis unavailable)"),
        }
    }

    /// Resolves alerts whose policy has `autoResolveAfterSecs` and that saw no event for that long. One
    /// instance sweeps at a time (a lease in Redis).
    async fn sweep(self: &Arc<Self>) {
        if !self.store.lease(&format!("alert-sweep:{}", self.cfg.group_id), self.cfg.sweep_every.as_secs().max(1)).await
        {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        for t in self.configs.tenants() {
            let rules = self.rules(&t.id);
            let set = &rules.policies;
            self.check_absence(&t.id, set, now).await;
            let limits: HashMap<&str, (u32, &[String])> = set
                .all()
                .iter()
                .filter_map(|p| {
                    Some((p.id.as_str(), (p.policy.auto_resolve_after_secs?, p.policy.receivers.as_slice())))
                })
                .collect();
            if limits.is_empty() {
                continue;
            }
            let Ok(alerts) = self.store.list(t.id.as_str(), 1000).await else { continue };
            for a in alerts {
                let Some((secs, receivers)) = limits.get(a.policy_id.as_str()) else { continue };
                let open = matches!(
                    a.status,
                    producer::alerts::AlertStatus::Active | producer::alerts::AlertStatus::Acknowledged
                );
                let last =
                    time::OffsetDateTime::parse(&a.last_seen, &time::format_description::well_known::Rfc3339).ok();
                if open && last.is_some_and(|l| (now - l).whole_seconds() >= i64::from(*secs)) {
                    self.resolve(&t.id, &a.id, receivers).await;
                }
            }
        }
    }

    /// Raises the alert of every absence policy that saw no matching event for its `absenceSecs` (counted from
    /// the policy's last change when it never saw one).
    async fn check_absence(self: &Arc<Self>, tenant: &TenantId, set: &PolicySet, now: time::OffsetDateTime) {
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        for p in set.all().iter().filter(|p| p.policy.enabled && p.policy.active_at(now)) {
            let Some(secs) = p.policy.absence_secs else { continue };
            let since = match self.store.last_heartbeat(tenant.as_str(), &p.id).await {
                Ok(Some(ms)) => ms,
                Ok(None) => self
                    .configs
                    .object(tenant, ObjectKind::Policy, &p.id)
                    .and_then(|o| {
                        time::OffsetDateTime::parse(&o.updated_at, &time::format_description::well_known::Rfc3339).ok()
                    })
                    .map_or(now_ms, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
                Err(_) => continue,
            };
            if now_ms - since < i64::from(secs) * 1000 {
                continue;
            }
            let pol = &p.policy;
            let firing = Firing {
                mute: None,
                tenant,
                policy_id: &p.id,
                group_key: ABSENCE_GROUP,
                severity: pol.severity,
                summary: pol
                    .summary_template
                    .clone()
                    .unwrap_or_else(|| format!("{}: no matching event for {secs} s", pol.name)),
                message: pol.message_template.clone(),
                // One absence per quiet period: the same period never raises twice.
                event_id: &format!("absence-{since}"),
                throttle_minutes: pol.throttle_minutes,
                max_alerts_per_hour: pol.max_alerts_per_hour,
                at_ms: producer::alerts::now_ms(),
            };
            if let Ok(Raised::Opened { alert, reopened }) = self.store.raise(firing).await {
                self.notify(tenant, &pol.receivers, if reopened { "reopened" } else { "opened" }, &alert).await;
            }
        }
    }

    /// Acknowledge/resolve made through the API: forwarded to the receivers that follow them (PagerDuty).
    async fn on_transition(self: &Arc<Self>, t: &Transition) {
        if t.by != "api" {
            return;
        }
        let Ok(tenant) = TenantId::new(t.alert.tenant_id.as_str()) else { return };
        let receivers = self
            .configs
            .object(&tenant, ObjectKind::Policy, &t.alert.policy_id)
            .and_then(|o| o.body)
            .and_then(|b| AlertPolicy::from_json(b).ok())
            .map(|p| p.receivers)
            .unwrap_or_default();
        self.notify(&tenant, &receivers, &t.kind, &t.alert).await;
    }
}

/// The shared events topic, every tenant's own topics, and the alerts topic (for acknowledge/resolve).
fn topics_to_consume(cfg: &AlertStreamConfig, configs: &ConfigLog) -> Vec<String> {
    let mut topics: Vec<String> = cfg.topics.clone();
    for t in configs.tenants() {
        if let Some(c) = configs.stream_config(&t.id) {
            topics.extend(c.config.topics.iter().map(ToString::to_string));
        }
    }
    topics.push(cfg.alerts_topic.clone());
    topics.sort();
    topics.dedup();
    topics
}

fn subscribe(consumer: &StreamConsumer, topics: &[String]) -> Result<(), rdkafka::error::KafkaError> {
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)
}

/// Takes notifications from the outbox (a Redis stream read by the `deliverers` group) and delivers each on its
/// own task; acknowledges and removes it when done. Every `reclaim_after / 2` it also claims notifications another
/// instance took but never finished (it died), so that none is lost.
async fn outbox_worker(ctx: Arc<Ctx>) {
    let key = outbox_key(&ctx.cfg.group_id);
    let me = format!("deliverer-{}", uuid::Uuid::new_v4());
    let mut create = redis::cmd("XGROUP");
    create.arg("CREATE").arg(&key).arg(DELIVERERS).arg("0").arg("MKSTREAM");
    let mut last_reclaim = std::time::Instant::now();
    loop {
        // Created lazily (and again after a Redis restart); "already exists" is fine.
        let _ = ctx.store.redis().query::<()>(&create).await;
        let Ok(mut conn) = ctx.store.redis().client().get_multiplexed_async_connection().await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        loop {
            let mut entries: Vec<(String, String)> = Vec::new();
            if last_reclaim.elapsed() >= ctx.cfg.reclaim_after / 2 {
                last_reclaim = std::time::Instant::now();
                let mut claim = redis::cmd("XAUTOCLAIM");
                claim
                    .arg(&key)
                    .arg(DELIVERERS)
                    .arg(&me)
                    .arg(ctx.cfg.reclaim_after.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(100);
                if let Ok(reply) = claim.query_async::<redis::Value>(&mut conn).await {
                    entries.extend(stream_entries(&reply, true));
                }
            }
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(DELIVERERS)
                .arg(&me)
                .arg("COUNT")
                .arg(50)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&key)
                .arg(">");
            match read.query_async::<redis::Value>(&mut conn).await {
                Ok(reply) => entries.extend(stream_entries(&reply, false)),
                Err(e) => {
                    tracing::debug!(error = %e, "outbox read failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
            for (id, body) in entries {
                let ctx = ctx.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    if let Ok(job) = serde_json::from_str::<Job>(&body) {
                        ctx.deliver_job(job).await;
                    }
                    let mut pipe = redis::pipe();
                    pipe.cmd("XACK")
                        .arg(&key)
                        .arg(DELIVERERS)
                        .arg(&id)
                        .ignore()
                        .cmd("XDEL")
                        .arg(&key)
                        .arg(&id)
                        .ignore();
                    let _ = ctx.store.redis().query::<()>(&pipe).await;
                });
            }
        }
    }
}

/// (entry id, `job` field) pairs of an XREADGROUP or XAUTOCLAIM reply.
fn stream_entries(reply: &redis::Value, autoclaim: bool) -> Vec<(String, String)> {
    use redis::Value as V;
    let entries: &[V] = match reply {
        // XAUTOCLAIM: [next-id, [entries...], [deleted ids...]]
        V::Array(parts) if autoclaim => match parts.get(1) {
            Some(V::Array(e)) => e,
            _ => return Vec::new(),
        },
        // XREADGROUP: [[stream, [entries...]]] (or a map in RESP3)
        V::Array(streams) => match streams.first() {
            Some(V::Array(s)) => match s.get(1) {
                Some(V::Array(e)) => e,
                _ => return Vec::new(),
            },
            _ => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    let text = |v: &V| match v {
        V::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        V::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    entries
        .iter()
        .filter_map(|e| match e {
            V::Array(pair) => {
                let id = text(pair.first()?)?;
                let V::Array(fields) = pair.get(1)? else { return None };
                let body = fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(text).as_deref() == Some("job"))
                    .and_then(|kv| kv.get(1))
                    .and_then(text)?;
                Some((id, body))
            }
            _ => None,
        })
        .collect()
}

/// Runs the consumer until `shutdown` resolves.
pub async fn run(
    cfg: AlertStreamConfig,
    configs: ConfigLog,
    store: AlertStore,
    kafka: KafkaSink,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AlertStreamError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &cfg.start_from)
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (cfg.session_timeout_ms / 3).max(100).to_string())
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()?;
    let mut topics = topics_to_consume(&cfg, &configs);
    subscribe(&consumer, &topics)?;
    tracing::info!(topics = topics.len(), group = %cfg.group_id, "alert stream consuming");
    // Tenants add topics of their own at any time: the subscription follows the configuration.
    let mut refresh = tokio::time::interval(Duration::from_secs(5));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    producer::install_tls_provider();
    let http = reqwest::Client::builder().pool_max_idle_per_host(8).build().unwrap_or_default();
    let ctx = Arc::new(Ctx {
        deliveries: Arc::new(tokio::sync::Semaphore::new(cfg.max_deliveries)),
        cache: Mutex::new(PolicyCache { generation: u64::MAX, sets: HashMap::new() }),
        cfg,
        configs,
        store,
        kafka,
        http,
    });
    tokio::spawn(outbox_worker(ctx.clone()));
    let sweeper = ctx.clone();
    let sweep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweeper.cfg.sweep_every);
        loop {
            tick.tick().await;
            sweeper.sweep().await;
        }
    });
    let mut stream = consumer.stream();
    tokio::pin!(shutdown);
    loop {
        let msg = tokio::select! {
            _ = &mut shutdown => break,
            _ = refresh.tick() => {
                let now = topics_to_consume(&ctx.cfg, &ctx.configs);
                if now != topics {
                    topics = now;
                    if let Err(e) = subscribe(&consumer, &topics) {
                        tracing::warn!(error = %e, "alert stream could not follow new topics");
                    }
                }
                continue;
            }
            m = stream.next() => m,
        };
        let Some(msg) = msg else { break };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "alert stream read failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(payload) = msg.payload() {
            if msg.topic() == ctx.cfg.alerts_topic {
                if let Ok(t) = serde_json::from_slice::<Transition>(payload) {
                    ctx.on_transition(&t).await;
                }
            } else if let Ok(event) = serde_json::from_slice::<Value>(payload) {
                ctx.on_event(&event).await;
            }
        }
        // At-least-once: the offset is stored only once the event is fully handled.
        if let Err(e) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(error = %e, "offset not stored");
        }
    }
    drop(stream);
    sweep.abort();
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}
