//! Messages between roles in the ordering protocol (DESIGN.md section 3), and the payload a
//! gateway replicates to its shard's storage nodes.
//!
//! A gateway owns one shard. Its appends get a `LocalId` (the view and a counter), are
//! replicated to the shard's storage nodes, whose `ShardProgress` reaches the sequencer; the
//! sequencer's `MetalogEntry` then gives each shard's next records their seqnums.

use crate::{BookId, Cond, Seqnum, Tag, ViewId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node of the cluster: sequencer, storage node or gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u32);

/// A shard of the physical log: the records appended through one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

/// A record's id before it is ordered: the view it was appended in (high 16 bits) and its
/// 0-based index among its shard's appends in that view (low 48 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocalId(pub u64);

impl LocalId {
    const COUNTER_BITS: u32 = 48;
    /// One past the largest local counter of a view.
    pub const COUNTER_END: u64 = 1 << Self::COUNTER_BITS;

    pub fn new(view: ViewId, counter: u64) -> LocalId {
        assert!(
            counter < (1 << Self::COUNTER_BITS),
            "local counter {counter} overflows a view"
        );
        LocalId(((view.0 as u64) << Self::COUNTER_BITS) | counter)
    }

    pub fn view(self) -> ViewId {
        ViewId((self.0 >> Self::COUNTER_BITS) as u16)
    }

    pub fn counter(self) -> u64 {
        self.0 & ((1 << Self::COUNTER_BITS) - 1)
    }
}

/// What a record does to the log once ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    /// An ordinary record.
    Data,
    /// A conditional append: indexed only if it lands at `cond.position` of `cond.tag`.
    Cond(Cond),
    /// A trim marker: removes `tag`'s stream (`Tag::ANY`: the whole book) below `below`.
    Trim { tag: Tag, below: Seqnum },
}

/// The payload a gateway replicates for one append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub book: BookId,
    pub tags: Vec<Tag>,
    pub kind: RecordKind,
    pub data: Bytes,
}

/// What the index needs of an ordered record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub seqnum: Seqnum,
    pub book: BookId,
    pub tags: Vec<Tag>,
    pub kind: RecordKind,
}

/// A storage node's report: it holds, durably, the first `durable` records of `shard` in
/// `view` (local counters `0..durable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProgress {
    pub node: NodeId,
    pub shard: ShardId,
    pub view: ViewId,
    pub durable: u64,
}

/// One shard's part of a metalog entry: its local counters `start..start + delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCut {
    pub shard: ShardId,
    pub start: u64,
    pub delta: u64,
}

/// One entry of the metalog: the next seqnums, from `start_seqnum`, go to each listed shard's
/// records in turn (shard order as listed, local counter order within a shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetalogEntry {
    /// This entry's index in the metalog; contiguous from 0.
    pub position: u64,
    pub view: ViewId,
    pub start_seqnum: Seqnum,
    pub cuts: Vec<ShardCut>,
}

impl MetalogEntry {
    /// Checks what every user of an entry relies on: it starts in its own view, its seqnums
    /// stay in that view, each cut's local counters fit a view's counters, and no shard is
    /// cut twice. The sequencer makes only such entries; an entry read from the wire or from
    /// disk is checked with this before use, since its methods would overflow and the
    /// gateway's engine would panic on one that is not.
    pub fn validate(&self) -> Result<(), String> {
        if self.start_seqnum.view() != self.view {
            return Err(format!(
                "metalog entry {} starts outside its view {}",
                self.position, self.view.0
            ));
        }
        let mut end = self.start_seqnum.position();
        let mut shards = std::collections::BTreeSet::new();
        for cut in &self.cuts {
            if !shards.insert(cut.shard) {
                return Err(format!(
                    "metalog entry {} cuts shard {} twice",
                    self.position, cut.shard.0
                ));
            }
            if cut
                .start
                .checked_add(cut.delta)
                .is_none_or(|e| e > LocalId::COUNTER_END)
            {
                return Err(format!(
                    "metalog entry {} cuts shard {} past a view's local counters",
                    self.position, cut.shard.0
                ));
            }
            end = end
                .checked_add(cut.delta)
                .filter(|end| *end <= Seqnum::POSITION_MAX + 1)
                .ok_or_else(|| {
                    format!(
                        "metalog entry {} runs past its view's seqnums",
                        self.position
                    )
                })?;
        }
        Ok(())
    }

    /// How many records the entry orders.
    pub fn record_count(&self) -> u64 {
        self.cuts.iter().map(|c| c.delta).sum()
    }

    /// The first seqnum after this entry's records.
    pub fn end_seqnum(&self) -> Seqnum {
        Seqnum(self.start_seqnum.0 + self.record_count())
    }

    /// The seqnum of `shard`'s record with local counter `counter`, if the entry orders it.
    pub fn seqnum_of(&self, shard: ShardId, counter: u64) -> Option<Seqnum> {
        let mut next = self.start_seqnum.0;
        for cut in &self.cuts {
            if cut.shard == shard && counter >= cut.start && counter < cut.start + cut.delta {
                return Some(Seqnum(next + (counter - cut.start)));
            }
            next += cut.delta;
        }
        None
    }

    /// Every (shard, local counter, seqnum) the entry orders, in seqnum order.
    pub fn assignments(&self) -> impl Iterator<Item = (ShardId, u64, Seqnum)> + '_ {
        let mut next = self.start_seqnum.0;
        self.cuts.iter().flat_map(move |cut| {
            let base = next;
            next += cut.delta;
            (0..cut.delta).map(move |i| (cut.shard, cut.start + i, Seqnum(base + i)))
        })
    }
}

/// A gateway in a view: it owns the shard with its node id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayMember {
    /// Differs on every start of the gateway process, so a restarted gateway gets a new view
    /// (and local ids that no earlier record of its shard has).
    pub incarnation: u64,
    pub http_addr: String,
}

/// An epoch of the cluster: who is in it and where each shard's records go. Its metalog
/// entries start at `start_position`, with seqnums from `Seqnum::new(id, 0)`; records of
/// older views that no entry ordered before it are discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub id: ViewId,
    pub start_position: u64,
    /// A record is ordered once this many replicas of its shard hold it durably.
    pub write_quorum: usize,
    /// Each shard's storage replicas. A shard's id is its gateway's node id.
    pub shards: BTreeMap<ShardId, Vec<NodeId>>,
    pub gateways: BTreeMap<NodeId, GatewayMember>,
    /// Every storage node and its gRPC address.
    pub storage: BTreeMap<NodeId, String>,
}

impl View {
    /// The shard a gateway owns.
    pub fn shard_of(gateway: NodeId) -> ShardId {
        ShardId(gateway.0)
    }
}

/// One committed event of the sequencer group, in the order every member applies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupEvent {
    Metalog(MetalogEntry),
    /// The previous view is sealed: no later metalog entry orders its records.
    View(View),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metalog_entry_assigns_shards_in_listed_order() {
        let entry = MetalogEntry {
            position: 0,
            view: ViewId(1),
            start_seqnum: Seqnum::new(ViewId(1), 10),
            cuts: vec![
                ShardCut {
                    shard: ShardId(2),
                    start: 5,
                    delta: 2,
                },
                ShardCut {
                    shard: ShardId(0),
                    start: 0,
                    delta: 1,
                },
            ],
        };
        let got: Vec<_> = entry
            .assignments()
            .map(|(s, c, q)| (s.0, c, q.position()))
            .collect();
        assert_eq!(got, vec![(2, 5, 10), (2, 6, 11), (0, 0, 12)]);
        assert_eq!(
            entry.seqnum_of(ShardId(0), 0),
            Some(Seqnum::new(ViewId(1), 12))
        );
        assert_eq!(entry.seqnum_of(ShardId(0), 1), None);
        assert_eq!(entry.end_seqnum(), Seqnum::new(ViewId(1), 13));
    }

    #[test]
    fn metalog_entries_validate_only_inside_their_view_and_counters() {
        let check = |start: Seqnum, cuts: &[(u32, u64, u64)], expect: Option<&str>| {
            let entry = MetalogEntry {
                position: 4,
                view: ViewId(1),
                start_seqnum: start,
                cuts: cuts
                    .iter()
                    .map(|&(shard, start, delta)| ShardCut {
                        shard: ShardId(shard),
                        start,
                        delta,
                    })
                    .collect(),
            };
            match (entry.validate(), expect) {
                (Ok(()), None) => {}
                (Err(e), Some(expect)) => assert!(e.contains(expect), "{e}"),
                (got, expect) => panic!("{cuts:?}: got {got:?}, expected {expect:?}"),
            }
        };
        let start = Seqnum::new(ViewId(1), 10);
        let last = Seqnum::new(ViewId(1), Seqnum::POSITION_MAX);
        check(start, &[], None);
        check(start, &[(0, 0, 3), (1, 5, 0), (2, 7, 1)], None);
        check(last, &[(0, LocalId::COUNTER_END - 1, 1)], None);
        check(
            Seqnum::new(ViewId(2), 0),
            &[(0, 0, 1)],
            Some("outside its view"),
        );
        check(start, &[(0, 0, 1), (1, 0, 1), (0, 1, 1)], Some("twice"));
        check(
            start,
            &[(0, LocalId::COUNTER_END, 1)],
            Some("local counters"),
        );
        check(start, &[(0, u64::MAX, 2)], Some("local counters"));
        check(last, &[(0, 0, 2)], Some("past its view's seqnums"));
        check(
            start,
            &[(0, 0, 1 << 47), (1, 0, 1 << 47)],
            Some("past its view's seqnums"),
        );
    }

    #[test]
    fn local_id_keeps_view_in_high_bits() {
        let id = LocalId::new(ViewId(7), 99);
        assert_eq!((id.view(), id.counter()), (ViewId(7), 99));
    }
}
