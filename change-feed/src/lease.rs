//! Leases and checkpoints in Redis.
//!
//! Per container (`{prefix}:{database}/{container}`):
//! - `:ranges`: the feed ranges as first read, a JSON list. Every reader works on this one list, so a range keeps
//!   its identity (and its checkpoint) across splits and merges; the SDK follows a split inside a range's
//!   continuation token.
//! - `:lease:{i}`: the owner of range `i`, with a time to live. Taken with `SET NX PX`, renewed and released only by
//!   its owner (Lua), so one range is never read by two readers at once.
//! - `:ckpt:{i}`: the continuation token of range `i`. Written by a script that first checks the lease, so a reader
//!   that lost its lease can never overwrite the new owner's checkpoint (fencing).
//! - `:readers`: live readers (sorted set of owner -> last heartbeat); each takes a fair share of the ranges.

use producer::redis_conn::RedisConn;
use redis::{RedisError, Script};
use std::sync::LazyLock;
use std::time::Duration;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

static CHECKPOINT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) return 1 end
return 0",
    )
});

/// The lease store of one container.
#[derive(Clone)]
pub struct Leases {
    redis: RedisConn,
    base: String,
    owner: String,
    ttl: Duration,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Leases {
    pub fn new(redis: RedisConn, prefix: &str, database: &str, container: &str, owner: &str, ttl: Duration) -> Self {
        Self { redis, base: format!("{prefix}:{database}/{container}"), owner: owner.to_owned(), ttl }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().max(1) as u64
    }

    /// The stored range list, or `proposed` when there is none yet (the first reader's list wins).
    pub async fn ranges(&self, proposed: &[String]) -> Result<Vec<String>, RedisError> {
        let key = format!("{}:ranges", self.base);
        let json = serde_json::to_string(proposed).unwrap_or_else(|_| "[]".into());
        let _: Option<String> = self.redis.query(&*redis::cmd("SET").arg(&key).arg(json).arg("NX")).await?;
        let stored: Option<String> = self.redis.query(&*redis::cmd("GET").arg(&key)).await?;
        Ok(stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_else(|| proposed.to_vec()))
    }

    /// Says this reader is alive and returns how many readers are (this one included).
    pub async fn heartbeat(&self) -> Result<usize, RedisError> {
        let key = format!("{}:readers", self.base);
        let now = now_ms();
        let mut p = redis::pipe();
        p.cmd("ZADD")
            .arg(&key)
            .arg(now)
            .arg(&self.owner)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now - self.ttl_ms() as i64)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.ttl_ms() * 10)
            .ignore()
            .cmd("ZCARD")
            .arg(&key);
        let (n,): (usize,) = self.redis.query(&p).await?;
        Ok(n.max(1))
    }

    /// Leaves the reader set (a clean stop), so the others take over at once.
    pub async fn leave(&self) {
        let key = format!("{}:readers", self.base);
        let _: Result<i64, _> = self.redis.query(&*redis::cmd("ZREM").arg(&key).arg(&self.owner)).await;
    }

    async fn script(&self, script: &Script, keys: &[String], args: &[String]) -> Result<i64, RedisError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        self.redis.query(&inv).await
    }

    fn lease_key(&self, range: usize) -> String {
        format!("{}:lease:{range}", self.base)
    }

    fn checkpoint_key(&self, range: usize) -> String {
        format!("{}:ckpt:{range}", self.base)
    }

    /// Takes range `range` when it is free (or already ours); true when this reader holds it now.
    pub async fn acquire(&self, range: usize) -> Result<bool, RedisError> {
        let args = [self.owner.clone(), self.ttl_ms().to_string()];
        Ok(self.script(&ACQUIRE, &[self.lease_key(range)], &args).await? == 1)
    }

    /// Extends our lease; false when it is no longer ours.
    pub async fn renew(&self, range: usize) -> Result<bool, RedisError> {
        let args = [self.owner.clone(), self.ttl_ms().to_string()];
        Ok(self.script(&RENEW, &[self.lease_key(range)], &args).await? == 1)
    }

    pub async fn release(&self, range: usize) -> Result<(), RedisError> {
        self.script(&RELEASE, &[self.lease_key(range)], std::slice::from_ref(&self.owner)).await.map(|_| ())
    }

    /// The owner of a range's lease, if any.
    pub async fn holder(&self, range: usize) -> Result<Option<String>, RedisError> {
        self.redis.query(&*redis::cmd("GET").arg(self.lease_key(range))).await
    }

    pub async fn checkpoint(&self, range: usize) -> Result<Option<String>, RedisError> {
        self.redis.query(&*redis::cmd("GET").arg(self.checkpoint_key(range))).await
    }

    /// Stores a range's continuation token if we still hold its lease; false when the lease was lost.
    pub async fn save_checkpoint(&self, range: usize, token: &str) -> Result<bool, RedisError> {
        let keys = [self.lease_key(range), self.checkpoint_key(range)];
        Ok(self.script(&CHECKPOINT, &keys, &[self.owner.clone(), token.to_owned()]).await? == 1)
    }
}
