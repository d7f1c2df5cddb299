//! An object's history: every record of its stream that tried to change it, oldest first,
//! with what it did and the document after it (the time-travel view). Checkpoints are not
//! changes and are left out. Computed by `Object::history` with the same replay every reader
//! does, so the history is the same everywhere.

use crate::entry::{Commit, ObjectId};
use crate::path::Op;
use logbook::Seqnum;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most changes one `Object::history` call returns.
pub const HISTORY_LIMIT_MAX: usize = 1000;
/// Bytes of documents one `Object::history` call returns at most (beyond the first change):
/// a page stops early, with `next` set, rather than grow past it.
pub const HISTORY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What kind of record a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Path operations on the object (`Object::apply`, `set`, `fetch_add`, ...).
    Write,
    /// An interactive transaction's commit record that writes the object.
    Transaction,
    /// A one-shot transaction that writes the object.
    Oneshot,
}

/// One change of an object. In JSON: `{"seqnum": .., "kind": "write", "ops": [..],
/// "applied": true, "doc": ..}`, with `"reason"` when it was not applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The record's position in the log.
    pub seqnum: Seqnum,
    pub kind: ChangeKind,
    /// What it did to this object: its path operations (an interactive transaction sets the
    /// whole document, `""`, or deletes it).
    pub ops: Vec<Op>,
    /// Whether it took effect: a write that failed (a bad path, a type mismatch) or a
    /// transaction that aborted did not, and left the document as it was.
    pub applied: bool,
    /// Why it did not take effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The document after the record (`None`: there is none).
    pub doc: Option<Value>,
}

/// A page of an object's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Oldest first.
    pub changes: Vec<Change>,
    /// Where the next page starts (pass it as `after`), if there may be more.
    pub next: Option<Seqnum>,
}

/// The operations a commit record applies to `object`, if it writes it.
pub(crate) fn commit_ops(commit: &Commit, object: &ObjectId) -> Option<Vec<Op>> {
    let written = commit.writes.iter().find(|w| &w.object == object)?;
    Some(vec![match &written.doc {
        Some(doc) => Op::set("", doc.clone()),
        None => Op::delete(""),
    }])
}
