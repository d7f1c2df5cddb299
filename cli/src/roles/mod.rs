//! The roles of a multi-process cluster, each a long-running process: `tally sequencer`,
//! `tally storage` and `tally gateway`. They talk gRPC (`logbook::rpc`, proto/tally.proto).
//! Each `Options` struct is what a role needs, built from the node's TOML file and flags
//! (`crate::config`). Every role prints one line `tally <role> <id> ready: <addr>` on stdout
//! once it serves, which `tally cluster up` and tests wait for.

pub mod gateway;
pub mod sequencer;
pub mod storage;

use logbook::wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use storage_node::Durability;

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
}

/// The `http://` URI of a gRPC address given as `host:port` (or already a URI).
pub fn grpc_uri(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}
