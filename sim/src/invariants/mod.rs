//! The invariants a run must hold, one per file, checked on every committed event, and the
//! ground truth they are checked against.

pub mod acknowledged;
mod contiguous;
mod durable;
mod local_ids;
mod metalog_prefix;
pub mod one_order;
mod quorum_cut;
pub mod reads;
pub mod served;
pub mod tag_index;
pub mod trims;
mod views;

use crate::gateway::Op;
use logbook::wire::{
    GroupEvent, LocalId, LogRecord, MetalogEntry, NodeId, RecordKind, ShardId, View,
};
use logbook::{Seqnum, Tag, ViewId};
use std::collections::BTreeMap;

/// A broken invariant: its name and what happened.
pub type Broken = (&'static str, String);

/// What really happened outside the sequencers: the records replicas hold, and the appends
/// clients were told succeeded. Only the simulator knows it.
#[derive(Debug, Default)]
pub struct Ground {
    /// Every record any replica stored, by shard and local id.
    records: BTreeMap<(ShardId, LocalId), LogRecord>,
    /// How many records each storage node holds durably, by (view, shard): they only grow.
    held: BTreeMap<(NodeId, ViewId, ShardId), u64>,
    /// Acknowledged appends, by seqnum.
    acked: BTreeMap<Seqnum, Op>,
    /// The same seqnums, in the order they were acknowledged (for clients to read from).
    acked_order: Vec<Seqnum>,
}

impl Ground {
    /// A replica stored `record` as `id` of `shard`.
    pub fn store(&mut self, shard: ShardId, id: LocalId, record: &LogRecord) -> Result<(), Broken> {
        local_ids::check(&mut self.records, shard, id, record)
    }

    /// The record a replica stored as `id` of `shard`.
    pub fn record(&self, shard: ShardId, id: LocalId) -> Option<&LogRecord> {
        self.records.get(&(shard, id))
    }

    /// A client was told `op` is at `seqnum`.
    pub fn acknowledge(&mut self, seqnum: Seqnum, op: &Op) -> Result<(), Broken> {
        acknowledged::on_ack(&mut self.acked, seqnum, op)?;
        self.acked_order.push(seqnum);
        Ok(())
    }

    /// A seqnum some client was told, at random (none before the first acknowledgement).
    pub fn some_acknowledged(&self, rng: &mut impl rand::Rng) -> Option<Seqnum> {
        if self.acked_order.is_empty() {
            return None;
        }
        Some(self.acked_order[rng.random_range(0..self.acked_order.len())])
    }

    /// Every acknowledged append, by seqnum.
    pub fn acknowledged_appends(&self) -> impl Iterator<Item = (&Seqnum, &Op)> {
        self.acked.iter()
    }

    pub fn acknowledged(&self) -> u64 {
        self.acked.len() as u64
    }

    /// Storage node `node` holds `count` records of `shard` in `view` durably (after a sync,
    /// or after a restart).
    pub fn hold(
        &mut self,
        node: NodeId,
        view: ViewId,
        shard: ShardId,
        count: u64,
    ) -> Result<(), Broken> {
        durable::check(&mut self.held, node, view, shard, count)
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
    /// The committed metalog entries, in order (so in seqnum order).
    entries: Vec<MetalogEntry>,
    view: Option<View>,
    metalog_len: u64,
    next_seqnum: Seqnum,
    /// Records ordered per (view, shard).
    ordered: BTreeMap<(ViewId, ShardId), u64>,
    views: u64,
    /// The trim records ordered: (seqnum, tag, below).
    trims: Vec<(Seqnum, Tag, Seqnum)>,
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
                for (shard, counter, seqnum) in entry.assignments() {
                    let record = ground.record(shard, LocalId::new(entry.view, counter));
                    if let Some(RecordKind::Trim { tag, below }) = record.map(|r| r.kind) {
                        self.trims.push((seqnum, tag, below));
                    }
                }
                self.metalog_len += 1;
                self.next_seqnum = entry.end_seqnum();
                self.entries.push(entry.clone());
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

    /// Metalog entries committed.
    pub fn metalog_len(&self) -> u64 {
        self.metalog_len
    }

    /// The shard and local id of the record the metalog put at `seqnum`.
    pub fn locate(&self, seqnum: Seqnum) -> Option<(ShardId, LocalId)> {
        let at = self.entries.partition_point(|e| e.start_seqnum <= seqnum);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        entry
            .assignments()
            .find(|(_, _, s)| *s == seqnum)
            .map(|(shard, counter, _)| (shard, LocalId::new(entry.view, counter)))
    }

    pub fn trims(&self) -> u64 {
        self.trims.len() as u64
    }

    /// Where the trims ordered below `upto` put `tag`'s stream (`Tag::ANY`: the whole book's):
    /// its records below the returned seqnum are trimmed. A book trim trims every tag.
    /// Whether a book still shows the record at `seqnum` with `tags` once every trim is
    /// applied: at or above the book's trim point, and untagged or in some stream of its tags.
    pub fn shows(&self, seqnum: Seqnum, tags: &[Tag]) -> bool {
        self.shows_upto(seqnum, tags, Seqnum::MAX)
    }

    /// `shows`, under the trims ordered below `upto` only.
    pub fn shows_upto(&self, seqnum: Seqnum, tags: &[Tag], upto: Seqnum) -> bool {
        seqnum >= self.trim_point(Tag::ANY, upto)
            && (tags.is_empty() || tags.iter().any(|t| seqnum >= self.trim_point(*t, upto)))
    }

    pub fn trim_point(&self, tag: Tag, upto: Seqnum) -> Seqnum {
        self.trims
            .iter()
            .filter(|(at, t, _)| *at < upto && (*t == tag || *t == Tag::ANY))
            .map(|(_, _, below)| *below)
            .max()
            .unwrap_or(Seqnum::ZERO)
    }

    /// The metalog entry that ordered `seqnum`.
    pub fn entry_of(&self, seqnum: Seqnum) -> Option<&MetalogEntry> {
        let at = self.entries.partition_point(|e| e.start_seqnum <= seqnum);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        (seqnum < entry.end_seqnum()).then_some(entry)
    }

    /// Where a subscription from metalog position `from` starts in the committed events: at
    /// the view in force there (as the sequencers' feed starts).
    pub fn subscription_start(&self, from: u64) -> u64 {
        let first = self
            .committed
            .iter()
            .position(|e| matches!(e, GroupEvent::Metalog(m) if m.position >= from))
            .unwrap_or(self.committed.len());
        self.committed[..first]
            .iter()
            .rposition(|e| matches!(e, GroupEvent::View(_)))
            .unwrap_or(0) as u64
    }

    pub fn ordered_in(&self, view: ViewId, shard: ShardId) -> u64 {
        self.ordered.get(&(view, shard)).copied().unwrap_or(0)
    }
}
