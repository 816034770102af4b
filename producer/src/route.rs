//! Routing: the topics an event goes to, its key, and its Kafka record headers.

use rdkafka::message::{Header, OwnedHeaders};
use schemas::{Event, StreamConfig, TopicName};
use time::OffsetDateTime;

/// Where events go when the tenant names no topics of its own.
pub const DEFAULT_EVENTS_TOPIC: &str = "evstream.events";

/// The topics one event is written to (borrowed from the config: nothing is allocated per event).
#[derive(Debug, Clone, Copy)]
pub enum Topics<'a> {
    /// The shared default topic.
    Shared(&'a str),
    /// The tenant's own topics.
    Own(&'a [TopicName]),
    /// None: a filtered event.
    Nowhere,
}

impl<'a> Topics<'a> {
    pub fn len(self) -> usize {
        match self {
            Topics::Shared(_) => 1,
            Topics::Own(t) => t.len(),
            Topics::Nowhere => 0,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        let (shared, own): (Option<&'a str>, &'a [TopicName]) = match self {
            Topics::Shared(t) => (Some(t), &[]),
            Topics::Own(t) => (None, t),
            Topics::Nowhere => (None, &[]),
        };
        shared.into_iter().chain(own.iter().map(TopicName::as_str))
    }
}

/// The tenant's own topics, or the shared default.
pub fn topics<'a>(cfg: &'a StreamConfig, default_topic: &'a str) -> Topics<'a> {
    if cfg.topics.is_empty() {
        Topics::Shared(default_topic)
    } else {
        Topics::Own(&cfg.topics)
    }
}

/// CloudEvents Kafka protocol binding headers (`ce_*`) plus `tenant_id` and `content-type`.
pub fn headers(e: &Event) -> OwnedHeaders {
    Head::of(e).headers()
}

/// The envelope fields a record's headers are made of.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub source: &'a str,
    pub occurred_at: OffsetDateTime,
    pub tenant_id: &'a str,
}

impl<'a> Head<'a> {
    pub fn of(e: &'a Event) -> Self {
        Self {
            id: e.id.as_str(),
            event_type: e.event_type.as_str(),
            source: e.source.as_str(),
            occurred_at: e.occurred_at,
            tenant_id: e.tenant_id.as_str(),
        }
    }

    /// See [`headers`].
    pub fn headers(self) -> OwnedHeaders {
        schemas::event::with_rfc3339(self.occurred_at, |time| {
            OwnedHeaders::new_with_capacity(8)
                .insert(Header { key: "ce_specversion", value: Some("1.0") })
                .insert(Header { key: "ce_id", value: Some(self.id) })
                .insert(Header { key: "ce_type", value: Some(self.event_type) })
                .insert(Header { key: "ce_source", value: Some(self.source) })
                .insert(Header { key: "ce_time", value: Some(time.unwrap_or_default()) })
                .insert(Header { key: "tenant_id", value: Some(self.tenant_id) })
                .insert(Header { key: "content-type", value: Some("application/json") })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_or_own_topics() {
        let mut cfg = StreamConfig::default();
        assert_eq!(topics(&cfg, DEFAULT_EVENTS_TOPIC).iter().collect::<Vec<_>>(), vec![DEFAULT_EVENTS_TOPIC]);
        cfg.topics = vec![TopicName::new("a").unwrap(), TopicName::new("b").unwrap()];
        assert_eq!(topics(&cfg, DEFAULT_EVENTS_TOPIC).iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(topics(&cfg, DEFAULT_EVENTS_TOPIC).len(), 2);
        assert_eq!(Topics::Nowhere.iter().count(), 0);
    }
}
