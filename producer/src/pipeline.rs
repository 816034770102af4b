//! The ingest pipeline. [`Pipeline::ingest`] and [`Pipeline::ingest_many`] are the one place an event is accepted,
//! and their `Ok` is the one place it is acknowledged: they return only after the broker acknowledged every
//! record (acks=all, idempotent producer).
//!
//! Stages: `prepare` (validate, authorise, tenant config, enrich, filter, serialise) -> idempotency claim ->
//! quota -> `commit` (Kafka, awaited; Redis, queued). Each stage is a plain function of its inputs, so the bulk
//! path runs the same code as the single path, only grouping the quota check per tenant.

use crate::config_log::ConfigLog;
use crate::dead_letter::DeadLetters;
use crate::enrich::enrich;
use crate::idempotency::{Claim, ClaimGuard, Idempotency};
use crate::metric_names as m;
use crate::quota::{QuotaDecision, Quotas};
use crate::route;
use crate::sinks::kafka::{Delivered, KafkaSink, KafkaSinkError, Outgoing};
use crate::sinks::redis_stream::{RedisStreamSink, StreamEntry};
use crate::tenant_stats::TenantStats;
use crate::topics::{TopicSpec, Topics};
use schemas::catalog::source_label;
use schemas::config::{DestinationKind, FilterOutcome};
use schemas::event::{parse_bulk_text, parse_owned, parse_text, peek_tenant, EventDraft};
use schemas::{Catalog, Event, EventId, EventType, FieldError, SourceName, StreamConfig, TenantId};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub default_topic: String,
    /// Partitions and replication of topics the pipeline (re)creates.
    pub partitions: i32,
    pub replication: i32,
}

/// How often, at most, a delivery failure triggers a check that the topics still exist.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Whose request this is: the admin may write for any registered tenant, a tenant key only for its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Tenant(TenantId),
}

/// Per-request context shared by every item of a request.
#[derive(Debug, Clone)]
pub struct RequestContext<'a> {
    pub scope: &'a Scope,
    pub started: Instant,
    pub received_at: OffsetDateTime,
    pub correlation: Option<&'a str>,
    /// `Idempotency-Key` of a single-event request, used when the event carries no `id`.
    pub idempotency_key: Option<&'a str>,
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
    /// The other records written when the tenant routes to several topics.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Placement>,
    /// True when this is the stored result of an earlier request with the same id: nothing was written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(skip)]
    pub event_type: EventType,
    /// The metric label of the source (bounded set).
    #[serde(skip)]
    pub source_label: &'static str,
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
    #[error("tenant {tenant} is over its ingest quota")]
    QuotaExceeded { tenant: TenantId, retry_after: Duration, reason: &'static str },
    #[error("an event with the same id is still being written")]
    InFlight,
    #[error("the broker did not acknowledge the event")]
    Unavailable(#[source] Box<KafkaSinkError>),
    #[error("the broker refused the event")]
    Undeliverable(#[source] Box<KafkaSinkError>),
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
            Self::QuotaExceeded { reason, .. } => reason,
            Self::InFlight => "duplicate_in_flight",
            Self::Unavailable(_) => "broker_unavailable",
            Self::Undeliverable(e) => e.reason(),
        }
    }
}

/// An event document as the pipeline receives it.
pub enum Document<'a> {
    /// Parsed into a `Value`: checked field by field in the pipeline.
    Value(Value),
    /// Found valid straight from its JSON text by [`Pipeline::document`] or [`Pipeline::bulk_documents`], without
    /// a `Value` tree. Where its text is, is kept for the dead-letter record in case the tenant refuses the event.
    Valid { draft: Box<EventDraft>, text: Text<'a> },
}

/// Where the text of a [`Document::Valid`] is.
#[derive(Clone, Copy)]
pub enum Text<'a> {
    /// The event's own text.
    Own(&'a str),
    /// Item `index` of a bulk body that was read in one pass.
    Item { items: &'a ItemTexts<'a>, index: usize },
}

impl<'a> Text<'a> {
    fn get(self) -> Option<&'a str> {
        match self {
            Text::Own(t) => Some(t),
            Text::Item { items, index } => {
                let found = items.found.get_or_init(|| (items.split)(items.body));
                std::str::from_utf8(found.as_ref()?.get(index)?).ok()
            }
        }
    }
}

/// A bulk body read in one pass by [`Pipeline::bulk_documents`], which gives no item its own text. The texts are
/// found when the first is needed (an event its tenant refuses, for the dead-letter record), by `split`, at most
/// once per body.
pub struct ItemTexts<'a> {
    body: &'a [u8],
    split: fn(&'a [u8]) -> Option<Vec<&'a [u8]>>,
    found: std::sync::OnceLock<Option<Vec<&'a [u8]>>>,
}

impl<'a> ItemTexts<'a> {
    /// `split` takes a bulk body of the plain shape apart into its items' texts, in order.
    pub fn new(body: &'a [u8], split: fn(&'a [u8]) -> Option<Vec<&'a [u8]>>) -> Self {
        Self { body, split, found: std::sync::OnceLock::new() }
    }
}

/// A tenant and its config, as [`Pipeline::admit`] last found them in a request.
type LastConfig = Option<(TenantId, Arc<StreamConfig>)>;

/// An event that passed validation, authorisation and the tenant's filters, ready to be written.
pub struct Prepared {
    /// The envelope fields still needed once the event is serialised (or filtered): for its record headers, its
    /// answer and its counts. The rest of the event is freed right away, while it is still in the cache.
    event: Envelope,
    cfg: Arc<StreamConfig>,
    json: bytes::Bytes,
    dedup_key: Option<String>,
    /// Set when the tenant's filters drop the event: nothing is written.
    filtered: Option<&'static str>,
}

/// Consecutive items with the same key, as `(key, items)`. A request's events come in runs of one tenant, so what
/// is kept per tenant (quota sums, counts, window writes) is looked up once per run instead of once per event.
fn runs<T, K: PartialEq>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<(K, Vec<T>)> {
    let mut out: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match out.last_mut() {
            Some((last, run)) if *last == k => run.push(item),
            _ => out.push((k, vec![item])),
        }
    }
    out
}

/// What [`Prepared`] keeps of an event.
struct Envelope {
    id: EventId,
    tenant_id: TenantId,
    event_type: EventType,
    source: SourceName,
    occurred_at: OffsetDateTime,
}

impl From<Event> for Envelope {
    fn from(e: Event) -> Self {
        Self {
            id: e.id,
            tenant_id: e.tenant_id,
            event_type: e.event_type,
            source: e.source,
            occurred_at: e.occurred_at,
        }
    }
}

impl Envelope {
    fn head(&self) -> route::Head<'_> {
        route::Head {
            id: self.id.as_str(),
            event_type: self.event_type.as_str(),
            source: self.source.as_str(),
            occurred_at: self.occurred_at,
            tenant_id: self.tenant_id.as_str(),
        }
    }
}

enum Stage {
    Ready(Box<Prepared>),
    Done(Result<Outcome, IngestError>),
    /// The same id as an earlier item of this request (of this tenant): answered with that item's result.
    SameAs(usize, TenantId),
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
    idempotency: Idempotency,
    quotas: Quotas,
    last_reconcile: std::sync::Mutex<Option<Instant>>,
    cfg: PipelineConfig,
}

/// The parts a pipeline is built from.
pub struct Parts {
    pub kafka: KafkaSink,
    pub redis: RedisStreamSink,
    pub configs: ConfigLog,
    pub stats: TenantStats,
    pub dead: DeadLetters,
    pub topics: Arc<Topics>,
    pub idempotency: Idempotency,
    pub quotas: Quotas,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, p: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog: Catalog::new(),
                kafka: p.kafka,
                redis: p.redis,
                configs: p.configs,
                stats: p.stats,
                dead: p.dead,
                topics: p.topics,
                idempotency: p.idempotency,
                quotas: p.quotas,
                last_reconcile: Default::default(),
                cfg,
            }),
        }
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
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.inner.dead
    }
    pub fn stats(&self) -> &TenantStats {
        &self.inner.stats
    }
    pub fn quotas(&self) -> &Quotas {
        &self.inner.quotas
    }
    pub fn default_topic(&self) -> &str {
        &self.inner.cfg.default_topic
    }

    /// One event: the whole pipeline.
    pub async fn ingest(&self, doc: Document<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, IngestError> {
        let mut out = self.ingest_many(vec![doc], ctx).await;
        out.pop().unwrap_or(Err(IngestError::InFlight))
    }

    /// Many events (a bulk request): results in input order. Quotas are taken once per tenant for the request.
    pub async fn ingest_many(
        &self,
        values: Vec<Document<'_>>,
        ctx: &RequestContext<'_>,
    ) -> Vec<Result<Outcome, IngestError>> {
        // A tenant key whose tenant is known to be over quota is refused before any parsing: a flood is cheap.
        if let Scope::Tenant(t) = ctx.scope {
            if let Some(retry_after) = self.inner.quotas.locally_limited(t) {
                return values
                    .iter()
                    .map(|_| {
                        let e = IngestError::QuotaExceeded { tenant: t.clone(), retry_after, reason: "quota_exceeded" };
                        self.count_rejection(Some(t.clone()), &e, None);
                        Err(e)
                    })
                    .collect();
            }
        }
        let single = values.len() == 1;
        // Every rejection is counted where it happens, against the tenant known at that point.
        let mut last_config = None;
        let mut stages: Vec<Stage> = values
            .into_iter()
            .map(|v| match self.prepare(v, ctx, single, &mut last_config) {
                Ok(p) => Stage::Ready(Box::new(p)),
                Err(rejected) => {
                    let (e, original) = *rejected;
                    self.count_rejection(peek_tenant(&original), &e, Some(&original));
                    Stage::Done(Err(e))
                }
            })
            .collect();

        // An id repeated within the request is answered by its first occurrence (claiming it twice would wait on
        // ourselves).
        let mut first_of: HashMap<(TenantId, String), usize> = HashMap::new();
        for (idx, stage) in stages.iter_mut().enumerate() {
            let first = match &*stage {
                Stage::Ready(p) => match &p.dedup_key {
                    Some(k) => *first_of.entry((p.event.tenant_id.clone(), k.clone())).or_insert(idx),
                    None => idx,
                },
                _ => idx,
            };
            if first != idx {
                if let Stage::Ready(p) = &*stage {
                    *stage = Stage::SameAs(first, p.event.tenant_id.clone());
                }
            }
        }

        // Claim ids first, so that a retried event neither writes twice nor spends quota twice.
        let has_keys = stages.iter().any(|s| matches!(s, Stage::Ready(p) if p.dedup_key.is_some()));
        let claims: Vec<Option<Claim>> = if has_keys {
            futures::future::join_all(stages.iter().map(|s| async move {
                match s {
                    Stage::Ready(p) => match &p.dedup_key {
                        Some(k) => Some(self.inner.idempotency.claim(&p.event.tenant_id, k).await),
                        None => None,
                    },
                    Stage::Done(_) | Stage::SameAs(..) => None,
                }
            }))
            .await
        } else {
            // No client ids in this request: nothing to claim, and no 500 idle futures to poll.
            stages.iter().map(|_| None).collect()
        };
        let mut guards: Vec<Option<ClaimGuard>> = Vec::with_capacity(stages.len());
        for (stage, claim) in stages.iter_mut().zip(claims) {
            let guard = match claim {
                Some(Claim::New(g)) => Some(g),
                Some(Claim::Duplicate(r)) => {
                    if let Stage::Ready(p) = stage {
                        let tenant = p.event.tenant_id.clone();
                        *stage = Stage::Done(
                            r.into_accepted(tenant, p.event.event_type)
                                .map(Outcome::Accepted)
                                .ok_or(IngestError::InFlight),
                        );
                    }
                    None
                }
                Some(Claim::InFlight) => {
                    if let Stage::Ready(p) = stage {
                        self.count_rejection(Some(p.event.tenant_id.clone()), &IngestError::InFlight, None);
                    }
                    *stage = Stage::Done(Err(IngestError::InFlight));
                    None
                }
                Some(Claim::Unavailable) | None => None,
            };
            guards.push(guard);
        }

        // Quotas: one check per tenant for all of its events in this request.
        let mut per_tenant: HashMap<TenantId, (Arc<StreamConfig>, u64, u64)> = HashMap::new();
        let to_write = stages.iter().filter_map(|s| match s {
            Stage::Ready(p) if p.filtered.is_none() => Some(&**p),
            _ => None,
        });
        for (tenant, run) in runs(to_write, |p| &p.event.tenant_id) {
            let (n, bytes) = (run.len() as u64, run.iter().map(|p| p.json.len() as u64).sum::<u64>());
            match per_tenant.get_mut(tenant) {
                Some(e) => (e.1, e.2) = (e.1 + n, e.2 + bytes),
                None => {
                    per_tenant.insert(tenant.clone(), (run[0].cfg.clone(), n, bytes));
                }
            }
        }
        let decisions = futures::future::join_all(per_tenant.iter().map(|(t, (cfg, n, bytes))| async move {
            (t.clone(), self.inner.quotas.take(t, cfg.quota.as_ref(), *n, *bytes).await)
        }))
        .await;
        let limited: HashMap<TenantId, (Duration, &'static str)> = decisions
            .into_iter()
            .filter_map(|(t, d)| match d {
                QuotaDecision::Allowed => None,
                QuotaDecision::Limited { retry_after, reason } => Some((t, (retry_after, reason))),
            })
            .collect();

        let same_as: Vec<Option<(usize, TenantId)>> =
            stages.iter().map(|s| if let Stage::SameAs(j, t) = s { Some((*j, t.clone())) } else { None }).collect();
        // Quota refusals and earlier answers are settled here; the rest are committed together.
        // (A committed event's place holds `InFlight` until its answer is known.)
        let mut results: Vec<Result<Outcome, IngestError>> = Vec::with_capacity(stages.len());
        let mut to_commit: Vec<(usize, Box<Prepared>, Option<ClaimGuard>)> = Vec::new();
        let mut to_release: Vec<ClaimGuard> = Vec::new();
        for (idx, (stage, guard)) in stages.into_iter().zip(guards).enumerate() {
            results.push(match stage {
                Stage::Done(r) => r,
                Stage::SameAs(..) => Err(IngestError::InFlight),
                Stage::Ready(p) => match limited.get(&p.event.tenant_id) {
                    Some((retry_after, reason)) => {
                        to_release.extend(guard);
                        let e = IngestError::QuotaExceeded {
                            tenant: p.event.tenant_id.clone(),
                            retry_after: *retry_after,
                            reason,
                        };
                        self.count_rejection(Some(p.event.tenant_id.clone()), &e, None);
                        Err(e)
                    }
                    None => {
                        to_commit.push((idx, p, guard));
                        Err(IngestError::InFlight)
                    }
                },
            });
        }
        // The claims of refused events are given back while the others are written.
        let idem = &self.inner.idempotency;
        let releases = futures::future::join_all(to_release.into_iter().map(|g| idem.release(g)));
        let (committed, _) =
            futures::future::join(self.commit_all(to_commit.iter().map(|(_, p, _)| &**p)), releases).await;
        // Claimed ids: the stored answer for a retry, or the claim given back after a failure.
        let mut settle = Vec::new();
        for ((idx, p, guard), r) in to_commit.into_iter().zip(committed) {
            if let Err(e) = &r {
                self.count_rejection(Some(p.event.tenant_id.clone()), e, None);
            }
            if let Some(g) = guard {
                match &r {
                    Ok(Outcome::Accepted(a)) => settle.push((g, Some(a.clone()))),
                    _ => settle.push((g, None)),
                }
            }
            results[idx] = r;
        }
        if !settle.is_empty() {
            futures::future::join_all(settle.into_iter().map(|(g, a)| async move {
                match a {
                    Some(a) => idem.complete(g, &a).await,
                    None => idem.release(g).await,
                }
            }))
            .await;
        }
        for (idx, same) in same_as.into_iter().enumerate() {
            if let Some((j, tenant)) = same {
                results[idx] = match &results[j] {
                    Ok(Outcome::Accepted(a)) => Ok(Outcome::Accepted(Accepted { duplicate: true, ..a.clone() })),
                    Ok(Outcome::Filtered { id, reason }) => Ok(Outcome::Filtered { id: id.clone(), reason }),
                    Err(_) => {
                        let e = IngestError::Invalid {
                            errors: vec![FieldError::new(
                                "id",
                                "duplicate_in_request",
                                "the same id appears earlier in this request, which was rejected",
                            )],
                        };
                        self.count_rejection(Some(tenant), &e, None);
                        Err(e)
                    }
                };
            }
        }
        self.count_accepted(&results, ctx.started.elapsed());
        results
    }

    /// validate -> authorise -> tenant config -> enrich -> filter -> serialise. Filtered events end here.
    fn prepare(
        &self,
        doc: Document<'_>,
        ctx: &RequestContext<'_>,
        single: bool,
        last_config: &mut LastConfig,
    ) -> Result<Prepared, Box<(IngestError, Value)>> {
        let i = &self.inner;
        let v = match doc {
            Document::Value(v) => v,
            Document::Valid { draft, text } => {
                return match self.admit(&draft.tenant_id, Some(&draft.source), ctx, last_config) {
                    Ok(cfg) => Ok(self.finish(*draft, cfg, ctx, single)),
                    // The text parsed once already; `Null` only keeps the types total.
                    Err(e) => {
                        let original = text.get().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null);
                        Err(Box::new((e, original)))
                    }
                };
            }
        };
        // Tenant-level checks first, on the document as sent: who may write, whether the tenant exists and is
        // enabled, whether it may use this source. Field-level problems are reported by the parser below.
        let cfg = match peek_tenant(&v) {
            Some(t) => {
                let src = v.get("source").and_then(Value::as_str).and_then(|s| SourceName::new(s).ok());
                match self.admit(&t, src.as_ref(), ctx, last_config) {
                    Ok(cfg) => Some(cfg),
                    Err(e) => return Err(Box::new((e, v))),
                }
            }
            None => None,
        };
        let draft = parse_owned(v, &i.catalog).map_err(|(errors, v)| Box::new((IngestError::Invalid { errors }, v)))?;
        // A valid draft always has a valid tenant, so `cfg` is known here; the fallback is unreachable.
        Ok(self.finish(draft, cfg.unwrap_or_default(), ctx, single))
    }

    /// One event's JSON as a document: a valid event is checked straight from its text, anything else is parsed
    /// into a `Value` for the field-by-field check. `Err` (serde's, saying where) when it is not JSON.
    pub fn document<'a>(&self, bytes: &'a [u8]) -> Result<Document<'a>, serde_json::Error> {
        let valid = std::str::from_utf8(bytes).ok().and_then(|t| Some((parse_text(t, &self.inner.catalog)?, t)));
        match valid {
            Some((draft, text)) => Ok(Document::Valid { draft: Box::new(draft), text: Text::Own(text) }),
            None => serde_json::from_slice(bytes).map(Document::Value),
        }
    }

    /// Every event of a bulk body of the plain shape (`{"events": [...]}`), read in one pass, when every one of
    /// them is valid (see [`schemas::event::parse_bulk_text`]). `None` otherwise: the caller takes the body apart
    /// and makes a [`Pipeline::document`] of each item.
    pub fn bulk_documents<'a>(&self, items: &'a ItemTexts<'a>) -> Option<Vec<Document<'a>>> {
        let text = std::str::from_utf8(items.body).ok()?;
        let mut index = 0;
        parse_bulk_text(text, &self.inner.catalog, |c| {
            index += 1;
            Document::Valid { draft: Box::new(c), text: Text::Item { items, index: index - 1 } }
        })
    }

    /// May this request write for `tenant`, is the tenant registered and enabled, and may it use `source`?
    /// `last_config` is the config last looked up in this request (one tenant's): a request's events are mostly
    /// one tenant's, and then they share one lookup.
    fn admit(
        &self,
        tenant: &TenantId,
        source: Option<&SourceName>,
        ctx: &RequestContext<'_>,
        last_config: &mut LastConfig,
    ) -> Result<Arc<StreamConfig>, IngestError> {
        if let Scope::Tenant(own) = ctx.scope {
            if own != tenant {
                return Err(IngestError::Forbidden { tenant: tenant.clone() });
            }
        }
        let cfg = match last_config {
            Some((t, cfg)) if t == tenant => cfg.clone(),
            _ => {
                let Some(cfg) = self.inner.configs.config(tenant) else {
                    return Err(IngestError::UnknownTenant { tenant: tenant.clone() });
                };
                *last_config = Some((tenant.clone(), cfg.clone()));
                cfg
            }
        };
        if !cfg.enabled {
            return Err(IngestError::TenantDisabled { tenant: tenant.clone() });
        }
        match source {
            Some(src) if !cfg.source_allowed(src) => {
                Err(IngestError::SourceNotAllowed { source_name: src.to_string() })
            }
            _ => Ok(cfg),
        }
    }

    /// enrich -> filter -> serialise, for a valid draft of an admitted tenant.
    fn finish(&self, draft: EventDraft, cfg: Arc<StreamConfig>, ctx: &RequestContext<'_>, single: bool) -> Prepared {
        let i = &self.inner;
        // Event ids and Idempotency-Keys live in separate namespaces.
        let client_id = draft.id.as_ref().map(|id| format!("id:{id}"));
        let event = enrich(draft, ctx.received_at, ctx.correlation);
        if cfg.filter(&event) == FilterOutcome::NoFilterMatched {
            let reason = "no_filter_matched";
            i.stats.filtered(&event.tenant_id, reason);
            metrics::counter!(m::EVENTS_FILTERED_TOTAL, "tenant" => event.tenant_id.to_string(), "reason" => reason)
                .increment(1);
            return Prepared {
                event: event.into(),
                cfg,
                json: bytes::Bytes::new(),
                dedup_key: None,
                filtered: Some(reason),
            };
        }
        // Serialising an `Event` cannot fail: every field is a string, number, map or timestamp.
        // The text moves into `Bytes` as it is (an `Arc<[u8]>` would copy it), shared by the Kafka record and
        // the window.
        let json = bytes::Bytes::from(event.to_json().unwrap_or_default());
        // From here on the JSON text stands for the event: what the envelope does not keep is freed now, while it
        // is still in the cache, instead of after the broker's acknowledgement with the rest of the request.
        let event = Envelope::from(event);
        let dedup_key =
            client_id.or_else(|| if single { ctx.idempotency_key.map(|k| format!("hdr:{k}")) } else { None });
        Prepared { event, cfg, json, dedup_key, filtered: None }
    }

    /// Kafka (every route of every event queued first, then every acknowledgement awaited) -> Redis (queued).
    async fn commit_all<'p>(&self, prepared: impl Iterator<Item = &'p Prepared>) -> Vec<Result<Outcome, IngestError>> {
        let i = &self.inner;
        let prepared: Vec<&Prepared> = prepared.collect();
        let mut routes: Vec<route::Topics<'_>> = Vec::with_capacity(prepared.len());
        let mut records = Vec::with_capacity(prepared.len());
        for p in &prepared {
            let topics = match p.filtered {
                Some(_) => route::Topics::Nowhere,
                None => route::topics(&p.cfg, &i.cfg.default_topic),
            };
            for topic in topics.iter() {
                records.push(Outgoing {
                    topic,
                    key: p.event.tenant_id.as_str(),
                    payload: &p.json,
                    headers: p.event.head().headers(),
                    compress: p.cfg.compression_enabled,
                });
            }
            routes.push(topics);
        }
        let mut delivered = i.kafka.send_all(records).await.into_iter();
        let results: Vec<Result<Outcome, IngestError>> = prepared
            .iter()
            .zip(&routes)
            .map(|(p, topics)| self.settle(p, *topics, delivered.by_ref().take(topics.len())))
            .collect();
        // Accepted events go to their tenant's window, a run of one tenant's events (with one config) at a time.
        let to_window = prepared.iter().zip(&results).filter_map(|(p, r)| {
            let accepted = matches!(r, Ok(Outcome::Accepted(_)));
            (accepted && p.cfg.destination_enabled(DestinationKind::Redis)).then_some(*p)
        });
        let bounds = |p: &&Prepared| (p.cfg.redis_max_len(), u64::from(p.cfg.retention_days) * 86_400_000);
        for ((tenant, (max_len, retention_ms)), run) in runs(to_window, |p| (&p.event.tenant_id, bounds(p))) {
            let events = run.iter().map(|p| p.json.clone()).collect();
            i.redis.enqueue(StreamEntry { tenant: tenant.clone(), events, max_len, retention_ms });
        }
        results
    }

    /// One event's answer from its records' acknowledgements.
    fn settle(
        &self,
        p: &Prepared,
        topics: route::Topics<'_>,
        delivered: impl Iterator<Item = Result<Delivered, KafkaSinkError>>,
    ) -> Result<Outcome, IngestError> {
        let i = &self.inner;
        if let Some(reason) = p.filtered {
            return Ok(Outcome::Filtered { id: p.event.id.clone(), reason });
        }
        let event = &p.event;
        // The first topic's place, and the others' (a tenant routing to one topic allocates no list).
        let (mut first, mut also) = (None, Vec::new());
        let mut failure = None;
        for (t, r) in topics.iter().zip(delivered) {
            match r {
                Ok(d) => {
                    let place = Placement { topic: t.to_string(), partition: d.partition, offset: d.offset };
                    match first {
                        None => first = Some(place),
                        Some(_) => also.push(place),
                    }
                }
                // The first failure decides the answer (every record was waited for).
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            self.reconcile_topics(topics);
            return Err(match e {
                KafkaSinkError::Retriable { .. } => IngestError::Unavailable(Box::new(e)),
                KafkaSinkError::Final { .. } => {
                    // No sink can take it as it is: keep it, with the reason, on the dead-letter topic.
                    let original = String::from_utf8_lossy(&p.json);
                    i.dead.send(e.reason(), Some(event.tenant_id.as_str()), &[], &original);
                    IngestError::Undeliverable(Box::new(e))
                }
            });
        }
        // Every route has a topic (the shared default at least); were one without, nothing was written, and
        // nothing is acknowledged.
        let Some(first) = first else {
            return Err(IngestError::Unavailable(Box::new(KafkaSinkError::Retriable {
                topic: String::new(),
                reason: "no_topic",
                source: rdkafka::error::KafkaError::Canceled,
            })));
        };
        Ok(Outcome::Accepted(Accepted {
            id: event.id.clone(),
            tenant: event.tenant_id.clone(),
            topic: first.topic,
            partition: first.partition,
            offset: first.offset,
            also,
            duplicate: false,
            event_type: event.event_type,
            source_label: source_label(event.source.as_str()),
        }))
    }

    /// After a delivery failure, makes sure the topics still exist (a broker that lost its data, or a topic
    /// deleted by hand), at most once per [`RECONCILE_EVERY`]. A no-op on a healthy cluster.
    fn reconcile_topics(&self, topics: route::Topics<'_>) {
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
        let specs: Vec<TopicSpec> = topics.iter().map(spec).chain(std::iter::once(spec(i.dead.topic()))).collect();
        let admin = i.topics.clone();
        tokio::spawn(async move {
            if let Err(e) = admin.ensure(&specs).await {
                tracing::debug!(error = %e, "topic reconcile failed");
            }
        });
    }

    /// Counts accepted events once per request and (tenant, type, source), not once per event.
    fn count_accepted(&self, results: &[Result<Outcome, IngestError>], elapsed: Duration) {
        let mut counts: HashMap<(&TenantId, EventType, &'static str), u64> = HashMap::new();
        let fresh = results.iter().filter_map(|r| match r {
            Ok(Outcome::Accepted(a)) if !a.duplicate => Some(a),
            _ => None,
        });
        for (key, run) in runs(fresh, |a| (&a.tenant, a.event_type, a.source_label)) {
            *counts.entry(key).or_default() += run.len() as u64;
        }
        for ((tenant, t, source), n) in counts {
            metrics::histogram!(m::INGEST_DURATION_SECONDS).record_many(elapsed.as_secs_f64(), n as usize);
            metrics::counter!(m::EVENTS_ACCEPTED_TOTAL, "tenant" => tenant.to_string(), "event_type" => t.as_str(), "source" => source).increment(n);
            self.inner.stats.accepted(tenant, t.as_str(), source, elapsed, n);
        }
    }

    /// Counts a rejection against the tenant (when registered) and dead-letters what was rejected after parsing
    /// (`original`: the document as received, when the rejection happened before it was consumed).
    fn count_rejection(&self, tenant: Option<TenantId>, e: &IngestError, original: Option<&Value>) {
        let i = &self.inner;
        let reason = e.code();
        let tenant = tenant.filter(|t| i.configs.tenant(t).is_some());
        let label = tenant.as_ref().map_or_else(|| "unknown".to_string(), ToString::to_string);
        metrics::counter!(m::EVENTS_REJECTED_TOTAL, "tenant" => label, "reason" => reason).increment(1);
        if let Some(t) = &tenant {
            i.stats.rejected(t, reason);
        }
        let dead_letter = match e {
            IngestError::Invalid { .. } | IngestError::TenantDisabled { .. } | IngestError::SourceNotAllowed { .. } => {
                tenant.is_some()
            }
            // Nothing to record: not the caller's tenant, no such tenant, or the client is told to retry.
            IngestError::Forbidden { .. }
            | IngestError::UnknownTenant { .. }
            | IngestError::Unavailable(_)
            | IngestError::Undeliverable(_)
            | IngestError::QuotaExceeded { .. }
            | IngestError::InFlight => false,
        };
        if let (true, Some(v)) = (dead_letter, original) {
            let errors = match e {
                IngestError::Invalid { errors } => errors.as_slice(),
                _ => &[],
            };
            let original = serde_json::to_string(v).unwrap_or_default();
            i.dead.send(reason, tenant.as_ref().map(TenantId::as_str), errors, &original);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ItemTexts, Text};

    /// The split the handler uses, for a body of the plain shape: items are separated by top-level commas.
    fn split(body: &[u8]) -> Option<Vec<&[u8]>> {
        let inner = body.strip_prefix(b"{\"events\":[")?.strip_suffix(b"]}")?;
        Some(inner.split(|b| *b == b',').collect())
    }

    #[test]
    fn an_items_text_is_found_when_asked_for() {
        let body = br#"{"events":[1,"two",3]}"#;
        let items = ItemTexts::new(body, split);
        let text = |index| Text::Item { items: &items, index }.get();
        assert_eq!(text(1), Some(r#""two""#));
        assert_eq!(text(0), Some("1"));
        assert_eq!(text(3), None);
        assert_eq!(Text::Own("x").get(), Some("x"));
        // A body the split refuses has no item texts.
        let odd = ItemTexts::new(b"[1]", split);
        assert_eq!(Text::Item { items: &odd, index: 0 }.get(), None);
    }
}
