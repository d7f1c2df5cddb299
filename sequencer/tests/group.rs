//! Deterministic in-memory cluster tests of the replicated sequencer group (`GroupNode`):
//! three members, one shard with one storage replica, a FIFO network that drops messages
//! from or to dead members, and seeds that choose election timeouts and which member dies.

use logbook::wire::{
    GatewayMember, GroupEvent, LocalId, MetalogEntry, NodeId, ShardCut, ShardId, ShardProgress,
    View,
};
use logbook::{Seqnum, ViewId};
use raft::prelude::{ConfState, Entry, Message, MessageType};
use raft::storage::MemStorage;
use raft::Storage;
use sequencer::group::{GroupConfig, GroupNode, Output};
use sequencer::raft_log::{DiskStorage, RaftStore};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

const VIEW: ViewId = ViewId(1);
/// The one gateway; its shard has its id.
const GATEWAY: NodeId = NodeId(50);
const SHARD: ShardId = ShardId(50);
const STORAGE: NodeId = NodeId(100);
const MEMBERS: [NodeId; 3] = [NodeId(0), NodeId(1), NodeId(2)];
/// Deliveries one call to `deliver` may make before the test calls it a message storm.
const DELIVERIES_MAX: usize = 100_000;

struct Cluster<S: RaftStore = MemStorage> {
    nodes: BTreeMap<NodeId, GroupNode<S>>,
    alive: BTreeSet<NodeId>,
    /// (from, to, message) in send order.
    network: VecDeque<(NodeId, NodeId, Message)>,
    /// Each member's `Output::Committed` entries, in emission order.
    committed: BTreeMap<NodeId, Vec<MetalogEntry>>,
    /// The Raft index of each entry a member refused (`Output::Refused`), in emission order.
    refused: BTreeMap<NodeId, Vec<u64>>,
    /// Records the storage replica holds durably; reported to live members.
    durable: u64,
}

fn config(id: NodeId, election_tick: usize) -> GroupConfig {
    GroupConfig {
        id,
        members: MEMBERS.to_vec(),
        election_tick,
        storage: BTreeMap::from([(STORAGE, "storage".to_string())]),
        replication: 1,
        gateway_timeout_ticks: 1_000_000,
        max_in_flight: 3,
    }
}

impl Cluster {
    fn new(election_ticks: [usize; 3]) -> Cluster {
        Cluster::with_nodes(election_ticks, |config| {
            GroupNode::new(config).expect("valid group config")
        })
    }
}

impl Cluster {
    /// Members restarted on copies of one Raft log whose entries, from index 1, carry
    /// `events` and are committed in term 1: what a leader of term 1 that committed them
    /// leaves behind.
    fn on_committed_log(election_ticks: [usize; 3], events: &[Vec<u8>]) -> Cluster {
        Cluster::with_nodes(election_ticks, |config| {
            let log = MemStorage::new_with_conf_state(ConfState::from((
                MEMBERS.iter().map(|id| raft_id(*id)).collect::<Vec<_>>(),
                vec![],
            )));
            let entries: Vec<Entry> = events
                .iter()
                .zip(1..)
                .map(|(data, index)| Entry {
                    term: 1,
                    index,
                    data: data.clone().into(),
                    ..Default::default()
                })
                .collect();
            let mut core = log.wl();
            core.append(&entries).expect("entries follow the empty log");
            core.mut_hard_state().term = 1;
            core.commit_to(entries.len() as u64)
                .expect("every entry is in the log");
            drop(core);
            GroupNode::restart(config, log).expect("valid group config")
        })
    }
}

impl Cluster<DiskStorage> {
    /// Members whose Raft logs live in `dir/<member>`.
    fn open(election_ticks: [usize; 3], dir: &Path) -> Cluster<DiskStorage> {
        Cluster::with_nodes(election_ticks, |config| {
            let member_dir = member_dir(dir, config.id);
            GroupNode::open(config, &member_dir).expect("open member")
        })
    }

    /// Drops `id` (like SIGKILL: nothing unsynced survives, nothing is flushed on the way
    /// out) and opens it again from its directory.
    fn restart(&mut self, id: NodeId, dir: &Path, election_tick: usize) {
        self.nodes.remove(&id);
        let node = GroupNode::open(config(id, election_tick), &member_dir(dir, id))
            .expect("reopen member");
        self.nodes.insert(id, node);
        // It replays its committed metalog into a fresh engine and emits it again.
        self.committed.insert(id, Vec::new());
    }
}

fn member_dir(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(format!("member-{}", id.0))
}

impl<S: RaftStore> Cluster<S> {
    fn with_nodes(
        election_ticks: [usize; 3],
        mut open: impl FnMut(GroupConfig) -> GroupNode<S>,
    ) -> Cluster<S> {
        let nodes = MEMBERS
            .iter()
            .zip(election_ticks)
            .map(|(id, election_tick)| (*id, open(config(*id, election_tick))))
            .collect();
        Cluster {
            nodes,
            alive: MEMBERS.into_iter().collect(),
            network: VecDeque::new(),
            committed: MEMBERS.iter().map(|id| (*id, Vec::new())).collect(),
            refused: MEMBERS.iter().map(|id| (*id, Vec::new())).collect(),
            durable: 0,
        }
    }

    fn absorb(&mut self, from: NodeId, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, message } => self.network.push_back((from, to, message)),
                Output::Committed {
                    event: GroupEvent::Metalog(entry),
                    ..
                } => self
                    .committed
                    .get_mut(&from)
                    .expect("members only")
                    .push(entry),
                Output::Committed {
                    event: GroupEvent::View(view),
                    ..
                } => assert_eq!(view.id, VIEW, "the gateway never leaves, so one view"),
                Output::Refused { raft_index, .. } => self
                    .refused
                    .get_mut(&from)
                    .expect("members only")
                    .push(raft_index),
            }
        }
    }

    fn node(&mut self, id: NodeId) -> &mut GroupNode<S> {
        self.nodes.get_mut(&id).expect("members only")
    }

    /// Ticks one member without delivering what it sends.
    fn tick_one(&mut self, id: NodeId) {
        let gateway = GatewayMember {
            incarnation: 1,
            http_addr: "gateway".into(),
        };
        self.node(id).on_gateway_heartbeat(GATEWAY, gateway);
        let outputs = self.node(id).tick();
        self.absorb(id, outputs);
    }

    /// Ticks every live member, then delivers messages until the network is quiet, checking
    /// after each tick that members agree on every committed prefix.
    fn tick(&mut self) {
        for id in self.alive.clone() {
            self.tick_one(id);
        }
        self.deliver();
        self.check_prefixes();
    }

    fn deliver(&mut self) {
        let mut deliveries = 0;
        while let Some((from, to, message)) = self.network.pop_front() {
            if !self.alive.contains(&from) || !self.alive.contains(&to) {
                continue;
            }
            let outputs = self.node(to).step(message);
            self.absorb(to, outputs);
            deliveries += 1;
            assert!(deliveries < DELIVERIES_MAX, "message storm");
        }
    }

    /// The storage replica makes `records` more records durable and reports to live members.
    fn append(&mut self, records: u64) {
        self.durable += records;
        let progress = ShardProgress {
            node: STORAGE,
            shard: SHARD,
            view: VIEW,
            durable: self.durable,
        };
        for id in self.alive.clone() {
            self.node(id).on_progress(progress);
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.alive
            .iter()
            .copied()
            .find(|id| self.nodes[id].is_leader())
    }

    /// Ticks until `done` holds, at most `ticks_max` times; returns the ticks taken.
    fn run_until(&mut self, ticks_max: usize, done: impl Fn(&Cluster<S>) -> bool) -> usize {
        for ticks in 0..ticks_max {
            if done(self) {
                return ticks;
            }
            self.tick();
        }
        assert!(done(self), "condition not reached in {ticks_max} ticks");
        ticks_max
    }

    fn elect(&mut self) -> NodeId {
        self.run_until(200, |c| c.leader().is_some());
        self.leader().expect("just elected")
    }

    /// Records ordered by `id`'s committed metalog.
    fn ordered(&self, id: NodeId) -> u64 {
        self.committed[&id].iter().map(|e| e.record_count()).sum()
    }

    fn all_alive_ordered_everything(&self) -> bool {
        self.alive
            .iter()
            .all(|id| self.ordered(*id) == self.durable)
    }

    /// Every member's committed sequence, dead ones included, is a prefix of the longest,
    /// and the longest is a well-formed metalog.
    fn check_prefixes(&self) {
        let longest = self
            .committed
            .values()
            .max_by_key(|entries| entries.len())
            .expect("three members");
        for (id, entries) in &self.committed {
            assert_eq!(
                entries[..],
                longest[..entries.len()],
                "member {id:?} diverged"
            );
        }
        check_metalog(longest, self.durable);
    }
}

/// Positions from 0, contiguous seqnums from the view's first, and the shard's cuts
/// contiguous from 0 (no record ordered twice or skipped), never past what is durable.
fn check_metalog(entries: &[MetalogEntry], durable: u64) {
    let mut next_seqnum = Seqnum::new(VIEW, 0);
    let mut next_counter = 0;
    for (position, entry) in entries.iter().enumerate() {
        assert_eq!(entry.position, position as u64, "{entries:?}");
        assert_eq!(entry.start_seqnum, next_seqnum, "{entries:?}");
        for cut in &entry.cuts {
            assert_eq!((cut.shard, cut.start), (SHARD, next_counter), "{entries:?}");
            assert!(cut.delta > 0);
            next_counter += cut.delta;
        }
        next_seqnum = entry.end_seqnum();
    }
    assert!(
        next_counter <= durable,
        "ordered records that are not durable"
    );
}

#[test]
fn a_leader_is_elected_and_orders_progress() {
    let mut cluster = Cluster::new([10, 13, 16]);
    let leader = cluster.elect();
    assert_eq!(leader, NodeId(0), "the shortest election timeout wins");
    for records in [5, 1, 7] {
        cluster.append(records);
        cluster.run_until(20, Cluster::all_alive_ordered_everything);
    }
    let metalog = &cluster.committed[&leader];
    assert!(!metalog.is_empty());
    check_metalog(metalog, cluster.durable);
    for id in MEMBERS {
        assert_eq!(&cluster.committed[&id], metalog, "member {id:?}");
        assert_eq!(cluster.nodes[&id].metalog_len(), metalog.len() as u64);
        assert_eq!(cluster.nodes[&id].leader(), Some(leader));
    }
}

#[test]
fn a_new_leader_continues_the_metalog_after_the_leader_dies() {
    let mut cluster = Cluster::new([10, 13, 16]);
    let old = cluster.elect();
    cluster.append(4);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);
    let before = cluster.committed[&old].len();

    cluster.alive.remove(&old);
    cluster.append(6);
    let ticks = cluster.run_until(100, |c| c.leader().is_some());
    assert!(ticks <= 40, "re-election took {ticks} ticks");
    let new = cluster.leader().expect("just elected");
    assert_ne!(new, old);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);
    cluster.append(2);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);

    let metalog = &cluster.committed[&new];
    assert!(
        metalog.len() > before,
        "the new leader ordered more entries"
    );
    check_metalog(metalog, cluster.durable);
    assert_eq!(cluster.ordered(new), 12);
    for id in cluster.alive.clone() {
        assert_eq!(&cluster.committed[&id], metalog);
    }

    // The old leader comes back as a follower and catches up on what it missed.
    cluster.alive.insert(old);
    cluster.run_until(100, |c| c.committed[&old].len() == c.committed[&new].len());
    assert_eq!(cluster.committed[&old], cluster.committed[&new]);
}

#[test]
fn a_proposal_in_flight_when_the_leader_dies_commits_at_most_once() {
    let mut cluster = Cluster::new([10, 13, 16]);
    let old = cluster.elect();
    cluster.append(3);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);
    // The leader proposes; only one follower receives the proposal before the leader dies.
    cluster.append(5);
    cluster.tick_one(old);
    assert_eq!(
        cluster.nodes[&old]
            .engine()
            .and_then(|e| e.in_flight())
            .map(|e| e.position),
        Some(1)
    );
    let lucky = NodeId((old.0 + 1) % 3);
    let sent: Vec<_> = cluster.network.drain(..).collect();
    for (from, to, message) in sent {
        if from == old && to == lucky {
            let outputs = cluster.node(to).step(message);
            cluster.absorb(to, outputs);
        }
    }
    cluster.alive.remove(&old);
    cluster.network.clear();
    cluster.append(1);
    let new = cluster.elect();
    assert_eq!(
        new, lucky,
        "only the member holding the entry can win the vote"
    );
    cluster.run_until(40, Cluster::all_alive_ordered_everything);
    check_metalog(&cluster.committed[&new], cluster.durable);
    assert_eq!(cluster.ordered(new), 9);
    let taken_over: Vec<(u64, u64, u64)> = cluster.committed[&new]
        .iter()
        .map(|e| (e.position, e.cuts[0].start, e.cuts[0].delta))
        .collect();
    assert_eq!(
        taken_over,
        vec![(0, 0, 3), (1, 3, 5), (2, 8, 1)],
        "the dead leader's proposal (position 1) committed once, under the new leader"
    );

    // The old leader returns: its abandoned proposal never shows up twice.
    cluster.alive.insert(old);
    cluster.run_until(100, |c| c.committed[&old].len() == c.committed[&new].len());
    assert_eq!(cluster.committed[&old], cluster.committed[&new]);
    assert!(!cluster.nodes[&old].is_leader());
    assert_eq!(
        cluster.nodes[&old].engine().and_then(|e| e.in_flight()),
        None
    );
}

#[test]
fn a_committed_metalog_entry_that_does_not_validate_is_skipped_by_every_member() {
    let gateway = GatewayMember {
        incarnation: 1,
        http_addr: "gateway".into(),
    };
    // The view the leader would propose itself, so that it proposes no other.
    let view = View {
        id: VIEW,
        start_position: 0,
        write_quorum: 1,
        shards: BTreeMap::from([(SHARD, vec![STORAGE])]),
        gateways: BTreeMap::from([(GATEWAY, gateway)]),
        storage: BTreeMap::from([(STORAGE, "storage".to_string())]),
    };
    // Entries at the next position that start where the metalog ends, so only validation
    // tells them apart from a good one.
    let cut = |position: u64, delta: u64| MetalogEntry {
        position,
        view: VIEW,
        start_seqnum: Seqnum::new(VIEW, 0),
        cuts: vec![ShardCut {
            shard: SHARD,
            start: 0,
            delta,
        }],
    };
    let invalid = [
        // Past a view's local counters: its seqnums would run into the next view's.
        cut(0, LocalId::COUNTER_END + 1),
        // Its end seqnum overflows a u64.
        cut(0, u64::MAX),
        // At a later position, so it would be stale; refused all the same.
        cut(7, u64::MAX),
    ];
    for entry in &invalid {
        assert!(entry.validate().is_err(), "{entry:?}");
    }
    let good = cut(0, 2);
    let events: Vec<Vec<u8>> = std::iter::once(GroupEvent::View(view))
        .chain(invalid.iter().cloned().map(GroupEvent::Metalog))
        .chain([GroupEvent::Metalog(good.clone())])
        .map(|event| serde_json::to_vec(&event).expect("events serialize"))
        .collect();

    let mut cluster = Cluster::on_committed_log([10, 13, 16], &events);
    cluster.append(2);
    cluster.elect(); // checks after every tick that members agree on the metalog
    for id in MEMBERS {
        assert_eq!(cluster.committed[&id], vec![good.clone()], "member {id:?}");
        assert_eq!(cluster.refused[&id], vec![2, 3, 4], "member {id:?}");
        let node = &cluster.nodes[&id];
        assert_eq!(node.stats().entries_invalid, 3, "member {id:?}");
        assert_eq!((node.events_len(), node.metalog_len()), (2, 1));
    }

    // The group goes on from the good entry, as if the refused ones were never there.
    cluster.append(3);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);
    for id in MEMBERS {
        let cuts: Vec<(u64, u64, u64)> = cluster.committed[&id]
            .iter()
            .map(|e| (e.position, e.cuts[0].start, e.cuts[0].delta))
            .collect();
        assert_eq!(cuts, vec![(0, 0, 2), (1, 2, 3)], "member {id:?}");
    }
}

/// A small deterministic generator (SplitMix64) so seeds replay exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn members_agree_on_every_committed_prefix() {
    let mut seeds_with_a_leader_change = 0;
    for seed in 0..24u64 {
        let mut rng = Rng(seed);
        let ticks = [0, 1, 2].map(|_| 10 + rng.below(10) as usize);
        let mut cluster = Cluster::new(ticks);
        let death_tick = 20 + rng.below(60);
        let kill_leader = rng.below(2) == 0;
        let revive_tick = death_tick + 30 + rng.below(60);
        for tick in 0..200 {
            if rng.below(3) == 0 {
                cluster.append(1 + rng.below(5));
            }
            if tick == death_tick {
                let victim = match cluster.leader() {
                    Some(leader) if kill_leader => leader,
                    _ => MEMBERS[rng.below(3) as usize],
                };
                // Half the time the victim dies right after proposing, before delivery.
                if rng.below(2) == 0 {
                    cluster.tick_one(victim);
                }
                cluster.alive.remove(&victim);
            }
            if tick == revive_tick {
                cluster.alive = MEMBERS.into_iter().collect();
            }
            cluster.tick(); // checks prefixes after every tick
        }
        // Liveness with everyone up and no new records: everything durable gets ordered.
        cluster.alive = MEMBERS.into_iter().collect();
        cluster.run_until(200, Cluster::all_alive_ordered_everything);
        let metalog = &cluster.committed[&MEMBERS[0]];
        let proposers = MEMBERS
            .iter()
            .filter(|id| cluster.nodes[id].stats().proposals > 0)
            .count();
        seeds_with_a_leader_change += usize::from(proposers > 1);
        check_metalog(metalog, cluster.durable);
        for id in MEMBERS {
            assert_eq!(
                &cluster.committed[&id], metalog,
                "seed {seed} member {id:?}"
            );
        }
    }
    assert!(
        seeds_with_a_leader_change >= 8,
        "only {seeds_with_a_leader_change} seeds changed leaders"
    );
}

/// Raft id of a member (Raft reserves 0 for "none").
fn raft_id(id: NodeId) -> u64 {
    u64::from(id.0) + 1
}

/// (term, vote) as `id` has stored them.
fn term_and_vote<S: RaftStore>(node: &GroupNode<S>) -> (u64, u64) {
    let hard_state = node
        .raft_log()
        .initial_state()
        .expect("initial state")
        .hard_state;
    (hard_state.term, hard_state.vote)
}

#[test]
fn a_member_restarted_from_disk_keeps_its_vote_and_rejoins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ticks = [10, 13, 16];
    let mut cluster = Cluster::open(ticks, dir.path());
    let leader = cluster.elect();
    for records in [5, 3] {
        cluster.append(records);
        cluster.run_until(20, Cluster::all_alive_ordered_everything);
    }
    let follower = NodeId((leader.0 + 1) % 3);
    let before = term_and_vote(&cluster.nodes[&follower]);
    assert_eq!(
        before.1,
        raft_id(leader),
        "the follower voted for the leader"
    );
    let engine_state = |node: &GroupNode<DiskStorage>| {
        let engine = node.engine().expect("the view has a shard");
        (
            engine.ordered(),
            engine.next_seqnum(),
            engine.next_position(),
        )
    };
    let engine_before = engine_state(&cluster.nodes[&follower]);

    // SIGKILL: the follower is gone; the others order more records meanwhile.
    cluster.alive.remove(&follower);
    cluster.append(4);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);
    cluster.restart(follower, dir.path(), ticks[follower.0 as usize]);
    assert_eq!(term_and_vote(&cluster.nodes[&follower]), before);

    // Its first tick replays its own committed log into a fresh engine.
    cluster.tick_one(follower);
    cluster.network.clear();
    assert_eq!(cluster.ordered(follower), 8);
    assert_eq!(engine_state(&cluster.nodes[&follower]), engine_before);

    cluster.alive.insert(follower);
    cluster.run_until(100, |c| {
        c.committed[&follower].len() == c.committed[&leader].len()
    });
    assert_eq!(cluster.committed[&follower], cluster.committed[&leader]);
    assert_eq!(cluster.ordered(follower), 12);
    assert_eq!(
        cluster.nodes[&follower].metalog_len(),
        cluster.nodes[&leader].metalog_len()
    );
    assert_eq!(
        cluster.leader(),
        Some(leader),
        "a returning follower deposes no one"
    );
    cluster.append(2);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);
    for id in MEMBERS {
        assert_eq!(cluster.committed[&id], cluster.committed[&leader]);
    }
}

#[test]
fn a_restarted_leader_does_not_vote_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ticks = [10, 13, 16];
    let mut cluster = Cluster::open(ticks, dir.path());
    let leader = cluster.elect();
    cluster.append(3);
    cluster.run_until(20, Cluster::all_alive_ordered_everything);
    let (term, vote) = term_and_vote(&cluster.nodes[&leader]);
    assert_eq!(vote, raft_id(leader), "the leader voted for itself");

    cluster.restart(leader, dir.path(), ticks[leader.0 as usize]);
    assert_eq!(term_and_vote(&cluster.nodes[&leader]), (term, vote));

    // Another member asks for its vote in the same term, with a log as long as its own.
    let candidate = NodeId((leader.0 + 1) % 3);
    let log = cluster.nodes[&leader].raft_log();
    let last_index = log.last_index().expect("last index");
    let last_term = log.term(last_index).expect("term");
    let mut request = Message::default();
    request.set_msg_type(MessageType::MsgRequestVote);
    request.from = raft_id(candidate);
    request.to = raft_id(leader);
    request.term = term;
    request.index = last_index;
    request.log_term = last_term;
    let outputs = cluster.node(leader).step(request);
    let responses: Vec<&Message> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { to, message }
                if *to == candidate
                    && message.get_msg_type() == MessageType::MsgRequestVoteResponse =>
            {
                Some(message)
            }
            _ => None,
        })
        .collect();
    assert_eq!(responses.len(), 1, "{outputs:?}");
    assert!(
        responses[0].reject,
        "it already voted for itself in term {term}"
    );
    // The same step replayed its committed metalog, which the cluster must see.
    cluster.absorb(leader, outputs);

    // The group carries on: a leader is elected and the metalog continues everywhere.
    cluster.network.clear();
    cluster.append(4);
    cluster.run_until(200, Cluster::all_alive_ordered_everything);
    let reference = cluster.committed[&candidate].clone();
    check_metalog(&reference, cluster.durable);
    for id in MEMBERS {
        assert_eq!(cluster.committed[&id], reference, "member {id:?}");
    }
}
