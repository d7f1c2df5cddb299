//! What a storage node reported durable survives its crashes: the count of a shard's records
//! it holds in a view never goes down. A node that lost records it had acknowledged or
//! reported could make a cut order records no write quorum holds.

use super::Broken;
use logbook::wire::{NodeId, ShardId};
use logbook::ViewId;
use std::collections::BTreeMap;

pub fn check(
    held: &mut BTreeMap<(NodeId, ViewId, ShardId), u64>,
    node: NodeId,
    view: ViewId,
    shard: ShardId,
    count: u64,
) -> Result<(), Broken> {
    let before = held.entry((node, view, shard)).or_insert(0);
    if count < *before {
        return Err((
            "durable records survive a crash",
            format!(
                "storage node {} held {} records of shard {} in view {} durably, now {count}",
                node.0, *before, shard.0, view.0
            ),
        ));
    }
    *before = count;
    Ok(())
}
