//! The record cache: recent appends and reads, keyed by seqnum, evicted once its bytes exceed
//! the limit by a clock: a hand goes round the records in seqnum order and takes the first
//! one not used since the hand last passed it (a use costs a flag, not a reordering). It holds records and their aux data only; what is
//! visible is the index's business, so a stale cached record is harmless (reads look it up
//! by a seqnum the index chose).

use bytes::Bytes;
use logbook::{BookId, Record, Seqnum};
use std::collections::BTreeMap;

/// Bytes charged per cached record on top of its data, tags and aux: the `Record` itself and
/// the map entry that tracks it.
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
    /// Used since the hand last passed it.
    used: bool,
}

#[derive(Debug)]
pub(super) struct RecordCache {
    bytes_max: usize,
    bytes: usize,
    slots: BTreeMap<Seqnum, Slot>,
    /// Where the clock's hand is: the next record it looks at is the first at or above it
    /// (or, past the last, the first).
    hand: Seqnum,
    pub(super) hits: u64,
    pub(super) misses: u64,
}

impl RecordCache {
    pub(super) fn new(bytes_max: usize) -> RecordCache {
        RecordCache {
            bytes_max,
            bytes: 0,
            slots: BTreeMap::new(),
            hand: Seqnum::ZERO,
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

    /// The cached record, marked as used; counts a hit or a miss.
    pub(super) fn get(&mut self, seqnum: Seqnum) -> Option<Record> {
        let Some(slot) = self.slots.get_mut(&seqnum) else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        slot.used = true;
        Some(slot.record.clone())
    }

    /// Caches `record`, marked as used (the hand passes it once before it may go). A record already cached keeps its aux
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
        self.slots.insert(
            record.seqnum,
            Slot {
                record,
                bytes,
                used: true,
            },
        );
        self.bytes += bytes;
        self.evict();
    }

    /// Attaches aux data to a cached record; false if it is not cached.
    /// The record is marked as used.
    pub(super) fn set_aux(&mut self, seqnum: Seqnum, aux: Bytes) -> bool {
        let Some(slot) = self.slots.get_mut(&seqnum) else {
            return false;
        };
        slot.record.aux = Some(aux);
        slot.used = true;
        let bytes = cache_record_bytes(&slot.record);
        self.bytes = self.bytes - slot.bytes + bytes;
        slot.bytes = bytes;
        if bytes > self.bytes_max {
            self.remove(seqnum);
        }
        self.evict();
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
        self.bytes = 0;
    }

    fn remove(&mut self, seqnum: Seqnum) -> Option<Record> {
        let slot = self.slots.remove(&seqnum)?;
        self.bytes -= slot.bytes;
        Some(slot.record)
    }

    /// Moves the hand until the cache fits: a record used since the hand last passed is
    /// marked unused and kept, the first one not used is dropped. Two turns at most.
    fn evict(&mut self) {
        while self.bytes > self.bytes_max {
            let (seqnum, slot) = match self.slots.range_mut(self.hand..).next() {
                Some(next) => next,
                None => self
                    .slots
                    .iter_mut()
                    .next()
                    .expect("a cache over its limit holds a record"),
            };
            let seqnum = *seqnum;
            self.hand = seqnum.next();
            if slot.used {
                slot.used = false;
            } else {
                self.remove(seqnum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seqnum: u64) -> Record {
        Record {
            seqnum: Seqnum(seqnum),
            book: BookId(1),
            tags: Vec::new(),
            data: Bytes::from(vec![0u8; 4]),
            aux: None,
        }
    }

    /// Room for `n` records of `record`'s size.
    fn cache_of(n: usize) -> RecordCache {
        RecordCache::new(n * cache_record_bytes(&record(0)))
    }

    fn cached(cache: &RecordCache) -> Vec<u64> {
        cache.slots.keys().map(|s| s.0).collect()
    }

    #[test]
    fn the_hand_takes_the_first_record_not_used_since_it_passed() {
        let mut cache = cache_of(3);
        for s in 1..=4 {
            cache.insert(record(s));
        }
        // A record comes in as used: the hand passed them all once, then took the oldest.
        assert_eq!(cached(&cache), [2, 3, 4]);
        assert!(cache.get(Seqnum(3)).is_some());
        cache.insert(record(5));
        assert_eq!(
            cached(&cache),
            [3, 4, 5],
            "2 was not used since the hand passed"
        );
        cache.insert(record(6));
        assert_eq!(
            cached(&cache),
            [3, 5, 6],
            "3 was used since the hand passed, 4 not"
        );
        assert!(cache.set_aux(Seqnum(3), Bytes::new()));
        cache.insert(record(7));
        assert_eq!(
            cached(&cache),
            [3, 6, 7],
            "3 had aux data set, 5 was passed"
        );
        assert!(cache.get(Seqnum(2)).is_none());
        assert_eq!((cache.hits, cache.misses), (1, 1));
    }

    #[test]
    fn aux_data_counts_toward_the_bytes() {
        let mut cache = cache_of(3);
        for s in 1..=3 {
            cache.insert(record(s));
        }
        let one = cache_record_bytes(&record(0));
        assert!(cache.set_aux(Seqnum(2), Bytes::from(vec![1u8; 10])));
        assert_eq!(cached(&cache), [2, 3], "over the limit, 1 made room");
        assert_eq!(cache.bytes(), 2 * one + 10);
        assert_eq!(cache.get(Seqnum(2)).unwrap().aux.unwrap().len(), 10);
        assert!(!cache.set_aux(Seqnum(1), Bytes::new()));
        assert!(cache.set_aux(Seqnum(3), Bytes::from(vec![1u8; 4 * one])));
        assert_eq!(
            (cached(&cache), cache.bytes()),
            (vec![2], one + 10),
            "too large for the cache"
        );
    }
}
