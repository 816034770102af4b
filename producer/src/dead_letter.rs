//! The dead-letter topic: events rejected after their JSON was parsed, and events no sink could take, with a
//! reason code. Writing here is best effort and never delays the client's answer.

use crate::metric_names as m;
use crate::sinks::kafka::{KafkaSink, KafkaSinkError};
use rdkafka::message::{Header, OwnedHeaders};
use schemas::FieldError;
use serde::Serialize;

pub const DEAD_LETTER_TOPIC: &str = "evstream.deadletter";

/// Longest original document kept in a dead letter; longer ones are cut (and flagged).
const MAX_ORIGINAL_BYTES: usize = 64 * 1024;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter<'a> {
    /// Stable reason code (`schema_violation`, `unknown_event_type`, `tenant_disabled`, `message_too_large`, ...).
    pub reason: &'a str,
    pub tenant_id: Option<&'a str>,
    pub errors: &'a [FieldError],
    pub received_at: String,
    /// The document as received (JSON text), cut at 64 KiB.
    pub original: String,
    pub truncated: bool,
}

#[derive(Clone)]
pub struct DeadLetters {
    sink: KafkaSink,
    topic: String,
}

impl DeadLetters {
    pub fn new(sink: KafkaSink, topic: String) -> Self {
        Self { sink, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends in the background. `original` is the raw JSON of the rejected item.
    pub fn send(&self, reason: &'static str, tenant: Option<&str>, errors: &[FieldError], original: &str) {
        let Some(record) = self.record(reason, tenant, errors, original) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.write(record).await {
                tracing::warn!(error = %e, reason, "dead letter not written");
            }
        });
    }

    /// Sends and waits for the broker's acknowledgement: for sources (the change feed) that move their checkpoint
    /// past the rejected item only once its dead letter is stored.
    pub async fn send_acked(
        &self,
        reason: &'static str,
        tenant: Option<&str>,
        errors: &[FieldError],
        original: &str,
    ) -> Result<(), KafkaSinkError> {
        match self.record(reason, tenant, errors, original) {
            Some(record) => self.write(record).await,
            None => Ok(()),
        }
    }

    fn record(
        &self,
        reason: &'static str,
        tenant: Option<&str>,
        errors: &[FieldError],
        original: &str,
    ) -> Option<Record> {
        let cut =
            (0..=original.len().min(MAX_ORIGINAL_BYTES)).rev().find(|i| original.is_char_boundary(*i)).unwrap_or(0);
        let dl = DeadLetter {
            reason,
            tenant_id: tenant,
            errors,
            received_at: crate::now_rfc3339(),
            original: original[..cut].to_string(),
            truncated: cut < original.len(),
        };
        let payload = serde_json::to_vec(&dl).ok()?;
        metrics::counter!(m::DEADLETTER_TOTAL, "reason" => reason).increment(1);
        Some(Record { reason, key: tenant.unwrap_or("unknown").to_string(), payload })
    }

    async fn write(&self, r: Record) -> Result<(), KafkaSinkError> {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(r.reason) })
            .insert(Header { key: "tenant_id", value: Some(r.key.as_str()) });
        self.sink.send(&self.topic, &r.key, &r.payload, headers, false).await.map(|_| ())
    }
}

struct Record {
    reason: &'static str,
    key: String,
    payload: Vec<u8>,
}
