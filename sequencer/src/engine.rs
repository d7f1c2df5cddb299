//! `SequencerEngine`: the deterministic core of the sequencer. It takes storage nodes' shard
//! progress reports, computes each shard's write-quorum progress, and proposes the next
//! metalog entry (a Scalog-style cut) when some shard has records that are durable on a
//! quorum but not yet ordered.
//!
//! It does no IO, reads no clock and keeps no randomness: the runtime feeds it progress,
//! ticks (every cut interval) and commit notifications, and carries the proposed entries
//! through Raft (or an fsync on a single node). By default one entry is in flight, as in Boki:
//! the next entry is proposed only after the previous one is committed. A replicated
//! sequencer may pipeline a few (`set_max_in_flight`): each continues the one before it, and
//! Raft commits them in proposal order, so they never need to be reconciled either; if one is
//! lost (leadership changed), the ones after it are stale and the engine proposes afresh from
//! the committed metalog.

use logbook::wire::{MetalogEntry, NodeId, ShardCut, ShardId, ShardProgress};
use logbook::{Seqnum, ViewId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use thiserror::Error;

/// What a sequencer needs to know about its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencerConfig {
    pub view: ViewId,
    /// The first seqnum this engine assigns; normally `Seqnum::new(view, 0)`.
    pub first_seqnum: Seqnum,
    /// The metalog position of the first entry this engine proposes.
    pub first_position: u64,
    /// Each shard's storage replicas.
    pub shards: BTreeMap<ShardId, Vec<NodeId>>,
    /// A record is ordered once this many replicas of its shard hold it durably. Fewer than
    /// all replicas, so one slow replica does not stall ordering.
    pub write_quorum: usize,
}

/// Why a `SequencerConfig` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("a view needs at least one shard")]
    NoShards,
    #[error("shard {0} has no replicas")]
    NoReplicas(u32),
    #[error("shard {shard} lists replica {node} twice")]
    DuplicateReplica { shard: u32, node: u32 },
    #[error(
        "write quorum {quorum} must be 1..={replicas} (shard {shard} has {replicas} replicas)"
    )]
    BadQuorum {
        quorum: usize,
        shard: u32,
        replicas: usize,
    },
    #[error("first seqnum {seqnum} is not in view {view}")]
    SeqnumOutsideView { seqnum: Seqnum, view: u16 },
}

/// Why `apply_committed` did not apply an entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplyError {
    /// Not the next position: a duplicate, or a deposed leader's proposal whose position a
    /// different entry already took. Expected after leader changes; ignore it.
    #[error("entry at position {position} is stale (expected {expected})")]
    Stale { position: u64, expected: u64 },
    /// The next position, but its seqnum or cut starts do not continue the committed metalog
    /// (or it names a shard twice or a shard the view lacks). Every member rejects it alike.
    #[error("entry at position {position} does not continue the committed metalog")]
    Inconsistent { position: u64 },
    /// The entry does not pass `MetalogEntry::validate`: computing with it would overflow or
    /// leave its view. No sequencer proposes one, so it came from a damaged or foreign log.
    /// Every member rejects it alike, before looking at its position.
    #[error("entry at position {position} is invalid: {reason}")]
    Invalid { position: u64, reason: String },
}

/// Counters for operators; they never influence decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequencerStats {
    /// Entries committed since the engine started.
    pub entries_committed: u64,
    /// Records ordered by committed entries.
    pub records_ordered: u64,
    /// Progress reports for another view.
    pub progress_other_view: u64,
    /// Progress reports from a node or for a shard this view does not know.
    pub progress_unknown: u64,
    /// Progress reports lower than an earlier report of the same (node, shard).
    pub progress_stale: u64,
    /// Commit notifications that did not match the entry in flight.
    pub commits_ignored: u64,
}

/// The sequencer's ordering state machine for one view.
#[derive(Debug)]
pub struct SequencerEngine {
    view: ViewId,
    write_quorum: usize,
    /// Durable counts reported by each replica of each shard; replicas that have not
    /// reported yet hold 0.
    durable: BTreeMap<ShardId, BTreeMap<NodeId, u64>>,
    /// Per shard, how many of its local counters committed entries have ordered.
    ordered: BTreeMap<ShardId, u64>,
    next_seqnum: Seqnum,
    next_position: u64,
    /// Proposed entries awaiting commit, oldest first; each continues the one before it.
    in_flight: VecDeque<MetalogEntry>,
    max_in_flight: usize,
    stats: SequencerStats,
}

impl SequencerEngine {
    pub fn new(config: SequencerConfig) -> Result<SequencerEngine, ConfigError> {
        if config.shards.is_empty() {
            return Err(ConfigError::NoShards);
        }
        if config.first_seqnum.view() != config.view {
            return Err(ConfigError::SeqnumOutsideView {
                seqnum: config.first_seqnum,
                view: config.view.0,
            });
        }
        let mut durable = BTreeMap::new();
        for (shard, replicas) in &config.shards {
            if replicas.is_empty() {
                return Err(ConfigError::NoReplicas(shard.0));
            }
            let mut seen = BTreeSet::new();
            for node in replicas {
                if !seen.insert(*node) {
                    return Err(ConfigError::DuplicateReplica {
                        shard: shard.0,
                        node: node.0,
                    });
                }
            }
            if config.write_quorum == 0 || config.write_quorum > replicas.len() {
                return Err(ConfigError::BadQuorum {
                    quorum: config.write_quorum,
                    shard: shard.0,
                    replicas: replicas.len(),
                });
            }
            durable.insert(*shard, replicas.iter().map(|n| (*n, 0)).collect());
        }
        Ok(SequencerEngine {
            view: config.view,
            write_quorum: config.write_quorum,
            ordered: config.shards.keys().map(|s| (*s, 0)).collect(),
            durable,
            next_seqnum: config.first_seqnum,
            next_position: config.first_position,
            in_flight: VecDeque::new(),
            max_in_flight: 1,
            stats: SequencerStats::default(),
        })
    }

    /// A storage node's progress report. Reports for another view, or from a node that is
    /// not a replica of the shard, are ignored (and counted). A report lower than an earlier
    /// one of the same (node, shard) is stale (reordered in the network) and ignored.
    pub fn on_progress(&mut self, progress: ShardProgress) {
        if progress.view != self.view {
            self.stats.progress_other_view += 1;
            return;
        }
        let Some(durable) = self
            .durable
            .get_mut(&progress.shard)
            .and_then(|replicas| replicas.get_mut(&progress.node))
        else {
            self.stats.progress_unknown += 1;
            return;
        };
        if progress.durable < *durable {
            self.stats.progress_stale += 1;
            return;
        }
        *durable = progress.durable;
    }

    /// How many proposed entries may await commit at once (at least 1; 1 by default).
    pub fn set_max_in_flight(&mut self, max: usize) {
        self.max_in_flight = max.max(1);
    }

    /// Per shard, how many local counters committed entries and the entries in flight order.
    fn proposed(&self, shard: ShardId) -> u64 {
        let ordered = self.ordered.get(&shard).copied().unwrap_or(0);
        let in_flight: u64 = self
            .in_flight
            .iter()
            .flat_map(|entry| entry.cuts.iter())
            .filter(|cut| cut.shard == shard)
            .map(|cut| cut.delta)
            .sum();
        ordered + in_flight
    }

    /// A cut interval passed. Proposes the next metalog entry if fewer than the maximum are
    /// in flight and some shard's quorum progress exceeds what is ordered or proposed. The
    /// entry continues the last one in flight (or the committed metalog) and lists cuts in
    /// shard-id order, only for shards with new records. The runtime must carry it through
    /// Raft and call `on_committed` (or `apply_committed`) once it is durable.
    pub fn on_tick(&mut self) -> Option<MetalogEntry> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        let cuts: Vec<ShardCut> = self
            .ordered
            .keys()
            .filter_map(|shard| {
                let quorum = self.quorum_progress(*shard);
                let proposed = self.proposed(*shard);
                (quorum > proposed).then(|| ShardCut {
                    shard: *shard,
                    start: proposed,
                    delta: quorum - proposed,
                })
            })
            .collect();
        if cuts.is_empty() {
            return None;
        }
        let (position, start_seqnum) = match self.in_flight.back() {
            Some(last) => (last.position + 1, last.end_seqnum()),
            None => (self.next_position, self.next_seqnum),
        };
        let entry = MetalogEntry {
            position,
            view: self.view,
            start_seqnum,
            cuts,
        };
        assert!(
            entry.start_seqnum.position() + entry.record_count() <= Seqnum::POSITION_MAX + 1,
            "view {} ran out of seqnums; a view change is required",
            self.view.0
        );
        self.in_flight.push_back(entry.clone());
        Some(entry)
    }

    /// The entry at `position` is durable (Raft-committed; on one node: fsynced). Advances
    /// the ordered counts and allows the next proposal. A position that does not match the
    /// oldest entry in flight (a duplicate notification) is ignored and counted.
    pub fn on_committed(&mut self, position: u64) {
        let matches = self
            .in_flight
            .front()
            .is_some_and(|entry| entry.position == position);
        if !matches {
            self.stats.commits_ignored += 1;
            return;
        }
        let entry = self.in_flight.pop_front().expect("checked just above");
        for cut in &entry.cuts {
            let ordered = self
                .ordered
                .get_mut(&cut.shard)
                .expect("cuts name only the view's shards");
            assert_eq!(*ordered, cut.start, "cuts are contiguous per shard");
            *ordered += cut.delta;
        }
        self.next_seqnum = entry.end_seqnum();
        self.next_position = entry.position + 1;
        self.stats.entries_committed += 1;
        self.stats.records_ordered += entry.record_count();
    }

    /// A committed metalog entry, whoever proposed it: a replicated sequencer applies every
    /// entry Raft commits, in log order, so a member that becomes leader continues from the
    /// committed metalog. Only the entry at `next_position` applies; any other position (a
    /// deposed leader's late proposal, a duplicate) is `Stale` and changes nothing. An entry at
    /// the right position whose seqnum or cut starts do not continue the committed state is
    /// `Inconsistent` and changes nothing. An entry that does not validate is `Invalid`, at
    /// any position, and changes nothing. Applying an entry retires the oldest entry in
    /// flight if it is this one; if another entry took its position, every entry in flight
    /// continued a history that did not happen, and all are forgotten.
    pub fn apply_committed(&mut self, entry: &MetalogEntry) -> Result<(), ApplyError> {
        entry.validate().map_err(|reason| ApplyError::Invalid {
            position: entry.position,
            reason,
        })?;
        if entry.position != self.next_position {
            self.stats.commits_ignored += 1;
            return Err(ApplyError::Stale {
                position: entry.position,
                expected: self.next_position,
            });
        }
        let continues = entry.view == self.view
            && entry.start_seqnum == self.next_seqnum
            && entry
                .cuts
                .iter()
                .all(|cut| self.ordered.get(&cut.shard) == Some(&cut.start));
        let shards: BTreeSet<ShardId> = entry.cuts.iter().map(|cut| cut.shard).collect();
        let distinct = shards.len() == entry.cuts.len();
        if !continues || !distinct {
            return Err(ApplyError::Inconsistent {
                position: entry.position,
            });
        }
        for cut in &entry.cuts {
            *self
                .ordered
                .get_mut(&cut.shard)
                .expect("checked that the view has the shard") += cut.delta;
        }
        if self.in_flight.front() == Some(entry) {
            self.in_flight.pop_front();
        } else {
            self.in_flight.clear();
        }
        self.next_seqnum = entry.end_seqnum();
        self.next_position = entry.position + 1;
        self.stats.entries_committed += 1;
        self.stats.records_ordered += entry.record_count();
        Ok(())
    }

    /// Forgets the entry in flight without committing it, so `on_tick` can propose again: a
    /// leader that lost leadership (or whose proposal Raft dropped) calls this, as the entry
    /// may never commit. Should it commit after all, `apply_committed` still applies it.
    pub fn abandon_in_flight(&mut self) -> Option<MetalogEntry> {
        let oldest = self.in_flight.pop_front();
        self.in_flight.clear();
        oldest
    }

    /// Whether some shard has records durable on a quorum that neither a committed entry nor
    /// an entry in flight orders: the next entry will.
    pub fn orderable(&self) -> bool {
        self.ordered
            .keys()
            .any(|shard| self.quorum_progress(*shard) > self.proposed(*shard))
    }

    /// The `write_quorum`-th largest durable count among `shard`'s replicas.
    pub fn quorum_progress(&self, shard: ShardId) -> u64 {
        let Some(replicas) = self.durable.get(&shard) else {
            return 0;
        };
        let mut counts: Vec<u64> = replicas.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts[self.write_quorum - 1]
    }

    /// The durable count each replica of `shard` last reported.
    pub fn durable(&self, shard: ShardId) -> BTreeMap<NodeId, u64> {
        self.durable.get(&shard).cloned().unwrap_or_default()
    }

    /// Per shard, how many local counters committed entries have ordered.
    pub fn ordered(&self) -> BTreeMap<ShardId, u64> {
        self.ordered.clone()
    }

    /// The seqnum the next proposed entry starts at (after the committed entries).
    pub fn next_seqnum(&self) -> Seqnum {
        self.next_seqnum
    }

    /// The metalog position of the next proposed entry (after the committed entries).
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// The oldest proposed entry awaiting `on_committed`, if any.
    pub fn in_flight(&self) -> Option<&MetalogEntry> {
        self.in_flight.front()
    }

    /// The newest proposed entry awaiting commit, if any.
    pub fn in_flight_newest(&self) -> Option<&MetalogEntry> {
        self.in_flight.back()
    }

    pub fn view(&self) -> ViewId {
        self.view
    }

    pub fn stats(&self) -> SequencerStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VIEW: ViewId = ViewId(1);

    fn config(shards: &[(u32, &[u32])], write_quorum: usize) -> SequencerConfig {
        SequencerConfig {
            view: VIEW,
            first_seqnum: Seqnum::new(VIEW, 0),
            first_position: 0,
            shards: shards
                .iter()
                .map(|(s, nodes)| (ShardId(*s), nodes.iter().map(|n| NodeId(*n)).collect()))
                .collect(),
            write_quorum,
        }
    }

    fn engine(shards: &[(u32, &[u32])], write_quorum: usize) -> SequencerEngine {
        SequencerEngine::new(config(shards, write_quorum)).expect("valid test config")
    }

    fn progress(node: u32, shard: u32, durable: u64) -> ShardProgress {
        ShardProgress {
            node: NodeId(node),
            shard: ShardId(shard),
            view: VIEW,
            durable,
        }
    }

    /// Cuts as (shard, start, delta) for compact expectations.
    fn cuts(entry: &MetalogEntry) -> Vec<(u32, u64, u64)> {
        entry
            .cuts
            .iter()
            .map(|c| (c.shard.0, c.start, c.delta))
            .collect()
    }

    #[test]
    fn bad_configs_are_rejected() {
        let cases: Vec<(SequencerConfig, ConfigError)> = vec![
            (config(&[], 1), ConfigError::NoShards),
            (config(&[(0, &[])], 1), ConfigError::NoReplicas(0)),
            (
                config(&[(0, &[1, 1])], 1),
                ConfigError::DuplicateReplica { shard: 0, node: 1 },
            ),
            (
                config(&[(0, &[1])], 0),
                ConfigError::BadQuorum {
                    quorum: 0,
                    shard: 0,
                    replicas: 1,
                },
            ),
            (
                config(&[(0, &[1, 2, 3]), (1, &[4])], 2),
                ConfigError::BadQuorum {
                    quorum: 2,
                    shard: 1,
                    replicas: 1,
                },
            ),
            (
                SequencerConfig {
                    first_seqnum: Seqnum::new(ViewId(2), 0),
                    ..config(&[(0, &[1])], 1)
                },
                ConfigError::SeqnumOutsideView {
                    seqnum: Seqnum::new(ViewId(2), 0),
                    view: 1,
                },
            ),
        ];
        for (config, expect) in cases {
            assert_eq!(SequencerEngine::new(config).unwrap_err(), expect);
        }
    }

    #[test]
    fn single_replica_progress_is_ordered() {
        let mut seq = engine(&[(0, &[10])], 1);
        assert_eq!(seq.on_tick(), None, "nothing durable yet");
        seq.on_progress(progress(10, 0, 3));
        let entry = seq.on_tick().expect("three records to order");
        assert_eq!(
            entry,
            MetalogEntry {
                position: 0,
                view: VIEW,
                start_seqnum: Seqnum::new(VIEW, 0),
                cuts: vec![ShardCut {
                    shard: ShardId(0),
                    start: 0,
                    delta: 3
                }],
            }
        );
        seq.on_committed(0);
        assert_eq!(seq.ordered(), BTreeMap::from([(ShardId(0), 3)]));
        assert_eq!(seq.next_seqnum(), Seqnum::new(VIEW, 3));
        assert_eq!(seq.next_position(), 1);
        assert_eq!(seq.on_tick(), None, "everything durable is ordered");
    }

    #[test]
    fn quorum_of_two_keeps_ordering_with_one_replica_stalled() {
        let mut seq = engine(&[(0, &[1, 2, 3])], 2);
        seq.on_progress(progress(1, 0, 5));
        assert_eq!(seq.on_tick(), None, "one replica is not a quorum");
        seq.on_progress(progress(2, 0, 4));
        let first = seq.on_tick().expect("four records on two replicas");
        assert_eq!(cuts(&first), vec![(0, 0, 4)]);
        seq.on_committed(0);
        // Replica 3 never reports; 1 and 2 keep going.
        seq.on_progress(progress(1, 0, 9));
        seq.on_progress(progress(2, 0, 7));
        let second = seq.on_tick().expect("replica 3 must not stall ordering");
        assert_eq!(cuts(&second), vec![(0, 4, 3)]);
        assert_eq!(second.start_seqnum, Seqnum::new(VIEW, 4));
        assert_eq!(seq.quorum_progress(ShardId(0)), 7);
    }

    #[test]
    fn nothing_is_proposed_while_an_entry_is_in_flight() {
        let mut seq = engine(&[(0, &[1])], 1);
        seq.on_progress(progress(1, 0, 2));
        let first = seq.on_tick().expect("two records");
        seq.on_progress(progress(1, 0, 5));
        assert_eq!(seq.on_tick(), None);
        assert_eq!(seq.in_flight(), Some(&first));
        seq.on_committed(7);
        assert_eq!(
            seq.on_tick(),
            None,
            "a commit of another position frees nothing"
        );
        assert_eq!(seq.stats().commits_ignored, 1);
        seq.on_committed(0);
        let second = seq.on_tick().expect("three more records");
        assert_eq!((second.position, cuts(&second)), (1, vec![(0, 2, 3)]));
    }

    #[test]
    fn pipelined_entries_continue_each_other_and_a_lost_one_voids_the_rest() {
        let mut seq = engine(&[(0, &[1])], 1);
        seq.set_max_in_flight(2);
        seq.on_progress(progress(1, 0, 3));
        let first = seq.on_tick().expect("three records");
        seq.on_progress(progress(1, 0, 5));
        let second = seq
            .on_tick()
            .expect("two more, while the first is in flight");
        assert_eq!((second.position, cuts(&second)), (1, vec![(0, 3, 2)]));
        assert_eq!(second.start_seqnum, first.end_seqnum());
        seq.on_progress(progress(1, 0, 6));
        assert_eq!(seq.on_tick(), None, "two in flight is the most");
        assert!(seq.orderable());

        seq.apply_committed(&first).unwrap();
        assert_eq!(seq.in_flight(), Some(&second));
        let third = seq.on_tick().expect("room for one more");
        assert_eq!((third.position, cuts(&third)), (2, vec![(0, 5, 1)]));

        // Another leader's entry took position 1: the second and third continued a history
        // that did not happen; the next proposal starts from the committed metalog.
        let other = MetalogEntry {
            position: 1,
            view: VIEW,
            start_seqnum: first.end_seqnum(),
            cuts: vec![ShardCut {
                shard: ShardId(0),
                start: 3,
                delta: 1,
            }],
        };
        seq.apply_committed(&other).unwrap();
        assert_eq!(seq.in_flight(), None);
        assert_eq!(
            seq.apply_committed(&second),
            Err(ApplyError::Stale {
                position: 1,
                expected: 2
            })
        );
        let next = seq.on_tick().expect("records 4 and 5 are still unordered");
        assert_eq!((next.position, cuts(&next)), (2, vec![(0, 4, 2)]));
        assert_eq!(next.start_seqnum, other.end_seqnum());
    }

    #[test]
    fn seqnums_are_contiguous_across_entries_and_shards() {
        let mut seq = engine(&[(0, &[1]), (1, &[2]), (2, &[3])], 1);
        seq.on_progress(progress(3, 2, 2));
        seq.on_progress(progress(1, 0, 1));
        let first = seq.on_tick().expect("records of shards 0 and 2");
        assert_eq!(cuts(&first), vec![(0, 0, 1), (2, 0, 2)], "shard-id order");
        seq.on_committed(first.position);
        seq.on_progress(progress(2, 1, 4));
        let second = seq.on_tick().expect("records of shard 1");
        assert_eq!(second.start_seqnum, first.end_seqnum());
        assert_eq!(cuts(&second), vec![(1, 0, 4)]);
        seq.on_committed(second.position);
        assert_eq!(seq.next_seqnum(), Seqnum::new(VIEW, 7));
    }

    #[test]
    fn other_views_unknown_nodes_and_stale_reports_are_ignored() {
        let mut seq = engine(&[(0, &[1])], 1);
        seq.on_progress(ShardProgress {
            view: ViewId(0),
            ..progress(1, 0, 8)
        });
        seq.on_progress(progress(9, 0, 8));
        seq.on_progress(progress(1, 5, 8));
        assert_eq!(seq.on_tick(), None);
        seq.on_progress(progress(1, 0, 3));
        seq.on_progress(progress(1, 0, 2));
        assert_eq!(
            seq.quorum_progress(ShardId(0)),
            3,
            "progress never goes back"
        );
        let stats = seq.stats();
        assert_eq!(
            (
                stats.progress_other_view,
                stats.progress_unknown,
                stats.progress_stale
            ),
            (1, 2, 1)
        );
    }

    #[test]
    fn first_entry_starts_at_configured_position_and_seqnum() {
        let mut seq = SequencerEngine::new(SequencerConfig {
            first_seqnum: Seqnum::new(VIEW, 100),
            first_position: 42,
            ..config(&[(0, &[1])], 1)
        })
        .expect("valid config");
        seq.on_progress(progress(1, 0, 1));
        let entry = seq.on_tick().expect("one record");
        assert_eq!(
            (entry.position, entry.start_seqnum),
            (42, Seqnum::new(VIEW, 100))
        );
    }

    #[test]
    fn a_follower_applies_entries_another_member_proposed() {
        let mut leader = engine(&[(0, &[1]), (1, &[2])], 1);
        let mut follower = engine(&[(0, &[1]), (1, &[2])], 1);
        leader.on_progress(progress(1, 0, 2));
        leader.on_progress(progress(2, 1, 3));
        let first = leader.on_tick().expect("five records");
        leader.on_committed(first.position);
        assert_eq!(follower.apply_committed(&first), Ok(()));
        assert_eq!(follower.ordered(), leader.ordered());
        assert_eq!(follower.next_seqnum(), Seqnum::new(VIEW, 5));
        assert_eq!(follower.next_position(), 1);
        // The follower takes over: it continues the metalog where the leader left it.
        follower.on_progress(progress(1, 0, 4));
        let second = follower.on_tick().expect("two more records of shard 0");
        assert_eq!(
            (second.position, second.start_seqnum, cuts(&second)),
            (1, Seqnum::new(VIEW, 5), vec![(0, 2, 2)])
        );
    }

    #[test]
    fn stale_and_inconsistent_entries_are_not_applied() {
        let mut seq = engine(&[(0, &[1])], 1);
        seq.on_progress(progress(1, 0, 2));
        let mine = seq.on_tick().expect("two records");
        // Another leader's entry took position 0 first: mine lost and is no longer in flight.
        let theirs = MetalogEntry {
            cuts: vec![ShardCut {
                shard: ShardId(0),
                start: 0,
                delta: 1,
            }],
            ..mine.clone()
        };
        assert_eq!(seq.apply_committed(&theirs), Ok(()));
        assert_eq!(seq.in_flight(), None);
        assert_eq!(
            seq.apply_committed(&mine),
            Err(ApplyError::Stale {
                position: 0,
                expected: 1
            })
        );
        let wrong_start = MetalogEntry {
            position: 1,
            start_seqnum: Seqnum::new(VIEW, 1),
            ..mine.clone()
        };
        assert_eq!(
            seq.apply_committed(&wrong_start),
            Err(ApplyError::Inconsistent { position: 1 }),
            "shard 0's counter 0 is already ordered"
        );
        let next = seq.on_tick().expect("counter 1 is not ordered yet");
        assert_eq!((next.position, cuts(&next)), (1, vec![(0, 1, 1)]));
    }

    #[test]
    fn an_entry_that_does_not_validate_is_invalid_and_changes_nothing() {
        let mut seq = engine(&[(0, &[1])], 1);
        seq.on_progress(progress(1, 0, 2));
        let mine = seq.on_tick().expect("two records");
        let past_the_view = MetalogEntry {
            cuts: vec![ShardCut {
                shard: ShardId(0),
                start: 0,
                delta: u64::MAX,
            }],
            ..mine.clone()
        };
        assert!(matches!(
            seq.apply_committed(&past_the_view),
            Err(ApplyError::Invalid { position: 0, .. })
        ));
        assert_eq!(seq.in_flight(), Some(&mine), "nothing changed");
        assert_eq!(seq.apply_committed(&mine), Ok(()));
        assert_eq!(seq.next_seqnum(), Seqnum::new(VIEW, 2));
    }

    #[test]
    fn an_abandoned_entry_is_proposed_again() {
        let mut seq = engine(&[(0, &[1])], 1);
        seq.on_progress(progress(1, 0, 2));
        let first = seq.on_tick().expect("two records");
        assert_eq!(seq.abandon_in_flight(), Some(first.clone()));
        assert_eq!(seq.on_tick(), Some(first), "same state, same entry");
    }

    #[derive(Debug, Clone)]
    enum Input {
        Progress { node: u32, shard: u32, durable: u64 },
        Tick,
        Commit,
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            (0u32..4, 0u32..3, 0u64..50).prop_map(|(node, shard, durable)| Input::Progress {
                node,
                shard,
                durable
            }),
            Just(Input::Tick),
            Just(Input::Commit),
        ]
    }

    proptest! {
        /// Whatever the progress reports, entries' cuts are contiguous per shard, never exceed
        /// the quorum progress at proposal time, and seqnums and positions are contiguous.
        #[test]
        fn cuts_are_contiguous_and_within_quorum_progress(
            inputs in proptest::collection::vec(input(), 0..200),
            write_quorum in 1usize..=3,
        ) {
            let shards: &[(u32, &[u32])] = &[(0, &[0, 1, 2]), (1, &[1, 2, 3]), (2, &[0, 2, 3])];
            let mut seq = engine(shards, write_quorum);
            // The model: max report per (shard, node), and per shard the next expected start.
            let mut reports: BTreeMap<(u32, u32), u64> = BTreeMap::new();
            let mut next_start: BTreeMap<u32, u64> = BTreeMap::new();
            let mut next_seqnum = Seqnum::new(VIEW, 0);
            let mut next_position = 0;
            let mut in_flight: Option<MetalogEntry> = None;
            for input in inputs {
                match input {
                    Input::Progress { node, shard, durable } => {
                        seq.on_progress(progress(node, shard, durable));
                        let known = (shard == 0 && node != 3)
                            || (shard == 1 && node != 0)
                            || (shard == 2 && node != 1);
                        if known {
                            let r = reports.entry((shard, node)).or_default();
                            *r = (*r).max(durable);
                        }
                    }
                    Input::Tick => {
                        let proposed = seq.on_tick();
                        if in_flight.is_some() {
                            prop_assert_eq!(proposed, None);
                            continue;
                        }
                        let Some(entry) = proposed else { continue };
                        prop_assert_eq!(entry.position, next_position);
                        prop_assert_eq!(entry.start_seqnum, next_seqnum);
                        prop_assert!(!entry.cuts.is_empty());
                        let mut last_shard = None;
                        for cut in &entry.cuts {
                            prop_assert!(cut.delta > 0);
                            prop_assert!(last_shard < Some(cut.shard), "shard-id order");
                            last_shard = Some(cut.shard);
                            let start = next_start.entry(cut.shard.0).or_default();
                            prop_assert_eq!(cut.start, *start, "contiguous per shard");
                            let mut counts: Vec<u64> = reports
                                .iter()
                                .filter(|((s, _), _)| *s == cut.shard.0)
                                .map(|(_, d)| *d)
                                .collect();
                            counts.resize(3.max(counts.len()), 0);
                            counts.sort_unstable_by(|a, b| b.cmp(a));
                            prop_assert!(cut.start + cut.delta <= counts[write_quorum - 1]);
                        }
                        in_flight = Some(entry);
                    }
                    Input::Commit => {
                        if let Some(entry) = in_flight.take() {
                            seq.on_committed(entry.position);
                            for cut in &entry.cuts {
                                *next_start.entry(cut.shard.0).or_default() += cut.delta;
                            }
                            next_seqnum = entry.end_seqnum();
                            next_position += 1;
                        }
                    }
                }
            }
            prop_assert_eq!(seq.next_seqnum(), next_seqnum);
        }
    }
}
