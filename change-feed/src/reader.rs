//! The feed reader: per container, one task per leased feed range reads pages, publishes one event per change
//! through the ingest pipeline, and stores the range's continuation token only after Kafka acknowledged every event
//! of the page (at-least-once; the deterministic event ids let the ingest dedup drop what a replay repeats).

use crate::client;
use crate::config::{ChangeFeedFile, FeedMode, StartFrom};
use crate::lease::Leases;
use crate::mapping::{map_change, Change, ContainerMapping, Operation};
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::FeedScope;
use azure_data_cosmos::models::{ChangeFeedItem, ChangeFeedOperationType};
use azure_data_cosmos::options::{ChangeFeedMode, ChangeFeedOptions, ChangeFeedStartFrom, MaxItemCountHint};
use azure_data_cosmos::CosmosClient;
use azure_data_cosmos_driver::models::{ContinuationToken, FeedRange};
use futures::StreamExt;
use producer::metric_names as m;
use producer::redis_conn::RedisConn;
use producer::{Document, IngestError, Outcome, Pipeline, RequestContext, Scope};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ChangeFeedError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Wrong configuration (a missing secret, a bad endpoint): retrying cannot help.
    #[error("change feed: {0}")]
    Setup(String),
    /// The account did not answer as expected (unreachable, refused); retried with backoff.
    #[error("cosmos client: {0}")]
    Client(String),
}

/// What one reader process shares between its containers and ranges.
struct Shared {
    file: ChangeFeedFile,
    client: CosmosClient,
    pipeline: Pipeline,
    redis: RedisConn,
    owner: String,
}

/// A unique name of this reader process in the lease store.
pub fn owner_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "evstream".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::rng().random::<u32>())
}

/// Runs the change feed until `stop` resolves: leases, reads and publishes every configured container. Leases and
/// checkpoints go to the pipeline's own Redis connection.
pub async fn run(
    file: ChangeFeedFile,
    pipeline: Pipeline,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ChangeFeedError> {
    let mut backoff = Backoff::new(file.backoff());
    let mut stop = std::pin::pin!(stop);
    // Cosmos DB may be unreachable when evstream starts: keep trying (a wrong setup fails at once).
    let client = loop {
        match client::connect(&file).await {
            Ok(c) => break c,
            Err(e @ ChangeFeedError::Setup(_)) => return Err(e),
            Err(e) => {
                metrics::counter!(m::CHANGEFEED_ERRORS_TOTAL, "container" => "*", "kind" => "client").increment(1);
                tracing::warn!(error = %e, "cosmos db not reachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.step(None)) => {}
                    _ = &mut stop => return Ok(()),
                }
            }
        }
    };
    let redis = pipeline.redis().connection();
    let shared = Arc::new(Shared { file, client, pipeline, redis, owner: owner_id() });
    tracing::info!(owner = %shared.owner, containers = shared.file.containers.len(), "change feed starting");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for mapping in shared.file.containers.clone() {
        tasks.spawn(container_loop(shared.clone(), mapping, stop_rx.clone()));
    }
    stop.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("change feed stopped");
    Ok(())
}

async fn wait_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Exponential backoff with full jitter between `base` and `max`.
struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new((base, max): (Duration, Duration)) -> Self {
        Self { base, max, next: base }
    }
    fn reset(&mut self) {
        self.next = self.base;
    }
    /// The next wait; `hint` (a 429's retry-after) wins when longer.
    fn step(&mut self, hint: Option<Duration>) -> Duration {
        let cap = self.next;
        self.next = (self.next * 2).min(self.max);
        let jittered =
            Duration::from_millis(rand::rng().random_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64));
        hint.map_or(jittered, |h| h.max(jittered))
    }
}

/// A running range reader. Dropped with its container loop (a crash of the process, an aborted task), it aborts
/// the reader; its lease is then left to expire, as when a process dies.
struct RangeTask {
    handle: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl RangeTask {
    async fn finish(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.handle).await;
    }
}

impl Drop for RangeTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn container_loop(shared: Arc<Shared>, mapping: ContainerMapping, mut stop: watch::Receiver<bool>) {
    let label = mapping.container.clone();
    let f = &shared.file;
    let leases = Leases::new(
        shared.redis.clone(),
        &f.lease_prefix,
        &mapping.database,
        &mapping.container,
        &shared.owner,
        f.lease_ttl(),
    );
    let mut backoff = Backoff::new(f.backoff());
    // The container and its ranges, retried until Cosmos DB and Redis answer.
    let (container, ranges) = loop {
        let attempt = async {
            let c = shared
                .client
                .database_client(&mapping.database)
                .container_client(mapping.container.as_str(), None)
                .await
                .map_err(|e| ("container", e.to_string()))?;
            let live = c.read_feed_ranges(None).await.map_err(|e| ("feed_ranges", e.to_string()))?;
            let names: Vec<String> = live.iter().map(ToString::to_string).collect();
            let stored = leases.ranges(&names).await.map_err(|e| ("redis", e.to_string()))?;
            let ranges: Vec<FeedRange> = stored.iter().filter_map(|s| s.parse().ok()).collect();
            Ok::<_, (&'static str, String)>((c, ranges))
        };
        match attempt.await {
            Ok(ok) => break ok,
            Err((kind, e)) => {
                metrics::counter!(m::CHANGEFEED_ERRORS_TOTAL, "container" => label.clone(), "kind" => kind)
                    .increment(1);
                tracing::warn!(database = %mapping.database, container = %label, kind, error = %e, "change feed not ready");
                if wait_or_stop(backoff.step(None), &mut stop).await {
                    return;
                }
            }
        }
    };
    tracing::info!(container = %label, ranges = ranges.len(), "change feed ranges");
    let container = Arc::new(container);
    let mapping = Arc::new(mapping);
    let mut held: HashMap<usize, RangeTask> = HashMap::new();
    let tick = (f.lease_ttl() / 3).max(Duration::from_millis(200));
    loop {
        held.retain(|_, t| !t.handle.is_finished());
        match coordinate(&shared, &leases, &container, &mapping, &ranges, &mut held).await {
            Ok(()) => {}
            Err(e) => {
                metrics::counter!(m::CHANGEFEED_ERRORS_TOTAL, "container" => label.clone(), "kind" => "redis")
                    .increment(1);
                tracing::warn!(container = %label, error = %e, "lease store unreachable");
            }
        }
        metrics::gauge!(m::CHANGEFEED_RANGES_OWNED, "container" => label.clone()).set(held.len() as f64);
        if wait_or_stop(tick, &mut stop).await {
            break;
        }
    }
    for (i, t) in held.drain() {
        t.finish().await;
        let _ = leases.release(i).await;
    }
    leases.leave().await;
    metrics::gauge!(m::CHANGEFEED_RANGES_OWNED, "container" => label).set(0.0);
}

/// One lease round: heartbeat, renew what we hold, give back more than our share, take free ranges up to it.
async fn coordinate(
    shared: &Arc<Shared>,
    leases: &Leases,
    container: &Arc<ContainerClient>,
    mapping: &Arc<ContainerMapping>,
    ranges: &[FeedRange],
    held: &mut HashMap<usize, RangeTask>,
) -> Result<(), redis::RedisError> {
    let readers = leases.heartbeat().await?;
    let share = ranges.len().div_ceil(readers);
    let mine: Vec<usize> = held.keys().copied().collect();
    for i in mine {
        if !leases.renew(i).await? {
            tracing::warn!(container = %mapping.container, range = i, "lease lost");
            held.remove(&i);
        }
    }
    while held.len() > share {
        let Some(&i) = held.keys().max() else { break };
        if let Some(t) = held.remove(&i) {
            t.finish().await;
        }
        leases.release(i).await?;
        tracing::info!(container = %mapping.container, range = i, readers, "range handed over");
    }
    for (i, range) in ranges.iter().enumerate() {
        if held.len() >= share {
            break;
        }
        if held.contains_key(&i) || !leases.acquire(i).await? {
            continue;
        }
        tracing::info!(container = %mapping.container, range = i, owner = %leases.owner(), "range leased");
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(read_range(
            shared.clone(),
            leases.clone(),
            container.clone(),
            mapping.clone(),
            i,
            range.clone(),
            rx,
        ));
        held.insert(i, RangeTask { handle, stop: tx });
    }
    Ok(())
}

/// Read the page again from the checkpoint, after this long at least; the error kind for the metric.
struct Retry(Option<Duration>, &'static str);

/// Reads one range until stopped or its lease is lost.
async fn read_range(
    shared: Arc<Shared>,
    leases: Leases,
    container: Arc<ContainerClient>,
    mapping: Arc<ContainerMapping>,
    index: usize,
    range: FeedRange,
    mut stop: watch::Receiver<bool>,
) {
    let f = &shared.file;
    let label = mapping.container.clone();
    let range_label = index.to_string();
    let mut backoff = Backoff::new(f.backoff());
    let mut last_change: Option<i64> = None;
    let lag = |last: Option<i64>| {
        if let Some(ts) = last {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            metrics::gauge!(m::CHANGEFEED_LAG_SECONDS, "container" => label.clone(), "range" => range_label.clone())
                .set((now - ts).max(0) as f64);
        }
    };
    let error = |kind: &'static str| {
        metrics::counter!(m::CHANGEFEED_ERRORS_TOTAL, "container" => label.clone(), "kind" => kind).increment(1);
    };
    'resume: loop {
        if *stop.borrow() {
            return;
        }
        let mut checkpoint = match leases.checkpoint(index).await {
            Ok(c) => c,
            Err(e) => {
                error("redis");
                tracing::warn!(container = %label, range = index, error = %e, "checkpoint unreadable");
                if wait_or_stop(backoff.step(None), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let page_size = NonZeroU32::new(f.page_size).map_or(MaxItemCountHint::ServerDecides, MaxItemCountHint::Limit);
        let mut opts = ChangeFeedOptions::default().with_mode(mode(f.mode)).with_max_item_count(page_size);
        if let Some(token) = &checkpoint {
            opts = opts.with_continuation_token(ContinuationToken::from_string(token.clone()));
        }
        let start = start_from(&f.start_from);
        let mut pages =
            match container.query_change_feed::<Value>(FeedScope::range(range.clone()), start, Some(opts)).await {
                Ok(p) => p,
                Err(e) => {
                    error("query");
                    tracing::warn!(container = %label, range = index, error = %e, "change feed query failed");
                    if wait_or_stop(backoff.step(retry_after(&e)), &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
        loop {
            let next = tokio::select! {
                p = pages.next() => p,
                _ = stop.wait_for(|s| *s) => return,
            };
            let page = match next {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    let throttled = e.status().status_code() == azure_core::http::StatusCode::TooManyRequests;
                    error(if throttled { "throttled" } else { "page" });
                    tracing::warn!(container = %label, range = index, error = %e, "change feed page failed");
                    if wait_or_stop(backoff.step(retry_after(&e)), &mut stop).await {
                        return;
                    }
                    continue 'resume;
                }
                None => {
                    if wait_or_stop(f.poll_interval(), &mut stop).await {
                        return;
                    }
                    continue 'resume;
                }
            };
            metrics::counter!(m::CHANGEFEED_PAGES_TOTAL, "container" => label.clone()).increment(1);
            let items = page.into_items();
            let token = pages.to_continuation_token().ok().map(|t| t.as_str().to_owned());
            let empty = items.is_empty();
            tracing::debug!(container = %label, range = index, items = items.len(), "change feed page");
            if !empty {
                last_change = items
                    .iter()
                    .filter_map(|i| i.current().or(i.previous()).and_then(|d| d.get("_ts")).and_then(Value::as_i64))
                    .max()
                    .max(last_change);
                if let Err(Retry(hint, kind)) = publish(&shared, &mapping, items).await {
                    error(kind);
                    if wait_or_stop(backoff.step(hint), &mut stop).await {
                        return;
                    }
                    continue 'resume;
                }
            }
            lag(last_change);
            if token.is_some() && token != checkpoint {
                let t = token.unwrap_or_default();
                match leases.save_checkpoint(index, &t).await {
                    Ok(true) => checkpoint = Some(t),
                    Ok(false) => {
                        tracing::warn!(container = %label, range = index, "lease lost; checkpoint not written");
                        return;
                    }
                    Err(e) => {
                        error("redis");
                        tracing::warn!(container = %label, range = index, error = %e, "checkpoint not written");
                        if wait_or_stop(backoff.step(None), &mut stop).await {
                            return;
                        }
                        continue 'resume;
                    }
                }
            }
            backoff.reset();
            if empty && wait_or_stop(f.poll_interval(), &mut stop).await {
                return;
            }
        }
    }
}

fn mode(m: FeedMode) -> ChangeFeedMode {
    match m {
        FeedMode::LatestVersion => ChangeFeedMode::LatestVersion,
        FeedMode::AllVersionsAndDeletes => ChangeFeedMode::AllVersionsAndDeletes,
    }
}

fn start_from(s: &StartFrom) -> ChangeFeedStartFrom {
    match s {
        StartFrom::Beginning => ChangeFeedStartFrom::Beginning,
        StartFrom::Now => ChangeFeedStartFrom::Now,
        StartFrom::PointInTime(t) => ChangeFeedStartFrom::PointInTime(*t),
    }
}

fn retry_after(e: &azure_data_cosmos::CosmosError) -> Option<Duration> {
    e.response().and_then(|r| r.headers().retry_after_ms).map(Duration::from_millis)
}

/// The change as the mapping sees it. A delete in all-versions-and-deletes mode may carry no `current`: its
/// previous image, or the id and partition key from the metadata, stand in.
fn to_change(item: &ChangeFeedItem<Value>, mapping: &ContainerMapping) -> Change {
    let operation = item.operation_type().and_then(|o| match o {
        ChangeFeedOperationType::Create => Some(Operation::Create),
        ChangeFeedOperationType::Replace => Some(Operation::Replace),
        ChangeFeedOperationType::Delete => Some(Operation::Delete),
        _ => None,
    });
    let meta = item.metadata();
    let current = item.current().cloned().or_else(|| item.previous().cloned()).unwrap_or_else(|| {
        let mut doc = serde_json::Map::new();
        if let Some(id) = meta.and_then(|m| m.id()) {
            doc.insert("id".into(), json!(id));
        }
        if let Some(pk) = meta.and_then(|m| m.partition_key()) {
            let v = pk.as_array().and_then(|a| a.first()).unwrap_or(pk);
            doc.insert(mapping.tenant_field.clone(), v.clone());
        }
        Value::Object(doc)
    });
    let previous = if item.current().is_some() { item.previous().cloned() } else { None };
    Change { current, previous, operation, lsn: meta.and_then(|m| m.lsn()).map(|l| l.value()) }
}

/// Publishes one page. `Ok` when every change is either acknowledged by Kafka, a known duplicate, filtered by the
/// tenant's config, or stored on the dead-letter topic; otherwise the page is retried from the checkpoint.
async fn publish(shared: &Shared, mapping: &ContainerMapping, items: Vec<ChangeFeedItem<Value>>) -> Result<(), Retry> {
    let label = mapping.container.clone();
    let count = |result: &'static str, n: u64| {
        metrics::counter!(m::CHANGEFEED_DOCUMENTS_TOTAL, "container" => label.clone(), "result" => result).increment(n);
    };
    let dead = shared.pipeline.dead_letters();
    let mut events = Vec::with_capacity(items.len());
    // Which item each event came from, to dead-letter it if the pipeline refuses it.
    let mut from = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let change = to_change(item, mapping);
        match map_change(mapping, &change) {
            Ok(v) => {
                events.push(v);
                from.push(i);
            }
            Err(u) => {
                let original = json!({
                    "database": mapping.database,
                    "container": mapping.container,
                    "document": change.current,
                })
                .to_string();
                dead.send_acked(u.code(), None, &[], &original).await.map_err(|_| Retry(None, "deadletter"))?;
                count("deadlettered", 1);
            }
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    let scope = Scope::Admin;
    let ctx = RequestContext {
        scope: &scope,
        started: Instant::now(),
        received_at: time::OffsetDateTime::now_utc(),
        correlation: None,
        idempotency_key: None,
    };
    let results = shared.pipeline.ingest_many(events.into_iter().map(Document::Value).collect(), &ctx).await;
    let mut retry = None;
    for (r, i) in results.into_iter().zip(from) {
        match r {
            Ok(Outcome::Accepted(a)) => count(if a.duplicate { "duplicate" } else { "published" }, 1),
            Ok(Outcome::Filtered { .. }) => count("filtered", 1),
            // Retryable: the broker, the quota or a concurrent write of the same id; the page is read again.
            Err(IngestError::Unavailable(_)) => retry = Some(Retry(None, "broker")),
            Err(IngestError::QuotaExceeded { retry_after, .. }) => retry = Some(Retry(Some(retry_after), "quota")),
            Err(IngestError::InFlight) => retry = Some(Retry(None, "in_flight")),
            // Dead-lettered by the pipeline itself (a registered tenant's invalid or refused event).
            Err(
                IngestError::Invalid { .. } | IngestError::TenantDisabled { .. } | IngestError::SourceNotAllowed { .. },
            ) => count("deadlettered", 1),
            // Not written anywhere by the pipeline: the change feed keeps them on the dead-letter topic.
            Err(
                e @ (IngestError::UnknownTenant { .. } | IngestError::Forbidden { .. } | IngestError::Undeliverable(_)),
            ) => {
                // Rare: map the item again rather than keep a copy of every event of every page.
                let original = map_change(mapping, &to_change(&items[i], mapping)).unwrap_or_default();
                let tenant = original.get("tenantId").and_then(Value::as_str);
                dead.send_acked(e.code(), tenant, &[], &original.to_string())
                    .await
                    .map_err(|_| Retry(None, "deadletter"))?;
                count("deadlettered", 1);
            }
        }
    }
    retry.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> ContainerMapping {
        serde_json::from_value(json!({"database": "grc", "container": "risks", "entityType": "risk",
            "created": "RISK_CREATED", "updated": "RISK_UPDATED", "deleted": "RISK_DELETED"}))
        .expect("mapping")
    }

    fn item(v: Value) -> ChangeFeedItem<Value> {
        serde_json::from_value(v).expect("change feed item")
    }

    #[test]
    fn a_delete_without_images_keeps_its_id_and_tenant_from_the_metadata() {
        let it =
            item(json!({"metadata": {"operationType": "delete", "lsn": 42, "id": "r1", "partitionKey": ["acme"]}}));
        let change = to_change(&it, &mapping());
        assert_eq!(change.operation, Some(Operation::Delete));
        assert_eq!(change.lsn, Some(42));
        assert_eq!(change.current, json!({"id": "r1", "tenantId": "acme"}));
        let event = map_change(&mapping(), &change).expect("mapped");
        assert_eq!(event["eventType"], "RISK_DELETED");
        assert_eq!(event["tenantId"], "acme");
        assert_eq!(event["action"], "deleted");
    }

    #[test]
    fn a_delete_with_a_previous_image_uses_it() {
        let it = item(json!({"previous": {"id": "r1", "tenantId": "acme", "_etag": "e1", "title": "t"},
            "metadata": {"operationType": "delete", "lsn": 7}}));
        let change = to_change(&it, &mapping());
        assert_eq!(change.current["title"], "t");
        assert_eq!(change.previous, None);
        assert_eq!(map_change(&mapping(), &change).expect("mapped")["eventType"], "RISK_DELETED");
    }

    #[test]
    fn a_replace_carries_both_images_and_latest_version_items_carry_no_operation() {
        let it = item(json!({"current": {"id": "r1", "tenantId": "acme", "status": "closed"},
            "previous": {"id": "r1", "tenantId": "acme", "status": "open"},
            "metadata": {"operationType": "replace", "lsn": 9}}));
        let change = to_change(&it, &mapping());
        assert_eq!(change.operation, Some(Operation::Replace));
        assert_eq!(change.previous.as_ref().map(|p| p["status"].clone()), Some(json!("open")));
        let latest = item(json!({"current": {"id": "r2", "tenantId": "acme"}, "metadata": {"crts": 5}}));
        assert_eq!(to_change(&latest, &mapping()).operation, None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_honours_a_longer_retry_after() {
        let mut b = Backoff::new((Duration::from_millis(100), Duration::from_millis(400)));
        let waits: Vec<Duration> = (0..5).map(|_| b.step(None)).collect();
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
        assert!(waits[4] >= Duration::from_millis(200), "capped at 400 with jitter down to half: {waits:?}");
        assert_eq!(b.step(Some(Duration::from_secs(5))), Duration::from_secs(5));
        b.reset();
        assert!(b.step(None) <= Duration::from_millis(100));
    }
}
