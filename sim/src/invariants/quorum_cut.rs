//! A cut never outruns a write quorum: a committed entry orders a shard's records only up to
//! what a write quorum of the shard's replicas really holds. An entry that ordered more could
//! order a record that a crash of the one replica holding it loses.

use super::{Broken, Ground, Observer};
use logbook::wire::MetalogEntry;

pub fn check(observer: &Observer, entry: &MetalogEntry, ground: &Ground) -> Result<(), Broken> {
    const NAME: &str = "cuts stay within a write quorum";
    let view = observer.view().expect("contiguous::check saw the view");
    for cut in &entry.cuts {
        let replicas = &view.shards[&cut.shard];
        let mut held: Vec<u64> = replicas
            .iter()
            .map(|node| ground.held(*node, entry.view, cut.shard))
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_holds = held.get(view.write_quorum - 1).copied().unwrap_or(0);
        let end = cut.start + cut.delta;
        if end > quorum_holds {
            return Err((
                NAME,
                format!(
                    "entry {} orders shard {} up to {end}, but its replicas hold {held:?} \
                     (write quorum {})",
                    entry.position, cut.shard.0, view.write_quorum
                ),
            ));
        }
    }
    Ok(())
}
