//! `tally up`: the storage node's segment store, the sequencer engine and the gateway in one
//! process, wired with in-process channels instead of the network. The roles and their
//! protocol are the cluster's: the gateway replicates its shard to the store, the store's
//! progress feeds the sequencer, the sequencer's metalog entries are made durable in the store
//! (standing in for the Raft log of a sequencer group) and then complete the gateway's appends.
//! Here progress counts records queued in the store, not yet durable: the store writes in
//! queue order and syncs in that order, so an entry durable implies the records it orders are
//! (they share one fdatasync when they arrive together).
//!
//! Every start is a new view: appends that were pending at a crash were never acknowledged,
//! and their records are left unordered in the old view.

use anyhow::Context as _;
use async_trait::async_trait;
use gateway::engine::EngineConfig;
use gateway::metrics::Metrics;
use gateway::{GatewayLog, Restore, Shard};
use logbook::wire::{LocalId, LogRecord, MetalogEntry, NodeId, ShardId, ShardProgress};
use logbook::{IndexCheckpoint, LogError, Record, Seqnum, ViewId};
use sequencer::{SequencerConfig, SequencerEngine};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storage_node::{
    Durability, Store, StoreConfig, StoreError, COMPACT_DEAD_FRACTION, METALOG_IN_FLIGHT_MAX,
};
use tokio::sync::{mpsc, oneshot};

const SHARD: ShardId = ShardId(0);
const STORAGE_NODE: NodeId = NodeId(0);
/// Least time between two metalog entries. Below a synced write's cost (0.2 to 1 ms), it never
/// delays an entry in fsync mode: the entry in flight already spaces them.
pub const CUT_INTERVAL_US_DEFAULT: u64 = 200;
/// Messages queued for the sequencer task, at most.
const SEQUENCER_QUEUE_MAX: usize = 4096;

/// How a single node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// How often the sequencer cuts the shard's progress into a metalog entry.
    pub cut_interval_us: u64,
    pub cache_bytes_max: usize,
    pub segment_bytes_max: u64,
    pub pending_appends_max: usize,
}

impl NodeConfig {
    pub fn new(data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            data_dir,
            durability: Durability::Fsync,
            cut_interval_us: CUT_INTERVAL_US_DEFAULT,
            cache_bytes_max: 256 * 1024 * 1024,
            segment_bytes_max: 64 * 1024 * 1024,
            pending_appends_max: 100_000,
        }
    }
}

/// What recovery found, for the start-up message.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub view: ViewId,
    pub records: u64,
    pub metalog_entries: u64,
    pub truncated_tail_bytes: u64,
}

/// A running single node.
pub struct Node {
    pub log: Arc<GatewayLog>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub recovered: Recovered,
}

/// The shard's records are durable up to `progress`. `taken` is answered once the sequencer
/// has taken the progress in: queued a metalog entry covering it, or found one in flight.
/// Replication waits for that answer, so the next records and the entry that orders the
/// previous ones reach the store together and share one group commit.
struct ProgressReport {
    progress: ShardProgress,
    taken: oneshot::Sender<()>,
}

/// The gateway's shard on one node: the local store.
struct LocalShard {
    store: Store,
    sequencer: mpsc::Sender<ProgressReport>,
}

#[async_trait]
impl Shard for LocalShard {
    async fn replicate(&self, first: LocalId, records: Vec<LogRecord>) -> Result<(), LogError> {
        let count = records.len() as u64;
        // Reported as soon as the records are queued: the metalog entry that orders them is
        // queued after them, so the store writes it after them in its one file order, and it
        // is durable (and applied) only once they are, usually in the same fdatasync, instead
        // of one sync for the records and the next for the entry.
        let durable = self.store.enqueue_records(SHARD, first, records).await?;
        let progress = ShardProgress {
            node: STORAGE_NODE,
            shard: SHARD,
            view: first.view(),
            durable: first.counter() + count,
        };
        let (taken, taken_rx) = oneshot::channel();
        self.sequencer
            .send(ProgressReport { progress, taken })
            .await
            .map_err(|_| LogError::Unavailable("sequencer stopped".into()))?;
        durable.await?;
        // The answer only paces replication.
        let _ = taken_rx.await;
        Ok(())
    }

    async fn read_at(&self, seqnum: Seqnum) -> Result<Option<Record>, LogError> {
        Ok(self.store.read(seqnum).await?.map(|stored| Record {
            seqnum,
            book: stored.record.book,
            tags: stored.record.tags,
            data: stored.record.data,
            aux: None,
        }))
    }

    async fn compact(&self, visible: gateway::runtime::Visibility) -> Result<(), LogError> {
        let store = self.store.clone();
        let compacted = tokio::task::spawn_blocking(move || {
            let mut freed = (0u64, 0u64);
            for (number, _) in store.sealed_segments() {
                let dead = |seqnums: &[Seqnum]| visible(seqnums).into_iter().map(|v| !v).collect();
                match store.compact(number, COMPACT_DEAD_FRACTION, dead) {
                    Ok(done) if done.rewritten => {
                        freed.0 += 1;
                        freed.1 += done.bytes_before - done.bytes_after;
                    }
                    Ok(_) => {}
                    // Reclaimed meanwhile.
                    Err(StoreError::BadArgument(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(freed)
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("compaction task: {e}")))??;
        if compacted.0 > 0 {
            tracing::info!(
                segments = compacted.0,
                bytes = compacted.1,
                "dropped the payloads of trimmed records"
            );
        }
        Ok(())
    }

    async fn reclaim(&self, checkpoint: IndexCheckpoint) -> Result<(), LogError> {
        let bytes = serde_json::to_vec(&checkpoint).expect("a checkpoint serializes");
        let reclaimed = self.store.reclaim(checkpoint.below, bytes.into()).await?;
        if reclaimed.segments > 0 {
            tracing::info!(
                segments = reclaimed.segments,
                bytes = reclaimed.bytes,
                "reclaimed trimmed segments"
            );
        }
        Ok(())
    }
}

impl Node {
    /// Opens the data dir, recovers, and starts the sequencer and the gateway's log.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let store_config = StoreConfig {
            data_dir: config.data_dir.join("log"),
            segment_bytes_max: config.segment_bytes_max,
            durability: config.durability,
            sync_metalog: true,
        };
        let (store, recovery) = tokio::task::spawn_blocking(move || Store::open(store_config))
            .await
            .context("recovery task")?
            .context("opening the log")?;
        let view = ViewId(
            recovery
                .max_view
                .0
                .checked_add(1)
                .context("view ids exhausted")?,
        );
        let next_position = recovery.last_metalog.as_ref().map_or(0, |e| e.position + 1);
        let recovered = Recovered {
            view,
            records: recovery.ordered.len() as u64,
            metalog_entries: next_position,
            truncated_tail_bytes: recovery.truncated_tail_bytes,
        };

        let (sequencer_tx, sequencer_rx) = mpsc::channel(SEQUENCER_QUEUE_MAX);
        let shard = Arc::new(LocalShard {
            store: store.clone(),
            sequencer: sequencer_tx,
        });
        let engine_config = EngineConfig {
            shard: SHARD,
            view,
            cache_bytes_max: config.cache_bytes_max,
            pending_appends_max: config.pending_appends_max,
        };
        let checkpoint = match &recovery.checkpoint {
            Some((_, bytes)) => Some(
                serde_json::from_slice::<IndexCheckpoint>(bytes)
                    .context("decoding the index checkpoint")?,
            ),
            None => None,
        };
        let restore = Restore {
            checkpoint,
            entries: recovery.ordered,
            next_position,
        };
        let metrics = Metrics::new();
        let log = GatewayLog::start(engine_config, shard, restore, metrics.clone());
        let sequencer = sequencer_engine(view, next_position)?;
        let task = SequencerTask {
            engine: sequencer,
            rx: sequencer_rx,
            store: store.clone(),
            log: Arc::downgrade(&log),
            interval: Duration::from_micros(config.cut_interval_us),
            metrics: metrics.clone(),
        };
        tokio::spawn(task.run());
        Ok(Node {
            log,
            store,
            metrics,
            recovered,
        })
    }

    pub fn shutdown(&self) {
        self.store.shutdown();
    }
}

fn sequencer_engine(view: ViewId, next_position: u64) -> anyhow::Result<SequencerEngine> {
    SequencerEngine::new(SequencerConfig {
        view,
        first_seqnum: Seqnum::new(view, 0),
        first_position: next_position,
        shards: BTreeMap::from([(SHARD, vec![STORAGE_NODE])]),
        write_quorum: 1,
    })
    .map_err(|e| anyhow::anyhow!("sequencer configuration: {e:?}"))
}

/// The sequencer role: turns the shard's progress into metalog entries, makes each entry
/// durable, then hands it to the gateway. Up to `METALOG_IN_FLIGHT_MAX` entries are in
/// flight, each continuing the one before it: an entry is cut as soon as records are queued
/// (at least `interval` after the previous cut), so it is queued right behind them and shares
/// their group commit, instead of waiting for the previous entry's sync and missing the next.
/// The store makes entries durable in the order they were queued; they are applied in it.
struct SequencerTask {
    engine: SequencerEngine,
    rx: mpsc::Receiver<ProgressReport>,
    store: Store,
    log: std::sync::Weak<GatewayLog>,
    interval: Duration,
    metrics: Arc<Metrics>,
}

type Commit = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// The metalog entry being made durable.
struct InFlight {
    entry: MetalogEntry,
    commit: Commit,
    started: std::time::Instant,
}

impl SequencerTask {
    async fn run(mut self) {
        self.engine.set_max_in_flight(METALOG_IN_FLIGHT_MAX);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut next_cut = tokio::time::Instant::now();
        let mut taken: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            // One reading of the clock per turn: deciding "not yet" with one reading and "no
            // need to wait" with a later one would leave progress uncut until the next message.
            let now = tokio::time::Instant::now();
            let room = in_flight.len() < METALOG_IN_FLIGHT_MAX;
            if room && now >= next_cut {
                if let Some(entry) = self.engine.on_tick() {
                    next_cut = now + self.interval;
                    let commit = Box::pin(self.store.append_metalog(entry.clone()));
                    let started = std::time::Instant::now();
                    in_flight.push_back(InFlight {
                        entry,
                        commit,
                        started,
                    });
                }
            }
            for sender in taken.drain(..) {
                let _ = sender.send(());
            }
            let wait_for_cut = in_flight.len() < METALOG_IN_FLIGHT_MAX && next_cut > now;
            tokio::select! {
                biased;
                // The oldest entry: entries become durable in order.
                result = async { in_flight.front_mut().expect("guarded").commit.as_mut().await },
                    if !in_flight.is_empty() =>
                {
                    let done = in_flight.pop_front().expect("guarded");
                    if !self.apply(done, result) {
                        return;
                    }
                }
                report = self.rx.recv() => {
                    let Some(report) = report else { return };
                    self.engine.on_progress(report.progress);
                    taken.push(report.taken);
                }
                _ = tokio::time::sleep_until(next_cut), if wait_for_cut => {}
            }
        }
    }

    /// Applies a metalog entry at the gateway once it is durable. False when the node stops.
    fn apply(&mut self, done: InFlight, result: Result<(), StoreError>) -> bool {
        // A metalog entry that cannot be made durable must never be applied. The store refuses
        // writes after a failed write or sync (a failed fsync cannot be retried safely), so the
        // sequencer stops and the gateway fails its pending appends (their records may be
        // stored, but they will never be ordered: a restart starts a new view).
        if let Err(e) = result {
            if !matches!(e, StoreError::Closed) {
                tracing::error!(error = %e, position = done.entry.position, "persisting a metalog entry failed; ordering stops until restart");
            }
            if let Some(log) = self.log.upgrade() {
                log.fail(e.into());
            }
            return false;
        }
        self.metrics
            .observe_stage("metalog_commit", done.started.elapsed());
        let Some(log) = self.log.upgrade() else {
            return false;
        };
        log.on_metalog(&done.entry);
        self.engine.on_committed(done.entry.position);
        true
    }
}
