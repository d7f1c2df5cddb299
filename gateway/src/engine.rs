//! `LogEngine`: the gateway's log engine for the one shard it owns (DESIGN.md sections 3-5).
//! It gives appends local ids and asks the runtime to replicate them, applies metalog entries
//! in position order (mapping pending local ids to seqnums, indexing every ordered record
//! through `logbook::TagIndex`, acknowledging appends), plans reads from the index and a
//! bounded record cache, parks blocking reads until a record arrives or their deadline passes,
//! and discards pending appends when a view is sealed.
//!
//! It does no IO and reads no clock: inputs are method calls (with `now_us` where time
//! matters), outputs are `Command`s the runtime executes. Everything that could leak order into
//! outputs is a `BTreeMap`, so the same inputs give the same commands.
//!
//! Contract with the runtime:
//! - Metalog entries may arrive out of order or twice: old positions are ignored, later ones are
//!   buffered (up to `METALOG_ENTRIES_BUFFERED_MAX`) until the gap is filled.
//! - An entry is applied only once the engine knows every record it orders. It knows its own
//!   pending appends (and those a seal discarded); for every other record (other shards', or
//!   its own appended before a restart) the runtime must deliver an `IndexEntry` through
//!   `on_index_data`, before or after the metalog entry. In a one-gateway cluster that restores
//!   the index at startup (`restore`), no index data is ever needed.
//! - Parked blocking reads complete with `Reply::Plan(plan)`: `Cached(record)` is the answer,
//!   `Fetch { seqnum }` means the runtime reads that seqnum from storage (then calls
//!   `cache_insert`), and `Empty` means the deadline passed without a match.

mod cache;
#[cfg(test)]
mod tests;

pub use cache::{cache_record_bytes, CACHE_RECORD_OVERHEAD_BYTES};

use bytes::Bytes;
use cache::RecordCache;
use logbook::wire::{IndexEntry, LocalId, LogRecord, MetalogEntry, RecordKind, ShardId};
use logbook::{
    validate_append, validate_aux, validate_batch_len, validate_cond, Applied, BookId,
    IndexCheckpoint, LogError, Record, Seqnum, Tag, TagIndex, ViewId, READ_RANGE_RECORDS_MAX,
};
use std::collections::{BTreeMap, BTreeSet};

/// Most metalog entries buffered ahead of a gap (or waiting for index data).
pub const METALOG_ENTRIES_BUFFERED_MAX: usize = 4096;
/// Most index entries of records the engine did not append, buffered until their metalog
/// entry is applied.
pub const INDEX_DATA_BUFFERED_MAX: usize = 1 << 20;
/// Most blocking reads parked at once.
pub const PARKED_READS_MAX: usize = 65_536;

/// What a gateway's log engine needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The shard this gateway owns.
    pub shard: ShardId,
    /// The view appends start in.
    pub view: ViewId,
    /// The record cache's limit, in bytes (see `cache_record_bytes`).
    pub cache_bytes_max: usize,
    /// Most records appended but not yet ordered.
    pub pending_appends_max: usize,
}

/// An operation's id, chosen by the runtime and echoed in the `Reply` that completes it.
/// Ids of pending appends must be unique among pending appends, ids of parked reads among
/// parked reads.
pub type OpId = u64;

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send these records (consecutive local ids from `first`) to the shard's storage replicas.
    Replicate {
        first: LocalId,
        records: Vec<LogRecord>,
    },
    /// Complete an operation.
    Reply { op: OpId, result: Reply },
}

/// How an operation completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An append op is ordered: one seqnum per record of the op, in order. Trim ops too.
    Appended(Vec<Seqnum>),
    /// An append op failed: `CondFailed`, `Discarded` (a seal), `Unavailable` (too many
    /// pending appends) or a bad argument.
    Err(LogError),
    /// A parked blocking read completed: `Cached`/`Fetch` when a record arrived, `Empty` when
    /// its deadline passed.
    Plan(ReadPlan),
}

/// How to serve a read: the index has decided which record (if any); the cache may hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// No record matches.
    Empty,
    /// The record, from the cache (with its aux data, if any).
    Cached(Record),
    /// The runtime reads the record from a storage replica, then calls `cache_insert`.
    Fetch { seqnum: Seqnum },
}

/// Counters for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub pending_ops: usize,
    pub pending_records: usize,
    pub parked_reads: usize,
    pub cache_bytes: usize,
    pub cache_records: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Records the index has applied (visible and trimmed), as `TagIndex::record_count`.
    pub index_records: u64,
    /// The metalog position of the next entry to apply.
    pub metalog_position: u64,
    pub metalog_entries_buffered: usize,
    pub index_data_buffered: usize,
    /// Metalog entries ignored: duplicates, old positions, or beyond the buffer limit.
    pub metalog_entries_ignored: u64,
    /// Index entries ignored: already applied, or beyond the buffer limit.
    pub index_data_ignored: u64,
    /// Records discarded by a seal and kept in case their view's metalog still orders them.
    pub discarded_records: usize,
    /// Discarded records the metalog ordered anyway (their clients were told `Discarded`).
    pub discarded_ordered: u64,
}

/// One record appended through this engine, not yet ordered.
#[derive(Debug)]
struct PendingRecord {
    op: OpId,
    /// The record's index within its op.
    slot: usize,
    record: LogRecord,
}

/// An append op with records not yet ordered.
#[derive(Debug)]
struct PendingOp {
    seqnums: Vec<Option<Seqnum>>,
    unordered: usize,
    /// The first condition that failed, if any.
    failure: Option<LogError>,
}

/// Where the engine finds a record a metalog entry orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Appended here and pending.
    Pending(LocalId),
    /// Appended here, then discarded by a seal: its op was answered `Discarded`, but storage
    /// held it and the sequencer ordered it anyway, so it must be indexed like any record.
    Discarded(LocalId),
    /// Delivered through `on_index_data`.
    IndexData,
    /// Not known yet: the entry waits.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct ParkedRead {
    book: BookId,
    tag: Tag,
    min: Seqnum,
    deadline_us: u64,
}

/// The gateway-side log engine of one shard.
#[derive(Debug)]
pub struct LogEngine {
    shard: ShardId,
    view: ViewId,
    pending_appends_max: usize,
    /// The local counter the next appended record gets in `view`.
    next_counter: u64,
    pending: BTreeMap<LocalId, PendingRecord>,
    ops: BTreeMap<OpId, PendingOp>,
    index: TagIndex,
    cache: RecordCache,
    /// Trim records applied (this gateway's and others'), since start.
    trims_applied: u64,
    /// The metalog position of the next entry to apply.
    metalog_position: u64,
    /// Entries at or after `metalog_position`, waiting for a gap or for index data.
    entries: BTreeMap<u64, MetalogEntry>,
    /// Index entries for records this engine did not append, by seqnum.
    index_data: BTreeMap<Seqnum, IndexEntry>,
    /// Records pending when their view was sealed; kept until an entry of a later view is
    /// applied, in case an entry of their view still orders them.
    discarded: BTreeMap<LocalId, LogRecord>,
    discarded_ordered: u64,
    parked: BTreeMap<OpId, ParkedRead>,
    parked_by_stream: BTreeMap<(BookId, Tag), BTreeSet<OpId>>,
    parked_by_deadline: BTreeSet<(u64, OpId)>,
    metalog_entries_ignored: u64,
    index_data_ignored: u64,
    /// The index forgot the records below this: their segments may be reclaimed.
    reclaimed_below: Seqnum,
    /// Set when the shard can no longer store records: every append gets this error.
    failed: Option<LogError>,
}

impl LogEngine {
    pub fn new(config: EngineConfig) -> LogEngine {
        LogEngine {
            shard: config.shard,
            view: config.view,
            pending_appends_max: config.pending_appends_max,
            next_counter: 0,
            pending: BTreeMap::new(),
            ops: BTreeMap::new(),
            index: TagIndex::new(),
            cache: RecordCache::new(config.cache_bytes_max),
            trims_applied: 0,
            metalog_position: 0,
            entries: BTreeMap::new(),
            index_data: BTreeMap::new(),
            discarded: BTreeMap::new(),
            discarded_ordered: 0,
            parked: BTreeMap::new(),
            parked_by_stream: BTreeMap::new(),
            parked_by_deadline: BTreeSet::new(),
            metalog_entries_ignored: 0,
            index_data_ignored: 0,
            reclaimed_below: Seqnum::ZERO,
            failed: None,
        }
    }

    /// Recovery at startup: rebuilds the index from ordered entries (in seqnum order, as the
    /// storage node returns them) and sets the next metalog position to apply. The cache is
    /// emptied; buffered metalog entries before `next_position` are dropped.
    /// A checkpoint, when given, summarises the records below its `below`; `entries` start
    /// there.
    pub fn restore(
        &mut self,
        checkpoint: Option<&IndexCheckpoint>,
        entries: impl IntoIterator<Item = IndexEntry>,
        next_position: u64,
    ) {
        let mut index = checkpoint.map_or_else(TagIndex::new, TagIndex::from_checkpoint);
        self.reclaimed_below = checkpoint.map_or(Seqnum::ZERO, |c| c.below);
        for entry in entries {
            index.apply(&entry);
        }
        self.index = index;
        self.cache.clear();
        self.metalog_position = next_position;
        self.entries = self.entries.split_off(&next_position);
        let applied_end = self.index.applied_end();
        self.index_data = self.index_data.split_off(&applied_end);
    }

    /// An append op of one or more records of `book`, validated here. Returns a `Replicate` of
    /// the op's records, or a `Reply` with the error. A conditional record must be the op's
    /// only record (an op is all or nothing, and a lost condition would break that). A trim
    /// record carries no tags and no data.
    pub fn append(
        &mut self,
        op: OpId,
        book: BookId,
        records: Vec<(Vec<Tag>, RecordKind, Bytes)>,
    ) -> Vec<Command> {
        assert!(
            !self.ops.contains_key(&op),
            "op {op} is already a pending append"
        );
        let validated = match &self.failed {
            Some(error) => Err(error.clone()),
            None => self.validate(book, records),
        };
        let records = match validated {
            Ok(records) => records,
            Err(error) => {
                return vec![Command::Reply {
                    op,
                    result: Reply::Err(error),
                }]
            }
        };
        let first = LocalId::new(self.view, self.next_counter);
        for (slot, record) in records.iter().enumerate() {
            let id = LocalId::new(self.view, self.next_counter);
            self.next_counter += 1;
            self.pending.insert(
                id,
                PendingRecord {
                    op,
                    slot,
                    record: record.clone(),
                },
            );
        }
        self.ops.insert(
            op,
            PendingOp {
                seqnums: vec![None; records.len()],
                unordered: records.len(),
                failure: None,
            },
        );
        vec![Command::Replicate { first, records }]
    }

    fn validate(
        &self,
        book: BookId,
        records: Vec<(Vec<Tag>, RecordKind, Bytes)>,
    ) -> Result<Vec<LogRecord>, LogError> {
        validate_batch_len(records.len())?;
        let single = records.len() == 1;
        let records = records
            .into_iter()
            .map(|(tags, kind, data)| {
                let tags = match kind {
                    RecordKind::Data => validate_append(&tags, &data)?,
                    RecordKind::Cond(cond) => {
                        if !single {
                            return Err(LogError::BadArgument(
                                "a conditional append holds exactly one record".into(),
                            ));
                        }
                        let tags = validate_append(&tags, &data)?;
                        validate_cond(&tags, cond)?;
                        tags
                    }
                    RecordKind::Trim { tag, .. } => {
                        if tag == Tag::RESERVED {
                            return Err(LogError::BadArgument("tag u64::MAX is reserved".into()));
                        }
                        if !tags.is_empty() || !data.is_empty() {
                            return Err(LogError::BadArgument(
                                "a trim record carries no tags and no data".into(),
                            ));
                        }
                        tags
                    }
                };
                Ok(LogRecord {
                    book,
                    tags,
                    kind,
                    data,
                })
            })
            .collect::<Result<Vec<_>, LogError>>()?;
        if self.pending.len() + records.len() > self.pending_appends_max {
            return Err(LogError::Unavailable("too many pending appends".into()));
        }
        Ok(records)
    }

    /// A metalog entry arrived. Applies it, and any buffered entries it unblocks, in position
    /// order: maps this shard's pending local ids to seqnums, indexes every record in seqnum
    /// order, caches own records, and emits a `Reply` for every append op whose records are
    /// all ordered, then a `Reply::Plan` for every parked read that now has a match (in op-id
    /// order). Old or duplicate positions are ignored; later ones are buffered.
    pub fn on_metalog(&mut self, entry: &MetalogEntry) -> Vec<Command> {
        let buffered = self.entries.contains_key(&entry.position);
        let too_many = self.entries.len() >= METALOG_ENTRIES_BUFFERED_MAX
            && entry.position != self.metalog_position;
        if entry.position < self.metalog_position || buffered || too_many {
            self.metalog_entries_ignored += 1;
            return Vec::new();
        }
        self.entries.insert(entry.position, entry.clone());
        self.drain()
    }

    /// Index data for records this engine did not append (other shards' records, or its own
    /// from before a restart), needed before the metalog entry ordering them can apply.
    /// May arrive before or after that entry. Applies whatever it unblocks, like `on_metalog`.
    pub fn on_index_data(&mut self, entries: Vec<IndexEntry>) -> Vec<Command> {
        for entry in entries {
            let stale = entry.seqnum < self.index.applied_end();
            let full = self.index_data.len() >= INDEX_DATA_BUFFERED_MAX;
            if stale || full {
                self.index_data_ignored += 1;
                continue;
            }
            self.index_data.insert(entry.seqnum, entry);
        }
        self.drain()
    }

    /// Applies buffered entries from `metalog_position` while each is complete.
    fn drain(&mut self) -> Vec<Command> {
        let mut commands = Vec::new();
        let mut touched: BTreeSet<(BookId, Tag)> = BTreeSet::new();
        while let Some(entry) = self.entries.get(&self.metalog_position) {
            if !self.is_complete(entry) {
                break;
            }
            let entry = self
                .entries
                .remove(&self.metalog_position)
                .expect("found just above");
            self.apply(&entry, &mut commands, &mut touched);
            self.metalog_position = entry.position + 1;
        }
        let applied_end = self.index.applied_end();
        self.index_data = self.index_data.split_off(&applied_end);
        self.wake(&touched, &mut commands);
        commands
    }

    /// Where the engine finds the record `entry` orders at `seqnum` (`shard`'s `counter`).
    fn source(&self, entry: &MetalogEntry, shard: ShardId, counter: u64, seqnum: Seqnum) -> Source {
        if shard == self.shard {
            let id = LocalId::new(entry.view, counter);
            if self.pending.contains_key(&id) {
                return Source::Pending(id);
            }
            if self.discarded.contains_key(&id) {
                return Source::Discarded(id);
            }
        }
        if self.index_data.contains_key(&seqnum) {
            return Source::IndexData;
        }
        Source::Unknown
    }

    /// Whether the engine knows every record `entry` orders.
    fn is_complete(&self, entry: &MetalogEntry) -> bool {
        entry.assignments().all(|(shard, counter, seqnum)| {
            self.source(entry, shard, counter, seqnum) != Source::Unknown
        })
    }

    fn apply(
        &mut self,
        entry: &MetalogEntry,
        commands: &mut Vec<Command>,
        touched: &mut BTreeSet<(BookId, Tag)>,
    ) {
        for (shard, counter, seqnum) in entry.assignments() {
            match self.source(entry, shard, counter, seqnum) {
                Source::Pending(id) => {
                    let pending = self.pending.remove(&id).expect("source checked it");
                    let applied = self.apply_own(seqnum, pending.record, touched);
                    self.record_ordered(pending.op, pending.slot, seqnum, applied, commands);
                }
                Source::Discarded(id) => {
                    let record = self.discarded.remove(&id).expect("source checked it");
                    self.apply_own(seqnum, record, touched);
                    self.discarded_ordered += 1;
                }
                Source::IndexData => {
                    let index_entry = self.index_data.remove(&seqnum).expect("source checked it");
                    self.apply_one(&index_entry, touched);
                }
                Source::Unknown => unreachable!("is_complete checked every record"),
            }
        }
        // Entries come in position order and views only move forward: no later entry orders
        // a record appended in an older view than this entry's.
        self.discarded = self.discarded.split_off(&LocalId::new(entry.view, 0));
    }

    /// Indexes a record this engine appended and caches it if it is visible.
    fn apply_own(
        &mut self,
        seqnum: Seqnum,
        record: LogRecord,
        touched: &mut BTreeSet<(BookId, Tag)>,
    ) -> Applied {
        let index_entry = IndexEntry {
            seqnum,
            book: record.book,
            tags: record.tags.clone(),
            kind: record.kind,
        };
        let applied = self.apply_one(&index_entry, touched);
        if applied == Applied::Indexed {
            self.cache.insert(Record {
                seqnum,
                book: record.book,
                tags: record.tags,
                data: record.data,
                aux: None,
            });
        }
        applied
    }

    fn apply_one(&mut self, entry: &IndexEntry, touched: &mut BTreeSet<(BookId, Tag)>) -> Applied {
        let applied = self.index.apply(entry);
        if applied == Applied::Trimmed {
            self.trims_applied += 1;
        }
        match (applied, entry.kind) {
            (Applied::Indexed, _) => {
                touched.insert((entry.book, Tag::ANY));
                touched.extend(entry.tags.iter().map(|tag| (entry.book, *tag)));
            }
            (Applied::Trimmed, RecordKind::Trim { tag, below }) if tag == Tag::ANY => {
                self.cache.remove_below(entry.book, below);
            }
            _ => {}
        }
        applied
    }

    fn record_ordered(
        &mut self,
        op: OpId,
        slot: usize,
        seqnum: Seqnum,
        applied: Applied,
        commands: &mut Vec<Command>,
    ) {
        let pending = self.ops.get_mut(&op).expect("a pending record has its op");
        pending.seqnums[slot] = Some(seqnum);
        pending.unordered -= 1;
        if let Applied::CondFailed { stream_len } = applied {
            pending
                .failure
                .get_or_insert(LogError::CondFailed { seqnum, stream_len });
        }
        if pending.unordered > 0 {
            return;
        }
        let done = self.ops.remove(&op).expect("found just above");
        let result = match done.failure {
            Some(error) => Reply::Err(error),
            None => Reply::Appended(
                done.seqnums
                    .into_iter()
                    .map(|s| s.expect("every record is ordered"))
                    .collect(),
            ),
        };
        commands.push(Command::Reply { op, result });
    }

    /// Completes parked reads on the touched streams that now have a match, in op-id order.
    fn wake(&mut self, touched: &BTreeSet<(BookId, Tag)>, commands: &mut Vec<Command>) {
        let mut woken: BTreeMap<OpId, Seqnum> = BTreeMap::new();
        for stream in touched {
            let Some(ops) = self.parked_by_stream.get(stream) else {
                continue;
            };
            for op in ops {
                let read = self.parked[op];
                if let Some(seqnum) = self.index.next(read.book, read.tag, read.min) {
                    woken.insert(*op, seqnum);
                }
            }
        }
        for (op, seqnum) in woken {
            self.unpark(op);
            let plan = self.plan(Some(seqnum));
            commands.push(Command::Reply {
                op,
                result: Reply::Plan(plan),
            });
        }
    }

    fn unpark(&mut self, op: OpId) -> ParkedRead {
        let read = self.parked.remove(&op).expect("unpark a parked read");
        let stream = (read.book, read.tag);
        let ops = self
            .parked_by_stream
            .get_mut(&stream)
            .expect("a parked read is listed under its stream");
        ops.remove(&op);
        if ops.is_empty() {
            self.parked_by_stream.remove(&stream);
        }
        self.parked_by_deadline.remove(&(read.deadline_us, op));
        read
    }

    fn plan(&mut self, seqnum: Option<Seqnum>) -> ReadPlan {
        let Some(seqnum) = seqnum else {
            return ReadPlan::Empty;
        };
        match self.cache.get(seqnum) {
            Some(record) => ReadPlan::Cached(record),
            None => ReadPlan::Fetch { seqnum },
        }
    }

    /// The first record with `tag` at or after `min`.
    pub fn read_next(&mut self, book: BookId, tag: Tag, min: Seqnum) -> ReadPlan {
        let seqnum = self.index.next(book, tag, min);
        self.plan(seqnum)
    }

    /// The last record with `tag` at or before `max`.
    pub fn read_prev(&mut self, book: BookId, tag: Tag, max: Seqnum) -> ReadPlan {
        let seqnum = self.index.prev(book, tag, max);
        self.plan(seqnum)
    }

    /// The records with `tag` in `[from, to)`, at most `limit` (capped at
    /// `READ_RANGE_RECORDS_MAX`), in seqnum order; each plan is `Cached` or `Fetch`. The caller
    /// validates the range (`logbook::validate_range`); a reversed one is simply empty.
    pub fn read_range(
        &mut self,
        book: BookId,
        tag: Tag,
        from: Seqnum,
        to: Seqnum,
        limit: usize,
    ) -> Vec<ReadPlan> {
        let limit = limit.min(READ_RANGE_RECORDS_MAX);
        let seqnums = self.index.range(book, tag, from, to, limit);
        seqnums.into_iter().map(|s| self.plan(Some(s))).collect()
    }

    /// A record read from storage (after `ReadPlan::Fetch`). Cached only if the index still
    /// holds it, so a fetch racing a trim does not bring a trimmed record back.
    pub fn cache_insert(&mut self, record: Record) {
        if self.index.contains(record.book, record.seqnum) {
            self.cache.insert(record);
        }
    }

    /// A blocking read: `Some(plan)` at once if the index has a match; otherwise parks `op`
    /// until a metalog entry brings a match (`Reply::Plan(Cached | Fetch)`) or `on_tick`
    /// passes `deadline_us` (`Reply::Plan(Empty)`), and returns `None`.
    pub fn read_next_blocking(
        &mut self,
        op: OpId,
        book: BookId,
        tag: Tag,
        min: Seqnum,
        deadline_us: u64,
    ) -> Result<Option<ReadPlan>, LogError> {
        if let Some(seqnum) = self.index.next(book, tag, min) {
            return Ok(Some(self.plan(Some(seqnum))));
        }
        if self.parked.len() >= PARKED_READS_MAX {
            return Err(LogError::Unavailable("too many blocking reads".into()));
        }
        assert!(
            !self.parked.contains_key(&op),
            "op {op} is already a parked read"
        );
        self.parked.insert(
            op,
            ParkedRead {
                book,
                tag,
                min,
                deadline_us,
            },
        );
        self.parked_by_stream
            .entry((book, tag))
            .or_default()
            .insert(op);
        self.parked_by_deadline.insert((deadline_us, op));
        Ok(None)
    }

    /// Time passed: parked reads whose deadline is at or before `now_us` complete with
    /// `Reply::Plan(ReadPlan::Empty)`, earliest deadline first.
    pub fn on_tick(&mut self, now_us: u64) -> Vec<Command> {
        let mut commands = Vec::new();
        while let Some(&(deadline_us, op)) = self.parked_by_deadline.first() {
            if deadline_us > now_us {
                break;
            }
            self.unpark(op);
            commands.push(Command::Reply {
                op,
                result: Reply::Plan(ReadPlan::Empty),
            });
        }
        commands
    }

    /// Attaches aux data to `book`'s record `seqnum`. Best effort: kept only while the record
    /// is cached. `BadArgument` if the index does not hold that record for that book.
    pub fn set_aux_data(
        &mut self,
        book: BookId,
        seqnum: Seqnum,
        aux: Bytes,
    ) -> Result<(), LogError> {
        validate_aux(&aux)?;
        if !self.index.contains(book, seqnum) {
            return Err(LogError::BadArgument(format!(
                "book {} has no record {seqnum}",
                book.0
            )));
        }
        self.cache.set_aux(seqnum, aux);
        Ok(())
    }

    /// The current view ends: every pending append op fails with `Discarded` (in op-id order)
    /// and appends continue in `next` with local counters from 0. Parked reads stay parked.
    ///
    /// Call it after applying the metalog up to the sealed view's final position when that is
    /// known. If a later entry of the sealed view still orders a discarded record (storage
    /// held it), the engine indexes it like any record, so the index matches every other
    /// replica's, and counts it in `EngineStats::discarded_ordered`: its client was told
    /// `Discarded` and may append it again.
    pub fn seal(&mut self, next: ViewId) -> Vec<Command> {
        assert!(
            next > self.view,
            "views only move forward: {} after {}",
            next.0,
            self.view.0
        );
        self.view = next;
        self.next_counter = 0;
        let pending = std::mem::take(&mut self.pending);
        self.discarded
            .extend(pending.into_iter().map(|(id, p)| (id, p.record)));
        // Bounded like pending appends: the oldest views' records go first.
        while self.discarded.len() > self.pending_appends_max {
            self.discarded.pop_first();
        }
        std::mem::take(&mut self.ops)
            .into_keys()
            .map(|op| Command::Reply {
                op,
                result: Reply::Err(LogError::Discarded),
            })
            .collect()
    }

    /// The shard can no longer store records (a write or sync failed, or the metalog can no
    /// longer be made durable). Fails with `error` every pending op that has a record at or
    /// after `from` (every pending op when `from` is `None`), and every later append. Ops
    /// whose records all precede `from` stay pending: they are stored, and a metalog entry may
    /// still order them. Records of failed ops that were stored are kept like discarded ones,
    /// so an entry that orders them anyway indexes them as every replica would.
    pub fn fail(&mut self, from: Option<LocalId>, error: LogError) -> Vec<Command> {
        self.failed = Some(error.clone());
        let failing: BTreeSet<OpId> = self
            .pending
            .range(from.unwrap_or(LocalId(0))..)
            .map(|(_, p)| p.op)
            .collect();
        let pending = std::mem::take(&mut self.pending);
        for (id, p) in pending {
            if !failing.contains(&p.op) {
                self.pending.insert(id, p);
            } else if from.is_none_or(|from| id < from) {
                self.discarded.insert(id, p.record);
            }
        }
        failing
            .into_iter()
            .filter(|op| self.ops.remove(op).is_some())
            .map(|op| Command::Reply {
                op,
                result: Reply::Err(error.clone()),
            })
            .collect()
    }

    /// The view appends are made in.
    pub fn view(&self) -> ViewId {
        self.view
    }

    /// Whether the record at `seqnum` is still visible (in some book, under some stream of
    /// its tags); what the index has not reached yet counts as visible.
    pub fn shows(&self, seqnum: Seqnum) -> bool {
        self.index.shows(seqnum)
    }

    /// The seqnum after the last record the index has applied: every record below it is in
    /// the index (or trimmed).
    pub fn applied_end(&self) -> Seqnum {
        self.index.applied_end()
    }

    /// Trim records applied since start, whoever appended them: a change tells that records
    /// may have left the index.
    pub fn trims_applied(&self) -> u64 {
        self.trims_applied
    }

    /// Every book the index holds (`TagIndex::books`).
    pub fn books(&self) -> Vec<logbook::BookSummary> {
        self.index.books()
    }

    /// The tags of `book` after `after`, at most `limit` (`TagIndex::tags`).
    pub fn tags(&self, book: BookId, after: Option<Tag>, limit: usize) -> Vec<(Tag, u64)> {
        self.index.tags(book, after, limit)
    }

    /// The metalog position of the next entry to apply: entries before it are in the index.
    pub fn metalog_position(&self) -> u64 {
        self.metalog_position
    }

    /// When trims have made a longer prefix of the log invisible than last reclaimed: a
    /// summary of that prefix for the storage node, which may then delete the segments holding
    /// only records below it. Call `reclaimed` once the storage node has kept it.
    pub fn reclaim_checkpoint(&self) -> Option<IndexCheckpoint> {
        let below = self.index.reclaimable_below();
        if below <= self.reclaimed_below {
            return None;
        }
        Some(self.index.checkpoint(below))
    }

    /// The storage node kept `checkpoint` and reclaimed below it: the index forgets the
    /// seqnums below it.
    pub fn reclaimed(&mut self, checkpoint: &IndexCheckpoint) {
        if checkpoint.below <= self.reclaimed_below {
            return;
        }
        self.index.compact(checkpoint.below);
        self.reclaimed_below = checkpoint.below;
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            pending_ops: self.ops.len(),
            pending_records: self.pending.len(),
            parked_reads: self.parked.len(),
            cache_bytes: self.cache.bytes(),
            cache_records: self.cache.len(),
            cache_hits: self.cache.hits,
            cache_misses: self.cache.misses,
            index_records: self.index.record_count(),
            metalog_position: self.metalog_position,
            metalog_entries_buffered: self.entries.len(),
            index_data_buffered: self.index_data.len(),
            metalog_entries_ignored: self.metalog_entries_ignored,
            index_data_ignored: self.index_data_ignored,
            discarded_records: self.discarded.len(),
            discarded_ordered: self.discarded_ordered,
        }
    }
}
