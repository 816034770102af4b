//! The Cosmos DB change-feed source: every changed document of a configured container becomes one tenant event on
//! the same producer path as `POST /events`.
//!
//! Layout:
//! - [`mapping`]: per-container mapping (tenant field, entity type, which event type a change becomes) and the pure
//!   function that turns one change into an event envelope, or into an [`mapping::Unmapped`] reason for the
//!   dead-letter topic. Event ids are derived from (container, document id, `_etag`/`_ts`), so a replayed change gets
//!   the id it had the first time and the ingest dedup drops it.
//!
//! The feed reader itself (feed ranges, checkpoints, leases) is not built yet.

pub mod mapping;

pub use mapping::{map_change, Change, ContainerMapping, Operation, Unmapped};
