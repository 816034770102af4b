//! Per-tenant quotas: events/s and bytes/s token buckets kept in Redis, so that every instance draws from the
//! same buckets. One script call checks and takes both buckets atomically. When Redis is unreachable the quota is
//! not enforced (counted): Kafka ingest must not depend on Redis.
//!
//! An instance does not ask Redis for every small request: a call tops a local lease up to [`LEASE`] worth of
//! the tenant's rate (never more than the buckets hold), and the next requests draw on that lease until it is used
//! up or [`LEASE`] has passed. Tokens are never created, and a lease never holds more than one lease's worth, so
//! the instances together never admit more than the quota; what a lease still holds when it lapses is not given
//! back (the tenant loses at most a tenth of a second of its rate per instance). Requests larger than half a
//! lease (bulk requests of a tenant with a small quota; every request of a tenant under 20 events a second) ask
//! Redis for exactly what they need, as before; only the small ones wait for one call per tenant at a time.

use crate::metric_names as m;
use crate::redis_conn::RedisConn;
use schemas::config::Quota;
use schemas::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refills both buckets for the time passed, then, if both hold at least `cost` events and `bytes` bytes, takes up
/// to `want` of each (whole tokens, at least the cost). Returns {1, 0, events taken, bytes taken} when allowed,
/// {0, retry_after_ms, 0, 0} when not.
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
local e_take, b_take = 0, 0
if ok then
  e_take = math.max(e_cost, math.floor(math.min(e, tonumber(ARGV[9]))))
  b_take = math.max(b_cost, math.floor(math.min(b, tonumber(ARGV[10]))))
  e = e - e_take; b = b - b_take
end
redis.call('HSET', KEYS[1], 't', e, 'ts', now)
redis.call('HSET', KEYS[2], 't', b, 'ts', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[8]))
if ok then return {1, 0, e_take, b_take} end
local wait_e = 0
if e < e_cost then wait_e = math.ceil((e_cost - e) * 1000 / e_rate) end
local wait_b = 0
if b < b_cost then wait_b = math.ceil((b_cost - b) * 1000 / b_rate) end
return {0, math.max(wait_e, wait_b), 0, 0}
"#;

/// How much of a tenant's rate one call to Redis takes ahead, and how long an instance may keep what it did not
/// use.
pub const LEASE: Duration = Duration::from_millis(100);

/// What this instance took from a tenant's buckets and has not used yet.
#[derive(Debug, Clone, Copy)]
struct Lease {
    events: u64,
    bytes: u64,
    until: Instant,
}

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
    leases: Arc<Mutex<HashMap<TenantId, Lease>>>,
    /// One call to Redis at a time per tenant: requests that find the lease short while a call is out wait for it
    /// (and usually find the lease full) instead of each taking a lease of their own.
    refills: Arc<Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>>,
    redis: RedisConn,
    script: redis::Script,
    defaults: Quota,
}

impl Quotas {
    pub fn new(redis: RedisConn, defaults: Quota) -> Self {
        Self {
            limited_until: Default::default(),
            leases: Default::default(),
            refills: Default::default(),
            redis,
            script: redis::Script::new(SCRIPT),
            defaults,
        }
    }

    pub fn defaults(&self) -> &Quota {
        &self.defaults
    }

    /// Takes the request from this instance's lease of the tenant's buckets, if the lease is current and holds
    /// enough.
    fn take_from_lease(&self, tenant: &TenantId, events: u64, bytes: u64) -> bool {
        let Ok(mut leases) = self.leases.lock() else { return false };
        match leases.get_mut(tenant) {
            Some(l) if l.until > Instant::now() && l.events >= events && l.bytes >= bytes => {
                l.events -= events;
                l.bytes -= bytes;
                true
            }
            _ => false,
        }
    }

    /// Takes from a current lease what it has towards a request it cannot cover alone: returns (events, bytes)
    /// taken and what the lease still holds afterwards.
    fn take_part_of_lease(&self, tenant: &TenantId, events: u64, bytes: u64) -> ((u64, u64), (u64, u64)) {
        let Ok(mut leases) = self.leases.lock() else { return ((0, 0), (0, 0)) };
        match leases.get_mut(tenant) {
            Some(l) if l.until > Instant::now() => {
                let used = (events.min(l.events), bytes.min(l.bytes));
                l.events -= used.0;
                l.bytes -= used.1;
                (used, (l.events, l.bytes))
            }
            _ => {
                leases.remove(tenant);
                ((0, 0), (0, 0))
            }
        }
    }

    /// Adds to the tenant's lease (a new one if it had none current) and gives it another [`LEASE`]. Callers never
    /// bring it above one lease's worth, so a lease renewed again and again does not grow.
    fn add_to_lease(&self, tenant: &TenantId, events: u64, bytes: u64) {
        let Ok(mut leases) = self.leases.lock() else { return };
        let now = Instant::now();
        let until = now + LEASE;
        match leases.get_mut(tenant) {
            Some(l) if l.until > now => *l = Lease { events: l.events + events, bytes: l.bytes + bytes, until },
            _ => {
                leases.insert(tenant.clone(), Lease { events, bytes, until });
            }
        }
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
        let ahead = |rate: u64| rate.saturating_mul(LEASE.as_millis() as u64) / 1000;
        let (ahead_e, ahead_b) = (ahead(q.events_per_second), ahead(q.bytes_per_second));
        // Only requests small beside a lease use leases; a large one asks for exactly what it needs, so that it
        // neither waits behind others nor leaves one half of a lease that the other half can no longer serve.
        if events.saturating_mul(2) > ahead_e || bytes.saturating_mul(2) > ahead_b {
            return self.call(tenant, q, (events, bytes), (events, bytes), (events, bytes)).await.0;
        }
        if self.take_from_lease(tenant, events, bytes) {
            return QuotaDecision::Allowed;
        }
        let gate = match self.refills.lock() {
            Ok(mut g) => g.entry(tenant.clone()).or_default().clone(),
            Err(_) => Default::default(),
        };
        let _one_call = gate.lock().await;
        // What the lease has now (the call this request waited for may have filled it) goes to this request; a
        // call takes the rest, and tops the lease up to one lease's worth.
        let (used, left) = self.take_part_of_lease(tenant, events, bytes);
        if used == (events, bytes) {
            return QuotaDecision::Allowed;
        }
        let cost = (events - used.0, bytes - used.1);
        let want = (cost.0 + ahead_e.saturating_sub(left.0), cost.1 + ahead_b.saturating_sub(left.1));
        let (decision, taken) = self.call(tenant, q, (events, bytes), cost, want).await;
        match (&decision, taken) {
            (QuotaDecision::Allowed, Some(taken)) => {
                self.add_to_lease(tenant, taken.0.saturating_sub(cost.0), taken.1.saturating_sub(cost.1))
            }
            // Refused: what this request took from the lease goes back.
            (QuotaDecision::Limited { .. }, _) => self.add_to_lease(tenant, used.0, used.1),
            _ => {}
        }
        decision
    }

    /// One call to the buckets: takes `cost` (up to `want`, which is at least `cost`) if both buckets hold the
    /// cost. `request` is the whole request, for telling an impossible request from one that came too soon.
    /// Returns what was taken.
    async fn call(
        &self,
        tenant: &TenantId,
        q: &Quota,
        request: (u64, u64),
        cost: (u64, u64),
        want: (u64, u64),
    ) -> (QuotaDecision, Option<(u64, u64)>) {
        let (events, bytes) = request;
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
            .arg(cost.0)
            .arg(q.bytes_per_second)
            .arg(b_burst)
            .arg(cost.1)
            .arg(ttl_ms)
            .arg(want.0)
            .arg(want.1);
        let res: Result<(i64, i64, i64, i64), _> = self.redis.query(&inv).await;
        let decision = match res {
            Ok((1, _, e_taken, b_taken)) => {
                return (QuotaDecision::Allowed, Some((e_taken.max(0) as u64, b_taken.max(0) as u64)));
            }
            Ok((_, wait_ms, _, _)) if events <= e_burst && bytes <= b_burst => {
                let retry_after = Duration::from_millis(wait_ms.max(1) as u64);
                if let Ok(mut m) = self.limited_until.lock() {
                    m.insert(tenant.clone(), Instant::now() + retry_after);
                }
                QuotaDecision::Limited { retry_after, reason: "quota_exceeded" }
            }
            Ok((_, wait_ms, _, _)) => QuotaDecision::Limited {
                retry_after: Duration::from_millis(wait_ms.max(1) as u64),
                reason: "quota_request_too_large",
            },
            Err(e) => {
                tracing::warn!(error = %e, "quota store unavailable; quota not enforced");
                metrics::counter!(m::QUOTA_UNAVAILABLE_TOTAL).increment(1);
                QuotaDecision::Allowed
            }
        };
        (decision, None)
    }
}
