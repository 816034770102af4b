//! Idempotent ingest: an event id (or an `Idempotency-Key`) seen again within the window returns the first
//! result and writes nothing. The state lives in Redis, so it holds across instances and restarts.
//!
//! A first request claims the key with `SET NX` and a short "pending" lease, produces, then stores its result for
//! the whole window. A duplicate that finds a result returns it; one that finds a pending claim waits for the
//! result (the first request is still in flight); a failed produce releases the claim so that a retry can go
//! ahead. When Redis is unreachable, ingest goes on without de-duplication (counted), because Kafka ingest must
//! not depend on Redis.

use crate::metric_names as m;
use crate::pipeline::Accepted;
use crate::redis_conn::RedisConn;
use schemas::{EventId, TenantId};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

const PENDING: &str = "pending";

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a seen id is remembered.
    pub window: Duration,
    /// How long a claim may stay pending (longer than a produce can take).
    pub pending_lease: Duration,
}

/// What was stored for a key: where the first request's event landed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default)]
    pub also: Vec<(String, i32, i64)>,
}

/// The outcome of trying to claim a key.
pub enum Claim {
    /// First time: go ahead and produce, then `complete` or `release`.
    New(ClaimGuard),
    /// Seen before: this is what the first request got.
    Duplicate(StoredResult),
    /// Another request with the same key is still in flight and did not finish in time.
    InFlight,
    /// Redis is unreachable: proceed without de-duplication.
    Unavailable,
}

pub struct ClaimGuard {
    key: String,
}

#[derive(Clone)]
pub struct Idempotency {
    redis: RedisConn,
    cfg: IdempotencyConfig,
}

pub fn key(tenant: &TenantId, id: &str) -> String {
    format!("evstream:{tenant}:idem:{id}")
}

impl Idempotency {
    pub fn new(redis: RedisConn, cfg: IdempotencyConfig) -> Self {
        Self { redis, cfg }
    }

    pub fn window(&self) -> Duration {
        self.cfg.window
    }

    pub async fn claim(&self, tenant: &TenantId, id: &str) -> Claim {
        let key = key(tenant, id);
        let deadline = Instant::now() + self.cfg.pending_lease;
        loop {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(PENDING).arg("NX").arg("PX").arg(self.cfg.pending_lease.as_millis() as u64).arg("GET");
            let set: Result<Option<String>, _> = self.redis.query(&cmd).await;
            match set {
                Err(e) => {
                    tracing::warn!(error = %e, "idempotency store unavailable; ingest goes on without de-duplication");
                    metrics::counter!(m::IDEMPOTENCY_UNAVAILABLE_TOTAL).increment(1);
                    return Claim::Unavailable;
                }
                // SET NX GET returns the old value: nil means we set it.
                Ok(None) => return Claim::New(ClaimGuard { key }),
                Ok(Some(v)) if v == PENDING => {
                    if Instant::now() >= deadline {
                        return Claim::InFlight;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Some(v)) => match serde_json::from_str::<StoredResult>(&v) {
                    Ok(r) => {
                        metrics::counter!(m::EVENTS_DEDUPLICATED_TOTAL).increment(1);
                        return Claim::Duplicate(r);
                    }
                    Err(_) => return Claim::New(ClaimGuard { key }),
                },
            }
        }
    }

    /// Stores the result of a claimed key for the whole window.
    pub async fn complete(&self, guard: ClaimGuard, a: &Accepted) {
        let r = StoredResult {
            id: a.id.to_string(),
            topic: a.topic.clone(),
            partition: a.partition,
            offset: a.offset,
            also: a.also.iter().map(|p| (p.topic.clone(), p.partition, p.offset)).collect(),
        };
        let Ok(v) = serde_json::to_string(&r) else { return };
        let mut cmd = redis::cmd("SET");
        cmd.arg(&guard.key).arg(v).arg("PX").arg(self.cfg.window.as_millis() as u64);
        let res: Result<(), _> = self.redis.query(&cmd).await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "idempotency result not stored");
        }
    }

    /// Gives a claim back after a failed produce, so that a retry is not mistaken for a duplicate.
    pub async fn release(&self, guard: ClaimGuard) {
        let _: Result<(), _> = self.redis.query(&*redis::cmd("DEL").arg(&guard.key)).await;
    }
}

impl StoredResult {
    pub fn into_accepted(self, tenant: TenantId, event_type: schemas::EventType) -> Option<Accepted> {
        Some(Accepted {
            id: EventId::new(self.id).ok()?,
            tenant,
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            also: self
                .also
                .into_iter()
                .map(|(topic, partition, offset)| crate::pipeline::Placement { topic, partition, offset })
                .collect(),
            duplicate: true,
            event_type,
            source_label: "",
        })
    }
}
