//! The storage node's durable store: one series of append-only segment files holding every
//! shard's records, the metalog entries that order them, and reclaim checkpoints.
//!
//! Writes and syncs go through io_uring on one IO thread with group commit (`writer`); reads
//! are positional reads on a blocking thread, located through an in-memory index (`index`)
//! rebuilt at open by `recovery`. The byte layout is in `codec` and FORMAT.md. This crate
//! does not talk to the network, decide views or order records: it stores what it is given.

pub mod codec;
pub mod engine;
mod error;
mod index;
mod recovery;
mod uring;
mod writer;

pub use codec::{CHECKPOINT_BYTES_MAX, FORMAT_VERSION};
pub use error::StoreError;
/// How the store checks that records continue a shard's (the simulator's disk checks alike).
pub use index::check_next;

use bytes::Bytes;
use logbook::wire::{IndexEntry, LocalId, LogRecord, MetalogEntry, ShardId};
use logbook::{Seqnum, ViewId, BATCH_RECORDS_MAX, RECORD_BYTES_MAX, TAGS_PER_RECORD_MAX};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, Semaphore};
use writer::{Op, Request, Writer};

/// Default size at which the active segment is sealed and a new one started, in bytes.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest accepted `segment_bytes_max`, in bytes.
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// The share of a sealed segment's bytes that dead payloads must reach before `compact`
/// rewrites it: below it, a rewrite would cost more than the space it gives back.
pub const COMPACT_DEAD_FRACTION: f64 = 0.1;
/// Requests queued for or held by the IO thread at once; callers beyond it wait.
pub const INFLIGHT_REQUESTS_MAX: usize = 1024;
/// Metalog entries a caller may have queued and not yet durable at once (`append_metalog`).
pub const METALOG_IN_FLIGHT_MAX: usize = 4;

/// When an append or metalog entry counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Reply after the batch's fdatasync (group commit).
    Fsync,
    /// Reply once written; fdatasync at most every `flush_interval_ms` in the background.
    Async { flush_interval_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub segment_bytes_max: u64,
    pub durability: Durability,
    /// Whether a batch holding only metalog entries is synced in `Fsync` mode (true, the
    /// default: on a single node the store is where the metalog is durable). A cluster's
    /// storage node keeps a copy of a metalog that the sequencers' Raft log makes durable:
    /// it lets such batches ride on the next sync of records, and after a crash fetches
    /// what it lost again.
    pub sync_metalog: bool,
}

impl StoreConfig {
    /// A config with the defaults: 64 MiB segments, fsync durability.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            durability: Durability::Fsync,
            sync_metalog: true,
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(StoreError::BadArgument(format!(
                "segment_bytes_max is {}; the minimum is {SEGMENT_BYTES_MIN}",
                self.segment_bytes_max
            )));
        }
        if let Durability::Async {
            flush_interval_ms: 0,
        } = self.durability
        {
            return Err(StoreError::BadArgument(
                "flush_interval_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What `open` found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Durable metalog entries still on disk, in position order.
    pub metalog: Vec<MetalogEntry>,
    /// The newest metalog entry, even if its segment was reclaimed.
    pub last_metalog: Option<MetalogEntry>,
    /// The newest checkpoint: its `below` and the caller's bytes.
    pub checkpoint: Option<(Seqnum, Bytes)>,
    /// Every ordered record still on disk at or above the checkpoint's `below`, by seqnum.
    pub ordered: Vec<IndexEntry>,
    /// The highest view in records or metalog entries.
    pub max_view: ViewId,
    /// Bytes of torn tail cut from the last segment.
    pub truncated_tail_bytes: u64,
    pub records: u64,
    pub segments: usize,
}

/// An ordered record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seqnum: Seqnum,
    pub shard: ShardId,
    pub local_id: LocalId,
    pub record: LogRecord,
}

/// What a reclaim freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub segments: usize,
    pub bytes: u64,
}

/// What compacting a segment did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Whether the segment was rewritten (it held enough dead payload bytes).
    pub rewritten: bool,
    /// Records whose payload the rewrite dropped.
    pub records: u64,
    /// The segment's size before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The suffix of a segment being rewritten by `compact`; a leftover of a crash is removed at
/// open.
const COMPACTING_SUFFIX: &str = ".compacting";

/// Counters since open.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    appends: AtomicU64,
    records: AtomicU64,
    metalog_entries: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
    bytes_compacted: AtomicU64,
}

/// A snapshot of the store's counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `append_records` calls accepted.
    pub appends: u64,
    pub records: u64,
    pub metalog_entries: u64,
    /// io_uring write submissions that completed (one per batch unless a batch is large).
    pub writes: u64,
    /// fdatasyncs of segments.
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub segments_created: u64,
    pub segments_deleted: u64,
    /// Bytes compaction took off sealed segments.
    pub bytes_compacted: u64,
}

/// The durable store of one storage node. Cheap to clone; all clones share one IO thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tx: SyncSender<Request>,
    permits: Arc<Semaphore>,
    index: Arc<RwLock<index::Index>>,
    stats: Arc<Stats>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Held until shutdown: one store per data dir.
    lock: Mutex<Option<std::fs::File>>,
}

/// The lock file that keeps a second store (in this or another process) off a data dir.
pub const LOCK_FILE: &str = "LOCK";

/// Takes an exclusive `flock` on the data dir's lock file, released when the file closes
/// (also when the process dies).
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("open {}", path.display()), &e))?;
    // SAFETY: flock(2) on a file descriptor this function owns.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(StoreError::Io {
            message: format!("{} is in use by another running store ({e})", dir.display()),
            errno: e.raw_os_error(),
        });
    }
    Ok(file)
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn stop(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.permits.close();
            // The channel has one slot beyond the permits, so this cannot find it full; if
            // the thread is already gone there is nothing to stop.
            let _ = self.tx.try_send(Request {
                op: Op::Shutdown,
                permit: None,
            });
        }
        let handle = self
            .thread
            .lock()
            .expect("thread handle lock poisoned")
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("storage IO thread panicked");
            }
        }
        // The files are quiet now: another store may open the dir.
        self.lock.lock().expect("lock file mutex poisoned").take();
    }
}

/// Removes what a crash left of a segment being compacted: the segment itself is intact.
fn remove_compaction_leftovers(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("list {}", dir.display()), &e))?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(COMPACTING_SUFFIX))
        {
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::io(format!("remove {}", entry.path().display()), &e))?;
        }
    }
    Ok(())
}

/// The file name of segment `number`.
pub fn segment_name(number: u64) -> String {
    format!("{number:020}.seg")
}

/// The path of segment `number` in `dir`.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(segment_name(number))
}

impl Store {
    /// Opens (creating if absent) and recovers the data dir; starts the IO thread.
    pub fn open(config: StoreConfig) -> Result<(Store, Recovery), StoreError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StoreError::io(format!("create {}", config.data_dir.display()), &e))?;
        let lock = lock_dir(&config.data_dir)?;
        let ring = uring::Uring::new().map_err(|e| StoreError::Io {
            message: format!(
                "io_uring is not usable on this kernel ({e}); the storage node requires it \
                 (check kernel.io_uring_disabled and seccomp)"
            ),
            errno: e.raw_os_error(),
        })?;
        remove_compaction_leftovers(&config.data_dir)?;
        let recovered = recovery::recover(&config.data_dir)?;
        let index = Arc::new(RwLock::new(recovered.index));
        let stats = Arc::new(Stats::default());
        let writer = Writer::start(
            ring,
            &config,
            recovered.next_segment,
            index.clone(),
            stats.clone(),
        )?;
        // Room for the permitted requests, the metalog entries in flight, and a shutdown.
        let (tx, rx) = sync_channel(INFLIGHT_REQUESTS_MAX + METALOG_IN_FLIGHT_MAX + 1);
        let thread = std::thread::Builder::new()
            .name("storage-io".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io("spawn the storage IO thread", &e))?;
        let store = Store {
            inner: Arc::new(Inner {
                dir: config.data_dir.clone(),
                tx,
                permits: Arc::new(Semaphore::new(INFLIGHT_REQUESTS_MAX)),
                index,
                stats,
                closed: AtomicBool::new(false),
                thread: Mutex::new(Some(thread)),
                lock: Mutex::new(Some(lock)),
            }),
        };
        Ok((store, recovered.recovery))
    }

    /// Appends `records` of `shard`, whose local ids are consecutive from `first`. Resolves
    /// once durable under the durability mode. Per shard, local ids must continue exactly
    /// where the previous append ended (or start at counter 0 of a newer view).
    pub async fn append_records(
        &self,
        shard: ShardId,
        first: LocalId,
        records: Vec<LogRecord>,
    ) -> Result<(), StoreError> {
        self.enqueue_records(shard, first, records).await?.await
    }

    /// Like `append_records`, in two steps: the first resolves once the records are queued
    /// (after waiting for an in-flight permit), the returned future once they are durable.
    /// Requests queued one after another are written in that order, so a caller can queue
    /// the next batch before the previous one is durable.
    pub async fn enqueue_records(
        &self,
        shard: ShardId,
        first: LocalId,
        records: Vec<LogRecord>,
    ) -> Result<
        impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
        StoreError,
    > {
        check_records(&records)?;
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Append {
            shard,
            first,
            records,
            reply,
        })
        .await?;
        Ok(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    /// Persists a metalog entry (it orders records already stored); the returned future
    /// resolves once it is durable. The entry is queued before this returns, so requests made
    /// after the call are written after it, usually in the same group commit. Entries must come
    /// in position order without gaps, at most `METALOG_IN_FLIGHT_MAX` not yet durable at once:
    /// a metalog entry takes no in-flight permit, the channel keeps slots for them. They become
    /// durable in the order they were queued.
    pub fn append_metalog(
        &self,
        entry: MetalogEntry,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = if self.inner.closed.load(Ordering::SeqCst) {
            Err(StoreError::Closed)
        } else {
            self.enqueue(Request {
                op: Op::Metalog { entry, reply },
                permit: None,
            })
        };
        async move {
            queued?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// The sealed segments (every one but the newest, which the IO thread writes), oldest
    /// first, with their sizes in bytes.
    pub fn sealed_segments(&self) -> Vec<(u64, u64)> {
        let idx = self.inner.index.read().expect("index lock poisoned");
        let newest = idx.segments.keys().next_back().copied();
        idx.segments
            .iter()
            .filter(|(n, _)| Some(**n) != newest)
            .map(|(n, meta)| (*n, meta.bytes))
            .collect()
    }

    /// Rewrites sealed segment `number` without the payloads of the ordered records `dead`
    /// marks (called once with the seqnums of the segment's ordered records that still have a
    /// payload; it answers one flag each), if those payloads are at least `min_fraction` of
    /// the segment's bytes: that much is known from memory, without reading the file.
    /// Every frame stays, a dead record's with an empty payload, so recovery rebuilds the
    /// same index and the same streams; reads of the live records go on throughout (a read
    /// that located a record before the switch reads the old file). Blocking: it reads and
    /// writes the whole segment. The new file is synced and renamed over the old one, so a
    /// crash leaves one or the other.
    pub fn compact(
        &self,
        number: u64,
        min_fraction: f64,
        dead: impl FnOnce(&[Seqnum]) -> Vec<bool>,
    ) -> Result<Compacted, StoreError> {
        let path = segment_path(&self.inner.dir, number);
        let Some((_, size)) = self
            .sealed_segments()
            .into_iter()
            .find(|(n, _)| *n == number)
        else {
            return Err(StoreError::BadArgument(format!(
                "segment {number} is not a sealed segment of this store"
            )));
        };
        let mut done = Compacted {
            bytes_before: size,
            bytes_after: size,
            ..Compacted::default()
        };
        let candidates = self.payloads_in(number);
        let asked: Vec<Seqnum> = candidates.iter().map(|(s, _)| *s).collect();
        let flags = dead(&asked);
        assert_eq!(flags.len(), asked.len(), "one flag per record asked about");
        let mut doomed = std::collections::BTreeSet::new();
        let mut dead_bytes = 0u64;
        for (&(seqnum, data_len), dead) in candidates.iter().zip(flags) {
            if dead {
                doomed.insert(seqnum);
                dead_bytes += u64::from(data_len);
            }
        }
        if doomed.is_empty() || (dead_bytes as f64) < min_fraction * size as f64 {
            return Ok(done);
        }
        let bytes = Bytes::from(
            std::fs::read(&path)
                .map_err(|e| StoreError::io(format!("read {}", path.display()), &e))?,
        );
        let corrupt = |(offset, reason): (usize, String)| StoreError::Corrupt {
            segment: segment_name(number),
            offset_bytes: offset as u64,
            reason,
        };
        let scan = codec::scan(&bytes, false).map_err(corrupt)?;
        let seqnums: Vec<Option<Seqnum>> = {
            let idx = self.inner.index.read().expect("index lock poisoned");
            scan.frames
                .iter()
                .map(|(_, _, frame)| match frame {
                    codec::Frame::Record(r) => {
                        idx.seq_of(r.shard, r.local_id.view(), r.local_id.counter())
                    }
                    _ => None,
                })
                .collect()
        };
        // The new file: every frame as it was, but a dead record's without its payload.
        let mut out = Vec::with_capacity(bytes.len());
        let mut moved = Vec::new();
        let mut emptied = 0;
        for ((offset, len, frame), seqnum) in scan.frames.iter().zip(seqnums) {
            let at = out.len() as u64;
            let doomed = match frame {
                codec::Frame::Record(r) if !r.record.data.is_empty() => {
                    seqnum.is_some_and(|s| doomed.contains(&s))
                }
                _ => false,
            };
            let written = match frame {
                codec::Frame::Record(r) if doomed => {
                    emptied += 1;
                    let emptied = LogRecord {
                        data: Bytes::new(),
                        ..r.record.clone()
                    };
                    codec::encode_record(r.shard, r.local_id, &emptied, &mut out)
                }
                _ => {
                    out.extend_from_slice(&bytes[*offset..offset + len]);
                    *len
                }
            };
            if let codec::Frame::Record(r) = frame {
                let slot = index::Slot {
                    segment: number,
                    offset: at,
                    len: written as u32,
                    data_len: if doomed {
                        0
                    } else {
                        r.record.data.len() as u32
                    },
                };
                moved.push((r.shard, r.local_id, slot));
            }
        }
        let tmp = self
            .inner
            .dir
            .join(format!("{}{COMPACTING_SUFFIX}", segment_name(number)));
        let file = std::fs::File::create(&tmp)
            .map_err(|e| StoreError::io(format!("create {}", tmp.display()), &e))?;
        file.write_all_at(&out, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io(format!("write {}", tmp.display()), &e))?;
        drop(file);
        let dir = std::fs::File::open(&self.inner.dir)
            .map_err(|e| StoreError::io(format!("open {}", self.inner.dir.display()), &e))?;
        {
            // Under the index lock, which a reclaim holds while it deletes segments: the
            // segment is either still there and switched here, or gone and left alone.
            let mut idx = self.inner.index.write().expect("index lock poisoned");
            if !idx.segments.contains_key(&number) {
                drop(idx);
                let _ = std::fs::remove_file(&tmp);
                return Ok(done);
            }
            std::fs::rename(&tmp, &path)
                .and_then(|()| dir.sync_all())
                .map_err(|e| StoreError::io(format!("rename {}", tmp.display()), &e))?;
            let file = std::fs::File::open(&path)
                .map_err(|e| StoreError::io(format!("open {}", path.display()), &e))?;
            idx.relocate(number, Arc::new(file), out.len() as u64, &moved);
        }
        done.rewritten = true;
        done.records = emptied;
        done.bytes_after = out.len() as u64;
        self.inner
            .stats
            .bytes_compacted
            .fetch_add(done.bytes_before - done.bytes_after, Ordering::Relaxed);
        Ok(done)
    }

    /// The ordered records of segment `number` that still have a payload, with its size, in
    /// seqnum order: what `compact` asks about.
    pub fn payloads_in(&self, number: u64) -> Vec<(Seqnum, u32)> {
        let mut payloads: Vec<(Seqnum, u32)> = self
            .inner
            .index
            .read()
            .expect("index lock poisoned")
            .ordered_in(number)
            .into_iter()
            .filter(|(_, data_len)| *data_len > 0)
            .collect();
        // Runs of several shards share a segment.
        payloads.sort_unstable();
        payloads
    }

    /// The ordered record at `seqnum`: None if no such ordered record is stored here, or it
    /// was reclaimed.
    pub async fn read(&self, seqnum: Seqnum) -> Result<Option<StoredRecord>, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let located = self
            .inner
            .index
            .read()
            .expect("index lock poisoned")
            .locate(seqnum);
        let Some(loc) = located else {
            return Ok(None);
        };
        let record = tokio::task::spawn_blocking(move || read_record(&loc))
            .await
            .map_err(|e| StoreError::Io {
                message: format!("read task failed: {e}"),
                errno: None,
            })??;
        Ok(Some(StoredRecord {
            seqnum,
            shard: record.shard,
            local_id: record.local_id,
            record: record.record,
        }))
    }

    /// Writes `checkpoint` in a checkpoint frame, syncs, then deletes the oldest sealed
    /// segments all of whose records are ordered below `below` or are unordered leftovers of
    /// a view older than the last metalog entry's. Only a prefix of the series is deleted.
    pub async fn reclaim(&self, below: Seqnum, checkpoint: Bytes) -> Result<Reclaimed, StoreError> {
        if checkpoint.len() > CHECKPOINT_BYTES_MAX {
            return Err(StoreError::BadArgument(format!(
                "checkpoint is {} bytes; the limit is {CHECKPOINT_BYTES_MAX}",
                checkpoint.len()
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Reclaim {
            below,
            checkpoint,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Per shard: the view of its newest durable records and how many records of that view
    /// are durable (contiguous from counter 0).
    pub fn progress(&self) -> BTreeMap<ShardId, (ViewId, u64)> {
        self.inner
            .index
            .read()
            .expect("index lock poisoned")
            .shards
            .clone()
    }

    /// The counters since open.
    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.stats;
        StoreStats {
            appends: s.appends.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            metalog_entries: s.metalog_entries.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            segments_created: s.segments_created.load(Ordering::Relaxed),
            segments_deleted: s.segments_deleted.load(Ordering::Relaxed),
            bytes_compacted: s.bytes_compacted.load(Ordering::Relaxed),
        }
    }

    /// The newest checkpoint written or recovered: its `below` and the caller's bytes.
    pub fn checkpoint(&self) -> Option<(Seqnum, Bytes)> {
        self.inner
            .index
            .read()
            .expect("index lock poisoned")
            .checkpoint
            .clone()
    }

    /// Stops the IO thread after the requests already queued; later calls return `Closed`.
    /// Blocks until the thread has exited.
    pub fn shutdown(&self) {
        self.inner.stop();
    }

    async fn submit(&self, op: Op) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        self.enqueue(Request {
            op,
            permit: Some(permit),
        })
    }

    fn enqueue(&self, request: Request) -> Result<(), StoreError> {
        match self.inner.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(TrySendError::Full(_)) => Err(StoreError::Io {
                message: "request queue full despite the in-flight limit".into(),
                errno: None,
            }),
        }
    }
}

fn check_records(records: &[LogRecord]) -> Result<(), StoreError> {
    if records.is_empty() || records.len() > BATCH_RECORDS_MAX {
        return Err(StoreError::BadArgument(format!(
            "an append carries 1 to {BATCH_RECORDS_MAX} records, not {}",
            records.len()
        )));
    }
    for r in records {
        if r.data.len() > RECORD_BYTES_MAX {
            return Err(StoreError::BadArgument(format!(
                "record data is {} bytes; the limit is {RECORD_BYTES_MAX}",
                r.data.len()
            )));
        }
        if r.tags.len() > TAGS_PER_RECORD_MAX {
            return Err(StoreError::BadArgument(format!(
                "record has {} tags; the limit is {TAGS_PER_RECORD_MAX}",
                r.tags.len()
            )));
        }
    }
    Ok(())
}

/// Reads and checks the frame at `loc` (CRC, kind, and that it is the expected record).
fn read_record(loc: &index::Located) -> Result<codec::RecordFrame, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        segment: segment_name(loc.slot.segment),
        offset_bytes: loc.slot.offset,
        reason,
    };
    let mut buf = vec![0u8; loc.slot.len as usize];
    loc.file
        .read_exact_at(&mut buf, loc.slot.offset)
        .map_err(|e| StoreError::io(format!("read {}", segment_name(loc.slot.segment)), &e))?;
    match codec::decode(&Bytes::from(buf)) {
        Ok((codec::Frame::Record(r), _)) if r.shard == loc.shard && r.local_id == loc.local_id => {
            Ok(r)
        }
        Ok((codec::Frame::Record(r), _)) => Err(corrupt(format!(
            "expected shard {} local id {:#x}, found shard {} local id {:#x}",
            loc.shard.0, loc.local_id.0, r.shard.0, r.local_id.0
        ))),
        Ok(_) => Err(corrupt("expected a record frame".into())),
        Err(e) => Err(corrupt(e.to_string())),
    }
}
