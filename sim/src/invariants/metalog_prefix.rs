//! Metalog prefixes agree on all sequencers: the `i`th event any member commits is the `i`th
//! event every other member commits, in every incarnation (a restarted member applies its
//! committed events again from the first).

use super::Broken;
use logbook::wire::{GroupEvent, NodeId};

pub fn check(
    committed: &[GroupEvent],
    member: NodeId,
    index: u64,
    event: &GroupEvent,
) -> Result<(), Broken> {
    const NAME: &str = "metalog prefixes agree";
    match committed.get(index as usize) {
        Some(first) if first != event => Err((
            NAME,
            format!(
                "sequencer {} committed {event:?} as event {index}, another committed {first:?}",
                member.0
            ),
        )),
        Some(_) => Ok(()),
        None if index as usize == committed.len() => Ok(()),
        None => Err((
            NAME,
            format!(
                "sequencer {} committed event {index} with only {} known before it",
                member.0,
                committed.len()
            ),
        )),
    }
}
