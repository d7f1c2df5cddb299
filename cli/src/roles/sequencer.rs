//! `tally sequencer`: one member of the sequencer group. A single driver task owns the
//! `GroupNode` (Raft plus the sequencer engine) and feeds it Raft ticks, cut ticks, Raft
//! messages from peers, storage nodes' progress and gateways' heartbeats. Committed events
//! are kept in memory and streamed to subscribers (gateways and storage nodes) by the leader.

use super::SequencerOptions;
use logbook::rpc::pb::sequencer_client::SequencerClient;
use logbook::rpc::pb::sequencer_server::{Sequencer, SequencerServer};
use logbook::rpc::pb::{self, Event};
use logbook::wire::{GatewayMember, GroupEvent, NodeId, ShardId, ShardProgress};
use protobuf::Message as _;
use raft::prelude::Message;
use sequencer::group::{GroupConfig, GroupNode, Output};
use sequencer::raft_log::DiskStorage;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Metalog entries proposed and not yet committed, at most: records that become durable
/// while entries are in flight go into the next entry at once instead of waiting for a commit.
const MAX_IN_FLIGHT: usize = 4;
/// Inputs queued for the driver, at most.
const INPUTS_MAX: usize = 65_536;
/// Raft messages queued for one peer while it is unreachable, at most (Raft resends).
const PEER_QUEUE_MAX: usize = 4096;
/// Inputs the driver takes in one turn before it lets the node propose.
const TURN_INPUTS_MAX: usize = 1024;
/// Events a subscriber may lag behind before its stream is cut (it reconnects).
const SUBSCRIBER_BUFFER: usize = 4096;

enum Input {
    Raft(Box<Message>),
    Progress(pb::ProgressReport),
    Heartbeat(pb::GatewayHeartbeat, oneshot::Sender<pb::LeaderHint>),
    Status(oneshot::Sender<String>),
}

/// What the driver publishes for the gRPC handlers.
struct Shared {
    id: NodeId,
    inputs: mpsc::Sender<Input>,
    /// Every committed event, by index.
    history: RwLock<Vec<Event>>,
    /// The number of committed events; changes wake subscribers.
    events: watch::Sender<u64>,
    /// The leader as this member knows it.
    leader: watch::Sender<Option<NodeId>>,
    addrs: BTreeMap<NodeId, String>,
}

impl Shared {
    fn hint(&self) -> pb::LeaderHint {
        let leader = *self.leader.borrow();
        pb::LeaderHint {
            is_leader: leader == Some(self.id),
            leader_plus_one: leader.map_or(0, |l| l.0 + 1),
            leader_rpc_addr: leader
                .and_then(|l| self.addrs.get(&l).cloned())
                .unwrap_or_default(),
        }
    }

    fn not_leader(&self) -> Status {
        let hint = self.hint();
        Status::unavailable(format!(
            "sequencer {} is not the leader; leader: {}",
            self.id.0,
            if hint.leader_rpc_addr.is_empty() {
                "unknown".to_string()
            } else {
                format!("{} at {}", hint.leader_plus_one - 1, hint.leader_rpc_addr)
            }
        ))
    }
}

/// Runs a sequencer until the process is stopped.
pub async fn run(options: SequencerOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let _lock = storage_node::lock_dir(&options.data_dir)?;
    let rank = options
        .sequencers
        .keys()
        .position(|id| *id == options.id)
        .with_context(|| format!("sequencer {} is not in the sequencers list", options.id.0))?;
    let ticks = |d: Duration| (d.as_millis() / options.raft_tick.as_millis().max(1)) as u64;
    let config = GroupConfig {
        id: options.id,
        members: options.sequencers.keys().copied().collect(),
        // Members time out one after another, so one of them wins an election first.
        election_tick: options.election_ticks + 3 * rank,
        storage: options.storage.clone(),
        replication: options.replication,
        gateway_timeout_ticks: ticks(options.gateway_timeout).max(1),
        max_in_flight: MAX_IN_FLIGHT,
    };
    let node = GroupNode::open(config, &options.data_dir.join("raft"))
        .context("opening the sequencer's Raft log")?;
    let (inputs, inputs_rx) = mpsc::channel(INPUTS_MAX);
    let shared = Arc::new(Shared {
        id: options.id,
        inputs,
        history: RwLock::new(Vec::new()),
        events: watch::channel(0).0,
        leader: watch::channel(None).0,
        addrs: options.sequencers.clone(),
    });
    let peers = options
        .sequencers
        .iter()
        .filter(|(id, _)| **id != options.id)
        .map(|(id, addr)| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            tokio::spawn(peer_sender(addr.clone(), rx));
            (*id, tx)
        })
        .collect();
    let driver = Driver {
        node,
        shared: shared.clone(),
        peers,
        cut_interval: options.cut_interval,
        storage_seen: BTreeMap::new(),
        gateway_seen: BTreeMap::new(),
        orderable_since: None,
        proposed: BTreeMap::new(),
    };
    tokio::spawn(driver.run(inputs_rx, options.raft_tick));

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let local = listener.local_addr()?;
    println!("tally sequencer {} ready: {local}", options.id.0);
    tonic::transport::Server::builder()
        .add_service(SequencerServer::new(Service { shared }))
        .serve_with_incoming(super::local::incoming(
            listener,
            &options.listen.to_string(),
        ))
        .await
        .context("serving gRPC")?;
    Ok(())
}

struct Driver {
    node: GroupNode<DiskStorage>,
    shared: Arc<Shared>,
    peers: BTreeMap<NodeId, mpsc::Sender<Message>>,
    cut_interval: Duration,
    /// Storage nodes: when last heard from and the metalog position they applied.
    storage_seen: BTreeMap<NodeId, (Instant, u64)>,
    gateway_seen: BTreeMap<NodeId, (Instant, u64)>,
    /// Since when some records are orderable but not yet proposed.
    orderable_since: Option<Instant>,
    /// The metalog entries this member proposed and is waiting for, by position: when
    /// proposed, and how long their records waited for the cut.
    proposed: BTreeMap<u64, (Instant, Duration)>,
}

impl Driver {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, raft_tick: Duration) {
        let mut tick = tokio::time::interval(raft_tick);
        let mut cut = tokio::time::interval(self.cut_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        cut.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The node syncs its Raft log to disk: let the runtime move other tasks off this
            // thread meanwhile.
            let outputs = tokio::select! {
                _ = tick.tick() => tokio::task::block_in_place(|| self.node.tick()),
                _ = cut.tick() => tokio::task::block_in_place(|| self.node.cut()),
                input = inputs.recv() => {
                    let Some(input) = input else { return };
                    tokio::task::block_in_place(|| {
                        let mut outputs = self.handle(input);
                        for _ in 0..TURN_INPUTS_MAX {
                            let Ok(input) = inputs.try_recv() else { break };
                            outputs.extend(self.handle(input));
                        }
                        outputs.extend(self.node.cut());
                        outputs
                    })
                }
            };
            self.carry_out(outputs);
        }
    }

    fn handle(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Raft(message) => self.node.step(*message),
            Input::Progress(report) => {
                let node = NodeId(report.node);
                self.storage_seen
                    .insert(node, (Instant::now(), report.applied));
                for p in report.shards {
                    let Ok(view) = logbook::rpc::view_id(p.view) else {
                        continue;
                    };
                    self.node.on_progress(ShardProgress {
                        node,
                        shard: ShardId(p.shard),
                        view,
                        durable: p.durable,
                    });
                }
                if self.orderable_since.is_none()
                    && self.node.engine().is_some_and(|e| e.orderable())
                {
                    self.orderable_since = Some(Instant::now());
                }
                Vec::new()
            }
            Input::Heartbeat(heartbeat, reply) => {
                if let Some(member) = heartbeat.member {
                    let node = NodeId(member.node);
                    self.gateway_seen
                        .insert(node, (Instant::now(), heartbeat.applied));
                    self.node.on_gateway_heartbeat(
                        node,
                        GatewayMember {
                            incarnation: member.incarnation,
                            http_addr: member.http_addr,
                        },
                    );
                }
                let _ = reply.send(self.shared.hint());
                Vec::new()
            }
            Input::Status(reply) => {
                let _ = reply.send(self.status().to_string());
                Vec::new()
            }
        }
    }

    fn carry_out(&mut self, outputs: Vec<Output>) {
        let now = Instant::now();
        let mut committed = Vec::new();
        for output in outputs {
            match output {
                Output::Send { to, message } => {
                    if let Some(peer) = self.peers.get(&to) {
                        // A full queue means the peer is unreachable: Raft resends later.
                        let _ = peer.try_send(message);
                    }
                }
                Output::Committed { index, event } => {
                    let mut wire = Event::new(index, &event);
                    if let GroupEvent::Metalog(entry) = &event {
                        // Entries at or before this position are decided: forget them.
                        let later = self.proposed.split_off(&(entry.position + 1));
                        let decided = std::mem::replace(&mut self.proposed, later);
                        if let Some((at, cut)) = decided.get(&entry.position) {
                            wire.cut_us = cut.as_micros() as u64;
                            wire.commit_us = now.duration_since(*at).as_micros() as u64;
                            wire.committed_unix_us = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_micros() as u64);
                        }
                    }
                    committed.push(wire);
                }
                Output::Refused { raft_index, reason } => {
                    // Every member skips it alike, so the group stays in step; but no leader
                    // proposes such an entry, so the Raft log is damaged or foreign.
                    tracing::error!(raft_index, %reason, "refused a committed Raft entry");
                }
            }
        }
        self.track_proposals(now);
        if !committed.is_empty() {
            let len = {
                let mut history = self.shared.history.write().expect("history lock");
                history.extend(committed);
                history.len() as u64
            };
            self.shared.events.send_replace(len);
        }
        let leader = self.node.leader();
        self.shared.leader.send_if_modified(|known| {
            let changed = *known != leader;
            *known = leader;
            changed
        });
    }

    /// Notes when records became orderable and when the engine proposed an entry for them.
    fn track_proposals(&mut self, now: Instant) {
        let Some(engine) = self.node.engine() else {
            self.orderable_since = None;
            return;
        };
        if let Some(entry) = engine.in_flight_newest() {
            let newest = self.proposed.keys().next_back().copied();
            if newest.is_none_or(|position| position < entry.position) {
                let waited = self
                    .orderable_since
                    .map_or(Duration::ZERO, |since| now - since);
                self.proposed.insert(entry.position, (now, waited));
                self.orderable_since = None;
            }
        }
        if self.orderable_since.is_none() && engine.orderable() {
            self.orderable_since = Some(now);
        }
    }

    fn status(&self) -> serde_json::Value {
        let ms = |at: &Instant| at.elapsed().as_millis() as u64;
        let view = self.node.view();
        let shards: serde_json::Map<String, serde_json::Value> = self
            .node
            .engine()
            .map(|engine| {
                engine
                    .ordered()
                    .into_iter()
                    .map(|(shard, ordered)| {
                        let durable: BTreeMap<String, u64> = engine
                            .durable(shard)
                            .into_iter()
                            .map(|(node, d)| (node.0.to_string(), d))
                            .collect();
                        (
                            shard.0.to_string(),
                            serde_json::json!({ "ordered": ordered, "durable": durable }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "role": "sequencer",
            "id": self.shared.id.0,
            "is_leader": self.node.is_leader(),
            "leader": self.node.leader().map(|l| l.0),
            "term": self.node.term(),
            "events": self.node.events_len(),
            "metalog_position": self.node.metalog_len(),
            "view": view,
            "shards": shards,
            "storage_nodes": self.storage_seen.iter().map(|(node, (at, applied))| {
                (node.0.to_string(), serde_json::json!({"last_seen_ms": ms(at), "applied": applied}))
            }).collect::<serde_json::Map<_, _>>(),
            "gateway_nodes": self.gateway_seen.iter().map(|(node, (at, applied))| {
                (node.0.to_string(), serde_json::json!({"last_seen_ms": ms(at), "applied": applied}))
            }).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// Sends Raft messages to one peer over a client stream, reconnecting when it breaks.
async fn peer_sender(addr: String, mut rx: mpsc::Receiver<Message>) {
    loop {
        let endpoint = match super::endpoint(&addr) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::error!(%addr, error = %e, "bad peer address; no Raft messages go there");
                return;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(_) => {
                // Unreachable: what queued meanwhile is stale, Raft will resend.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                continue;
            }
        };
        let mut client = SequencerClient::new(channel);
        let (tx, stream_rx) = mpsc::channel(PEER_QUEUE_MAX);
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(stream_rx)).await });
        while let Some(message) = rx.recv().await {
            let Ok(bytes) = message.write_to_bytes() else {
                continue;
            };
            if tx
                .send(pb::RaftMessage {
                    message: bytes.into(),
                })
                .await
                .is_err()
            {
                break;
            }
        }
        call.abort();
        if rx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Service {
    shared: Arc<Shared>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Sequencer for Service {
    async fn raft(
        &self,
        request: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<pb::Empty>, Status> {
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            let message = Message::parse_from_bytes(&message.message)
                .map_err(|e| Status::invalid_argument(format!("bad Raft message: {e}")))?;
            if self
                .shared
                .inputs
                .send(Input::Raft(Box::new(message)))
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn progress(
        &self,
        request: Request<Streaming<pb::ProgressReport>>,
    ) -> Result<Response<pb::Empty>, Status> {
        let mut stream = request.into_inner();
        while let Some(report) = stream.message().await? {
            if self
                .shared
                .inputs
                .send(Input::Progress(report))
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::GatewayHeartbeat>,
    ) -> Result<Response<pb::LeaderHint>, Status> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .inputs
            .send(Input::Heartbeat(request.into_inner(), tx))
            .await
            .map_err(|_| Status::unavailable("sequencer is stopping"))?;
        let hint = rx
            .await
            .map_err(|_| Status::unavailable("sequencer is stopping"))?;
        Ok(Response::new(hint))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        if !self.shared.hint().is_leader {
            return Err(self.shared.not_leader());
        }
        let from = request.into_inner().from_position;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        tokio::spawn(feed(self.shared.clone(), from, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .inputs
            .send(Input::Status(tx))
            .await
            .map_err(|_| Status::unavailable("sequencer is stopping"))?;
        let json = rx
            .await
            .map_err(|_| Status::unavailable("sequencer is stopping"))?;
        Ok(Response::new(pb::StatusReply { json }))
    }
}

/// The metalog position an event stands at: its entry's, or the view's first.
fn event_position(event: &Event) -> u64 {
    match &event.kind {
        Some(pb::event::Kind::Metalog(e)) => e.position,
        Some(pb::event::Kind::View(v)) => v.start_position,
        None => 0,
    }
}

/// Streams committed events to one subscriber from metalog position `from`: first the view
/// in force there, then every event from the first at or after `from`. Ends the stream with
/// UNAVAILABLE when this member stops leading, so the subscriber moves to the new leader.
async fn feed(shared: Arc<Shared>, from: u64, tx: mpsc::Sender<Result<Event, Status>>) {
    let mut events = shared.events.subscribe();
    let mut leader = shared.leader.subscribe();
    let (mut next, view) = {
        let history = shared.history.read().expect("history lock");
        let start = history.partition_point(|e| event_position(e) < from);
        let view = history[..start]
            .iter()
            .rev()
            .find(|e| matches!(e.kind, Some(pb::event::Kind::View(_))))
            .cloned();
        (start, view)
    };
    if let Some(view) = view {
        if tx.send(Ok(view)).await.is_err() {
            return;
        }
    }
    loop {
        if *leader.borrow_and_update() != Some(shared.id) {
            let _ = tx.send(Err(shared.not_leader())).await;
            return;
        }
        let batch: Vec<Event> = {
            let history = shared.history.read().expect("history lock");
            history[next.min(history.len())..].to_vec()
        };
        next += batch.len();
        for event in batch {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = events.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}
