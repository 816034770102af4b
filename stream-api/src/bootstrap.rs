//! Wiring: builds the pipeline and the API state from settings. Used by `evstream api|serve` and by tests, so
//! both run exactly the same start-up.

use crate::state::{ApiConfig, AppState};
use metrics_exporter_prometheus::PrometheusHandle;
use producer::alerts::AlertStore;
use producer::audit::AuditLog;
use producer::config_log::{ConfigLog, ConfigLogConfig, ConfigRecord, Verdict};
use producer::dead_letter::DeadLetters;
use producer::idempotency::{Idempotency, IdempotencyConfig};
use producer::quota::Quotas;
use producer::redis_conn::RedisConn;
use producer::sinks::kafka::KafkaSinkConfig;
use producer::sinks::redis_stream::RedisStreamSinkConfig;
use producer::tenant_stats::TenantStats;
use producer::topics::{TopicSpec, Topics};
use producer::{Parts, Pipeline, PipelineConfig};
use rand::RngCore;
use schemas::config::Quota;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaSinkConfig,
    pub redis_url: String,
    pub redis_queue: usize,
    pub admin_key: Option<String>,
    pub events_topic: String,
    pub config_topic: String,
    pub deadletter_topic: String,
    /// Alert transitions (keyed by alert id) and undeliverable notifications.
    pub alerts_topic: String,
    pub alerts_deadletter_topic: String,
    /// The hash-chained audit trail.
    pub audit_topic: String,
    pub api: ApiConfig,
    /// How long a seen event id / Idempotency-Key is remembered.
    pub idempotency_window: Duration,
    /// Quota of tenants whose stream config sets none.
    pub default_quota: Quota,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("kafka client could not be created")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topics could not be created")]
    Topics(#[from] producer::topics::TopicError),
    #[error("redis is unreachable at start-up")]
    Redis(#[from] redis::RedisError),
    #[error("the configuration log was not replayed within {0:?}")]
    Replay(Duration),
}

/// The result of start-up: the state, and the admin key when this start generated one (print it once).
pub struct Started {
    pub state: AppState,
    pub generated_admin_key: Option<String>,
}

pub async fn start(s: &Settings, prometheus: Option<PrometheusHandle>) -> Result<Started, BootstrapError> {
    let topics = Topics::new(&s.kafka.brokers)?;
    let spec = |name: &str, compacted: bool, partitions: i32| TopicSpec {
        name: name.to_string(),
        partitions,
        replication: s.api.replication,
        compacted,
    };
    topics
        .ensure(&[
            spec(&s.config_topic, true, 1),
            spec(&s.events_topic, false, s.api.partitions),
            spec(&s.deadletter_topic, false, s.api.partitions),
            spec(&s.alerts_topic, false, s.api.partitions),
            spec(&s.alerts_deadletter_topic, false, s.api.partitions),
            spec(&s.audit_topic, false, 1),
        ])
        .await?;
    let configs = ConfigLog::start(
        &ConfigLogConfig { kafka: s.kafka.clone(), topic: s.config_topic.clone() },
        s.admin_key.as_deref(),
    )?;
    let kafka = s.kafka.build()?;
    let redis_conn = RedisConn::connect(&s.redis_url).await?;
    let redis =
        RedisStreamSinkConfig { url: s.redis_url.clone(), queue_capacity: s.redis_queue }.build(redis_conn.clone());
    let stats = TenantStats::start(redis_conn.clone());
    let dead = DeadLetters::new(kafka.clone(), s.deadletter_topic.clone());
    let replay = Duration::from_secs(30);
    if !configs.wait_caught_up(replay).await {
        return Err(BootstrapError::Replay(replay));
    }
    let mut generated_admin_key = None;
    if !configs.has_admin_key() {
        let mut b = [0u8; 24];
        rand::rng().fill_bytes(&mut b);
        let key = format!("evs_admin_{}", hex::encode(b));
        if let Ok(Verdict::Applied) =
            configs.propose(&ConfigRecord::AdminKey { hash: producer::config_log::hash_key(&key) }).await
        {
            generated_admin_key = Some(key);
        }
    }
    let topics = std::sync::Arc::new(topics);
    let pcfg = PipelineConfig {
        default_topic: s.events_topic.clone(),
        partitions: s.api.partitions,
        replication: s.api.replication,
    };
    let idempotency = Idempotency::new(
        redis.connection(),
        IdempotencyConfig {
            window: s.idempotency_window,
            pending_lease: Duration::from_millis(s.kafka.delivery_timeout_ms * 2 + 1000),
        },
    );
    let quotas = Quotas::new(redis.connection(), s.default_quota.clone());
    let audit = AuditLog::new(kafka.clone(), s.audit_topic.clone());
    let alerts = AlertStore::new(redis_conn.clone(), kafka.clone(), s.alerts_topic.clone(), audit.clone());
    let pipeline =
        Pipeline::new(pcfg, Parts { kafka, redis, configs, stats, dead, topics: topics.clone(), idempotency, quotas });
    Ok(Started {
        state: AppState::new(pipeline, s.api.clone(), prometheus, topics, alerts, audit),
        generated_admin_key,
    })
}
