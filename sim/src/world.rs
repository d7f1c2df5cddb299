//! The simulated world: nodes, the network between them, the faults the seed draws, and the
//! event loop in virtual time.

mod reads;
mod storage_node;

use crate::gateway::{Gateway, Op, Out};
use crate::invariants::{Ground, Observer};
use gateway::engine::Reply;
use logbook::wire::{
    GatewayMember, GroupEvent, IndexEntry, LocalId, LogRecord, NodeId, RecordKind, ShardId,
    ShardProgress, View,
};
use logbook::ViewId;
use raft::prelude::Message;
use raft::storage::MemStorage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sequencer::group::{GroupConfig, GroupNode, Output};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Microseconds of virtual time.
pub(crate) type Time = u64;
const MS: Time = 1_000;
const SECOND: Time = 1_000_000;

/// The sequencers' Raft tick, as `tally sequencer` runs it.
const TICK: Time = 50 * MS;
/// Gateways send heartbeats this often.
const HEARTBEAT: Time = 200 * MS;
/// A gateway not heard from for this many ticks leaves the next view (2 s).
const GATEWAY_TIMEOUT_TICKS: u64 = 40;
/// Storage nodes store what their gateways produced, and report, this often.
const STORAGE_STEP: Time = 5 * MS;
/// A storage node reports its progress at least this often, changed or not.
const REPORT_EVERY: Time = 100 * MS;
/// Committed events a storage node that fell behind is sent again per step, at most.
const CATCH_UP_BATCH: usize = 256;
/// Clients send a gateway an operation this often, while it is up and in a view.
const PRODUCE_EVERY: Time = 3 * MS;
/// Gateways resend, ask for index data and take committed events this often.
pub(crate) const GATEWAY_STEP: Time = 5 * MS;
/// A client reads through each gateway this often.
const READ_EVERY: Time = 20 * MS;
/// Reads compare the gateways' indexes this often.
const COMPARE_EVERY: Time = 5 * SECOND;

pub(crate) const SEQUENCERS: [u32; 3] = [0, 1, 2];
const STORAGE: [u32; 3] = [10, 11, 12];
const GATEWAYS: [u32; 2] = [20, 21];

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub seed: u64,
    /// Virtual time with faults on.
    pub safety: Time,
    /// Virtual time, at most, for the system to converge once faults are off.
    pub liveness: Time,
    /// Print the state of the world every simulated second.
    pub verbose: bool,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            safety: 60 * SECOND,
            liveness: 30 * SECOND,
            verbose: false,
        }
    }
}

/// A run that held every invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub trace_hash: u64,
    /// Virtual time simulated, in µs.
    pub simulated: Time,
    pub events: u64,
    /// Group events committed (metalog entries and views).
    pub committed: u64,
    pub views: u64,
    /// Records ordered by the committed metalog.
    pub ordered: u64,
    /// Appends acknowledged to clients.
    pub acknowledged: u64,
    /// Reads checked against what was appended.
    pub reads: u64,
    /// Trim records ordered.
    pub trims: u64,
    pub faults: String,
}

/// A run that broke an invariant (or did not converge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub at: Time,
    pub invariant: &'static str,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at {:.3} s: {}: {}\nreplay: SIM_SEED={} cargo run -p sim --release",
            self.seed,
            self.at as f64 / SECOND as f64,
            self.invariant,
            self.message,
            self.seed
        )
    }
}

/// The faults a seed draws.
#[derive(Debug, Clone)]
struct Faults {
    loss: f64,
    duplicate: f64,
    delay_min: Time,
    delay_max: Time,
    /// Mean time between crashes of some node (none if zero).
    crash_every: Time,
    /// Mean time between partitions (none if zero).
    partition_every: Time,
    /// Rolling clogs: a random pair's link is down for a while, over and over.
    clogs: bool,
    /// How long a storage node's sync takes.
    fsync_min: Time,
    fsync_max: Time,
}

impl Faults {
    fn draw(rng: &mut ChaCha8Rng) -> Faults {
        let mut on = |p: f64| rng.random_bool(p);
        let (lossy, dups, slow, crashes, partitions, clogs, slow_disk) = (
            on(0.5),
            on(0.3),
            on(0.5),
            on(0.6),
            on(0.5),
            on(0.4),
            on(0.3),
        );
        Faults {
            loss: if lossy {
                rng.random_range(0.001..0.2)
            } else {
                0.0
            },
            duplicate: if dups {
                rng.random_range(0.001..0.1)
            } else {
                0.0
            },
            delay_min: rng.random_range(50..500),
            delay_max: if slow {
                rng.random_range(2 * MS..80 * MS)
            } else {
                rng.random_range(600..2 * MS)
            },
            crash_every: if crashes {
                rng.random_range(1..10) * SECOND
            } else {
                0
            },
            partition_every: if partitions {
                rng.random_range(2..15) * SECOND
            } else {
                0
            },
            clogs,
            fsync_min: rng.random_range(50..500),
            fsync_max: if slow_disk {
                rng.random_range(5 * MS..200 * MS)
            } else {
                rng.random_range(500..3 * MS)
            },
        }
    }

    fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            delay_min: 100,
            delay_max: 500,
            crash_every: 0,
            partition_every: 0,
            clogs: false,
            fsync_min: 100,
            fsync_max: 1_000,
        }
    }

    fn describe(&self) -> String {
        format!(
            "loss {:.3}, duplicate {:.3}, delay {}..{} µs, crash every {} s, partition every {} s, clogs {}, fsync {}..{} µs",
            self.loss,
            self.duplicate,
            self.delay_min,
            self.delay_max,
            self.crash_every / SECOND,
            self.partition_every / SECOND,
            self.clogs,
            self.fsync_min,
            self.fsync_max
        )
    }
}

/// What travels between nodes.
#[derive(Debug, Clone)]
pub enum Payload {
    Raft(Box<Message>),
    Progress(ShardProgress),
    Heartbeat(GatewayMember),
    /// Committed events pushed to a gateway (its subscription: a stream, so a batch arrives
    /// whole and in order), the first with this index.
    Events(u64, Vec<GroupEvent>),
    /// A gateway's records for a replica: local counters from `first` of its shard in `view`.
    Replicate {
        view: ViewId,
        shard: ShardId,
        first: u64,
        records: Vec<LogRecord>,
    },
    /// A replica holds the first `durable` records of its shard in `view`.
    Ack {
        view: ViewId,
        durable: u64,
    },
    /// A gateway asks a replica for the index data of local counters `start..start + count` of
    /// (view, shard), which a metalog entry ordered from `first_seqnum`.
    FetchIndex {
        view: ViewId,
        shard: ShardId,
        start: u64,
        count: u64,
        first_seqnum: logbook::Seqnum,
    },
    IndexData(Vec<IndexEntry>),
    /// A request for ordered records: by seqnum range, or the listed seqnums, once the node
    /// applied the metalog up to `min_position`.
    Fetch {
        from: logbook::Seqnum,
        to: logbook::Seqnum,
        seqnums: Vec<logbook::Seqnum>,
        min_position: u64,
        purpose: Purpose,
    },
    /// The records a storage node held of those asked for, and what it had applied.
    Fetched {
        records: Vec<(logbook::Seqnum, ShardId, LocalId, LogRecord)>,
        applied: u64,
        purpose: Purpose,
    },
}

/// What a fetch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A storage node repairs records it missed.
    Repair,
    /// A gateway wants the index data of a metalog entry's records.
    Index,
    /// A client reads records through a gateway.
    Read,
}

#[derive(Debug, Clone)]
enum Event {
    Tick(NodeId),
    Deliver {
        from: NodeId,
        to: NodeId,
        payload: Payload,
    },
    StorageStep(NodeId),
    /// A storage node's sync ended (in the node's incarnation given).
    SyncDone(NodeId, u64),
    /// A client reads through a gateway.
    Read(NodeId),
    GatewayStep(NodeId),
    Produce(NodeId),
    Compare,
    Heartbeat(NodeId),
    Crash,
    /// Crash this node (if it is up).
    CrashNode(NodeId),
    Restart(NodeId),
    Partition,
    Heal,
    Clog,
    Unclog(NodeId, NodeId),
}

struct Sequencer {
    config: GroupConfig,
    /// The Raft log: it survives a crash.
    log: MemStorage,
    node: Option<GroupNode>,
}

/// The world of one run.
struct World {
    seed: u64,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    /// Events by the slot the queue names (the queue holds only orderable keys).
    slots: Vec<Option<Event>>,
    free: Vec<usize>,
    faults: Faults,
    sequencers: BTreeMap<NodeId, Sequencer>,
    storage: BTreeMap<NodeId, crate::storage::Node>,
    gateways: BTreeMap<NodeId, Gateway>,
    /// Links down: (a, b) with a < b.
    cut_links: BTreeSet<(NodeId, NodeId)>,
    pub(crate) observer: Observer,
    pub(crate) ground: Ground,
    next_op: u64,
    /// Reads checked.
    reads: u64,
    hash: u64,
    events: u64,
    producing: bool,
    /// Print the state of the world every simulated second (`--verbose`).
    verbose: bool,
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn link(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

/// Runs one seed: the safety phase, then the liveness phase, then the final checks.
pub fn run(options: Options) -> Result<Outcome, Failure> {
    let mut world = World::new(options.seed);
    world.verbose = options.verbose;
    let faults = world.faults.describe();
    world.start();
    world.run_until(options.safety)?;
    world
        .calm()
        .map_err(|(invariant, message)| world.fail(invariant, message))?;
    let deadline = options.safety + options.liveness;
    while let Some(why) = world.unconverged() {
        if world.now >= deadline {
            return Err(world.fail("liveness", why));
        }
        world.run_until((world.now + 100 * MS).min(deadline))?;
    }
    world
        .final_checks()
        .map_err(|(invariant, message)| world.fail(invariant, message))?;
    Ok(Outcome {
        trace_hash: world.hash,
        simulated: world.now,
        events: world.events,
        committed: world.observer.committed.len() as u64,
        views: world.observer.views(),
        ordered: world.observer.ordered(),
        acknowledged: world.ground.acknowledged(),
        reads: world.reads,
        trims: world.observer.trims(),
        faults,
    })
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let faults = Faults::draw(&mut rng);
        let storage_addrs: BTreeMap<NodeId, String> = STORAGE
            .iter()
            .map(|id| (NodeId(*id), format!("storage-{id}")))
            .collect();
        let members: Vec<NodeId> = SEQUENCERS.iter().map(|id| NodeId(*id)).collect();
        let mut sequencers = BTreeMap::new();
        for id in &members {
            let config = GroupConfig {
                id: *id,
                members: members.clone(),
                election_tick: rng.random_range(10..20),
                storage: storage_addrs.clone(),
                replication: 3,
                gateway_timeout_ticks: GATEWAY_TIMEOUT_TICKS,
                max_in_flight: 4,
            };
            let node = GroupNode::new(config.clone()).expect("a valid group config");
            let log = node.raft_log().clone();
            sequencers.insert(
                *id,
                Sequencer {
                    config,
                    log,
                    node: Some(node),
                },
            );
        }
        let storage = STORAGE
            .iter()
            .map(|id| (NodeId(*id), crate::storage::Node::new(NodeId(*id))))
            .collect();
        let gateways = GATEWAYS
            .iter()
            .map(|id| (NodeId(*id), Gateway::new(NodeId(*id), rng.random())))
            .collect();
        World {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            faults,
            sequencers,
            storage,
            gateways,
            cut_links: BTreeSet::new(),
            observer: Observer::default(),
            ground: Ground::default(),
            next_op: 0,
            reads: 0,
            hash: 0xcbf2_9ce4_8422_2325 ^ seed,
            events: 0,
            producing: true,
            verbose: false,
        }
    }

    fn schedule(&mut self, after: Time, event: Event) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(event);
                slot
            }
            None => {
                self.slots.push(Some(event));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq, slot)));
    }

    fn start(&mut self) {
        let ids: Vec<NodeId> = self.sequencers.keys().copied().collect();
        for id in ids {
            let phase = self.rng.random_range(0..TICK);
            self.schedule(phase, Event::Tick(id));
        }
        let ids: Vec<NodeId> = self.storage.keys().copied().collect();
        for id in ids {
            let phase = self.rng.random_range(0..STORAGE_STEP);
            self.schedule(phase, Event::StorageStep(id));
        }
        let ids: Vec<NodeId> = self.gateways.keys().copied().collect();
        for id in ids {
            let phase = self.rng.random_range(0..HEARTBEAT);
            self.schedule(phase, Event::Heartbeat(id));
            self.schedule(phase, Event::Produce(id));
            self.schedule(phase + READ_EVERY, Event::Read(id));
            self.schedule(phase % GATEWAY_STEP, Event::GatewayStep(id));
        }
        self.schedule(COMPARE_EVERY, Event::Compare);
        if self.faults.crash_every > 0 {
            let after = self.rng.random_range(0..2 * self.faults.crash_every);
            self.schedule(after, Event::Crash);
        }
        if self.faults.partition_every > 0 {
            let after = self.rng.random_range(0..2 * self.faults.partition_every);
            self.schedule(after, Event::Partition);
        }
        if self.faults.clogs {
            let first = self.rng.random_range(0..SECOND);
            self.schedule(first, Event::Clog);
        }
    }

    /// Faults off: links healed, every node up, no more appends.
    fn calm(&mut self) -> Result<(), (&'static str, String)> {
        self.faults = Faults::none();
        self.cut_links.clear();
        self.producing = false;
        let down: Vec<NodeId> = self
            .sequencers
            .iter()
            .filter(|(_, s)| s.node.is_none())
            .map(|(id, _)| *id)
            .chain(
                self.storage
                    .iter()
                    .filter(|(_, s)| !s.up())
                    .map(|(id, _)| *id),
            )
            .chain(
                self.gateways
                    .iter()
                    .filter(|(_, g)| !g.up)
                    .map(|(id, _)| *id),
            )
            .collect();
        for id in down {
            self.restart(id)?;
        }
        self.hash = fnv(self.hash, b"calm");
        Ok(())
    }

    fn fail(&self, invariant: &'static str, message: String) -> Failure {
        Failure {
            seed: self.seed,
            at: self.now,
            invariant,
            message,
        }
    }

    fn run_until(&mut self, until: Time) -> Result<(), Failure> {
        while let Some(Reverse((at, _, slot))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            let event = self.slots[slot]
                .take()
                .expect("a queued slot holds its event");
            self.free.push(slot);
            self.now = at;
            self.events += 1;
            self.hash = fnv(self.hash, &at.to_le_bytes());
            self.handle(event)
                .map_err(|(invariant, message)| self.fail(invariant, message))?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), (&'static str, String)> {
        match event {
            Event::Tick(id) => {
                self.hash = fnv(self.hash, &[1, id.0 as u8]);
                if let Some(node) = self.sequencer(id) {
                    let out = node.tick();
                    self.outputs(id, out)?;
                }
                self.schedule(TICK, Event::Tick(id));
            }
            Event::Deliver { from, to, payload } => {
                if self.cut_links.contains(&link(from, to)) {
                    return Ok(());
                }
                self.deliver(from, to, payload)?;
            }
            Event::SyncDone(id, incarnation) => self.sync_done(id, incarnation)?,
            Event::Read(id) => {
                self.read(id)?;
                self.schedule(READ_EVERY, Event::Read(id));
            }
            Event::StorageStep(id) => {
                self.storage_step(id)?;
                self.schedule(STORAGE_STEP, Event::StorageStep(id));
            }
            Event::GatewayStep(id) => {
                self.gateway_step(id)?;
                self.schedule(GATEWAY_STEP, Event::GatewayStep(id));
            }
            Event::Produce(id) => {
                self.produce(id)?;
                self.schedule(PRODUCE_EVERY, Event::Produce(id));
            }
            Event::Compare => {
                self.compare()?;
                if self.verbose {
                    eprintln!("{}", self.describe());
                }
                self.schedule(COMPARE_EVERY, Event::Compare);
            }
            Event::Heartbeat(id) => {
                self.heartbeat(id);
                self.schedule(HEARTBEAT, Event::Heartbeat(id));
            }
            Event::Crash => {
                if self.faults.crash_every > 0 {
                    self.crash_one();
                    let after = self.rng.random_range(0..2 * self.faults.crash_every);
                    self.schedule(after, Event::Crash);
                }
            }
            Event::CrashNode(id) => {
                if self.faults.crash_every > 0 {
                    self.crash(id);
                }
            }
            Event::Restart(id) => self.restart(id)?,
            Event::Partition => {
                if self.faults.partition_every > 0 {
                    self.partition();
                    let lasts = self.rng.random_range(SECOND / 2..5 * SECOND);
                    self.schedule(lasts, Event::Heal);
                    let after = self.rng.random_range(0..2 * self.faults.partition_every);
                    self.schedule(lasts + after, Event::Partition);
                }
            }
            Event::Heal => {
                self.hash = fnv(self.hash, b"heal");
                self.cut_links.clear();
            }
            Event::Clog => {
                if self.faults.clogs {
                    let all = self.all_nodes();
                    let a = all[self.rng.random_range(0..all.len())];
                    let b = all[self.rng.random_range(0..all.len())];
                    if a != b {
                        self.cut_links.insert(link(a, b));
                        self.hash = fnv(self.hash, &[7, a.0 as u8, b.0 as u8]);
                        let lasts = self.rng.random_range(10 * MS..2 * SECOND);
                        self.schedule(lasts, Event::Unclog(a, b));
                    }
                    let next = self.rng.random_range(10 * MS..SECOND);
                    self.schedule(next, Event::Clog);
                }
            }
            Event::Unclog(a, b) => {
                self.cut_links.remove(&link(a, b));
            }
        }
        Ok(())
    }

    fn all_nodes(&self) -> Vec<NodeId> {
        self.sequencers
            .keys()
            .chain(self.storage.keys())
            .chain(self.gateways.keys())
            .copied()
            .collect()
    }

    fn sequencer(&mut self, id: NodeId) -> Option<&mut GroupNode> {
        self.sequencers.get_mut(&id).and_then(|s| s.node.as_mut())
    }

    fn gateway(&mut self, id: NodeId) -> Option<&mut Gateway> {
        self.gateways.get_mut(&id).filter(|g| g.up)
    }

    /// Sends `payload` over the network: maybe lost, maybe twice, after a random delay.
    fn send(&mut self, from: NodeId, to: NodeId, mut payload: Payload) {
        if self.faults.loss > 0.0 && self.rng.random_bool(self.faults.loss) {
            return;
        }
        let copies = if self.faults.duplicate > 0.0 && self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for copy in 1..=copies {
            let delay = self
                .rng
                .random_range(self.faults.delay_min..=self.faults.delay_max);
            let payload = if copy == copies {
                std::mem::replace(&mut payload, Payload::IndexData(Vec::new()))
            } else {
                payload.clone()
            };
            self.schedule(delay, Event::Deliver { from, to, payload });
        }
    }

    fn deliver(
        &mut self,
        from: NodeId,
        to: NodeId,
        payload: Payload,
    ) -> Result<(), (&'static str, String)> {
        self.hash = fnv(self.hash, &[2, from.0 as u8, to.0 as u8]);
        match payload {
            Payload::Raft(message) => {
                self.hash = fnv(self.hash, &message.term.to_le_bytes());
                self.hash = fnv(self.hash, &(message.msg_type as i32).to_le_bytes());
                if let Some(node) = self.sequencer(to) {
                    let out = node.step(*message);
                    self.outputs(to, out)?;
                }
            }
            Payload::Progress(progress) => {
                self.hash = fnv(self.hash, &progress.durable.to_le_bytes());
                if let Some(node) = self.sequencer(to) {
                    node.on_progress(progress);
                    let out = node.cut();
                    self.outputs(to, out)?;
                }
            }
            Payload::Heartbeat(member) => {
                if let Some(node) = self.sequencer(to) {
                    node.on_gateway_heartbeat(from, member);
                }
            }
            Payload::Events(first, events) if self.storage.contains_key(&to) => {
                self.storage_events(to, first, events)?;
            }
            Payload::Events(first, events) => {
                let now = self.now;
                let Some(gateway) = self.gateway(to) else {
                    return Ok(());
                };
                let mut outs = Vec::new();
                for (i, event) in events.into_iter().enumerate() {
                    // Like `tally gateway`, it takes no more events while the entries it has
                    // wait for index data; its subscription sends them again later.
                    if first + i as u64 == gateway.events_seen && gateway.can_take() {
                        outs.extend(gateway.on_event(event, now));
                    }
                }
                self.gateway_outs(to, outs)?;
            }
            Payload::Replicate {
                view,
                shard,
                first,
                records,
            } => {
                let first = LocalId::new(view, first);
                self.storage_batch(from, to, shard, first, records)?;
            }
            Payload::Ack { view, durable } => {
                if let Some(gateway) = self.gateway(to) {
                    gateway.on_ack(from, view, durable);
                }
            }
            Payload::FetchIndex {
                view,
                shard,
                start,
                count,
                first_seqnum,
            } => {
                let Some(engine) = self.storage.get(&to).and_then(|n| n.engine.as_ref()) else {
                    return Ok(());
                };
                let first = LocalId::new(view, start);
                let entries: Vec<IndexEntry> = engine
                    .recall(shard, first, count as usize)
                    .into_iter()
                    .enumerate()
                    .map(|(i, record)| IndexEntry {
                        seqnum: logbook::Seqnum(first_seqnum.0 + i as u64),
                        book: record.book,
                        tags: record.tags,
                        kind: record.kind,
                    })
                    .collect();
                if !entries.is_empty() {
                    self.send(to, from, Payload::IndexData(entries));
                }
            }
            Payload::Fetch {
                from: start,
                to: end,
                seqnums,
                min_position,
                purpose,
            } => {
                self.storage_fetch(from, to, (start, end), seqnums, min_position, purpose)?;
            }
            Payload::Fetched {
                records,
                applied: _,
                purpose,
            } => match purpose {
                Purpose::Repair => self.storage_fetched(from, to, records)?,
                Purpose::Index => {
                    let entries = records
                        .into_iter()
                        .map(|(seqnum, _, _, record)| IndexEntry {
                            seqnum,
                            book: record.book,
                            tags: record.tags,
                            kind: record.kind,
                        })
                        .collect();
                    let now = self.now;
                    if let Some(gateway) = self.gateway(to) {
                        let outs = gateway.on_index_data(entries, now);
                        self.gateway_outs(to, outs)?;
                    }
                }
                Purpose::Read => self.read_fetched(to, records)?,
            },
            Payload::IndexData(entries) => {
                let now = self.now;

                if let Some(gateway) = self.gateway(to) {
                    let outs = gateway.on_index_data(entries, now);
                    self.gateway_outs(to, outs)?;
                }
            }
        }
        Ok(())
    }

    /// Carries out a sequencer's outputs: messages go out, committed events are checked and
    /// pushed to the gateways.
    fn outputs(&mut self, id: NodeId, out: Vec<Output>) -> Result<(), (&'static str, String)> {
        for output in out {
            match output {
                Output::Send { to, message } => {
                    self.send(id, to, Payload::Raft(Box::new(message)));
                }
                Output::Committed { index, event } => {
                    let bytes = serde_json::to_vec(&event).expect("events serialize");
                    self.hash = fnv(self.hash, &index.to_le_bytes());
                    self.hash = fnv(self.hash, &bytes);
                    self.observer
                        .on_committed(id, index, &event, &self.ground)?;
                    let followers: Vec<NodeId> = self
                        .gateways
                        .keys()
                        .chain(self.storage.keys())
                        .copied()
                        .collect();
                    for gateway in followers {
                        self.send(id, gateway, Payload::Events(index, vec![event.clone()]));
                    }
                }
                Output::Refused { raft_index, reason } => {
                    // The members only propose entries that validate.
                    return Err((
                        "members refuse no committed entry",
                        format!(
                            "sequencer {} refused Raft entry {raft_index}: {reason}",
                            id.0
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Carries out what a gateway asked for: messages, and replies to its clients.
    fn gateway_outs(&mut self, id: NodeId, outs: Vec<Out>) -> Result<(), (&'static str, String)> {
        for out in outs {
            match out {
                Out::Send(to, payload) => self.send(id, to, payload),
                Out::Fetch {
                    to,
                    range,
                    min_position,
                    purpose,
                } => self.send_fetch(id, to, range, min_position, purpose),
                Out::Reply(op_id, reply) => {
                    let now = self.now;
                    let gateway = self.gateways.get_mut(&id).expect("a gateway");
                    if let Some((tag, min)) = gateway.parked.remove(&op_id) {
                        self.blocking_read_done(id, tag, min, reply)?;
                        continue;
                    }
                    let Some(op) = gateway.ops.remove(&op_id) else {
                        continue;
                    };
                    match reply {
                        Reply::Appended(seqnums) => {
                            self.hash = fnv(self.hash, &seqnums[0].0.to_le_bytes());
                            gateway.acknowledged(&op);
                            self.ground.acknowledge(seqnums[0], &op)?;
                        }
                        Reply::Err(logbook::LogError::Discarded) if op.tries < 5 => {
                            // The runtime tries a discarded append again, in the next view.
                            let op = Op {
                                tries: op.tries + 1,
                                ..op
                            };
                            self.next_op += 1;
                            let op_id = self.next_op;
                            let gateway = self.gateways.get_mut(&id).expect("a gateway");
                            let outs = gateway.append(op_id, op, now);
                            self.gateway_outs(id, outs)?;
                        }
                        // Unknown (discarded too often), or refused (a lost condition): either
                        // way not acknowledged.
                        Reply::Err(_) | Reply::Plan(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// A gateway takes the committed events it missed (its subscription resends from where it
    /// is), resends to replicas, and asks for index data.
    fn gateway_step(&mut self, id: NodeId) -> Result<(), (&'static str, String)> {
        let now = self.now;
        let Some(gateway) = self.gateways.get_mut(&id).filter(|g| g.up) else {
            return Ok(());
        };
        let from_index = gateway.events_seen as usize;
        let outs = gateway.step(now, &mut self.rng);
        let missed: Vec<GroupEvent> = self
            .observer
            .committed
            .iter()
            .skip(from_index)
            .take(CATCH_UP_BATCH)
            .cloned()
            .collect();
        if !missed.is_empty() {
            let from = *self.sequencers.keys().next().expect("sequencers exist");
            self.send(from, id, Payload::Events(from_index as u64, missed));
        }
        self.gateway_outs(id, outs)
    }

    /// A client of a gateway that is up and ready appends a record: mostly plain, now and then
    /// conditional on the length of a stream as this gateway sees it, and rarely a trim of a
    /// tag (or the whole book) below a seqnum some client was given.
    fn produce(&mut self, id: NodeId) -> Result<(), (&'static str, String)> {
        if !self.producing {
            return Ok(());
        }
        let now = self.now;
        self.next_op += 1;
        let op_id = self.next_op;
        let tag = logbook::Tag(self.rng.random_range(1..=4));
        let conditional = self.rng.random_bool(0.1);
        let trim = self.rng.random_bool(0.002).then(|| {
            let tag = if self.rng.random_bool(0.3) {
                logbook::Tag::ANY
            } else {
                tag
            };
            (tag, self.ground.some_acknowledged(&mut self.rng))
        });
        let Some(gateway) = self.gateways.get_mut(&id).filter(|g| g.up && g.ready) else {
            return Ok(());
        };
        // The position a client expects: how many appends with the tag it saw acknowledged
        // here, give or take one (so conditions both hold and fail).
        let seen = gateway.acked_with(tag);
        let op = match trim {
            Some((tag, Some(below))) => Op {
                data: bytes::Bytes::new(),
                tags: Vec::new(),
                kind: RecordKind::Trim { tag, below },
                tries: 0,
            },
            _ => Op {
                data: bytes::Bytes::from(format!("{}:{op_id}", id.0)),
                tags: vec![tag],
                kind: if conditional {
                    let position = (seen + 1).saturating_sub(self.rng.random_range(0..3));
                    // Half are chained: a writer's token out of three, naming one of them (or
                    // none) as the predecessor's, so chains both hold and break.
                    if self.rng.random_bool(0.5) {
                        let token = self.rng.random_range(1..=3);
                        let after = self.rng.random_range(0..=3);
                        RecordKind::Cond(logbook::Cond::chained(tag, position, token, after))
                    } else {
                        RecordKind::Cond(logbook::Cond::at(tag, position))
                    }
                } else {
                    RecordKind::Data
                },
                tries: 0,
            },
        };
        let outs = gateway.append(op_id, op, now);
        self.gateway_outs(id, outs)
    }

    /// Every two gateways agree on the order of what both have applied.
    fn compare(&mut self) -> Result<(), (&'static str, String)> {
        let mut seen = Vec::new();
        for (id, gateway) in self.gateways.iter_mut().filter(|(_, g)| g.up) {
            let end = gateway.engine.applied_end();
            seen.push((*id, end, gateway.stream(logbook::Tag::ANY)));
        }
        let (observer, ground) = (&self.observer, &self.ground);
        crate::invariants::one_order::check(&seen, |seqnum, upto| {
            let tags = observer
                .locate(seqnum)
                .and_then(|(shard, id)| ground.record(shard, id))
                .map_or_else(Vec::new, |r| r.tags.clone());
            observer.shows_upto(seqnum, &tags, upto)
        })
    }

    fn heartbeat(&mut self, id: NodeId) {
        let Some(gateway) = self.gateways.get(&id).filter(|g| g.up) else {
            return;
        };
        let member = GatewayMember {
            incarnation: gateway.incarnation,
            http_addr: format!("gateway-{}", id.0),
        };
        let sequencers: Vec<NodeId> = self.sequencers.keys().copied().collect();
        for to in sequencers {
            self.send(id, to, Payload::Heartbeat(member.clone()));
        }
    }

    /// Crashes a random node that is up, and schedules its restart.
    fn crash_one(&mut self) {
        let all = self.all_nodes();
        let id = all[self.rng.random_range(0..all.len())];
        self.crash(id);
    }

    /// Crashes node `id` if it is up, and schedules its restart.
    fn crash(&mut self, id: NodeId) {
        self.hash = fnv(self.hash, &[6, id.0 as u8]);
        if let Some(s) = self.sequencers.get_mut(&id) {
            if s.node.take().is_none() {
                return;
            }
        } else if self.storage.contains_key(&id) {
            if !self.storage_crash(id) {
                return;
            }
        } else if let Some(g) = self.gateways.get_mut(&id) {
            if !std::mem::replace(&mut g.up, false) {
                return;
            }
        }
        let down = self.rng.random_range(100 * MS..5 * SECOND);
        self.schedule(down, Event::Restart(id));
    }

    fn restart(&mut self, id: NodeId) -> Result<(), (&'static str, String)> {
        self.hash = fnv(self.hash, &[8, id.0 as u8]);
        // Now and then a node crashes again soon after it started (a crash loop), before
        // it did much: what it recovered must hold up.
        if self.faults.crash_every > 0 && self.rng.random_bool(0.2) {
            let after = self.rng.random_range(MS..300 * MS);
            self.schedule(after, Event::CrashNode(id));
        }
        if let Some(s) = self.sequencers.get_mut(&id) {
            if s.node.is_none() {
                let node = GroupNode::restart(s.config.clone(), s.log.clone())
                    .expect("a member restarts on its own log");
                s.node = Some(node);
            }
        } else if self.storage.contains_key(&id) {
            self.storage_restart(id)?;
        } else if self.gateways.get(&id).is_some_and(|g| !g.up) {
            // A new process: a new incarnation, an empty engine that rebuilds its index from
            // the committed events; its clients' appends in flight are unknown.
            let incarnation = self.rng.random();
            self.gateways.insert(id, Gateway::new(id, incarnation));
        }
        Ok(())
    }

    /// Cuts the network: one node isolated, or the nodes split in two random halves.
    fn partition(&mut self) {
        let all = self.all_nodes();
        let isolated: BTreeSet<NodeId> = if self.rng.random_bool(0.5) {
            [all[self.rng.random_range(0..all.len())]].into()
        } else {
            all.iter()
                .copied()
                .filter(|_| self.rng.random_bool(0.5))
                .collect()
        };
        for a in &isolated {
            for b in all.iter().filter(|b| !isolated.contains(b)) {
                self.cut_links.insert(link(*a, *b));
            }
        }
        self.hash = fnv(self.hash, &[9, isolated.len() as u8]);
    }

    /// One line: the time, committed events, each node's state.
    fn describe(&self) -> String {
        let mut line = format!(
            "{:>6.1}s committed {} (view {:?}, {} records ordered, {} acked) |",
            self.now as f64 / SECOND as f64,
            self.observer.committed.len(),
            self.observer.view().map(|v| v.id.0),
            self.observer.ordered(),
            self.ground.acknowledged()
        );
        for (id, s) in &self.sequencers {
            line += &match &s.node {
                None => format!(" s{}:down", id.0),
                Some(n) => format!(
                    " s{}:{}t{}e{}",
                    id.0,
                    if n.is_leader() { "L" } else { "" },
                    n.term(),
                    n.events_len()
                ),
            };
        }
        for (id, s) in &self.storage {
            line += &match &s.engine {
                None => format!(" st{}:down", id.0),
                Some(e) => format!(" st{}:a{}{:?}", id.0, e.applied(), e.stall()),
            };
        }
        for (id, g) in &self.gateways {
            line += &format!(
                " g{}:{}{} m{} ops{}",
                id.0,
                if g.up { "up" } else { "down" },
                if g.ready { "/ready" } else { "" },
                g.engine.metalog_position(),
                g.ops.len()
            );
        }
        line += &format!(" cut {}", self.cut_links.len());
        for g in self.gateways.values() {
            if let Some(entry) = g.first_waiting() {
                line += &format!(
                    " | g{} (applied end {}, {:?}) waits on {entry:?}",
                    g.id.0,
                    g.engine.applied_end().0,
                    g.engine.stats()
                );
                for cut in &entry.cuts {
                    for (id, s) in &self.storage {
                        let held = s
                            .engine
                            .as_ref()
                            .map_or(0, |e| e.durable_count(cut.shard, entry.view));
                        line += &format!(" st{}:{held}", id.0);
                    }
                }
            }
        }
        line
    }

    /// Why the system has not converged yet, if it has not.
    fn unconverged(&self) -> Option<String> {
        let len = self.observer.committed.len() as u64;
        for (id, s) in &self.sequencers {
            let applied = s.node.as_ref().map_or(0, GroupNode::events_len);
            if applied != len {
                return Some(format!(
                    "sequencer {} applied {applied} of {len} events",
                    id.0
                ));
            }
        }
        let view = self.observer.view()?;
        for (id, g) in &self.gateways {
            let member = view.gateways.get(id).map(|m| m.incarnation);
            if member != Some(g.incarnation) {
                return Some(format!("gateway {} is not in view {}", id.0, view.id.0));
            }
            if !g.ready || g.engine.metalog_position() != self.observer.metalog_len() {
                return Some(format!(
                    "gateway {} applied {} of {} metalog entries",
                    id.0,
                    g.engine.metalog_position(),
                    self.observer.metalog_len()
                ));
            }
            if !g.ops.is_empty() {
                return Some(format!(
                    "gateway {} has {} appends pending",
                    id.0,
                    g.ops.len()
                ));
            }
        }
        for (id, node) in &self.storage {
            let applied = node.engine.as_ref().map_or(0, |e| e.applied());
            if applied != self.observer.metalog_len() {
                return Some(format!(
                    "storage node {} applied {applied} of {} metalog entries",
                    id.0,
                    self.observer.metalog_len()
                ));
            }
        }
        for (id, g) in &self.gateways {
            let shard = View::shard_of(*id);
            let appended = g.appended_in(view.id);
            let ordered = self.observer.ordered_in(view.id, shard);
            if ordered != appended {
                return Some(format!(
                    "shard {} of view {}: {ordered} of {appended} records ordered",
                    shard.0, view.id.0
                ));
            }
        }
        None
    }

    /// Once converged: every gateway's index is the same, and holds every acknowledged append
    /// at its seqnum with its tags; each tag's stream is the log's records with that tag.
    fn final_checks(&mut self) -> Result<(), (&'static str, String)> {
        self.compare()?;
        let mut streams = BTreeMap::new();
        for (id, gateway) in &mut self.gateways {
            let all = gateway.stream(logbook::Tag::ANY);
            let tags: BTreeMap<u64, Vec<logbook::Seqnum>> = (1..=4)
                .map(|t| (t, gateway.stream(logbook::Tag(t))))
                .collect();
            streams.insert(*id, (all, tags));
        }
        for (all, tags) in streams.values() {
            crate::invariants::trims::check(&self.ground, &self.observer, all, tags)?;
            crate::invariants::acknowledged::check(&self.ground, &self.observer, all)?;
            crate::invariants::tag_index::check(&self.ground, &self.observer, all, tags)?;
        }
        Ok(())
    }
}
