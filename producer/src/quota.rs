//! Per-tenant quotas: events/s and bytes/s token buckets kept in Redis, so that every instance draws from the
//! same buckets. One script call checks and takes both buckets atomically. When Redis is unreachable the quota is
//! not enforced (counted): Kafka ingest must not depend on Redis.

use crate::metric_names as m;
use crate::redis_conn::RedisConn;
use schemas::config::Quota;
use schemas::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refills both buckets for the time passed, then takes `cost` events and `bytes` bytes if both have enough.
/// Returns {1, 0} when allowed, {0, retry_after_ms} when not.
const SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local function refill(key, rate, burst)
  local b = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  return tokens
end
local e_rate, e_burst, e_cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b_rate, b_burst, b_cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local e = refill(KEYS[1], e_rate, e_burst)
local b = refill(KEYS[2], b_rate, b_burst)
local ok = e >= e_cost and b >= b_cost
if ok then e = e - e_cost; b = b - b_cost end
redis.call('HSET', KEYS[1], 't', e, 'ts', now)
redis.call('HSET', KEYS[2], 't', b, 'ts', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[8]))
if ok then return {1, 0} end
local wait_e = 0
if e < e_cost then wait_e = math.ceil((e_cost - e) * 1000 / e_rate) end
local wait_b = 0
if b < b_cost then wait_b = math.ceil((b_cost - b) * 1000 / b_rate) end
return {0, math.max(wait_e, wait_b)}
"#;

#[derive(Debug, Clone)]
pub enum QuotaDecision {
    Allowed,
    /// Over quota: try again after this long.
    Limited {
        retry_after: Duration,
        reason: &'static str,
    },
}

#[derive(Clone)]
pub struct Quotas {
    /// Tenants this instance saw over quota, until when: their requests are refused without asking Redis, so
    /// that a flood costs as little as possible.
    limited_until: Arc<Mutex<HashMap<TenantId, Instant>>>,
    redis: RedisConn,
    script: redis::Script,
    defaults: Quota,
}

impl Quotas {
    pub fn new(redis: RedisConn, defaults: Quota) -> Self {
        Self { limited_until: Default::default(), redis, script: redis::Script::new(SCRIPT), defaults }
    }

    pub fn defaults(&self) -> &Quota {
        &self.defaults
    }

    /// How long `tenant` is still known to be over quota on this instance, if it is.
    pub fn locally_limited(&self, tenant: &TenantId) -> Option<Duration> {
        let mut m = self.limited_until.lock().ok()?;
        let until = *m.get(tenant)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            m.remove(tenant);
            None
        }
    }

    /// Takes `events` and `bytes` from the tenant's buckets. A request larger than a whole burst can never pass, so
    /// it is limited with the time one burst takes to refill; `Allowed` when Redis is unreachable.
    pub async fn take(&self, tenant: &TenantId, quota: Option<&Quota>, events: u64, bytes: u64) -> QuotaDecision {
        let q = quota.unwrap_or(&self.defaults);
        let e_burst = q.events_per_second.saturating_mul(q.burst_seconds);
        let b_burst = q.bytes_per_second.saturating_mul(q.burst_seconds);
        // A bucket left alone for a whole burst is full again; only then may its key expire.
        let ttl_ms = q.burst_seconds.saturating_mul(2000).max(60_000);
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let mut inv = self.script.prepare_invoke();
        inv.key(format!("evstream:{tenant}:quota:events"))
            .key(format!("evstream:{tenant}:quota:bytes"))
            .arg(now_ms)
            .arg(q.events_per_second)
            .arg(e_burst)
            .arg(events)
            .arg(q.bytes_per_second)
            .arg(b_burst)
            .arg(bytes)
            .arg(ttl_ms);
        let res: Result<(i64, i64), _> = self.redis.query(&inv).await;
        match res {
            Ok((1, _)) => QuotaDecision::Allowed,
            Ok((_, wait_ms)) if events as f64 <= e_burst as f64 && bytes as f64 <= b_burst as f64 => {
                let retry_after = Duration::from_millis(wait_ms.max(1) as u64);
                if let Ok(mut m) = self.limited_until.lock() {
                    m.insert(tenant.clone(), Instant::now() + retry_after);
                }
                QuotaDecision::Limited { retry_after, reason: "quota_exceeded" }
            }
            Ok((_, wait_ms)) => {
                let reason = if events as f64 > e_burst as f64 || bytes as f64 > b_burst as f64 {
                    "quota_request_too_large"
                } else {
                    "quota_exceeded"
                };
                QuotaDecision::Limited { retry_after: Duration::from_millis(wait_ms.max(1) as u64), reason }
            }
            Err(e) => {
                tracing::warn!(error = %e, "quota store unavailable; quota not enforced");
                metrics::counter!(m::QUOTA_UNAVAILABLE_TOTAL).increment(1);
                QuotaDecision::Allowed
            }
        }
    }
}
