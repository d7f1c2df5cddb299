//! The roles of a multi-process cluster, each a long-running process (`tally sequencer`,
//! `tally storage` and `tally gateway`), or several in one (`tally node`, `host`). They talk gRPC (`logbook::rpc`, proto/tally.proto).
//! Each `Options` struct is what a role needs, built from the node's TOML file and flags
//! (`crate::config`). Every role prints one line `tally <role> <id> ready: <addr>` on stdout
//! once it serves, which `tally cluster up` and tests wait for.

pub mod gateway;
pub mod host;
pub mod local;
pub mod sequencer;
pub mod storage;
pub mod tls;

use logbook::wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use storage_node::Durability;

/// Refuses to serve on any of `addrs` (each with the flag or key that set it) beyond loopback
/// while no API token exists, unless `insecure`: anyone who reached it could call every
/// function and read every book.
pub fn refuse_exposure(
    addrs: &[(&str, SocketAddr)],
    tokens: &::gateway::auth::Tokens,
    insecure: bool,
) -> anyhow::Result<()> {
    if insecure || tokens.enforcing() {
        return Ok(());
    }
    if let Some((flag, addr)) = addrs.iter().find(|(_, a)| !a.ip().is_loopback()) {
        anyhow::bail!(
            "refusing to serve on {addr} ({flag}) without API tokens: anyone who reaches it \
             could call every function and read every book. Make a token first (on a gateway \
             listening on 127.0.0.1: `tally token create --scope admin`), or start with \
             --insecure (`insecure = true` in a gateway's file) to serve without tokens"
        );
    }
    Ok(())
}

/// Sequencer defaults.
pub const CUT_INTERVAL_US_DEFAULT: u64 = 1000;
pub const RAFT_TICK_MS_DEFAULT: u64 = 50;
/// Raft ticks without a leader's message before a follower starts an election (each member
/// adds its own offset, so elections do not split).
pub const ELECTION_TICKS_DEFAULT: usize = 10;
pub const GATEWAY_TIMEOUT_MS_DEFAULT: u64 = 2000;
pub const REPLICATION_DEFAULT: usize = 3;

/// `tally sequencer`: one member of the sequencer group.
#[derive(Debug, Clone)]
pub struct SequencerOptions {
    pub id: NodeId,
    /// The Raft log lives here.
    pub data_dir: PathBuf,
    /// The gRPC address to serve on.
    pub listen: SocketAddr,
    /// Every member of the group (this one included) and its gRPC address.
    pub sequencers: BTreeMap<NodeId, String>,
    /// Every storage node and its gRPC address.
    pub storage: BTreeMap<NodeId, String>,
    pub replication: usize,
    pub cut_interval: Duration,
    pub raft_tick: Duration,
    pub election_ticks: usize,
    pub gateway_timeout: Duration,
}

/// `tally storage`: one storage node.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Every sequencer and its gRPC address.
    pub sequencers: BTreeMap<NodeId, String>,
    pub durability: Durability,
    pub segment_bytes_max: u64,
}

/// `tally gateway`: one gateway, owning one shard.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub id: NodeId,
    /// The HTTP address to serve on (port 0 picks one; the ready line tells which).
    pub http: SocketAddr,
    /// Every sequencer and its gRPC address.
    pub sequencers: BTreeMap<NodeId, String>,
    pub cache_bytes_max: usize,
    pub pending_appends_max: usize,
    /// The address worker processes attach at (gRPC; port 0 picks one).
    pub workers: SocketAddr,
    /// Limits of the gateway's functions, by name (from `[functions.NAME]`).
    pub functions: BTreeMap<String, ::gateway::functions::FunctionConfig>,
    /// How long an idempotency key names its invocation.
    pub key_retention: std::time::Duration,
    /// How long an ended workflow instance is kept before it is collected.
    pub workflow_retention: std::time::Duration,
    /// How long an object's versions are kept before they are collected.
    pub object_retention: std::time::Duration,
    /// Functions each message of a queue invokes (`queue` in `[functions.NAME]`).
    pub triggers: Vec<::gateway::triggers::QueueTrigger>,
    /// Packages of classes installed at start (`packages` in the node's file).
    pub packages: Vec<libobject::Package>,
    /// The HTTP API's limits against slow and greedy clients.
    pub http_limits: ::gateway::serve::HttpLimits,
    /// Serve beyond loopback without API tokens (`insecure`).
    pub insecure: bool,
    /// Requests a second each API token may make here, unless it has its own rate.
    pub rate_per_token: u32,
}

/// A gRPC channel to `addr`, connected lazily (the first call connects; a broken connection
/// is re-established by a later call). Channels are shared per address: one HTTP/2
/// connection carries every call to a node.
pub fn channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    static CHANNELS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>,
    > = std::sync::OnceLock::new();
    let mut channels = CHANNELS
        .get_or_init(Default::default)
        .lock()
        .expect("channel cache lock");
    if let Some(channel) = channels.get(addr) {
        return Ok(channel.clone());
    }
    // A role of this process is reached through memory (`tally node`), others over TCP.
    let channel = match local::connector(addr) {
        Some(connector) => endpoint(addr)?.connect_with_connector_lazy(connector),
        None => endpoint(addr)?.connect_lazy(),
    };
    channels.insert(addr.to_string(), channel.clone());
    Ok(channel)
}

/// How every role dials another: a short connect timeout, no Nagle, HTTP/2 keep-alives that
/// notice a dead peer within seconds.
/// With TLS installed (`tls::install`), it presents this node's certificate and trusts only
/// the cluster's CA, unless `addr` is served in this process (reached through memory).
pub fn endpoint(addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    let tls = tls::installed().filter(|_| !local::is_hosted(addr));
    let uri = logbook::rpc::grpc_uri(addr, tls.is_some());
    let endpoint = tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(std::time::Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(1))
        .keep_alive_timeout(std::time::Duration::from_secs(3));
    match tls {
        Some(tls) => Ok(endpoint.tls_config(tls.client())?),
        None => Ok(endpoint),
    }
}

/// The longest a unary call may take before it fails.
pub const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A unary call (or a stream's opening), failing with DEADLINE_EXCEEDED after `RPC_TIMEOUT`.
/// Channels carry no timeout of their own: it would also end long-lived streams.
pub async fn unary<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no reply within {} s",
            RPC_TIMEOUT.as_secs()
        ))),
    }
}

/// How long one node may leave a call unanswered before `first_answer` asks the next one too.
/// Far above a loopback or LAN call's latency, far below `RPC_TIMEOUT`.
pub const HEDGE_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Asks `nodes` in order until one answers (`Some`), waiting on the calls in flight for at
/// most `hedge` before asking the next node as well, and at once after a failure: a node that
/// stopped without closing its connections holds a call for the whole `RPC_TIMEOUT`. Returns
/// the first answer and the position in `nodes` of the node that gave it; `None` once every
/// node failed.
pub async fn first_answer<N, T, F>(
    nodes: Vec<N>,
    hedge: std::time::Duration,
    ask: impl Fn(N) -> F,
) -> Option<(usize, T)>
where
    F: std::future::Future<Output = Option<T>>,
{
    use futures::{FutureExt as _, StreamExt as _};
    let mut waiting = nodes.into_iter().enumerate();
    let ask_next = |(position, node)| ask(node).map(move |answer| (position, answer));
    let mut asked = futures::stream::FuturesUnordered::new();
    loop {
        if asked.is_empty() {
            asked.push(ask_next(waiting.next()?));
        }
        let more = waiting.len() > 0;
        tokio::select! {
            answered = asked.next() => {
                if let Some((position, Some(answer))) = answered {
                    return Some((position, answer));
                }
            }
            () = tokio::time::sleep(hedge), if more => {
                asked.push(ask_next(waiting.next().expect("checked that a node is left")));
            }
        }
    }
}

/// The sequencer group as a client sees it: one channel per member and the member that
/// last said it leads.
///
/// A member that stops answering without closing its connections (a stopped or hung process)
/// costs a call the whole `RPC_TIMEOUT`, so nothing waits on one member before asking the
/// next: subscriptions are opened at every member at once, and gateways heartbeat every
/// member on its own schedule.
pub struct SequencerClients {
    clients: BTreeMap<
        NodeId,
        logbook::rpc::pb::sequencer_client::SequencerClient<tonic::transport::Channel>,
    >,
    leader: tokio::sync::watch::Sender<Option<NodeId>>,
}

impl SequencerClients {
    pub fn new(sequencers: &BTreeMap<NodeId, String>) -> anyhow::Result<SequencerClients> {
        let clients = sequencers
            .iter()
            .map(|(id, addr)| {
                let client =
                    logbook::rpc::pb::sequencer_client::SequencerClient::new(channel(addr)?)
                        .max_decoding_message_size(64 * 1024 * 1024);
                Ok((*id, client))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(SequencerClients {
            clients,
            leader: tokio::sync::watch::channel(None).0,
        })
    }

    /// Every member and a client of it.
    pub fn members(
        &self,
    ) -> Vec<(
        NodeId,
        logbook::rpc::pb::sequencer_client::SequencerClient<tonic::transport::Channel>,
    )> {
        self.clients
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect()
    }

    /// The member that last said it leads.
    pub fn leader(&self) -> Option<NodeId> {
        *self.leader.borrow()
    }

    /// Member `id` said it leads: it answered a heartbeat as leader or took a subscription.
    pub fn note_leader_is(&self, id: NodeId) {
        self.leader.send_if_modified(|known| {
            let changed = *known != Some(id);
            *known = Some(id);
            changed
        });
    }

    /// Resolves once a member other than `id` has said it leads: a subscription at `id` may
    /// be silent because `id` stopped, and should move.
    pub async fn leader_moved_from(&self, id: NodeId) {
        // The sender lives in `self`, so the wait ends only when the leader moves.
        let _ = self
            .leader
            .subscribe()
            .wait_for(|known| known.is_some_and(|l| l != id))
            .await;
    }

    /// Subscribes to committed events from metalog position `from` at the leader: asks every
    /// member at once and takes the first stream one opens (only the leader serves one),
    /// asking again after a pause until one does. Returns the member and its stream.
    pub async fn subscribe(
        &self,
        from: u64,
    ) -> (NodeId, tonic::Streaming<logbook::rpc::pb::Event>) {
        use futures::StreamExt as _;
        // Said at once, then at most this often while no member answers.
        const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
        let mut warned: Option<std::time::Instant> = None;
        loop {
            let mut failures = Vec::new();
            let mut attempts: futures::stream::FuturesUnordered<_> = self
                .members()
                .into_iter()
                .map(|(id, mut client)| async move {
                    let request = logbook::rpc::pb::SubscribeRequest {
                        from_position: from,
                    };
                    (id, unary(client.subscribe(request)).await)
                })
                .collect();
            while let Some((id, opened)) = attempts.next().await {
                match opened {
                    Ok(stream) => {
                        self.note_leader_is(id);
                        return (id, stream);
                    }
                    Err(status) => failures.push(format!(
                        "sequencer {}: {}",
                        id.0,
                        logbook::rpc::causes(
                            status.message().to_string(),
                            std::error::Error::source(&status)
                        )
                    )),
                }
            }
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                warned = Some(std::time::Instant::now());
                let hint = if tls::installed().is_some() {
                    " (with TLS, a node whose certificate the cluster's CA did not sign is \
                     refused by the others: their logs say so)"
                } else {
                    ""
                };
                tracing::warn!(
                    "no sequencer takes a subscription (retrying): {}{hint}",
                    failures.join("; ")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The connections a role's gRPC server accepts on `listener`, with Nagle's algorithm off:
/// replies and stream messages are small and latency-bound.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Most records one `Fetch` or `FetchIndex` call asks for (a storage node's limit too).
pub const FETCH_RECORDS_MAX: u64 = 1024;

/// One `Fetch` call to the storage node at `addr`.
pub async fn fetch(
    addr: &str,
    request: logbook::rpc::pb::FetchRequest,
) -> anyhow::Result<Vec<logbook::rpc::pb::FetchedRecord>> {
    let mut client = logbook::rpc::pb::storage_client::StorageClient::new(channel(addr)?)
        .max_decoding_message_size(64 << 20);
    Ok(unary(client.fetch(request)).await?.records)
}

/// The ordered records in `[from, to)` the storage node at `addr` holds, once it applied the
/// metalog up to `min_position`, in calls of `FETCH_RECORDS_MAX`.
pub async fn fetch_range(
    addr: &str,
    from: logbook::Seqnum,
    to: logbook::Seqnum,
    min_position: u64,
    index_only: bool,
) -> anyhow::Result<Vec<logbook::rpc::pb::FetchedRecord>> {
    let mut records = Vec::new();
    let mut at = from.0;
    while at < to.0 {
        let upto = to.0.min(at + FETCH_RECORDS_MAX);
        let request = logbook::rpc::pb::FetchRequest {
            from_seqnum: at,
            to_seqnum: upto,
            min_position,
            index_only,
            seqnums: Vec::new(),
        };
        records.extend(fetch(addr, request).await?);
        at = upto;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// How each node answers in a `first_answer` case.
    #[derive(Clone, Copy)]
    enum Node {
        Answers(u32),
        Fails,
        Hangs,
    }

    /// Runs `first_answer` over `nodes`; returns its result and the nodes it asked, in order.
    async fn check(nodes: &[Node]) -> (Option<(usize, u32)>, Vec<usize>) {
        let asked = Mutex::new(Vec::new());
        let answer = first_answer(
            nodes.iter().copied().enumerate().collect(),
            Duration::from_millis(20),
            |(i, node)| {
                asked.lock().unwrap().push(i);
                async move {
                    match node {
                        Node::Answers(value) => Some(value),
                        Node::Fails => None,
                        Node::Hangs => std::future::pending().await,
                    }
                }
            },
        );
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("first_answer never waits on a node that hangs");
        (answer, asked.into_inner().unwrap())
    }

    #[tokio::test]
    async fn the_first_node_that_answers_is_the_only_one_asked() {
        let (answer, asked) = check(&[Node::Answers(7), Node::Answers(8)]).await;
        assert_eq!((answer, asked), (Some((0, 7)), vec![0]));
    }

    #[tokio::test]
    async fn a_node_that_fails_hands_over_to_the_next() {
        let (answer, asked) = check(&[Node::Fails, Node::Fails, Node::Answers(8)]).await;
        assert_eq!((answer, asked), (Some((2, 8)), vec![0, 1, 2]));
    }

    #[tokio::test]
    async fn a_node_that_hangs_does_not_hold_up_the_next() {
        let (answer, asked) = check(&[Node::Hangs, Node::Hangs, Node::Answers(8)]).await;
        assert_eq!((answer, asked), (Some((2, 8)), vec![0, 1, 2]));
    }

    #[tokio::test]
    async fn no_answer_once_every_node_failed() {
        assert_eq!(check(&[Node::Fails, Node::Fails]).await, (None, vec![0, 1]));
        assert_eq!(check(&[]).await, (None, vec![]));
    }
}
