//! Trims remove only a prefix: at the end, a gateway's book holds no record below the book's
//! trim point and every acknowledged plain or won conditional append at or above it that is
//! untagged or still in some stream of its tags, and each tag's stream holds nothing below
//! the tag's trim point. (That the rest of each stream is the
//! tag's records is `tag_index`.)

use super::{Broken, Ground, Observer};
use logbook::wire::RecordKind;
use logbook::{Seqnum, Tag};
use std::collections::BTreeMap;

const NAME: &str = "trims remove only a prefix";

pub fn check(
    ground: &Ground,
    observer: &Observer,
    index: &[Seqnum],
    streams: &BTreeMap<u64, Vec<Seqnum>>,
) -> Result<(), Broken> {
    let book_start = observer.trim_point(Tag::ANY, Seqnum::MAX);
    if let Some(first) = index.first().filter(|s| **s < book_start) {
        return Err((
            NAME,
            format!(
                "the book is trimmed below {}, but seqnum {} is still in it",
                book_start.0, first.0
            ),
        ));
    }
    for (seqnum, op) in ground.acknowledged_appends() {
        // A record every stream of whose tags is trimmed past it leaves the book too.
        let kept = observer.shows(*seqnum, &op.tags);
        let data = !matches!(op.kind, RecordKind::Trim { .. });
        if data && kept != index.binary_search(seqnum).is_ok() {
            return Err((
                NAME,
                format!(
                    "the book is trimmed below {}; acknowledged seqnum {} is {}",
                    book_start.0,
                    seqnum.0,
                    if kept { "missing" } else { "still there" }
                ),
            ));
        }
    }
    for (tag, stream) in streams {
        let start = observer.trim_point(Tag(*tag), Seqnum::MAX);
        if let Some(first) = stream.first().filter(|s| **s < start) {
            return Err((
                NAME,
                format!(
                    "tag {tag} is trimmed below {}, but seqnum {} is still in its stream",
                    start.0, first.0
                ),
            ));
        }
    }
    Ok(())
}
