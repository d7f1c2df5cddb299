//! The record cache: recent appends and reads, keyed by seqnum, evicted least recently used
//! first once its bytes exceed the limit. It holds records and their aux data only; what is
//! visible is the index's business, so a stale cached record is harmless (reads look it up
//! by a seqnum the index chose).

use bytes::Bytes;
use logbook::{BookId, Record, Seqnum};
use std::collections::BTreeMap;

/// Bytes charged per cached record on top of its data, tags and aux: the `Record` itself and
/// the two map entries that track it.
pub const CACHE_RECORD_OVERHEAD_BYTES: usize = 96;

/// What a record costs the cache, in bytes.
pub fn cache_record_bytes(record: &Record) -> usize {
    CACHE_RECORD_OVERHEAD_BYTES
        + record.data.len()
        + record.tags.len() * std::mem::size_of::<u64>()
        + record.aux.as_ref().map_or(0, Bytes::len)
}

#[derive(Debug)]
struct Slot {
    record: Record,
    bytes: usize,
    /// The slot's key in `RecordCache::lru`.
    stamp: u64,
}

#[derive(Debug)]
pub(super) struct RecordCache {
    bytes_max: usize,
    bytes: usize,
    slots: BTreeMap<Seqnum, Slot>,
    /// Use stamp to seqnum, least recently used first.
    lru: BTreeMap<u64, Seqnum>,
    next_stamp: u64,
    pub(super) hits: u64,
    pub(super) misses: u64,
}

impl RecordCache {
    pub(super) fn new(bytes_max: usize) -> RecordCache {
        RecordCache {
            bytes_max,
            bytes: 0,
            slots: BTreeMap::new(),
            lru: BTreeMap::new(),
            next_stamp: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The cached record, marked as just used; counts a hit or a miss.
    pub(super) fn get(&mut self, seqnum: Seqnum) -> Option<Record> {
        let stamp = self.stamp();
        let Some(slot) = self.slots.get_mut(&seqnum) else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        self.lru.remove(&slot.stamp);
        slot.stamp = stamp;
        self.lru.insert(stamp, seqnum);
        Some(slot.record.clone())
    }

    /// Caches `record` as the most recently used. A record already cached keeps its aux
    /// data unless the new copy carries some (storage does not keep aux data).
    pub(super) fn insert(&mut self, mut record: Record) {
        // A record's data may be a slice of a larger buffer (an HTTP request's read buffer):
        // keeping the slice would keep the whole buffer, and the cache's byte bound would not
        // bound memory. Cache a compact copy.
        record.data = Bytes::copy_from_slice(&record.data);
        if let Some(old) = self.remove(record.seqnum) {
            if record.aux.is_none() {
                record.aux = old.aux;
            }
        }
        let bytes = cache_record_bytes(&record);
        if bytes > self.bytes_max {
            return;
        }
        let stamp = self.stamp();
        self.lru.insert(stamp, record.seqnum);
        self.slots.insert(
            record.seqnum,
            Slot {
                record,
                bytes,
                stamp,
            },
        );
        self.bytes += bytes;
        self.evict();
    }

    /// Attaches aux data to a cached record; false if it is not cached.
    pub(super) fn set_aux(&mut self, seqnum: Seqnum, aux: Bytes) -> bool {
        let Some(mut record) = self.remove(seqnum) else {
            return false;
        };
        record.aux = Some(aux);
        self.insert(record);
        true
    }

    /// Drops `book`'s records below `below` (a whole-book trim).
    pub(super) fn remove_below(&mut self, book: BookId, below: Seqnum) {
        let doomed: Vec<Seqnum> = self
            .slots
            .range(..below)
            .filter(|(_, slot)| slot.record.book == book)
            .map(|(seqnum, _)| *seqnum)
            .collect();
        for seqnum in doomed {
            self.remove(seqnum);
        }
    }

    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.lru.clear();
        self.bytes = 0;
    }

    fn remove(&mut self, seqnum: Seqnum) -> Option<Record> {
        let slot = self.slots.remove(&seqnum)?;
        self.lru.remove(&slot.stamp);
        self.bytes -= slot.bytes;
        Some(slot.record)
    }

    fn evict(&mut self) {
        while self.bytes > self.bytes_max {
            let (_, seqnum) = self
                .lru
                .pop_first()
                .expect("a cache over its limit holds a record");
            let slot = self
                .slots
                .remove(&seqnum)
                .expect("every lru stamp names a slot");
            self.bytes -= slot.bytes;
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }
}
