//! The ingest pipeline. [`Pipeline::ingest`] is the one place an event is accepted, and its `Ok` is the one place
//! it is acknowledged: it returns only after the broker acknowledged every record (acks=all).

use crate::config_log::ConfigLog;
use crate::dead_letter::DeadLetters;
use crate::enrich::enrich;
use crate::metric_names as m;
use crate::route;
use crate::sinks::kafka::{KafkaSink, KafkaSinkError};
use crate::sinks::redis_stream::{RedisStreamSink, StreamEntry};
use crate::tenant_stats::TenantStats;
use crate::topics::{TopicSpec, Topics};
use schemas::catalog::source_label;
use schemas::config::{DestinationKind, FilterOutcome};
use schemas::event::{parse_event, peek_tenant};
use schemas::{Catalog, EventId, FieldError, TenantId};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub default_topic: String,
    /// Partitions and replication of topics the pipeline (re)creates.
    pub partitions: i32,
    pub replication: i32,
}

/// How often, at most, a delivery failure triggers a check that the topics still exist.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whose request this is: the admin may write for any registered tenant, a tenant key only for its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Tenant(TenantId),
}

/// One record the broker acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub id: EventId,
    #[serde(skip)]
    pub tenant: TenantId,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Every record written when the tenant routes to several topics (the first is the one above).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Placement>,
}

#[derive(Debug, Clone, Serialize)]
pub enum Outcome {
    Accepted(Accepted),
    /// The tenant's filters do not keep this event. It was counted, not stored.
    Filtered {
        id: EventId,
        reason: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the event is invalid")]
    Invalid { errors: Vec<FieldError> },
    #[error("this key may not write events for tenant {tenant}")]
    Forbidden { tenant: TenantId },
    #[error("tenant {tenant} is not registered")]
    UnknownTenant { tenant: TenantId },
    #[error("tenant {tenant} is disabled in its stream configuration")]
    TenantDisabled { tenant: TenantId },
    #[error("source {source_name} is not in the catalog nor in the tenant's allowedSources")]
    SourceNotAllowed { source_name: String },
    #[error("the broker did not acknowledge the event")]
    Unavailable(#[source] KafkaSinkError),
    #[error("the broker refused the event")]
    Undeliverable(#[source] KafkaSinkError),
}

impl IngestError {
    /// Stable reason code, also the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { errors } => errors.first().map_or("invalid_event", |e| e.code),
            Self::Forbidden { .. } => "forbidden_tenant",
            Self::UnknownTenant { .. } => "unknown_tenant",
            Self::TenantDisabled { .. } => "tenant_disabled",
            Self::SourceNotAllowed { .. } => "source_not_allowed",
            Self::Unavailable(_) => "broker_unavailable",
            Self::Undeliverable(e) => e.reason(),
        }
    }
}

#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    kafka: KafkaSink,
    redis: RedisStreamSink,
    configs: ConfigLog,
    stats: TenantStats,
    dead: DeadLetters,
    topics: Arc<Topics>,
    last_reconcile: std::sync::Mutex<Option<Instant>>,
    cfg: PipelineConfig,
}

impl Pipeline {
    pub fn new(
        cfg: PipelineConfig,
        kafka: KafkaSink,
        redis: RedisStreamSink,
        configs: ConfigLog,
        stats: TenantStats,
        dead: DeadLetters,
        topics: Arc<Topics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog: Catalog::new(),
                kafka,
                redis,
                configs,
                stats,
                dead,
                topics,
                last_reconcile: Default::default(),
                cfg,
            }),
        }
    }

    /// After a delivery failure, makes sure the topics still exist (a broker that lost its data, or a topic
    /// deleted by hand), at most once per [`RECONCILE_EVERY`]. A no-op on a healthy cluster.
    fn reconcile_topics(&self, topics: &[&str]) {
        let i = &self.inner;
        {
            let Ok(mut last) = i.last_reconcile.lock() else { return };
            if last.is_some_and(|t| t.elapsed() < RECONCILE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let spec = |name: &str| TopicSpec {
            name: name.to_string(),
            partitions: i.cfg.partitions,
            replication: i.cfg.replication,
            compacted: false,
        };
        let specs: Vec<TopicSpec> =
            topics.iter().map(|t| spec(t)).chain(std::iter::once(spec(i.dead.topic()))).collect();
        let admin = i.topics.clone();
        tokio::spawn(async move {
            if let Err(e) = admin.ensure(&specs).await {
                tracing::debug!(error = %e, "topic reconcile failed");
            }
        });
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }
    pub fn kafka(&self) -> &KafkaSink {
        &self.inner.kafka
    }
    pub fn redis(&self) -> &RedisStreamSink {
        &self.inner.redis
    }
    pub fn configs(&self) -> &ConfigLog {
        &self.inner.configs
    }
    pub fn stats(&self) -> &TenantStats {
        &self.inner.stats
    }
    pub fn default_topic(&self) -> &str {
        &self.inner.cfg.default_topic
    }

    /// validate -> authorise -> enrich -> filter -> route -> Kafka (awaited) -> Redis (queued).
    pub async fn ingest(
        &self,
        v: &Value,
        scope: &Scope,
        started: Instant,
        received_at: OffsetDateTime,
        correlation: Option<&str>,
    ) -> Result<Outcome, IngestError> {
        let res = self.ingest_inner(v, scope, started, received_at, correlation).await;
        if let Err(e) = &res {
            self.count_rejection(v, e);
        }
        res
    }

    async fn ingest_inner(
        &self,
        v: &Value,
        scope: &Scope,
        started: Instant,
        received_at: OffsetDateTime,
        correlation: Option<&str>,
    ) -> Result<Outcome, IngestError> {
        let i = &self.inner;
        // Authorise on the tenant before reporting anything else about the document.
        if let (Scope::Tenant(own), Some(t)) = (scope, peek_tenant(v)) {
            if *own != t {
                return Err(IngestError::Forbidden { tenant: t });
            }
        }
        let draft = parse_event(v, &i.catalog).map_err(|errors| IngestError::Invalid { errors })?;
        let Some(vc) = i.configs.stream_config(&draft.tenant_id) else {
            return Err(IngestError::UnknownTenant { tenant: draft.tenant_id });
        };
        let cfg = vc.config;
        if !cfg.enabled {
            return Err(IngestError::TenantDisabled { tenant: draft.tenant_id });
        }
        if !cfg.source_allowed(&draft.source) {
            return Err(IngestError::SourceNotAllowed { source_name: draft.source.to_string() });
        }
        let event = enrich(draft, received_at, correlation);
        let source = source_label(event.source.as_str());
        if cfg.filter(&event) == FilterOutcome::NoFilterMatched {
            let reason = "no_filter_matched";
            i.stats.filtered(&event.tenant_id, reason);
            metrics::counter!(m::EVENTS_FILTERED_TOTAL, "tenant" => event.tenant_id.to_string(), "reason" => reason)
                .increment(1);
            return Ok(Outcome::Filtered { id: event.id, reason });
        }
        let json: Arc<[u8]> = serde_json::to_vec(&event)
            .map_err(|e| IngestError::Invalid { errors: vec![FieldError::new("", "unencodable", e.to_string())] })?
            .into();
        let topics = route::topics(&cfg, &i.cfg.default_topic);
        let key = event.tenant_id.as_str();
        let sends = topics.iter().map(|t| i.kafka.send(t, key, &json, route::headers(&event), cfg.compression_enabled));
        let results = futures::future::join_all(sends).await;
        let mut placements = Vec::with_capacity(results.len());
        for (t, r) in topics.iter().zip(results) {
            match r {
                Ok(d) => {
                    placements.push(Placement { topic: (*t).to_string(), partition: d.partition, offset: d.offset })
                }
                Err(e) => {
                    self.reconcile_topics(&topics);
                    return Err(match e {
                        KafkaSinkError::Retriable { .. } => IngestError::Unavailable(e),
                        KafkaSinkError::Final { .. } => IngestError::Undeliverable(e),
                    });
                }
            }
        }
        let elapsed = started.elapsed();
        metrics::histogram!(m::INGEST_DURATION_SECONDS).record(elapsed.as_secs_f64());
        metrics::counter!(m::EVENTS_ACCEPTED_TOTAL, "tenant" => event.tenant_id.to_string(), "event_type" => event.event_type.as_str(), "source" => source).increment(1);
        i.stats.accepted(&event.tenant_id, event.event_type.as_str(), source, elapsed);
        if cfg.destination_enabled(DestinationKind::Redis) {
            i.redis.enqueue(StreamEntry {
                tenant: event.tenant_id.clone(),
                event_id: event.id.to_string(),
                event_type: event.event_type,
                source: event.source.to_string(),
                json: json.clone(),
                max_len: cfg.redis_max_len(),
                retention_ms: u64::from(cfg.retention_days) * 86_400_000,
            });
        }
        let first = placements.remove(0);
        Ok(Outcome::Accepted(Accepted {
            id: event.id,
            tenant: event.tenant_id,
            topic: first.topic,
            partition: first.partition,
            offset: first.offset,
            also: placements,
        }))
    }

    /// Counts a rejection against the tenant (when registered) and dead-letters what was rejected after parsing.
    fn count_rejection(&self, v: &Value, e: &IngestError) {
        let i = &self.inner;
        let reason = e.code();
        let tenant = peek_tenant(v).filter(|t| i.configs.tenant(t).is_some());
        let label = tenant.as_ref().map_or_else(|| "unknown".to_string(), ToString::to_string);
        metrics::counter!(m::EVENTS_REJECTED_TOTAL, "tenant" => label, "reason" => reason).increment(1);
        if let Some(t) = &tenant {
            i.stats.rejected(t, reason);
        }
        let dead_letter = match e {
            IngestError::Invalid { .. }
            | IngestError::TenantDisabled { .. }
            | IngestError::SourceNotAllowed { .. }
            | IngestError::Undeliverable(_) => tenant.is_some(),
            // Nothing to record: not the caller's tenant, no such tenant, or a retry will follow.
            IngestError::Forbidden { .. } | IngestError::UnknownTenant { .. } | IngestError::Unavailable(_) => false,
        };
        if dead_letter {
            let errors = match e {
                IngestError::Invalid { errors } => errors.as_slice(),
                _ => &[],
            };
            let original = serde_json::to_string(v).unwrap_or_default();
            i.dead.send(reason, tenant.as_ref().map(TenantId::as_str), errors, &original);
        }
    }
}
