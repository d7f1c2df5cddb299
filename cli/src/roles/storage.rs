//! `tally storage`: one storage node. It keeps the records of the shards it replicates in a
//! `Store`, takes batches from gateways over a replication stream, reports its progress to
//! every sequencer, and applies the committed metalog from the sequencer leader. Before it
//! applies an entry it makes sure it holds every record the entry orders on its shards,
//! fetching the ones it missed (while it was down or slow) from a peer replica; so a node
//! that restarts recovers from its files and catches up. A full disk stops its store; once
//! space returns it opens the store again the same way, without a restart.

use super::{channel, fetch_range, SequencerClients, StorageOptions, FETCH_RECORDS_MAX};
use anyhow::Context;
use futures::stream::{FuturesOrdered, StreamExt};
use logbook::rpc::pb::sequencer_client::SequencerClient;
use logbook::rpc::pb::storage_server::{Storage, StorageServer};
use logbook::rpc::pb::{self};
use logbook::wire::{LocalId, LogRecord, NodeId, ShardId};
use logbook::Seqnum;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use storage_node::engine::{Accept, Command, Stall, StorageEngine};
use storage_node::{Store, StoreConfig, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How long a fetch waits for this node to apply the metalog position it asks for.
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// How long a batch of a view this node has not applied yet waits for it.
const VIEW_WAIT: Duration = Duration::from_secs(1);
/// Progress is reported at least this often (it is also the node's heartbeat).
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Replicated batches queued per stream before acks are awaited.
const REPLICATE_QUEUE: usize = 64;
/// Committed events taken from the subscription and not applied yet, at most.
const BACKLOG_MAX: usize = 64;
/// Records one `SegmentPayloads` answer lists at most.
pub const SEGMENT_PAYLOADS_MAX: usize = 65_536;

/// The node: its store, and the engine that decides what goes into it. The engine's lock is
/// held while a batch it accepted is queued in the store, so the store sees writes in the
/// order the engine took them.
struct Node {
    id: NodeId,
    /// Replaced by a store opened again once space returns after the disk filled up (see
    /// `reopen_when_space_returns`); take a clone with `store()`.
    store: std::sync::RwLock<Store>,
    /// How the store was opened, to open it again.
    store_config: StoreConfig,
    /// Set while the disk is full and the node waits for space to open its store again.
    reopening: std::sync::atomic::AtomicBool,
    /// The store's generation, bumped when it is opened again (under the engine's lock, as
    /// every use of the store that may fail is): the feed subscribes again from what the new
    /// store holds, and errors of an older store are told apart.
    generation: watch::Sender<u64>,
    engine: tokio::sync::Mutex<StorageEngine>,
    /// Bumped on every change of the engine's state: wakes reporters and waiting calls.
    changed: watch::Sender<u64>,
    /// Work for the executor: commands, and retries of what waits.
    work: mpsc::UnboundedSender<Work>,
}

enum Work {
    Command(Command),
    Retry,
}

impl Node {
    /// The store in use now.
    fn store(&self) -> Store {
        self.store.read().expect("store lock").clone()
    }

    /// The store in use now, and its generation (to say which store an error came from).
    fn store_and_generation(&self) -> (Store, u64) {
        (self.store(), *self.generation.borrow())
    }

    /// An operation on the store of `generation` failed. On a full disk the store refuses
    /// every write from then on: the node says so once and opens its store again when space
    /// returns. Errors of a store already replaced are old news.
    fn on_store_error(self: &Arc<Self>, error: &StoreError, generation: u64) {
        use std::sync::atomic::Ordering;
        if !error.is_no_space() || generation != self.store_and_generation().1 {
            return;
        }
        if self.reopening.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            error = %error,
            free_bytes_min = REOPEN_FREE_BYTES_MIN,
            "the disk is full: this node stores no records and no metalog until space \
             returns, then opens its store again and catches up"
        );
        tokio::spawn(reopen_when_space_returns(self.clone()));
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Carries out `commands`, under the engine's lock: records to write are queued in the
    /// store now (their durability is awaited apart); the rest goes to the executor.
    async fn run(self: &Arc<Self>, commands: Vec<Command>) {
        self.bump();
        for command in commands {
            match command {
                Command::Write {
                    shard,
                    first,
                    records,
                } => {
                    let count = records.len() as u64;
                    let (store, generation) = self.store_and_generation();
                    let queued = store.enqueue_records(shard, first, records).await;
                    let node = self.clone();
                    tokio::spawn(async move {
                        let durable = match queued {
                            Ok(durable) => durable.await,
                            Err(e) => Err(e),
                        };
                        let mut engine = node.engine.lock().await;
                        match durable {
                            Ok(()) => {
                                tracing::info!(
                                    shard = shard.0,
                                    from = first.counter(),
                                    count,
                                    "repaired records from a peer"
                                );
                                let commands = engine.on_durable(shard, first, count);
                                node.dispatch(commands);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "writing repaired records failed");
                                node.on_store_error(&e, generation);
                                engine.on_write_failed(shard, first);
                                drop(engine);
                                node.retry_after(Duration::from_millis(500));
                            }
                        }
                    });
                }
                command => {
                    let _ = self.work.send(Work::Command(command));
                }
            }
        }
    }

    /// Hands `commands` that write nothing (what `on_durable`, `on_event`, `retry` and
    /// `on_metalog_stored` return) to the executor.
    fn dispatch(&self, commands: Vec<Command>) {
        self.bump();
        for command in commands {
            debug_assert!(
                !matches!(command, Command::Write { .. }),
                "writes go through run"
            );
            let _ = self.work.send(Work::Command(command));
        }
    }

    fn retry_after(&self, pause: Duration) {
        let work = self.work.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            let _ = work.send(Work::Retry);
        });
    }

    fn report(&self, engine: &StorageEngine) -> pb::ProgressReport {
        let (shards, applied) = engine.report();
        pb::ProgressReport {
            node: self.id.0,
            shards: shards
                .into_iter()
                .map(|p| pb::ShardProgress {
                    shard: p.shard.0,
                    view: u32::from(p.view.0),
                    durable: p.durable,
                })
                .collect(),
            applied,
        }
    }

    /// Waits, at most `limit`, until `ready` holds of the engine.
    async fn wait_for(&self, limit: Duration, ready: impl Fn(&StorageEngine) -> bool) -> bool {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                if ready(&*self.engine.lock().await) {
                    return;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Runs a storage node until the process is stopped.
pub async fn run(options: StorageOptions) -> anyhow::Result<()> {
    let mut config = StoreConfig::new(&options.data_dir);
    config.durability = options.durability;
    config.segment_bytes_max = options.segment_bytes_max;
    // The sequencers' Raft log is where the metalog is durable; this node's copy is synced
    // with its records, and refetched from the leader after a crash.
    config.sync_metalog = false;
    let (store, recovery) = Store::open(config.clone())
        .with_context(|| format!("opening the store in {}", options.data_dir.display()))?;
    let applied = recovery.last_metalog.as_ref().map_or(0, |e| e.position + 1);
    tracing::info!(
        records = recovery.records,
        applied,
        truncated = recovery.truncated_tail_bytes,
        "store recovered"
    );
    let engine = StorageEngine::new(options.id, store.progress(), applied);
    let (work, work_rx) = mpsc::unbounded_channel();
    let node = Arc::new(Node {
        id: options.id,
        store: std::sync::RwLock::new(store),
        store_config: config,
        reopening: Default::default(),
        generation: watch::channel(0).0,
        engine: tokio::sync::Mutex::new(engine),
        changed: watch::channel(0).0,
        work,
    });
    let sequencers = Arc::new(SequencerClients::new(&options.sequencers)?);
    for (id, addr) in &options.sequencers {
        let reporter = report_progress(node.clone(), *id, sequencers.clone(), channel(addr)?);
        tokio::spawn(reporter);
    }
    tokio::spawn(execute(node.clone(), work_rx));
    tokio::spawn(apply_loop(node.clone(), sequencers));

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let local = listener.local_addr()?;
    println!("tally storage {} ready: {local}", options.id.0);
    tonic::transport::Server::builder()
        .add_service(StorageServer::new(Service {
            node: node.clone(),
            compacting: tokio::sync::Mutex::new(()),
        }))
        .serve_with_incoming(super::local::incoming(
            listener,
            &options.listen.to_string(),
        ))
        .await
        .context("serving gRPC")?;
    Ok(())
}

/// Sends this node's progress to sequencer `id` every `REPORT_INTERVAL` (a heartbeat, and
/// what a newly elected leader starts from), and whenever the node's state changes while `id`
/// leads (the reports the leader cuts from; other members need not hear every one).
async fn report_progress(
    node: Arc<Node>,
    id: NodeId,
    sequencers: Arc<SequencerClients>,
    channel: tonic::transport::Channel,
) {
    let mut changed = node.changed.subscribe();
    loop {
        let (tx, rx) = mpsc::channel(16);
        let mut client = SequencerClient::new(channel.clone());
        let call = tokio::spawn(async move { client.progress(ReceiverStream::new(rx)).await });
        loop {
            let report = node.report(&*node.engine.lock().await);
            if tx.send(report).await.is_err() {
                break;
            }
            let tick = tokio::time::sleep(REPORT_INTERVAL);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = changed.changed() => {
                        if sequencers.leader().is_none_or(|leader| leader == id) {
                            break;
                        }
                    }
                    _ = &mut tick => break,
                }
            }
        }
        call.abort();
        tokio::time::sleep(REPORT_INTERVAL).await;
    }
}

/// Feeds the committed events from the sequencer leader to the engine, in order, for as long
/// as the node runs, resubscribing from the next position after any break.
async fn apply_loop(node: Arc<Node>, sequencers: Arc<SequencerClients>) {
    let mut generation = node.generation.subscribe();
    loop {
        generation.mark_unchanged();
        let next = node.engine.lock().await.next_position();
        let (_, mut stream) = sequencers.subscribe(next).await;
        loop {
            // The engine applies an entry once its records are here: take no more meanwhile.
            node.wait_for(Duration::MAX, |engine| engine.backlog() < BACKLOG_MAX)
                .await;
            let event = tokio::select! {
                event = stream.message() => event,
                // The store was opened again: start over from what it holds.
                _ = generation.changed() => break,
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => break,
            };
            let event = match event.decode() {
                Ok((_, event)) => event,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable event from the sequencer");
                    break;
                }
            };
            let mut engine = node.engine.lock().await;
            let commands = engine.on_event(event);
            match engine.stall() {
                Some(Stall::Lost { shard, have }) => tracing::error!(
                    shard = shard.0,
                    have,
                    "records an earlier metalog entry ordered are missing here; nothing can repair them"
                ),
                Some(Stall::OtherView { entry }) => tracing::error!(
                    entry_view = entry.0,
                    view = ?engine.view_id(),
                    "a metalog entry of another view than the one applied: waiting"
                ),
                _ => {}
            }
            if let Some(Command::Resubscribe { from }) = commands
                .iter()
                .find(|c| matches!(c, Command::Resubscribe { .. }))
            {
                tracing::warn!(from, "metalog gap; resubscribing");
                break;
            }
            node.dispatch(commands);
        }
    }
}

/// Carries out the engine's commands that take a while (storing metalog entries, fetching
/// records from peers), one at a time, and the retries of what waits.
async fn execute(node: Arc<Node>, mut work: mpsc::UnboundedReceiver<Work>) {
    let mut empty_rounds = 0u32;
    while let Some(item) = work.recv().await {
        let command = match item {
            Work::Command(command) => command,
            Work::Retry => {
                let mut engine = node.engine.lock().await;
                let commands = engine.retry();
                node.dispatch(commands);
                continue;
            }
        };
        match command {
            Command::StoreMetalog(entry) => {
                let position = entry.position;
                let stored = {
                    let engine = node.engine.lock().await;
                    if !engine.is_storing(position) {
                        // Made by an engine the reopened store replaced.
                        continue;
                    }
                    let (store, generation) = node.store_and_generation();
                    (store.append_metalog(entry), generation)
                };
                let (stored, generation) = stored;
                let stored = stored.await;
                let mut engine = node.engine.lock().await;
                match stored {
                    Ok(()) => {
                        let commands = engine.on_metalog_stored(position);
                        node.dispatch(commands);
                    }
                    Err(e) => {
                        if !e.is_no_space() {
                            tracing::error!(error = %e, position, "storing a metalog entry failed");
                        }
                        node.on_store_error(&e, generation);
                        engine.on_metalog_failed();
                        node.retry_after(Duration::from_millis(500));
                    }
                }
            }
            Command::Fetch {
                peer,
                from,
                to,
                min_position,
            } => {
                let addr = node
                    .engine
                    .lock()
                    .await
                    .view()
                    .and_then(|v| v.storage.get(&peer).cloned());
                let records = match addr {
                    Some(addr) => fetch_range(&addr, from, to, min_position, false)
                        .await
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                let records = records
                    .into_iter()
                    .filter_map(|r| {
                        let record = LogRecord::try_from(r.record?).ok()?;
                        Some((ShardId(r.shard), LocalId(r.local_id), record))
                    })
                    .collect();
                let mut engine = node.engine.lock().await;
                let commands = engine.on_fetched(peer, records);
                if commands.is_empty() {
                    // Every peer was asked in this round and none helped: pause, then again.
                    empty_rounds += 1;
                    node.retry_after(Duration::from_millis(if empty_rounds < 10 {
                        10
                    } else {
                        200
                    }));
                } else {
                    empty_rounds = 0;
                }
                node.run(commands).await;
            }
            Command::Write { .. } | Command::Resubscribe { .. } => {
                unreachable!("writes are queued when made; resubscribing is the feed's")
            }
        }
    }
}

/// How much a data dir's file system must have free again before a store that stopped on a
/// full disk is opened again.
const REOPEN_FREE_BYTES_MIN: u64 = 4 << 20;
/// How often a node whose disk is full looks for free space.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// After a write failed on a full disk the store refuses every write for good (only recovery
/// knows what the files hold after a failed write), while the node goes on serving what it
/// holds. Waits until the data dir has `REOPEN_FREE_BYTES_MIN` free, then shuts the store down
/// and opens it again from its files, with a new engine, as a restart would; the feed
/// subscribes again from what it recovered and the engine repairs what it missed from its
/// peers. Only a full disk is treated so: after other IO errors (EIO from a failing device)
/// the files need an operator's look.
async fn reopen_when_space_returns(node: Arc<Node>) {
    loop {
        tokio::time::sleep(SPACE_CHECK_INTERVAL).await;
        match free_bytes(&node.store_config.data_dir) {
            Ok(free) if free >= REOPEN_FREE_BYTES_MIN => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the free space of the data dir");
                continue;
            }
        }
        // Nothing writes while the engine is held: the old store's last writes have failed
        // or finished before the new one opens.
        let mut engine = node.engine.lock().await;
        let (old, config) = (node.store(), node.store_config.clone());
        let reopened = tokio::task::spawn_blocking(move || {
            old.shutdown();
            Store::open(config)
        })
        .await
        .expect("opening a store does not panic");
        match reopened {
            Ok((store, recovery)) => {
                let applied = recovery.last_metalog.as_ref().map_or(0, |e| e.position + 1);
                *engine = StorageEngine::new(node.id, store.progress(), applied);
                *node.store.write().expect("store lock") = store;
                node.generation.send_modify(|g| *g += 1);
                node.reopening
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                node.bump();
                tracing::info!(
                    records = recovery.records,
                    applied,
                    truncated = recovery.truncated_tail_bytes,
                    "space returned: the store is open again; catching up"
                );
                return;
            }
            Err(e) => tracing::error!(error = %e, "opening the store again failed; retrying"),
        }
    }
}

/// The bytes an unprivileged writer may still use on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain old data; zeroes are a valid value that the call overwrites.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct to fill, both alive for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Both are u64 on 64-bit Linux; the aliases are narrower on some other targets.
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

struct Service {
    node: Arc<Node>,
    /// One compaction at a time: the gateways of several shards may ask this node.
    compacting: tokio::sync::Mutex<()>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::ReplicateAck, Status>> + Send>>;

#[tonic::async_trait]
impl Storage for Service {
    type ReplicateStream = AckStream;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::ReplicateBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel(REPLICATE_QUEUE);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut acks = FuturesOrdered::new();
            loop {
                tokio::select! {
                    batch = batches.message(), if acks.len() < REPLICATE_QUEUE => {
                        let batch = match batch {
                            Ok(Some(batch)) => batch,
                            Ok(None) | Err(_) => break,
                        };
                        acks.push_back(accept(&node, batch).await);
                    }
                    Some(ack) = acks.next(), if !acks.is_empty() => {
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            while let Some(ack) = acks.next().await {
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchReply>, Status> {
        let request = request.into_inner();
        let node = &self.node;
        let min = request.min_position;
        if !node.wait_for(FETCH_WAIT, |e| e.can_serve(min)).await {
            return Err(Status::unavailable(format!(
                "storage node {} has applied the metalog up to {}, not yet {min}",
                node.id.0,
                node.engine.lock().await.applied(),
            )));
        }
        let seqnums: Vec<u64> = if request.seqnums.is_empty() {
            let to = request
                .to_seqnum
                .min(request.from_seqnum.saturating_add(FETCH_RECORDS_MAX));
            (request.from_seqnum..to).collect()
        } else {
            request
                .seqnums
                .iter()
                .copied()
                .take(FETCH_RECORDS_MAX as usize)
                .collect()
        };
        let mut records = Vec::new();
        for seqnum in seqnums {
            let stored = self
                .node
                .store()
                .read(Seqnum(seqnum))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            let Some(stored) = stored else { continue };
            let mut record = pb::LogRecord::from(&stored.record);
            if request.index_only {
                record.data = bytes::Bytes::new();
            }
            records.push(pb::FetchedRecord {
                seqnum,
                shard: stored.shard.0,
                local_id: stored.local_id.0,
                record: Some(record),
            });
        }
        Ok(Response::new(pb::FetchReply {
            records,
            applied: self.node.engine.lock().await.applied(),
        }))
    }

    async fn fetch_index(
        &self,
        request: Request<pb::FetchIndexRequest>,
    ) -> Result<Response<pb::FetchIndexReply>, Status> {
        let request = request.into_inner();
        let count = (request.count as usize).min(FETCH_RECORDS_MAX as usize);
        let records = self
            .node
            .engine
            .lock()
            .await
            .recall(
                ShardId(request.shard),
                LocalId(request.first_local_id),
                count,
            )
            .iter()
            .map(pb::LogRecord::from)
            .collect();
        Ok(Response::new(pb::FetchIndexReply { records }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let node = &self.node;
        let engine = node.engine.lock().await;
        let shards: BTreeMap<String, serde_json::Value> = engine
            .durable()
            .iter()
            .map(|(shard, (view, durable))| {
                (
                    shard.0.to_string(),
                    serde_json::json!({"view": view.0, "durable": durable}),
                )
            })
            .collect();
        let stats = node.store().stats();
        let json = serde_json::json!({
            "role": "storage",
            "id": node.id.0,
            "applied": engine.applied(),
            "view": engine.view_id().map(|v| v.0),
            "shards": shards,
            "waits_on": engine.stall().map(|stall| format!("{stall:?}")),
            "records_written": stats.records,
            "fsyncs": stats.fsyncs,
            "bytes_compacted": stats.bytes_compacted,
        });
        Ok(Response::new(pb::StatusReply {
            json: json.to_string(),
        }))
    }

    async fn sealed_segments(
        &self,
        _request: Request<pb::SealedSegmentsRequest>,
    ) -> Result<Response<pb::SealedSegmentsReply>, Status> {
        let segments = (self.node.store().sealed_segments().into_iter())
            .map(|(number, bytes)| pb::SealedSegment { number, bytes })
            .collect();
        Ok(Response::new(pb::SealedSegmentsReply { segments }))
    }

    async fn segment_payloads(
        &self,
        request: Request<pb::SegmentPayloadsRequest>,
    ) -> Result<Response<pb::SegmentPayloadsReply>, Status> {
        let request = request.into_inner();
        let limit = (request.limit as usize).clamp(1, SEGMENT_PAYLOADS_MAX);
        let payloads = self.node.store().payloads_in(request.number);
        let from = payloads.partition_point(|(s, _)| s.0 < request.from_seqnum);
        let page = &payloads[from..payloads.len().min(from + limit)];
        Ok(Response::new(pb::SegmentPayloadsReply {
            seqnums: page.iter().map(|(s, _)| s.0).collect(),
            lens: page.iter().map(|(_, len)| *len).collect(),
            more: from + page.len() < payloads.len(),
        }))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactReply>, Status> {
        let request = request.into_inner();
        if request.dead_from.len() != request.dead_to.len() {
            return Err(Status::invalid_argument(
                "dead_from and dead_to name ranges: they have one entry each",
            ));
        }
        let mut dead: Vec<(u64, u64)> =
            request.dead_from.into_iter().zip(request.dead_to).collect();
        dead.sort_unstable();
        let _one = self.compacting.lock().await;
        let store = self.node.store();
        let number = request.number;
        let compacted = tokio::task::spawn_blocking(move || {
            store.compact(number, request.min_fraction, |asked| {
                // The range that starts last at or below each seqnum (ranges do not overlap).
                (asked.iter())
                    .map(|s| {
                        let after = dead.partition_point(|(from, _)| *from <= s.0);
                        after > 0 && s.0 < dead[after - 1].1
                    })
                    .collect()
            })
        })
        .await
        .map_err(|e| Status::internal(format!("compaction task: {e}")))?;
        let done = match compacted {
            Ok(done) => done,
            // Not a sealed segment (reclaimed meanwhile, or never one): nothing to do.
            Err(StoreError::BadArgument(_)) => storage_node::Compacted::default(),
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        if done.rewritten {
            tracing::info!(
                segment = number,
                records = done.records,
                bytes = done.bytes_before - done.bytes_after,
                "dropped the payloads of trimmed records"
            );
        }
        Ok(Response::new(pb::CompactReply {
            rewritten: done.rewritten,
            bytes_before: done.bytes_before,
            bytes_after: done.bytes_after,
        }))
    }
}

/// Queues one replicated batch; the returned future resolves to its ack once it is durable
/// (or at once, when it was refused).
async fn accept(
    node: &Arc<Node>,
    batch: pb::ReplicateBatch,
) -> Pin<Box<dyn std::future::Future<Output = pb::ReplicateAck> + Send>> {
    let shard = ShardId(batch.shard);
    let first = LocalId(batch.first_local_id);
    let view = first.view();
    let refuse = |durable: u64, error: String| {
        let ack = pb::ReplicateAck {
            view: u32::from(view.0),
            durable,
            error,
        };
        Box::pin(async move { ack }) as Pin<Box<dyn std::future::Future<Output = _> + Send>>
    };
    let records: Result<Vec<LogRecord>, _> =
        batch.records.into_iter().map(LogRecord::try_from).collect();
    let records = match records {
        Ok(records) => records,
        Err(e) => {
            let durable = node.engine.lock().await.durable_count(shard, view);
            return refuse(durable, e.to_string());
        }
    };
    let count = records.len() as u64;
    // Records of a view this node has not applied yet wait: first it must hold everything
    // the older views ordered, which it learns from the metalog that precedes the view.
    let mut engine = node.engine.lock().await;
    let mut decision = engine.accept(shard, first, &records);
    if decision == Accept::NotYet {
        drop(engine);
        let seen = |e: &StorageEngine| e.view_id().is_some_and(|current| current >= view);
        node.wait_for(VIEW_WAIT, seen).await;
        engine = node.engine.lock().await;
        decision = engine.accept(shard, first, &records);
    }
    match decision {
        Accept::Write => {}
        Accept::NotYet => {
            return refuse(0, format!("view {} is not applied here yet", view.0));
        }
        Accept::Refused(reason) => return refuse(engine.durable_count(shard, view), reason),
    }
    let (store, generation) = node.store_and_generation();
    match store.enqueue_records(shard, first, records).await {
        Ok(durable) => {
            drop(engine);
            let node = node.clone();
            Box::pin(async move {
                let result = durable.await;
                let mut engine = node.engine.lock().await;
                match result {
                    Ok(()) => {
                        let commands = engine.on_durable(shard, first, count);
                        node.dispatch(commands);
                        pb::ReplicateAck {
                            view: u32::from(view.0),
                            durable: first.counter() + count,
                            error: String::new(),
                        }
                    }
                    Err(e) => {
                        node.on_store_error(&e, generation);
                        engine.on_write_failed(shard, first);
                        pb::ReplicateAck {
                            view: u32::from(view.0),
                            durable: engine.durable_count(shard, view),
                            error: e.to_string(),
                        }
                    }
                }
            })
        }
        Err(e) => {
            node.on_store_error(&e, generation);
            engine.on_write_failed(shard, first);
            refuse(engine.durable_count(shard, view), e.to_string())
        }
    }
}
