//! `tally up`: the storage node's segment store, the sequencer engine and the gateway in one
//! process, wired with in-process channels instead of the network. The roles and their
//! protocol are the cluster's: the gateway replicates its shard to the store, the store's
//! progress feeds the sequencer, the sequencer's metalog entries are made durable in the store
//! (standing in for the Raft log of a sequencer group) and then complete the gateway's appends.
//!
//! Every start is a new view: appends that were pending at a crash were never acknowledged,
//! and their records are left unordered in the old view.

use anyhow::Context as _;
use async_trait::async_trait;
use gateway::engine::EngineConfig;
use gateway::{GatewayLog, Restore, Shard};
use logbook::wire::{LocalId, LogRecord, MetalogEntry, NodeId, ShardId, ShardProgress};
use logbook::{IndexCheckpoint, LogError, Record, Seqnum, ViewId};
use sequencer::{SequencerConfig, SequencerEngine};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storage_node::{Durability, Store, StoreConfig, StoreError};
use tokio::sync::mpsc;

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
    pub recovered: Recovered,
}

enum SequencerMsg {
    Progress(ShardProgress),
    NewView(ViewId),
}

/// The gateway's shard on one node: the local store.
struct LocalShard {
    store: Store,
    sequencer: mpsc::Sender<SequencerMsg>,
}

#[async_trait]
impl Shard for LocalShard {
    async fn replicate(&self, first: LocalId, records: Vec<LogRecord>) -> Result<(), LogError> {
        let count = records.len() as u64;
        self.store.append_records(SHARD, first, records).await?;
        let progress = ShardProgress {
            node: STORAGE_NODE,
            shard: SHARD,
            view: first.view(),
            durable: first.counter() + count,
        };
        self.sequencer
            .send(SequencerMsg::Progress(progress))
            .await
            .map_err(|_| LogError::Unavailable("sequencer stopped".into()))
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

    async fn seal(&self, next: ViewId) {
        let _ = self.sequencer.send(SequencerMsg::NewView(next)).await;
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
            durability: config.durability.clone(),
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
        let log = GatewayLog::start(engine_config, shard, restore);
        let sequencer = sequencer_engine(view, next_position)?;
        tokio::spawn(run_sequencer(
            sequencer,
            sequencer_rx,
            store.clone(),
            Arc::downgrade(&log),
            config.cut_interval_us,
        ));
        Ok(Node {
            log,
            store,
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
/// durable, then hands it to the gateway. One entry is in flight at a time, so while one is
/// being synced the next cut gathers everything that arrives meanwhile; entries are at least
/// `cut_interval_us` apart.
async fn run_sequencer(
    mut engine: SequencerEngine,
    mut rx: mpsc::Receiver<SequencerMsg>,
    store: Store,
    log: std::sync::Weak<GatewayLog>,
    cut_interval_us: u64,
) {
    let interval = Duration::from_micros(cut_interval_us);
    let mut next_cut = tokio::time::Instant::now();
    loop {
        let msg = if tokio::time::Instant::now() >= next_cut {
            if let Some(entry) = engine.on_tick() {
                next_cut = tokio::time::Instant::now() + interval;
                if !commit(&store, &log, &entry).await {
                    return;
                }
                engine.on_committed(entry.position);
                continue;
            }
            // Nothing to order: wait for progress.
            rx.recv().await
        } else {
            tokio::select! {
                msg = rx.recv() => msg,
                _ = tokio::time::sleep_until(next_cut) => continue,
            }
        };
        match msg {
            None => return,
            Some(SequencerMsg::Progress(p)) => engine.on_progress(p),
            Some(SequencerMsg::NewView(view)) => {
                match sequencer_engine(view, engine.next_position()) {
                    Ok(e) => engine = e,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the next view");
                        return;
                    }
                }
            }
        }
    }
}

/// Makes a metalog entry durable and applies it at the gateway. False when the node stops.
async fn commit(store: &Store, log: &std::sync::Weak<GatewayLog>, entry: &MetalogEntry) -> bool {
    // A metalog entry that cannot be made durable must never be applied. The store refuses
    // writes after a failed write or sync (a failed fsync cannot be retried safely), so the
    // sequencer stops: appends are no longer acknowledged until a restart recovers the files.
    match store.append_metalog(entry.clone()).await {
        Ok(()) => {}
        Err(StoreError::Closed) => return false,
        Err(e) => {
            tracing::error!(error = %e, position = entry.position, "persisting a metalog entry failed; ordering stops until restart");
            return false;
        }
    }
    match log.upgrade() {
        Some(log) => {
            log.on_metalog(entry);
            true
        }
        None => false,
    }
}
