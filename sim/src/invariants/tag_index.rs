//! The tag index is consistent with the log: a tag's stream at a gateway is exactly the
//! records of its book index that carry the tag, in the same order, from the tag's trim point.

use super::{Broken, Ground, Observer};
use logbook::{Seqnum, Tag};
use std::collections::BTreeMap;

pub fn check(
    ground: &Ground,
    observer: &Observer,
    index: &[Seqnum],
    streams: &BTreeMap<u64, Vec<Seqnum>>,
) -> Result<(), Broken> {
    for (tag, stream) in streams {
        let trimmed_below = observer.trim_point(Tag(*tag), Seqnum::MAX);
        let expected: Vec<Seqnum> = index
            .iter()
            .copied()
            .filter(|s| *s >= trimmed_below)
            .filter(|s| {
                observer
                    .locate(*s)
                    .and_then(|(shard, id)| ground.record(shard, id))
                    .is_some_and(|r| r.tags.contains(&Tag(*tag)))
            })
            .collect();
        if *stream != expected {
            return Err((
                "the tag index is consistent with the log",
                format!(
                    "tag {tag}: the stream holds {} records, the log {} with the tag",
                    stream.len(),
                    expected.len()
                ),
            ));
        }
    }
    Ok(())
}
