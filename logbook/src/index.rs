//! The tag index: for each book, the seqnums of its records, in total, and per tag. It also
//! decides conditional appends and applies trims, so every replica that applies the same
//! ordered entries reaches the same decisions.
//!
//! Pure data structure: no IO, no clocks. Entries must be applied in seqnum order.

use crate::wire::{IndexEntry, RecordKind};
use crate::{BookId, Seqnum, Tag};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What applying one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record is visible under its tags and `Tag::ANY`.
    Indexed,
    /// A conditional record lost: its stream held `stream_len` records already, or its
    /// newest record did not carry the token the condition names. Not visible.
    CondFailed { stream_len: u64 },
    /// A trim marker moved trim points; the marker itself is not visible.
    Trimmed,
}

/// One stream: the seqnums that carry a tag (or every seqnum of a book).
#[derive(Debug, Default, Clone)]
struct Stream {
    /// Indexed seqnums, ascending, from the last compaction on. Those below `trimmed_below`
    /// are invisible; compaction drops them once their segments are reclaimed.
    seqnums: Vec<Seqnum>,
    /// Records dropped from the front by compaction: positions never move.
    compacted: u64,
    trimmed_below: Seqnum,
    /// The token of the stream's newest record (`Cond::token`; 0 for a plain record).
    last_token: u64,
    /// A book's stream of every record only (empty for a tag's): per seqnum, in how many of
    /// its tags' streams the record is still visible (`UNTAGGED` for a record without tags).
    /// A tagged record visible in none of them is gone from this stream too.
    live: Vec<u8>,
}

/// `Stream::live` of a record without tags: only a trim of the whole book hides it.
const UNTAGGED: u8 = u8::MAX;

impl Stream {
    fn len(&self) -> u64 {
        self.compacted + self.seqnums.len() as u64
    }

    fn push(&mut self, seqnum: Seqnum, token: u64) {
        self.seqnums.push(seqnum);
        self.last_token = token;
    }

    fn trim(&mut self, below: Seqnum) {
        self.trimmed_below = self.trimmed_below.max(below);
    }

    /// Where the seqnums at or above the trim point start.
    fn first_visible(&self) -> usize {
        self.seqnums.partition_point(|s| *s < self.trimmed_below)
    }

    /// Whether the record at index `i` of `seqnums`, at or above the trim point, is visible:
    /// in a tag's stream always, in a book's while some stream of its tags shows it.
    fn alive(&self, i: usize) -> bool {
        self.live.get(i).is_none_or(|&l| l != 0)
    }

    /// The indexes of the visible seqnums at or after `start`.
    fn visible_from(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        (start.max(self.first_visible())..self.seqnums.len()).filter(|&i| self.alive(i))
    }

    fn next(&self, min: Seqnum) -> Option<Seqnum> {
        let start = self.seqnums.partition_point(|s| *s < min);
        self.visible_from(start).next().map(|i| self.seqnums[i])
    }

    /// The newest visible seqnum at or below `max`. Readers ask mostly for records near the
    /// stream's end, so the search gallops back from it: steps of 1, 2, 4, ... until one lands
    /// at or below `max`, then a binary search between the last two steps.
    fn prev(&self, max: Seqnum) -> Option<Seqnum> {
        let seqnums = &self.seqnums;
        // Every seqnum at `hi` or above is above `max`; every one below `lo` is at or below.
        let (mut lo, mut hi, mut step) = (0, seqnums.len(), 1);
        while hi > 0 {
            let probe = hi.saturating_sub(step);
            if seqnums[probe] <= max {
                lo = probe;
                break;
            }
            hi = probe;
            step *= 2;
        }
        let end = lo + seqnums[lo..hi].partition_point(|s| *s <= max);
        (0..end)
            .rev()
            .take_while(|&i| seqnums[i] >= self.trimmed_below)
            .find(|&i| self.alive(i))
            .map(|i| seqnums[i])
    }

    fn range(&self, from: Seqnum, to: Seqnum, limit: usize) -> Vec<Seqnum> {
        let start = self.seqnums.partition_point(|s| *s < from);
        self.visible_from(start)
            .map(|i| self.seqnums[i])
            .take_while(|s| *s < to)
            .take(limit)
            .collect()
    }

    fn contains(&self, seqnum: Seqnum) -> bool {
        seqnum >= self.trimmed_below
            && self
                .seqnums
                .binary_search(&seqnum)
                .is_ok_and(|i| self.alive(i))
    }

    /// One stream of the record at `seqnum` no longer shows it (a book's stream only).
    fn hide_in_one_stream(&mut self, seqnum: Seqnum) {
        if let Ok(i) = self.seqnums.binary_search(&seqnum) {
            let live = &mut self.live[i];
            if *live != UNTAGGED {
                *live = live.saturating_sub(1);
            }
        }
    }

    /// Records below `below`, compacted or not.
    fn len_below(&self, below: Seqnum) -> u64 {
        self.compacted + self.seqnums.partition_point(|s| *s < below) as u64
    }

    fn compact(&mut self, below: Seqnum) {
        let cut = self.seqnums.partition_point(|s| *s < below);
        self.seqnums.drain(..cut);
        self.live.drain(..cut.min(self.live.len()));
        self.compacted += cut as u64;
    }

    fn checkpoint(&self, below: Seqnum) -> StreamCheckpoint {
        // Records at or above `below` are replayed over the checkpoint and set the newest
        // token again; only a stream whose newest record is below it needs its token kept.
        let newest_below = self.seqnums.last().is_none_or(|s| *s < below);
        StreamCheckpoint {
            len: self.len_below(below),
            trimmed_below: self.trimmed_below,
            last_token: if newest_below { self.last_token } else { 0 },
        }
    }

    fn from_checkpoint(cp: &StreamCheckpoint) -> Stream {
        Stream {
            seqnums: Vec::new(),
            compacted: cp.len,
            trimmed_below: cp.trimmed_below,
            last_token: cp.last_token,
            live: Vec::new(),
        }
    }
}

/// What the index must remember of the records below a checkpoint once their segments are
/// gone: each stream's length (conditional appends count positions from the first record) and
/// trim point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexCheckpoint {
    /// The records below this seqnum are summarised here; those at or above it are replayed.
    pub below: Seqnum,
    pub books: Vec<BookCheckpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookCheckpoint {
    pub book: BookId,
    pub all: StreamCheckpoint,
    pub tags: Vec<(Tag, StreamCheckpoint)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    pub len: u64,
    pub trimmed_below: Seqnum,
    /// The token of the newest record below the checkpoint (`Cond::token`).
    #[serde(default)]
    pub last_token: u64,
}

#[derive(Debug, Default)]
struct BookIndex {
    all: Stream,
    tags: HashMap<Tag, Stream>,
}

impl BookIndex {
    /// A tag's stream, created on first use under the book's trim point.
    fn stream_mut(&mut self, tag: Tag) -> &mut Stream {
        let trimmed_below = self.all.trimmed_below;
        self.tags.entry(tag).or_insert_with(|| Stream {
            trimmed_below,
            ..Stream::default()
        })
    }

    fn stream(&self, tag: Tag) -> Option<&Stream> {
        if tag == Tag::ANY {
            Some(&self.all)
        } else {
            self.tags.get(&tag)
        }
    }
}

/// A book as `TagIndex::books` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookSummary {
    pub book: BookId,
    /// Records its stream of every record has held (trimmed ones included).
    pub records: u64,
    /// Tags with a stream.
    pub tags: usize,
    /// Below this seqnum, the whole book is trimmed.
    pub trimmed_below: Seqnum,
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
                    // The records this trim hides leave the book's stream once no stream
                    // of theirs shows them.
                    let stream = book.stream_mut(tag);
                    let from = stream.first_visible();
                    let hidden: Vec<Seqnum> = stream.seqnums[from..]
                        .iter()
                        .take_while(|s| **s < below)
                        .copied()
                        .collect();
                    stream.trim(below);
                    for seqnum in hidden {
                        book.all.hide_in_one_stream(seqnum);
                    }
                }
                Applied::Trimmed
            }
            RecordKind::Cond(cond) => {
                let stream = book.tags.get(&cond.tag);
                let stream_len = stream.map_or(0, Stream::len);
                let last_token = stream.map_or(0, |s| s.last_token);
                if stream_len != cond.position || (cond.after != 0 && last_token != cond.after) {
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
        let mut live = 0u8;
        for &tag in &entry.tags {
            let token = match entry.kind {
                RecordKind::Cond(c) if c.tag == tag => c.token,
                _ => 0,
            };
            let stream = book.stream_mut(tag);
            stream.push(entry.seqnum, token);
            // A stream trimmed past it (restored from a checkpoint) never shows it.
            if stream.trimmed_below <= entry.seqnum {
                live = live.saturating_add(1);
            }
        }
        book.all.push(entry.seqnum, 0);
        book.all.live.push(if entry.tags.is_empty() {
            UNTAGGED
        } else {
            live.min(UNTAGGED - 1)
        });
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

    /// Whether `seqnum` is a visible record of `book`: not trimmed, not a lost condition, and
    /// shown by some stream of its tags if it has any.
    pub fn contains(&self, book: BookId, seqnum: Seqnum) -> bool {
        self.books
            .get(&book)
            .is_some_and(|b| b.all.contains(seqnum))
    }

    /// Whether the record at `seqnum`, of whatever book, is still visible; a seqnum the index
    /// has not reached yet counts as visible.
    pub fn shows(&self, seqnum: Seqnum) -> bool {
        seqnum >= self.applied_end || self.books.values().any(|b| b.all.contains(seqnum))
    }

    /// The trim point of `book` as a whole.
    pub fn trimmed_below(&self, book: BookId) -> Seqnum {
        self.books
            .get(&book)
            .map_or(Seqnum::ZERO, |b| b.all.trimmed_below)
    }

    /// Every book with a record, and how many records it and its tags' streams have held.
    pub fn books(&self) -> Vec<BookSummary> {
        self.books
            .iter()
            .map(|(book, index)| BookSummary {
                book: *book,
                records: index.all.len(),
                tags: index.tags.len(),
                trimmed_below: index.all.trimmed_below,
            })
            .collect()
    }

    /// The tags of `book` after `after` (all, for `None`), in tag order, at most `limit`, each
    /// with how many records its stream has held.
    pub fn tags(&self, book: BookId, after: Option<Tag>, limit: usize) -> Vec<(Tag, u64)> {
        let Some(index) = self.books.get(&book) else {
            return Vec::new();
        };
        // The streams are hashed: one pass picks the `limit` smallest tags after `after`.
        let mut tags: Vec<(Tag, u64)> = index
            .tags
            .iter()
            .filter(|(tag, _)| after.is_none_or(|after| **tag > after))
            .map(|(tag, stream)| (*tag, stream.len()))
            .collect();
        if tags.len() > limit {
            tags.select_nth_unstable(limit);
            tags.truncate(limit);
        }
        tags.sort_unstable();
        tags
    }

    /// How many records `tag`'s stream has ever held (the next conditional position).
    pub fn stream_len(&self, book: BookId, tag: Tag) -> u64 {
        self.books
            .get(&book)
            .and_then(|b| b.stream(tag))
            .map_or(0, Stream::len)
    }

    /// The highest seqnum below which no record of any book is visible: segments holding
    /// only records below it may be deleted once a checkpoint summarises them.
    pub fn reclaimable_below(&self) -> Seqnum {
        self.books
            .values()
            .filter_map(|b| b.all.next(Seqnum::ZERO))
            .min()
            .unwrap_or(self.applied_end)
    }

    /// Summarises the records below `below` (at most `reclaimable_below()`).
    pub fn checkpoint(&self, below: Seqnum) -> IndexCheckpoint {
        assert!(
            below <= self.reclaimable_below(),
            "checkpoint at {below} would forget visible records"
        );
        let books = self
            .books
            .iter()
            .map(|(&book, b)| {
                let mut tags: Vec<(Tag, StreamCheckpoint)> = b
                    .tags
                    .iter()
                    .map(|(&tag, s)| (tag, s.checkpoint(below)))
                    .collect();
                tags.sort_by_key(|(tag, _)| *tag);
                BookCheckpoint {
                    book,
                    all: b.all.checkpoint(below),
                    tags,
                }
            })
            .collect();
        IndexCheckpoint { below, books }
    }

    /// Drops the seqnums below `below` from memory; they must be invisible already.
    pub fn compact(&mut self, below: Seqnum) {
        assert!(
            below <= self.reclaimable_below(),
            "compaction at {below} would drop visible records"
        );
        for book in self.books.values_mut() {
            book.all.compact(below);
            for stream in book.tags.values_mut() {
                stream.compact(below);
            }
        }
    }

    /// An index that remembers a checkpoint; entries from `checkpoint.below` on follow.
    pub fn from_checkpoint(checkpoint: &IndexCheckpoint) -> TagIndex {
        let books = checkpoint
            .books
            .iter()
            .map(|b| {
                let tags = b
                    .tags
                    .iter()
                    .map(|(tag, s)| (*tag, Stream::from_checkpoint(s)))
                    .collect();
                (
                    b.book,
                    BookIndex {
                        all: Stream::from_checkpoint(&b.all),
                        tags,
                    },
                )
            })
            .collect();
        TagIndex {
            books,
            applied_end: checkpoint.below,
            records: 0,
        }
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
            kind: RecordKind::Cond(Cond::at(Tag(tag), position)),
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
    fn books_and_their_tags_are_listed_in_order_a_page_at_a_time() {
        let mut index = TagIndex::new();
        for (i, tag) in [9u64, 3, 7, 3, 1, 5].into_iter().enumerate() {
            index.apply(&data(i as u64 + 1, 0, &[tag]));
        }
        index.apply(&data(7, 2, &[]));
        let books = index.books();
        assert_eq!(
            books
                .iter()
                .map(|b| (b.book.0, b.records, b.tags))
                .collect::<Vec<_>>(),
            [(0, 6, 5), (2, 1, 0)]
        );
        let page = |after: Option<u64>, limit| {
            index
                .tags(BookId(0), after.map(Tag), limit)
                .into_iter()
                .map(|(t, n)| (t.0, n))
                .collect::<Vec<_>>()
        };
        assert_eq!(page(None, 2), [(1, 1), (3, 2)]);
        assert_eq!(page(Some(3), 2), [(5, 1), (7, 1)]);
        assert_eq!(page(Some(7), 2), [(9, 1)]);
        assert_eq!(page(Some(9), 2), []);
        assert_eq!(page(None, 10).len(), 5);
        assert!(index.tags(BookId(1), None, 10).is_empty());
    }

    #[test]
    fn prev_finds_the_newest_visible_seqnum_at_or_below() {
        // Every stream length, trim point and bound, against a plain scan of the stream.
        for len in 0..40u64 {
            let seqnums: Vec<Seqnum> = (0..len).map(|i| Seqnum(3 * i + 1)).collect();
            for trimmed_below in 0..3 * len + 3 {
                let stream = Stream {
                    seqnums: seqnums.clone(),
                    trimmed_below: Seqnum(trimmed_below),
                    ..Stream::default()
                };
                for max in 0..3 * len + 3 {
                    let expected = seqnums
                        .iter()
                        .rev()
                        .find(|s| s.0 <= max && s.0 >= trimmed_below)
                        .copied();
                    assert_eq!(
                        stream.prev(Seqnum(max)),
                        expected,
                        "{len} {trimmed_below} {max}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_record_leaves_the_books_stream_once_every_stream_of_its_tags_is_trimmed_past_it() {
        let tag_trim = |seqnum: u64, tag: u64, below: u64| IndexEntry {
            kind: RecordKind::Trim {
                tag: Tag(tag),
                below: Seqnum(below),
            },
            ..data(seqnum, 0, &[])
        };
        let entries = vec![
            data(1, 0, &[5, 6]),
            data(2, 0, &[]),
            data(3, 0, &[5]),
            tag_trim(4, 5, 4),
            data(5, 0, &[6]),
            tag_trim(6, 6, 2),
            data(7, 0, &[5]),
        ];
        let mut index = TagIndex::new();
        for e in &entries {
            index.apply(e);
        }
        let any = |i: &TagIndex| i.range(BookId(0), Tag::ANY, Seqnum::ZERO, Seqnum::MAX, 10);
        // 1 is gone from 5 and 6; 2 has no tags; 3 is gone from 5, its only stream.
        assert_eq!(any(&index), vec![Seqnum(2), Seqnum(5), Seqnum(7)]);
        assert!(!index.contains(BookId(0), Seqnum(1)));
        assert!(!index.contains(BookId(0), Seqnum(3)));
        assert!(index.contains(BookId(0), Seqnum(2)));
        assert_eq!(index.next(BookId(0), Tag::ANY, Seqnum(0)), Some(Seqnum(2)));
        assert_eq!(index.next(BookId(0), Tag::ANY, Seqnum(3)), Some(Seqnum(5)));
        assert_eq!(index.prev(BookId(0), Tag::ANY, Seqnum(4)), Some(Seqnum(2)));
        assert_eq!(index.prev(BookId(0), Tag::ANY, Seqnum(1)), None);
        // Positions stay: a tag's stream still counts its trimmed records.
        assert_eq!(index.stream_len(BookId(0), Tag(5)), 3);
        assert_eq!(index.reclaimable_below(), Seqnum(2));
        // A checkpoint restored and the rest replayed decides alike.
        let checkpoint = index.checkpoint(Seqnum(2));
        let mut restored = TagIndex::from_checkpoint(&checkpoint);
        for e in &entries[1..] {
            restored.apply(e);
        }
        assert_eq!(any(&restored), any(&index));
        // A trim of the whole book hides the untagged record too.
        index.apply(&IndexEntry {
            kind: RecordKind::Trim {
                tag: Tag::ANY,
                below: Seqnum(3),
            },
            ..data(8, 0, &[])
        });
        assert_eq!(any(&index), vec![Seqnum(5), Seqnum(7)]);
        assert_eq!(index.reclaimable_below(), Seqnum(5));
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
    fn checkpoint_then_replay_equals_the_full_index() {
        let trim = |seqnum: u64, book: u32, below: u64| IndexEntry {
            kind: RecordKind::Trim {
                tag: Tag::ANY,
                below: Seqnum(below),
            },
            ..data(seqnum, book, &[])
        };
        let entries = vec![
            data(1, 0, &[5]),
            cond(2, 9, 0),
            data(3, 1, &[5]),
            trim(4, 0, 3),
            trim(5, 1, 6),
            data(6, 0, &[5, 9]),
            cond(7, 9, 1),
            cond(8, 9, 2),
            data(9, 1, &[5]),
        ];
        let mut full = TagIndex::new();
        for e in &entries[..6] {
            full.apply(e);
        }
        let below = full.reclaimable_below();
        assert_eq!(
            below,
            Seqnum(6),
            "book 0 is visible from 6, book 1 has nothing visible"
        );
        let checkpoint = full.checkpoint(below);
        full.compact(below);
        let mut restored = TagIndex::from_checkpoint(&checkpoint);
        restored.apply(&entries[5]);
        for e in &entries[6..] {
            assert_eq!(full.apply(e), restored.apply(e), "{e:?} is decided alike");
        }
        for (book, tag) in [(0, 5), (0, 9), (1, 5), (0, 0), (1, 0)] {
            let (book, tag) = (BookId(book), Tag(tag));
            let all = |i: &TagIndex| i.range(book, tag, Seqnum::ZERO, Seqnum::MAX, 100);
            assert_eq!(all(&full), all(&restored));
            assert_eq!(full.stream_len(book, tag), restored.stream_len(book, tag));
        }
        assert_eq!(
            full.stream_len(BookId(0), Tag(9)),
            3,
            "stale condition at 7 lost, 8 won"
        );
    }

    #[test]
    fn a_chain_token_survives_a_checkpoint() {
        let chained = |seqnum: u64, position: u64, token: u64, after: u64| IndexEntry {
            kind: RecordKind::Cond(Cond::chained(Tag(9), position, token, after)),
            ..data(seqnum, 0, &[9])
        };
        let trim = IndexEntry {
            kind: RecordKind::Trim {
                tag: Tag::ANY,
                below: Seqnum(2),
            },
            ..data(2, 0, &[])
        };
        let entries = [chained(1, 0, 7, 0), trim];
        // Below 3 the checkpoint keeps the token; below 1 the replay sets it again.
        for (below, replayed) in [(3, 2), (1, 0)] {
            let mut full = TagIndex::new();
            for e in &entries {
                full.apply(e);
            }
            let mut restored = TagIndex::from_checkpoint(&full.checkpoint(Seqnum(below)));
            for e in &entries[replayed..] {
                restored.apply(e);
            }
            assert_eq!(
                restored.apply(&chained(3, 1, 8, 7)),
                Applied::Indexed,
                "below {below}: the link after token 7 lands"
            );
            assert_eq!(
                restored.apply(&chained(4, 2, 7, 7)),
                Applied::CondFailed { stream_len: 2 },
                "below {below}: the stream's newest token is 8 now"
            );
        }
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn entries_out_of_order_are_a_programming_error() {
        let mut index = TagIndex::new();
        index.apply(&data(5, 0, &[]));
        index.apply(&data(4, 0, &[]));
    }
}
