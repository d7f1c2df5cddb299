//! `GroupNode`: one member of the replicated sequencer group, a Raft node (raft-rs's `RawNode`)
//! wrapped around a `SequencerEngine`. Its Raft log is a `RaftStore`: raft-rs's in-memory
//! `MemStorage` (`GroupNode::new`, for tests and simulation) or a `DiskStorage` in a directory
//! (`GroupNode::open`), which is the only IO a member does.
//!
//! The leader cuts metalog entries from shard progress and proposes them through Raft; every
//! member applies each committed entry, in log order, to its own engine and emits it as
//! `Output::Committed`. Keeping every engine in step with the committed metalog is what lets
//! a new leader continue it: positions and seqnums stay contiguous and each shard's ordered
//! counter continues from the last committed entry.
//!
//! It reads no clock and draws no randomness: the runtime (or a simulator) calls
//! `tick` once per logical tick, delivers Raft messages with `step`, and carries out the
//! returned `Output`s. Each member's election timeout is passed in (`election_tick`), so raft-rs
//! draws its randomized timeout from a one-value range.
//!
//! Each `Ready`'s entries and hard state are written and synced before its persisted messages
//! are returned, so a vote or an acknowledgement never outlives a crash that loses its state.
//! A member whose Raft log cannot be written or synced panics (fail-stop): after a failed
//! fsync the file's contents are unknown, and going on could break a promise already made.
//! A member reopened from its directory replays its committed entries into a fresh engine
//! (raft-rs hands them out again from index 1), re-emitting them as `Output::Committed`.
//!
//! Views go through the same Raft log as metalog entries (`GroupEvent::View`). Gateways send
//! heartbeats to the leader (`on_gateway_heartbeat`); when the live gateways differ from the
//! current view's (one joined, restarted with a new incarnation, or missed heartbeats for
//! `gateway_timeout_ticks`), the leader lets the metalog entry in flight commit, then proposes
//! the next view starting at the next metalog position. Once it commits, every member's
//! engine starts over for the new view: its shards, their replicas, seqnums from
//! `Seqnum::new(view, 0)`. An entry of an older view that commits after it is stale.
//!
//! It does not compact the log, take snapshots or change the group's own membership.

use crate::engine::{ApplyError, SequencerConfig, SequencerEngine};
use crate::raft_log::{DiskStorage, RaftLogError, RaftStore};
use logbook::wire::{GatewayMember, GroupEvent, NodeId, ShardId, ShardProgress, View};
use logbook::{Seqnum, ViewId};
use raft::prelude::{ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use thiserror::Error;

/// The smallest election timeout, in ticks, a member may be given. Raft's base election
/// timeout (used by check-quorum and pre-vote leases) is this value.
pub const ELECTION_TICKS_MIN: usize = 10;
/// A leader sends heartbeats every this many ticks; well under `ELECTION_TICKS_MIN`.
pub const HEARTBEAT_TICKS: usize = 2;
/// The most entry bytes one append message carries.
pub const MESSAGE_BYTES_MAX: u64 = 1024 * 1024;
/// The most append messages in flight to one follower.
pub const INFLIGHT_MESSAGES_MAX: usize = 256;

/// One member's view of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// This member. Its Raft id is `NodeId.0 + 1`, since Raft reserves id 0 for "none".
    pub id: NodeId,
    /// Every member of the group, this one included.
    pub members: Vec<NodeId>,
    /// This member's election timeout in ticks, at least `ELECTION_TICKS_MIN`. Members should
    /// differ (a simulator draws them from its seed) so that elections do not split forever.
    pub election_tick: usize,
    /// Every storage node and its gRPC address; views place shards on them.
    pub storage: BTreeMap<NodeId, String>,
    /// Replicas per shard, at most the number of storage nodes. Records are ordered once a
    /// majority of a shard's replicas hold them.
    pub replication: usize,
    /// A gateway that sent no heartbeat for this many ticks leaves the next view.
    pub gateway_timeout_ticks: u64,
    /// Metalog entries the leader may have proposed and not yet seen committed (at least 1).
    pub max_in_flight: usize,
}

/// Why a `GroupNode` could not be built.
#[derive(Debug, Error)]
pub enum GroupError {
    #[error("the group needs at least one storage node")]
    NoStorage,
    #[error("replication {replication} must be 1..={storage} (the number of storage nodes)")]
    BadReplication { replication: usize, storage: usize },
    #[error("the group has no members")]
    NoMembers,
    #[error("member {0} is listed twice")]
    DuplicateMember(u32),
    #[error("node {0} is not a member of the group")]
    NotAMember(u32),
    #[error("election tick {election_tick} is below the minimum {ELECTION_TICKS_MIN}")]
    ElectionTickTooSmall { election_tick: usize },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft log: {0}")]
    RaftLog(#[from] RaftLogError),
}

/// What the runtime must do after an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Deliver `message` to member `to` (unreliably is fine: Raft retries).
    Send { to: NodeId, message: Message },
    /// The next event (a metalog entry or a view) is committed. Every member emits every
    /// committed event exactly once, in order; `index` counts them from 0.
    Committed { index: u64, event: GroupEvent },
    /// The committed Raft entry at `raft_index` was refused: its bytes are not a
    /// `GroupEvent`, or its metalog entry does not validate. No member proposes such an
    /// entry, so the runtime should report it as an error. Every member refuses it alike and
    /// skips it without changing state, as it skips a stale entry.
    Refused { raft_index: u64, reason: String },
}

/// Counters for operators; they never influence decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Entries this member proposed as leader.
    pub proposals: u64,
    /// Proposals Raft refused (e.g. during a leadership transfer).
    pub proposals_dropped: u64,
    /// In-flight proposals forgotten because leadership changed.
    pub proposals_abandoned: u64,
    /// Committed entries at a position already taken (a deposed leader's late proposal).
    pub entries_stale: u64,
    /// Committed entries at the next position that did not continue the metalog.
    pub entries_inconsistent: u64,
    /// Committed entries whose bytes are not a `GroupEvent`.
    pub entries_undecodable: u64,
    /// Committed metalog entries that do not validate (`MetalogEntry::validate`).
    pub entries_invalid: u64,
    /// Views proposed by this member as leader.
    pub views_proposed: u64,
    /// Committed views that did not follow the current one (a deposed leader's late proposal).
    pub views_stale: u64,
    /// Messages Raft rejected (e.g. from a non-member).
    pub messages_rejected: u64,
}

/// One member of the sequencer group, its Raft log kept in `S`.
pub struct GroupNode<S: RaftStore = MemStorage> {
    raw: RawNode<S>,
    /// The current view's engine; none before the first view or in a view without shards.
    engine: Option<SequencerEngine>,
    view: Option<View>,
    storage: BTreeMap<NodeId, String>,
    replication: usize,
    gateway_timeout_ticks: u64,
    max_in_flight: usize,
    /// Ticks since start: the clock of gateway heartbeats.
    ticks: u64,
    /// Gateways heard from (as leader), with the tick of their last heartbeat.
    gateways_seen: BTreeMap<NodeId, (GatewayMember, u64)>,
    /// The newest progress report of each (storage node, shard), handed to the engine of a
    /// view installed after it arrived.
    progress: BTreeMap<(NodeId, ShardId), ShardProgress>,
    /// A view this member proposed that has not committed yet.
    view_in_flight: bool,
    /// Committed events applied (metalog entries and views).
    events_len: u64,
    /// The term this member leads in, if it leads. When it changes, the engine's in-flight
    /// entry is abandoned: it may never commit, and the new leader must be free to propose.
    leading_term: Option<u64>,
    /// Committed metalog entries applied.
    metalog_len: u64,
    stats: GroupStats,
}

/// Raft id of a member: Raft reserves 0 for "no node".
fn raft_id(node: NodeId) -> u64 {
    u64::from(node.0) + 1
}

/// The member with Raft id `id`, if `id` names one.
fn node_id(id: u64) -> Option<NodeId> {
    let node = id.checked_sub(1)?;
    u32::try_from(node).ok().map(NodeId)
}

impl GroupNode<MemStorage> {
    /// A member whose Raft log lives in memory only: for tests and simulation.
    pub fn new(config: GroupConfig) -> Result<GroupNode, GroupError> {
        GroupNode::with_store(config, |conf_state| {
            Ok(MemStorage::new_with_conf_state(conf_state))
        })
    }

    /// A member restarted on the Raft log an earlier one kept in `log` (clones of a
    /// `MemStorage` share it): what a simulated crash and restart does. Like a member reopened
    /// from its directory, it keeps its term, vote and log, and re-applies its committed
    /// entries.
    pub fn restart(config: GroupConfig, log: MemStorage) -> Result<GroupNode, GroupError> {
        GroupNode::with_store(config, |_| Ok(log))
    }
}

impl GroupNode<DiskStorage> {
    /// A member whose Raft log is kept in `dir`, created if missing. A member reopened after a
    /// crash keeps its term, vote and log, and re-applies its committed entries.
    pub fn open(config: GroupConfig, dir: &Path) -> Result<GroupNode<DiskStorage>, GroupError> {
        GroupNode::with_store(config, |conf_state| DiskStorage::open(dir, conf_state))
    }
}

impl<S: RaftStore> GroupNode<S> {
    fn with_store(
        config: GroupConfig,
        open: impl FnOnce(ConfState) -> Result<S, RaftLogError>,
    ) -> Result<GroupNode<S>, GroupError> {
        if config.members.is_empty() {
            return Err(GroupError::NoMembers);
        }
        let mut seen = BTreeSet::new();
        for member in &config.members {
            if !seen.insert(*member) {
                return Err(GroupError::DuplicateMember(member.0));
            }
        }
        if !seen.contains(&config.id) {
            return Err(GroupError::NotAMember(config.id.0));
        }
        if config.election_tick < ELECTION_TICKS_MIN {
            return Err(GroupError::ElectionTickTooSmall {
                election_tick: config.election_tick,
            });
        }
        if config.storage.is_empty() {
            return Err(GroupError::NoStorage);
        }
        if config.replication == 0 || config.replication > config.storage.len() {
            return Err(GroupError::BadReplication {
                replication: config.replication,
                storage: config.storage.len(),
            });
        }
        let raft_config = raft::Config {
            id: raft_id(config.id),
            election_tick: ELECTION_TICKS_MIN,
            heartbeat_tick: HEARTBEAT_TICKS,
            // A one-value range: raft-rs's "random" timeout is always `election_tick`.
            min_election_tick: config.election_tick,
            max_election_tick: config.election_tick + 1,
            max_size_per_msg: MESSAGE_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_MESSAGES_MAX,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let voters: Vec<u64> = seen.iter().map(|member| raft_id(*member)).collect();
        let store = open(ConfState::from((voters, vec![])))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, store, &logger)?;
        Ok(GroupNode {
            raw,
            engine: None,
            view: None,
            storage: config.storage,
            replication: config.replication,
            gateway_timeout_ticks: config.gateway_timeout_ticks,
            max_in_flight: config.max_in_flight.max(1),
            ticks: 0,
            gateways_seen: BTreeMap::new(),
            progress: BTreeMap::new(),
            view_in_flight: false,
            events_len: 0,
            leading_term: None,
            metalog_len: 0,
            stats: GroupStats::default(),
        })
    }

    /// One logical tick. Raft counts it towards heartbeats and elections, gateway heartbeats
    /// age by it; the leader also proposes the next view or metalog entry, if any.
    pub fn tick(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        self.ticks += 1;
        self.raw.tick();
        self.process_ready(&mut out);
        self.propose();
        self.process_ready(&mut out);
        out
    }

    /// A cut interval passed (or progress arrived): the leader proposes the next view or
    /// metalog entry, if any. Unlike `tick`, no Raft time passes.
    pub fn cut(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        self.propose();
        self.process_ready(&mut out);
        out
    }

    /// A Raft message from another member.
    pub fn step(&mut self, message: Message) -> Vec<Output> {
        let mut out = Vec::new();
        if self.raw.step(message).is_err() {
            self.stats.messages_rejected += 1;
        }
        self.process_ready(&mut out);
        out
    }

    /// A storage node's progress report. Every member records it, so that a new leader can
    /// cut at once; only the leader turns it into proposals (on its next tick).
    pub fn on_progress(&mut self, progress: ShardProgress) {
        let newest = self
            .progress
            .get(&(progress.node, progress.shard))
            .is_none_or(|p| (p.view, p.durable) <= (progress.view, progress.durable));
        if newest {
            self.progress
                .insert((progress.node, progress.shard), progress);
        }
        if let Some(engine) = &mut self.engine {
            engine.on_progress(progress);
        }
    }

    /// A gateway's heartbeat. The leader puts a gateway it hears from into the next view, and
    /// leaves out one it has not heard from for `gateway_timeout_ticks`.
    pub fn on_gateway_heartbeat(&mut self, node: NodeId, member: GatewayMember) {
        self.gateways_seen.insert(node, (member, self.ticks));
    }

    /// The current view, once one has committed.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// How many committed events this member has applied: the index of the next.
    pub fn events_len(&self) -> u64 {
        self.events_len
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The Raft term this member is in.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this member knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        node_id(self.raw.raft.leader_id)
    }

    /// How many committed metalog entries this member has applied.
    pub fn metalog_len(&self) -> u64 {
        self.metalog_len
    }

    /// The current view's engine, kept in step with the committed metalog.
    pub fn engine(&self) -> Option<&SequencerEngine> {
        self.engine.as_ref()
    }

    /// The Raft log: entries, hard state and conf state as this member stores them.
    pub fn raft_log(&self) -> &S {
        self.raw.store()
    }

    pub fn stats(&self) -> GroupStats {
        self.stats
    }

    /// Proposes the next view, or else the engine's next entry, if this member leads and may
    /// propose. A new leader first waits until an entry of its own term commits (raft-rs
    /// appends an empty one on election) and it has applied everything committed: only then
    /// does its engine hold the whole committed metalog, so that its entry continues it.
    fn propose(&mut self) {
        self.sync_leadership();
        if self.leading_term.is_none() || self.view_in_flight {
            return;
        }
        let log = &self.raw.raft.raft_log;
        if !self.raw.raft.commit_to_current_term() || log.applied < log.committed {
            return;
        }
        if let Some(view) = self.next_view() {
            // The view starts after the entry in flight: let that one commit first.
            if self
                .engine
                .as_ref()
                .is_some_and(|e| e.in_flight().is_some())
            {
                return;
            }
            if self.propose_event(&GroupEvent::View(view)) {
                self.view_in_flight = true;
                self.stats.views_proposed += 1;
            }
            return;
        }
        while let Some(entry) = self.engine.as_mut().and_then(SequencerEngine::on_tick) {
            if !self.propose_event(&GroupEvent::Metalog(entry)) {
                if let Some(engine) = &mut self.engine {
                    engine.abandon_in_flight();
                }
                return;
            }
        }
    }

    fn propose_event(&mut self, event: &GroupEvent) -> bool {
        let data = serde_json::to_vec(event).expect("a GroupEvent always serializes");
        let proposed = self.raw.propose(vec![], data).is_ok();
        if proposed {
            self.stats.proposals += 1;
        } else {
            self.stats.proposals_dropped += 1;
        }
        proposed
    }

    /// The view the live gateways call for, if it differs from the current one.
    fn next_view(&self) -> Option<View> {
        let live: BTreeMap<NodeId, GatewayMember> = self
            .gateways_seen
            .iter()
            .filter(|(_, (_, seen))| self.ticks.saturating_sub(*seen) <= self.gateway_timeout_ticks)
            .map(|(node, (member, _))| (*node, member.clone()))
            .collect();
        let current = self.view.as_ref();
        let unchanged = match current {
            Some(view) => view.gateways == live,
            None => live.is_empty(),
        };
        let id = current.map_or(Some(1), |view| view.id.0.checked_add(1))?;
        if unchanged {
            return None;
        }
        let storage: Vec<NodeId> = self.storage.keys().copied().collect();
        let shards = live
            .keys()
            .map(|gateway| {
                let first = gateway.0 as usize % storage.len();
                let replicas = (0..self.replication)
                    .map(|i| storage[(first + i) % storage.len()])
                    .collect();
                (View::shard_of(*gateway), replicas)
            })
            .collect::<BTreeMap<ShardId, Vec<NodeId>>>();
        Some(View {
            id: ViewId(id),
            start_position: self.metalog_len,
            write_quorum: self.replication / 2 + 1,
            shards,
            gateways: live,
            storage: self.storage.clone(),
        })
    }

    /// Abandons the engine's in-flight entry when this member gains or loses leadership.
    fn sync_leadership(&mut self) {
        let leading = self.is_leader().then_some(self.raw.raft.term);
        if leading != self.leading_term {
            let abandoned = self.engine.as_mut().and_then(|e| e.abandon_in_flight());
            if abandoned.is_some() || self.view_in_flight {
                self.stats.proposals_abandoned += 1;
            }
            self.view_in_flight = false;
            self.leading_term = leading;
            // A new leader has heard no heartbeats yet: give the view's gateways a full timeout.
            if leading.is_some() {
                if let Some(view) = &self.view {
                    for (node, member) in &view.gateways {
                        self.gateways_seen
                            .entry(*node)
                            .or_insert((member.clone(), self.ticks))
                            .1 = self.ticks;
                    }
                }
            }
        }
    }

    /// Handles raft-rs's `Ready`s: send what needs no persistence, apply committed entries,
    /// persist and sync the entries and hard state, and only then send the persisted messages.
    fn process_ready(&mut self, out: &mut Vec<Output>) {
        const WRITE_FAILED: &str = "a member whose Raft log cannot be written must stop";
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            Self::send(ready.take_messages(), out);
            assert!(
                ready.snapshot().is_empty(),
                "the group never compacts its log, so no member is ever sent a snapshot"
            );
            self.apply(ready.take_committed_entries(), out);
            let store = self.raw.mut_store();
            store.append(ready.entries()).expect(WRITE_FAILED);
            if let Some(hard_state) = ready.hs() {
                store.set_hard_state(hard_state).expect(WRITE_FAILED);
            }
            store.sync().expect(WRITE_FAILED);
            Self::send(ready.take_persisted_messages(), out);
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit).expect(WRITE_FAILED);
            }
            Self::send(light.take_messages(), out);
            self.apply(light.take_committed_entries(), out);
            self.raw.advance_apply();
        }
        self.sync_leadership();
    }

    fn send(messages: Vec<Message>, out: &mut Vec<Output>) {
        for message in messages {
            let to = node_id(message.to).expect("raft-rs sends only to members");
            out.push(Output::Send { to, message });
        }
    }

    /// Applies committed Raft entries, in log order. Empty entries (a new leader's) carry no
    /// event; stale ones lost their place to an earlier entry; undecodable and invalid ones
    /// are refused. Whether an entry applies depends only on the entry and the events before
    /// it, so every member makes the same decision.
    fn apply(&mut self, entries: Vec<Entry>, out: &mut Vec<Output>) {
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryNormal || entry.get_data().is_empty() {
                continue;
            }
            let event = match serde_json::from_slice::<GroupEvent>(entry.get_data()) {
                Ok(event) => event,
                Err(e) => {
                    self.stats.entries_undecodable += 1;
                    out.push(Output::Refused {
                        raft_index: entry.index,
                        reason: format!("not a group event: {e}"),
                    });
                    continue;
                }
            };
            let applied = match &event {
                GroupEvent::Metalog(metalog_entry) => match self.apply_metalog(metalog_entry) {
                    Ok(applied) => applied,
                    Err(reason) => {
                        out.push(Output::Refused {
                            raft_index: entry.index,
                            reason,
                        });
                        false
                    }
                },
                GroupEvent::View(view) => self.apply_view(view),
            };
            if applied {
                out.push(Output::Committed {
                    index: self.events_len,
                    event,
                });
                self.events_len += 1;
            }
        }
    }

    /// Applies a committed metalog entry: `Ok(true)` if it continued the metalog, `Ok(false)`
    /// if it is skipped as stale or inconsistent (expected after leader changes), and `Err`
    /// with the reason if it does not validate, which no leader proposes.
    fn apply_metalog(&mut self, entry: &logbook::wire::MetalogEntry) -> Result<bool, String> {
        if let Err(reason) = entry.validate() {
            self.stats.entries_invalid += 1;
            return Err(reason);
        }
        let Some(engine) = &mut self.engine else {
            self.stats.entries_stale += 1;
            return Ok(false);
        };
        match engine.apply_committed(entry) {
            Ok(()) => {
                self.metalog_len += 1;
                Ok(true)
            }
            Err(ApplyError::Stale { .. }) => {
                self.stats.entries_stale += 1;
                Ok(false)
            }
            Err(ApplyError::Inconsistent { .. }) => {
                self.stats.entries_inconsistent += 1;
                Ok(false)
            }
            Err(e @ ApplyError::Invalid { .. }) => {
                self.stats.entries_invalid += 1;
                Err(e.to_string())
            }
        }
    }

    /// A view applies if it follows the current one and starts at the next metalog position;
    /// the engine then starts over for it.
    fn apply_view(&mut self, view: &View) -> bool {
        let follows = self
            .view
            .as_ref()
            .is_none_or(|current| view.id > current.id)
            && view.start_position == self.metalog_len;
        if !follows {
            self.stats.views_stale += 1;
            return false;
        }
        self.view_in_flight = false;
        self.engine = (!view.shards.is_empty())
            .then(|| {
                SequencerEngine::new(SequencerConfig {
                    view: view.id,
                    first_seqnum: Seqnum::new(view.id, 0),
                    first_position: view.start_position,
                    shards: view.shards.clone(),
                    write_quorum: view.write_quorum,
                })
            })
            .and_then(Result::ok)
            .map(|mut engine| {
                engine.set_max_in_flight(self.max_in_flight);
                engine
            });
        self.progress.retain(|_, p| p.view >= view.id);
        if let Some(engine) = &mut self.engine {
            for progress in self.progress.values() {
                engine.on_progress(*progress);
            }
        }
        self.view = Some(view.clone());
        true
    }
}
