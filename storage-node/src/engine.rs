//! The storage node's decisions, without IO, clocks or threads: which replicated batches it
//! takes, what it acknowledges and reports, when a committed metalog entry may be stored (once
//! every record it orders on this node's shards is durable here), which peer it fetches the
//! records it missed from, and when it may serve a read.
//!
//! `tally storage` drives it with a `Store` and gRPC; the simulator drives the same engine with
//! a simulated disk and network. The caller carries out the `Command`s the engine returns and
//! reports back how they ended (`on_durable`, `on_write_failed`, `on_metalog_stored`,
//! `on_fetched`); all calls are quick and never block.

use crate::index::{self, Cursors};
use logbook::wire::{
    GroupEvent, LocalId, LogRecord, MetalogEntry, NodeId, ShardId, ShardProgress, View,
};
use logbook::{Seqnum, ViewId};
use std::collections::{BTreeMap, VecDeque};

/// Index data of recent records kept in memory per shard, at most (for `FetchIndex`).
pub const RECENT_RECORDS_MAX: usize = 1 << 16;

/// What the caller does for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write records fetched from a peer (local ids consecutive from `first`); report with
    /// `on_durable` or `on_write_failed`.
    Write {
        shard: ShardId,
        first: LocalId,
        records: Vec<LogRecord>,
    },
    /// Store the metalog entry; report with `on_metalog_stored`.
    StoreMetalog(MetalogEntry),
    /// Ask `peer` for the ordered records in `[from, to)` once it applied the metalog up to
    /// `min_position`; report with `on_fetched` (an empty list if the call failed).
    Fetch {
        peer: NodeId,
        from: Seqnum,
        to: Seqnum,
        min_position: u64,
    },
    /// The committed events skipped a metalog position: subscribe again from `from`.
    Resubscribe { from: u64 },
}

/// The engine's answer to a replicated batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// Write the batch; report with `on_durable` or `on_write_failed`.
    Write,
    /// Its view is not applied here yet: offer it again once a view arrives, or refuse it
    /// after a while (records of a view wait until the node holds what older views ordered).
    NotYet,
    /// Refused (a repeat, a gap, an older view): acknowledge what is durable, with the reason.
    Refused(String),
}

/// Why a committed metalog entry waits, if it does (for status and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// Records of `shard` up to `end` are written but not durable yet.
    Syncing { shard: ShardId, end: u64 },
    /// Records of `shard` from `have` to `end` are fetched from peers.
    Repairing { shard: ShardId, have: u64, end: u64 },
    /// The entry orders records of `shard` before `have`, which no longer are here (a lost
    /// disk): nothing here can repair that.
    Lost { shard: ShardId, have: u64 },
    /// The entry is being stored.
    Storing,
    /// The entry is of another view than the newest this node took: the node cannot tell
    /// which of its shards the entry orders, so it waits (a subscription always starts with
    /// the view in force, so only a bug gets here).
    OtherView { entry: ViewId },
}

/// A run of a shard's newest records (index data only), consecutive from `first`.
#[derive(Debug)]
struct Recent {
    first: LocalId,
    records: VecDeque<LogRecord>,
}

/// The repair of the front entry's records of one shard: which peer to ask next.
#[derive(Debug, Clone, Copy)]
struct Repair {
    shard: ShardId,
    /// Peers asked in this round; a round ends when every peer was asked once.
    asked: usize,
}

#[derive(Debug)]
pub struct StorageEngine {
    id: NodeId,
    /// The newest view applied.
    view: Option<View>,
    /// The metalog position stored up to (exclusive).
    applied: u64,
    /// Per shard: records handed to the disk (durable or not).
    written: Cursors,
    /// Per shard: records durable.
    durable: Cursors,
    recent: BTreeMap<ShardId, Recent>,
    recent_max: usize,
    /// Committed events taken and not applied yet, in order.
    queue: VecDeque<GroupEvent>,
    /// The metalog position the next queued entry must have.
    next_position: u64,
    /// The front entry is being stored.
    storing: bool,
    repair: Option<Repair>,
    /// Turns through the peers across repair rounds, so a round does not always start with
    /// the same one (which may be the one that never answers).
    next_peer: usize,
}

impl StorageEngine {
    /// An engine over a store that recovered `durable` (per shard, its newest view and the
    /// records of it it holds) and the metalog up to `applied`.
    pub fn new(id: NodeId, durable: BTreeMap<ShardId, (ViewId, u64)>, applied: u64) -> Self {
        StorageEngine {
            id,
            view: None,
            applied,
            written: durable.clone(),
            durable,
            recent: BTreeMap::new(),
            recent_max: RECENT_RECORDS_MAX,
            queue: VecDeque::new(),
            next_position: applied,
            storing: false,
            repair: None,
            next_peer: id.0 as usize,
        }
    }

    /// Keeps the index data of at most `max` recent records per shard.
    pub fn with_recent_max(mut self, max: usize) -> Self {
        self.recent_max = max;
        self
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The metalog position stored up to (exclusive).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    pub fn view_id(&self) -> Option<ViewId> {
        self.view.as_ref().map(|v| v.id)
    }

    /// The metalog position the subscription continues from.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Committed events taken and not applied yet.
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// Records of `shard` in `view` durable here (0 if the shard is in another view).
    pub fn durable_count(&self, shard: ShardId, view: ViewId) -> u64 {
        count_in(&self.durable, shard, view)
    }

    /// Per shard, its newest view and the records of it durable here.
    pub fn durable(&self) -> &BTreeMap<ShardId, (ViewId, u64)> {
        &self.durable
    }

    /// This node's progress, as it reports it to the sequencers: what it holds durably of
    /// each shard, and the metalog position it stored up to.
    pub fn report(&self) -> (Vec<ShardProgress>, u64) {
        let shards = self
            .durable
            .iter()
            .map(|(shard, (view, durable))| ShardProgress {
                node: self.id,
                shard: *shard,
                view: *view,
                durable: *durable,
            })
            .collect();
        (shards, self.applied)
    }

    /// A gateway's batch of `shard`'s records, local ids consecutive from `first`.
    pub fn accept(&mut self, shard: ShardId, first: LocalId, records: &[LogRecord]) -> Accept {
        if self.view_id().is_none_or(|current| current < first.view()) {
            return Accept::NotYet;
        }
        if let Err(reason) = index::check_next(&self.written, shard, first, records.len() as u64) {
            return Accept::Refused(reason);
        }
        self.take(shard, first, records);
        Accept::Write
    }

    /// `records` from `first` go to the disk: the written cursor moves past them and their
    /// index data is remembered (a local id names the same record whoever sends it).
    fn take(&mut self, shard: ShardId, first: LocalId, records: &[LogRecord]) {
        if records.is_empty() {
            return;
        }
        let end = first.counter() + records.len() as u64;
        self.written.insert(shard, (first.view(), end));
        let run = self.recent.entry(shard).or_insert_with(|| Recent {
            first,
            records: VecDeque::new(),
        });
        if LocalId(run.first.0 + run.records.len() as u64) != first {
            run.first = first;
            run.records.clear();
        }
        run.records.extend(records.iter().map(|r| LogRecord {
            data: bytes::Bytes::new(),
            ..r.clone()
        }));
        while run.records.len() > self.recent_max {
            run.records.pop_front();
            run.first = LocalId(run.first.0 + 1);
        }
    }

    /// The records written from `first` (`count` of them) are durable.
    pub fn on_durable(&mut self, shard: ShardId, first: LocalId, count: u64) -> Vec<Command> {
        let end = first.counter() + count;
        let newer = match self.durable.get(&shard) {
            Some(&(view, durable)) => {
                first.view() > view || (first.view() == view && end > durable)
            }
            None => true,
        };
        if newer && count > 0 {
            self.durable.insert(shard, (first.view(), end));
        }
        self.pump()
    }

    /// Writing the records from `first` failed: they, and any written after them, are not
    /// here; a later batch or repair writes them again.
    pub fn on_write_failed(&mut self, shard: ShardId, first: LocalId) -> Vec<Command> {
        if let Some((view, written)) = self.written.get_mut(&shard) {
            if *view == first.view() && *written > first.counter() {
                *written = first.counter();
            }
        }
        Vec::new()
    }

    /// The next committed event from the subscription.
    pub fn on_event(&mut self, event: GroupEvent) -> Vec<Command> {
        match &event {
            GroupEvent::Metalog(entry) => {
                if entry.position < self.next_position {
                    return Vec::new();
                }
                if entry.position > self.next_position {
                    return vec![Command::Resubscribe {
                        from: self.next_position,
                    }];
                }
                self.next_position += 1;
            }
            GroupEvent::View(view) => {
                // A subscription starts with the view in force; a view this node took already
                // changes nothing.
                let newest = self.queue.iter().rev().find_map(|e| match e {
                    GroupEvent::View(v) => Some(v.id),
                    GroupEvent::Metalog(_) => None,
                });
                if newest
                    .or(self.view_id())
                    .is_some_and(|current| view.id <= current)
                {
                    return Vec::new();
                }
            }
        }
        self.queue.push_back(event);
        self.pump()
    }

    /// The front entry was stored.
    pub fn on_metalog_stored(&mut self, position: u64) -> Vec<Command> {
        let front =
            matches!(self.queue.front(), Some(GroupEvent::Metalog(e)) if e.position == position);
        if !self.storing || !front {
            return Vec::new();
        }
        self.storing = false;
        self.queue.pop_front();
        self.applied = position + 1;
        self.pump()
    }

    /// Storing the front entry failed: `retry` stores it again.
    pub fn on_metalog_failed(&mut self) {
        self.storing = false;
    }

    /// What `peer` answered to a `Fetch` (empty if the call failed): the run that continues
    /// this node's records of the shard under repair is written; if there is none, the next
    /// peer is asked, until every peer was asked in this round (then `retry` starts the next).
    pub fn on_fetched(
        &mut self,
        peer: NodeId,
        records: Vec<(ShardId, LocalId, LogRecord)>,
    ) -> Vec<Command> {
        let Some(repair) = self.repair else {
            return Vec::new();
        };
        let Some(GroupEvent::Metalog(entry)) = self.queue.front() else {
            return Vec::new();
        };
        let view = entry.view;
        let have = count_in(&self.written, repair.shard, view);
        let run: Vec<LogRecord> = records
            .into_iter()
            .filter(|(shard, _, _)| *shard == repair.shard)
            .skip_while(|(_, id, _)| *id != LocalId::new(view, have))
            .enumerate()
            .take_while(|(i, (_, id, _))| *id == LocalId::new(view, have + *i as u64))
            .map(|(_, (_, _, record))| record)
            .collect();
        if run.is_empty() {
            tracing::debug!(
                peer = peer.0,
                shard = repair.shard.0,
                have,
                "a peer had nothing to repair from"
            );
            return self.ask_next_peer();
        }
        let first = LocalId::new(view, have);
        if index::check_next(&self.written, repair.shard, first, run.len() as u64).is_err() {
            return Vec::new();
        }
        self.take(repair.shard, first, &run);
        self.repair = None;
        let mut commands = vec![Command::Write {
            shard: repair.shard,
            first,
            records: run,
        }];
        commands.extend(self.pump());
        commands
    }

    /// Tries again what waits: a failed store of the front entry, or a repair round in which
    /// no peer helped. The caller calls it after a pause (and the simulator now and then, as
    /// messages may be lost).
    pub fn retry(&mut self) -> Vec<Command> {
        if let Some(repair) = &mut self.repair {
            repair.asked = 0;
        }
        self.pump()
    }

    /// Why the front entry waits, if it does.
    pub fn stall(&self) -> Option<Stall> {
        let Some(GroupEvent::Metalog(entry)) = self.queue.front() else {
            return None;
        };
        if self.storing {
            return Some(Stall::Storing);
        }
        self.first_hole(entry)
    }

    /// Whether the entry at `position` is the one being stored (a command from before the
    /// engine was replaced is not).
    pub fn is_storing(&self, position: u64) -> bool {
        self.storing
            && matches!(self.queue.front(), Some(GroupEvent::Metalog(e)) if e.position == position)
    }

    /// Whether a read that needs the metalog up to `min_position` can be served here.
    pub fn can_serve(&self, min_position: u64) -> bool {
        self.applied >= min_position
    }

    /// The remembered index data of `shard` from `first`, at most `count` records.
    pub fn recall(&self, shard: ShardId, first: LocalId, count: usize) -> Vec<LogRecord> {
        let Some(run) = self.recent.get(&shard) else {
            return Vec::new();
        };
        if first.view() != run.first.view() || first < run.first {
            return Vec::new();
        }
        let skip = (first.0 - run.first.0) as usize;
        run.records.iter().skip(skip).take(count).cloned().collect()
    }

    /// Applies queued events from the front for as long as nothing needs to be waited for.
    fn pump(&mut self) -> Vec<Command> {
        let mut commands = Vec::new();
        while let Some(event) = self.queue.front() {
            match event {
                GroupEvent::View(view) => {
                    if self.view_id().is_none_or(|current| view.id > current) {
                        self.view = Some(view.clone());
                    }
                    self.queue.pop_front();
                }
                GroupEvent::Metalog(entry) => {
                    if self.storing {
                        break;
                    }
                    match self.first_hole(entry) {
                        None => {
                            self.repair = None;
                            self.storing = true;
                            commands.push(Command::StoreMetalog(entry.clone()));
                        }
                        Some(Stall::Repairing { shard, .. }) => {
                            if self.repair.is_none_or(|r| r.shard != shard) {
                                self.repair = Some(Repair { shard, asked: 0 });
                                commands.extend(self.ask_next_peer());
                            } else if self.repair.is_some_and(|r| r.asked == 0) {
                                commands.extend(self.ask_next_peer());
                            }
                        }
                        // Nothing to do but wait: for a sync, or (`Lost`) for an operator.
                        Some(
                            Stall::Lost { .. }
                            | Stall::Syncing { .. }
                            | Stall::Storing
                            | Stall::OtherView { .. },
                        ) => {}
                    }
                    break;
                }
            }
        }
        commands
    }

    /// The first of the shards `entry` orders here whose records are not all durable here
    /// (in the entry's order), and why.
    fn first_hole(&self, entry: &MetalogEntry) -> Option<Stall> {
        let Some(view) = self.view.as_ref().filter(|v| v.id == entry.view) else {
            return Some(Stall::OtherView { entry: entry.view });
        };
        entry
            .cuts
            .iter()
            .filter(|cut| {
                cut.delta > 0
                    && view
                        .shards
                        .get(&cut.shard)
                        .is_some_and(|replicas| replicas.contains(&self.id))
            })
            .find_map(|cut| {
                let end = cut.start + cut.delta;
                let durable = count_in(&self.durable, cut.shard, entry.view);
                let written = count_in(&self.written, cut.shard, entry.view);
                if durable >= end {
                    None
                } else if written >= end {
                    Some(Stall::Syncing {
                        shard: cut.shard,
                        end,
                    })
                } else if written < cut.start && durable < cut.start {
                    Some(Stall::Lost {
                        shard: cut.shard,
                        have: written,
                    })
                } else {
                    Some(Stall::Repairing {
                        shard: cut.shard,
                        have: written,
                        end,
                    })
                }
            })
    }

    /// Asks the next peer replica of the shard under repair for the front entry's records
    /// of it that this node lacks; none once every peer was asked in this round.
    fn ask_next_peer(&mut self) -> Vec<Command> {
        let (Some(repair), Some(GroupEvent::Metalog(entry)), Some(view)) =
            (self.repair.as_mut(), self.queue.front(), self.view.as_ref())
        else {
            return Vec::new();
        };
        let peers: Vec<NodeId> = view
            .shards
            .get(&repair.shard)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied()
            .filter(|p| *p != self.id)
            .collect();
        if repair.asked >= peers.len() {
            return Vec::new();
        }
        let peer = peers[self.next_peer % peers.len()];
        self.next_peer = self.next_peer.wrapping_add(1);
        repair.asked += 1;
        let have = count_in(&self.written, repair.shard, entry.view);
        let Some((from, to)) = entry
            .cuts
            .iter()
            .find(|c| c.shard == repair.shard)
            .and_then(|cut| {
                let from = entry.seqnum_of(repair.shard, have)?;
                let last = entry.seqnum_of(repair.shard, cut.start + cut.delta - 1)?;
                Some((from, Seqnum(last.0 + 1)))
            })
        else {
            return Vec::new();
        };
        vec![Command::Fetch {
            peer,
            from,
            to,
            min_position: entry.position + 1,
        }]
    }
}

/// How many records of `shard` in `view` the cursors count (0 if the shard is in another).
fn count_in(cursors: &Cursors, shard: ShardId, view: ViewId) -> u64 {
    match cursors.get(&shard) {
        Some((v, count)) if *v == view => *count,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logbook::wire::{RecordKind, ShardCut};
    use logbook::BookId;

    const ME: NodeId = NodeId(10);
    const SHARD: ShardId = ShardId(20);

    fn view(id: u16, start_position: u64) -> View {
        View {
            id: ViewId(id),
            start_position,
            write_quorum: 2,
            shards: [(SHARD, vec![NodeId(10), NodeId(11), NodeId(12)])].into(),
            gateways: BTreeMap::new(),
            storage: BTreeMap::new(),
        }
    }

    fn records(n: usize) -> Vec<LogRecord> {
        (0..n)
            .map(|i| LogRecord {
                book: BookId(0),
                tags: vec![logbook::Tag(1)],
                kind: RecordKind::Data,
                data: bytes::Bytes::from(format!("r{i}")),
            })
            .collect()
    }

    fn entry(position: u64, view: u16, start: u64, delta: u64) -> MetalogEntry {
        MetalogEntry {
            position,
            view: ViewId(view),
            start_seqnum: Seqnum::new(ViewId(view), start),
            cuts: vec![ShardCut {
                shard: SHARD,
                start,
                delta,
            }],
        }
    }

    #[test]
    fn a_batch_waits_for_its_view_and_a_repeat_or_gap_is_refused() {
        let mut engine = StorageEngine::new(ME, BTreeMap::new(), 0);
        let first = LocalId::new(ViewId(1), 0);
        assert_eq!(engine.accept(SHARD, first, &records(2)), Accept::NotYet);
        engine.on_event(GroupEvent::View(view(1, 0)));
        assert_eq!(engine.accept(SHARD, first, &records(2)), Accept::Write);
        assert!(matches!(
            engine.accept(SHARD, first, &records(1)),
            Accept::Refused(_)
        ));
        let gap = LocalId::new(ViewId(1), 3);
        assert!(matches!(
            engine.accept(SHARD, gap, &records(1)),
            Accept::Refused(_)
        ));
        // Written is not durable: nothing is reported until the disk says so.
        assert_eq!(engine.durable_count(SHARD, ViewId(1)), 0);
        engine.on_durable(SHARD, first, 2);
        assert_eq!(engine.report().0[0].durable, 2);
        // A failed write is written again by the next batch.
        let next = LocalId::new(ViewId(1), 2);
        assert_eq!(engine.accept(SHARD, next, &records(1)), Accept::Write);
        engine.on_write_failed(SHARD, next);
        assert_eq!(engine.accept(SHARD, next, &records(1)), Accept::Write);
    }

    #[test]
    fn a_metalog_entry_is_stored_once_the_records_it_orders_here_are_durable() {
        let mut engine = StorageEngine::new(ME, BTreeMap::new(), 0);
        engine.on_event(GroupEvent::View(view(1, 0)));
        let first = LocalId::new(ViewId(1), 0);
        assert_eq!(engine.accept(SHARD, first, &records(3)), Accept::Write);
        assert_eq!(
            engine.on_event(GroupEvent::Metalog(entry(0, 1, 0, 3))),
            vec![]
        );
        assert_eq!(
            engine.stall(),
            Some(Stall::Syncing {
                shard: SHARD,
                end: 3
            })
        );
        let commands = engine.on_durable(SHARD, first, 3);
        assert_eq!(commands, vec![Command::StoreMetalog(entry(0, 1, 0, 3))]);
        assert!(!engine.can_serve(1));
        engine.on_metalog_stored(0);
        assert!(engine.can_serve(1));
        assert_eq!(engine.applied(), 1);
    }

    #[test]
    fn records_this_node_missed_are_fetched_from_each_peer_in_turn() {
        let mut engine = StorageEngine::new(ME, BTreeMap::new(), 0);
        engine.on_event(GroupEvent::View(view(1, 0)));
        let commands = engine.on_event(GroupEvent::Metalog(entry(0, 1, 0, 2)));
        let Some(Command::Fetch {
            peer: first_peer,
            from,
            to,
            min_position,
        }) = commands.first().cloned()
        else {
            panic!("a fetch, not {commands:?}");
        };
        assert_eq!(
            (from, to, min_position),
            (Seqnum::new(ViewId(1), 0), Seqnum::new(ViewId(1), 2), 1)
        );
        // The first peer has nothing: the other is asked; then the round is over.
        let commands = engine.on_fetched(first_peer, Vec::new());
        let Some(Command::Fetch {
            peer: second_peer, ..
        }) = commands.first().cloned()
        else {
            panic!("a fetch, not {commands:?}");
        };
        assert_ne!(first_peer, second_peer);
        assert_eq!(engine.on_fetched(second_peer, Vec::new()), vec![]);
        assert_eq!(engine.retry().len(), 1);
        // A peer's records that continue this node's are written; other shards' are not.
        let fetched: Vec<_> = records(2)
            .into_iter()
            .enumerate()
            .map(|(i, r)| (SHARD, LocalId::new(ViewId(1), i as u64), r))
            .chain([(
                ShardId(21),
                LocalId::new(ViewId(1), 0),
                records(1).remove(0),
            )])
            .collect();
        let commands = engine.on_fetched(second_peer, fetched);
        assert_eq!(
            commands,
            vec![Command::Write {
                shard: SHARD,
                first: LocalId::new(ViewId(1), 0),
                records: records(2)
            }]
        );
        let commands = engine.on_durable(SHARD, LocalId::new(ViewId(1), 0), 2);
        assert_eq!(commands, vec![Command::StoreMetalog(entry(0, 1, 0, 2))]);
    }

    #[test]
    fn a_repair_retried_after_a_peer_never_answered_asks_another_peer_first() {
        let mut engine = StorageEngine::new(ME, BTreeMap::new(), 0);
        engine.on_event(GroupEvent::View(view(1, 0)));
        let commands = engine.on_event(GroupEvent::Metalog(entry(0, 1, 0, 2)));
        let Some(Command::Fetch { peer: silent, .. }) = commands.first().cloned() else {
            panic!("a fetch, not {commands:?}");
        };
        // The fetch is lost (the peer hangs): the retry must not ask the same peer again.
        let commands = engine.retry();
        let Some(Command::Fetch { peer, .. }) = commands.first().cloned() else {
            panic!("a fetch, not {commands:?}");
        };
        assert_ne!(peer, silent);
    }

    #[test]
    fn a_skipped_metalog_position_asks_to_resubscribe_and_repeats_are_ignored() {
        let mut engine = StorageEngine::new(ME, BTreeMap::new(), 0);
        engine.on_event(GroupEvent::View(view(1, 0)));
        assert_eq!(
            engine.on_event(GroupEvent::Metalog(entry(1, 1, 0, 0))),
            vec![Command::Resubscribe { from: 0 }]
        );
        assert_eq!(
            engine.on_event(GroupEvent::Metalog(entry(0, 1, 0, 0))),
            vec![Command::StoreMetalog(entry(0, 1, 0, 0))]
        );
        assert_eq!(
            engine.on_event(GroupEvent::Metalog(entry(0, 1, 0, 0))),
            vec![]
        );
        assert_eq!(engine.on_event(GroupEvent::View(view(1, 0))), vec![]);
        assert_eq!(engine.backlog(), 1);
    }
}
