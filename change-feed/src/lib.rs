//! The Cosmos DB change-feed source: every changed document of a configured container becomes one tenant event on
//! the same producer path as `POST /events`.
//!
//! Layout:
//! - [`config`]: the change-feed file (account, auth, start position, tuning, container mappings).
//! - [`mapping`]: per-container mapping (tenant field, entity type, which event type a change becomes) and the pure
//!   function that turns one change into an event envelope, or into an [`mapping::Unmapped`] reason for the
//!   dead-letter topic. Event ids are derived from (container, document id, `_etag`/`_ts`), so a replayed change gets
//!   the id it had the first time and the ingest dedup drops it.
//! - [`reader`]: one task per leased feed range: pages -> events -> Kafka ack -> checkpoint.
//! - [`lease`]: feed-range leases and checkpoints in Redis (fenced: only the lease holder moves a checkpoint).
//! - [`client`], [`entra`]: the Cosmos DB client (key or Entra ID auth).

pub mod client;
pub mod config;
pub mod entra;
pub mod lease;
pub mod mapping;
pub mod reader;

pub use config::ChangeFeedFile;
pub use mapping::{map_change, Change, ContainerMapping, Operation, Unmapped};
pub use reader::{run, ChangeFeedError};
