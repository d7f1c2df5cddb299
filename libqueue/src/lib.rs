//! libqueue: queues on the log, decided by the log alone.
//!
//! A push is one append to its shard's stream. A pop appends a pop record to its group's
//! stream and then replays the group's records in log order: each pop record takes the
//! earliest message of the shard that is neither acked nor in flight, so the log's order gives
//! each message to one pop at a time, with no lock and no coordinator, and every reader
//! decides alike. Visibility timeouts are decided from the times the records carry, never
//! from a reader's clock; after `max_deliveries` a message becomes a dead letter.
//!
//! Group states are cached in aux data and checkpointed in the log, so a pop replays a
//! bounded suffix; `Queue::trim` reclaims what every group is done with. libqueue depends on
//! `logbook` and the SDK only: it runs wherever a function runs, over the `Ctx` of the call.

/// The README's example compiles.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod entry;
mod error;
mod group;
mod queue;

pub use entry::MessageId;
pub use error::Error;
pub use group::{
    Delivery, Group, GroupStats, Message, ReplayStats, Settings, DEAD_LETTERS_LISTED_MAX,
    MAX_DELIVERIES_MAX, VISIBILITY_TIMEOUT_MAX,
};
pub use queue::{
    Clock, Options, Queue, SystemClock, TrimReport, MESSAGE_BYTES_MAX, NAME_BYTES_MAX,
    PUSH_BATCH_MAX, SHARDS_MAX,
};
