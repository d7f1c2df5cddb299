//! The invariants a run must hold, one per file, checked on every committed event, and the
//! ground truth they are checked against.

mod contiguous;
mod metalog_prefix;
mod quorum_cut;
mod views;

use logbook::wire::{GroupEvent, NodeId, ShardId, View};
use logbook::{Seqnum, ViewId};
use std::collections::BTreeMap;

/// A broken invariant: its name and what happened.
pub type Broken = (&'static str, String);

/// What really happened outside the sequencers: records produced by gateways and held by
/// storage nodes. Only the simulator knows it; the sequencers learn it through messages.
#[derive(Debug, Default)]
pub struct Ground {
    produced: BTreeMap<(ViewId, ShardId), u64>,
    /// The records each storage node holds, by (view, shard): they only grow.
    held: BTreeMap<(NodeId, ViewId, ShardId), u64>,
}

impl Ground {
    pub fn produce(&mut self, view: ViewId, shard: ShardId, count: u64) {
        *self.produced.entry((view, shard)).or_insert(0) += count;
    }

    pub fn produced(&self, view: ViewId, shard: ShardId) -> u64 {
        self.produced.get(&(view, shard)).copied().unwrap_or(0)
    }

    pub fn hold(&mut self, node: NodeId, view: ViewId, shard: ShardId, count: u64) {
        let held = self.held.entry((node, view, shard)).or_insert(0);
        assert!(count >= *held, "a storage node never loses what it held");
        *held = count;
    }

    pub fn held(&self, node: NodeId, view: ViewId, shard: ShardId) -> u64 {
        self.held.get(&(node, view, shard)).copied().unwrap_or(0)
    }
}

/// The committed history as the first member to commit each event told it, and what it
/// implies: the current view, where each shard's records are ordered up to, the next seqnum.
#[derive(Debug, Default)]
pub struct Observer {
    pub committed: Vec<GroupEvent>,
    view: Option<View>,
    metalog_len: u64,
    next_seqnum: Seqnum,
    /// Records ordered per (view, shard).
    ordered: BTreeMap<(ViewId, ShardId), u64>,
    views: u64,
}

impl Observer {
    /// Member `member` committed `event` as its `index`th.
    pub fn on_committed(
        &mut self,
        member: NodeId,
        index: u64,
        event: &GroupEvent,
        ground: &Ground,
    ) -> Result<(), Broken> {
        metalog_prefix::check(&self.committed, member, index, event)?;
        if (index as usize) < self.committed.len() {
            return Ok(());
        }
        match event {
            GroupEvent::Metalog(entry) => {
                contiguous::check(self, entry)?;
                quorum_cut::check(self, entry, ground)?;
                for cut in &entry.cuts {
                    *self.ordered.entry((entry.view, cut.shard)).or_insert(0) += cut.delta;
                }
                self.metalog_len += 1;
                self.next_seqnum = entry.end_seqnum();
            }
            GroupEvent::View(view) => {
                views::check(self, view)?;
                self.next_seqnum = Seqnum::new(view.id, 0);
                self.view = Some(view.clone());
                self.views += 1;
            }
        }
        self.committed.push(event.clone());
        Ok(())
    }

    /// The newest committed view.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    pub fn views(&self) -> u64 {
        self.views
    }

    /// Records ordered in all.
    pub fn ordered(&self) -> u64 {
        self.ordered.values().sum()
    }

    pub fn ordered_in(&self, view: ViewId, shard: ShardId) -> u64 {
        self.ordered.get(&(view, shard)).copied().unwrap_or(0)
    }
}
