//! The `tally` binary: `tally up` runs every role in one process; `tally sequencer`,
//! `tally storage` and `tally gateway` run one role of a cluster from its config file;
//! `tally cluster` starts and watches a local multi-process cluster; the other commands are
//! clients of a running gateway.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tally_cli::client::Client;
use tally_cli::cluster;
use tally_cli::config::{self, ClusterFile, DurabilityMode, NodeFile, Role, RoleOptions};
use tally_cli::node::{Node, NodeConfig};

/// mimalloc: a server that allocates and frees many small buffers per request spends far less
/// of its CPU in the allocator than with the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Where `tally up` takes workers and serves the log protocol unless told otherwise.
const DEFAULT_WORKER_ADDR: &str = "127.0.0.1:8081";

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a fault-tolerant serverless runtime on a shared log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to stderr: `text` for people, `json` for collectors (one object
    /// per line: timestamp, level, target, message and fields). Processes started by `tally
    /// cluster up` inherit it through the environment.
    #[arg(long, global = true, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start Tally on this machine: every role in one process, data in one directory.
    Up(UpArgs),
    /// Call a function and print its output.
    Invoke(InvokeArgs),
    /// List the functions each gateway serves.
    Functions(FunctionsArgs),
    /// Start, show and signal workflow instances.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Read, write and show the history of JSON objects; run one-shot transactions.
    #[command(subcommand)]
    Object(ObjectCommand),
    /// Push to, pop from and inspect queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Install and list packages of classes.
    #[command(subcommand)]
    Package(PackageCommand),
    /// Make, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make a certificate authority and node certificates for HTTPS.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Append to and read from a LogBook.
    #[command(subcommand)]
    Log(LogCommand),
    /// Measure a running Tally.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run one sequencer of a cluster (a member of the Raft group that orders the log).
    Sequencer(SequencerArgs),
    /// Run one storage node of a cluster.
    Storage(StorageArgs),
    /// Run one gateway of a cluster (HTTP, functions, one shard of the log).
    Gateway(GatewayArgs),
    /// Run several roles of a cluster in one process, as its node file's `roles` lists them
    /// (see cli/examples/node.toml); co-located roles talk through memory, not TCP.
    Node(HostArgs),
    /// Start, watch and stop a multi-process cluster on this machine.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `tally node`: the node file of a process hosting several roles.
#[derive(Args)]
struct HostArgs {
    /// The node's TOML file: `roles = [...]`, a table per role, and `[cluster]`.
    #[arg(long)]
    config: PathBuf,
}

/// What every role takes. Flags override the config file's values.
#[derive(Args)]
struct NodeArgs {
    /// The node's TOML file (see cli/examples/cluster.toml); flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's id, unique across all roles.
    #[arg(long)]
    id: Option<u32>,
    /// Every sequencer and its gRPC address: ID=HOST:PORT,... ([cluster] sequencers).
    #[arg(long, value_name = "ID=HOST:PORT,...", value_parser = config::parse_node_map)]
    sequencers: Option<BTreeMap<String, String>>,
}

impl NodeArgs {
    fn overrides(&self) -> NodeFile {
        NodeFile {
            id: self.id,
            cluster: ClusterFile {
                sequencers: self.sequencers.clone(),
                ..ClusterFile::default()
            },
            ..NodeFile::default()
        }
    }
}

#[derive(Args)]
struct SequencerArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the Raft log lives.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The gRPC address to bind (default: this node's address in the sequencers map).
    #[arg(long)]
    listen: Option<String>,
    /// Every storage node and its gRPC address: ID=HOST:PORT,... ([cluster] storage).
    #[arg(long, value_name = "ID=HOST:PORT,...", value_parser = config::parse_node_map)]
    storage: Option<BTreeMap<String, String>>,
    /// Storage replicas of each shard (default 3).
    #[arg(long)]
    replication: Option<usize>,
    /// Least time between two metalog entries, in microseconds (default 1000).
    #[arg(long)]
    cut_interval_us: Option<u64>,
    /// The Raft tick, in milliseconds (default 50).
    #[arg(long)]
    raft_tick_ms: Option<u64>,
    /// A gateway silent this long leaves the next view, in milliseconds (default 2000).
    #[arg(long)]
    gateway_timeout_ms: Option<u64>,
}

#[derive(Args)]
struct StorageArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the segment files live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The gRPC address to bind (default: this node's address in the storage map).
    #[arg(long)]
    listen: Option<String>,
    /// Every storage node and its gRPC address: ID=HOST:PORT,... ([cluster] storage).
    #[arg(long, value_name = "ID=HOST:PORT,...", value_parser = config::parse_node_map)]
    storage: Option<BTreeMap<String, String>>,
    /// When a record is acknowledged (default fsync).
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// With --durability async: how often to fdatasync, in milliseconds (default 5).
    #[arg(long)]
    flush_interval_ms: Option<u64>,
}

#[derive(Args)]
struct GatewayArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The HTTP address to serve on (default 127.0.0.1:8080; port 0 picks one).
    #[arg(long)]
    http: Option<String>,
    /// Record cache size, in MiB (default 256).
    #[arg(long)]
    cache_mb: Option<usize>,
    /// The address worker processes attach at (default 127.0.0.1:8081; port 0 picks one).
    #[arg(long)]
    workers: Option<String>,
    /// Serve beyond loopback even though no API token exists yet (`insecure = true`).
    #[arg(long)]
    insecure: bool,
}

#[derive(Args)]
struct ClusterDirArg {
    /// The cluster's directory: its nodes' config files, data and logs, and cluster.json.
    #[arg(long, default_value = cluster::CLUSTER_DIR_DEFAULT)]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start a cluster on 127.0.0.1 (or start a stopped one again from its files) and wait
    /// until every gateway is in the view.
    Up {
        #[command(flatten)]
        dir: ClusterDirArg,
        /// Nodes that each run a sequencer, a storage node and a gateway in one process
        /// (`tally node`; node K hosts ids K, 10+K and 20+K), instead of a process per role.
        #[arg(long, conflicts_with_all = ["sequencers", "storage", "gateways"])]
        nodes: Option<usize>,
        /// Sequencers, ids 0, 1, ... (default 3).
        #[arg(long)]
        sequencers: Option<usize>,
        /// Storage nodes, ids 10, 11, ... (default 3).
        #[arg(long)]
        storage: Option<usize>,
        /// Gateways, ids 20, 21, ... (default 2).
        #[arg(long)]
        gateways: Option<usize>,
        /// Storage replicas of each shard (default: 3, or every storage node if fewer).
        #[arg(long)]
        replication: Option<usize>,
        /// When storage nodes acknowledge a record (default fsync).
        #[arg(long, value_enum)]
        durability: Option<DurabilityArg>,
        /// Least time between two metalog entries, in microseconds (default 1000).
        #[arg(long)]
        cut_interval_us: Option<u64>,
        /// How long to wait for the cluster to be ready, in seconds.
        #[arg(long, default_value_t = cluster::READY_TIMEOUT_SECS_DEFAULT)]
        timeout_secs: u64,
        /// Make a CA and a certificate per process (in DIR/certs): the nodes speak mutual TLS
        /// to each other, gateways serve HTTPS (a new cluster only).
        #[arg(long)]
        tls: bool,
    },
    /// Print the nodes, the leader, the view and the progress of shards and nodes.
    Status {
        #[command(flatten)]
        dir: ClusterDirArg,
        /// Print the leader's status and the nodes' liveness as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop every node (SIGTERM, then SIGKILL after the grace period); data is kept.
    Down {
        #[command(flatten)]
        dir: ClusterDirArg,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, default_value_t = cluster::GRACE_SECS_DEFAULT)]
        grace_secs: u64,
    },
    /// SIGKILL one node.
    Kill {
        #[command(flatten)]
        dir: ClusterDirArg,
        /// The node's id.
        #[arg(long)]
        node: u32,
    },
    /// Start one stopped node again from its config file and wait until it is ready.
    Start {
        #[command(flatten)]
        dir: ClusterDirArg,
        /// The node's id.
        #[arg(long)]
        node: u32,
        /// How long to wait for it to be ready, in seconds.
        #[arg(long, default_value_t = cluster::READY_TIMEOUT_SECS_DEFAULT)]
        timeout_secs: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    Http,
    Grpc,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Acknowledge an append after it is fsynced (group commit).
    Fsync,
    /// Acknowledge after the write; fsync in the background (`tally up`: every 10 ms).
    Async,
}

impl DurabilityArg {
    fn mode(self) -> DurabilityMode {
        match self {
            DurabilityArg::Fsync => DurabilityMode::Fsync,
            DurabilityArg::Async => DurabilityMode::Async,
        }
    }
}

#[derive(Args)]
struct UpArgs {
    /// Where the log lives.
    #[arg(long, default_value = "./tally-data", env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the HTTP gateway (port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_HTTP_ADDR, env = "TALLY_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// When an append is acknowledged.
    #[arg(long, value_enum, default_value = "fsync")]
    durability: DurabilityArg,
    /// Least time between two of the sequencer's cuts, in microseconds.
    #[arg(long, default_value_t = tally_cli::node::CUT_INTERVAL_US_DEFAULT, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    cut_interval_us: u64,
    /// Record cache size, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: usize,
    /// How long a client may take to send a request's headers, in ms (then the connection
    /// is closed).
    #[arg(long, default_value_t = gateway::serve::HEADER_TIMEOUT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    http_header_timeout_ms: u64,
    /// How long a client may take to send a request's body, in ms (then 408).
    #[arg(long, default_value_t = gateway::serve::BODY_TIMEOUT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    http_body_timeout_ms: u64,
    /// How long a connection may sit idle between requests, in ms (then it is closed).
    #[arg(long, default_value_t = gateway::serve::IDLE_TIMEOUT_DEFAULT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    http_idle_timeout_ms: u64,
    /// Connections the HTTP API keeps open at once; past it a new one is answered 503.
    #[arg(long, default_value_t = gateway::serve::CONNECTIONS_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..1_000_000))]
    http_connections_max: u64,
    /// Size at which a segment file of the log is sealed and the next begun, in MiB. Space
    /// comes back from sealed segments only.
    #[arg(long, default_value_t = config::SEGMENT_MIB_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=config::SEGMENT_MIB_MAX))]
    segment_mib: u64,
    /// A TOML file of `[functions.NAME]` tables: each function's max_concurrency,
    /// timeout_ms, retries and backoff_ms.
    #[arg(long)]
    functions: Option<PathBuf>,
    /// How long an idempotency key names its invocation, in seconds (default: a day).
    #[arg(long)]
    idempotency_retention_s: Option<u64>,
    /// How long an ended workflow instance is kept before it is collected, in seconds
    /// (default: a week).
    #[arg(long)]
    workflow_retention_s: Option<u64>,
    /// How long an object's versions (its history, and what transactions may read) are kept
    /// before they are collected, in seconds (default: a day).
    #[arg(long)]
    object_retention_s: Option<u64>,
    /// Where worker processes attach to serve functions (gRPC; port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_WORKER_ADDR, env = "TALLY_WORKER_ADDR")]
    worker_addr: SocketAddr,
    /// A package file of classes (TOML) to install, after the example package; repeatable.
    #[arg(long = "package", value_name = "FILE")]
    packages: Vec<PathBuf>,
    /// Serve beyond loopback even though no API token exists yet: anyone who reaches the
    /// gateway may then call every function and read every book.
    #[arg(long)]
    insecure: bool,
    /// Serve the HTTP API as HTTPS with this certificate chain (PEM; `tally cert node`), and
    /// `--tls-key`.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// With `--tls-cert`: the worker address takes mutual TLS only, workers and log clients
    /// showing a certificate this CA signed (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Requests a second each API token may make, unless made with its own `--rate`; past
    /// it, 429 (0: no limit).
    #[arg(long, default_value_t = gateway::auth::RATE_PER_TOKEN_DEFAULT, value_parser = clap::value_parser!(u32).range(0..=gateway::auth::RATE_PER_TOKEN_MAX as i64))]
    rate_per_token: u32,
}

#[derive(Args)]
struct AddrArg {
    /// Address of a gateway.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR, env = "TALLY_ADDR")]
    addr: String,
    /// The API token to send, once the gateway asks for tokens (`tally token create`).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For an https:// gateway: the CA certificate (PEM) it is trusted by (`tally cert ca`).
    #[arg(long, env = "TALLY_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
}

impl AddrArg {
    fn client(&self) -> anyhow::Result<Client> {
        self.client_of(&self.addr)
    }

    /// A client of the gateway at `addr` with this argument's CA and token.
    fn client_of(&self, addr: &str) -> anyhow::Result<Client> {
        Client::configured(addr, self.ca.as_deref(), self.token.as_deref())
    }
}

#[derive(Args)]
struct FunctionsArgs {
    #[command(flatten)]
    addr: AddrArg,
    /// Ask every gateway of the local cluster in this directory instead of `--addr`.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct InvokeArgs {
    /// The function's name.
    name: String,
    /// Input passed to the function as the request body (default: empty).
    input: Option<String>,
    #[command(flatten)]
    addr: AddrArg,
    /// The LogBook the call works in.
    #[arg(long)]
    book: Option<u32>,
    /// Calls with the same key run the function once and return the same result.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Subcommand)]
enum WorkflowCommand {
    /// Start an instance (the same id again is the same instance) and print the answer.
    Start {
        /// The workflow's name.
        name: String,
        /// The instance's id: letters, digits and -_.: only.
        id: String,
        /// The input, as JSON (default: null).
        input: Option<String>,
        /// Wait this many milliseconds for the instance's end (0: do not wait).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Print an instance: status, input, output, every step.
    Show {
        id: String,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Cancel an instance: its compensations run and it ends `cancelled`.
    Cancel {
        id: String,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// List the newest instances.
    List {
        /// Only those with this status: running, succeeded, failed, compensated, cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Send a signal to an instance.
    Signal {
        id: String,
        /// The signal's name.
        name: String,
        /// Its payload, as JSON (default: null).
        payload: Option<String>,
        /// The same key again delivers the signal once.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
}

#[derive(Subcommand)]
enum ObjectCommand {
    /// Print an object's document, or the part at --path.
    Get {
        collection: String,
        key: String,
        /// A JSON Pointer into the document (`/items/0`).
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Set an object's whole document; prints the old one.
    Set {
        collection: String,
        key: String,
        /// The document, as JSON (`-`: read it from stdin).
        doc: String,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Apply path operations to an object, all or none; prints each one's result.
    Patch {
        collection: String,
        key: String,
        /// A JSON list of operations (`-`: read it from stdin), e.g.
        /// '[{"op": "add", "path": "/n", "delta": 1}]'.
        ops: String,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Delete an object; prints its last document.
    Delete {
        collection: String,
        key: String,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Print an object's changes, oldest first: `SEQNUM KIND applied|not-applied OPS` a line
    /// (an object of a class: its calls, `SEQNUM METHOD INPUT -> OUTPUT|error: MESSAGE`).
    History {
        collection: String,
        key: String,
        /// Only changes after this seqnum.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many changes (1 to 1000; default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the gateway's JSON (with the document after each change) instead.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Call a method of an object of a class; prints its output (with --send, the id of the
    /// invocation that runs it).
    Call {
        class: String,
        key: String,
        method: String,
        /// The input, as JSON (`-`: read it from stdin; default null).
        input: Option<String>,
        /// Send it as a message: in the log at once, run later.
        #[arg(long)]
        send: bool,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Run a one-shot transaction from a JSON file (`-`: stdin); prints its outcome.
    Tx {
        /// `{"reads": [...], "conditions": [...], "writes": [...]}` (see the README).
        file: String,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Create a queue (or check its shard count) and consumer groups; a group sees the
    /// messages pushed after it was created.
    Create {
        name: String,
        #[arg(long)]
        shards: Option<u32>,
        /// A consumer group to create (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Push one message; prints its id.
    Push {
        name: String,
        /// The message (`-`: read it from stdin).
        data: String,
        /// Push once per key: the same key again prints the same id.
        #[arg(long)]
        key: Option<String>,
        /// Create the queue with this many shards (or check that it has them).
        #[arg(long)]
        shards: Option<u32>,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Pop a message for a consumer group and print it (`ID DELIVERIES RECEIPT` on stderr, the
    /// message on stdout); exits 2 if none came in time.
    Pop {
        name: String,
        #[arg(long)]
        group: String,
        /// How long to wait for a message, in milliseconds (at most 60000).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Not acked within this many milliseconds, the message is delivered again.
        #[arg(long)]
        visibility_timeout_ms: Option<u64>,
        /// Ack the message once printed (at-most-once for this consumer: printed, then gone).
        #[arg(long)]
        ack: bool,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Ack a delivery: the message's id and the receipt its pop printed.
    Ack {
        name: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        receipt: u64,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Print a queue's shards, length and groups (lag, in flight, dead letters, oldest age).
    Stat {
        name: String,
        #[arg(long)]
        book: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Append one record and print its seqnum.
    Append {
        #[command(flatten)]
        addr: AddrArg,
        #[arg(long, default_value_t = 0)]
        book: u32,
        /// A tag for the record (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<u64>,
        /// The record's data.
        data: String,
    },
    /// Print records, one a line: seqnum, tags, data.
    Read {
        #[command(flatten)]
        addr: AddrArg,
        #[arg(long, default_value_t = 0)]
        book: u32,
        /// Only records with this tag (0: every record of the book).
        #[arg(long, default_value_t = 0)]
        tag: u64,
        /// Start at this seqnum.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print at most this many records (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print records as they are appended, until interrupted.
    Tail {
        #[command(flatten)]
        addr: AddrArg,
        #[arg(long, default_value_t = 0)]
        book: u32,
        #[arg(long, default_value_t = 0)]
        tag: u64,
        /// Start at this seqnum (default: after the current tail).
        #[arg(long)]
        from: Option<u64>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Closed-loop append load: throughput and latency percentiles.
    Append {
        /// Gateway address (repeat or comma-separate for several; clients spread over them).
        #[arg(long, default_value = DEFAULT_HTTP_ADDR, value_delimiter = ',')]
        addr: Vec<String>,
        #[command(flatten)]
        load: bench::LoadArgs,
        /// Spread records over this many tags (0: untagged).
        #[arg(long, default_value_t = 1)]
        tags: usize,
        #[arg(long, default_value_t = 0)]
        book: u32,
        /// How appends travel: http (`POST /log/{book}/append` at --addr) or grpc (the log
        /// protocol, a connection per client; --addr is then the worker address `tally up`
        /// prints, 127.0.0.1:8081 by default).
        #[arg(long, value_enum, default_value_t = ProtocolArg::Http)]
        protocol: ProtocolArg,
        /// Write the figures and the configuration as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write every acknowledged append (`seqnum client counter`) to this file.
        #[arg(long)]
        ack_log: Option<PathBuf>,
    },
    /// Closed-loop function calls: throughput and latency percentiles.
    ///
    /// Each client POSTs --input to the function, waits for its output, and calls again, for
    /// --duration seconds after --warmup seconds. With --url instead of NAME it drives any
    /// endpoint that takes a JSON POST, e.g. Restate's ingress
    /// (http://127.0.0.1:8080/Service/handler), measured the same way.
    Call {
        /// The function to call at each gateway (`POST /function/NAME`).
        #[arg(required_unless_present = "url")]
        name: Option<String>,
        /// Gateway address (repeat or comma-separate for several; clients spread over them).
        #[arg(long, default_value = DEFAULT_HTTP_ADDR, value_delimiter = ',')]
        addr: Vec<String>,
        /// Full endpoint URLs to POST to instead of NAME at --addr (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["name", "addr"])]
        url: Vec<String>,
        /// The input of every call, JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Concurrent clients, each with one call in flight.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// How long to call before measuring, in seconds.
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        /// Send a unique Idempotency-Key header with every call.
        #[arg(long)]
        idempotency_keys: bool,
        /// Write the figures and the configuration as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Closed-loop workflow instances: throughput and latency percentiles.
    ///
    /// Each client starts a new instance of workflow NAME under a unique id
    /// (POST /workflows/NAME/ID?wait_ms=N with --input), waits for it to end, and starts the
    /// next, for --duration seconds after --warmup seconds. An instance counts only if it
    /// answered 2xx with "status":"succeeded".
    Workflow {
        /// The workflow to start at each gateway.
        name: String,
        /// Gateway address or base URL (repeat or comma-separate for several; clients spread
        /// over them).
        #[arg(long, visible_alias = "url", default_value = DEFAULT_HTTP_ADDR, value_delimiter = ',')]
        addr: Vec<String>,
        /// The input of every instance, JSON.
        #[arg(long, default_value = r#"{"steps":10}"#)]
        input: String,
        /// Concurrent clients, each with one instance in flight.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// How long to run before measuring, in seconds.
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        /// How long the gateway waits for an instance to end before answering, in ms.
        #[arg(long, default_value_t = bench::WAIT_MS_MAX)]
        wait_ms: u64,
        /// Write the figures and the configuration as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Transactions over objects: YCSB-T transfers or the Retwis mix, with aborts counted.
    ///
    /// Sets up the data first (ycsbt: opens --accounts accounts through `bank`'s open, or
    /// bulk-inserts them on PostgreSQL; retwis: registers --users users), then runs --clients
    /// closed-loop clients for --duration seconds after --warmup seconds. On Tally every
    /// operation is a POST to /function/bank or /function/retwis; with --postgres the same
    /// operations run as SERIALIZABLE transactions, retried on serialization failures up to
    /// 10 times. Reports committed/s, p50/p99 of every answered operation and the abort rate
    /// ({"committed":false} answers apart from errors).
    Store {
        /// ycsbt (transfers between accounts) or retwis (50% timeline, 15% profile, 15% login,
        /// 15% post, 5% follow, users drawn uniformly).
        #[arg(value_parser = ["ycsbt", "retwis"])]
        workload: String,
        /// Tally gateway address or base URL.
        #[arg(long, default_value = DEFAULT_HTTP_ADDR, conflicts_with = "postgres")]
        addr: String,
        /// Drive PostgreSQL at this connection string instead (its tables are dropped and
        /// made afresh), e.g. postgresql://postgres@127.0.0.1:5432/postgres.
        #[arg(long)]
        postgres: Option<String>,
        /// ycsbt: how many accounts.
        #[arg(long, default_value_t = 10_000)]
        accounts: u64,
        /// ycsbt: uniform or zipfian.
        #[arg(long, default_value = "uniform", value_parser = ["uniform", "zipfian"])]
        distribution: String,
        /// ycsbt: the zipfian constant, above 0 and below 1.
        #[arg(long, default_value_t = 0.99)]
        theta: f64,
        /// ycsbt: oneshot or interactive transfers.
        #[arg(long, default_value = "oneshot", value_parser = ["oneshot", "interactive"])]
        mode: String,
        /// retwis: how many users.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// retwis: how many users each user follows after the setup phase (user u follows
        /// u+1 to u+N), so posts fan out and timelines fill.
        #[arg(long, default_value_t = 5)]
        follows: u64,
        /// Concurrent clients, each with one operation in flight.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// How long to run before measuring, in seconds.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Seeds the clients' choice of operations.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Report the CPU time this process (and every process below it) used over the
        /// measured window, and committed operations per CPU second; may be repeated (the
        /// server's process, e.g. `tally up`'s or PostgreSQL's postmaster).
        #[arg(long = "cpu-pid")]
        cpu_pids: Vec<u32>,
        /// Write the figures and the configuration as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Producers and consumers of one queue at once: messages acked and pushed a second, push
    /// and pop-and-ack latency, errors, and the backlog at the end.
    ///
    /// Makes the queue (--shards, default one per consumer) and its group `bench` first, then
    /// runs --producers and --consumers closed-loop clients side by side for --duration seconds
    /// after --warmup seconds: a producer POSTs a message of --size bytes to
    /// /queues/Q/push; a consumer POSTs /queues/Q/pop?group=bench&wait_ms=1000, then acks what
    /// it got. --nats and --redis drive NATS JetStream and Redis streams the same way, in the
    /// binaries that have their clients (`bench-jetstream queue`, `bench-redis`).
    Queue(bench::QueueArgs),
    /// Calls to objects, or transactions between them: throughput, latency, per CPU second.
    ///
    /// --workload counter: each client POSTs {"by": 1} to /objects/counter/c{k}/add (k over
    /// --keys counters), or with --restate to Restate's ingress, /Counter/c{k}/add (a virtual
    /// object). --workload transfer (Tally only): opens --accounts accounts first (a deposit
    /// each), then each call is a transfer of 1 between two distinct accounts, POST
    /// /transactions/{id} in --style serializable or saga, under an id unique to the transfer.
    /// Counts success, failure (422), retryable (503) and errors apart.
    Object(bench::ObjectArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line; no backtrace: these are errors for a person to act on.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    // Logs to stderr; traces to an OTLP collector if one is configured (its exporter needs
    // the runtime). Dropped last: what is left of the traces is flushed on the way out.
    let _telemetry = {
        let _entered = runtime.enter();
        gateway::telemetry::init("tally", cli.log_format == LogFormat::Json)?
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Invoke(args) => invoke(args).await,
            Command::Workflow(cmd) => workflow(cmd).await,
            Command::Object(cmd) => object(cmd).await,
            Command::Queue(cmd) => queue(cmd).await,
            Command::Package(cmd) => package(cmd).await,
            Command::Token(cmd) => token(cmd).await,
            Command::Cert(cmd) => cert(cmd),
            Command::Functions(args) => functions(args).await,
            Command::Log(cmd) => log(cmd).await,
            Command::Bench(cmd) => bench(cmd).await,
            Command::Sequencer(args) => run_role(Role::Sequencer, args.into()).await,
            Command::Storage(args) => run_role(Role::Storage, args.into()).await,
            Command::Gateway(args) => run_role(Role::Gateway, args.into()).await,
            Command::Cluster(cmd) => cluster_command(cmd).await,
            Command::Node(args) => {
                let (roles, tls) = config::load_host(&args.config)?;
                if let Some(tls) = tls {
                    tally_cli::roles::tls::install(tls)?;
                }
                tally_cli::roles::host::run(roles).await
            }
        }
    })
}

/// A role's config file and the flags that override it.
struct RoleArgs {
    config: Option<PathBuf>,
    overrides: NodeFile,
}

impl From<SequencerArgs> for RoleArgs {
    fn from(args: SequencerArgs) -> RoleArgs {
        let mut overrides = args.node.overrides();
        overrides.data_dir = args.data_dir;
        overrides.listen = args.listen;
        overrides.cluster.storage = args.storage;
        overrides.cluster.replication = args.replication;
        overrides.cluster.cut_interval_us = args.cut_interval_us;
        overrides.cluster.raft_tick_ms = args.raft_tick_ms;
        overrides.cluster.gateway_timeout_ms = args.gateway_timeout_ms;
        RoleArgs {
            config: args.node.config,
            overrides,
        }
    }
}

impl From<StorageArgs> for RoleArgs {
    fn from(args: StorageArgs) -> RoleArgs {
        let mut overrides = args.node.overrides();
        overrides.data_dir = args.data_dir;
        overrides.listen = args.listen;
        overrides.cluster.storage = args.storage;
        overrides.cluster.durability = args.durability.map(DurabilityArg::mode);
        overrides.cluster.flush_interval_ms = args.flush_interval_ms;
        RoleArgs {
            config: args.node.config,
            overrides,
        }
    }
}

impl From<GatewayArgs> for RoleArgs {
    fn from(args: GatewayArgs) -> RoleArgs {
        let mut overrides = args.node.overrides();
        overrides.http = args.http;
        overrides.cache_mb = args.cache_mb;
        overrides.workers = args.workers;
        overrides.insecure = args.insecure.then_some(true);
        RoleArgs {
            config: args.node.config,
            overrides,
        }
    }
}

async fn run_role(role: Role, args: RoleArgs) -> anyhow::Result<()> {
    let (options, tls) = config::load(role, args.config.as_deref(), args.overrides)?;
    if let Some(tls) = tls {
        tally_cli::roles::tls::install(tls)?;
    }
    match options {
        RoleOptions::Sequencer(o) => tally_cli::roles::sequencer::run(o).await,
        RoleOptions::Storage(o) => tally_cli::roles::storage::run(o).await,
        RoleOptions::Gateway(o) => tally_cli::roles::gateway::run(o).await,
    }
}

async fn cluster_command(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Up {
            dir,
            nodes,
            sequencers,
            storage,
            gateways,
            replication,
            durability,
            cut_interval_us,
            timeout_secs,
            tls,
        } => {
            cluster::up(cluster::UpOptions {
                dir: dir.dir,
                nodes,
                sequencers,
                storage,
                gateways,
                replication,
                durability: durability.map(DurabilityArg::mode),
                cut_interval_us,
                timeout: Duration::from_secs(timeout_secs),
                tls,
            })
            .await
        }
        ClusterCommand::Status { dir, json } => cluster::status(&dir.dir, json).await,
        ClusterCommand::Down { dir, grace_secs } => {
            cluster::down(&dir.dir, Duration::from_secs(grace_secs)).await
        }
        ClusterCommand::Kill { dir, node } => cluster::kill(&dir.dir, node).await,
        ClusterCommand::Start {
            dir,
            node,
            timeout_secs,
        } => cluster::start(&dir.dir, node, Duration::from_secs(timeout_secs)).await,
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    // Checked before anything starts, so a bad file costs nothing.
    let (functions, triggers) = match &args.functions {
        Some(path) => tally_cli::config::load_functions(path)?,
        None => Default::default(),
    };
    let mut config = NodeConfig::new(args.data_dir.clone());
    config.durability = match args.durability {
        DurabilityArg::Fsync => storage_node::Durability::Fsync,
        DurabilityArg::Async => storage_node::Durability::Async {
            flush_interval_ms: 10,
        },
    };
    config.cut_interval_us = args.cut_interval_us;
    config.cache_bytes_max = args.cache_mb * 1024 * 1024;
    config.segment_bytes_max = args.segment_mib * 1024 * 1024;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(gateway::serve::tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        tally_cli::roles::tls::install(tally_cli::roles::tls::RoleTls::load(cert, key, ca)?)?;
    }
    let node = Node::start(config).await?;
    let tokens = gateway::auth::Tokens::load(node.log.clone(), None)
        .await
        .context("reading the API tokens")?;
    tokens.set_rate_default(args.rate_per_token);
    tally_cli::roles::refuse_exposure(
        &[
            ("--http-addr", args.http_addr),
            ("--worker-addr", args.worker_addr),
        ],
        &tokens,
        args.insecure,
    )?;
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the HTTP gateway to {}", args.http_addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    // One gateway alone: every earlier run of it is gone, and this one takes over whatever
    // durable invocations they left unfinished.
    let (_peers, peers) = tokio::sync::watch::channel(gateway::invocations::Peers::alone(format!(
        "up.{:016x}",
        rand::random::<u64>()
    )));
    let setup = gateway::http::Setup {
        functions,
        peers,
        key_retention: tally_cli::config::idempotency_retention(args.idempotency_retention_s)
            .context("--idempotency-retention-s")?,
        workflow_retention: tally_cli::config::workflow_retention(args.workflow_retention_s)
            .context("--workflow-retention-s")?,
        object_retention: tally_cli::config::object_retention(args.object_retention_s)
            .context("--object-retention-s")?,
        packages: tally_cli::config::load_packages(&args.packages).context("--package")?,
        tokens: tokens.clone(),
        cluster: None,
        peer_ca: None,
    };
    let state = gateway::http::default_state(node.log.clone(), node.metrics.clone(), setup)
        .map_err(|e| anyhow::anyhow!("--functions: {e}"))?;
    gateway::triggers::start(&state, &triggers).await;
    let workers = tokio::net::TcpListener::bind(args.worker_addr)
        .await
        .with_context(|| format!("binding the worker address {}", args.worker_addr))?;
    let workers_addr = workers.local_addr().context("reading the bound address")?;
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
            .serve_with_incoming(tally_cli::roles::local::incoming(workers, "")),
    );
    let app = gateway::http::router(state);

    let r = &node.recovered;
    println!(
        "tally up: data in {} (view {}, {} records recovered{})",
        args.data_dir.display(),
        r.view.0,
        r.records,
        if r.truncated_tail_bytes > 0 {
            format!(", {} torn bytes truncated", r.truncated_tail_bytes)
        } else {
            String::new()
        }
    );
    println!("workers attach at {workers_addr}");
    println!("the log protocol (tally-client) at {workers_addr}");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    println!("try: curl -X POST {scheme}://{addr}/function/echo -d hi");
    std::io::stdout().flush().ok();

    let limits = gateway::serve::HttpLimits {
        header_timeout: Duration::from_millis(args.http_header_timeout_ms),
        body_timeout: Duration::from_millis(args.http_body_timeout_ms),
        idle_timeout: Duration::from_millis(args.http_idle_timeout_ms),
        connections_max: args.http_connections_max as usize,
    };
    gateway::serve::serve(listener, app, limits, tls, shutdown_signal())
        .await
        .context("serving HTTP")?;
    node.shutdown();
    let stats = node.store.stats();
    println!(
        "tally up: stopped ({} records in {} appends, {} metalog entries, {} fsyncs, {} bytes written)",
        stats.records, stats.appends, stats.metalog_entries, stats.fsyncs, stats.bytes_written
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// Prints `GATEWAY FUNCTION` lines: every function of every gateway asked.
async fn functions(args: FunctionsArgs) -> anyhow::Result<()> {
    let gateways: Vec<String> = match &args.dir {
        Some(dir) => {
            let manifest = tally_cli::cluster::Manifest::read(dir)?;
            tally_cli::cluster::gateway_urls(&manifest.nodes)
        }
        None => vec![args.addr.addr.clone()],
    };
    for gateway in gateways {
        let client = args.addr.client_of(&gateway)?;
        for name in client.functions().await? {
            println!("{gateway} {name}");
        }
    }
    Ok(())
}

async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let client = args.addr.client()?;
    let input = args.input.unwrap_or_default().into_bytes();
    let output = client
        .invoke(
            &args.name,
            input,
            args.book,
            args.idempotency_key.as_deref(),
        )
        .await?;
    let mut stdout = std::io::stdout();
    stdout.write_all(&output)?;
    if !output.ends_with(b"\n") {
        writeln!(stdout)?;
    }
    Ok(())
}

/// JSON from the command line; nothing is `null`.
fn json_arg(what: &str, text: Option<String>) -> anyhow::Result<serde_json::Value> {
    match text {
        None => Ok(serde_json::Value::Null),
        Some(text) => serde_json::from_str(&text)
            .with_context(|| format!("the {what} must be JSON, not {text:?}")),
    }
}

async fn workflow(cmd: WorkflowCommand) -> anyhow::Result<()> {
    let answer = match cmd {
        WorkflowCommand::Start {
            name,
            id,
            input,
            wait_ms,
            book,
            addr,
        } => {
            let input = json_arg("input", input)?;
            let wait = (wait_ms > 0).then_some(wait_ms);
            addr.client()?
                .workflow_start(&name, &id, input, book, wait)
                .await?
        }
        WorkflowCommand::Cancel { id, book, addr } => {
            addr.client()?.workflow_cancel(&id, book).await?
        }
        WorkflowCommand::List {
            status,
            limit,
            book,
            addr,
        } => {
            let list = addr
                .client()?
                .workflow_list(status.as_deref(), limit, book)
                .await?;
            for i in list["instances"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    i["id"].as_str().unwrap_or(""),
                    i["workflow"].as_str().unwrap_or(""),
                    i["status"].as_str().unwrap_or("")
                );
            }
            return Ok(());
        }
        WorkflowCommand::Show { id, book, addr } => addr.client()?.workflow_show(&id, book).await?,
        WorkflowCommand::Signal {
            id,
            name,
            payload,
            idempotency_key,
            book,
            addr,
        } => {
            let payload = json_arg("payload", payload)?;
            addr.client()?
                .workflow_signal(&id, &name, payload, book, idempotency_key.as_deref())
                .await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// JSON given on the command line, or read from stdin (`-`) or, with `file`, from a file.
fn json_input(what: &str, text: &str, file: bool) -> anyhow::Result<serde_json::Value> {
    let text = if text == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else if file {
        std::fs::read_to_string(text).with_context(|| format!("reading {text}"))?
    } else {
        text.to_string()
    };
    serde_json::from_str(&text).with_context(|| format!("the {what} must be JSON"))
}

async fn object(cmd: ObjectCommand) -> anyhow::Result<()> {
    let answer = match cmd {
        ObjectCommand::Get {
            collection,
            key,
            path,
            book,
            addr,
        } => {
            addr.client()?
                .object_get(&collection, &key, path.as_deref(), book)
                .await?
        }
        ObjectCommand::Set {
            collection,
            key,
            doc,
            book,
            addr,
        } => {
            let doc = json_input("document", &doc, false)?;
            addr.client()?
                .object_put(&collection, &key, &doc, book)
                .await?
        }
        ObjectCommand::Patch {
            collection,
            key,
            ops,
            book,
            addr,
        } => {
            let ops = json_input("list of operations", &ops, false)?;
            addr.client()?
                .object_patch(&collection, &key, &ops, book)
                .await?
        }
        ObjectCommand::Delete {
            collection,
            key,
            book,
            addr,
        } => {
            addr.client()?
                .object_delete(&collection, &key, book)
                .await?
        }
        ObjectCommand::History {
            collection,
            key,
            after,
            limit,
            json,
            book,
            addr,
        } => {
            let page = addr
                .client()?
                .object_history(&collection, &key, after, limit, book)
                .await?;
            if json {
                page
            } else {
                for call in page["calls"].as_array().into_iter().flatten() {
                    let outcome = match (&call["error"], &call["duplicate_of"]) {
                        (_, Value::Number(first)) => format!("duplicate of {first}"),
                        (Value::Null, _) => call["output"].to_string(),
                        (error, _) => format!("error: {}", error["message"].as_str().unwrap_or("")),
                    };
                    println!(
                        "{}\t{}\t{} -> {outcome}",
                        call["call"],
                        call["method"].as_str().unwrap_or(""),
                        call["input"]
                    );
                }
                for change in page["changes"].as_array().into_iter().flatten() {
                    let applied = match change["applied"].as_bool() {
                        Some(true) => "applied".to_string(),
                        _ => format!("not-applied ({})", change["reason"].as_str().unwrap_or("")),
                    };
                    println!(
                        "{}\t{}\t{applied}\t{}",
                        change["seqnum"],
                        change["kind"].as_str().unwrap_or(""),
                        change["ops"]
                    );
                }
                if let Some(next) = page["next"].as_u64() {
                    println!("# more: --after {next}");
                }
                return Ok(());
            }
        }
        ObjectCommand::Call {
            class,
            key,
            method,
            input,
            send,
            idempotency_key,
            book,
            addr,
        } => {
            let input = match input {
                Some(text) => json_input("input", &text, false)?,
                None => Value::Null,
            };
            addr.client()?
                .object_call(
                    (&class, &key, &method),
                    &input,
                    send,
                    idempotency_key.as_deref(),
                    book,
                )
                .await?
        }
        ObjectCommand::Tx { file, book, addr } => {
            let transaction = json_input("transaction", &file, true)?;
            addr.client()?.transaction(&transaction, book).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

#[derive(Subcommand)]
enum PackageCommand {
    /// Install a package of classes from its TOML file (replacing one of the same name), on
    /// every gateway.
    Put {
        /// The package file; its `name` (or the file's stem) names the package.
        file: PathBuf,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// List the installed packages and their classes, `PACKAGE CLASS METHODS` a line.
    List {
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Print a package: as declared, and each class resolved (inherited fields and methods).
    Show {
        name: String,
        #[command(flatten)]
        addr: AddrArg,
    },
}

async fn package(cmd: PackageCommand) -> anyhow::Result<()> {
    match cmd {
        PackageCommand::Put { file, addr } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let named = libobject::Package::from_toml(&text).map(|p| p.name).ok();
            let name = named
                .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .context("the package has no name")?;
            let described = addr.client()?.package_put(&name, text).await?;
            let classes: Vec<&str> = described["classes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            println!("installed {name}: {}", classes.join(", "));
        }
        PackageCommand::List { addr } => {
            let listed = addr.client()?.packages(None).await?;
            for package in listed["packages"].as_array().into_iter().flatten() {
                for class in package["classes"].as_array().into_iter().flatten() {
                    let methods: Vec<&String> = class["methods"]
                        .as_object()
                        .map(|m| m.keys().collect())
                        .unwrap_or_default();
                    println!(
                        "{}\t{}\t{}",
                        package["name"].as_str().unwrap_or(""),
                        class["name"].as_str().unwrap_or(""),
                        methods
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                }
            }
        }
        PackageCommand::Show { name, addr } => {
            let package = addr.client()?.packages(Some(&name)).await?;
            println!("{}", serde_json::to_string_pretty(&package)?);
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum CertCommand {
    /// Make a certificate authority: DIR/ca.pem (give it to clients: --ca, TALLY_CA) and
    /// DIR/ca-key.pem (keep it).
    Ca {
        #[arg(long, default_value = "tally-certs")]
        dir: PathBuf,
        /// The CA's name, as certificates show it.
        #[arg(long, default_value = "Tally local CA")]
        name: String,
    },
    /// Make NAME's certificate, signed by the CA in DIR: DIR/NAME.pem (then the CA's) and
    /// DIR/NAME-key.pem, for `tally up --tls-cert DIR/NAME.pem --tls-key DIR/NAME-key.pem`.
    Node {
        name: String,
        #[arg(long, default_value = "tally-certs")]
        dir: PathBuf,
        /// A host name or IP address clients reach the node by; once or more.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

fn cert(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Ca { dir, name } => {
            let made = tally_cli::cert::make_ca(&dir, &name)?;
            println!("{}", made.display());
        }
        CertCommand::Node { name, dir, hosts } => {
            let made = tally_cli::cert::make_node(&dir, &name, &hosts)?;
            let (_, key) = tally_cli::cert::node_files(&dir, &name);
            println!("{}", made.display());
            println!("{}", key.display());
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print it: the only time its secret is shown. The first token may be
    /// made without one, on a gateway that listens on loopback; from then on every request
    /// needs a token (this one needs scope admin).
    Create {
        /// What the token may do, once or more: admin, invoke, invoke:f,g, read, read:1,2,
        /// append, append:1,2, metrics, worker.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A name to tell it by in `tally token list`.
        #[arg(long, default_value = "")]
        name: String,
        /// Requests a second it may make at each gateway (default: the gateway's
        /// --rate-per-token); past it, 429.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=gateway::auth::RATE_PER_TOKEN_MAX as i64))]
        rate: Option<u32>,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// List the live tokens, `ID NAME SCOPES CREATED` a line (never their secrets).
    List {
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Revoke a token by its id (the 12 hex digits after `tly_`). The last admin token stays.
    Revoke {
        id: String,
        #[command(flatten)]
        addr: AddrArg,
    },
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            scopes,
            name,
            rate,
            addr,
        } => {
            let made = addr.client()?.token_create(&name, &scopes, rate).await?;
            let token = made["token"]
                .as_str()
                .context("the gateway answered no token")?;
            eprintln!(
                "token {} ({}): shown once; keep it (TALLY_TOKEN={token} for the CLI)",
                made["id"].as_str().unwrap_or("?"),
                scopes.join(" ")
            );
            println!("{token}");
        }
        TokenCommand::List { addr } => {
            let listed = addr.client()?.tokens().await?;
            for token in listed["tokens"].as_array().into_iter().flatten() {
                let scopes: Vec<&str> = token["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .collect();
                println!(
                    "{}\t{}\t{}\t{}",
                    token["id"].as_str().unwrap_or(""),
                    token["name"].as_str().unwrap_or(""),
                    scopes.join(" "),
                    token["created_ms"].as_u64().unwrap_or(0)
                );
            }
        }
        TokenCommand::Revoke { id, addr } => {
            addr.client()?.token_revoke(&id).await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

async fn queue(cmd: QueueCommand) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create {
            name,
            shards,
            groups,
            book,
            addr,
        } => {
            let client = addr.client()?;
            let made = client.queue_create(&name, shards, book).await?;
            for group in &groups {
                client.queue_create_group(&name, group, book).await?;
            }
            println!("{name}: {} shard(s), groups {groups:?}", made["shards"]);
        }
        QueueCommand::Push {
            name,
            data,
            key,
            shards,
            book,
            addr,
        } => {
            let data = if data == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                    .context("reading stdin")?;
                bytes
            } else {
                data.into_bytes()
            };
            let pushed = addr
                .client()?
                .queue_push(&name, data, key.as_deref(), shards, book)
                .await?;
            println!("{}", pushed["id"].as_str().unwrap_or_default());
        }
        QueueCommand::Pop {
            name,
            group,
            wait_ms,
            visibility_timeout_ms,
            ack,
            book,
            addr,
        } => {
            let client = addr.client()?;
            let Some(delivery) = client
                .queue_pop(&name, &group, wait_ms, visibility_timeout_ms, book)
                .await?
            else {
                eprintln!("nothing in {name} for {group} within {wait_ms} ms");
                std::process::exit(2);
            };
            let id = delivery["id"].as_str().unwrap_or_default();
            let receipt = delivery["receipt"].as_u64().unwrap_or_default();
            let data = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                delivery["data"].as_str().unwrap_or_default(),
            )
            .context("the message is not base64")?;
            eprintln!("{id} {} {receipt}", delivery["deliveries"]);
            std::io::Write::write_all(&mut std::io::stdout(), &data)?;
            println!();
            if ack {
                client.queue_ack(&name, &group, id, receipt, book).await?;
            }
        }
        QueueCommand::Ack {
            name,
            group,
            id,
            receipt,
            book,
            addr,
        } => {
            addr.client()?
                .queue_ack(&name, &group, &id, receipt, book)
                .await?;
        }
        QueueCommand::Stat { name, book, addr } => {
            let stat = addr.client()?.queue_stat(&name, book).await?;
            println!("{}", serde_json::to_string_pretty(&stat)?);
        }
    }
    Ok(())
}

async fn log(cmd: LogCommand) -> anyhow::Result<()> {
    match cmd {
        LogCommand::Append {
            addr,
            book,
            tags,
            data,
        } => {
            let seqnum = addr
                .client()?
                .append(book, &tags, data.into_bytes())
                .await?;
            println!("{seqnum}");
        }
        LogCommand::Read {
            addr,
            book,
            tag,
            from,
            limit,
        } => {
            let client = addr.client()?;
            let mut from = from;
            let mut left = limit.unwrap_or(usize::MAX);
            while left > 0 {
                let (records, next) = client.read(book, tag, from, left.min(1000)).await?;
                for r in &records {
                    println!("{}", r.line());
                }
                left -= records.len().min(left);
                match next {
                    Some(n) if !records.is_empty() => from = n,
                    _ => break,
                }
            }
        }
        LogCommand::Tail {
            addr,
            book,
            tag,
            from,
        } => {
            let client = addr.client()?;
            let mut from = match from {
                Some(f) => f,
                None => {
                    // Start after the current tail: walk to the end of the stream.
                    let mut from = 0;
                    loop {
                        let (records, next) = client.read(book, tag, from, 1000).await?;
                        if let Some(last) = records.last() {
                            from = last.seqnum + 1;
                        }
                        if next.is_none() {
                            break from;
                        }
                    }
                }
            };
            loop {
                if let Some(r) = client.next_blocking(book, tag, from, 30_000).await? {
                    println!("{}", r.line());
                    std::io::stdout().flush().ok();
                    from = r.seqnum + 1;
                }
            }
        }
    }
    Ok(())
}

async fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Append {
            addr,
            load,
            tags,
            book,
            protocol,
            json,
            ack_log,
        } => {
            anyhow::ensure!(load.clients > 0, "--clients must be at least 1");
            anyhow::ensure!(
                load.record_bytes > 0 && load.record_bytes <= logbook::RECORD_BYTES_MAX,
                "--record-bytes must be 1..={}",
                logbook::RECORD_BYTES_MAX
            );
            // The log protocol's default address is the worker address, not the HTTP one.
            let addr = match protocol {
                ProtocolArg::Grpc if addr == [DEFAULT_HTTP_ADDR] => {
                    vec![DEFAULT_WORKER_ADDR.to_string()]
                }
                _ => addr,
            };
            let config = bench::AppendConfig {
                addrs: addr,
                protocol: match protocol {
                    ProtocolArg::Http => bench::Protocol::Http,
                    ProtocolArg::Grpc => bench::Protocol::Grpc,
                },
                clients: load.clients,
                record_bytes: load.record_bytes,
                duration: load.duration()?,
                tags,
                book,
                warmup: Duration::ZERO,
                ack_log,
            };
            bench::run_append(config, true)
                .await?
                .show(json.as_deref())?;
        }
        BenchCommand::Call {
            name,
            addr,
            url,
            input,
            clients,
            duration,
            warmup,
            idempotency_keys,
            json,
        } => {
            anyhow::ensure!(duration > 0, "--duration must be at least 1 second");
            let urls = match name {
                Some(name) => addr
                    .iter()
                    .map(|addr| bench::function_url(addr, &name))
                    .collect::<anyhow::Result<Vec<_>>>()?,
                None => url,
            };
            let config = bench::CallConfig {
                urls,
                input,
                clients,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup),
                idempotency_keys,
                expect_status: None,
            };
            let report = bench::run_calls(config, true).await?;
            report.print_human();
            if let Some(path) = json {
                report.write_json(&path)?;
                println!("wrote {}", path.display());
            }
        }
        BenchCommand::Workflow {
            name,
            addr,
            input,
            clients,
            duration,
            warmup,
            wait_ms,
            json,
        } => {
            anyhow::ensure!(duration > 0, "--duration must be at least 1 second");
            let config = bench::WorkflowConfig {
                addrs: addr,
                name,
                input,
                clients,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup),
                wait_ms,
            };
            let report = bench::run_workflows(config, true).await?;
            report.print_human();
            if let Some(path) = json {
                report.write_json(&path)?;
                println!("wrote {}", path.display());
            }
        }
        BenchCommand::Store {
            workload,
            addr,
            postgres,
            accounts,
            distribution,
            theta,
            mode,
            users,
            follows,
            clients,
            duration,
            warmup,
            seed,
            cpu_pids,
            json,
        } => {
            let target = match postgres {
                Some(url) => bench::StoreTarget::Postgres { url },
                None => bench::StoreTarget::Tally {
                    url: bench::base_url(&addr)?,
                },
            };
            let workload = match workload.as_str() {
                "ycsbt" => bench::Workload::Ycsbt {
                    accounts,
                    distribution: match distribution.as_str() {
                        "zipfian" => bench::Distribution::Zipfian { theta },
                        _ => bench::Distribution::Uniform,
                    },
                    mode: match mode.as_str() {
                        "interactive" => bench::TransferMode::Interactive,
                        _ => bench::TransferMode::Oneshot,
                    },
                },
                _ => bench::Workload::Retwis { users, follows },
            };
            let config = bench::StoreConfig {
                target,
                workload,
                clients,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup),
                seed,
                cpu_pids,
            };
            let report = bench::run_store(config, true).await?;
            report.print_human();
            if let Some(path) = json {
                report.write_json(&path)?;
                println!("wrote {}", path.display());
            }
        }
        BenchCommand::Queue(args) => args.run().await?,
        BenchCommand::Object(args) => args.run().await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_call_takes_a_function_name_or_urls_not_both() {
        let parses = |args: &[&str]| {
            let argv = ["tally", "bench", "call"].iter().chain(args).copied();
            Cli::try_parse_from(argv).is_ok()
        };
        assert!(parses(&["noop"]));
        assert!(parses(&["noop", "--addr", "127.0.0.1:1,127.0.0.1:2"]));
        assert!(parses(&["--url", "http://127.0.0.1:8080/Bench/noop"]));
        assert!(!parses(&[]));
        assert!(!parses(&[
            "noop",
            "--url",
            "http://127.0.0.1:8080/Bench/noop"
        ]));
        assert!(!parses(&[
            "--addr",
            "127.0.0.1:1",
            "--url",
            "http://127.0.0.1:8080/B/n"
        ]));
    }

    #[test]
    fn bench_workflow_takes_a_name_and_a_gateway_address_or_url() {
        let parse = |args: &[&str]| {
            let argv = ["tally", "bench", "workflow"].iter().chain(args).copied();
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Bench(BenchCommand::Workflow { addr, input, .. })) => {
                    Some((addr, input))
                }
                _ => None,
            }
        };
        assert_eq!(
            parse(&["steps"]),
            Some((
                vec![DEFAULT_HTTP_ADDR.to_string()],
                r#"{"steps":10}"#.to_string()
            ))
        );
        let (addr, _) = parse(&["steps", "--url", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(addr, ["http://127.0.0.1:1"]);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn bench_store_takes_a_workload_and_tally_or_postgres_not_both() {
        let parses = |args: &[&str]| {
            let argv = ["tally", "bench", "store"].iter().chain(args).copied();
            Cli::try_parse_from(argv).is_ok()
        };
        assert!(parses(&[
            "ycsbt",
            "--distribution",
            "zipfian",
            "--mode",
            "interactive"
        ]));
        assert!(parses(&[
            "retwis",
            "--postgres",
            "postgresql://postgres@127.0.0.1:1/db"
        ]));
        assert!(!parses(&[]));
        assert!(!parses(&["tpcc"]));
        assert!(!parses(&["ycsbt", "--mode", "batch"]));
        assert!(!parses(&[
            "ycsbt",
            "--addr",
            "127.0.0.1:1",
            "--postgres",
            "postgresql://postgres@127.0.0.1:1/db"
        ]));
    }

    #[test]
    fn bench_queue_takes_producers_consumers_and_one_system() {
        let parse = |args: &[&str]| {
            let argv = ["tally", "bench", "queue"].iter().chain(args).copied();
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Bench(BenchCommand::Queue(args))) => Some(args),
                _ => None,
            }
        };
        let args = parse(&["--producers", "16", "--consumers", "8"]).unwrap();
        let config = args.config().unwrap();
        assert_eq!((config.producers, config.consumers), (16, 8));
        assert_eq!(
            config.target,
            bench::QueueTarget::Tally {
                url: format!("http://{DEFAULT_HTTP_ADDR}"),
                shards: 8
            }
        );
        assert!(parse(&["--redis", "redis://127.0.0.1:1"]).is_some());
        assert!(parse(&[
            "--nats",
            "nats://127.0.0.1:1",
            "--redis",
            "redis://127.0.0.1:1"
        ])
        .is_none());
    }

    #[test]
    fn bench_object_takes_a_workload_and_tally_or_restate() {
        let parse = |args: &[&str]| {
            let argv = ["tally", "bench", "object"].iter().chain(args).copied();
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Bench(BenchCommand::Object(args))) => Some(args),
                _ => None,
            }
        };
        let config = parse(&["--workload", "transfer", "--style", "saga"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(
            config.target,
            bench::ObjectTarget::Tally {
                url: format!("http://{DEFAULT_HTTP_ADDR}")
            }
        );
        assert!(matches!(
            config.workload,
            bench::ObjectWorkload::Transfer {
                style: bench::TxnStyle::Saga,
                ..
            }
        ));
        let args = parse(&["--workload", "counter", "--restate", "http://127.0.0.1:1"]).unwrap();
        assert!(matches!(
            args.config().unwrap().target,
            bench::ObjectTarget::Restate { .. }
        ));
        assert!(parse(&[]).is_none());
        assert!(parse(&[
            "--workload",
            "counter",
            "--addr",
            "127.0.0.1:1",
            "--restate",
            "http://127.0.0.1:2"
        ])
        .is_none());
    }

    /// Parses `tally <args>` as a role command and returns its config file and overrides.
    fn role_args(args: &[&str]) -> RoleArgs {
        let cli = Cli::try_parse_from(std::iter::once("tally").chain(args.iter().copied()))
            .expect("the arguments parse");
        match cli.command {
            Command::Sequencer(a) => a.into(),
            Command::Storage(a) => a.into(),
            Command::Gateway(a) => a.into(),
            _ => panic!("not a role command"),
        }
    }

    #[test]
    fn role_flags_become_config_overrides() {
        let a = role_args(&[
            "storage",
            "--config",
            "s.toml",
            "--id",
            "11",
            "--data-dir",
            "/d",
            "--listen",
            "0.0.0.0:7100",
            "--durability",
            "async",
            "--flush-interval-ms",
            "3",
            "--sequencers",
            "0=h:1,1=h:2",
        ]);
        assert_eq!(a.config, Some(PathBuf::from("s.toml")));
        let o = a.overrides;
        assert_eq!(o.id, Some(11));
        assert_eq!(o.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(o.listen.as_deref(), Some("0.0.0.0:7100"));
        assert_eq!(o.cluster.durability, Some(DurabilityMode::Async));
        assert_eq!(o.cluster.flush_interval_ms, Some(3));
        assert_eq!(o.cluster.sequencers.map(|m| m.len()), Some(2));
        assert_eq!(o.role, None);

        let o = role_args(&["gateway", "--http", "0.0.0.0:0", "--cache-mb", "64"]).overrides;
        assert_eq!(o.http.as_deref(), Some("0.0.0.0:0"));
        assert_eq!(o.cache_mb, Some(64));

        let o = role_args(&["sequencer", "--replication", "2", "--raft-tick-ms", "10"]).overrides;
        assert_eq!(o.cluster.replication, Some(2));
        assert_eq!(o.cluster.raft_tick_ms, Some(10));
    }
}
