//! Tenants, API keys and stream configurations live in one compacted Kafka topic (`evstream.config`, one
//! partition so that it is totally ordered). Every instance replays it from the beginning at start and then tails
//! it, so all instances converge on the same state. Writes are proposals: a record is produced, and the writer
//! waits until its own consumer has applied that offset, then reads the verdict. Because every instance applies
//! the same records in the same order with the same rules, they all reach the same verdicts, which gives
//! optimistic concurrency (`If-Match` on stream configs, create-once tenants) without any lock service.

use crate::metric_names as m;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::{StreamConfig, TenantId, TopicName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const CONFIG_TOPIC: &str = "evstream.config";

/// How long a writer waits to see its own record applied.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Verdicts kept for writers to pick up.
const KEPT_VERDICTS: usize = 4096;

/// One record of the configuration log. The Kafka key is [`ConfigRecord::key`], so compaction keeps the newest
/// record of each tenant, key and config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConfigRecord {
    Tenant {
        tenant: TenantId,
        name: String,
        created_at: String,
    },
    ApiKey {
        key_id: String,
        tenant: TenantId,
        hash: String,
        created_at: String,
    },
    AdminKey {
        hash: String,
    },
    StreamConfig {
        tenant: TenantId,
        version: u64,
        config: StreamConfig,
        updated_at: String,
    },
    /// A tenant-owned object of a kind (alert policy, receiver), already validated by the API; `body: None`
    /// deletes it.
    Object {
        tenant: TenantId,
        #[serde(rename = "object")]
        kind: ObjectKind,
        id: String,
        version: u64,
        body: Option<serde_json::Value>,
        updated_at: String,
    },
}

impl ConfigRecord {
    pub fn key(&self) -> String {
        match self {
            Self::Tenant { tenant, .. } => format!("tenant/{tenant}"),
            Self::ApiKey { key_id, .. } => format!("api-key/{key_id}"),
            Self::AdminKey { .. } => "admin-key".into(),
            Self::StreamConfig { tenant, .. } => format!("stream-config/{tenant}"),
            Self::Object { tenant, kind, id, .. } => format!("{}/{tenant}/{id}", kind.as_str()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Tenant { .. } => "tenant",
            Self::ApiKey { .. } => "api_key",
            Self::AdminKey { .. } => "admin_key",
            Self::StreamConfig { .. } => "stream_config",
            Self::Object { kind, .. } => kind.as_str(),
        }
    }
}

/// What applying a record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    /// The record lost a race or broke a rule; the state did not change.
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TenantExists,
    UnknownTenant,
    /// Another writer got there first: the version is no longer the next one.
    VersionConflict {
        current: u64,
    },
    TopicOwned {
        topic: String,
        owner: TenantId,
    },
    AdminKeyExists,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionedConfig {
    pub version: u64,
    pub config: Arc<StreamConfig>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant: TenantId,
}

/// The state every instance derives from the log.
pub struct State {
    tenants: HashMap<TenantId, Tenant>,
    configs: HashMap<TenantId, VersionedConfig>,
    keys: HashMap<String, KeyRecord>,
    admin_hash: Option<String>,
    topic_owner: HashMap<TopicName, TenantId>,
    /// Per tenant and kind, per id: the last version, and the body unless it was deleted.
    objects: HashMap<(TenantId, ObjectKind), BTreeMap<String, VersionedObject>>,
    /// Bumped by every applied object record, so that readers can cache what they derive from objects.
    generation: u64,
    /// The configuration of tenants that stored none, shared rather than built per lookup.
    default_config: Arc<StreamConfig>,
}

/// Kinds of tenant-owned objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Policy,
    Receiver,
    Silence,
    InhibitRule,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Receiver => "receiver",
            Self::Silence => "silence",
            Self::InhibitRule => "inhibit_rule",
        }
    }
}

/// A stored object (or the tombstone of a deleted one, which keeps its version so that ids can be reused safely).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedObject {
    pub version: u64,
    pub body: Option<serde_json::Value>,
    pub updated_at: String,
}

impl Default for State {
    fn default() -> Self {
        Self {
            tenants: HashMap::new(),
            configs: HashMap::new(),
            keys: HashMap::new(),
            admin_hash: None,
            topic_owner: HashMap::new(),
            objects: HashMap::new(),
            generation: 0,
            default_config: Arc::new(StreamConfig::default()),
        }
    }
}

impl State {
    pub fn apply(&mut self, r: ConfigRecord) -> Verdict {
        match r {
            ConfigRecord::Tenant { tenant, name, created_at } => {
                if self.tenants.contains_key(&tenant) {
                    return Verdict::Refused(Refusal::TenantExists);
                }
                self.tenants.insert(tenant.clone(), Tenant { id: tenant, name, created_at });
            }
            ConfigRecord::ApiKey { key_id, tenant, hash, .. } => {
                if !self.tenants.contains_key(&tenant) {
                    return Verdict::Refused(Refusal::UnknownTenant);
                }
                self.keys.insert(hash, KeyRecord { key_id, tenant });
            }
            ConfigRecord::AdminKey { hash } => {
                if self.admin_hash.is_some() {
                    return Verdict::Refused(Refusal::AdminKeyExists);
                }
                self.admin_hash = Some(hash);
            }
            ConfigRecord::Object { tenant, kind, id, version, body, updated_at } => {
                if !self.tenants.contains_key(&tenant) {
                    return Verdict::Refused(Refusal::UnknownTenant);
                }
                let slot = self.objects.entry((tenant, kind)).or_default();
                let current = slot.get(&id).map_or(0, |p| p.version);
                if version <= current {
                    return Verdict::Refused(Refusal::VersionConflict { current });
                }
                slot.insert(id, VersionedObject { version, body, updated_at });
                self.generation += 1;
            }
            ConfigRecord::StreamConfig { tenant, version, config, updated_at } => {
                if !self.tenants.contains_key(&tenant) {
                    return Verdict::Refused(Refusal::UnknownTenant);
                }
                let current = self.configs.get(&tenant).map_or(0, |c| c.version);
                // `>` rather than `== current + 1`: compaction may have removed the versions in between.
                if version <= current {
                    return Verdict::Refused(Refusal::VersionConflict { current });
                }
                for t in &config.topics {
                    if let Some(owner) = self.topic_owner.get(t) {
                        if *owner != tenant {
                            return Verdict::Refused(Refusal::TopicOwned {
                                topic: t.to_string(),
                                owner: owner.clone(),
                            });
                        }
                    }
                }
                if let Some(old) = self.configs.get(&tenant) {
                    for t in &old.config.topics {
                        self.topic_owner.remove(t);
                    }
                }
                for t in &config.topics {
                    self.topic_owner.insert(t.clone(), tenant.clone());
                }
                self.configs.insert(
                    tenant,
                    VersionedConfig { version, config: Arc::new(config), updated_at: Some(updated_at) },
                );
            }
        }
        Verdict::Applied
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The caller of a request, after its bearer key was looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant { tenant: TenantId, key_id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigLogError {
    #[error("config log unavailable")]
    Kafka(#[from] KafkaError),
    #[error("config record was written at offset {offset} but not applied within {APPLY_WAIT:?}")]
    NotApplied { offset: i64 },
    #[error("config record is not serialisable")]
    Encode(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct ConfigLogConfig {
    /// The same producer settings as the event sink (brokers, idempotence, delivery timeout).
    pub kafka: crate::sinks::kafka::KafkaSinkConfig,
    pub topic: String,
}

struct Shared {
    state: RwLock<State>,
    verdicts: std::sync::Mutex<BTreeMap<i64, Verdict>>,
    /// The next offset to be applied.
    applied: watch::Sender<i64>,
    /// True once the log has been replayed up to where it stood at start.
    caught_up: watch::Sender<bool>,
    static_admin_hash: Option<String>,
}

/// A handle on the replicated configuration. Cheap to clone.
#[derive(Clone)]
pub struct ConfigLog {
    shared: Arc<Shared>,
    producer: FutureProducer,
    topic: String,
}

impl ConfigLog {
    /// Starts replaying and tailing the log. Returns at once; [`ConfigLog::wait_caught_up`] waits for the replay.
    pub fn start(cfg: &ConfigLogConfig, static_admin_key: Option<&str>) -> Result<Self, KafkaError> {
        // Configuration writes are rare and someone waits for each: no batching delay.
        let producer: FutureProducer = cfg.kafka.client_config().set("linger.ms", "0").create()?;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.kafka.brokers)
            .set("group.id", format!("evstream-config-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&cfg.topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let shared = Arc::new(Shared {
            state: RwLock::new(State::default()),
            verdicts: Default::default(),
            applied: watch::channel(0).0,
            caught_up: watch::channel(false).0,
            static_admin_hash: static_admin_key.map(hash_key),
        });
        tokio::spawn(tail(consumer, shared.clone()));
        Ok(Self { shared, producer, topic: cfg.topic.clone() })
    }

    pub fn is_caught_up(&self) -> bool {
        *self.shared.caught_up.borrow()
    }

    /// Waits for the replay to reach the end of the log as it stood at start, up to `timeout`.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.caught_up.subscribe();
        let ok = tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await.is_ok();
        ok
    }

    /// Writes a record and waits until this instance has applied it; returns the verdict.
    pub async fn propose(&self, r: &ConfigRecord) -> Result<Verdict, ConfigLogError> {
        let payload = serde_json::to_vec(r)?;
        let key = r.key();
        let rec = FutureRecord::to(&self.topic).partition(0).key(&key).payload(&payload);
        let d = self.producer.send(rec, Timeout::After(Duration::ZERO)).await.map_err(|(e, _)| e)?;
        let offset = d.offset;
        let mut rx = self.shared.applied.subscribe();
        if tokio::time::timeout(APPLY_WAIT, rx.wait_for(|next| *next > offset)).await.is_err() {
            return Err(ConfigLogError::NotApplied { offset });
        }
        let verdict = self.shared.verdicts.lock().map(|v| v.get(&offset).cloned()).unwrap_or(None);
        verdict.ok_or(ConfigLogError::NotApplied { offset })
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let g = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    pub fn tenant(&self, t: &TenantId) -> Option<Tenant> {
        self.read(|s| s.tenants.get(t).cloned())
    }

    pub fn tenants(&self) -> Vec<Tenant> {
        let mut v = self.read(|s| s.tenants.values().cloned().collect::<Vec<_>>());
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The tenant's configuration, or the default (version 0) when it never stored one.
    pub fn stream_config(&self, t: &TenantId) -> Option<VersionedConfig> {
        self.read(|s| {
            s.tenants.get(t)?;
            Some(s.configs.get(t).cloned().unwrap_or_else(|| VersionedConfig {
                version: 0,
                config: s.default_config.clone(),
                updated_at: None,
            }))
        })
    }

    /// Just the tenant's configuration (the default when it stored none), for the ingest path: no copies.
    pub fn config(&self, t: &TenantId) -> Option<Arc<StreamConfig>> {
        self.read(|s| {
            s.tenants.get(t)?;
            Some(s.configs.get(t).map_or_else(|| s.default_config.clone(), |c| c.config.clone()))
        })
    }

    /// The tenant's objects of a kind (deleted ones left out), by id.
    pub fn objects(&self, t: &TenantId, kind: ObjectKind) -> Vec<(String, VersionedObject)> {
        self.read(|s| {
            s.objects.get(&(t.clone(), kind)).map_or_else(Vec::new, |m| {
                m.iter().filter(|(_, o)| o.body.is_some()).map(|(id, o)| (id.clone(), o.clone())).collect()
            })
        })
    }

    /// One object, or its tombstone (`body: None`) when it was deleted.
    pub fn object(&self, t: &TenantId, kind: ObjectKind, id: &str) -> Option<VersionedObject> {
        self.read(|s| s.objects.get(&(t.clone(), kind)).and_then(|m| m.get(id)).cloned())
    }

    /// Changes whenever any tenant's objects change.
    pub fn generation(&self) -> u64 {
        self.read(|s| s.generation)
    }

    pub fn has_admin_key(&self) -> bool {
        self.shared.static_admin_hash.is_some() || self.read(|s| s.admin_hash.is_some())
    }

    /// Looks a bearer key up: the admin key, or a tenant key (stored hashed).
    pub fn authenticate(&self, key: &str) -> Option<Principal> {
        let h = hash_key(key);
        if self.shared.static_admin_hash.as_deref() == Some(h.as_str()) {
            return Some(Principal::Admin);
        }
        self.read(|s| {
            if s.admin_hash.as_deref() == Some(h.as_str()) && self.shared.static_admin_hash.is_none() {
                return Some(Principal::Admin);
            }
            s.keys.get(&h).map(|k| Principal::Tenant { tenant: k.tenant.clone(), key_id: k.key_id.clone() })
        })
    }
}

async fn tail(consumer: StreamConsumer, shared: Arc<Shared>) {
    // The end of the log as it stood at start; reaching it (or a quiet log) means the replay is done.
    let started = Instant::now();
    let mut last_msg = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
        match next {
            Err(_) => {
                // Nothing arrived for a while: the replay is as complete as the broker lets us see.
                if !*shared.caught_up.borrow() && last_msg.elapsed() > Duration::from_secs(2) {
                    mark_caught_up(&shared, started);
                }
            }
            Ok(Err(KafkaError::PartitionEOF(_))) => mark_caught_up(&shared, started),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "config log read failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Ok(msg)) => {
                last_msg = Instant::now();
                let offset = msg.offset();
                let verdict = match msg.payload().map(serde_json::from_slice::<ConfigRecord>) {
                    Some(Ok(r)) => {
                        let kind = r.kind();
                        let v = shared.state.write().unwrap_or_else(|p| p.into_inner()).apply(r);
                        metrics::counter!(m::CONFIG_RECORDS_APPLIED_TOTAL, "kind" => kind).increment(1);
                        Some(v)
                    }
                    // A tombstone or a record from a newer version: skip, but keep the offset moving.
                    _ => None,
                };
                if let Some(v) = verdict {
                    if let Ok(mut vs) = shared.verdicts.lock() {
                        vs.insert(offset, v);
                        while vs.len() > KEPT_VERDICTS {
                            vs.pop_first();
                        }
                    }
                }
                shared.applied.send_replace(offset + 1);
            }
        }
    }
}

fn mark_caught_up(shared: &Shared, started: Instant) {
    if !shared.caught_up.send_replace(true) {
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "configuration log replayed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn cfg_rec(tenant: &str, version: u64, topics: &[&str]) -> ConfigRecord {
        ConfigRecord::StreamConfig {
            tenant: t(tenant),
            version,
            config: StreamConfig {
                topics: topics.iter().map(|x| TopicName::new(*x).unwrap()).collect(),
                ..Default::default()
            },
            updated_at: String::new(),
        }
    }

    fn tenant_rec(tenant: &str) -> ConfigRecord {
        ConfigRecord::Tenant { tenant: t(tenant), name: tenant.into(), created_at: String::new() }
    }

    #[test]
    fn versions_only_move_forward() {
        let mut s = State::default();
        assert_eq!(s.apply(cfg_rec("a", 1, &[])), Verdict::Refused(Refusal::UnknownTenant));
        assert_eq!(s.apply(tenant_rec("a")), Verdict::Applied);
        assert_eq!(s.apply(tenant_rec("a")), Verdict::Refused(Refusal::TenantExists));
        assert_eq!(s.apply(cfg_rec("a", 1, &[])), Verdict::Applied);
        assert_eq!(s.apply(cfg_rec("a", 1, &[])), Verdict::Refused(Refusal::VersionConflict { current: 1 }));
        // After compaction a replay may jump versions.
        assert_eq!(s.apply(cfg_rec("a", 5, &[])), Verdict::Applied);
    }

    #[test]
    fn a_topic_has_one_owner() {
        let mut s = State::default();
        s.apply(tenant_rec("a"));
        s.apply(tenant_rec("b"));
        assert_eq!(s.apply(cfg_rec("a", 1, &["x"])), Verdict::Applied);
        assert!(matches!(s.apply(cfg_rec("b", 1, &["x"])), Verdict::Refused(Refusal::TopicOwned { .. })));
        // Releasing it lets the other tenant take it.
        assert_eq!(s.apply(cfg_rec("a", 2, &["y"])), Verdict::Applied);
        assert_eq!(s.apply(cfg_rec("b", 1, &["x"])), Verdict::Applied);
    }
}
