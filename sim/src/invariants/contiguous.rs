//! The metalog is contiguous: entries take positions 0, 1, 2, ... in order; each starts at the
//! seqnum where the one before ended (a view's first at the view's seqnum 0); and each shard's
//! cut starts where its previous cut in the view ended, so no record is ordered twice or
//! skipped.

use super::{Broken, Observer};
use logbook::wire::MetalogEntry;

pub fn check(observer: &Observer, entry: &MetalogEntry) -> Result<(), Broken> {
    const NAME: &str = "the metalog is contiguous";
    let Some(view) = observer.view() else {
        return Err((
            NAME,
            format!("entry {} committed before any view", entry.position),
        ));
    };
    if entry.view != view.id {
        return Err((
            NAME,
            format!(
                "entry {} of view {} committed in view {}",
                entry.position, entry.view.0, view.id.0
            ),
        ));
    }
    if entry.position != observer.metalog_len {
        return Err((
            NAME,
            format!(
                "entry at position {} after {} entries",
                entry.position, observer.metalog_len
            ),
        ));
    }
    if entry.start_seqnum != observer.next_seqnum {
        return Err((
            NAME,
            format!(
                "entry {} starts at seqnum {} instead of {}",
                entry.position, entry.start_seqnum.0, observer.next_seqnum.0
            ),
        ));
    }
    for cut in &entry.cuts {
        let ordered = observer.ordered_in(entry.view, cut.shard);
        if cut.start != ordered {
            return Err((
                NAME,
                format!(
                    "entry {} orders shard {} from {} but {ordered} are ordered",
                    entry.position, cut.shard.0, cut.start
                ),
            ));
        }
        if !view.shards.contains_key(&cut.shard) {
            return Err((
                NAME,
                format!(
                    "entry {} orders shard {}, not in its view",
                    entry.position, cut.shard.0
                ),
            ));
        }
    }
    Ok(())
}
