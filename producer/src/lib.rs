//! evstream's ingest path: one place where an event is accepted and one where it is acknowledged.
//!
//! Layout:
//! - [`pipeline`]: `Pipeline::ingest` runs validate -> enrich -> filter -> route -> sinks and returns the broker's ack.
//! - [`idempotency`]: a repeated event id or `Idempotency-Key` returns the first result (state in Redis).
//! - [`quota`]: per-tenant events/s and bytes/s token buckets (state in Redis).
//! - [`enrich`]: server-side fields (`id`, `receivedAt`, `schemaVersion`, `correlationId`).
//! - [`route`]: which topics an event goes to, and the Kafka record headers (CloudEvents Kafka binding).
//! - [`sinks`]: `kafka` (rdkafka, idempotent, acks=all) and `redis_stream` (pipelined `XADD` per tenant).
//! - [`dead_letter`]: rejected events and undeliverable ones, with a reason code, on `evstream.deadletter`.
//! - [`config_log`]: tenants, API keys and stream configs in a compacted topic every instance replays and tails.
//! - [`redis_conn`]: the shared Redis connection: starts without Redis, reconnects, and stops asking it for a moment
//!   after a failure (circuit breaker).
//! - [`tenant_stats`]: per-tenant rates, rejects and latency in Redis, shared by all instances.
//! - [`topics`]: creating the topics evstream needs.
//! - [`alerts`]: alert state in Redis and alert transitions on the alerts topic (shared by the alert stream and the API).
//! - [`audit`]: the hash-chained audit trail of configuration and alert actions, and its verification.
//! - [`metric_names`]: every Prometheus metric name, in one place.

pub mod alerts;
pub mod audit;
pub mod config_log;
pub mod dead_letter;
pub mod enrich;
pub mod idempotency;
pub mod metric_names;
pub mod pipeline;
pub mod quota;
pub mod redis_conn;
pub mod route;
pub mod sinks;
pub mod tenant_stats;
pub mod topics;

pub use pipeline::{
    Accepted, Document, IngestError, ItemTexts, Outcome, Parts, Pipeline, PipelineConfig, RequestContext, Scope,
};

/// Makes rustls (ring) the process's TLS provider, so every https client (reqwest for receivers and Cosmos DB,
/// lettre's STARTTLS) can be built. Call before building one; calling again does nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The current time in RFC 3339 (UTC), as every record and document of evstream writes it.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
