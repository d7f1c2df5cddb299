//! `tally gateway`: one gateway of a cluster. It owns the shard with its node id, replicates
//! its appends to the shard's storage replicas (an append is durable once a write quorum
//! holds it), applies the committed events from the sequencer leader (metalog entries order
//! its pending appends; index data for other shards' records comes from storage), follows
//! view changes, and serves the HTTP API.
//!
//! It joins the cluster by heartbeats to the sequencers, whose leader puts it into the next
//! view. It serves HTTP only once it is in a view and has applied the metalog up to it.

use super::{
    channel, fetch, fetch_range, local, GatewayOptions, SequencerClients, FETCH_RECORDS_MAX,
    HEDGE_DELAY,
};
use anyhow::Context;
use async_trait::async_trait;
use gateway::engine::EngineConfig;
use gateway::invocations::Peers;
use gateway::metrics::Metrics;
use gateway::runtime::{GatewayLog, Restore, Shard, Visibility};
use logbook::rpc::pb::storage_client::StorageClient;
use logbook::rpc::pb::{self};
use logbook::wire::{
    GroupEvent, IndexEntry, LocalId, LogRecord, MetalogEntry, NodeId, ShardId, View,
};
use logbook::{IndexCheckpoint, LogError, Record, Seqnum, ViewId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage_node::COMPACT_DEAD_FRACTION;
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
    /// Recent views, by id; the last is the newest applied.
    all: BTreeMap<ViewId, View>,
    /// Which of them have this gateway (this process) as a member.
    member_of: BTreeSet<ViewId>,
}

/// Views kept, at most: older ones only matter to records that were discarded anyway.
const VIEWS_KEPT: usize = 8;

impl Views {
    /// The newest view applied.
    fn latest(&self) -> Option<&View> {
        self.all.values().next_back()
    }

    /// Whether a view newer than `id` has been applied.
    fn moved_past(&self, id: ViewId) -> bool {
        self.latest().is_some_and(|l| l.id > id)
    }

    /// View `id`, if this gateway is a member of it.
    fn member_view(&self, id: ViewId) -> Option<&View> {
        self.all.get(&id).filter(|_| self.member_of.contains(&id))
    }
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
    /// For each shard, the replica that last answered for its index data.
    index_sources: Mutex<BTreeMap<ShardId, NodeId>>,
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

    /// The addresses of this gateway's shard's replicas in the newest view.
    fn own_replicas(&self) -> Vec<String> {
        let views = self.views.borrow();
        let Some(view) = views.latest() else {
            return Vec::new();
        };
        let own = view.shards.get(&View::shard_of(self.id));
        (own.into_iter().flatten())
            .filter_map(|node| view.storage.get(node).cloned())
            .collect()
    }

    /// The storage nodes of the newest view, the shard's own replicas first.
    fn storage_nodes(&self) -> Vec<String> {
        let views = self.views.borrow();
        let Some(view) = views.latest() else {
            return Vec::new();
        };
        let own = view
            .shards
            .get(&View::shard_of(self.id))
            .cloned()
            .unwrap_or_default();
        // A node of this process first (`tally node`), then the own shard's replicas.
        let mut nodes: Vec<(bool, bool, String)> = view
            .storage
            .iter()
            .map(|(node, addr)| (!local::is_hosted(addr), !own.contains(node), addr.clone()))
            .collect();
        nodes.sort();
        nodes.into_iter().map(|(_, _, addr)| addr).collect()
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
                if let Some(view) = v.member_view(view_id) {
                    break view.clone();
                }
                if v.moved_past(view_id) {
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
            if views.borrow().moved_past(view_id) {
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
        // In a cluster, a trimmed prefix is hidden by every gateway's index, and its records
        // stay on the storage nodes (whole segments are not deleted yet): `compact` drops
        // their payloads.
        Ok(())
    }

    /// Has each replica of this gateway's shard drop the payloads of the records this
    /// gateway's index no longer shows from its sealed segments (which may hold other shards'
    /// records too: the index knows every record). A replica that fails is tried again after
    /// the next trims.
    async fn compact(&self, visible: Visibility) -> Result<(), LogError> {
        for addr in self.own_replicas() {
            match compact_node(&addr, &visible).await {
                Ok((0, _)) => {}
                Ok((segments, bytes)) => tracing::info!(
                    node = %addr,
                    segments,
                    bytes,
                    "a storage node dropped the payloads of trimmed records"
                ),
                Err(e) => tracing::warn!(node = %addr, error = %e, "compaction failed"),
            }
        }
        Ok(())
    }
}

/// The dead records of a segment's list (records with a payload, in seqnum order) as ranges
/// of seqnums `[from[i], to[i])`, each over consecutive records of the list: the records
/// between two of the list's are not the segment's (or have no payload), so a range may span
/// them.
#[derive(Debug, Default)]
struct DeadRanges {
    from: Vec<u64>,
    to: Vec<u64>,
    /// Their payload bytes.
    bytes: u64,
    /// Whether the last record added was dead.
    last_dead: bool,
}

impl DeadRanges {
    /// The next record of the list, and whether the index still shows it.
    fn add(&mut self, seqnum: u64, len: u32, shows: bool) {
        if shows {
            self.last_dead = false;
            return;
        }
        self.bytes += u64::from(len);
        match self.to.last_mut() {
            Some(to) if self.last_dead => *to = seqnum + 1,
            _ => {
                self.from.push(seqnum);
                self.to.push(seqnum + 1);
            }
        }
        self.last_dead = true;
    }
}

/// Compacts the sealed segments of the storage node at `addr` in which the payloads of the
/// records `visible` says are gone reach `COMPACT_DEAD_FRACTION` of the bytes. The segments
/// rewritten and the bytes given back.
async fn compact_node(addr: &str, visible: &Visibility) -> anyhow::Result<(u64, u64)> {
    let mut client = StorageClient::new(channel(addr)?).max_decoding_message_size(64 << 20);
    let segments = client
        .sealed_segments(pb::SealedSegmentsRequest {})
        .await?
        .into_inner()
        .segments;
    let mut freed = (0, 0);
    for segment in segments {
        let mut dead = DeadRanges::default();
        let mut from_seqnum = 0;
        loop {
            let page = client
                .segment_payloads(pb::SegmentPayloadsRequest {
                    number: segment.number,
                    from_seqnum,
                    limit: super::storage::SEGMENT_PAYLOADS_MAX as u32,
                })
                .await?
                .into_inner();
            let seqnums: Vec<Seqnum> = page.seqnums.iter().map(|s| Seqnum(*s)).collect();
            let shows = visible(&seqnums);
            for ((seqnum, len), shows) in page.seqnums.iter().zip(&page.lens).zip(shows) {
                dead.add(*seqnum, *len, shows);
            }
            match page.seqnums.last() {
                Some(last) if page.more => from_seqnum = last + 1,
                _ => break,
            }
        }
        if dead.bytes == 0 || (dead.bytes as f64) < COMPACT_DEAD_FRACTION * segment.bytes as f64 {
            continue;
        }
        let done = client
            .compact(pb::CompactRequest {
                number: segment.number,
                dead_from: dead.from,
                dead_to: dead.to,
                min_fraction: COMPACT_DEAD_FRACTION,
            })
            .await?
            .into_inner();
        if done.rewritten {
            freed.0 += 1;
            freed.1 += done.bytes_before.saturating_sub(done.bytes_after);
        }
    }
    Ok(freed)
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
            if views.borrow().moved_past(view) {
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
    // With the node's TLS, the HTTP API is HTTPS, with the node's certificate.
    let tls = super::tls::installed();
    let https = tls
        .map(|t| gateway::serve::tls_acceptor(&t.cert, &t.key))
        .transpose()?;
    let scheme = if https.is_some() { "https" } else { "http" };
    let (views_tx, views_rx) = watch::channel(Views::default());
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let shard = Arc::new(ClusterShard {
        id,
        views: views_rx,
        replicas: Mutex::new(BTreeMap::new()),
        applied: applied_rx,
        index_sources: Mutex::new(BTreeMap::new()),
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
        http_addr: format!("{scheme}://{http_addr}"),
    };
    tokio::spawn(heartbeats(sequencers.clone(), member, log.clone()));
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let (peers_tx, peers) = watch::channel(Peers {
        me: Peers::gateway_name(id.0, incarnation),
        live: BTreeMap::new(),
    });
    let follower = Follower {
        peers: peers_tx,
        id,
        incarnation,
        log: log.clone(),
        views: views_tx,
        applied: applied_tx,
        shard: shard.clone(),
        ready: ready_tx,
        metrics: metrics.clone(),
        to_seal: None,
    };
    let cluster = cluster_status(sequencers.clone(), shard.views.clone());
    tokio::spawn(event_loop(follower, sequencers));
    ready_rx
        .wait_for(|ready| *ready)
        .await
        .context("the gateway stopped before it joined a view")?;
    let tokens = gateway::auth::Tokens::load(log.clone(), Some(peers.clone()))
        .await
        .context("reading the API tokens")?;
    tokens.set_rate_default(options.rate_per_token);
    super::refuse_exposure(
        &[("http", http_addr), ("workers", options.workers)],
        &tokens,
        options.insecure,
    )?;
    println!("tally gateway {} ready: {scheme}://{http_addr}", id.0);
    use std::io::Write;
    std::io::stdout().flush().ok();
    let setup = gateway::http::Setup {
        functions: options.functions.clone(),
        peers,
        key_retention: options.key_retention,
        workflow_retention: options.workflow_retention,
        object_retention: options.object_retention,
        packages: options.packages.clone(),
        tokens: tokens.clone(),
        cluster: Some(cluster),
        peer_ca: tls.map(|t| t.http_root()).transpose()?,
    };
    let state = gateway::http::default_state(log, metrics, setup)
        .map_err(|e| anyhow::anyhow!("function config: {e}"))?;
    gateway::triggers::start(&state, &options.triggers).await;
    let workers = tokio::net::TcpListener::bind(options.workers)
        .await
        .with_context(|| format!("binding the worker address {}", options.workers))?;
    println!(
        "tally gateway {} workers attach at {} (the log protocol too)",
        id.0,
        workers.local_addr()?
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(gateway::worker::WorkerService::new(
                state.dispatcher.clone(),
                tokens.clone(),
            ))
            .add_service(gateway::log_service::LogService::new(
                state.log.clone(),
                state.engine.clone(),
                tokens,
            ))
            .serve_with_incoming(super::local::incoming(workers, "")),
    );
    let app = gateway::http::router(state);
    gateway::serve::serve(
        listener,
        app,
        options.http_limits,
        https,
        std::future::pending(),
    )
    .await
    .context("serving HTTP")?;
    Ok(())
}

/// Tells every sequencer, each on its own schedule, that this gateway is alive: the leader
/// puts it into the view, and a member elected later has heard from it lately, even if the
/// old leader stopped without closing its connections (a call to it then hangs for the
/// whole RPC timeout, which must not hold up the heartbeats to the others).
async fn heartbeats(
    sequencers: Arc<SequencerClients>,
    member: pb::GatewayMember,
    log: Arc<GatewayLog>,
) {
    for (id, mut client) in sequencers.members() {
        let (sequencers, member, log) = (sequencers.clone(), member.clone(), log.clone());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let heartbeat = pb::GatewayHeartbeat {
                    member: Some(member.clone()),
                    applied: log.metalog_position(),
                };
                if let Ok(hint) = super::unary(client.heartbeat(heartbeat)).await {
                    if hint.is_leader {
                        sequencers.note_leader_is(id);
                    }
                }
            }
        });
    }
}

/// Most events taken from the stream and applied together.
const EVENT_BATCH_MAX: usize = 512;

/// `GET /cluster`'s view of the other roles: every sequencer's and every storage node's
/// status (of the newest view this gateway applied), asked all at once; an error for a node
/// that does not answer.
fn cluster_status(
    sequencers: Arc<SequencerClients>,
    views: watch::Receiver<Views>,
) -> gateway::http::ClusterStatus {
    use futures::future::join_all;
    // A node that does not answer within this is shown as not answering.
    const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
    async fn json(
        reply: impl std::future::Future<
            Output = Result<tonic::Response<pb::StatusReply>, tonic::Status>,
        >,
    ) -> serde_json::Value {
        match tokio::time::timeout(STATUS_TIMEOUT, reply).await {
            Ok(Ok(reply)) => serde_json::from_str(&reply.into_inner().json)
                .unwrap_or_else(|e| serde_json::json!({"error": format!("not JSON: {e}")})),
            Ok(Err(status)) => serde_json::json!({"error": status.message()}),
            Err(_) => serde_json::json!({"error": "no answer within a second"}),
        }
    }
    Arc::new(move || {
        let members = sequencers.members();
        let storage: Vec<(NodeId, String)> = views
            .borrow()
            .latest()
            .map(|v| v.storage.iter().map(|(id, a)| (*id, a.clone())).collect())
            .unwrap_or_default();
        Box::pin(async move {
            let sequencers = join_all(members.into_iter().map(|(id, mut client)| async move {
                let status = json(client.status(pb::StatusRequest {})).await;
                (id.0.to_string(), status)
            }));
            let storage = join_all(storage.into_iter().map(|(id, addr)| async move {
                let status = match channel(&addr) {
                    Ok(channel) => {
                        json(StorageClient::new(channel).status(pb::StatusRequest {})).await
                    }
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                };
                (id.0.to_string(), status)
            }));
            let (sequencers, storage) = tokio::join!(sequencers, storage);
            // The leader of the highest term, if any says it leads.
            let leader = sequencers
                .iter()
                .filter(|(_, s)| s["is_leader"] == true)
                .max_by_key(|(_, s)| s["term"].as_u64())
                .map(|(id, _)| id.clone());
            serde_json::json!({
                "leader": leader,
                "sequencers": sequencers.into_iter().collect::<serde_json::Map<_, _>>(),
                "storage": storage.into_iter().collect::<serde_json::Map<_, _>>(),
            })
        })
    })
}

/// Applies committed events in order, resubscribing after any break, and when another member
/// says it leads (the stream of a stopped leader is silent rather than broken).
async fn event_loop(mut follower: Follower, sequencers: Arc<SequencerClients>) {
    loop {
        let (leader, mut stream) = sequencers.subscribe(follower.log.metalog_position()).await;
        'stream: loop {
            // Everything the stream holds already, up to a batch: metalog entries in a row
            // fetch their index data together.
            let mut events = Vec::new();
            let mut next = tokio::select! {
                next = stream.message() => next,
                () = sequencers.leader_moved_from(leader) => break 'stream,
            };
            loop {
                match next {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break 'stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "event stream broke; resubscribing");
                        break 'stream;
                    }
                }
                if events.len() >= EVENT_BATCH_MAX {
                    break;
                }
                match futures::FutureExt::now_or_never(stream.message()) {
                    Some(more) => next = more,
                    None => break,
                }
            }
            let mut entries = Vec::new();
            for event in events {
                let timings = (event.cut_us, event.commit_us, event.committed_unix_us);
                let Ok((_, event)) = event.decode() else {
                    break 'stream;
                };
                match event {
                    GroupEvent::Metalog(entry) => entries.push((entry, timings)),
                    GroupEvent::View(view) => {
                        if !follower.apply_entries(std::mem::take(&mut entries)).await {
                            break 'stream;
                        }
                        follower.on_view(view);
                    }
                }
                follower.try_seal();
            }
            if !follower.apply_entries(entries).await {
                break 'stream;
            }
            follower.try_seal();
        }
    }
}

/// The gateway's side of the committed event stream.
struct Follower {
    id: NodeId,
    incarnation: u64,
    log: Arc<GatewayLog>,
    views: watch::Sender<Views>,
    applied: watch::Sender<u64>,
    shard: Arc<ClusterShard>,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// The gateways of the newest view, for the dispatcher.
    peers: watch::Sender<Peers>,
    /// A newer view, sealed into the engine once the metalog before it is applied.
    to_seal: Option<ViewId>,
}

impl Follower {
    fn on_view(&mut self, view: View) {
        let newer = self.views.borrow().latest().is_none_or(|l| view.id > l.id);
        if !newer {
            return;
        }
        let member = view
            .gateways
            .get(&self.id)
            .is_some_and(|g| g.incarnation == self.incarnation);
        if member || view.id > self.log.view() {
            self.to_seal = Some(view.id);
        }
        // Every record of the views before it is applied: a gateway left out of it has all
        // its invocations in this gateway's index, for the taking.
        let live = view
            .gateways
            .iter()
            .map(|(node, g)| {
                let name = Peers::gateway_name(node.0, g.incarnation);
                (name, g.http_addr.clone())
            })
            .collect();
        self.peers.send_modify(|p| p.live = live);
        self.views.send_modify(|v| {
            if member {
                v.member_of.insert(view.id);
            }
            v.all.insert(view.id, view);
            while v.all.len() > VIEWS_KEPT {
                if let Some((old, _)) = v.all.pop_first() {
                    v.member_of.remove(&old);
                }
            }
        });
    }

    /// Seals the view to seal once every entry of the older views is applied.
    fn try_seal(&mut self) {
        let Some(view_id) = self.to_seal else {
            return;
        };
        let start = self
            .views
            .borrow()
            .latest()
            .filter(|l| l.id == view_id)
            .map(|l| l.start_position);
        if start.is_some_and(|start| self.log.metalog_position() >= start) {
            if view_id > self.log.view() {
                self.log.seal(view_id);
            }
            self.to_seal = None;
            if self.views.borrow().member_of.contains(&view_id) {
                self.ready.send_replace(true);
            }
        }
    }

    /// Applies metalog entries in order, fetching the index data they need. False when some
    /// entry's index data could not be had (the caller resubscribes).
    async fn apply_entries(&mut self, entries: Vec<(MetalogEntry, (u64, u64, u64))>) -> bool {
        if entries.is_empty() {
            return true;
        }
        let log = &self.log;
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|(entry, _)| entry.position >= log.metalog_position())
            .collect();
        for (entry, _) in &entries {
            log.on_metalog(entry);
        }
        let waiting: Vec<&MetalogEntry> = entries
            .iter()
            .map(|(entry, _)| entry)
            .filter(|entry| entry.position >= log.metalog_position())
            .collect();
        if !waiting.is_empty() {
            let started = std::time::Instant::now();
            log.on_index_data(recent_index_of(&self.shard, &waiting).await);
            self.metrics.observe_stage("index_data", started.elapsed());
            // What the replicas no longer hold in memory (after a restart, catching up on a
            // long log): the whole span by seqnum, in one go, from a node that applied it.
            let waiting: Vec<&MetalogEntry> = waiting
                .into_iter()
                .filter(|entry| entry.position >= log.metalog_position())
                .collect();
            if let (Some(first), Some(last)) = (waiting.first(), waiting.last()) {
                for addr in self.shard.storage_nodes() {
                    let span = fetch_range(
                        &addr,
                        first.start_seqnum,
                        last.end_seqnum(),
                        last.position + 1,
                        true,
                    );
                    if let Ok(records) = span.await {
                        log.on_index_data(index_entries(records));
                        break;
                    }
                }
            }
            for entry in waiting {
                if entry.position < log.metalog_position() {
                    continue;
                }
                if let Err(e) = index_data_by_seqnum(log, &self.shard, entry).await {
                    tracing::warn!(error = %e, position = entry.position, "index data unavailable; resubscribing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return false;
                }
            }
        }
        self.applied.send_replace(log.metalog_position());
        for (_, timings) in entries {
            observe_stages(&self.metrics, timings);
        }
        true
    }
}

/// Records the leader's cut and commit latencies of an entry it proposed, and the time from
/// its commit to its application here (across machines, as good as their clocks agree).
fn observe_stages(metrics: &Metrics, (cut_us, commit_us, committed_unix_us): (u64, u64, u64)) {
    if committed_unix_us == 0 {
        return;
    }
    metrics.observe_stage("cut", Duration::from_micros(cut_us));
    metrics.observe_stage("metalog_commit", Duration::from_micros(commit_us));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    metrics.observe_stage(
        "propagate",
        Duration::from_micros(now.saturating_sub(committed_unix_us)),
    );
}

/// The index data of the records `entries` order that the engine does not know (other
/// shards' records, or this shard's from before a restart), from the replicas' memory by local
/// id: no wait for them to apply the entries. One request per shard covers all the entries
/// (a shard's cuts are consecutive). What the replicas no longer hold is fetched by seqnum.
async fn recent_index_of(shard: &ClusterShard, entries: &[&MetalogEntry]) -> Vec<IndexEntry> {
    // Copies of just the views the entries are in (one, as a rule).
    let (views, member_of) = {
        let known = shard.views.borrow();
        let ids: BTreeSet<ViewId> = entries.iter().map(|e| e.view).collect();
        let views: BTreeMap<ViewId, View> = ids
            .into_iter()
            .filter_map(|id| known.all.get(&id).map(|v| (id, v.clone())))
            .collect();
        (views, known.member_of.clone())
    };
    let own = View::shard_of(shard.id);
    // Per (view, shard): the local counters wanted, and the seqnum of each.
    let mut spans: BTreeMap<(ViewId, ShardId), (u64, Vec<Seqnum>)> = BTreeMap::new();
    for entry in entries {
        let own_known = member_of.contains(&entry.view);
        for (cut_shard, counter, seqnum) in entry.assignments() {
            if cut_shard == own && own_known {
                continue;
            }
            let span = spans
                .entry((entry.view, cut_shard))
                .or_insert_with(|| (counter, Vec::new()));
            if span.0 + span.1.len() as u64 == counter {
                span.1.push(seqnum);
            }
        }
    }
    let wanted = spans
        .into_iter()
        .filter_map(|((view_id, cut_shard), (start, seqnums))| {
            let view = views.get(&view_id)?.clone();
            Some(async move {
                let records = recent_index(
                    shard,
                    &view,
                    cut_shard,
                    LocalId::new(view_id, start),
                    seqnums.len(),
                )
                .await;
                records
                    .into_iter()
                    .zip(seqnums)
                    .filter_map(|(record, seqnum)| record.index_entry(seqnum).ok())
                    .collect::<Vec<_>>()
            })
        });
    futures::future::join_all(wanted)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The index data of `count` records of `cut_shard` from `first`, from the memory of one of
/// its replicas that holds them all (else none). The replica that answered last for the shard
/// is asked first, and one that does not answer soon does not hold up the others.
async fn recent_index(
    shard: &ClusterShard,
    view: &View,
    cut_shard: ShardId,
    first: LocalId,
    count: usize,
) -> Vec<pb::LogRecord> {
    let mut replicas = view.shards.get(&cut_shard).cloned().unwrap_or_default();
    let answered_last = shard
        .index_sources
        .lock()
        .expect("index sources lock")
        .get(&cut_shard)
        .copied();
    // A replica in this process first (`tally node`), then the one that answered last.
    let hosted = |node: &NodeId| view.storage.get(node).is_some_and(|a| local::is_hosted(a));
    replicas.sort_by_key(|node| (!hosted(node), Some(*node) != answered_last));
    let ask = |node: NodeId| async move {
        let addr = view.storage.get(&node)?;
        let channel = channel(addr).ok()?;
        let mut client = StorageClient::new(channel).max_decoding_message_size(64 << 20);
        let mut records = Vec::with_capacity(count);
        while records.len() < count {
            let request = pb::FetchIndexRequest {
                shard: cut_shard.0,
                first_local_id: first.0 + records.len() as u64,
                count: (count - records.len()).min(FETCH_RECORDS_MAX as usize) as u32,
            };
            match super::unary(client.fetch_index(request)).await {
                Ok(reply) if !reply.records.is_empty() => records.extend(reply.records),
                _ => break,
            }
        }
        (records.len() == count).then_some(records)
    };
    match super::first_answer(replicas.clone(), HEDGE_DELAY, ask).await {
        Some((position, records)) => {
            shard
                .index_sources
                .lock()
                .expect("index sources lock")
                .insert(cut_shard, replicas[position]);
            records
        }
        None => Vec::new(),
    }
}

/// Fetches index data by seqnum from storage nodes that applied `entry`, until it applies.
async fn index_data_by_seqnum(
    log: &GatewayLog,
    shard: &ClusterShard,
    entry: &MetalogEntry,
) -> anyhow::Result<()> {
    for attempt in 0..50u32 {
        for addr in shard.storage_nodes() {
            let span = fetch_range(
                &addr,
                entry.start_seqnum,
                entry.end_seqnum(),
                entry.position + 1,
                true,
            );
            match span.await {
                Ok(records) => log.on_index_data(index_entries(records)),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, position = entry.position, "index data fetch failed");
                    continue;
                }
            }
            if log.metalog_position() > entry.position {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(if attempt < 10 { 5 } else { 100 })).await;
    }
    anyhow::bail!(
        "no storage node had the records of metalog entry {}",
        entry.position
    )
}

/// The index entries of records fetched by seqnum.
fn index_entries(records: Vec<pb::FetchedRecord>) -> Vec<IndexEntry> {
    records
        .into_iter()
        .filter_map(|r| r.record?.index_entry(Seqnum(r.seqnum)).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::DeadRanges;

    #[test]
    fn dead_records_make_ranges_that_cover_no_live_one() {
        // (seqnum, payload bytes, shown by the index)
        let list = [
            (1, 10, false),
            (2, 10, false),
            (4, 10, true),
            (5, 7, false),
            (9, 3, false),
            (12, 1, true),
            (13, 2, false),
        ];
        let mut dead = DeadRanges::default();
        for (seqnum, len, shows) in list {
            dead.add(seqnum, len, shows);
        }
        assert_eq!(dead.from, [1, 5, 13]);
        assert_eq!(dead.to, [3, 10, 14]);
        assert_eq!(dead.bytes, 32);
        let in_range =
            |s: u64| (dead.from.iter().zip(&dead.to)).any(|(f, t)| (*f..*t).contains(&s));
        for (seqnum, _, shows) in list {
            assert_eq!(in_range(seqnum), !shows, "seqnum {seqnum}");
        }
    }
}
