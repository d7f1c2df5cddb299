//! The IO thread: owns the io_uring and the active segment, drains queued requests into one
//! batch, writes the batch, syncs it once (group commit), then publishes it to the index and
//! replies. It also rolls segments and runs reclaims in request order. Reads do not pass here.
//!
//! After a failed write or sync the writer stops writing and answers every later request with
//! that error: the file's state is unknown and a failed fsync cannot be retried safely.

use crate::codec::{self, SegmentHeader};
use crate::index::{self, Cursors, Index, Slot};
use crate::uring::Uring;
use crate::{segment_path, Durability, Reclaimed, Stats, StoreError};
use bytes::Bytes;
use logbook::wire::{LocalId, LogRecord, MetalogEntry, ShardId};
use logbook::{Seqnum, ViewId};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// Bytes gathered before a write is issued, even within one batch.
pub(crate) const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Requests taken into one batch (one sync).
pub(crate) const BATCH_REQUESTS_MAX: usize = 256;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum Op {
    Append {
        shard: ShardId,
        first: LocalId,
        records: Vec<LogRecord>,
        reply: Reply<()>,
    },
    Metalog {
        entry: MetalogEntry,
        reply: Reply<()>,
    },
    Reclaim {
        below: Seqnum,
        checkpoint: Bytes,
        reply: Reply<Reclaimed>,
    },
    Shutdown,
}

pub(crate) struct Request {
    pub op: Op,
    /// Released when the request is done, bounding requests in flight.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A change to publish to the index once its batch is durable.
enum Effect {
    Segment {
        number: u64,
        file: Arc<File>,
    },
    Record {
        shard: ShardId,
        id: LocalId,
        slot: Slot,
    },
    Metalog {
        entry: MetalogEntry,
        segment: u64,
    },
    Sealed {
        number: u64,
        bytes: u64,
    },
}

struct Active {
    number: u64,
    file: File,
    /// File offset where `Writer::buf` starts.
    written: u64,
    /// Length of the segment's header frame.
    header_bytes: u64,
}

pub(crate) struct Writer {
    ring: Uring,
    dir: PathBuf,
    dir_file: File,
    segment_bytes_max: u64,
    durability: Durability,
    sync_metalog: bool,
    /// Whether the batch being built holds records (not only metalog entries).
    batch_has_records: bool,
    active: Active,
    buf: Vec<u8>,
    effects: Vec<Effect>,
    replies: Vec<Reply<()>>,
    permits: Vec<OwnedSemaphorePermit>,
    /// What has been accepted into the files (written or buffered), ahead of the index.
    cursors: Cursors,
    last_metalog: Option<MetalogEntry>,
    max_view: ViewId,
    index: Arc<RwLock<Index>>,
    stats: Arc<Stats>,
    failed: Option<StoreError>,
    /// Written but not yet synced (Async mode).
    dirty: bool,
    /// A segment was created and the directory is not yet synced.
    dir_dirty: bool,
    last_sync: Instant,
}

impl Writer {
    /// Creates the writer and its first segment, numbered `number`, after recovery.
    pub fn start(
        ring: Uring,
        config: &crate::StoreConfig,
        number: u64,
        index: Arc<RwLock<Index>>,
        stats: Arc<Stats>,
    ) -> Result<Writer, StoreError> {
        let dir = config.data_dir.clone();
        let (segment_bytes_max, durability, sync_metalog) = (
            config.segment_bytes_max,
            config.durability,
            config.sync_metalog,
        );
        let dir_file =
            File::open(&dir).map_err(|e| StoreError::io(format!("open {}", dir.display()), &e))?;
        let (cursors, last_metalog, max_view) = {
            let idx = index.read().expect("index lock poisoned");
            (idx.shards.clone(), idx.last_metalog.clone(), idx.max_view)
        };
        let (file, read_file) = create_segment(&dir, number)?;
        let mut w = Writer {
            ring,
            dir,
            dir_file,
            segment_bytes_max,
            durability,
            sync_metalog,
            batch_has_records: false,
            active: Active {
                number,
                file,
                written: 0,
                header_bytes: 0,
            },
            buf: Vec::new(),
            effects: Vec::new(),
            replies: Vec::new(),
            permits: Vec::new(),
            cursors,
            last_metalog,
            max_view,
            index,
            stats,
            failed: None,
            dirty: false,
            dir_dirty: false,
            last_sync: Instant::now(),
        };
        w.begin_segment(read_file);
        w.commit_batch()?;
        Ok(w)
    }

    /// Serves requests until shutdown or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Request>) {
        let mut open = true;
        while open {
            let Some(first) = self.next_request(&rx) else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_REQUESTS_MAX {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            for req in batch {
                open &= self.handle(req);
            }
            self.finish_batch();
        }
        if self.dirty && self.failed.is_none() {
            if let Err(e) = self.sync_active() {
                tracing::error!(error = %e, "final sync at shutdown failed");
            }
        }
    }

    /// Waits for a request; in Async mode, syncs when the flush interval passes first.
    fn next_request(&mut self, rx: &Receiver<Request>) -> Option<Request> {
        loop {
            let interval = match self.durability {
                Durability::Async { flush_interval_ms } if self.dirty => {
                    Duration::from_millis(flush_interval_ms)
                }
                _ => return rx.recv().ok(),
            };
            let wait = (self.last_sync + interval).saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(r) => return Some(r),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.sync_active() {
                        self.failed = Some(e);
                    }
                }
            }
        }
    }

    /// Takes one request into the batch; returns false on shutdown.
    fn handle(&mut self, req: Request) -> bool {
        if let Some(p) = req.permit {
            self.permits.push(p);
        }
        match req.op {
            Op::Append {
                shard,
                first,
                records,
                reply,
            } => {
                let result = self.accept_records(shard, first, &records);
                self.batch_has_records |= result.is_ok();
                self.stage(result, reply);
            }
            Op::Metalog { entry, reply } => {
                let result = self.accept_metalog(entry);
                self.stage(result, reply);
            }
            Op::Reclaim {
                below,
                checkpoint,
                reply,
            } => {
                // A reclaim sees every earlier request durable and published.
                self.finish_batch();
                let result = self.reclaim(below, &checkpoint);
                // The receiver may have gone away; nothing to do then.
                let _ = reply.send(result);
            }
            Op::Shutdown => return false,
        }
        true
    }

    /// Queues `reply` for the batch's sync if `result` is Ok, else answers it now.
    fn stage(&mut self, result: Result<(), StoreError>, reply: Reply<()>) {
        match result {
            Ok(()) => self.replies.push(reply),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn accept_records(
        &mut self,
        shard: ShardId,
        first: LocalId,
        records: &[LogRecord],
    ) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        index::check_next(&self.cursors, shard, first, records.len() as u64)
            .map_err(StoreError::BadArgument)?;
        for (i, record) in records.iter().enumerate() {
            let id = LocalId(first.0 + i as u64);
            let start = self.buf.len();
            let len = codec::encode_record(shard, id, record, &mut self.buf);
            let offset = self.place_frame(start, len)?;
            self.effects.push(Effect::Record {
                shard,
                id,
                slot: Slot {
                    segment: self.active.number,
                    offset,
                    len: len as u32,
                    data_len: record.data.len() as u32,
                },
            });
            index::advance(&mut self.cursors, shard, id);
            self.max_view = self.max_view.max(id.view());
        }
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn accept_metalog(&mut self, entry: MetalogEntry) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(last) = &self.last_metalog {
            if entry.position != last.position + 1 || entry.start_seqnum < last.end_seqnum() {
                return Err(StoreError::BadArgument(format!(
                    "metalog entry at position {} (start {}) does not follow position {} (end {})",
                    entry.position,
                    entry.start_seqnum,
                    last.position,
                    last.end_seqnum()
                )));
            }
        }
        let start = self.buf.len();
        let len = codec::encode_metalog(&entry, &mut self.buf);
        self.place_frame(start, len)?;
        self.max_view = self.max_view.max(entry.view);
        self.last_metalog = Some(entry.clone());
        self.effects.push(Effect::Metalog {
            entry,
            segment: self.active.number,
        });
        self.stats.metalog_entries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The frame just encoded at `buf[start..start + len]` goes in the active segment, or in a
    /// new one if it would push the active one past its limit. Returns its file offset.
    fn place_frame(&mut self, start: usize, len: usize) -> Result<u64, StoreError> {
        let size = self.active.written + start as u64;
        let header_only = size == self.active.header_bytes;
        if size + len as u64 > self.segment_bytes_max && !header_only {
            let frame = self.buf.split_off(start);
            self.roll()?;
            self.buf.extend_from_slice(&frame);
        }
        let offset = self.active.written + (self.buf.len() - len) as u64;
        if self.buf.len() >= BATCH_BYTES_MAX {
            self.write_buf()?;
        }
        Ok(offset)
    }

    fn header(&self, number: u64) -> SegmentHeader {
        SegmentHeader {
            segment: number,
            max_view: self.max_view,
            last_metalog: self.last_metalog.clone(),
            shards: Index::header_cursors(&self.cursors),
        }
    }

    /// Seals the active segment (written and synced) and starts the next one.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.write_buf()?;
        self.sync_active()?;
        self.effects.push(Effect::Sealed {
            number: self.active.number,
            bytes: self.active.written,
        });
        let number = self.active.number + 1;
        let (file, read_file) = create_segment(&self.dir, number)?;
        self.active = Active {
            number,
            file,
            written: 0,
            header_bytes: 0,
        };
        self.begin_segment(read_file);
        Ok(())
    }

    /// Buffers the active segment's header and records the segment for the index. The
    /// directory is synced with the batch.
    fn begin_segment(&mut self, read_file: File) {
        debug_assert!(self.buf.is_empty() && self.active.written == 0);
        let len = codec::encode_header(&self.header(self.active.number), &mut self.buf);
        self.active.header_bytes = len as u64;
        self.effects.push(Effect::Segment {
            number: self.active.number,
            file: Arc::new(read_file),
        });
        self.stats.segments_created.fetch_add(1, Ordering::Relaxed);
        self.dirty = true;
        // A new file's directory entry must be durable before anything in it is acknowledged.
        self.dir_dirty = true;
    }

    fn write_buf(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let fd = self.active.file.as_raw_fd();
        if let Err(e) = self.ring.write_all_at(fd, &self.buf, self.active.written) {
            return Err(self.fail(format!("write segment {}", self.active.number), &e));
        }
        self.buffer_written();
        Ok(())
    }

    /// The buffer reached the active segment: count it and move the segment's end past it.
    fn buffer_written(&mut self) {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_written
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.active.written += self.buf.len() as u64;
        self.buf.clear();
        self.dirty = true;
    }

    /// A write or sync failed: the files' state is unknown, so the writer stops for good.
    fn fail(&mut self, context: String, e: &std::io::Error) -> StoreError {
        let err = StoreError::io(context, e);
        self.failed = Some(err.clone());
        err
    }

    /// fdatasyncs the active segment (and the directory if a segment was created).
    fn sync_active(&mut self) -> Result<(), StoreError> {
        let result = self.active.file.sync_data().and_then(|()| {
            if self.dir_dirty {
                self.dir_file.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = result {
            return Err(self.fail(format!("sync segment {}", self.active.number), &e));
        }
        self.dir_dirty = false;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Writes and (in Fsync mode) syncs the batch, publishes it and answers its requests.
    fn finish_batch(&mut self) {
        let result = self.commit_batch();
        let replies = std::mem::take(&mut self.replies);
        for reply in replies {
            let _ = reply.send(result.clone());
        }
        self.permits.clear();
    }

    fn commit_batch(&mut self) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            self.effects.clear();
            return Err(e.clone());
        }
        let fsync = self.durability == Durability::Fsync
            && (self.sync_metalog || std::mem::take(&mut self.batch_has_records));
        self.batch_has_records = false;
        self.write_buf()?;
        if self.dirty && (fsync || self.dir_dirty) {
            self.sync_active()?;
        }
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        if self.effects.is_empty() {
            return;
        }
        let mut idx = self.index.write().expect("index lock poisoned");
        for effect in self.effects.drain(..) {
            match effect {
                Effect::Segment { number, file } => idx.add_segment(number, file, 0),
                Effect::Record { shard, id, slot } => {
                    let applied = idx.apply_record(shard, id, slot);
                    debug_assert!(applied.is_ok(), "writer and index disagree: {applied:?}");
                }
                Effect::Metalog { entry, segment } => idx.apply_metalog(&entry, segment),
                Effect::Sealed { number, bytes } => idx.grow_segment(number, bytes),
            }
        }
        idx.grow_segment(self.active.number, self.active.written);
    }

    /// Writes a checkpoint, syncs it, then deletes the reclaimable prefix of sealed segments.
    fn reclaim(&mut self, below: Seqnum, checkpoint: &Bytes) -> Result<Reclaimed, StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let newest = self
            .index
            .read()
            .expect("index lock poisoned")
            .checkpoint
            .as_ref()
            .map(|c| c.0);
        if newest.is_some_and(|newest| below <= newest) {
            // A checkpoint at or below the newest one summarises less: keeping it would make
            // recovery forget records whose segments are already gone.
            return Ok(Reclaimed::default());
        }
        let start = self.buf.len();
        let len =
            codec::encode_checkpoint(below, checkpoint, self.last_metalog.as_ref(), &mut self.buf);
        self.place_frame(start, len)?;
        self.write_buf()?;
        self.sync_active()?;
        self.publish();
        let (doomed, active) = {
            let idx = self.index.read().expect("index lock poisoned");
            let doomed: Vec<(u64, u64)> = idx
                .reclaimable_prefix(below, self.active.number)
                .into_iter()
                .map(|n| (n, idx.segments.get(&n).map_or(0, |m| m.bytes)))
                .collect();
            (doomed, self.active.number)
        };
        debug_assert!(doomed.iter().all(|&(n, _)| n < active));
        let mut freed = Reclaimed::default();
        let mut deleted = Vec::new();
        let mut error = None;
        // Under the index lock, which a compaction holds while it switches a segment's file:
        // it never puts back a segment deleted here.
        let mut idx = self.index.write().expect("index lock poisoned");
        // Oldest first, stopping at the first failure, so only a prefix is ever deleted.
        for &(n, bytes) in &doomed {
            let path = segment_path(&self.dir, n);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    deleted.push(n);
                    freed.segments += 1;
                    freed.bytes += bytes;
                }
                Err(e) => {
                    error = Some(StoreError::io(format!("delete {}", path.display()), &e));
                    break;
                }
            }
        }
        if !deleted.is_empty() {
            if let Err(e) = self.dir_file.sync_all() {
                error.get_or_insert(StoreError::io("sync data directory", &e));
            }
        }
        idx.checkpoint = Some((below, checkpoint.clone()));
        idx.drop_segments(&deleted, below);
        drop(idx);
        self.stats
            .segments_deleted
            .fetch_add(freed.segments as u64, Ordering::Relaxed);
        match error {
            Some(e) => Err(e),
            None => Ok(freed),
        }
    }
}

/// Creates segment `number` (which must not exist) and a read-only handle on it.
fn create_segment(dir: &std::path::Path, number: u64) -> Result<(File, File), StoreError> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("create {}", path.display()), &e))?;
    let read_file =
        File::open(&path).map_err(|e| StoreError::io(format!("open {}", path.display()), &e))?;
    Ok((file, read_file))
}
