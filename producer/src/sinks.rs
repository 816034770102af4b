//! Sinks: where accepted events are written.
//! - [`kafka`]: the system of record; its acknowledgement is what `POST /events` waits for.
//! - [`redis_stream`]: the per-tenant real-time window, written after the Kafka ack, pipelined in batches.

pub mod kafka;
pub mod redis_stream;
