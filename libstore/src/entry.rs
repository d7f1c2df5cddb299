//! The records libstore writes, the aux data it caches on them, and the tags that name an
//! object's stream.
//!
//! An object's **stream** (`object_tag`) holds every record that may change it: writes
//! (`Entry::Ops`), the commit records of interactive transactions and the records of one-shot
//! transactions that write it, and checkpoints of its view. The object's document after a
//! seqnum is what replaying its stream up to that seqnum gives; every reader replays alike.
//! Records and aux data are JSON.
//!
//! Other streams: a keyed record is also in its key's stream (`key_tag`), where a reader finds
//! the first record of a key; collections write marks (`marks_tag`) and each collected
//! object's base, its view just below the horizon (`base_tag`).

use crate::oneshot::OneShot;
use crate::path::Op;
use crate::Isolation;
use logbook::{Seqnum, Tag};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// An object's address: a key in a collection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId {
    pub collection: String,
    pub key: String,
}

/// Longest collection name or key, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

impl ObjectId {
    /// The object `key` of `collection`.
    pub fn new(collection: &str, key: &str) -> ObjectId {
        ObjectId {
            collection: collection.into(),
            key: key.into(),
        }
    }

    /// Checks the names: non-empty, at most `NAME_BYTES_MAX` bytes.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        for (what, name) in [("collection", &self.collection), ("key", &self.key)] {
            if name.is_empty() || name.len() > NAME_BYTES_MAX {
                return Err(crate::Error::Invalid(format!(
                    "a {what} name is 1 to {NAME_BYTES_MAX} bytes, got {}",
                    name.len()
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.key)
    }
}

/// An object as of a seqnum: its document and its version (the seqnum of the record that
/// last changed it; 0 if none did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub doc: Option<Value>,
    pub version: Seqnum,
}

impl View {
    /// An object no record changed.
    pub fn empty() -> View {
        View {
            doc: None,
            version: Seqnum::ZERO,
        }
    }

    /// The value at `path` (`""`: the whole document), or `None` if the path is missing;
    /// `Error::BadPath` if it is malformed or leads through a number or a string.
    pub fn get(&self, path: &str) -> Result<Option<&Value>, crate::Error> {
        crate::path::get(self.doc.as_ref(), path)
    }
}

/// One record of libstore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// Path operations on one object, all or none. The writer's document limit travels with
    /// the record, so every reader decides alike whether the result fits.
    Ops {
        object: ObjectId,
        ops: Vec<Op>,
        document_bytes_max: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// An interactive transaction's commit record.
    Commit(Commit),
    /// A one-shot transaction, applied at its position.
    OneShot {
        transaction: OneShot,
        document_bytes_max: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// The object's view as of `as_of` (a seqnum below this record's): a replay may start
    /// here, applying the stream's records after `as_of`.
    Checkpoint {
        object: ObjectId,
        as_of: Seqnum,
        view: View,
    },
    /// A collection's mark, in the marks stream: the time it was made, and the horizon it
    /// declares (below it, object streams are trimmed, and a key's first record is not
    /// looked for by the records after this mark).
    Mark { at_ms: u64, horizon: Seqnum },
}

impl Entry {
    /// The key of a keyed write or transaction.
    pub fn key(&self) -> Option<&str> {
        match self {
            Entry::Ops { key, .. } | Entry::OneShot { key, .. } => key.as_deref(),
            Entry::Commit(commit) => commit.key.as_deref(),
            Entry::Checkpoint { .. } | Entry::Mark { .. } => None,
        }
    }
}

/// An interactive transaction's commit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Commit {
    pub snapshot: Seqnum,
    pub isolation: Isolation,
    /// Every object the transaction read or wrote, with its version at the snapshot.
    pub touched: Vec<Touched>,
    /// The new document of each written object (`None`: deleted).
    pub writes: Vec<Written>,
    /// The transaction's key, if it was begun by a keyed store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Touched {
    pub object: ObjectId,
    pub version: Seqnum,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Written {
    pub object: ObjectId,
    pub doc: Option<Value>,
}

impl Commit {
    /// The objects whose versions must not have changed between the snapshot and the commit
    /// record for the transaction to commit: what it read and wrote (serializable), or what
    /// it wrote (snapshot isolation).
    pub fn validated(&self) -> impl Iterator<Item = &Touched> {
        self.touched.iter().filter(|t| match self.isolation {
            Isolation::Serializable => true,
            Isolation::Snapshot => self.writes.iter().any(|w| w.object == t.object),
        })
    }
}

/// How a transaction's record was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Decision {
    Committed,
    Aborted(String),
    /// A keyed record whose key's first record is at this seqnum: it changes nothing.
    Duplicate(Seqnum),
}

/// A view as the caches keep it: with its depth, the records replayed on top of the newest
/// checkpoint (or the stream's start) to reach it. A view deeper than
/// `Settings::checkpoint_every` gets a checkpoint appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cached {
    #[serde(flatten)]
    pub view: View,
    pub depth: u64,
}

/// The cache attached to a record: the views of the objects it changed (after it), and the
/// decision of a transaction record. Only ever a cache: any of it may be missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Aux {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<(ObjectId, Cached)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

impl Aux {
    /// The aux data of a record, or an empty one if it has none or it cannot be read (a
    /// cache that fails to parse is dropped, never trusted).
    pub fn of(aux: Option<&bytes::Bytes>) -> Aux {
        aux.and_then(|a| serde_json::from_slice(a).ok())
            .unwrap_or_default()
    }

    pub fn view(&self, object: &ObjectId) -> Option<&Cached> {
        self.views.iter().find(|(o, _)| o == object).map(|(_, v)| v)
    }

    /// Adds (or replaces) an object's view.
    pub fn put_view(&mut self, object: &ObjectId, view: Cached) {
        self.views.retain(|(o, _)| o != object);
        self.views.push((object.clone(), view));
    }
}

/// The stream of an object: every record that may change it.
pub fn object_tag(object: &ObjectId) -> Tag {
    Tag::named(&["libstore", "object", &object.collection, &object.key])
}

/// The stream of key `key`: every keyed record that carries it.
pub fn key_tag(key: &str) -> Tag {
    Tag::named(&["libstore", "key", key])
}

/// The stream of collections' marks.
pub fn marks_tag() -> Tag {
    Tag::named(&["libstore", "marks"])
}

/// The stream of an object's bases: its view just below a collection's horizon.
pub fn base_tag(object: &ObjectId) -> Tag {
    Tag::named(&["libstore", "base", &object.collection, &object.key])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_tags_are_stable_and_distinct() {
        let a = ObjectId::new("accounts", "a1");
        assert_eq!(object_tag(&a), object_tag(&a.clone()));
        assert_ne!(object_tag(&a), object_tag(&ObjectId::new("accounts", "a2")));
        assert_ne!(
            object_tag(&ObjectId::new("ab", "c")),
            object_tag(&ObjectId::new("a", "bc"))
        );
        // The names are part of the log's format: they must never change.
        assert_eq!(
            object_tag(&ObjectId::new("c", "k")),
            Tag(0xb7fc_9e47_3b05_704c)
        );
    }

    #[test]
    fn an_entry_round_trips_through_json() {
        let entry = Entry::Ops {
            object: ObjectId::new("c", "k"),
            ops: vec![
                Op::add("/n", 2),
                Op::push("/l", serde_json::json!(1), Some(3)),
            ],
            document_bytes_max: 10,
            key: Some("step#0".into()),
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        assert_eq!(serde_json::from_slice::<Entry>(&bytes).unwrap(), entry);
    }
}
