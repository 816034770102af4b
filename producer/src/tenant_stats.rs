//! Per-tenant statistics shared by every instance: events/s over 1 and 5 minutes, totals, rejects by reason,
//! filtered events, ingest latency percentiles, top event types and sources.
//!
//! Each instance counts in memory and flushes once a second into Redis hashes, one per tenant per 10-second
//! bucket (`evstream:{tenant}:stats:{bucket}`, expiring after 10 minutes) plus a running total. Reads sum the
//! buckets, so the figures cover all instances.

use crate::redis_conn::RedisConn;
use schemas::TenantId;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUCKET_SECS: u64 = 10;
const BUCKET_TTL_SECS: i64 = 600;
/// Upper bounds (ms) of the latency histogram buckets; the last is open.
const LATENCY_BOUNDS_MS: &[f64] =
    &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, f64::INFINITY];

/// Counts of one tenant since the last flush. Keys are static strings (event types, source labels, reason codes),
/// so counting allocates nothing once a tenant has been seen.
#[derive(Default)]
struct Acc {
    accepted: i64,
    rejected: HashMap<&'static str, i64>,
    filtered: HashMap<&'static str, i64>,
    types: HashMap<&'static str, i64>,
    sources: HashMap<&'static str, i64>,
    latency: [i64; LATENCY_BOUNDS_MS.len()],
}

impl Acc {
    fn merge(&mut self, o: Acc) {
        self.accepted += o.accepted;
        for (dst, src) in [
            (&mut self.rejected, o.rejected),
            (&mut self.filtered, o.filtered),
            (&mut self.types, o.types),
            (&mut self.sources, o.sources),
        ] {
            for (k, n) in src {
                *dst.entry(k).or_default() += n;
            }
        }
        for (d, s) in self.latency.iter_mut().zip(o.latency) {
            *d += s;
        }
    }

    /// (field, count) pairs as stored in Redis, and whether the field also goes into the running total.
    fn fields(&self) -> Vec<(String, i64, bool)> {
        let mut out = Vec::new();
        let rejected: i64 = self.rejected.values().sum();
        let filtered: i64 = self.filtered.values().sum();
        for (f, n) in [("accepted", self.accepted), ("rejected", rejected), ("filtered", filtered)] {
            if n > 0 {
                out.push((f.to_string(), n, true));
            }
        }
        for (prefix, m) in [
            ("rejected:", &self.rejected),
            ("filtered:", &self.filtered),
            ("type:", &self.types),
            ("source:", &self.sources),
        ] {
            for (k, n) in m {
                out.push((format!("{prefix}{k}"), *n, true));
            }
        }
        for (i, n) in self.latency.iter().enumerate().filter(|(_, n)| **n > 0) {
            out.push((format!("lat:{i}"), *n, false));
        }
        out
    }
}

#[derive(Clone)]
pub struct TenantStats {
    pending: Arc<Mutex<HashMap<TenantId, Acc>>>,
    redis: RedisConn,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantMetrics {
    pub tenant_id: String,
    pub events_per_second_1m: f64,
    pub events_per_second_5m: f64,
    pub total_accepted: i64,
    pub total_rejected: i64,
    pub total_filtered: i64,
    pub rejected_by_reason: HashMap<String, i64>,
    pub filtered_by_reason: HashMap<String, i64>,
    /// Upper bound of the latency bucket holding the percentile, over the last 5 minutes (null: no data).
    pub ingest_latency_ms_p50: Option<f64>,
    pub ingest_latency_ms_p99: Option<f64>,
    pub top_event_types: Vec<Count>,
    pub top_sources: Vec<Count>,
    pub window_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct Count {
    pub name: String,
    pub count: i64,
}

fn bucket_now() -> u64 {
    (time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64) / BUCKET_SECS
}

fn key(t: &TenantId, bucket: &str) -> String {
    format!("evstream:{t}:stats:{bucket}")
}

impl TenantStats {
    /// Starts the once-a-second flusher.
    pub fn start(redis: RedisConn) -> Self {
        let s = Self { pending: Default::default(), redis };
        let f = s.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                f.flush().await;
            }
        });
        s
    }

    fn with(&self, t: &TenantId, f: impl FnOnce(&mut Acc)) {
        if let Ok(mut p) = self.pending.lock() {
            match p.get_mut(t) {
                Some(acc) => f(acc),
                None => f(p.entry(t.clone()).or_default()),
            }
        }
    }

    /// `n` events of one type and source, accepted after `latency`.
    pub fn accepted(&self, t: &TenantId, event_type: &'static str, source: &'static str, latency: Duration, n: u64) {
        let ms = latency.as_secs_f64() * 1000.0;
        let b = LATENCY_BOUNDS_MS.iter().position(|x| ms <= *x).unwrap_or(LATENCY_BOUNDS_MS.len() - 1);
        let n = n as i64;
        self.with(t, |a| {
            a.accepted += n;
            *a.types.entry(event_type).or_default() += n;
            *a.sources.entry(source).or_default() += n;
            a.latency[b] += n;
        });
    }

    pub fn rejected(&self, t: &TenantId, reason: &'static str) {
        self.with(t, |a| *a.rejected.entry(reason).or_default() += 1);
    }

    pub fn filtered(&self, t: &TenantId, reason: &'static str) {
        self.with(t, |a| *a.filtered.entry(reason).or_default() += 1);
    }

    /// Writes what was counted since the last flush. On failure the counts are kept for the next try.
    pub async fn flush(&self) {
        let batch: HashMap<TenantId, Acc> = match self.pending.lock() {
            Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
            _ => return,
        };
        let bucket = bucket_now().to_string();
        let mut pipe = redis::pipe();
        for (t, acc) in &batch {
            let bk = key(t, &bucket);
            let tk = key(t, "total");
            for (f, n, total) in acc.fields() {
                pipe.cmd("HINCRBY").arg(&bk).arg(&f).arg(n).ignore();
                if total {
                    pipe.cmd("HINCRBY").arg(&tk).arg(&f).arg(n).ignore();
                }
            }
            pipe.cmd("EXPIRE").arg(&bk).arg(BUCKET_TTL_SECS).ignore();
        }
        if let Err(e) = self.redis.query::<()>(&pipe).await {
            tracing::debug!(error = %e, "tenant stats flush failed; keeping counts");
            if let Ok(mut p) = self.pending.lock() {
                for (t, acc) in batch {
                    p.entry(t).or_default().merge(acc);
                }
            }
        }
    }

    pub async fn read(&self, t: &TenantId) -> Result<TenantMetrics, redis::RedisError> {
        let now = bucket_now();
        let n_buckets = 300 / BUCKET_SECS;
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(key(t, "total"));
        for b in 0..=n_buckets {
            pipe.cmd("HGETALL").arg(key(t, &(now - b).to_string()));
        }
        let replies: Vec<HashMap<String, i64>> = self.redis.query(&pipe).await?;
        let total = &replies[0];
        let buckets = &replies[1..];
        // Bucket 0 is the current, partial one; the 1-minute rate covers it and the 5 before it.
        let sum =
            |range: std::ops::Range<usize>, f: &str| -> i64 { buckets[range].iter().filter_map(|h| h.get(f)).sum() };
        let one_min = (60 / BUCKET_SECS) as usize;
        let secs_into = (time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64 % BUCKET_SECS) as f64;
        let span_1m = (one_min as f64 - 1.0) * BUCKET_SECS as f64 + secs_into.max(1.0);
        let span_5m = (n_buckets as f64 - 1.0) * BUCKET_SECS as f64 + secs_into.max(1.0);
        let mut lat = vec![0i64; LATENCY_BOUNDS_MS.len()];
        let mut types: HashMap<String, i64> = HashMap::new();
        let mut sources: HashMap<String, i64> = HashMap::new();
        for h in buckets {
            for (f, n) in h {
                if let Some(i) = f.strip_prefix("lat:").and_then(|i| i.parse::<usize>().ok()) {
                    if let Some(slot) = lat.get_mut(i) {
                        *slot += n;
                    }
                } else if let Some(ty) = f.strip_prefix("type:") {
                    *types.entry(ty.to_string()).or_default() += n;
                } else if let Some(s) = f.strip_prefix("source:") {
                    *sources.entry(s.to_string()).or_default() += n;
                }
            }
        }
        let prefixed = |p: &str| -> HashMap<String, i64> {
            total.iter().filter_map(|(f, n)| f.strip_prefix(p).map(|r| (r.to_string(), *n))).collect()
        };
        Ok(TenantMetrics {
            tenant_id: t.to_string(),
            events_per_second_1m: sum(0..one_min, "accepted") as f64 / span_1m,
            events_per_second_5m: sum(0..buckets.len(), "accepted") as f64 / span_5m,
            total_accepted: total.get("accepted").copied().unwrap_or(0),
            total_rejected: total.get("rejected").copied().unwrap_or(0),
            total_filtered: total.get("filtered").copied().unwrap_or(0),
            rejected_by_reason: prefixed("rejected:"),
            filtered_by_reason: prefixed("filtered:"),
            ingest_latency_ms_p50: percentile(&lat, 0.50),
            ingest_latency_ms_p99: percentile(&lat, 0.99),
            top_event_types: top(types),
            top_sources: top(sources),
            window_secs: 300,
        })
    }
}

fn top(m: HashMap<String, i64>) -> Vec<Count> {
    let mut v: Vec<Count> = m.into_iter().map(|(name, count)| Count { name, count }).collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    v.truncate(10);
    v
}

fn percentile(hist: &[i64], q: f64) -> Option<f64> {
    let total: i64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let b = LATENCY_BOUNDS_MS[i];
            return Some(if b.is_finite() { b } else { LATENCY_BOUNDS_MS[i - 1] });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_bucket_bound() {
        let mut h = vec![0; LATENCY_BOUNDS_MS.len()];
        assert_eq!(percentile(&h, 0.5), None);
        h[1] = 98; // <= 1 ms
        h[5] = 2; // <= 20 ms
        assert_eq!(percentile(&h, 0.5), Some(1.0));
        assert_eq!(percentile(&h, 0.99), Some(20.0));
    }
}
