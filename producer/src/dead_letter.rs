//! The dead-letter topic: events rejected after their JSON was parsed, and events no sink could take, with a
//! reason code. Writing here is best effort and never delays the client's answer.

use crate::metric_names as m;
use crate::sinks::kafka::KafkaSink;
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
        let Ok(payload) = serde_json::to_vec(&dl) else {
            return;
        };
        let key = tenant.unwrap_or("unknown").to_string();
        let sink = self.sink.clone();
        let topic = self.topic.clone();
        metrics::counter!(m::DEADLETTER_TOTAL, "reason" => reason).increment(1);
        tokio::spawn(async move {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "reason", value: Some(reason) })
                .insert(Header { key: "tenant_id", value: Some(key.as_str()) });
            if let Err(e) = sink.send(&topic, &key, &payload, headers, false).await {
                tracing::warn!(error = %e, reason, "dead letter not written");
            }
        });
    }
}
