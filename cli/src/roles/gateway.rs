//! `tally gateway`: one gateway of a cluster. It owns the shard with its node id, replicates
//! its appends to the shard's storage replicas (an append is durable once a write quorum
//! holds it), applies the committed events from the sequencer leader (metalog entries order
//! its pending appends; index data for other shards' records comes from storage), follows
//! view changes, and serves the HTTP API.
//!
//! It joins the cluster by heartbeats to the sequencer leader, which puts it into the next
//! view. It serves HTTP only once it is in a view and has applied the metalog up to it.

use super::{channel, GatewayOptions, SequencerClients};
use anyhow::Context;
use async_trait::async_trait;
use gateway::engine::EngineConfig;
use gateway::metrics::Metrics;
use gateway::runtime::{GatewayLog, Restore, Shard};
use logbook::rpc::pb::storage_client::StorageClient;
use logbook::rpc::pb::{self};
use logbook::wire::{
    GroupEvent, IndexEntry, LocalId, LogRecord, MetalogEntry, NodeId, ShardId, View,
};
use logbook::{IndexCheckpoint, LogError, Record, Seqnum, ViewId};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// How often the gateway tells the sequencer leader it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
/// Batches queued for one replica, at most; a replica further behind catches up from peers.
const REPLICA_QUEUE: usize = 1024;
/// Records kept per replica for resending after a break, at most.
const RESEND_RECORDS_MAX: usize = 65_536;
/// How long a replica has to acknowledge a batch before its stream is reopened.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the event loop tells the shard about views.
#[derive(Default)]
struct Views {
    /// The newest view applied.
    latest: Option<View>,
    /// Views this gateway is a member of, by id (recent ones).
    member_of: BTreeMap<ViewId, View>,
    /// Recent views, by id.
    all: BTreeMap<ViewId, View>,
}

/// One storage replica of this gateway's shard, fed batches by its own task.
#[derive(Clone)]
struct Replica {
    tx: mpsc::Sender<Batch>,
    /// (view, durable count) the replica acknowledged.
    acked: watch::Receiver<(ViewId, u64)>,
}

#[derive(Clone)]
struct Batch {
    first: LocalId,
    records: Arc<Vec<pb::LogRecord>>,
}

/// The gateway's `Shard`: its records go to the view's replicas of its shard.
struct ClusterShard {
    id: NodeId,
    views: watch::Receiver<Views>,
    replicas: Mutex<BTreeMap<(ViewId, NodeId), Replica>>,
    /// The metalog position the gateway applied up to (exclusive), for reads.
    applied: watch::Receiver<u64>,
}

impl ClusterShard {
    /// The feed of replica `node` in `view`, started on first use.
    fn replica(&self, view: &View, node: NodeId) -> Option<Replica> {
        let mut replicas = self.replicas.lock().expect("replicas lock");
        replicas.retain(|(v, _), _| *v >= view.id);
        if let Some(r) = replicas.get(&(view.id, node)) {
            return Some(r.clone());
        }
        let addr = view.storage.get(&node)?.clone();
        let (tx, rx) = mpsc::channel(REPLICA_QUEUE);
        let (acked_tx, acked) = watch::channel((view.id, 0));
        tokio::spawn(feed_replica(
            View::shard_of(self.id),
            addr,
            rx,
            acked_tx,
            self.views.clone(),
        ));
        let replica = Replica { tx, acked };
        replicas.insert((view.id, node), replica.clone());
        Some(replica)
    }

    /// The storage nodes of the newest view, the shard's own replicas first.
    fn storage_nodes(&self) -> Vec<String> {
        let views = self.views.borrow();
        let Some(view) = &views.latest else {
            return Vec::new();
        };
        let own = view
            .shards
            .get(&View::shard_of(self.id))
            .cloned()
            .unwrap_or_default();
        let mut nodes: Vec<(bool, String)> = view
            .storage
            .iter()
            .map(|(node, addr)| (!own.contains(node), addr.clone()))
            .collect();
        nodes.sort();
        nodes.into_iter().map(|(_, addr)| addr).collect()
    }
}

#[async_trait]
impl Shard for ClusterShard {
    async fn replicate(&self, first: LocalId, records: Vec<LogRecord>) -> Result<(), LogError> {
        let view_id = first.view();
        let mut views = self.views.clone();
        // Wait for the view the records were made in; if a later one came, they were
        // discarded by the seal and need not be stored.
        let view = loop {
            {
                let v = views.borrow_and_update();
                if let Some(view) = v.member_of.get(&view_id) {
                    break view.clone();
                }
                if v.latest.as_ref().is_some_and(|l| l.id > view_id) {
                    return Ok(());
                }
            }
            if views.changed().await.is_err() {
                return Err(LogError::Unavailable("the gateway is stopping".into()));
            }
        };
        let Some(replicas) = view.shards.get(&View::shard_of(self.id)) else {
            return Ok(());
        };
        let batch = Batch {
            first,
            records: Arc::new(records.iter().map(pb::LogRecord::from).collect()),
        };
        let end = first.counter() + records.len() as u64;
        let mut acks = Vec::new();
        for node in replicas {
            if let Some(replica) = self.replica(&view, *node) {
                // A full queue: the replica is far behind; it catches up from its peers.
                let _ = replica.tx.try_send(batch.clone());
                acks.push(replica.acked);
            }
        }
        // Durable once a write quorum of replicas acknowledged it, or moot once the view moved on.
        loop {
            let durable = acks
                .iter()
                .filter(|a| {
                    let (v, d) = *a.borrow();
                    v == view_id && d >= end
                })
                .count();
            if durable >= view.write_quorum {
                return Ok(());
            }
            if views
                .borrow()
                .latest
                .as_ref()
                .is_some_and(|l| l.id > view_id)
            {
                return Ok(());
            }
            let changes = acks.iter_mut().map(|a| Box::pin(a.changed()));
            tokio::select! {
                _ = futures::future::select_all(changes) => {}
                _ = views.changed() => {}
            }
        }
    }

    async fn read_at(&self, seqnum: Seqnum) -> Result<Option<Record>, LogError> {
        Ok(self.read_many(&[seqnum]).await?.pop().flatten())
    }

    /// Asks the storage nodes in turn (the shard's own replicas first) for the records the
    /// earlier ones did not hold. A record no reachable node holds was reclaimed (`None`).
    async fn read_many(&self, seqnums: &[Seqnum]) -> Result<Vec<Option<Record>>, LogError> {
        let min_position = *self.applied.borrow();
        let mut found: BTreeMap<Seqnum, Record> = BTreeMap::new();
        let mut last_error = None;
        for addr in self.storage_nodes() {
            let missing: Vec<u64> = seqnums
                .iter()
                .filter(|s| !found.contains_key(s))
                .map(|s| s.0)
                .collect();
            if missing.is_empty() {
                break;
            }
            let request = pb::FetchRequest {
                min_position,
                seqnums: missing,
                ..Default::default()
            };
            match fetch(&addr, request).await {
                Ok(records) => {
                    for r in records {
                        let record = r.record.unwrap_or_default();
                        let seqnum = Seqnum(r.seqnum);
                        found.insert(
                            seqnum,
                            Record {
                                seqnum,
                                book: logbook::BookId(record.book),
                                tags: record.tags.into_iter().map(logbook::Tag).collect(),
                                data: record.data,
                                aux: None,
                            },
                        );
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        if found.len() < seqnums.len() {
            if let Some(e) = last_error {
                return Err(LogError::Unavailable(format!(
                    "storage nodes unreachable: {e}"
                )));
            }
        }
        Ok(seqnums.iter().map(|s| found.remove(s)).collect())
    }

    async fn reclaim(&self, _checkpoint: IndexCheckpoint) -> Result<(), LogError> {
        // In a cluster, trimmed records are hidden by every gateway's index; their space on
        // the storage nodes is not reclaimed yet.
        Ok(())
    }
}

/// The ordered records in `[from, to)` a storage node holds, once it applied the metalog up
/// to `min_position`.
async fn fetch(addr: &str, request: pb::FetchRequest) -> anyhow::Result<Vec<pb::FetchedRecord>> {
    let mut client = StorageClient::new(channel(addr)?).max_decoding_message_size(64 << 20);
    Ok(client.fetch(request).await?.into_inner().records)
}

/// Sends batches to one replica over a replication stream, in order, and publishes what it
/// acknowledges. After a break it reopens the stream; when the replica reports a gap it
/// resends the missing records it still has, else waits for the replica to repair them from
/// its peers.
async fn feed_replica(
    shard: ShardId,
    addr: String,
    mut rx: mpsc::Receiver<Batch>,
    acked: watch::Sender<(ViewId, u64)>,
    views: watch::Receiver<Views>,
) {
    let Ok(channel) = channel(&addr) else {
        tracing::error!(%addr, "bad storage address");
        return;
    };
    // Recently sent records, for resending: (local id, record).
    let mut sent: VecDeque<(LocalId, pb::LogRecord)> = VecDeque::new();
    let mut queue: VecDeque<Batch> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(batch) => queue.push_back(batch),
                None => return,
            }
        }
        let (tx, stream_rx) = mpsc::channel(REPLICA_QUEUE);
        let mut client = StorageClient::new(channel.clone());
        let mut responses = match client.replicate(ReceiverStream::new(stream_rx)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // One batch in flight at a time: the gateway replicates one batch at a time anyway.
        'stream: loop {
            while let Ok(batch) = rx.try_recv() {
                queue.push_back(batch);
            }
            let Some(batch) = queue.front().cloned() else {
                match rx.recv().await {
                    Some(batch) => queue.push_back(batch),
                    None => return,
                }
                continue;
            };
            let view = batch.first.view();
            if views.borrow().latest.as_ref().is_some_and(|l| l.id > view) {
                queue.pop_front();
                continue;
            }
            let message = pb::ReplicateBatch {
                shard: shard.0,
                first_local_id: batch.first.0,
                records: (*batch.records).clone(),
            };
            if tx.send(message).await.is_err() {
                break 'stream;
            }
            let ack = match tokio::time::timeout(ACK_TIMEOUT, responses.message()).await {
                Ok(Ok(Some(ack))) => ack,
                _ => break 'stream,
            };
            let end = batch.first.counter() + batch.records.len() as u64;
            if ack.error.is_empty() || ack.durable >= end {
                queue.pop_front();
                for (i, r) in batch.records.iter().enumerate() {
                    sent.push_back((LocalId(batch.first.0 + i as u64), r.clone()));
                }
                while sent.len() > RESEND_RECORDS_MAX {
                    sent.pop_front();
                }
                acked.send_replace((view, end.max(ack.durable)));
                continue;
            }
            // Refused. It holds part of the batch already (repaired from a peer): send the rest.
            if ack.durable > batch.first.counter() {
                let held = (ack.durable - batch.first.counter()) as usize;
                queue.pop_front();
                queue.push_front(Batch {
                    first: LocalId::new(view, ack.durable),
                    records: Arc::new(batch.records[held..].to_vec()),
                });
                continue;
            }
            // A gap: resend what the replica lacks if it is still here.
            let from = LocalId::new(view, ack.durable);
            if ack.durable < batch.first.counter() {
                let missing: Vec<pb::LogRecord> = sent
                    .iter()
                    .filter(|(id, _)| *id >= from && *id < batch.first)
                    .map(|(_, r)| r.clone())
                    .collect();
                if missing.len() as u64 == batch.first.0 - from.0 {
                    queue.push_front(Batch {
                        first: from,
                        records: Arc::new(missing),
                    });
                    continue;
                }
            }
            // Not ours to fill (or the replica is not ready for the view): wait and retry.
            tracing::debug!(%addr, error = %ack.error, durable = ack.durable, "replica refused a batch");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a gateway until the process is stopped.
pub async fn run(options: GatewayOptions) -> anyhow::Result<()> {
    let id = options.id;
    let incarnation: u64 = rand::random();
    let listener = tokio::net::TcpListener::bind(options.http)
        .await
        .with_context(|| format!("binding the HTTP gateway to {}", options.http))?;
    let http_addr = listener.local_addr()?;
    let (views_tx, views_rx) = watch::channel(Views::default());
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let shard = Arc::new(ClusterShard {
        id,
        views: views_rx,
        replicas: Mutex::new(BTreeMap::new()),
        applied: applied_rx,
    });
    let metrics = Metrics::new();
    let log = GatewayLog::start(
        EngineConfig {
            shard: View::shard_of(id),
            view: ViewId(0),
            cache_bytes_max: options.cache_bytes_max,
            pending_appends_max: options.pending_appends_max,
        },
        shard.clone(),
        Restore::default(),
        metrics.clone(),
    );
    let sequencers = Arc::new(SequencerClients::new(&options.sequencers)?);
    let member = pb::GatewayMember {
        node: id.0,
        incarnation,
        http_addr: format!("http://{http_addr}"),
    };
    tokio::spawn(heartbeats(sequencers.clone(), member, log.clone()));
    let (ready_tx, mut ready_rx) = watch::channel(false);
    tokio::spawn(event_loop(
        id,
        incarnation,
        log.clone(),
        sequencers,
        views_tx,
        applied_tx,
        shard.clone(),
        ready_tx,
    ));
    ready_rx
        .wait_for(|ready| *ready)
        .await
        .context("the gateway stopped before it joined a view")?;
    println!("tally gateway {} ready: http://{http_addr}", id.0);
    use std::io::Write;
    std::io::stdout().flush().ok();
    axum::serve(listener, gateway::http::default_app(log, metrics))
        .await
        .context("serving HTTP")?;
    Ok(())
}

async fn heartbeats(
    sequencers: Arc<SequencerClients>,
    member: pb::GatewayMember,
    log: Arc<GatewayLog>,
) {
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        interval.tick().await;
        let heartbeat = pb::GatewayHeartbeat {
            member: Some(member.clone()),
            applied: log.metalog_position(),
        };
        for (_, mut client) in sequencers.candidates() {
            let Ok(reply) = client.heartbeat(heartbeat.clone()).await else {
                continue;
            };
            let hint = reply.into_inner();
            sequencers.note_leader(hint.leader_plus_one);
            if hint.is_leader {
                break;
            }
        }
    }
}

/// Applies committed events in order, resubscribing after any break.
#[allow(clippy::too_many_arguments)]
async fn event_loop(
    id: NodeId,
    incarnation: u64,
    log: Arc<GatewayLog>,
    sequencers: Arc<SequencerClients>,
    views: watch::Sender<Views>,
    applied: watch::Sender<u64>,
    shard: Arc<ClusterShard>,
    ready: watch::Sender<bool>,
) {
    // A view that includes this gateway, sealed into the engine once the metalog before it
    // is applied.
    let mut to_seal: Option<ViewId> = None;
    loop {
        let mut stream = sequencers.subscribe(log.metalog_position()).await;
        loop {
            let event = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "event stream broke; resubscribing");
                    break;
                }
            };
            let Ok((_, event)) = event.decode() else {
                break;
            };
            tracing::trace!(?event, "event");
            match event {
                GroupEvent::View(view) => {
                    let newer = views
                        .borrow()
                        .latest
                        .as_ref()
                        .is_none_or(|l| view.id > l.id);
                    if !newer {
                        continue;
                    }
                    let member = view
                        .gateways
                        .get(&id)
                        .is_some_and(|g| g.incarnation == incarnation);
                    if member || view.id > log.view() {
                        to_seal = Some(view.id);
                    }
                    views.send_modify(|v| {
                        if member {
                            v.member_of.insert(view.id, view.clone());
                            while v.member_of.len() > 4 {
                                v.member_of.pop_first();
                            }
                        }
                        v.all.insert(view.id, view.clone());
                        while v.all.len() > 8 {
                            v.all.pop_first();
                        }
                        v.latest = Some(view.clone());
                    });
                }
                GroupEvent::Metalog(entry) => {
                    if entry.position < log.metalog_position() {
                        continue;
                    }
                    log.on_metalog(&entry);
                    if log.metalog_position() <= entry.position {
                        if let Err(e) = index_data(&log, &shard, &entry).await {
                            tracing::warn!(error = %e, position = entry.position, "index data unavailable; resubscribing");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                    applied.send_replace(log.metalog_position());
                }
            }
            // Seal once every entry of the older views is applied.
            if let Some(view_id) = to_seal {
                let start = views
                    .borrow()
                    .latest
                    .as_ref()
                    .filter(|l| l.id == view_id)
                    .map(|l| l.start_position);
                if start.is_some_and(|start| log.metalog_position() >= start) {
                    if view_id > log.view() {
                        log.seal(view_id);
                    }
                    to_seal = None;
                    if views.borrow().member_of.contains_key(&view_id) {
                        ready.send_replace(true);
                    }
                }
            }
        }
    }
}

/// Fetches, from storage, the index data of the records `entry` orders that the engine does
/// not know, until the entry applies: first from the replicas' memory by local id (no wait
/// for them to apply the entry), else by seqnum once a storage node has applied it.
async fn index_data(
    log: &GatewayLog,
    shard: &ClusterShard,
    entry: &MetalogEntry,
) -> anyhow::Result<()> {
    let (view, own_known) = {
        let views = shard.views.borrow();
        (
            views.all.get(&entry.view).cloned(),
            views.member_of.contains_key(&entry.view),
        )
    };
    if let Some(view) = view {
        let own = View::shard_of(shard.id);
        let wanted = entry
            .cuts
            .iter()
            .filter(|cut| cut.shard != own || !own_known)
            .map(|cut| recent_index(&view, entry, *cut));
        let found: Vec<IndexEntry> = futures::future::join_all(wanted)
            .await
            .into_iter()
            .flatten()
            .collect();
        log.on_index_data(found);
        if log.metalog_position() > entry.position {
            return Ok(());
        }
    }
    index_data_by_seqnum(log, shard, entry).await
}

/// The index data of `cut`'s records from the memory of one of its shard's replicas.
async fn recent_index(
    view: &View,
    entry: &MetalogEntry,
    cut: logbook::wire::ShardCut,
) -> Vec<IndexEntry> {
    let replicas = view.shards.get(&cut.shard).cloned().unwrap_or_default();
    for node in replicas {
        let Some(addr) = view.storage.get(&node) else {
            continue;
        };
        let Ok(channel) = channel(addr) else { continue };
        let request = pb::FetchIndexRequest {
            shard: cut.shard.0,
            first_local_id: LocalId::new(entry.view, cut.start).0,
            count: cut.delta as u32,
        };
        let Ok(reply) = StorageClient::new(channel).fetch_index(request).await else {
            continue;
        };
        let records = reply.into_inner().records;
        if records.len() as u64 != cut.delta {
            continue;
        }
        return records
            .into_iter()
            .enumerate()
            .filter_map(|(i, record)| {
                let seqnum = entry.seqnum_of(cut.shard, cut.start + i as u64)?;
                Some(IndexEntry {
                    seqnum,
                    book: logbook::BookId(record.book),
                    kind: record.kind().ok()?,
                    tags: record.tags.into_iter().map(logbook::Tag).collect(),
                })
            })
            .collect();
    }
    Vec::new()
}

/// Fetches index data by seqnum from storage nodes that applied `entry`, until it applies.
async fn index_data_by_seqnum(
    log: &GatewayLog,
    shard: &ClusterShard,
    entry: &MetalogEntry,
) -> anyhow::Result<()> {
    let from = entry.start_seqnum;
    let to = entry.end_seqnum();
    for attempt in 0..50u32 {
        for addr in shard.storage_nodes() {
            tracing::trace!(%addr, position = entry.position, "fetching index data");
            let records = match fetch_range(&addr, from, to, entry.position + 1).await {
                Ok(records) => records,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, position = entry.position, "index data fetch failed");
                    continue;
                }
            };
            let entries: Vec<IndexEntry> = records
                .into_iter()
                .filter_map(|r| {
                    let record = r.record?;
                    let kind = record.kind().ok()?;
                    Some(IndexEntry {
                        seqnum: Seqnum(r.seqnum),
                        book: logbook::BookId(record.book),
                        tags: record.tags.into_iter().map(logbook::Tag).collect(),
                        kind,
                    })
                })
                .collect();
            log.on_index_data(entries);
            if log.metalog_position() > entry.position {
                return Ok(());
            }
            tracing::debug!(%addr, position = entry.position, stats = ?log.engine_stats(), "entry still incomplete");
        }
        tokio::time::sleep(Duration::from_millis(if attempt < 10 { 5 } else { 100 })).await;
    }
    anyhow::bail!(
        "no storage node had the records of metalog entry {}",
        entry.position
    )
}

async fn fetch_range(
    addr: &str,
    from: Seqnum,
    to: Seqnum,
    min_position: u64,
) -> anyhow::Result<Vec<pb::FetchedRecord>> {
    let mut records = Vec::new();
    let mut at = from;
    while at < to {
        let upto = Seqnum(to.0.min(at.0 + 1024));
        let request = pb::FetchRequest {
            from_seqnum: at.0,
            to_seqnum: upto.0,
            min_position,
            index_only: true,
            seqnums: Vec::new(),
        };
        records.extend(fetch(addr, request).await?);
        at = upto;
    }
    Ok(records)
}
