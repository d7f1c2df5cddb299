//! Records as readers see them, and append requests as writers send them.

use crate::{BookId, Seqnum, Tag};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A record of a book, as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seqnum: Seqnum,
    pub book: BookId,
    pub tags: Vec<Tag>,
    pub data: Bytes,
    /// A cache the libraries attach to a record; never part of the log's truth.
    pub aux: Option<Bytes>,
}

/// The condition of a conditional append: the record must land at `position` (0-based) of
/// `tag`'s stream in its book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cond {
    pub tag: Tag,
    pub position: u64,
}

impl Cond {
    /// The record must land at `position` of `tag`'s stream.
    pub fn at(tag: Tag, position: u64) -> Cond {
        Cond { tag, position }
    }
}

/// One record to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    pub tags: Vec<Tag>,
    pub data: Bytes,
}

impl AppendRequest {
    pub fn new(tags: impl Into<Vec<Tag>>, data: impl Into<Bytes>) -> AppendRequest {
        AppendRequest {
            tags: tags.into(),
            data: data.into(),
        }
    }
}
