//! The in-memory map of what the segment files hold: where each record's frame is, which
//! seqnums the metalog gave them, per-shard durable progress, and which segments a reclaim may
//! delete. Pure state: no IO, no clocks; the IO thread and recovery feed it.

use crate::codec::{SegmentHeader, ShardCursor};
use bytes::Bytes;
use logbook::wire::{LocalId, MetalogEntry, ShardId};
use logbook::{Seqnum, ViewId};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::sync::Arc;

/// Where one frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    /// Bytes of the record's payload in the frame (what compaction may drop).
    pub data_len: u32,
}

/// The frames of one shard's records in one view, by local counter from `first_counter`.
#[derive(Debug, Default)]
struct Run {
    first_counter: u64,
    slots: VecDeque<Slot>,
}

/// What a segment holds, for reads and for reclaim.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    /// A read-only handle; reads use positional IO on it.
    pub file: Arc<File>,
    pub bytes: u64,
    /// Per (shard, view): the local counters `first..end` whose records are in this segment.
    runs: BTreeMap<(ShardId, ViewId), (u64, u64)>,
    /// The highest `end_seqnum` of the metalog entries in this segment.
    metalog_end_max: Option<Seqnum>,
}

/// Where a read finds an ordered record.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub shard: ShardId,
    pub local_id: LocalId,
    pub slot: Slot,
    pub file: Arc<File>,
}

/// Per shard: the view of its newest records and how many records of that view there are.
pub(crate) type Cursors = BTreeMap<ShardId, (ViewId, u64)>;

/// Checks that `count` records of `shard` starting at `first` continue the shard's records
/// as `cursors` know them: the next counter of the current view, or counter 0 of a newer view.
pub fn check_next(
    cursors: &Cursors,
    shard: ShardId,
    first: LocalId,
    count: u64,
) -> Result<(), String> {
    let (view, counter) = (first.view(), first.counter());
    let expected = match cursors.get(&shard) {
        Some(&(v, next)) if v == view => next,
        Some(&(v, _)) if v > view => {
            return Err(format!(
                "shard {} is in view {}; records of older view {} are refused",
                shard.0, v.0, view.0
            ))
        }
        _ => 0,
    };
    if counter != expected {
        let what = if counter < expected {
            "repeats"
        } else {
            "leaves a gap"
        };
        return Err(format!(
            "shard {} view {}: local counter {counter} {what}; expected {expected}",
            shard.0, view.0
        ));
    }
    if counter + count > (1 << 48) {
        return Err(format!(
            "shard {} view {}: local counter overflows",
            shard.0, view.0
        ));
    }
    Ok(())
}

/// Advances `cursors` past one record.
pub(crate) fn advance(cursors: &mut Cursors, shard: ShardId, id: LocalId) {
    cursors.insert(shard, (id.view(), id.counter() + 1));
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    runs: BTreeMap<(ShardId, ViewId), Run>,
    /// Durable progress per shard.
    pub shards: Cursors,
    /// Metalog entries by start seqnum, for reads; entries wholly below `reclaimed_below` are
    /// dropped.
    metalog: BTreeMap<Seqnum, MetalogEntry>,
    /// Per (shard, view): start counter -> (delta, first seqnum), from every metalog entry seen.
    cuts: BTreeMap<(ShardId, ViewId), BTreeMap<u64, (u64, Seqnum)>>,
    pub last_metalog: Option<MetalogEntry>,
    pub max_view: ViewId,
    pub reclaimed_below: Seqnum,
    pub checkpoint: Option<(Seqnum, Bytes)>,
    pub segments: BTreeMap<u64, SegmentMeta>,
}

impl Index {
    /// Takes the state a segment header carries (from the oldest segment still on disk).
    pub fn start_from(&mut self, h: &SegmentHeader) {
        self.max_view = self.max_view.max(h.max_view);
        for c in &h.shards {
            self.shards.insert(c.shard, (c.view, c.next_counter));
            self.runs.insert(
                (c.shard, c.view),
                Run {
                    first_counter: c.next_counter,
                    slots: VecDeque::new(),
                },
            );
        }
        if let Some(e) = &h.last_metalog {
            self.note_last_metalog(e);
        }
    }

    /// The state a new segment's header carries, from the writer's cursors.
    pub fn header_cursors(cursors: &Cursors) -> Vec<ShardCursor> {
        cursors
            .iter()
            .map(|(&shard, &(view, next_counter))| ShardCursor {
                shard,
                view,
                next_counter,
            })
            .collect()
    }

    pub fn add_segment(&mut self, number: u64, file: Arc<File>, bytes: u64) {
        self.segments.insert(
            number,
            SegmentMeta {
                file,
                bytes,
                runs: BTreeMap::new(),
                metalog_end_max: None,
            },
        );
    }

    pub fn grow_segment(&mut self, number: u64, bytes: u64) {
        if let Some(m) = self.segments.get_mut(&number) {
            m.bytes = m.bytes.max(bytes);
        }
    }

    /// Records that `shard`'s record `id` is durable at `slot`. Errs if it does not continue
    /// the shard's records (only possible for damaged files: the writer checked it).
    pub fn apply_record(&mut self, shard: ShardId, id: LocalId, slot: Slot) -> Result<(), String> {
        check_next(&self.shards, shard, id, 1)?;
        advance(&mut self.shards, shard, id);
        let (view, counter) = (id.view(), id.counter());
        self.max_view = self.max_view.max(view);
        let run = self.runs.entry((shard, view)).or_insert_with(|| Run {
            first_counter: counter,
            slots: VecDeque::new(),
        });
        run.slots.push_back(slot);
        if let Some(meta) = self.segments.get_mut(&slot.segment) {
            let r = meta.runs.entry((shard, view)).or_insert((counter, counter));
            r.1 = counter + 1;
            meta.bytes = meta.bytes.max(slot.offset + slot.len as u64);
        }
        Ok(())
    }

    /// Records a durable metalog entry held in `segment`.
    pub fn apply_metalog(&mut self, entry: &MetalogEntry, segment: u64) {
        if let Some(meta) = self.segments.get_mut(&segment) {
            let end = entry.end_seqnum();
            meta.metalog_end_max = Some(meta.metalog_end_max.map_or(end, |m| m.max(end)));
        }
        if entry.end_seqnum() > self.reclaimed_below {
            self.metalog.insert(entry.start_seqnum, entry.clone());
        }
        self.note_last_metalog(entry);
    }

    /// Learns an entry's cuts, and keeps it as the last entry if it is the newest.
    pub fn note_last_metalog(&mut self, entry: &MetalogEntry) {
        self.max_view = self.max_view.max(entry.view);
        let mut next = entry.start_seqnum.0;
        for cut in &entry.cuts {
            if cut.delta > 0 {
                self.cuts
                    .entry((cut.shard, entry.view))
                    .or_default()
                    .insert(cut.start, (cut.delta, Seqnum(next)));
            }
            next += cut.delta;
        }
        if !matches!(&self.last_metalog, Some(l) if l.position >= entry.position) {
            self.last_metalog = Some(entry.clone());
        }
    }

    /// The seqnum the metalog gave `shard`'s record `counter` of `view`, if any.
    pub fn seq_of(&self, shard: ShardId, view: ViewId, counter: u64) -> Option<Seqnum> {
        let (&start, &(delta, seq)) = self
            .cuts
            .get(&(shard, view))?
            .range(..=counter)
            .next_back()?;
        (counter < start + delta).then(|| Seqnum(seq.0 + (counter - start)))
    }

    /// The last ordered counter of (shard, view) and its seqnum.
    fn last_ordered(&self, shard: ShardId, view: ViewId) -> Option<(u64, Seqnum)> {
        let (&start, &(delta, seq)) = self.cuts.get(&(shard, view))?.iter().next_back()?;
        Some((start + delta - 1, Seqnum(seq.0 + delta - 1)))
    }

    /// Where the ordered record at `seqnum` is, if it is stored here and not reclaimed.
    pub fn locate(&self, seqnum: Seqnum) -> Option<Located> {
        if seqnum < self.reclaimed_below {
            return None;
        }
        let (_, entry) = self.metalog.range(..=seqnum).next_back()?;
        if seqnum >= entry.end_seqnum() {
            return None;
        }
        let mut next = entry.start_seqnum.0;
        for cut in &entry.cuts {
            if seqnum.0 < next + cut.delta {
                let counter = cut.start + (seqnum.0 - next);
                let run = self.runs.get(&(cut.shard, entry.view))?;
                let i = counter.checked_sub(run.first_counter)?;
                let slot = *run.slots.get(usize::try_from(i).ok()?)?;
                let file = self.segments.get(&slot.segment)?.file.clone();
                return Some(Located {
                    shard: cut.shard,
                    local_id: LocalId::new(entry.view, counter),
                    slot,
                    file,
                });
            }
            next += cut.delta;
        }
        None
    }

    /// The sealed segments (all but `active`) a reclaim below `below` may delete: the longest
    /// prefix of the series whose every record is ordered below `below` or is an unordered
    /// leftover of a view older than the last metalog entry's, and whose metalog entries end
    /// at or below `below`.
    pub fn reclaimable_prefix(&self, below: Seqnum, active: u64) -> Vec<u64> {
        let current_view = self.last_metalog.as_ref().map(|e| e.view);
        self.segments
            .iter()
            .take_while(|(&n, meta)| {
                n != active && self.segment_reclaimable(meta, below, current_view)
            })
            .map(|(&n, _)| n)
            .collect()
    }

    fn segment_reclaimable(
        &self,
        meta: &SegmentMeta,
        below: Seqnum,
        current_view: Option<ViewId>,
    ) -> bool {
        if meta.metalog_end_max.is_some_and(|end| end > below) {
            return false;
        }
        meta.runs.iter().all(|(&(shard, view), &(first, end))| {
            // Within a (shard, view) the metalog orders a prefix of the counters, in seqnum
            // order, so the run's last ordered record decides for all its ordered records.
            match self.seq_of(shard, view, end - 1) {
                Some(seq) => seq < below,
                None => {
                    let leftover = current_view.is_some_and(|cv| view < cv);
                    leftover
                        && match self.last_ordered(shard, view) {
                            Some((counter, seq)) if counter >= first => seq < below,
                            _ => true,
                        }
                }
            }
        })
    }

    /// The ordered records of segment `number`: seqnum and payload bytes of each.
    pub fn ordered_in(&self, number: u64) -> Vec<(Seqnum, u32)> {
        let Some(meta) = self.segments.get(&number) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for (&(shard, view), &(first, end)) in &meta.runs {
            let Some(run) = self.runs.get(&(shard, view)) else {
                continue;
            };
            for counter in first..end {
                let Some(seqnum) = self.seq_of(shard, view, counter) else {
                    continue;
                };
                let slot = counter
                    .checked_sub(run.first_counter)
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| run.slots.get(i))
                    .filter(|s| s.segment == number);
                if let Some(slot) = slot {
                    found.push((seqnum, slot.data_len));
                }
            }
        }
        found
    }

    /// Segment `number` was rewritten into `file` of `bytes`: its records are at `moved`.
    pub fn relocate(
        &mut self,
        number: u64,
        file: Arc<File>,
        bytes: u64,
        moved: &[(ShardId, LocalId, Slot)],
    ) {
        if let Some(meta) = self.segments.get_mut(&number) {
            meta.file = file;
            meta.bytes = bytes;
        }
        for &(shard, id, slot) in moved {
            let Some(run) = self.runs.get_mut(&(shard, id.view())) else {
                continue;
            };
            let Some(i) = id.counter().checked_sub(run.first_counter) else {
                continue;
            };
            if let Some(s) = usize::try_from(i).ok().and_then(|i| run.slots.get_mut(i)) {
                if s.segment == number {
                    *s = slot;
                }
            }
        }
    }

    /// Forgets deleted segments and everything below `below`.
    pub fn drop_segments(&mut self, deleted: &[u64], below: Seqnum) {
        self.reclaimed_below = self.reclaimed_below.max(below);
        let Some(&last_deleted) = deleted.iter().max() else {
            self.trim_metalog();
            return;
        };
        for n in deleted {
            self.segments.remove(n);
        }
        for run in self.runs.values_mut() {
            while run.slots.front().is_some_and(|s| s.segment <= last_deleted) {
                run.slots.pop_front();
                run.first_counter += 1;
            }
        }
        self.trim_metalog();
    }

    fn trim_metalog(&mut self) {
        let below = self.reclaimed_below;
        self.metalog.retain(|_, e| e.end_seqnum() > below);
        // Cuts wholly below the reclaim point map no stored record; each (shard, view) keeps
        // its last cut, which says how far it was ordered.
        for cuts in self.cuts.values_mut() {
            let last = cuts.keys().next_back().copied();
            cuts.retain(|start, (delta, seq)| Some(*start) == last || seq.0 + *delta > below.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursors(entries: &[(u32, u16, u64)]) -> Cursors {
        entries
            .iter()
            .map(|&(s, v, n)| (ShardId(s), (ViewId(v), n)))
            .collect()
    }

    fn check(c: &Cursors, shard: u32, view: u16, counter: u64) -> Result<(), String> {
        check_next(c, ShardId(shard), LocalId::new(ViewId(view), counter), 1)
    }

    #[test]
    fn next_local_id_is_accepted_and_gaps_repeats_and_old_views_are_refused() {
        let c = cursors(&[(1, 2, 5)]);
        assert!(check(&c, 1, 2, 5).is_ok());
        assert!(check(&c, 1, 3, 0).is_ok());
        assert!(check(&c, 2, 0, 0).is_ok());
        assert!(check(&c, 1, 2, 4).unwrap_err().contains("repeats"));
        assert!(check(&c, 1, 2, 6).unwrap_err().contains("gap"));
        assert!(check(&c, 1, 3, 1).unwrap_err().contains("gap"));
        assert!(check(&c, 1, 1, 0).unwrap_err().contains("older view"));
        assert!(check(&c, 3, 0, 1).unwrap_err().contains("gap"));
    }
}
