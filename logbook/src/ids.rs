//! Identifiers shared by every role: books, tags, seqnums and views.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A LogBook: a logical log multiplexed onto the physical log. Book 0 is the default.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct BookId(pub u32);

/// A tag names a sub-stream of a book. Records carry non-zero tags; in reads, `Tag::ANY`
/// (zero) selects every record of the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tag(pub u64);

impl Tag {
    /// In a read: any record of the book (that some stream of its tags still shows). Never
    /// carried by a record.
    pub const ANY: Tag = Tag(0);
    /// Reserved: never carried by a record, never meaningful in a read.
    pub const RESERVED: Tag = Tag(u64::MAX);

    /// Whether a record may carry this tag.
    pub fn is_record_tag(self) -> bool {
        self != Tag::ANY && self != Tag::RESERVED
    }

    /// A record tag named by `parts` (`["libflow", "steps", id]`): 64-bit FNV-1a over the
    /// parts, each followed by a 0 byte, moved off the two values no record may carry. Stable
    /// across processes and versions, unlike `std`'s hasher: libraries name their streams
    /// with it, so it is part of the log's format and must never change.
    pub fn named(parts: &[&str]) -> Tag {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in parts {
            for b in part.bytes().chain(std::iter::once(0)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        let tag = Tag(h);
        if tag.is_record_tag() {
            tag
        } else {
            Tag(h ^ 1 | 2)
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A view (epoch) of the cluster. Every new view orders records above every older one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ViewId(pub u16);

/// A record's position in the total order of the physical log: the view in the high 16 bits,
/// the position within that view in the low 48. Strictly increasing in log order, monotonic
/// across views, not consecutive within one book.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Seqnum(pub u64);

impl Seqnum {
    pub const ZERO: Seqnum = Seqnum(0);
    pub const MAX: Seqnum = Seqnum(u64::MAX);
    const POSITION_BITS: u32 = 48;
    pub const POSITION_MAX: u64 = (1 << Self::POSITION_BITS) - 1;

    pub fn new(view: ViewId, position: u64) -> Seqnum {
        assert!(
            position <= Self::POSITION_MAX,
            "position {position} overflows a view"
        );
        Seqnum(((view.0 as u64) << Self::POSITION_BITS) | position)
    }

    pub fn view(self) -> ViewId {
        ViewId((self.0 >> Self::POSITION_BITS) as u16)
    }

    pub fn position(self) -> u64 {
        self.0 & Self::POSITION_MAX
    }

    /// The next seqnum in the same view.
    pub fn next(self) -> Seqnum {
        Seqnum(self.0 + 1)
    }
}

impl fmt::Display for Seqnum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqnum_keeps_view_in_high_bits() {
        let s = Seqnum::new(ViewId(3), 42);
        assert_eq!(s.view(), ViewId(3));
        assert_eq!(s.position(), 42);
        assert!(Seqnum::new(ViewId(4), 0) > Seqnum::new(ViewId(3), Seqnum::POSITION_MAX));
    }

    #[test]
    fn named_tags_are_stable_and_never_reserved() {
        // Part of the log's format: these values must never change.
        assert_eq!(Tag::named(&["a"]), Tag(0x089b_e207_b544_f1e4));
        assert_ne!(Tag::named(&["t", "ab"]), Tag::named(&["ta", "b"]));
        assert!(Tag::named(&[]).is_record_tag());
    }

    #[test]
    fn zero_and_max_tags_are_not_record_tags() {
        assert!(!Tag::ANY.is_record_tag());
        assert!(!Tag::RESERVED.is_record_tag());
        assert!(Tag(7).is_record_tag());
    }
}
