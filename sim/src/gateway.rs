//! A simulated gateway: the real `gateway::engine::LogEngine` (pending appends, the tag index,
//! metalog application, seals) and, around it, what `tally gateway`'s tasks do for it: follow
//! the committed events, seal a view once every entry before it is applied, replicate its
//! records to its shard's replicas (resending what a replica has not acknowledged), and fetch
//! the index data of records it did not append.

use crate::world::{Payload, Purpose, Time};
use bytes::Bytes;
use gateway::engine::{Command, EngineConfig, LogEngine, OpId, Reply};
use logbook::wire::{GroupEvent, IndexEntry, MetalogEntry, NodeId, RecordKind, View};
use logbook::{BookId, Seqnum, Tag, ViewId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

/// The book the clients use.
pub const BOOK: BookId = BookId(0);
/// A record a replica has not acknowledged is sent again after this long.
const RESEND_AFTER: Time = 20_000;
/// Records per replication message, at most.
const BATCH_MAX: usize = 256;
/// Waiting metalog entries whose index data a step asks for, at most.
const FETCH_AHEAD: usize = 8;
/// Metalog entries waiting for index data, at most, before the gateway takes no more events
/// (well under the engine's buffer, `METALOG_ENTRIES_BUFFERED_MAX`, past which it drops them).
const WAITING_MAX: usize = 512;

/// A client's append, as the oracle remembers it.
#[derive(Debug, Clone)]
pub struct Op {
    pub data: Bytes,
    pub tags: Vec<Tag>,
    /// Plain, conditional, or a trim.
    pub kind: RecordKind,
    /// Tries so far (a `Discarded` append is tried again, as the runtime does).
    pub tries: u32,
}

/// What a gateway asks the world to do.
#[derive(Debug)]
pub enum Out {
    Send(NodeId, Payload),
    /// Ask a storage node for ordered records in a range (in as many calls as it takes).
    Fetch {
        to: NodeId,
        range: (Seqnum, Seqnum),
        min_position: u64,
        purpose: Purpose,
    },
    Reply(OpId, Reply),
}

pub struct Gateway {
    pub id: NodeId,
    pub up: bool,
    pub incarnation: u64,
    pub engine: LogEngine,
    /// Committed events applied (the next one's index).
    pub events_seen: u64,
    views: BTreeMap<ViewId, View>,
    member_of: BTreeSet<ViewId>,
    to_seal: Option<ViewId>,
    /// In a view, with the metalog before it applied: it takes appends.
    pub ready: bool,
    /// Records appended in each view, by local counter, until the view is sealed.
    outbox: BTreeMap<ViewId, Vec<logbook::wire::LogRecord>>,
    /// What each replica acknowledged, by (view, replica).
    acked: BTreeMap<(ViewId, NodeId), u64>,
    /// Up to which counter each replica was sent records, and when it was last sent everything
    /// it had not acknowledged.
    sent: BTreeMap<(ViewId, NodeId), (u64, Time)>,
    /// Entries given to the engine and not applied yet (waiting for index data).
    waiting: BTreeMap<u64, MetalogEntry>,
    /// Client appends in flight.
    pub ops: BTreeMap<OpId, Op>,
    /// Appends acknowledged here, by tag.
    acked_by_tag: BTreeMap<Tag, u64>,
    /// Blocking reads parked in the engine: the tag and the seqnum they wait from.
    pub parked: BTreeMap<OpId, (Tag, Seqnum)>,
}

impl Gateway {
    pub fn new(id: NodeId, incarnation: u64) -> Gateway {
        Gateway {
            id,
            up: true,
            incarnation,
            engine: LogEngine::new(EngineConfig {
                shard: View::shard_of(id),
                view: ViewId(0),
                cache_bytes_max: 1 << 20,
                pending_appends_max: 1 << 16,
            }),
            events_seen: 0,
            views: BTreeMap::new(),
            member_of: BTreeSet::new(),
            to_seal: None,
            ready: false,
            outbox: BTreeMap::new(),
            acked: BTreeMap::new(),
            sent: BTreeMap::new(),
            waiting: BTreeMap::new(),
            ops: BTreeMap::new(),
            acked_by_tag: BTreeMap::new(),
            parked: BTreeMap::new(),
        }
    }

    /// `op` was acknowledged.
    pub fn acknowledged(&mut self, op: &Op) {
        for tag in &op.tags {
            *self.acked_by_tag.entry(*tag).or_insert(0) += 1;
        }
    }

    /// Appends with `tag` acknowledged here.
    pub fn acked_with(&self, tag: Tag) -> u64 {
        self.acked_by_tag.get(&tag).copied().unwrap_or(0)
    }

    /// The next committed event, in order.
    pub fn on_event(&mut self, event: GroupEvent, now: Time) -> Vec<Out> {
        self.events_seen += 1;
        let mut out = Vec::new();
        match event {
            GroupEvent::Metalog(entry) => {
                if entry.position >= self.engine.metalog_position() {
                    self.waiting.insert(entry.position, entry.clone());
                }
                let commands = self.engine.on_metalog(&entry);
                out.extend(self.commands(commands, now));
            }
            GroupEvent::View(view) => {
                let member = view
                    .gateways
                    .get(&self.id)
                    .is_some_and(|g| g.incarnation == self.incarnation);
                if member || view.id > self.engine.view() {
                    self.to_seal = Some(view.id);
                }
                if member {
                    self.member_of.insert(view.id);
                }
                self.views.insert(view.id, view);
            }
        }
        out.extend(self.try_seal(now));
        out
    }

    /// Seals the newest view once every entry before it is applied (as `tally gateway` does):
    /// pending appends are discarded, appends go on in the new view.
    fn try_seal(&mut self, now: Time) -> Vec<Out> {
        self.waiting
            .retain(|position, _| *position >= self.engine.metalog_position());
        let Some(view_id) = self.to_seal else {
            return Vec::new();
        };
        let start = self.views[&view_id].start_position;
        if self.engine.metalog_position() < start {
            return Vec::new();
        }
        let mut out = Vec::new();
        if view_id > self.engine.view() {
            let commands = self.engine.seal(view_id);
            out.extend(self.commands(commands, now));
            self.outbox.retain(|view, _| *view >= view_id);
        }
        self.to_seal = None;
        self.ready = self.member_of.contains(&view_id);
        out
    }

    /// A client's append.
    pub fn append(&mut self, op_id: OpId, op: Op, now: Time) -> Vec<Out> {
        let kind = op.kind;
        let records = vec![(op.tags.clone(), kind, op.data.clone())];
        self.ops.insert(op_id, op);
        let commands = self.engine.append(op_id, BOOK, records);
        self.commands(commands, now)
    }

    fn commands(&mut self, commands: Vec<Command>, now: Time) -> Vec<Out> {
        let mut out = Vec::new();
        for command in commands {
            match command {
                Command::Replicate { first, records } => {
                    let outbox = self.outbox.entry(first.view()).or_default();
                    assert_eq!(outbox.len() as u64, first.counter(), "local ids in order");
                    outbox.extend(records);
                    out.extend(self.replicate(first.view(), now, true));
                }
                Command::Reply { op, result } => out.push(Out::Reply(op, result)),
            }
        }
        out
    }

    /// Sends each replica of view `view` what it has not acknowledged: at once when `fresh`
    /// (new records), else only what was sent long enough ago.
    fn replicate(&mut self, view: ViewId, now: Time, fresh: bool) -> Vec<Out> {
        let shard = View::shard_of(self.id);
        let Some(replicas) = self.views.get(&view).and_then(|v| v.shards.get(&shard)) else {
            return Vec::new();
        };
        let Some(records) = self.outbox.get(&view) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for replica in replicas {
            let acked = self.acked.get(&(view, *replica)).copied().unwrap_or(0);
            let (sent_to, resent_at) = self.sent.get(&(view, *replica)).copied().unwrap_or((0, 0));
            // New records go out at once, after what was sent; now and then everything the
            // replica has not acknowledged goes again (a message may have been lost, or arrived
            // before one it follows and been refused).
            let resend = now.saturating_sub(resent_at) >= RESEND_AFTER;
            let from = if resend { acked } else { sent_to.max(acked) };
            let end = (records.len() as u64).min(from + BATCH_MAX as u64);
            if from >= end || !(fresh || resend) {
                continue;
            }
            let batch = records[from as usize..end as usize].to_vec();
            let resent_at = if resend { now } else { resent_at };
            self.sent.insert((view, *replica), (end, resent_at));
            out.push(Out::Send(
                *replica,
                Payload::Replicate {
                    view,
                    shard,
                    first: from,
                    records: batch,
                },
            ));
        }
        out
    }

    /// Whether it takes the next committed event now.
    pub fn can_take(&self) -> bool {
        self.waiting.len() < WAITING_MAX
    }

    /// The first metalog entry waiting to be applied, if any (for `--verbose`).
    pub fn first_waiting(&self) -> Option<&MetalogEntry> {
        self.waiting.values().next()
    }

    /// Records appended in `view` (while the view is not sealed).
    pub fn appended_in(&self, view: ViewId) -> u64 {
        self.outbox.get(&view).map_or(0, |r| r.len() as u64)
    }

    pub fn on_ack(&mut self, replica: NodeId, view: ViewId, durable: u64) {
        let acked = self.acked.entry((view, replica)).or_insert(0);
        *acked = (*acked).max(durable);
    }

    pub fn on_index_data(&mut self, entries: Vec<IndexEntry>, now: Time) -> Vec<Out> {
        let commands = self.engine.on_index_data(entries);
        let mut out = self.commands(commands, now);
        out.extend(self.try_seal(now));
        out
    }

    /// Now and then: resend what replicas lack, and ask for the index data the waiting
    /// entries need (records of other shards, or of this shard from before this incarnation).
    pub fn step(&mut self, now: Time, rng: &mut ChaCha8Rng) -> Vec<Out> {
        // Blocking reads whose deadline passed end empty.
        let commands = self.engine.on_tick(now);
        let mut out = self.commands(commands, now);
        let views: Vec<ViewId> = self.outbox.keys().copied().collect();
        for view in views {
            out.extend(self.replicate(view, now, false));
        }
        // As `tally gateway`: index data from the replicas' memory of recent records, or
        // failing that, by seqnum from a storage node that applied the entries, a batch of
        // them at once.
        if rng.random_bool(0.5) {
            // The entries of one view: seqnums of two views are far apart.
            let Some(first) = self.waiting.values().next() else {
                return out;
            };
            let last = self
                .waiting
                .values()
                .take_while(|e| e.view == first.view)
                .last()
                .unwrap_or(first);
            if let Some(view) = self.views.get(&last.view) {
                let nodes: Vec<NodeId> = view.storage.keys().copied().collect();
                out.push(Out::Fetch {
                    to: nodes[rng.random_range(0..nodes.len())],
                    range: (first.start_seqnum, last.end_seqnum()),
                    min_position: last.position + 1,
                    purpose: Purpose::Index,
                });
            }
            return out;
        }
        let own = View::shard_of(self.id);
        for entry in self.waiting.values().take(FETCH_AHEAD) {
            let Some(view) = self.views.get(&entry.view) else {
                continue;
            };
            let mut first_seqnum = entry.start_seqnum;
            for cut in &entry.cuts {
                let known = cut.shard == own && self.member_of.contains(&entry.view);
                if !known && cut.delta > 0 {
                    if let Some(replicas) = view.shards.get(&cut.shard) {
                        let replica = replicas[rng.random_range(0..replicas.len())];
                        out.push(Out::Send(
                            replica,
                            Payload::FetchIndex {
                                view: entry.view,
                                shard: cut.shard,
                                start: cut.start,
                                count: cut.delta,
                                first_seqnum,
                            },
                        ));
                    }
                }
                first_seqnum = Seqnum(first_seqnum.0 + cut.delta);
            }
        }
        out
    }

    /// Every seqnum of `tag` in the index, in order.
    pub fn stream(&mut self, tag: Tag) -> Vec<Seqnum> {
        let mut all = Vec::new();
        let mut from = Seqnum::ZERO;
        loop {
            let page = self.engine.read_range(BOOK, tag, from, Seqnum::MAX, 10_000);
            let seqnums: Vec<Seqnum> = page
                .into_iter()
                .filter_map(|plan| match plan {
                    gateway::engine::ReadPlan::Cached(r) => Some(r.seqnum),
                    gateway::engine::ReadPlan::Fetch { seqnum } => Some(seqnum),
                    gateway::engine::ReadPlan::Empty => None,
                })
                .collect();
            let Some(last) = seqnums.last() else {
                return all;
            };
            from = last.next();
            all.extend(seqnums);
        }
    }
}
