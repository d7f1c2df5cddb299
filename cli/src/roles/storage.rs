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
use logbook::wire::{GroupEvent, LocalId, LogRecord, MetalogEntry, NodeId, ShardId, View};
use logbook::{Seqnum, ViewId};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use storage_node::{Store, StoreConfig, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How long a fetch waits for this node to apply the metalog position it asks for.
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// Progress is reported at least this often (it is also the node's heartbeat).
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Index data of recent records kept in memory per shard, at most.
const RECENT_RECORDS_MAX: usize = 1 << 16;
/// Replicated batches queued per stream before acks are awaited.
const REPLICATE_QUEUE: usize = 64;

struct Node {
    id: NodeId,
    /// Replaced by a store opened again once space returns after the disk filled up (see
    /// `reopen_when_space_returns`); take a clone with `store()`.
    store: std::sync::RwLock<Store>,
    /// How the store was opened, to open it again.
    store_config: StoreConfig,
    /// The metalog position applied up to (exclusive).
    applied: watch::Sender<u64>,
    /// The newest view applied; batches of later views wait for it.
    view: watch::Sender<Option<View>>,
    /// Bumped when records become durable: wakes the progress reporters.
    durable: watch::Sender<u64>,
    /// Per shard, the index data of the newest records accepted, for `FetchIndex`.
    recent: std::sync::Mutex<BTreeMap<ShardId, Recent>>,
}

/// A run of a shard's newest records (index data only), consecutive from `first`.
struct Recent {
    first: LocalId,
    records: std::collections::VecDeque<pb::LogRecord>,
}

impl Node {
    /// Remembers the index data of a batch accepted for `shard`, consecutive from `first`.
    fn remember(&self, shard: ShardId, first: LocalId, records: &[LogRecord]) {
        let mut recent = self.recent.lock().expect("recent lock");
        let run = recent.entry(shard).or_insert_with(|| Recent {
            first,
            records: Default::default(),
        });
        if LocalId(run.first.0 + run.records.len() as u64) != first {
            run.first = first;
            run.records.clear();
        }
        run.records.extend(records.iter().map(|r| {
            let mut index = pb::LogRecord::from(r);
            index.data = bytes::Bytes::new();
            index
        }));
        while run.records.len() > RECENT_RECORDS_MAX {
            run.records.pop_front();
            run.first = LocalId(run.first.0 + 1);
        }
    }

    /// The remembered index data of `shard` from `first`, at most `count` records.
    fn recall(&self, shard: ShardId, first: LocalId, count: usize) -> Vec<pb::LogRecord> {
        let recent = self.recent.lock().expect("recent lock");
        let Some(run) = recent.get(&shard) else {
            return Vec::new();
        };
        if first.view() != run.first.view() || first < run.first {
            return Vec::new();
        }
        let skip = (first.0 - run.first.0) as usize;
        run.records.iter().skip(skip).take(count).cloned().collect()
    }
}

impl Node {
    /// The store in use now.
    fn store(&self) -> Store {
        self.store.read().expect("store lock").clone()
    }

    fn report(&self) -> pb::ProgressReport {
        pb::ProgressReport {
            node: self.id.0,
            shards: self
                .store()
                .progress()
                .into_iter()
                .map(|(shard, (view, durable))| pb::ShardProgress {
                    shard: shard.0,
                    view: u32::from(view.0),
                    durable,
                })
                .collect(),
            applied: *self.applied.borrow(),
        }
    }

    fn view_id(&self) -> Option<ViewId> {
        self.view.borrow().as_ref().map(|v| v.id)
    }

    /// Records of `shard` in `view` durable here (0 if the shard is in an older view).
    fn durable_count(&self, shard: ShardId, view: ViewId) -> u64 {
        match self.store().progress().get(&shard) {
            Some((v, durable)) if *v == view => *durable,
            _ => 0,
        }
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
    let node = Arc::new(Node {
        id: options.id,
        store: std::sync::RwLock::new(store),
        store_config: config,
        applied: watch::channel(applied).0,
        view: watch::channel(None).0,
        durable: watch::channel(0).0,
        recent: Default::default(),
    });
    let sequencers = Arc::new(SequencerClients::new(&options.sequencers)?);
    for (id, addr) in &options.sequencers {
        let reporter = report_progress(node.clone(), *id, sequencers.clone(), channel(addr)?);
        tokio::spawn(reporter);
    }
    tokio::spawn(apply_loop(node.clone(), sequencers));

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let local = listener.local_addr()?;
    println!("tally storage {} ready: {local}", options.id.0);
    tonic::transport::Server::builder()
        .add_service(StorageServer::new(Service { node: node.clone() }))
        .serve_with_incoming(super::incoming(listener))
        .await
        .context("serving gRPC")?;
    Ok(())
}

/// Sends this node's progress to sequencer `id` every `REPORT_INTERVAL` (a heartbeat, and
/// what a newly elected leader starts from), and whenever records become durable while `id`
/// leads (the reports the leader cuts from; other members need not hear every one).
async fn report_progress(
    node: Arc<Node>,
    id: NodeId,
    sequencers: Arc<SequencerClients>,
    channel: tonic::transport::Channel,
) {
    let mut durable = node.durable.subscribe();
    loop {
        let (tx, rx) = mpsc::channel(16);
        let mut client = SequencerClient::new(channel.clone());
        let call = tokio::spawn(async move { client.progress(ReceiverStream::new(rx)).await });
        loop {
            if tx.send(node.report()).await.is_err() {
                break;
            }
            let tick = tokio::time::sleep(REPORT_INTERVAL);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = durable.changed() => {
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

/// Applies the committed events from the sequencer leader, in order, for as long as the node
/// runs, resubscribing from the next position after any break.
async fn apply_loop(node: Arc<Node>, sequencers: Arc<SequencerClients>) {
    loop {
        let next = *node.applied.borrow();
        let (_, mut stream) = sequencers.subscribe(next).await;
        loop {
            let event = match stream.message().await {
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
            match event {
                GroupEvent::View(view) => {
                    if node.view_id().is_none_or(|current| view.id > current) {
                        node.view.send_replace(Some(view));
                    }
                }
                GroupEvent::Metalog(entry) => {
                    let next = *node.applied.borrow();
                    if entry.position < next {
                        continue;
                    }
                    if entry.position > next {
                        tracing::warn!(
                            position = entry.position,
                            next,
                            "metalog gap; resubscribing"
                        );
                        break;
                    }
                    if let Err(e) = apply(&node, entry).await {
                        let full = e
                            .downcast_ref::<StoreError>()
                            .is_some_and(StoreError::is_no_space);
                        if full {
                            tracing::error!(
                                error = %e,
                                free_bytes_min = REOPEN_FREE_BYTES_MIN,
                                "the disk is full: this node stores no records and no metalog \
                                 until space returns, then opens its store again and catches up"
                            );
                            reopen_when_space_returns(&node).await;
                        } else {
                            tracing::error!(error = %e, "applying a metalog entry failed");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        break;
                    }
                }
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
/// and opens it again from its files, as a restart would; the caller resubscribes from what
/// it recovered and repairs what it missed from its peers. Only a full disk is treated so:
/// after other IO errors (EIO from a failing device) the files need an operator's look.
async fn reopen_when_space_returns(node: &Node) {
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
                *node.store.write().expect("store lock") = store;
                node.applied.send_replace(applied);
                // As after a restart: the subscription starts with the view in force at
                // `applied`, so entries of older views are checked for holes in their view.
                node.view.send_replace(None);
                node.durable.send_modify(|n| *n += 1);
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

/// Makes sure every record `entry` orders on this node's shards is here, then stores it.
async fn apply(node: &Node, entry: MetalogEntry) -> anyhow::Result<()> {
    // The shards this node replicates whose records the entry orders but it lacks: usually
    // none, so the view is copied only when there is something to repair.
    let holes: Vec<(ShardId, u64)> = match node.view.borrow().as_ref() {
        Some(view) if view.id == entry.view => entry
            .cuts
            .iter()
            .filter(|cut| {
                view.shards
                    .get(&cut.shard)
                    .is_some_and(|replicas| replicas.contains(&node.id))
            })
            .map(|cut| (cut.shard, cut.start + cut.delta))
            .filter(|(shard, end)| node.durable_count(*shard, entry.view) < *end)
            .collect(),
        _ => Vec::new(),
    };
    if !holes.is_empty() {
        let view = node
            .view
            .borrow()
            .clone()
            .expect("holes come from the applied view");
        for (shard, end) in holes {
            repair(node, &view, &entry, shard, end).await?;
        }
    }
    let next = entry.position + 1;
    node.store().append_metalog(entry).await?;
    node.applied.send_replace(next);
    Ok(())
}

/// Fetches `shard`'s records that `entry` orders and this node lacks from peer replicas,
/// until it holds the shard's records up to `end`.
async fn repair(
    node: &Node,
    view: &View,
    entry: &MetalogEntry,
    shard: ShardId,
    end: u64,
) -> anyhow::Result<()> {
    let replicas = view.shards.get(&shard).map_or(&[][..], Vec::as_slice);
    let mut round = 0u32;
    loop {
        let have = node.durable_count(shard, entry.view);
        if have >= end {
            return Ok(());
        }
        let (Some(from), Some(last)) = (
            entry.seqnum_of(shard, have),
            entry.seqnum_of(shard, end - 1),
        ) else {
            // The hole starts before this entry: records an earlier entry ordered are missing.
            // Only a lost disk does that; there is nothing to repair from here.
            anyhow::bail!(
                "shard {} view {} lacks records before metalog entry {} (have {have})",
                shard.0,
                entry.view.0,
                entry.position
            );
        };
        for peer in replicas.iter().filter(|p| **p != node.id) {
            let Some(addr) = view.storage.get(peer) else {
                continue;
            };
            let Ok(records) =
                fetch_range(addr, from, Seqnum(last.0 + 1), entry.position + 1, false).await
            else {
                continue;
            };
            // Take the run that continues exactly where this node's records end.
            let run: Vec<LogRecord> = records
                .into_iter()
                .enumerate()
                .take_while(|(i, r)| {
                    r.shard == shard.0 && r.local_id == LocalId::new(entry.view, have + *i as u64).0
                })
                .filter_map(|(_, r)| r.record.and_then(|r| LogRecord::try_from(r).ok()))
                .collect();
            if run.is_empty() {
                continue;
            }
            let count = run.len();
            match node
                .store()
                .append_records(shard, LocalId::new(entry.view, have), run)
                .await
            {
                Ok(()) => {
                    tracing::info!(
                        shard = shard.0,
                        from = have,
                        count,
                        peer = peer.0,
                        "repaired records from a peer"
                    );
                    node.durable.send_modify(|n| *n += 1);
                }
                // A live batch from the gateway got there first; look again.
                Err(e @ StoreError::BadArgument(_)) => {
                    tracing::debug!(error = %e, "repair raced with replication")
                }
                Err(e) => return Err(e.into()),
            }
            break;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(if round < 10 { 10 } else { 200 })).await;
    }
}

struct Service {
    node: Arc<Node>,
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
        let mut applied = self.node.applied.subscribe();
        let reached = matches!(
            tokio::time::timeout(
                FETCH_WAIT,
                applied.wait_for(|applied| *applied >= request.min_position),
            )
            .await,
            Ok(Ok(_))
        );
        if !reached {
            return Err(Status::unavailable(format!(
                "storage node {} has applied the metalog up to {}, not yet {}",
                self.node.id.0,
                *self.node.applied.borrow(),
                request.min_position
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
            applied: *self.node.applied.borrow(),
        }))
    }

    async fn fetch_index(
        &self,
        request: Request<pb::FetchIndexRequest>,
    ) -> Result<Response<pb::FetchIndexReply>, Status> {
        let request = request.into_inner();
        let count = (request.count as usize).min(FETCH_RECORDS_MAX as usize);
        let records = self.node.recall(
            ShardId(request.shard),
            LocalId(request.first_local_id),
            count,
        );
        Ok(Response::new(pb::FetchIndexReply { records }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let node = &self.node;
        let shards: BTreeMap<String, serde_json::Value> = node
            .store()
            .progress()
            .into_iter()
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
            "applied": *node.applied.borrow(),
            "view": node.view_id().map(|v| v.0),
            "shards": shards,
            "records_written": stats.records,
            "fsyncs": stats.fsyncs,
        });
        Ok(Response::new(pb::StatusReply {
            json: json.to_string(),
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
    let refuse = |node: &Node, error: String| {
        let ack = pb::ReplicateAck {
            view: u32::from(view.0),
            durable: node.durable_count(shard, view),
            error,
        };
        Box::pin(async move { ack }) as Pin<Box<dyn std::future::Future<Output = _> + Send>>
    };
    // Records of a view this node has not applied yet wait: first it must hold everything
    // the older views ordered, which it learns from the metalog that precedes the view.
    if node.view_id().is_none_or(|current| current < view) {
        let mut views = node.view.subscribe();
        let arrived = matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                views.wait_for(|v| v.as_ref().is_some_and(|v| v.id >= view)),
            )
            .await,
            Ok(Ok(_))
        );
        if !arrived {
            return refuse(node, format!("view {} is not applied here yet", view.0));
        }
    }
    let records: Result<Vec<LogRecord>, _> =
        batch.records.into_iter().map(LogRecord::try_from).collect();
    let records = match records {
        Ok(records) => records,
        Err(e) => return refuse(node, e.to_string()),
    };
    let count = records.len() as u64;
    // Remembered before the store takes the records (no copy of the batch): a local id names
    // the same record whoever sends it, so a batch the store then refuses as a repeat or a gap
    // leaves nothing wrong in memory.
    node.remember(shard, first, &records);
    match node.store().enqueue_records(shard, first, records).await {
        Ok(durable) => {
            let node = node.clone();
            Box::pin(async move {
                match durable.await {
                    Ok(()) => {
                        node.durable.send_modify(|n| *n += 1);
                        pb::ReplicateAck {
                            view: u32::from(view.0),
                            durable: first.counter() + count,
                            error: String::new(),
                        }
                    }
                    Err(e) => pb::ReplicateAck {
                        view: u32::from(view.0),
                        durable: node.durable_count(shard, view),
                        error: e.to_string(),
                    },
                }
            })
        }
        Err(e) => refuse(node, e.to_string()),
    }
}
