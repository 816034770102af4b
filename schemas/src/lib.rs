//! evstream's shared vocabulary: the event envelope, the event-type catalog with its JSON Schemas, and the
//! per-tenant stream configuration. Pure data and validation; no I/O, no async.
//!
//! Layout:
//! - [`ids`]: validated newtypes (`TenantId`, `EventId`, `TopicName`, `SourceName`).
//! - [`catalog`]: the event types and known sources, and the JSON Schema of each type's `data`.
//! - [`event`]: the envelope as stored in Kafka and Redis, [`event::parse_event`] for untrusted input, and the
//!   one-pass reader of bulk bodies ([`event::parse_bulk_text`]).
//! - [`object`]: `data` and `metadata`, held as the client's text where it may be stored as sent.
//! - `encode`: [`Event::to_json`], the envelope's JSON text as the ingest path writes it.
//! - [`config`]: the per-tenant stream configuration (`PUT /stream-config/{tenant}`).
//! - [`policy`]: alert policies (rules, groups, templates), their validation and compiled evaluation.
//! - [`receiver`]: alert receivers (webhook, Slack, PagerDuty, Teams) with secrets that never print.
//! - [`field`]: `FieldError`, the one shape every validation failure takes (field path, code, message).

pub mod catalog;
pub mod cloudevents;
pub mod config;
pub mod encode;
pub mod event;
pub mod field;
pub mod ids;
pub mod object;
pub mod policy;
pub mod receiver;
pub mod scan;

pub use catalog::{Catalog, EventType};
pub use config::StreamConfig;
pub use event::Event;
pub use field::FieldError;
pub use ids::{EventId, SourceName, TenantId, TopicName};
