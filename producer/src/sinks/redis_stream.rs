//! The Redis Streams sink: the real-time window of each tenant, one stream per tenant
//! (`evstream:{tenant}:events`). Writes happen after the Kafka ack on a background task that drains a bounded
//! queue and pipelines `XADD` for a whole batch in one round trip, then trims each stream once by count
//! (`MAXLEN ~`, from the tenant's config) and by age (`MINID ~`, from its `retentionDays`). Reads (`XREVRANGE`)
//! and live tails (`XREAD BLOCK`) serve the HTTP API.

use crate::metric_names as m;
use crate::redis_conn::RedisConn;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::AsyncCommands;
use schemas::{EventType, TenantId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Most entries one pipeline carries.
const MAX_PIPELINE: usize = 512;

#[derive(Debug, Clone)]
pub struct RedisStreamSinkConfig {
    pub url: String,
    /// Bound on events waiting to be written; beyond it new ones are dropped and counted (Kafka has them).
    pub queue_capacity: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisStreamSinkError {
    #[error("redis unavailable")]
    Unavailable(#[from] redis::RedisError),
}

/// One event on its way to a tenant stream: an entry with one field, `event`, the envelope as stored in Kafka.
pub struct StreamEntry {
    pub tenant: TenantId,
    pub json: Arc<[u8]>,
    pub max_len: u64,
    pub retention_ms: u64,
}

#[derive(Clone)]
pub struct RedisStreamSink {
    tx: mpsc::Sender<StreamEntry>,
    redis: RedisConn,
}

/// A filter on reads: every given field must match.
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    pub event_type: Option<EventType>,
    pub source: Option<String>,
    /// Only entries at or after this time (milliseconds since the epoch).
    pub since_ms: Option<u64>,
}

impl ReadFilter {
    /// The event of a stream entry when it passes the filter. A type or source filter reads just those two fields
    /// (the rest skipped), so that entries filtered out are not parsed whole.
    fn pass(&self, id: &StreamId) -> Option<serde_json::Value> {
        #[derive(serde::Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "eventType", borrow)]
            event_type: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            source: Option<std::borrow::Cow<'a, str>>,
        }
        let bytes = id.get::<Vec<u8>>("event")?;
        if self.event_type.is_some() || self.source.is_some() {
            let k: Kind<'_> = serde_json::from_slice(&bytes).ok()?;
            let type_ok = self.event_type.is_none_or(|t| k.event_type.as_deref() == Some(t.as_str()));
            let source_ok = self.source.as_deref().is_none_or(|s| k.source.as_deref() == Some(s));
            if !(type_ok && source_ok) {
                return None;
            }
        }
        serde_json::from_slice(&bytes).ok()
    }
}

pub fn stream_key(tenant: &TenantId) -> String {
    format!("evstream:{tenant}:events")
}

impl RedisStreamSinkConfig {
    pub fn build(&self, redis: RedisConn) -> RedisStreamSink {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        tokio::spawn(writer(redis.clone(), rx));
        RedisStreamSink { tx, redis }
    }
}

impl RedisStreamSink {
    /// Queues an event for its tenant stream. Never waits: a full queue drops the entry and counts it.
    pub fn enqueue(&self, entry: StreamEntry) {
        if self.tx.try_send(entry).is_err() {
            metrics::counter!(m::REDIS_STREAM_WRITES_TOTAL, "result" => "dropped").increment(1);
        }
    }

    pub fn connection(&self) -> RedisConn {
        self.redis.clone()
    }

    pub async fn healthcheck(&self) -> Result<(), RedisStreamSinkError> {
        Ok(self.redis.ping().await?)
    }

    /// Newest first, up to `limit` entries that pass `filter`. Scans at most `limit * 20` entries so that a rare
    /// filter cannot turn one request into a full scan.
    pub async fn read(
        &self,
        tenant: &TenantId,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<Vec<serde_json::Value>, RedisStreamSinkError> {
        let key = stream_key(tenant);
        let mut conn = self.redis.get()?;
        let mut out = Vec::with_capacity(limit.min(1000));
        let mut end = "+".to_string();
        let start = filter.since_ms.map(|ms| ms.to_string()).unwrap_or_else(|| "-".into());
        let page = limit.clamp(10, 1000);
        let mut budget = limit.saturating_mul(20).max(1000);
        loop {
            let reply: Result<StreamRangeReply, _> = conn.xrevrange_count(&key, &end, &start, page).await;
            self.redis.observe(&reply);
            let reply = reply?;
            let n = reply.ids.len();
            for v in reply.ids.iter().filter_map(|id| filter.pass(id)) {
                out.push(v);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            budget = budget.saturating_sub(n);
            match reply.ids.last() {
                Some(last) if n == page && budget > 0 => end = format!("({}", last.id),
                _ => return Ok(out),
            }
        }
    }

    /// A live tail: a dedicated connection (a blocking read would stall a shared one) that yields entries added
    /// after the call, in order, that pass `filter`.
    pub async fn tail(
        &self,
        tenant: &TenantId,
        filter: ReadFilter,
    ) -> Result<mpsc::Receiver<serde_json::Value>, RedisStreamSinkError> {
        self.redis.get()?;
        let mut conn = self.redis.client().get_multiplexed_async_connection().await?;
        let key = stream_key(tenant);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            // `since` replays from that time; otherwise the tail starts with what arrives next.
            let mut last =
                filter.since_ms.map_or_else(|| "$".to_string(), |ms| format!("{}-{}", ms.saturating_sub(1), u64::MAX));
            let opts = redis::streams::StreamReadOptions::default().block(5_000).count(100);
            loop {
                let reply: Result<Option<StreamReadReply>, _> = conn.xread_options(&[&key], &[&last], &opts).await;
                let reply = match reply {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "tail read failed");
                        return;
                    }
                };
                for k in reply.keys {
                    for id in k.ids {
                        last = id.id.clone();
                        if let Some(v) = filter.pass(&id) {
                            if tx.send(v).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Drains the queue in batches; one pipeline per batch. A batch that fails is retried, with backoff, until
/// Redis takes it: while Redis is away the bounded queue fills (the window catches up when Redis is back), and
/// beyond the queue's capacity new entries are dropped and counted (`result="dropped"`): that is the gap.
async fn writer(redis: RedisConn, mut rx: mpsc::Receiver<StreamEntry>) {
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    while rx.recv_many(&mut batch, MAX_PIPELINE).await > 0 {
        let mut pipe = redis::Pipeline::with_capacity(batch.len() + 2);
        let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        // Each tenant's stream key once per batch, with its bounds (the newest entry's config counts). A batch
        // holds runs of one tenant's events (a request's), so the map is asked only when the tenant changes.
        let mut streams: Vec<(String, u64, u64)> = Vec::new();
        let mut index: HashMap<&TenantId, usize> = HashMap::new();
        let mut last: Option<(&TenantId, usize)> = None;
        for e in &batch {
            let at = match last {
                Some((t, at)) if t == &e.tenant => at,
                _ => *index.entry(&e.tenant).or_insert_with(|| {
                    streams.push((stream_key(&e.tenant), 0, 0));
                    streams.len() - 1
                }),
            };
            last = Some((&e.tenant, at));
            let s = &mut streams[at];
            (s.1, s.2) = (e.max_len, e.retention_ms);
            // Sized up front: one allocation for the command's arguments.
            let mut c = redis::Cmd::with_capacity(5, s.0.len() + e.json.len() + 16);
            c.arg("XADD").arg(&s.0).arg("*").arg("event").arg(&*e.json);
            pipe.add_command(c).ignore();
        }
        // Trimmed once per stream and batch, by count and by age, in the same pipeline: a stream is never more
        // than one batch over its bound, and only until the end of this round trip.
        for (key, max_len, retention_ms) in &streams {
            pipe.cmd("XTRIM").arg(key).arg("MAXLEN").arg("~").arg(*max_len).ignore();
            pipe.cmd("XTRIM").arg(key).arg("MINID").arg("~").arg(now_ms.saturating_sub(*retention_ms)).ignore();
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match redis.query::<()>(&pipe).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!(m::REDIS_STREAM_WRITES_TOTAL, "result" => "error").increment(batch.len() as u64);
                    tracing::debug!(error = %e, "redis stream write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        metrics::counter!(m::REDIS_STREAM_WRITES_TOTAL, "result" => "ok").increment(batch.len() as u64);
        batch.clear();
    }
}
