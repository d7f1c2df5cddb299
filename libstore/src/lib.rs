//! libstore: durable JSON objects on the log, with transactions decided by the log alone.
//!
//! An object (a key in a collection) is a JSON document whose every change is a record in the
//! object's stream of the log (`object_tag`). Every reader replays the stream the same way, so
//! the log's order is the objects' order:
//!
//! - Path operations (`Object::set`, `fetch_add`, `push`, `compare_and_set`, ...) append one
//!   record and read the object up to it: each is linearized by its record's position.
//! - One-shot transactions (`Store::run`, Calvin and Styx style) declare their objects and
//!   carry their logic as data (`OneShot`); every reader applies them at their position, so
//!   conflicting ones queue instead of aborting.
//! - Interactive transactions (`Store::begin`) read one snapshot and commit with one record
//!   that every reader validates alike: serializable by default, snapshot isolation on request.
//!
//! A keyed store (`Store::keyed`) puts a key in each record it appends; every reader applies
//! only the first record of a key, so a workflow step that runs again changes nothing twice.
//! `Store::collect` trims versions older than a retention, keeping a base view per object.
//!
//! Views are cached in aux data and checkpointed in the log, so reads replay a bounded suffix;
//! aux data is only a cache. libstore depends on `logbook` and the SDK only: it runs wherever a
//! function runs, over the `Ctx` of the call.

/// The README's example compiles.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod entry;
mod error;
mod history;
mod oneshot;
mod path;
mod store;
mod txn;

pub use entry::{key_tag, object_tag, ObjectId, View, NAME_BYTES_MAX};
pub use error::Error;
pub use history::{Change, ChangeKind, History, HISTORY_BYTES_MAX, HISTORY_LIMIT_MAX};
pub use oneshot::{Condition, OneShot, Read, Test, Write, ONESHOT_ITEMS_MAX};
pub use path::{Op, PATH_BYTES_MAX};
pub use store::{
    Collected, Collection, Object, Settings, Stats, Store, Stores, BOOKS_CACHED_MAX,
    DECISIONS_CACHED_MAX, KEY_PREFIX_BYTES_MAX, OPS_PER_WRITE_MAX, RECORDS_CACHED_MAX,
    TXN_OBJECTS_MAX, VERSIONS_CACHED_MAX, VIEWS_CACHED_MAX,
};
pub use txn::{Isolation, Outcome, Transaction};
