//! The Redis Streams sink: the real-time window of each tenant, one stream per tenant
//! (`evstream:{tenant}:events`). Writes happen after the Kafka ack on a background task that drains a bounded
//! queue. Each stream entry is a batch: up to [`MAX_ENTRY_EVENTS`] of a tenant's events from one write, as a JSON
//! array (field `events`) with their count (field `n`), the way a Kafka record batch carries records. One `XADD`
//! per batch instead of per event is what makes the window cheap: Redis spends about the same on an entry of one
//! event as on one of sixty-four. Beside the stream, `evstream:{tenant}:events:sizes` lists each entry's size,
//! oldest first, and `evstream:{tenant}:events:count` the events the window holds. A write batch is one
//! transaction (`MULTI`/`EXEC`): each `XADD` with its `RPUSH` and `INCRBY`, and for a stream that has had an
//! entry's worth of events or a second since its last trim, a small Lua script ([`TRIM`]) that trims by age
//! (`retentionDays`) and by count (`maxLen` events). So the window of a single writer holds at least `maxLen` of the
//! events within its retention, fewer than `maxLen + 2 * MAX_ENTRY_EVENTS`, and fewer than `maxLen +
//! MAX_ENTRY_EVENTS` from a second after its last write.
//! Reads (`XREVRANGE`) and live tails (`XREAD BLOCK`) unpack the entries, newest or oldest first; they also read
//! entries of one event (field `event`), the layout before batches.

use crate::metric_names as m;
use crate::redis_conn::RedisConn;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::AsyncCommands;
use schemas::{EventType, TenantId};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events one pipeline carries, about: it takes queued runs until it holds this many, so it may hold up to one
/// run (one request's events) more.
const MAX_PIPELINE: usize = 1024;

/// A stream written to is trimmed at the latest this long after, or once [`MAX_ENTRY_EVENTS`] more events are in.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Most events in one stream entry. It bounds how far the window may exceed `maxLen`, and how much a read of the
/// newest event parses.
pub const MAX_ENTRY_EVENTS: usize = 64;

/// Trims a tenant's window, run once per stream and write batch after its entries are added. KEYS: the stream,
/// the sizes of its entries (a list, oldest first), and the events it holds. ARGV: `maxLen`, the oldest entry time
/// kept by age (ms). First by age, exactly; the list gives back the sizes of the entries that went. Entries
/// without a size (one event each, from before batches) get a size of one, pushed a thousand at a time. A count
/// that is missing, or smaller than the number of entries, is recomputed from the sizes. Then by count: the oldest
/// entries go while the rest hold `maxLen` events or more; the newest entry always stays. Its arguments are small
/// on purpose: Redis copies every script argument into Lua, and an event batch would cost more there than the
/// `XADD` itself.
const TRIM: &str = r"
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
local len = redis.call('XLEN', KEYS[1])
local sizes = redis.call('LLEN', KEYS[2])
local total = tonumber(redis.call('GET', KEYS[3]))
local repaired = false
while sizes > len do
  local n = tonumber(redis.call('LPOP', KEYS[2])) or 1
  if total then total = total - n end
  sizes = sizes - 1
end
if sizes < len then
  local ones = {}
  for i = 1, 1000 do ones[i] = 1 end
  while sizes < len do
    local k = math.min(len - sizes, 1000)
    redis.call('LPUSH', KEYS[2], unpack(ones, 1, k))
    sizes = sizes + k
  end
  repaired = true
end
if repaired or not total or total < len then
  total = 0
  for _, n in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do total = total + (tonumber(n) or 1) end
end
local max_len, drop = tonumber(ARGV[1]), 0
while drop < len - 1 do
  local n = tonumber(redis.call('LINDEX', KEYS[2], 0)) or 1
  if total - n < max_len then break end
  redis.call('LPOP', KEYS[2])
  total, drop = total - n, drop + 1
end
if drop > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', len - drop) end
redis.call('SET', KEYS[3], total)
return total
";

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

/// A run of one tenant's events on their way to its window, in order (a request's, usually): the envelopes as
/// stored in Kafka, and the window's bounds. (Not a stream entry: the writer packs a run into entries of up to
/// [`MAX_ENTRY_EVENTS`].)
pub struct StreamEntry {
    pub tenant: TenantId,
    pub events: Vec<bytes::Bytes>,
    pub max_len: u64,
    pub retention_ms: u64,
}

#[derive(Clone)]
pub struct RedisStreamSink {
    tx: mpsc::UnboundedSender<StreamEntry>,
    /// Events queued and not yet taken by the writer, at most `capacity`.
    queued: Arc<AtomicUsize>,
    capacity: usize,
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
    /// The event when it passes the filter. A type or source filter reads just those two fields (the rest
    /// skipped), so that events filtered out are not parsed whole.
    fn pass(&self, text: &str) -> Option<serde_json::Value> {
        #[derive(serde::Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "eventType", borrow)]
            event_type: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            source: Option<std::borrow::Cow<'a, str>>,
        }
        if self.event_type.is_some() || self.source.is_some() {
            let k: Kind<'_> = serde_json::from_str(text).ok()?;
            let type_ok = self.event_type.is_none_or(|t| k.event_type.as_deref() == Some(t.as_str()));
            let source_ok = self.source.as_deref().is_none_or(|s| k.source.as_deref() == Some(s));
            if !(type_ok && source_ok) {
                return None;
            }
        }
        serde_json::from_str(text).ok()
    }
}

/// Calls `f` with the text of each event of a stream entry, oldest first (`rev`: newest first), until it returns
/// `false`. An entry is a batch (`events`) or, from before batches, one event (`event`); anything else holds none.
fn each_event(id: &StreamId, rev: bool, mut f: impl FnMut(&str) -> bool) {
    // Borrowed from the reply, not copied out of it: a batch entry is tens of kilobytes.
    let field = |name: &str| match id.map.get(name) {
        Some(redis::Value::BulkString(b)) => Some(b.as_slice()),
        _ => None,
    };
    if let Some(bytes) = field("events") {
        let Ok(events) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(bytes) else { return };
        let n = events.len();
        for i in 0..n {
            if !f(events[if rev { n - 1 - i } else { i }].get()) {
                return;
            }
        }
    } else if let Some(bytes) = field("event") {
        if let Ok(t) = std::str::from_utf8(bytes) {
            f(t);
        }
    }
}

pub fn stream_key(tenant: &TenantId) -> String {
    format!("evstream:{tenant}:events")
}

/// How many events a tenant's window holds, and the size of each of its entries (kept by the writer).
fn count_keys(tenant: &TenantId) -> (String, String) {
    (format!("evstream:{tenant}:events:count"), format!("evstream:{tenant}:events:sizes"))
}

impl RedisStreamSinkConfig {
    pub fn build(&self, redis: RedisConn) -> RedisStreamSink {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(writer(redis.clone(), rx, queued.clone()));
        RedisStreamSink { tx, queued, capacity: self.queue_capacity, redis }
    }
}

impl RedisStreamSink {
    /// Queues a run of events for their tenant's stream. Never waits: as many of its events as the queue has room
    /// for go in, in order, and the rest are dropped and counted. An event without text (one that could not be
    /// serialised) is left out: it would break its entry's array.
    pub fn enqueue(&self, mut entry: StreamEntry) {
        entry.events.retain(|j| !j.is_empty());
        let n = entry.events.len();
        let mut room = 0;
        // Only what is taken is added, so a run that does not fit never crowds out one that does.
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
            room = n.min(self.capacity.saturating_sub(q));
            Some(q + room)
        });
        entry.events.truncate(room);
        let mut dropped = n - room;
        if room > 0 && self.tx.send(entry).is_err() {
            self.queued.fetch_sub(room, Ordering::AcqRel);
            dropped = n;
        }
        if dropped > 0 {
            metrics::counter!(m::REDIS_STREAM_WRITES_TOTAL, "result" => "dropped").increment(dropped as u64);
        }
    }

    pub fn connection(&self) -> RedisConn {
        self.redis.clone()
    }

    pub async fn healthcheck(&self) -> Result<(), RedisStreamSinkError> {
        Ok(self.redis.ping().await?)
    }

    /// Newest first, up to `limit` events that pass `filter`. Looks at most `limit * 20` events (at least 1,000)
    /// so that a rare filter cannot turn one request into a full scan.
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
        // Entries hold up to `MAX_ENTRY_EVENTS` events, often fewer: a page of `limit / 16` entries holds `limit`
        // events when its entries hold 16 on average.
        let page = limit.div_ceil(16).clamp(4, 100);
        let mut budget = limit.saturating_mul(20).max(1000);
        loop {
            let reply: Result<StreamRangeReply, _> = conn.xrevrange_count(&key, &end, &start, page).await;
            self.redis.observe(&reply);
            let reply = reply?;
            let n = reply.ids.len();
            for id in &reply.ids {
                // An entry costs the budget too, so that entries without events cannot make a scan unbounded.
                budget = budget.saturating_sub(1);
                each_event(id, true, |text| {
                    budget = budget.saturating_sub(1);
                    if let Some(v) = filter.pass(text) {
                        out.push(v);
                    }
                    out.len() < limit && budget > 0
                });
                if out.len() >= limit || budget == 0 {
                    return Ok(out);
                }
            }
            match reply.ids.last() {
                Some(last) if n == page => end = format!("({}", last.id),
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
                        let mut passed = Vec::new();
                        each_event(&id, false, |text| {
                            passed.extend(filter.pass(text));
                            true
                        });
                        for v in passed {
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

/// An error that the same commands would meet again: Redis answered, and said no (`ERR`, as a script error is,
/// `WRONGTYPE`, `OOM`, `EXECABORT`). Everything else (I/O, timeouts, `LOADING`, `BUSY`, `MISCONF`, `READONLY`)
/// passes, and the batch is sent again.
fn refused(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::ResponseError || matches!(e.code(), Some("WRONGTYPE" | "OOM" | "EXECABORT"))
}

/// Events as one JSON array, written straight into the command: their texts joined by commas.
struct JsonArray<'a>(&'a [&'a [u8]]);

impl redis::ToRedisArgs for JsonArray<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        w.write_all(b"[").ok();
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                w.write_all(b",").ok();
            }
            w.write_all(e).ok();
        }
        w.write_all(b"]").ok();
    }
}

/// A stream written since its last trim: the events written since then, when that began, and its bounds as of the
/// newest of them.
struct Untrimmed {
    events: usize,
    since: Instant,
    max_len: u64,
    retention_ms: u64,
}

/// Drains the queue in batches; one transaction per batch, with an entry per [`MAX_ENTRY_EVENTS`] events of a
/// tenant. A batch that fails because Redis is away, slow or loading is retried, with backoff, until Redis takes
/// it: while Redis is away the bounded queue fills (the window catches up when Redis is back), and beyond the
/// queue's capacity new events are dropped and counted (`result="dropped"`): that is the gap. A batch Redis
/// refuses (see [`refused`]) is dropped and counted at once: sent again, it would meet the same answer.
async fn writer(redis: RedisConn, mut rx: mpsc::UnboundedReceiver<StreamEntry>, queued: Arc<AtomicUsize>) {
    let mut batch: Vec<StreamEntry> = Vec::new();
    // Streams written since their last trim.
    let mut untrimmed: HashMap<TenantId, Untrimmed> = HashMap::new();
    loop {
        // Idle for `TRIM_EVERY`: nothing to write, but whatever waits for its trim is trimmed now.
        let idle = match tokio::time::timeout(TRIM_EVERY, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(e)) => {
                batch.push(e);
                false
            }
            Err(_) if untrimmed.is_empty() => continue,
            Err(_) => true,
        };
        // And whatever else is queued already, up to `MAX_PIPELINE` events (runs are not split).
        let mut taken: usize = batch.iter().map(|e| e.events.len()).sum();
        while taken < MAX_PIPELINE {
            match rx.try_recv() {
                Ok(e) => {
                    taken += e.events.len();
                    batch.push(e);
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(taken, Ordering::AcqRel);
        let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        // Each tenant's events in order, with its bounds (the newest run's config counts).
        let mut streams: Vec<(&TenantId, Vec<&[u8]>, u64, u64)> = Vec::new();
        let mut index: HashMap<&TenantId, usize> = HashMap::new();
        for e in &batch {
            let at = *index.entry(&e.tenant).or_insert_with(|| {
                streams.push((&e.tenant, Vec::new(), 0, 0));
                streams.len() - 1
            });
            let s = &mut streams[at];
            s.1.extend(e.events.iter().map(|j| &j[..]));
            (s.2, s.3) = (e.max_len, e.retention_ms);
        }
        // One transaction: no other writer's commands come between an entry and its size, and a batch cut off by
        // a lost connection is not applied at all, so sending it again does not repeat it.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (tenant, events, max_len, retention_ms) in &streams {
            let key = stream_key(tenant);
            let (count, sizes) = count_keys(tenant);
            for chunk in events.chunks(MAX_ENTRY_EVENTS) {
                let len = chunk.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
                let mut c = redis::Cmd::with_capacity(7, key.len() + len + 32);
                c.arg("XADD").arg(&key).arg("*").arg("n").arg(chunk.len()).arg("events");
                c.arg(JsonArray(chunk));
                pipe.add_command(c).ignore();
                pipe.cmd("RPUSH").arg(&sizes).arg(chunk.len()).ignore();
                pipe.cmd("INCRBY").arg(&count).arg(chunk.len()).ignore();
            }
            let u = untrimmed.entry((*tenant).clone()).or_insert_with(|| Untrimmed {
                events: 0,
                since: Instant::now(),
                max_len: 0,
                retention_ms: 0,
            });
            (u.events, u.max_len, u.retention_ms) = (u.events + events.len(), *max_len, *retention_ms);
        }
        // A stream is trimmed once an entry's worth of events or `TRIM_EVERY` has passed since its last trim (the
        // script costs Redis about as much as ten small entries, so not after every write of a few events).
        let due: Vec<TenantId> = untrimmed
            .iter()
            .filter(|(_, u)| idle || u.events >= MAX_ENTRY_EVENTS || u.since.elapsed() >= TRIM_EVERY)
            .map(|(t, _)| t.clone())
            .collect();
        for t in &due {
            let Untrimmed { max_len, retention_ms, .. } = untrimmed[t];
            let (count, sizes) = count_keys(t);
            pipe.cmd("EVAL").arg(TRIM).arg(3).arg(stream_key(t)).arg(&sizes).arg(&count);
            pipe.arg(max_len).arg(now_ms.saturating_sub(retention_ms)).ignore();
        }
        let mut delay = Duration::from_millis(100);
        let written = loop {
            match redis.query::<()>(&pipe).await {
                Ok(()) => break true,
                // Redis refused it (a key of another type, out of memory, a script error): it is left out of the
                // window, counted; Kafka has it. A runtime error inside the transaction leaves the other
                // commands applied, so after a refusal the counter may count a few written events as dropped.
                Err(e) if refused(&e) => {
                    metrics::counter!(m::REDIS_STREAM_WRITES_TOTAL, "result" => "dropped").increment(taken as u64);
                    tracing::warn!(error = %e, events = taken, "redis refused a window write; left out of the window");
                    break false;
                }
                // Redis away, slow or loading: the same batch again, until it is back.
                Err(e) => {
                    metrics::counter!(m::REDIS_STREAM_WRITES_TOTAL, "result" => "error").increment(taken as u64);
                    tracing::debug!(error = %e, "redis stream write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        if written {
            metrics::counter!(m::REDIS_STREAM_WRITES_TOTAL, "result" => "ok").increment(taken as u64);
        }
        // Trimmed, or refused: either way not asked again until the stream is due again, so that one stream Redis
        // refuses (a key of another type) does not fail every later batch with it.
        for t in &due {
            untrimmed.remove(t);
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tenant: &TenantId, texts: &[&str]) -> StreamEntry {
        StreamEntry {
            tenant: tenant.clone(),
            events: texts.iter().map(|t| bytes::Bytes::copy_from_slice(t.as_bytes())).collect(),
            max_len: 100,
            retention_ms: 1_000,
        }
    }

    /// The queue's bound counts events: a run takes what room is left, in order, and the rest is dropped; what the
    /// writer takes makes room again. (No writer here: the test holds the queue's other end.)
    #[tokio::test]
    async fn the_queue_bound_counts_events() {
        let redis = RedisConn::connect("redis://127.0.0.1:1").await.expect("a valid URL");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = RedisStreamSink { tx, queued: Arc::new(AtomicUsize::new(0)), capacity: 5, redis };
        let t = TenantId::new("acme").expect("valid tenant");
        sink.enqueue(run(&t, &["1", "2", "3"]));
        sink.enqueue(run(&t, &["4", "5", "6", "7"]));
        sink.enqueue(run(&t, &["8"]));
        let texts =
            |e: &StreamEntry| e.events.iter().map(|j| String::from_utf8_lossy(j).into_owned()).collect::<Vec<_>>();
        assert_eq!(texts(&rx.try_recv().expect("first run")), ["1", "2", "3"]);
        assert_eq!(texts(&rx.try_recv().expect("what fitted of the second")), ["4", "5"]);
        assert!(rx.try_recv().is_err(), "a full queue takes nothing");
        assert_eq!(sink.queued.load(Ordering::Acquire), 5);
        // The writer took five: there is room for five again.
        sink.queued.fetch_sub(5, Ordering::AcqRel);
        sink.enqueue(run(&t, &["9"]));
        assert_eq!(texts(&rx.try_recv().expect("room again")), ["9"]);
        // An event without text would break its entry's array: it is left out, and takes no room.
        sink.enqueue(run(&t, &["", "10"]));
        assert_eq!(texts(&rx.try_recv().expect("the rest of the run")), ["10"]);
        assert_eq!(sink.queued.load(Ordering::Acquire), 2);
    }
}
