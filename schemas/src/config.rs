//! Per-tenant stream configuration, the shape of `PUT /stream-config/{tenant}`.
//!
//! ```json
//! { "enabled": true, "topics": ["grc-archer-events"],
//!   "filters": [{"eventTypes": ["RISK_CREATED"], "sources": ["ARCHER_GRC"], "conditions": {"data.severity": "high"}}],
//!   "destinations": [{"type": "kafka", "enabled": true, "config": {}},
//!                    {"type": "redis", "enabled": true, "config": {"maxLen": 10000}}],
//!   "retentionDays": 7, "batchSize": 100, "compressionEnabled": true, "allowedSources": ["MY_APP"] }
//! ```
//! Every field has a default, so `{}` is a valid configuration (the one a new tenant starts with).

use crate::catalog::{EventType, KNOWN_SOURCES};
use crate::event::Event;
use crate::field::FieldError;
use crate::ids::{SourceName, TenantId, TopicName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const MAX_TOPICS: usize = 16;
pub const MAX_FILTERS: usize = 64;
pub const MAX_RETENTION_DAYS: u32 = 365;
pub const MAX_BATCH_SIZE: u32 = 10_000;
pub const DEFAULT_REDIS_MAX_LEN: u64 = 10_000;
pub const MAX_REDIS_MAX_LEN: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamConfig {
    /// A disabled tenant's events are refused (`403 tenant_disabled`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The tenant's own Kafka topics. Empty: the shared default topic, keyed by tenant. Non-empty: every event is
    /// written to each listed topic. A topic belongs to one tenant only.
    #[serde(default)]
    pub topics: Vec<TopicName>,
    /// An event is kept when there are no filters or it matches at least one.
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default = "default_destinations")]
    pub destinations: Vec<Destination>,
    /// How long the real-time window in Redis keeps events.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// The most events this tenant may send in one bulk request (the server-wide limit still applies).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Compress this tenant's Kafka records (lz4).
    #[serde(default)]
    pub compression_enabled: bool,
    /// Sources beyond the built-in catalog that this tenant may use.
    #[serde(default)]
    pub allowed_sources: Vec<SourceName>,
    /// Ingest quota overriding the server default. Only the admin key may set or change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// Token-bucket limits of one tenant: sustained rates, and bursts of `burstSeconds` worth of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    pub events_per_second: u64,
    pub bytes_per_second: u64,
    #[serde(default = "default_burst_seconds")]
    pub burst_seconds: u64,
}

fn default_burst_seconds() -> u64 {
    2
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// Empty: any type.
    #[serde(default)]
    pub event_types: Vec<EventType>,
    /// Empty: any source.
    #[serde(default)]
    pub sources: Vec<SourceName>,
    /// Dot path -> expected value; an array means "any of these". All conditions must hold.
    #[serde(default)]
    pub conditions: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Kafka,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(rename = "type")]
    pub kind: DestinationKind,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub config: DestinationConfig,
}

/// Options of a destination. `maxLen` applies to `redis`: how many events the tenant's window keeps (at least that
/// many of those within `retentionDays` and, with one instance writing, fewer than that plus one stream entry's
/// worth, 64, from a second after a write; twice that at any time).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u64>,
}

fn yes() -> bool {
    true
}
fn default_retention_days() -> u32 {
    7
}
fn default_batch_size() -> u32 {
    100
}
fn default_destinations() -> Vec<Destination> {
    vec![
        Destination { kind: DestinationKind::Kafka, enabled: true, config: DestinationConfig::default() },
        Destination { kind: DestinationKind::Redis, enabled: true, config: DestinationConfig::default() },
    ]
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topics: Vec::new(),
            filters: Vec::new(),
            destinations: default_destinations(),
            retention_days: default_retention_days(),
            batch_size: default_batch_size(),
            compression_enabled: false,
            allowed_sources: Vec::new(),
            quota: None,
        }
    }
}

/// Why a filter dropped an event (a bounded set: used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOutcome {
    Keep,
    NoFilterMatched,
}

impl StreamConfig {
    /// Parses and checks a configuration document for `tenant`. A `tenantId` in the body must name the same tenant.
    pub fn from_json(v: Value, tenant: &TenantId) -> Result<Self, Vec<FieldError>> {
        let mut v = v;
        if let Some(obj) = v.as_object_mut() {
            match obj.remove("tenantId") {
                None => {}
                Some(Value::String(s)) if s == tenant.as_str() => {}
                Some(_) => {
                    return Err(vec![FieldError::new(
                        "tenantId",
                        "tenant_mismatch",
                        format!("tenantId must be `{tenant}` (the tenant in the path)"),
                    )])
                }
            }
            // Read-back documents carry `version`; accept them as they are.
            obj.remove("version");
            obj.remove("updatedAt");
        }
        let cfg: StreamConfig = crate::field::deserialize(v, "")?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.topics.len() > MAX_TOPICS {
            errs.push(FieldError::new("topics", "too_many", format!("at most {MAX_TOPICS} topics")));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.as_str().starts_with("evstream.") || t.as_str().starts_with("__") {
                errs.push(FieldError::new(
                    format!("topics[{i}]"),
                    "reserved_topic",
                    "topics starting with `evstream.` or `__` are reserved",
                ));
            }
            if self.topics[..i].contains(t) {
                errs.push(FieldError::new(format!("topics[{i}]"), "duplicate", "topic listed twice"));
            }
        }
        if self.filters.len() > MAX_FILTERS {
            errs.push(FieldError::new("filters", "too_many", format!("at most {MAX_FILTERS} filters")));
        }
        for (i, f) in self.filters.iter().enumerate() {
            for k in f.conditions.keys() {
                if !valid_path(k) {
                    errs.push(FieldError::new(
                        format!("filters[{i}].conditions.{k}"),
                        "invalid_path",
                        "a condition key is a dot path into the event, e.g. `data.severity`",
                    ));
                }
            }
        }
        for (i, d) in self.destinations.iter().enumerate() {
            if self.destinations[..i].iter().any(|o| o.kind == d.kind) {
                errs.push(FieldError::new(
                    format!("destinations[{i}].type"),
                    "duplicate",
                    "each destination type may appear once",
                ));
            }
            if d.kind == DestinationKind::Kafka && !d.enabled {
                errs.push(FieldError::new(
                    format!("destinations[{i}].enabled"),
                    "invalid_value",
                    "the kafka destination is the system of record and cannot be disabled",
                ));
            }
            match (d.kind, d.config.max_len) {
                (DestinationKind::Kafka, Some(_)) => errs.push(FieldError::new(
                    format!("destinations[{i}].config.maxLen"),
                    "invalid_value",
                    "maxLen applies to the redis destination only",
                )),
                (DestinationKind::Redis, Some(n)) if n == 0 || n > MAX_REDIS_MAX_LEN => errs.push(FieldError::new(
                    format!("destinations[{i}].config.maxLen"),
                    "out_of_range",
                    format!("maxLen must be 1..={MAX_REDIS_MAX_LEN}"),
                )),
                _ => {}
            }
        }
        if !(1..=MAX_RETENTION_DAYS).contains(&self.retention_days) {
            errs.push(FieldError::new(
                "retentionDays",
                "out_of_range",
                format!("retentionDays must be 1..={MAX_RETENTION_DAYS}"),
            ));
        }
        if let Some(q) = &self.quota {
            let ok = (1..=1_000_000_000).contains(&q.events_per_second)
                && (1..=1_000_000_000_000).contains(&q.bytes_per_second)
                && (1..=3600).contains(&q.burst_seconds);
            if !ok {
                errs.push(FieldError::new(
                    "quota",
                    "out_of_range",
                    "eventsPerSecond 1..=1e9, bytesPerSecond 1..=1e12, burstSeconds 1..=3600",
                ));
            }
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            errs.push(FieldError::new("batchSize", "out_of_range", format!("batchSize must be 1..={MAX_BATCH_SIZE}")));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    pub fn destination_enabled(&self, kind: DestinationKind) -> bool {
        self.destinations.iter().any(|d| d.kind == kind && d.enabled)
    }

    pub fn redis_max_len(&self) -> u64 {
        self.destinations
            .iter()
            .find(|d| d.kind == DestinationKind::Redis)
            .and_then(|d| d.config.max_len)
            .unwrap_or(DEFAULT_REDIS_MAX_LEN)
    }

    /// May this tenant use `source`? Catalog sources always; others only when listed in `allowedSources`.
    pub fn source_allowed(&self, source: &SourceName) -> bool {
        KNOWN_SOURCES.contains(&source.as_str()) || self.allowed_sources.contains(source)
    }

    /// Applies the filters to an event.
    pub fn filter(&self, e: &Event) -> FilterOutcome {
        if self.filters.is_empty() || self.filters.iter().any(|f| f.matches(e)) {
            FilterOutcome::Keep
        } else {
            FilterOutcome::NoFilterMatched
        }
    }
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&e.event_type))
            && (self.sources.is_empty() || self.sources.contains(&e.source))
            && self.conditions.iter().all(|(path, want)| match e.field(path) {
                None => false,
                Some(got) => match want {
                    Value::Array(any) => any.contains(&got),
                    w => *w == got,
                },
            })
    }
}

fn valid_path(p: &str) -> bool {
    !p.is_empty() && p.len() <= 256 && p.split('.').all(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t() -> TenantId {
        TenantId::new("t1").unwrap()
    }

    #[test]
    fn empty_document_is_the_default() {
        assert_eq!(StreamConfig::from_json(json!({}), &t()).unwrap(), StreamConfig::default());
    }

    #[test]
    fn seed_shape_parses() {
        let cfg = StreamConfig::from_json(
            json!({"tenantId":"t1","enabled":true,"topics":["grc-archer-events","grc-mcp-events"],
                   "filters":[{"eventTypes":["RISK_CREATED","RISK_UPDATED"],"sources":["ARCHER_GRC","MCP_SERVER"],"conditions":{}}],
                   "destinations":[{"type":"kafka","enabled":true,"config":{}}],
                   "retentionDays":30,"batchSize":100,"compressionEnabled":true}),
            &t(),
        )
        .unwrap();
        assert_eq!(cfg.topics.len(), 2);
        assert!(!cfg.destination_enabled(DestinationKind::Redis));
    }

    #[test]
    fn errors_name_the_field() {
        let e = StreamConfig::from_json(json!({"filters":[{"eventTypes":["NOPE"]}]}), &t()).unwrap_err();
        assert_eq!(e[0].field, "filters[0].eventTypes[0]");
        let e = StreamConfig::from_json(json!({"retentionDays": 0, "batchSize": 0}), &t()).unwrap_err();
        assert_eq!(e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), vec!["retentionDays", "batchSize"]);
        let e = StreamConfig::from_json(json!({"retentionDays": "x"}), &t()).unwrap_err();
        assert_eq!((e[0].field.as_str(), e[0].code), ("retentionDays", "wrong_type"));
        let e = StreamConfig::from_json(json!({"bogus": 1}), &t()).unwrap_err();
        assert_eq!(e[0].code, "unknown_field");
        let e = StreamConfig::from_json(json!({"tenantId": "other"}), &t()).unwrap_err();
        assert_eq!(e[0].code, "tenant_mismatch");
        let e = StreamConfig::from_json(json!({"topics": ["evstream.events"]}), &t()).unwrap_err();
        assert_eq!(e[0].code, "reserved_topic");
        let e =
            StreamConfig::from_json(json!({"destinations": [{"type": "kafka", "enabled": false}]}), &t()).unwrap_err();
        assert_eq!(e[0].field, "destinations[0].enabled");
        let e = StreamConfig::from_json(json!({"topics": ["a b"]}), &t()).unwrap_err();
        assert_eq!(e[0].field, "topics[0]");
    }

    #[test]
    fn round_trip() {
        let cfg = StreamConfig {
            compression_enabled: true,
            topics: vec![TopicName::new("x").unwrap()],
            ..Default::default()
        };
        let back = StreamConfig::from_json(serde_json::to_value(&cfg).unwrap(), &t()).unwrap();
        assert_eq!(back, cfg);
    }
}
