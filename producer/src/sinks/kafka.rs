//! The Kafka sink: an idempotent producer (`enable.idempotence`, `acks=all`), keyed by tenant so that a tenant's
//! events stay ordered on one partition. Two producer handles share the settings: one compresses (lz4), one does
//! not, chosen per tenant by `compressionEnabled`.
//!
//! Records are sent in batches ([`KafkaSink::send_all`]): every record of a batch is queued at once, each carries a
//! slot of the batch, the delivery callback fills the slot, and the last acknowledgement wakes the one waiting
//! task. A bulk request of 500 events is one wake-up, not 500 futures.

use crate::metric_names as m;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    /// Upper bound on how long one record may wait for the broker's ack before the request fails (503).
    pub delivery_timeout_ms: u64,
    pub linger_ms: u64,
    pub batch_size: u32,
    /// Bound on records queued in the client; beyond it requests fail fast instead of growing memory.
    pub queue_max_messages: u32,
    /// The idempotent producer (no duplicates from producer retries, order kept). Off only for brokers whose
    /// idempotence support is broken; then one request per connection keeps the order, and a retry after a lost
    /// acknowledgement may store a record twice.
    pub idempotence: bool,
}

/// The producer's default linger: single events wait at most this long for company.
pub const DEFAULT_LINGER_MS: u64 = 1;

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            delivery_timeout_ms: 5_000,
            linger_ms: DEFAULT_LINGER_MS,
            batch_size: 10_000,
            queue_max_messages: 100_000,
            idempotence: true,
        }
    }
}

/// A failed send, sorted by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// Broker unreachable, slow, or the client queue full: try again later (503 + Retry-After).
    #[error("kafka unavailable ({reason}) for topic {topic}")]
    Retriable {
        topic: String,
        reason: &'static str,
        #[source]
        source: KafkaError,
    },
    /// The record can never be written as it is (too large, unknown topic, not authorised): dead-letter it.
    #[error("kafka refused the record ({reason}) for topic {topic}")]
    Final {
        topic: String,
        reason: &'static str,
        #[source]
        source: KafkaError,
    },
}

impl KafkaSinkError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Retriable { reason, .. } | Self::Final { reason, .. } => reason,
        }
    }
}

/// Where the broker put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct KafkaSink {
    plain: Arc<ThreadedProducer<SinkContext>>,
    lz4: Arc<ThreadedProducer<SinkContext>>,
}

/// One record to send.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    pub headers: OwnedHeaders,
    pub compress: bool,
}

/// The acknowledgements of one batch: filled by the delivery callbacks, handed over when the last one arrives.
struct Batch {
    state: Mutex<BatchState>,
}

struct BatchState {
    results: Vec<Option<Result<Delivered, KafkaError>>>,
    /// Records not yet settled, plus one while records are still being queued.
    pending: usize,
    done: Option<oneshot::Sender<()>>,
}

impl Batch {
    fn settle(&self, index: usize, r: Option<Result<Delivered, KafkaError>>) {
        // No code panics while holding the lock; if one did, the results are still whole values.
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(r), Some(slot)) = (r, s.results.get_mut(index)) {
            *slot = Some(r);
        }
        s.pending = s.pending.saturating_sub(1);
        if s.pending == 0 {
            if let Some(done) = s.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// A record's place in its batch, carried through librdkafka as the delivery opaque. A slot dropped without a
/// delivery report (a producer torn down with records queued) settles as cancelled, so no batch waits forever.
struct Slot {
    batch: Arc<Batch>,
    index: usize,
    settled: bool,
}

impl Slot {
    fn settle(&mut self, r: Result<Delivered, KafkaError>) {
        self.settled = true;
        self.batch.settle(self.index, Some(r));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.settled {
            self.batch.settle(self.index, Some(Err(KafkaError::Canceled)));
        }
    }
}

struct SinkContext;

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, r: &DeliveryResult<'_>, mut slot: Box<Slot>) {
        slot.settle(match r {
            Ok(m) => Ok(Delivered { partition: m.partition(), offset: m.offset() }),
            Err((e, _)) => Err(e.clone()),
        });
    }
}

impl KafkaSinkConfig {
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "evstream")
            .set("enable.idempotence", self.idempotence.to_string())
            .set("max.in.flight.requests.per.connection", if self.idempotence { "5" } else { "1" })
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.num.messages", self.batch_size.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", self.queue_max_messages.to_string())
            .set("socket.connection.setup.timeout.ms", "3000")
            .set("reconnect.backoff.max.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "10000");
        c
    }

    pub fn build(&self) -> Result<KafkaSink, KafkaError> {
        let plain = self.client_config().create_with_context(SinkContext)?;
        let lz4 = self.client_config().set("compression.type", "lz4").create_with_context(SinkContext)?;
        Ok(KafkaSink { plain: Arc::new(plain), lz4: Arc::new(lz4) })
    }
}

impl KafkaSink {
    /// Writes one record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
        compress: bool,
    ) -> Result<Delivered, KafkaSinkError> {
        let mut r = self.send_all(vec![Outgoing { topic, key, payload, headers, compress }]).await;
        r.pop().unwrap_or_else(|| Err(classify(topic, KafkaError::Canceled)))
    }

    /// Queues every record at once, then waits for all of their acknowledgements: results in input order. Records
    /// travel in as few produce requests as the linger allows. A full client queue is overload, answered at once
    /// for the records that did not fit; nothing waits for queue space.
    pub async fn send_all(&self, records: Vec<Outgoing<'_>>) -> Vec<Result<Delivered, KafkaSinkError>> {
        let n = records.len();
        if n == 0 {
            return Vec::new();
        }
        let started = Instant::now();
        let (done, finished) = oneshot::channel();
        let batch = Arc::new(Batch {
            state: Mutex::new(BatchState { results: vec![None; n], pending: n + 1, done: Some(done) }),
        });
        let topics: Vec<&str> = records.iter().map(|r| r.topic).collect();
        for (index, r) in records.into_iter().enumerate() {
            let producer = if r.compress { &self.lz4 } else { &self.plain };
            let slot = Box::new(Slot { batch: batch.clone(), index, settled: false });
            let record = BaseRecord::with_opaque_to(r.topic, slot).key(r.key).payload(r.payload).headers(r.headers);
            if let Err((e, record)) = producer.send(record) {
                let mut slot = record.delivery_opaque;
                slot.settle(Err(e));
            }
        }
        // Every record is queued: the last acknowledgement may now finish the batch.
        batch.settle(usize::MAX, None);
        let _ = finished.await;
        let results =
            std::mem::take(&mut batch.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).results);
        metrics::histogram!(m::KAFKA_PRODUCE_DURATION_SECONDS).record_many(started.elapsed().as_secs_f64(), n);
        let mut failures: HashMap<&'static str, (u64, &str, String)> = HashMap::new();
        let out: Vec<Result<Delivered, KafkaSinkError>> = results
            .into_iter()
            .zip(&topics)
            .map(|(r, topic)| match r.unwrap_or(Err(KafkaError::Canceled)) {
                Ok(d) => Ok(d),
                Err(e) => {
                    let err = classify(topic, e);
                    failures.entry(err.reason()).or_insert_with(|| (0, topic, e_display(&err))).0 += 1;
                    Err(err)
                }
            })
            .collect();
        // One line and one count per reason, not one per record: an outage fails whole batches.
        for (reason, (count, topic, error)) in failures {
            tracing::warn!(reason, count, topic, error = %error, "kafka produce failed");
            metrics::counter!(m::KAFKA_PRODUCE_ERRORS_TOTAL, "reason" => reason).increment(count);
        }
        out
    }

    /// Asks the broker for cluster metadata; `Ok` means a broker answered within `timeout`.
    pub async fn healthcheck(&self, timeout: Duration) -> Result<(), KafkaError> {
        let p = self.plain.clone();
        tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, Timeout::After(timeout)).map(|_| ()))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Waits for every queued record to be acknowledged (graceful shutdown).
    pub async fn flush(&self, timeout: Duration) {
        for p in [self.plain.clone(), self.lz4.clone()] {
            let _ = tokio::task::spawn_blocking(move || p.flush(Timeout::After(timeout))).await;
        }
    }
}

fn e_display(e: &KafkaSinkError) -> String {
    match e {
        KafkaSinkError::Retriable { source, .. } | KafkaSinkError::Final { source, .. } => source.to_string(),
    }
}

fn classify(topic: &str, e: KafkaError) -> KafkaSinkError {
    use RDKafkaErrorCode as C;
    let topic = topic.to_string();
    let code = e.rdkafka_error_code();
    let final_reason = match code {
        Some(C::MessageSizeTooLarge) => Some("message_too_large"),
        Some(C::UnknownTopicOrPartition) | Some(C::UnknownTopic) => Some("unknown_topic"),
        Some(C::TopicAuthorizationFailed) => Some("not_authorized"),
        Some(C::InvalidRecord) => Some("invalid_record"),
        _ => None,
    };
    match final_reason {
        Some(reason) => KafkaSinkError::Final { topic, reason, source: e },
        None => {
            let reason = match code {
                Some(C::QueueFull) => "queue_full",
                Some(C::MessageTimedOut) => "timeout",
                Some(C::AllBrokersDown) | Some(C::BrokerTransportFailure) => "broker_down",
                _ => "other",
            };
            KafkaSinkError::Retriable { topic, reason, source: e }
        }
    }
}
