//! The shared Redis connection. Redis holds the real-time window, tenant stats, idempotency and quota state, but
//! Kafka ingest must not depend on it: evstream starts when Redis is down (and connects when it comes up), and
//! after a failed command it stops asking Redis for a moment (a circuit breaker), so that every request does not
//! wait out a timeout while Redis is away.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long Redis is left alone after a failure.
const OPEN_FOR: Duration = Duration::from_millis(1000);

#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    started: Instant,
    /// Milliseconds since `started` until which the circuit is open.
    open_until_ms: AtomicU64,
    connecting: AtomicBool,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(1)
        .set_max_delay(500)
}

fn unavailable() -> RedisError {
    RedisError::from((ErrorKind::IoError, "redis unavailable"))
}

impl RedisConn {
    /// Parses the URL (a bad URL is a start-up error) and connects in the background; returns at once.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let me = Self {
            inner: Arc::new(Inner {
                client,
                conn: RwLock::new(None),
                started: Instant::now(),
                open_until_ms: AtomicU64::new(0),
                connecting: AtomicBool::new(false),
            }),
        };
        // One short attempt in line, so that a healthy start is ready at once.
        let first = tokio::time::timeout(
            Duration::from_secs(2),
            ConnectionManager::new_with_config(me.inner.client.clone(), manager_config()),
        )
        .await;
        match first {
            Ok(Ok(c)) => me.set(c),
            _ => {
                tracing::warn!(
                    "redis is unreachable at start-up; continuing without it and retrying in the background"
                );
                me.reconnect();
            }
        }
        Ok(me)
    }

    fn set(&self, c: ConnectionManager) {
        if let Ok(mut g) = self.inner.conn.write() {
            *g = Some(c);
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// Keeps trying to connect until it works (one loop at a time).
    fn reconnect(&self) {
        if self.inner.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match ConnectionManager::new_with_config(me.inner.client.clone(), manager_config()).await {
                    Ok(c) => {
                        me.set(c);
                        tracing::info!("connected to redis");
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            me.inner.connecting.store(false, Ordering::Release);
        });
    }

    /// The connection, unless Redis is known to be unreachable right now.
    pub fn get(&self) -> Result<ConnectionManager, RedisError> {
        if self.now_ms() < self.inner.open_until_ms.load(Ordering::Acquire) {
            return Err(unavailable());
        }
        let conn = self.inner.conn.read().ok().and_then(|g| g.clone());
        match conn {
            Some(c) => Ok(c),
            None => {
                self.reconnect();
                Err(unavailable())
            }
        }
    }

    /// Records the result of a command: a connection-level failure opens the circuit for a moment.
    pub fn observe<T>(&self, r: &Result<T, RedisError>) {
        if let Err(e) = r {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                self.inner.open_until_ms.store(self.now_ms() + OPEN_FOR.as_millis() as u64, Ordering::Release);
            }
        }
    }

    /// Runs one command (or pipeline) through the breaker.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: impl RedisRunnable) -> Result<T, RedisError> {
        let mut conn = self.get()?;
        let r = cmd.run(&mut conn).await;
        self.observe(&r);
        r
    }

    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// PING, bypassing the breaker: readiness must report what Redis says now.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let conn = self.inner.conn.read().ok().and_then(|g| g.clone());
        let Some(mut c) = conn else {
            self.reconnect();
            return Err(unavailable());
        };
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
        self.observe(&r);
        r.map(|_| ())
    }
}

/// A command, a pipeline or a script invocation.
pub trait RedisRunnable {
    fn run<T: redis::FromRedisValue>(
        self,
        conn: &mut ConnectionManager,
    ) -> impl std::future::Future<Output = Result<T, RedisError>> + Send;
}

impl RedisRunnable for &redis::Cmd {
    async fn run<T: redis::FromRedisValue>(self, conn: &mut ConnectionManager) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}

impl RedisRunnable for &redis::ScriptInvocation<'_> {
    async fn run<T: redis::FromRedisValue>(self, conn: &mut ConnectionManager) -> Result<T, RedisError> {
        // The reply as a plain value first: the invocation's future is `Send` only for a `Send` result type.
        let v: redis::Value = self.invoke_async(conn).await?;
        T::from_redis_value(&v)
    }
}

impl RedisRunnable for &redis::Pipeline {
    async fn run<T: redis::FromRedisValue>(self, conn: &mut ConnectionManager) -> Result<T, RedisError> {
        self.query_async(conn).await
    }
}
