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
/// `tag`'s stream in its book, and, if `after` is not 0, right after a record of that stream
/// written with token `after`.
///
/// Tokens let one writer pipeline a chain of conditional appends: each names the writer's
/// token as `after`, so once one of them loses its position to another writer, every later
/// one loses too, instead of landing behind the other writer's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cond {
    pub tag: Tag,
    pub position: u64,
    /// The writer's token, kept with the record as the stream's newest (0: none).
    #[serde(default)]
    pub token: u64,
    /// The token the stream's previous record must carry (0: any record, or none).
    #[serde(default)]
    pub after: u64,
}

impl Cond {
    /// The record must land at `position` of `tag`'s stream.
    pub fn at(tag: Tag, position: u64) -> Cond {
        Cond {
            tag,
            position,
            token: 0,
            after: 0,
        }
    }

    /// Like `at`, and the record carries `token`; if `after` is not 0, the stream's record
    /// at `position - 1` must carry `after`.
    pub fn chained(tag: Tag, position: u64, token: u64, after: u64) -> Cond {
        Cond {
            tag,
            position,
            token,
            after,
        }
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
