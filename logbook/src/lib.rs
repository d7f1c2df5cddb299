//! Tally's vocabulary and contract: the ids every role shares (`BookId`, `Tag`, `Seqnum`,
//! `ViewId`), the `Record`, the `LogBook` trait every log implementation provides, the errors
//! callers branch on, and the wire messages the ordering protocol exchanges between roles.
//!
//! This crate does no IO. With the `testkit` feature it also carries an in-memory `LogBook`
//! and the conformance suite that every implementation must pass; only that feature pulls in
//! tokio (for timers and wake-ups).

mod book;
mod error;
mod ids;
mod index;
mod record;
pub mod wire;

#[cfg(feature = "rpc")]
pub mod rpc;

#[cfg(feature = "testkit")]
pub mod conformance;
#[cfg(feature = "testkit")]
pub mod crashing;
#[cfg(feature = "testkit")]
pub mod memory;
#[cfg(feature = "testkit")]
pub mod testing;

pub use book::{
    validate_append, validate_aux, validate_batch, validate_batch_len, validate_cond,
    validate_range, validate_timeout, LogBook, ReadBudget, ReadRange,
};
pub use error::LogError;
pub use ids::{BookId, Seqnum, Tag, ViewId};
pub use index::{
    Applied, BookCheckpoint, BookSummary, IndexCheckpoint, StreamCheckpoint, TagIndex,
};
pub use record::{AppendRequest, Cond, Record};

/// Largest payload a record may carry, in bytes (Boki's limit was 2,496 B).
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Largest aux data attached to a record, in bytes.
pub const AUX_BYTES_MAX: usize = 1024 * 1024;
/// Most tags one record may carry.
pub const TAGS_PER_RECORD_MAX: usize = 16;
/// Most records one `append_batch` call may carry.
pub const BATCH_RECORDS_MAX: usize = 1024;
/// Most records one `read_range` call returns.
pub const READ_RANGE_RECORDS_MAX: usize = 10_000;
/// Most data bytes one `read_range` call returns: it stops before the record that would pass
/// this, but always returns at least one record when there is one.
pub const READ_RANGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest a blocking read may wait, in milliseconds.
pub const READ_BLOCKING_TIMEOUT_MS_MAX: u64 = 60_000;
