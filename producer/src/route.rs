//! Routing: the topics an event goes to, its key, and its Kafka record headers.

use rdkafka::message::{Header, OwnedHeaders};
use schemas::{Event, StreamConfig, TopicName};

/// Where events go when the tenant names no topics of its own.
pub const DEFAULT_EVENTS_TOPIC: &str = "evstream.events";

/// The tenant's own topics, or the shared default.
pub fn topics<'a>(cfg: &'a StreamConfig, default_topic: &'a str) -> Vec<&'a str> {
    if cfg.topics.is_empty() {
        vec![default_topic]
    } else {
        cfg.topics.iter().map(TopicName::as_str).collect()
    }
}

/// CloudEvents Kafka protocol binding headers (`ce_*`) plus `tenant_id` and `content-type`.
pub fn headers(e: &Event) -> OwnedHeaders {
    schemas::event::with_rfc3339(e.occurred_at, |time| {
        OwnedHeaders::new_with_capacity(8)
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some(e.id.as_str()) })
            .insert(Header { key: "ce_type", value: Some(e.event_type.as_str()) })
            .insert(Header { key: "ce_source", value: Some(e.source.as_str()) })
            .insert(Header { key: "ce_time", value: Some(time.unwrap_or_default()) })
            .insert(Header { key: "tenant_id", value: Some(e.tenant_id.as_str()) })
            .insert(Header { key: "content-type", value: Some("application/json") })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_or_own_topics() {
        let mut cfg = StreamConfig::default();
        assert_eq!(topics(&cfg, DEFAULT_EVENTS_TOPIC), vec![DEFAULT_EVENTS_TOPIC]);
        cfg.topics = vec![TopicName::new("a").unwrap(), TopicName::new("b").unwrap()];
        assert_eq!(topics(&cfg, DEFAULT_EVENTS_TOPIC), vec!["a", "b"]);
    }
}
