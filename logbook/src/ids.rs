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
    /// In a read: any record of the book. Never carried by a record.
    pub const ANY: Tag = Tag(0);
    /// Reserved: never carried by a record, never meaningful in a read.
    pub const RESERVED: Tag = Tag(u64::MAX);

    /// Whether a record may carry this tag.
    pub fn is_record_tag(self) -> bool {
        self != Tag::ANY && self != Tag::RESERVED
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
    fn zero_and_max_tags_are_not_record_tags() {
        assert!(!Tag::ANY.is_record_tag());
        assert!(!Tag::RESERVED.is_record_tag());
        assert!(Tag(7).is_record_tag());
    }
}
