//! The tag index: for each book, the seqnums of its records, in total, and per tag. It also
//! decides conditional appends and applies trims, so every replica that applies the same
//! ordered entries reaches the same decisions.
//!
//! Pure data structure: no IO, no clocks. Entries must be applied in seqnum order.

use crate::wire::{IndexEntry, RecordKind};
use crate::{BookId, Seqnum, Tag};
use std::collections::{BTreeMap, HashMap};

/// What applying one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record is visible under its tags and `Tag::ANY`.
    Indexed,
    /// A conditional record lost: its stream held `stream_len` records already. Not visible.
    CondFailed { stream_len: u64 },
    /// A trim marker moved trim points; the marker itself is not visible.
    Trimmed,
}

/// One stream: the seqnums that carry a tag (or every seqnum of a book).
#[derive(Debug, Default, Clone)]
struct Stream {
    /// Seqnums at or above the trim point, ascending.
    seqnums: Vec<Seqnum>,
    /// Records ever indexed into the stream, trimmed ones included: positions never move.
    len: u64,
    trimmed_below: Seqnum,
}

impl Stream {
    /// Adds a record; one below the trim point (a trim may name a future seqnum) is counted
    /// for positions but born invisible.
    fn push(&mut self, seqnum: Seqnum) {
        if seqnum >= self.trimmed_below {
            self.seqnums.push(seqnum);
        }
        self.len += 1;
    }

    fn trim(&mut self, below: Seqnum) {
        if below <= self.trimmed_below {
            return;
        }
        self.trimmed_below = below;
        let cut = self.seqnums.partition_point(|s| *s < below);
        self.seqnums.drain(..cut);
    }

    fn next(&self, min: Seqnum) -> Option<Seqnum> {
        let i = self.seqnums.partition_point(|s| *s < min);
        self.seqnums.get(i).copied()
    }

    fn prev(&self, max: Seqnum) -> Option<Seqnum> {
        let i = self.seqnums.partition_point(|s| *s <= max);
        i.checked_sub(1).map(|i| self.seqnums[i])
    }

    fn range(&self, from: Seqnum, to: Seqnum, limit: usize) -> Vec<Seqnum> {
        let start = self.seqnums.partition_point(|s| *s < from);
        self.seqnums[start..]
            .iter()
            .take_while(|s| **s < to)
            .take(limit)
            .copied()
            .collect()
    }
}

#[derive(Debug, Default)]
struct BookIndex {
    all: Stream,
    tags: HashMap<Tag, Stream>,
}

impl BookIndex {
    fn stream(&self, tag: Tag) -> Option<&Stream> {
        if tag == Tag::ANY {
            Some(&self.all)
        } else {
            self.tags.get(&tag)
        }
    }
}

/// The index of every book of one physical log.
#[derive(Debug, Default)]
pub struct TagIndex {
    books: BTreeMap<BookId, BookIndex>,
    /// The seqnum after the last applied entry.
    applied_end: Seqnum,
    records: u64,
}

impl TagIndex {
    pub fn new() -> TagIndex {
        TagIndex::default()
    }

    /// Applies one ordered entry. Entries must come in strictly increasing seqnum order.
    pub fn apply(&mut self, entry: &IndexEntry) -> Applied {
        assert!(
            entry.seqnum >= self.applied_end,
            "index entries out of order: {} after {}",
            entry.seqnum,
            self.applied_end
        );
        self.applied_end = entry.seqnum.next();
        let book = self.books.entry(entry.book).or_default();
        match entry.kind {
            RecordKind::Trim { tag, below } => {
                if tag == Tag::ANY {
                    book.all.trim(below);
                    for stream in book.tags.values_mut() {
                        stream.trim(below);
                    }
                } else {
                    book.tags.entry(tag).or_default().trim(below);
                }
                Applied::Trimmed
            }
            RecordKind::Cond(cond) => {
                let stream_len = book.tags.get(&cond.tag).map_or(0, |s| s.len);
                if stream_len != cond.position {
                    return Applied::CondFailed { stream_len };
                }
                Self::index(book, entry);
                self.records += 1;
                Applied::Indexed
            }
            RecordKind::Data => {
                Self::index(book, entry);
                self.records += 1;
                Applied::Indexed
            }
        }
    }

    fn index(book: &mut BookIndex, entry: &IndexEntry) {
        book.all.push(entry.seqnum);
        for &tag in &entry.tags {
            let stream = book.tags.entry(tag).or_insert_with(|| Stream {
                trimmed_below: book.all.trimmed_below,
                ..Stream::default()
            });
            stream.push(entry.seqnum);
        }
    }

    /// The first visible seqnum with `tag` at or after `min`.
    pub fn next(&self, book: BookId, tag: Tag, min: Seqnum) -> Option<Seqnum> {
        self.books.get(&book)?.stream(tag)?.next(min)
    }

    /// The last visible seqnum with `tag` at or before `max`.
    pub fn prev(&self, book: BookId, tag: Tag, max: Seqnum) -> Option<Seqnum> {
        self.books.get(&book)?.stream(tag)?.prev(max)
    }

    /// Visible seqnums with `tag` in `[from, to)`, at most `limit`.
    pub fn range(
        &self,
        book: BookId,
        tag: Tag,
        from: Seqnum,
        to: Seqnum,
        limit: usize,
    ) -> Vec<Seqnum> {
        self.books
            .get(&book)
            .and_then(|b| b.stream(tag))
            .map_or_else(Vec::new, |s| s.range(from, to, limit))
    }

    /// Whether `seqnum` is a visible record of `book` (not trimmed, not a lost condition).
    pub fn contains(&self, book: BookId, seqnum: Seqnum) -> bool {
        self.books
            .get(&book)
            .is_some_and(|b| b.all.seqnums.binary_search(&seqnum).is_ok())
    }

    /// The trim point of `book` as a whole.
    pub fn trimmed_below(&self, book: BookId) -> Seqnum {
        self.books
            .get(&book)
            .map_or(Seqnum::ZERO, |b| b.all.trimmed_below)
    }

    /// How many records `tag`'s stream has ever held (the next conditional position).
    pub fn stream_len(&self, book: BookId, tag: Tag) -> u64 {
        self.books
            .get(&book)
            .and_then(|b| b.stream(tag))
            .map_or(0, |s| s.len)
    }

    /// The seqnum after the last applied entry.
    pub fn applied_end(&self) -> Seqnum {
        self.applied_end
    }

    /// Visible and trimmed records indexed so far.
    pub fn record_count(&self) -> u64 {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cond;

    fn data(seqnum: u64, book: u32, tags: &[u64]) -> IndexEntry {
        IndexEntry {
            seqnum: Seqnum(seqnum),
            book: BookId(book),
            tags: tags.iter().map(|t| Tag(*t)).collect(),
            kind: RecordKind::Data,
        }
    }

    fn cond(seqnum: u64, tag: u64, position: u64) -> IndexEntry {
        IndexEntry {
            kind: RecordKind::Cond(Cond {
                tag: Tag(tag),
                position,
            }),
            ..data(seqnum, 0, &[tag])
        }
    }

    #[test]
    fn tag_streams_hold_only_their_records() {
        let mut index = TagIndex::new();
        index.apply(&data(1, 0, &[5]));
        index.apply(&data(2, 0, &[6]));
        index.apply(&data(3, 0, &[5, 6]));
        assert_eq!(
            index.range(BookId(0), Tag(5), Seqnum(0), Seqnum::MAX, 10),
            vec![Seqnum(1), Seqnum(3)]
        );
        assert_eq!(
            index
                .range(BookId(0), Tag::ANY, Seqnum(0), Seqnum::MAX, 10)
                .len(),
            3
        );
        assert_eq!(index.next(BookId(0), Tag(6), Seqnum(3)), Some(Seqnum(3)));
        assert_eq!(index.prev(BookId(0), Tag(6), Seqnum(2)), Some(Seqnum(2)));
        assert_eq!(index.prev(BookId(0), Tag(5), Seqnum(0)), None);
        assert_eq!(index.next(BookId(1), Tag::ANY, Seqnum(0)), None);
    }

    #[test]
    fn cond_append_wins_only_at_its_position() {
        let mut index = TagIndex::new();
        assert_eq!(index.apply(&cond(1, 9, 0)), Applied::Indexed);
        assert_eq!(
            index.apply(&cond(2, 9, 0)),
            Applied::CondFailed { stream_len: 1 }
        );
        assert_eq!(index.apply(&cond(3, 9, 1)), Applied::Indexed);
        assert!(!index.contains(BookId(0), Seqnum(2)));
        assert_eq!(index.stream_len(BookId(0), Tag(9)), 2);
    }

    #[test]
    fn trim_hides_prefix_but_keeps_positions() {
        let mut index = TagIndex::new();
        index.apply(&data(1, 0, &[5]));
        index.apply(&data(2, 0, &[5]));
        let trim = IndexEntry {
            kind: RecordKind::Trim {
                tag: Tag::ANY,
                below: Seqnum(2),
            },
            ..data(3, 0, &[])
        };
        assert_eq!(index.apply(&trim), Applied::Trimmed);
        assert_eq!(index.next(BookId(0), Tag(5), Seqnum(0)), Some(Seqnum(2)));
        assert_eq!(index.stream_len(BookId(0), Tag(5)), 2);
        assert!(
            !index.contains(BookId(0), Seqnum(3)),
            "a trim marker is not a record"
        );
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn entries_out_of_order_are_a_programming_error() {
        let mut index = TagIndex::new();
        index.apply(&data(5, 0, &[]));
        index.apply(&data(4, 0, &[]));
    }
}
