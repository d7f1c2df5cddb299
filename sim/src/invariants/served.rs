//! A storage node serves what it applied: every storage node replicates every shard here, so
//! one that stored the metalog entry ordering a seqnum holds that seqnum's record (it stores an
//! entry only once the records it orders on its shards are durable there).

use super::{Broken, Observer};
use logbook::wire::NodeId;
use logbook::Seqnum;

/// Storage node `node`, which applied the metalog up to `applied`, does not hold `seqnum`.
pub fn check(
    observer: &Observer,
    node: NodeId,
    applied: u64,
    seqnum: Seqnum,
) -> Result<(), Broken> {
    if observer
        .entry_of(seqnum)
        .is_some_and(|e| e.position < applied)
    {
        return Err((
            "a storage node serves what it applied",
            format!(
                "storage node {} applied the metalog up to {applied} but lacks seqnum {}",
                node.0, seqnum.0
            ),
        ));
    }
    Ok(())
}
