//! The gateway's log runtime: drives the sans-IO `LogEngine` with tokio and implements the
//! `LogBook` trait on top of it. Appends become `Replicate` commands handed, in local-id order,
//! to the shard's storage replicas through the `Shard` trait; metalog entries arrive through
//! `GatewayLog::on_metalog` and complete them. Reads ask the engine for a plan and fetch
//! uncached records from the shard.
//!
//! The runtime does not know how records reach storage or how the metalog is made: the binary
//! wires a `Shard` (in-process on one node, gRPC in a cluster) and feeds metalog entries.

use crate::engine::{Command, EngineConfig, LogEngine, OpId, ReadPlan, Reply};
use crate::metrics::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use logbook::wire::{LocalId, LogRecord, MetalogEntry, RecordKind};
use logbook::{
    validate_range, validate_timeout, AppendRequest, BookId, Cond, IndexCheckpoint, LogBook,
    LogError, ReadBudget, ReadRange, Record, Seqnum, Tag,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Bytes of records handed to the shard in one `replicate` call, at most.
const REPLICATE_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How many times an append discarded by view changes is made again before the caller
/// sees `Discarded`.
const DISCARDED_RETRIES: usize = 5;
/// Records fetched from storage in one `read_many` call, at most.
const READ_MANY_CHUNK: usize = 256;
/// How often parked blocking reads are checked for their deadline.
const TICK_INTERVAL_MS: u64 = 5;
/// How long after a trim the housekeeping pass it asks for starts (so one pass serves the
/// trims made together), and the least time between two passes.
const HOUSEKEEPING_DELAY: Duration = Duration::from_secs(1);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// Records whose visibility one hold of the engine's lock answers, at most.
const VISIBILITY_CHUNK: usize = 1024;

/// Answers, per seqnum, whether the record there is still visible (`Shard::compact`).
pub type Visibility = Arc<dyn Fn(&[Seqnum]) -> Vec<bool> + Send + Sync>;

/// Where a gateway's records go: its shard's storage replicas.
#[async_trait]
pub trait Shard: Send + Sync + 'static {
    /// Stores records whose local ids are consecutive from `first`; resolves once they are
    /// durable under the configured durability mode. Calls come in local-id order.
    async fn replicate(&self, first: LocalId, records: Vec<LogRecord>) -> Result<(), LogError>;
    /// Reads the ordered record at `seqnum` from a replica.
    async fn read_at(&self, seqnum: Seqnum) -> Result<Option<Record>, LogError>;
    /// Reads several ordered records (in the order given); by default one `read_at` each.
    async fn read_many(&self, seqnums: &[Seqnum]) -> Result<Vec<Option<Record>>, LogError> {
        let mut records = Vec::with_capacity(seqnums.len());
        for seqnum in seqnums {
            records.push(self.read_at(*seqnum).await?);
        }
        Ok(records)
    }
    /// Trims made every record below `checkpoint.below` invisible: the storage replicas may
    /// delete the segments that hold only such records, keeping the checkpoint for recovery.
    async fn reclaim(&self, checkpoint: IndexCheckpoint) -> Result<(), LogError>;
    /// Trims made records invisible here and there: the storage replicas may drop their
    /// payloads from sealed segments, asking `visible` which records still show. By default
    /// nothing is dropped.
    async fn compact(&self, _visible: Visibility) -> Result<(), LogError> {
        Ok(())
    }
}

struct Inner {
    engine: LogEngine,
    waiters: HashMap<OpId, oneshot::Sender<Reply>>,
    next_op: OpId,
    replicate_tx: mpsc::UnboundedSender<(LocalId, Vec<LogRecord>)>,
}

impl Inner {
    fn op(&mut self) -> (OpId, oneshot::Receiver<Reply>) {
        self.next_op += 1;
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(self.next_op, tx);
        (self.next_op, rx)
    }

    /// Executes the engine's commands. Runs under the lock so replication keeps local-id
    /// order; the channel is unbounded but the engine's pending-append limit bounds it.
    fn execute(&mut self, commands: Vec<Command>) {
        for command in commands {
            match command {
                Command::Replicate { first, records } => {
                    // The receiver lives as long as the runtime; a send after shutdown is moot.
                    let _ = self.replicate_tx.send((first, records));
                }
                Command::Reply { op, result } => {
                    if let Some(waiter) = self.waiters.remove(&op) {
                        let _ = waiter.send(result);
                    }
                }
            }
        }
    }
}

/// Counters the gateway exports.
#[derive(Debug, Default, Clone, Copy)]
pub struct RuntimeStats {
    pub replicate_calls: u64,
    pub storage_reads: u64,
}

/// How long a read waits for its gateway to cover what its reader has seen.
pub const SEEN_WAIT: Duration = Duration::from_secs(10);

/// Waits (up to `SEEN_WAIT`) until `engine` covers `seen`, what a reader has seen (HTTP's
/// `X-Tally-Seen`, the log protocol's `seen_end`); nothing to wait for without either.
pub async fn catch_up(engine: Option<&GatewayLog>, seen: Option<Seqnum>) -> Result<(), LogError> {
    match (engine, seen) {
        (Some(engine), Some(seen)) => engine.wait_covered(seen, SEEN_WAIT).await,
        _ => Ok(()),
    }
}

/// The real `LogBook` of one gateway.
pub struct GatewayLog {
    inner: Mutex<Inner>,
    /// The index's applied end (see `LogEngine::applied_end`), for `wait_covered`.
    covered: tokio::sync::watch::Sender<Seqnum>,
    shard: Arc<dyn Shard>,
    started: Instant,
    stats: Mutex<RuntimeStats>,
    metrics: Arc<Metrics>,
    reclaiming: tokio::sync::Mutex<()>,
    /// Told of every trim the index applies: the housekeeping task reclaims and compacts
    /// after trims.
    trimmed: Arc<tokio::sync::Notify>,
}

impl GatewayLog {
    /// Starts the runtime: a replication task and a ticker, both ending when the log is dropped.
    pub fn start(
        config: EngineConfig,
        shard: Arc<dyn Shard>,
        restore: Restore,
        metrics: Arc<Metrics>,
    ) -> Arc<GatewayLog> {
        let mut engine = LogEngine::new(config);
        engine.restore(
            restore.checkpoint.as_ref(),
            restore.entries,
            restore.next_position,
        );
        let (replicate_tx, replicate_rx) = mpsc::unbounded_channel();
        let covered = tokio::sync::watch::channel(engine.applied_end()).0;
        let log = Arc::new(GatewayLog {
            covered,
            inner: Mutex::new(Inner {
                engine,
                waiters: HashMap::new(),
                next_op: 0,
                replicate_tx,
            }),
            shard,
            started: Instant::now(),
            stats: Mutex::new(RuntimeStats::default()),
            metrics,
            reclaiming: tokio::sync::Mutex::new(()),
            trimmed: Arc::new(tokio::sync::Notify::new()),
        });
        tokio::spawn(replicate_loop(Arc::downgrade(&log), replicate_rx));
        tokio::spawn(tick_loop(Arc::downgrade(&log)));
        tokio::spawn(housekeeping_loop(Arc::downgrade(&log), log.trimmed.clone()));
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("no panics while holding the engine lock")
    }

    /// Has the shard reclaim the prefix of the log trims made invisible, if it grew.
    async fn reclaim_trimmed(&self) {
        // One reclaim at a time, so checkpoints reach storage in increasing order.
        let _reclaiming = self.reclaiming.lock().await;
        let checkpoint = self.lock().engine.reclaim_checkpoint();
        if let Some(checkpoint) = checkpoint {
            // The trim holds whether or not space comes back now; a later trim retries.
            match self.shard.reclaim(checkpoint.clone()).await {
                Ok(()) => self.lock().engine.reclaimed(&checkpoint),
                Err(e) => tracing::warn!(error = %e, "reclaiming trimmed segments failed"),
            }
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// The ordering side can no longer make metalog entries durable: every pending append
    /// and every later one fails with `cause`.
    pub fn fail(&self, cause: LogError) {
        let mut inner = self.lock();
        let commands = inner.engine.fail(None, stopped(cause));
        inner.execute(commands);
    }

    /// A committed metalog entry, in position order.
    pub fn on_metalog(&self, entry: &MetalogEntry) {
        self.apply(|engine| engine.on_metalog(entry));
    }

    /// Applies log entries to the index with `apply`, runs the commands that answers, tells
    /// readers waiting for coverage, and has the housekeeping task run after the trims
    /// applied (any gateway's: this one's shard holds their records too).
    fn apply(&self, apply: impl FnOnce(&mut LogEngine) -> Vec<Command>) {
        let mut inner = self.lock();
        let trims = inner.engine.trims_applied();
        let commands = apply(&mut inner.engine);
        inner.execute(commands);
        self.covered.send_replace(inner.engine.applied_end());
        if inner.engine.trims_applied() != trims {
            self.trimmed.notify_one();
        }
    }

    /// Waits until the index holds every record at or below `seqnum` (a seqnum the caller
    /// appended or read, here or at another gateway): then reads here see what the caller
    /// saw. Fails with `Unavailable` after `timeout`.
    pub async fn wait_covered(&self, seqnum: Seqnum, timeout: Duration) -> Result<(), LogError> {
        let mut covered = self.covered.subscribe();
        let reached = tokio::time::timeout(timeout, covered.wait_for(|end| *end > seqnum)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LogError::Unavailable(format!(
                "this gateway has not applied the log up to seqnum {seqnum} yet"
            ))),
        }
    }

    /// Index data for records this gateway did not append (other shards', or its own from an
    /// earlier run), needed before the metalog entries that order them can apply.
    pub fn on_index_data(&self, entries: Vec<logbook::wire::IndexEntry>) {
        self.apply(|engine| engine.on_index_data(entries));
    }

    /// The view before `next` is sealed: pending appends fail with the retryable `Discarded`
    /// (which `append` retries itself) and later ones are made in `next`. Call it only once
    /// every metalog entry of the sealed views is applied (`metalog_position` has reached
    /// `next`'s first position): then no discarded record can still be ordered, so retrying
    /// it cannot make a duplicate.
    pub fn seal(&self, next: logbook::ViewId) {
        let mut inner = self.lock();
        let commands = inner.engine.seal(next);
        inner.execute(commands);
    }

    /// The seqnum after the last record the index has applied.
    pub fn applied_end(&self) -> Seqnum {
        *self.covered.borrow()
    }

    /// Every book the index holds, and its records and tags.
    pub fn books(&self) -> Vec<logbook::BookSummary> {
        self.lock().engine.books()
    }

    /// The tags of `book` after `after`, at most `limit`, each with its stream's length.
    pub fn tags(
        &self,
        book: logbook::BookId,
        after: Option<logbook::Tag>,
        limit: usize,
    ) -> Vec<(logbook::Tag, u64)> {
        self.lock().engine.tags(book, after, limit)
    }

    /// The metalog position of the next entry to apply.
    pub fn metalog_position(&self) -> u64 {
        self.lock().engine.metalog_position()
    }

    /// The view appends are made in.
    pub fn view(&self) -> logbook::ViewId {
        self.lock().engine.view()
    }

    pub fn engine_stats(&self) -> crate::engine::EngineStats {
        self.lock().engine.stats()
    }

    pub fn runtime_stats(&self) -> RuntimeStats {
        *self.stats.lock().expect("stats lock")
    }

    /// Appends an op, retrying it when a view change discarded it. A discarded op was never
    /// ordered and never will be (see `seal`), so appending it again is safe.
    async fn submit(
        &self,
        book: BookId,
        records: Vec<(Vec<Tag>, RecordKind, Bytes)>,
    ) -> Result<Vec<Seqnum>, LogError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.submit_once(book, records.clone()).await {
                Err(LogError::Discarded) if attempts < DISCARDED_RETRIES => continue,
                result => return result,
            }
        }
    }

    async fn submit_once(
        &self,
        book: BookId,
        records: Vec<(Vec<Tag>, RecordKind, Bytes)>,
    ) -> Result<Vec<Seqnum>, LogError> {
        let rx = {
            let mut inner = self.lock();
            let (op, rx) = inner.op();
            let commands = inner.engine.append(op, book, records);
            inner.execute(commands);
            rx
        };
        match rx
            .await
            .map_err(|_| LogError::Unavailable("gateway is shutting down".into()))?
        {
            Reply::Appended(seqnums) => Ok(seqnums),
            Reply::Err(e) => Err(e),
            other => unreachable!("an append is answered with seqnums or an error, got {other:?}"),
        }
    }

    async fn resolve(&self, plan: ReadPlan) -> Result<Option<Record>, LogError> {
        match plan {
            ReadPlan::Empty => Ok(None),
            ReadPlan::Cached(record) => Ok(Some(record)),
            ReadPlan::Fetch { seqnum } => {
                self.stats.lock().expect("stats lock").storage_reads += 1;
                let record = self
                    .shard
                    .read_at(seqnum)
                    .await?
                    .ok_or(LogError::Trimmed(seqnum))?;
                self.lock().engine.cache_insert(record.clone());
                Ok(Some(record))
            }
        }
    }
}

/// What a gateway restores at start: the checkpoint of reclaimed records, if any, and the
/// ordered records from storage after it, in seqnum order.
#[derive(Default)]
pub struct Restore {
    pub checkpoint: Option<IndexCheckpoint>,
    pub entries: Vec<logbook::wire::IndexEntry>,
    pub next_position: u64,
}

async fn replicate_loop(
    log: std::sync::Weak<GatewayLog>,
    mut rx: mpsc::UnboundedReceiver<(LocalId, Vec<LogRecord>)>,
) {
    // A batch taken from the queue that did not fit into the previous call.
    let mut carried: Option<(LocalId, Vec<LogRecord>)> = None;
    loop {
        let next = match carried.take() {
            Some(batch) => batch,
            None => match rx.recv().await {
                Some(batch) => batch,
                None => return,
            },
        };
        let (first, mut records) = next;
        // Coalesce queued consecutive batches into one call: they share one group commit. A
        // batch that does not continue this one (the first of a new view, after a seal) goes
        // into the next call.
        let mut bytes: usize = records.iter().map(|r| r.data.len()).sum();
        while let Ok((next, more)) = rx.try_recv() {
            let more_bytes: usize = more.iter().map(|r| r.data.len()).sum();
            if next.0 != first.0 + records.len() as u64
                || records.len() + more.len() > logbook::BATCH_RECORDS_MAX
                || bytes + more_bytes > REPLICATE_BATCH_BYTES_MAX
            {
                carried = Some((next, more));
                break;
            }
            bytes += more_bytes;
            records.extend(more);
        }
        let Some(log) = log.upgrade() else { return };
        let started = Instant::now();
        let result = log.shard.replicate(first, records).await;
        log.metrics.observe_stage("replicate", started.elapsed());
        log.stats.lock().expect("stats lock").replicate_calls += 1;
        if let Err(e) = result {
            tracing::error!(error = %e, "replication failed; the log stops accepting appends");
            let mut inner = log.lock();
            let commands = inner.engine.fail(Some(first), stopped(e));
            inner.execute(commands);
            // Everything queued behind the failed batch belongs to failed ops.
            carried = None;
            while rx.try_recv().is_ok() {}
        }
    }
}

/// The error appends get once the shard can no longer store records.
fn stopped(cause: LogError) -> LogError {
    LogError::Io(format!(
        "the log stopped accepting appends after a storage failure ({cause}); restart to recover"
    ))
}

/// After trims, in the background: reclaims the prefix of the log they made invisible, then
/// has the shard drop the payloads of records no stream shows any more. A pass starts a
/// moment after the trim that asks for it and at least `HOUSEKEEPING_INTERVAL` after the
/// last one; it ends with the log.
async fn housekeeping_loop(log: std::sync::Weak<GatewayLog>, trimmed: Arc<tokio::sync::Notify>) {
    loop {
        let asked = tokio::time::timeout(HOUSEKEEPING_INTERVAL, trimmed.notified()).await;
        if log.strong_count() == 0 {
            return;
        }
        if asked.is_err() {
            continue;
        }
        tokio::time::sleep(HOUSEKEEPING_DELAY).await;
        let Some(strong) = log.upgrade() else { return };
        strong.reclaim_trimmed().await;
        let weak = log.clone();
        let visible: Visibility = Arc::new(move |seqnums: &[Seqnum]| match weak.upgrade() {
            // The engine's lock is taken for a chunk at a time: appends go on between them.
            Some(log) => (seqnums.chunks(VISIBILITY_CHUNK))
                .flat_map(|chunk| {
                    let inner = log.lock();
                    chunk
                        .iter()
                        .map(|s| inner.engine.shows(*s))
                        .collect::<Vec<_>>()
                })
                .collect(),
            // Gone: nothing is dropped.
            None => vec![true; seqnums.len()],
        });
        let shard = strong.shard.clone();
        drop(strong);
        if let Err(e) = shard.compact(visible).await {
            tracing::warn!(error = %e, "compacting trimmed records failed");
        }
        tokio::time::sleep(HOUSEKEEPING_INTERVAL.saturating_sub(HOUSEKEEPING_DELAY)).await;
    }
}

async fn tick_loop(log: std::sync::Weak<GatewayLog>) {
    let mut interval = tokio::time::interval(Duration::from_millis(TICK_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(log) = log.upgrade() else { return };
        let now_us = log.now_us();
        let mut inner = log.lock();
        let commands = inner.engine.on_tick(now_us);
        inner.execute(commands);
    }
}

#[async_trait]
impl LogBook for GatewayLog {
    async fn append(&self, book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError> {
        let seqnums = self
            .submit(book, vec![(tags.to_vec(), RecordKind::Data, data)])
            .await?;
        Ok(seqnums[0])
    }

    async fn cond_append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        let seqnums = self
            .submit(book, vec![(tags.to_vec(), RecordKind::Cond(cond), data)])
            .await?;
        Ok(seqnums[0])
    }

    async fn append_batch(
        &self,
        book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        let records = records
            .into_iter()
            .map(|r| (r.tags, RecordKind::Data, r.data))
            .collect();
        self.submit(book, records).await
    }

    async fn read_next(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        let plan = self.lock().engine.read_next(book, tag, min_seqnum);
        self.resolve(plan).await
    }

    async fn read_prev(
        &self,
        book: BookId,
        tag: Tag,
        max_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        let plan = self.lock().engine.read_prev(book, tag, max_seqnum);
        self.resolve(plan).await
    }

    async fn read_next_blocking(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        validate_timeout(timeout)?;
        let deadline_us = self.now_us() + timeout.as_micros() as u64;
        let parked = {
            let mut inner = self.lock();
            let (op, rx) = inner.op();
            match inner
                .engine
                .read_next_blocking(op, book, tag, min_seqnum, deadline_us)
            {
                Ok(Some(plan)) => {
                    inner.waiters.remove(&op);
                    Err(Ok(plan))
                }
                Ok(None) => Ok(rx),
                Err(e) => {
                    inner.waiters.remove(&op);
                    Err(Err(e))
                }
            }
        };
        let plan = match parked {
            Err(now) => now?,
            Ok(rx) => match rx
                .await
                .map_err(|_| LogError::Unavailable("gateway is shutting down".into()))?
            {
                Reply::Plan(plan) => plan,
                Reply::Err(e) => return Err(e),
                other => unreachable!("a parked read is answered with a plan, got {other:?}"),
            },
        };
        self.resolve(plan).await
    }

    async fn set_aux_data(&self, book: BookId, seqnum: Seqnum, aux: Bytes) -> Result<(), LogError> {
        self.lock().engine.set_aux_data(book, seqnum, aux)
    }

    async fn trim(&self, book: BookId, tag: Tag, below: Seqnum) -> Result<(), LogError> {
        self.submit(
            book,
            vec![(Vec::new(), RecordKind::Trim { tag, below }, Bytes::new())],
        )
        .await?;
        if tag == Tag::ANY {
            self.reclaim_trimmed().await;
        }
        // The trim, applied, has asked for housekeeping (`apply`).
        Ok(())
    }

    async fn read_range(
        &self,
        book: BookId,
        tag: Tag,
        range: ReadRange,
    ) -> Result<Vec<Record>, LogError> {
        validate_range(range)?;
        let plans = self
            .lock()
            .engine
            .read_range(book, tag, range.from, range.to, range.limit);
        // Fetch what the cache lacks in one call per chunk, then assemble in order.
        let wanted: Vec<Seqnum> = plans
            .iter()
            .filter_map(|plan| match plan {
                ReadPlan::Fetch { seqnum } => Some(*seqnum),
                _ => None,
            })
            .collect();
        let mut fetched = HashMap::with_capacity(wanted.len());
        for chunk in wanted.chunks(READ_MANY_CHUNK) {
            self.stats.lock().expect("stats lock").storage_reads += chunk.len() as u64;
            let records = self.shard.read_many(chunk).await?;
            let mut inner = self.lock();
            for record in records.into_iter().flatten() {
                inner.engine.cache_insert(record.clone());
                fetched.insert(record.seqnum, record);
            }
        }
        let mut records = Vec::with_capacity(plans.len());
        let mut budget = ReadBudget::default();
        for plan in plans {
            let record = match plan {
                ReadPlan::Empty => None,
                ReadPlan::Cached(record) => Some(record),
                // Missing: trimmed between planning and fetching; the range starts later.
                ReadPlan::Fetch { seqnum } => fetched.remove(&seqnum),
            };
            match record {
                Some(record) if budget.admit(record.data.len()) => records.push(record),
                Some(_) => break,
                None => {}
            }
        }
        Ok(records)
    }
}
