//! The Kafka sink: an idempotent producer (`enable.idempotence`, `acks=all`), keyed by tenant so that a tenant's
//! events stay ordered on one partition. Two producer handles share the settings: one compresses (lz4), one does
//! not, chosen per tenant by `compressionEnabled`.

use crate::metric_names as m;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde::Deserialize;
use std::time::{Duration, Instant};

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

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            delivery_timeout_ms: 5_000,
            linger_ms: 5,
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
    plain: FutureProducer,
    lz4: FutureProducer,
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
        let plain: FutureProducer = self.client_config().create()?;
        let lz4: FutureProducer = self.client_config().set("compression.type", "lz4").create()?;
        Ok(KafkaSink { plain, lz4 })
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
        self.enqueue(topic, key, payload, headers, compress).await
    }

    /// Queues one record at once, and returns the wait for the broker's acknowledgement. A bulk request queues all
    /// of its records before it waits for any, so that they travel in as few produce requests as the linger
    /// allows and no per-record task is polled while they do.
    pub fn enqueue<'a>(
        &self,
        topic: &'a str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
        compress: bool,
    ) -> impl std::future::Future<Output = Result<Delivered, KafkaSinkError>> + Send + 'a {
        let producer = if compress { &self.lz4 } else { &self.plain };
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        let started = Instant::now();
        // Never wait for queue space: a full queue is overload, answered at once.
        let queued = producer.send_result(record).map_err(|(e, _)| e);
        async move {
            let res = match queued {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(d)) => Ok(d),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
                Err(e) => Err(e),
            };
            metrics::histogram!(m::KAFKA_PRODUCE_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
            match res {
                Ok(d) => Ok(Delivered { partition: d.partition, offset: d.offset }),
                Err(e) => {
                    let err = classify(topic, e);
                    tracing::warn!(topic, reason = err.reason(), error = %e_display(&err), "kafka produce failed");
                    metrics::counter!(m::KAFKA_PRODUCE_ERRORS_TOTAL, "reason" => err.reason()).increment(1);
                    Err(err)
                }
            }
        }
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
