//! A simulated storage node: the real `storage_node::engine::StorageEngine` (which batches it
//! takes, what it reports durable, when a metalog entry is stored, which peer it repairs from,
//! when it serves a read) over a simulated disk, with the glue `tally storage` puts around it.
//!
//! The disk holds one segment of real frames (`storage_node::codec`). A write lands in the page
//! cache at once; a sync, which the seed may make slow, makes everything written before it
//! durable; records are acknowledged only then, while metalog entries ride on the next sync
//! (as `tally storage` stores them). A crash keeps what was synced and, of what was not, a
//! prefix cut at any byte: unsynced writes are lost and the last one may be torn. A restart
//! reads the segment back with `codec::scan`, which cuts a torn tail off as recovery does.

use crate::world::Time;
use bytes::Bytes;
use logbook::wire::{LocalId, LogRecord, MetalogEntry, NodeId, ShardId};
use logbook::{Seqnum, ViewId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use storage_node::codec::{self, Frame};
use storage_node::engine::StorageEngine;

/// Records written and not synced yet, reported to the engine once a sync covers them.
#[derive(Debug, Clone)]
pub struct Pending {
    pub shard: ShardId,
    pub first: LocalId,
    pub count: u64,
    /// The gateway to acknowledge them to (none for records repaired from a peer).
    pub ack_to: Option<NodeId>,
}

/// The disk's bytes and the index built from them.
#[derive(Debug, Default)]
pub struct Disk {
    bytes: Vec<u8>,
    /// Bytes a sync made durable.
    synced: usize,
    /// Where each record's frame is, by (shard, local id).
    records: BTreeMap<(ShardId, LocalId), (usize, usize)>,
    /// Stored metalog entries, by start seqnum.
    metalog: BTreeMap<Seqnum, MetalogEntry>,
    last_metalog: Option<u64>,
    /// Per shard: the newest view's records held, contiguous from counter 0.
    cursors: BTreeMap<ShardId, (ViewId, u64)>,
}

impl Disk {
    /// Writes records (the engine checked they continue the shard's); returns the end offset.
    pub fn write_records(
        &mut self,
        shard: ShardId,
        first: LocalId,
        records: &[LogRecord],
    ) -> usize {
        for (i, record) in records.iter().enumerate() {
            let id = LocalId(first.0 + i as u64);
            let offset = self.bytes.len();
            let len = codec::encode_record(shard, id, record, &mut self.bytes);
            self.index_record(shard, id, offset, len)
                .expect("the engine writes records in order");
        }
        self.bytes.len()
    }

    pub fn write_metalog(&mut self, entry: &MetalogEntry) -> usize {
        codec::encode_metalog(entry, &mut self.bytes);
        self.index_metalog(entry.clone());
        self.bytes.len()
    }

    fn index_record(
        &mut self,
        shard: ShardId,
        id: LocalId,
        offset: usize,
        len: usize,
    ) -> Result<(), String> {
        storage_node::check_next(&self.cursors, shard, id, 1)?;
        self.cursors.insert(shard, (id.view(), id.counter() + 1));
        self.records.insert((shard, id), (offset, len));
        Ok(())
    }

    fn index_metalog(&mut self, entry: MetalogEntry) {
        self.last_metalog = Some(entry.position);
        self.metalog.insert(entry.start_seqnum, entry);
    }

    /// Everything written so far is durable once the sync that starts now ends.
    pub fn sync_target(&self) -> Option<usize> {
        (self.bytes.len() > self.synced).then_some(self.bytes.len())
    }

    pub fn synced(&mut self, upto: usize) {
        self.synced = self.synced.max(upto);
    }

    /// A crash: what was synced stays; of the rest, a prefix cut at any byte (often none of
    /// it, often all of it, now and then in the middle of a frame).
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) {
        let unsynced = self.bytes.len() - self.synced;
        let keep = match rng.random_range(0..3) {
            0 => 0,
            1 => unsynced,
            _ => rng.random_range(0..=unsynced),
        };
        self.crash_keeping(keep);
    }

    /// A crash that keeps `keep` bytes of what was not synced.
    pub fn crash_keeping(&mut self, keep: usize) {
        self.bytes.truncate(self.synced + keep);
    }

    /// Reads the segment back after a crash, as recovery does: frame by frame, a torn tail
    /// cut off. `Err` if the bytes are corrupt (which only a bug makes).
    pub fn recover(&mut self) -> Result<(), String> {
        let bytes = Bytes::from(std::mem::take(&mut self.bytes));
        let scan = codec::scan(&bytes, true)
            .map_err(|(offset, reason)| format!("corrupt segment at byte {offset}: {reason}"))?;
        let end = scan.torn_at.unwrap_or(bytes.len());
        self.bytes = bytes[..end].to_vec();
        // Recovery syncs what it kept before any of it counts (`recovery::recover`).
        self.synced = end;
        self.records.clear();
        self.metalog.clear();
        self.cursors.clear();
        self.last_metalog = None;
        for (offset, len, frame) in scan.frames {
            match frame {
                Frame::Record(r) => self.index_record(r.shard, r.local_id, offset, len)?,
                Frame::Metalog(entry) => self.index_metalog(entry),
                Frame::Header(_) | Frame::Checkpoint(_) => {}
            }
        }
        Ok(())
    }

    /// The metalog position the disk holds entries up to (exclusive).
    pub fn applied(&self) -> u64 {
        self.last_metalog.map_or(0, |p| p + 1)
    }

    pub fn cursors(&self) -> &BTreeMap<ShardId, (ViewId, u64)> {
        &self.cursors
    }

    /// The ordered record at `seqnum`, if this disk holds it: its shard, local id and record.
    pub fn read(&self, seqnum: Seqnum) -> Option<(ShardId, LocalId, LogRecord)> {
        let (_, entry) = self.metalog.range(..=seqnum).next_back()?;
        let (shard, counter, _) = entry.assignments().find(|(_, _, s)| *s == seqnum)?;
        let id = LocalId::new(entry.view, counter);
        let (offset, len) = *self.records.get(&(shard, id))?;
        let frame = Bytes::copy_from_slice(&self.bytes[offset..offset + len]);
        match codec::decode(&frame) {
            Ok((Frame::Record(r), _)) => Some((r.shard, r.local_id, r.record)),
            other => panic!("the frame at {offset} is not the record it indexes: {other:?}"),
        }
    }
}

/// One storage node of the simulated cluster.
pub struct Node {
    pub id: NodeId,
    /// None while the node is down.
    pub engine: Option<StorageEngine>,
    pub disk: Disk,
    /// Committed events taken (the next one's index in the committed history).
    pub events_seen: u64,
    /// Writes waiting for a sync, with the offset each ends at.
    pub pending: Vec<(usize, Pending)>,
    /// A sync in flight: the offset it makes durable.
    pub syncing: Option<usize>,
    /// Bumped on every crash, so a sync that ends after one is ignored.
    pub incarnation: u64,
    /// Batches of a view not applied here yet, until a deadline.
    pub deferred: Vec<(Time, NodeId, ShardId, LocalId, Vec<LogRecord>)>,
    pub last_report: Time,
    /// What the last report said.
    pub reported: BTreeMap<ShardId, (ViewId, u64)>,
    pub last_retry: Time,
}

impl Node {
    pub fn new(id: NodeId) -> Node {
        Node {
            id,
            engine: Some(StorageEngine::new(id, BTreeMap::new(), 0)),
            disk: Disk::default(),
            events_seen: 0,
            pending: Vec::new(),
            syncing: None,
            incarnation: 0,
            deferred: Vec::new(),
            last_report: 0,
            reported: BTreeMap::new(),
            last_retry: 0,
        }
    }

    pub fn up(&self) -> bool {
        self.engine.is_some()
    }

    /// The node crashes: its memory is gone, its disk loses what was not synced.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) {
        self.engine = None;
        self.pending.clear();
        self.syncing = None;
        self.deferred.clear();
        self.reported.clear();
        self.incarnation += 1;
        self.disk.crash(rng);
    }

    /// The node starts again on its disk; the caller sets `events_seen` to where its
    /// subscription starts.
    pub fn restart(&mut self) -> Result<(), String> {
        self.disk.recover()?;
        let engine = StorageEngine::new(self.id, self.disk.cursors().clone(), self.disk.applied());
        self.engine = Some(engine);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logbook::wire::RecordKind;
    use logbook::{BookId, Tag};

    fn records(n: usize) -> Vec<LogRecord> {
        (0..n)
            .map(|i| LogRecord {
                book: BookId(0),
                tags: vec![Tag(1)],
                kind: RecordKind::Data,
                data: Bytes::from(format!("record {i}")),
            })
            .collect()
    }

    fn held(disk: &Disk) -> u64 {
        disk.cursors().get(&ShardId(20)).map_or(0, |c| c.1)
    }

    #[test]
    fn a_crash_right_after_a_restart_keeps_what_the_restart_recovered() {
        let mut disk = Disk::default();
        let first = LocalId::new(ViewId(1), 0);
        disk.write_records(ShardId(20), first, &records(5));
        // The process dies; the page cache kept everything (nothing was synced).
        disk.crash_keeping(usize::MAX);
        disk.recover().expect("recovers");
        assert_eq!(held(&disk), 5, "recovered records count as held");
        // The machine loses power before the next write: what recovery counted must stay.
        disk.crash_keeping(0);
        disk.recover().expect("recovers");
        assert_eq!(held(&disk), 5);
    }

    #[test]
    fn a_torn_last_write_is_cut_off_and_unsynced_writes_are_lost() {
        let mut disk = Disk::default();
        let first = LocalId::new(ViewId(1), 0);
        let synced = disk.write_records(ShardId(20), first, &records(3));
        disk.synced(synced);
        let end = disk.write_records(ShardId(20), LocalId::new(ViewId(1), 3), &records(2));
        // Keep the fourth record and half of the fifth.
        let fourth = (end - synced) / 2;
        disk.crash_keeping(fourth + (end - synced - fourth) / 2);
        disk.recover().expect("a torn tail is not corruption");
        assert_eq!(held(&disk), 4);
        disk.crash_keeping(0);
        disk.recover().expect("recovers");
        assert_eq!(held(&disk), 4);
        assert_eq!(disk.read(Seqnum(0)), None, "nothing is ordered yet");
    }
}
