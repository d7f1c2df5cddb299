//! A cluster node's configuration: one TOML file per node (`tally <role> --config FILE`),
//! overridable by flags, checked and turned into the `Options` of its role (`crate::roles`).
//!
//! The file has the node's own keys (`role`, `id`, `data_dir`, `listen`, `http`, `cache_mb`)
//! and a `[cluster]` section that is the same on every node (the members and the cluster-wide
//! settings). The layout is documented in the README and `cli/examples/cluster.toml`.
//!
//! Identity and safety values (`role`, `id`, `data_dir`, the `sequencers` map, and the
//! `storage` map on sequencers and storage nodes) have no defaults: a node that guessed them
//! could join the wrong group or write over another node's data. Every error is one line that
//! names the key and where it came from (the file, or the flag that overrode it).
//!
//! This module reads the one file it is given and resolves addresses; it starts nothing.

use crate::roles::tls::RoleTls;
use crate::roles::{
    GatewayOptions, SequencerOptions, StorageOptions, CUT_INTERVAL_US_DEFAULT,
    ELECTION_TICKS_DEFAULT, GATEWAY_TIMEOUT_MS_DEFAULT, RAFT_TICK_MS_DEFAULT, REPLICATION_DEFAULT,
};
use anyhow::{anyhow, bail, Context as _};
use logbook::wire::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use storage_node::{Durability, SEGMENT_BYTES_MAX_DEFAULT};

/// With `durability = "async"`, a storage node syncs its writes this often.
pub const FLUSH_INTERVAL_MS_DEFAULT: u64 = 5;
/// A gateway's record cache, in MiB.
pub const CACHE_MB_DEFAULT: usize = 256;
/// A storage node's segment size (`segment_mib`, `tally up --segment-mib`), in MiB.
pub const SEGMENT_MIB_DEFAULT: u64 = SEGMENT_BYTES_MAX_DEFAULT / (1024 * 1024);
pub const SEGMENT_MIB_MAX: u64 = 4096;
pub const CACHE_MB_MAX: usize = 1024 * 1024;
/// A gateway's HTTP address when none is given: loopback, like `tally up`.
pub const GATEWAY_HTTP_DEFAULT: &str = "127.0.0.1:8080";
/// Where a gateway takes workers unless its file says otherwise.
pub const GATEWAY_WORKERS_DEFAULT: &str = "127.0.0.1:8081";
/// Appends a gateway holds until they are ordered, at most.
pub const PENDING_APPENDS_MAX_DEFAULT: usize = 100_000;
/// Upper bounds of the durations, so a typo in units is an error rather than a cluster that
/// takes an hour to notice a failure.
pub const CUT_INTERVAL_US_MAX: u64 = 1_000_000;
pub const FLUSH_INTERVAL_MS_MAX: u64 = 60_000;
pub const GATEWAY_TIMEOUT_MS_MAX: u64 = 600_000;
pub const RAFT_TICK_MS_MAX: u64 = 10_000;

/// The role a node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Sequencer,
    Storage,
    Gateway,
}

impl Role {
    /// The name used in files, commands and ready lines.
    pub fn name(self) -> &'static str {
        match self {
            Role::Sequencer => "sequencer",
            Role::Storage => "storage",
            Role::Gateway => "gateway",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When a storage node acknowledges a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// After its fdatasync (group commit).
    Fsync,
    /// Once written (replicated in memory); synced every `flush_interval_ms`.
    Async,
}

impl DurabilityMode {
    pub fn name(self) -> &'static str {
        match self {
            DurabilityMode::Fsync => "fsync",
            DurabilityMode::Async => "async",
        }
    }
}

/// A node file as written, or the flags that override one: every key optional, so a missing
/// one can be reported by name. Map keys are node ids as strings (TOML keys are strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub role: Option<Role>,
    pub id: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub http: Option<String>,
    pub cache_mb: Option<usize>,
    /// The address worker processes attach at (gateways).
    pub workers: Option<String>,
    /// How long an idempotency key names its invocation, in seconds (gateways).
    pub idempotency_retention_s: Option<u64>,
    /// How long an ended workflow instance is kept before it is collected, in seconds
    /// (gateways).
    pub workflow_retention_s: Option<u64>,
    /// How long an object's versions are kept before they are collected, in seconds
    /// (gateways).
    pub object_retention_s: Option<u64>,
    /// The HTTP limits against slow and greedy clients (gateways): the time to send a
    /// request's headers, its body, the idle time between requests, in ms, and the open
    /// connections at most.
    pub http_header_timeout_ms: Option<u64>,
    pub http_body_timeout_ms: Option<u64>,
    pub http_idle_timeout_ms: Option<u64>,
    pub http_connections_max: Option<u64>,
    /// Serve beyond loopback while no API token exists (gateways).
    pub insecure: Option<bool>,
    /// Requests a second each API token may make at this gateway, unless made with its own
    /// rate (gateways; 0: no limit).
    pub rate_per_token: Option<u32>,
    /// Size at which a segment file of the log is sealed and the next begun, in MiB (storage
    /// nodes; 64). Space comes back from sealed segments only.
    pub segment_mib: Option<u64>,
    #[serde(default)]
    pub cluster: ClusterFile,
    /// `[functions.NAME]` tables (gateways): each function's limits.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionFile>,
    /// Package files of classes to install (gateways), relative to the config file.
    pub packages: Option<Vec<PathBuf>>,
    /// `[tls]`: the node's certificate, its key and the cluster's CA (`load_tls`).
    pub tls: Option<TlsFile>,
}

/// The `[tls]` section of a node file: PEM files, relative to the file. With it, the node's
/// roles speak mutual TLS to each other (each presents its certificate, and trusts only
/// certificates the CA signed), and a gateway serves HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The `[tls]` section of the node file at `path` (of one role or several), its files read
/// and checked; `None` without one.
pub fn load_tls(path: &Path) -> anyhow::Result<Option<RoleTls>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let tls = if hosts_roles(&text) {
        parse_host(path, &text)?.tls
    } else {
        parse_file(path, &text)?.tls
    };
    tls_of(path, tls.as_ref())
}

/// The `[tls]` section `tls` of the node file at `path`, its files (relative to it) read and
/// checked.
fn tls_of(path: &Path, tls: Option<&TlsFile>) -> anyhow::Result<Option<RoleTls>> {
    let Some(tls) = tls else {
        return Ok(None);
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let at = |p: &Path| {
        if p.is_relative() {
            dir.join(p)
        } else {
            p.to_path_buf()
        }
    };
    RoleTls::load(&at(&tls.cert), &at(&tls.key), &at(&tls.ca))
        .map(Some)
        .with_context(|| format!("the [tls] section of {}", path.display()))
}

/// Longest an HTTP timeout may be, in ms: a day.
pub const HTTP_TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Most connections a gateway's HTTP API may be allowed at once.
pub const HTTP_CONNECTIONS_MAX: u64 = 1_000_000;

/// Longest an idempotency key may be kept: ten years.
pub const IDEMPOTENCY_RETENTION_S_MAX: u64 = 10 * 365 * 24 * 60 * 60;

/// The retention of idempotency keys, `seconds` if given (1 s to ten years), else the default.
pub fn idempotency_retention(seconds: Option<u64>) -> anyhow::Result<std::time::Duration> {
    retention(seconds, ::gateway::invocations::KEY_RETENTION_DEFAULT)
}

/// The retention of ended workflow instances, `seconds` if given (1 s to ten years), else
/// the default (a week).
pub fn workflow_retention(seconds: Option<u64>) -> anyhow::Result<std::time::Duration> {
    retention(seconds, ::gateway::http::WORKFLOW_RETENTION_DEFAULT)
}

/// The retention of object versions, `seconds` if given (1 s to ten years), else the
/// default (a day).
pub fn object_retention(seconds: Option<u64>) -> anyhow::Result<std::time::Duration> {
    retention(seconds, ::gateway::http::OBJECT_RETENTION_DEFAULT)
}

fn retention(
    seconds: Option<u64>,
    default: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    match seconds {
        None => Ok(default),
        Some(s) if (1..=IDEMPOTENCY_RETENTION_S_MAX).contains(&s) => {
            Ok(std::time::Duration::from_secs(s))
        }
        Some(s) => bail!("{s} s; it must be 1..={IDEMPOTENCY_RETENTION_S_MAX} seconds"),
    }
}

/// A `[functions.NAME]` table: a function's limits, each optional (the default otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionFile {
    pub max_concurrency: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<u32>,
    pub backoff_ms: Option<u64>,
    /// A queue whose every message invokes the function once (gateway/src/triggers.rs).
    pub queue: Option<String>,
    /// The queue's book (default 0).
    pub queue_book: Option<u32>,
}

/// The most retries of one asynchronous call a config may ask for.
pub const RETRIES_MAX: u32 = 100;

/// Checks `[functions.NAME]` tables into each function's limits; `source` names where they
/// came from, for errors.
pub fn function_configs(
    tables: &BTreeMap<String, FunctionFile>,
    source: &str,
) -> anyhow::Result<BTreeMap<String, gateway::functions::FunctionConfig>> {
    let mut configs = BTreeMap::new();
    for (name, table) in tables {
        let at = |key: &str| format!("`functions.{name}.{key}` in {source}");
        let mut config = gateway::functions::FunctionConfig::default();
        if let Some(n) = table.max_concurrency {
            if n == 0 || n > 1_000_000 {
                bail!("{} is {n}; it must be 1..=1000000", at("max_concurrency"));
            }
            config.max_concurrency = n;
        }
        if let Some(ms) = table.timeout_ms {
            if ms == 0 || ms > 86_400_000 {
                bail!(
                    "{} is {ms}; it must be 1..=86400000 (a day)",
                    at("timeout_ms")
                );
            }
            config.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = table.retries {
            if n > RETRIES_MAX {
                bail!("{} is {n}; it must be 0..={RETRIES_MAX}", at("retries"));
            }
            config.retries = n;
        }
        if let Some(ms) = table.backoff_ms {
            if ms == 0 || ms > 60_000 {
                bail!("{} is {ms}; it must be 1..=60000", at("backoff_ms"));
            }
            config.backoff = Duration::from_millis(ms);
        }
        configs.insert(name.clone(), config);
    }
    Ok(configs)
}

/// The functions `[functions.NAME]` tables trigger by a queue (`queue = "..."`), checked.
pub fn queue_triggers(
    tables: &BTreeMap<String, FunctionFile>,
    source: &str,
) -> anyhow::Result<Vec<gateway::triggers::QueueTrigger>> {
    let mut triggers = Vec::new();
    for (name, table) in tables {
        let at = |key: &str| format!("`functions.{name}.{key}` in {source}");
        let Some(queue) = &table.queue else {
            if table.queue_book.is_some() {
                bail!("{} needs `queue`", at("queue_book"));
            }
            continue;
        };
        if queue.is_empty() || queue.len() > libqueue::NAME_BYTES_MAX {
            bail!(
                "{} must be 1 to {} bytes",
                at("queue"),
                libqueue::NAME_BYTES_MAX
            );
        }
        let book = table.queue_book.unwrap_or(0);
        if book == gateway::invocations::INVOCATIONS_BOOK.0 {
            bail!(
                "{} is {book}, the book invocations are kept in",
                at("queue_book")
            );
        }
        triggers.push(gateway::triggers::QueueTrigger {
            function: name.clone(),
            queue: queue.clone(),
            book: logbook::BookId(book),
        });
    }
    Ok(triggers)
}

/// The limits of functions, by name, and the functions queues trigger.
pub type Functions = (
    BTreeMap<String, gateway::functions::FunctionConfig>,
    Vec<gateway::triggers::QueueTrigger>,
);

/// A file of `[functions.NAME]` tables only (`tally up --functions FILE`).
pub fn load_functions(path: &Path) -> anyhow::Result<Functions> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FunctionsOnly {
        #[serde(default)]
        functions: BTreeMap<String, FunctionFile>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: FunctionsOnly = toml::from_str(&text)
        .map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
    let source = path.display().to_string();
    Ok((
        function_configs(&file.functions, &source)?,
        queue_triggers(&file.functions, &source)?,
    ))
}

/// The packages in `paths` (TOML files, `tally up --package FILE`), checked.
pub fn load_packages(paths: &[PathBuf]) -> anyhow::Result<Vec<libobject::Package>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the package {}", path.display()))?;
            libobject::Package::from_toml(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
        })
        .collect()
}

/// The `[cluster]` section: the same on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub sequencers: Option<BTreeMap<String, String>>,
    pub storage: Option<BTreeMap<String, String>>,
    pub replication: Option<usize>,
    pub cut_interval_us: Option<u64>,
    pub durability: Option<DurabilityMode>,
    pub flush_interval_ms: Option<u64>,
    pub gateway_timeout_ms: Option<u64>,
    pub raft_tick_ms: Option<u64>,
}

/// A role's options, ready to run.
#[derive(Debug, Clone)]
pub enum RoleOptions {
    Sequencer(SequencerOptions),
    Storage(StorageOptions),
    Gateway(GatewayOptions),
}

/// Reads `path` (if any), applies `flags` over it, and checks the result as the config of a
/// `role` node.
/// With them, the file's `[tls]` section, its files read and checked (`load_tls`).
pub fn load(
    role: Role,
    path: Option<&Path>,
    flags: NodeFile,
) -> anyhow::Result<(RoleOptions, Option<RoleTls>)> {
    let file = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the config file {}", path.display()))?;
            Some((path, parse_file(path, &text)?))
        }
        None => None,
    };
    let tls = match &file {
        Some((path, file)) => tls_of(path, file.tls.as_ref())?,
        None => None,
    };
    Ok((resolve(role, file, flags)?, tls))
}

/// Parses the text of a node file; errors name the file and line.
pub fn parse_file(path: &Path, text: &str) -> anyhow::Result<NodeFile> {
    parse(path, text)
}

/// A node file of one process that hosts several roles (`tally node --config FILE`): the
/// roles it runs, a table per role with that role's own keys (as a one-role file has them),
/// the directory the roles' data directories default under, and the `[cluster]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub roles: Vec<Role>,
    /// A sequencer's data directory defaults to `DATA_DIR/sequencer`, a storage node's to
    /// `DATA_DIR/storage`.
    pub data_dir: Option<PathBuf>,
    pub sequencer: Option<NodeFile>,
    pub storage: Option<NodeFile>,
    pub gateway: Option<NodeFile>,
    #[serde(default)]
    pub cluster: ClusterFile,
    /// Shared by the node's roles: one process, one certificate.
    pub tls: Option<TlsFile>,
}

impl HostFile {
    /// Checks the roles against the tables; errors name the file.
    fn check(&self, path: &Path) -> anyhow::Result<()> {
        let at = path.display();
        if self.roles.is_empty() {
            bail!("{at}: `roles` is empty; list sequencer, storage and/or gateway");
        }
        let mut seen = BTreeSet::new();
        for role in &self.roles {
            if !seen.insert(*role) {
                bail!("{at}: `roles` lists {role} twice");
            }
        }
        for role in [Role::Sequencer, Role::Storage, Role::Gateway] {
            match (seen.contains(&role), self.table(role).is_some()) {
                (true, false) => {
                    bail!("{at}: `roles` lists {role}, but there is no [{role}] table")
                }
                (false, true) => {
                    bail!("{at}: there is a [{role}] table, but `roles` does not list {role}")
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn table(&self, role: Role) -> Option<&NodeFile> {
        match role {
            Role::Sequencer => self.sequencer.as_ref(),
            Role::Storage => self.storage.as_ref(),
            Role::Gateway => self.gateway.as_ref(),
        }
    }

    /// Role `role`'s part as a one-role node file would say it: its table, the shared
    /// `[cluster]` section, and its data directory under `data_dir` unless the table names one.
    fn role_file(&self, path: &Path, role: Role) -> anyhow::Result<NodeFile> {
        let at = path.display();
        let Some(table) = self.table(role) else {
            bail!("{at}: this node runs no {role} (`roles` does not list it)");
        };
        if table.role.is_some_and(|r| r != role) {
            bail!(
                "{at}: the [{role}] table says role = \"{}\"",
                table.role.unwrap()
            );
        }
        if table.cluster != ClusterFile::default() {
            bail!("{at}: [{role}.cluster] is not read; the [cluster] section is shared by the node's roles");
        }
        if table.tls.is_some() {
            bail!(
                "{at}: [{role}.tls] is not read; the [tls] section is shared by the node's roles"
            );
        }
        let mut file = table.clone();
        file.role = Some(role);
        file.cluster = self.cluster.clone();
        file.tls = self.tls.clone();
        if role != Role::Gateway && file.data_dir.is_none() {
            file.data_dir = self.data_dir.as_ref().map(|d| d.join(role.name()));
        }
        Ok(file)
    }
}

impl NodeFile {
    /// The gRPC address the `[cluster]` section says the other nodes dial this node at: its id
    /// in its role's map (none for a gateway, which is no member of one).
    pub fn dialled_addr(&self) -> Option<String> {
        let map = match self.role? {
            Role::Sequencer => &self.cluster.sequencers,
            Role::Storage => &self.cluster.storage,
            Role::Gateway => &None,
        };
        map.as_ref()?.get(&self.id?.to_string()).cloned()
    }
}

/// Whether `text` is a node file of several roles (it has `roles`) rather than of one.
pub fn hosts_roles(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|table| table.contains_key("roles"))
}

/// Role `role`'s file, from a one-role node file or from a node file of several roles.
pub fn role_file(path: &Path, text: &str, role: Role) -> anyhow::Result<NodeFile> {
    if !hosts_roles(text) {
        return parse_file(path, text);
    }
    parse_host(path, text)?.role_file(path, role)
}

/// Parses a node file of several roles and checks its roles against its tables.
fn parse_host(path: &Path, text: &str) -> anyhow::Result<HostFile> {
    let host: HostFile = parse(path, text)?;
    host.check(path)?;
    Ok(host)
}

/// Reads a node file of several roles (`tally node --config FILE`) and checks each role's
/// part as that role would; returns their options in the file's order, each with the address
/// the `[cluster]` section says the others dial it at (none for a gateway).
/// With them, the file's `[tls]` section, shared by the roles, its files read and checked.
pub fn load_host(path: &Path) -> anyhow::Result<HostRoles> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    if !hosts_roles(&text) {
        bail!(
            "{}: no `roles` list; `tally node` runs the roles it lists (`tally <role> --config` \
             runs a one-role file)",
            path.display()
        );
    }
    let host = parse_host(path, &text)?;
    let roles = host
        .roles
        .iter()
        .map(|&role| {
            let file = host.role_file(path, role)?;
            let dialled = file.dialled_addr();
            let options = resolve(role, Some((path, file)), NodeFile::default())
                .with_context(|| format!("the [{role}] table of {}", path.display()))?;
            Ok((options, dialled))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((roles, tls_of(path, host.tls.as_ref())?))
}

/// The roles of a node file of several roles, each with the address the others dial it at
/// (none for a gateway), and the file's TLS.
pub type HostRoles = (Vec<(RoleOptions, Option<String>)>, Option<RoleTls>);

/// Parses a TOML file; errors name the file and line.
fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', " ");
        match line {
            Some(line) => anyhow!("{}:{line}: {message}", path.display()),
            None => anyhow!("{}: {message}", path.display()),
        }
    })
}

/// Checks a parsed file (with its path) overridden by `flags` as the config of a `role` node.
pub fn resolve(
    role: Role,
    file: Option<(&Path, NodeFile)>,
    flags: NodeFile,
) -> anyhow::Result<RoleOptions> {
    let (path, file) = match file {
        Some((path, file)) => (Some(path.to_path_buf()), file),
        None => (None, NodeFile::default()),
    };
    let merged = Merged::new(path, file, flags);
    merged.check(role)
}

/// Parses `--sequencers 0=host:port,1=host:port` into the map a file would hold; the ids and
/// addresses are checked with the rest of the config.
pub fn parse_node_map(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not ID=HOST:PORT"))?;
        if map
            .insert(id.trim().to_string(), addr.trim().to_string())
            .is_some()
        {
            return Err(format!("node {} is listed twice", id.trim()));
        }
    }
    if map.is_empty() {
        return Err("no nodes given (ID=HOST:PORT,...)".into());
    }
    Ok(map)
}

/// A file with flags applied over it, remembering which keys the flags set so that an error
/// names the flag or the file, whichever the bad value came from.
struct Merged {
    path: Option<PathBuf>,
    values: NodeFile,
    from_flags: BTreeSet<&'static str>,
}

impl Merged {
    fn new(path: Option<PathBuf>, file: NodeFile, flags: NodeFile) -> Merged {
        let mut values = file;
        let mut from_flags = BTreeSet::new();
        macro_rules! over {
            ($($field:ident).+, $key:literal) => {
                if flags.$($field).+.is_some() {
                    values.$($field).+ = flags.$($field).+;
                    from_flags.insert($key);
                }
            };
        }
        over!(role, "role");
        over!(id, "id");
        over!(data_dir, "data_dir");
        over!(listen, "listen");
        over!(http, "http");
        over!(cache_mb, "cache_mb");
        over!(workers, "workers");
        over!(insecure, "insecure");
        over!(rate_per_token, "rate_per_token");
        over!(idempotency_retention_s, "idempotency_retention_s");
        over!(workflow_retention_s, "workflow_retention_s");
        over!(object_retention_s, "object_retention_s");
        over!(cluster.sequencers, "sequencers");
        over!(cluster.storage, "storage");
        over!(cluster.replication, "replication");
        over!(cluster.cut_interval_us, "cut_interval_us");
        over!(cluster.durability, "durability");
        over!(cluster.flush_interval_ms, "flush_interval_ms");
        over!(cluster.gateway_timeout_ms, "gateway_timeout_ms");
        over!(cluster.raft_tick_ms, "raft_tick_ms");
        Merged {
            path,
            values,
            from_flags,
        }
    }

    /// Where a key's value came from: `--flag`, or `key` in the file.
    fn at(&self, key: &str) -> String {
        let flag = format!("--{}", key.replace('_', "-"));
        match &self.path {
            Some(path) if !self.from_flags.contains(key) => {
                format!("`{key}` in {}", path.display())
            }
            _ => flag,
        }
    }

    fn missing(&self, key: &str, what: &str) -> anyhow::Error {
        let flag = format!("--{}", key.replace('_', "-"));
        match &self.path {
            Some(path) => anyhow!(
                "{}: missing `{key}` ({what}; no default; or pass {flag})",
                path.display()
            ),
            None => anyhow!("missing {flag} ({what}; no default; or give a --config file)"),
        }
    }

    /// The packages `packages` names, read relative to the config file's directory.
    fn packages(&self) -> anyhow::Result<Vec<libobject::Package>> {
        let dir = self
            .path
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let paths: Vec<PathBuf> = self
            .values
            .packages
            .iter()
            .flatten()
            .map(|p| match &dir {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p.clone(),
            })
            .collect();
        load_packages(&paths).map_err(|e| anyhow!("{}: {e}", self.at("packages")))
    }

    /// Refuses a node key that means nothing for this role, so a misplaced value is noticed.
    fn refuse<T>(
        &self,
        value: &Option<T>,
        key: &str,
        role: Role,
        hint: &str,
    ) -> anyhow::Result<()> {
        if value.is_some() {
            bail!("{}: a {role} has no {key} ({hint})", self.at(key));
        }
        Ok(())
    }

    fn check(&self, role: Role) -> anyhow::Result<RoleOptions> {
        let v = &self.values;
        let c = &v.cluster;
        match v.role {
            None if self.path.is_some() => {
                return Err(self.missing("role", "sequencer, storage or gateway"))
            }
            Some(file_role) if file_role != role => bail!(
                "{} says role = \"{file_role}\", but this is `tally {role}`",
                self.path
                    .as_deref()
                    .unwrap_or(Path::new("the config"))
                    .display()
            ),
            _ => {}
        }
        let id =
            v.id.ok_or_else(|| self.missing("id", "the node's id, unique across all roles"))?;
        let sequencers = self
            .node_map("sequencers")?
            .ok_or_else(|| self.missing("sequencers", "every sequencer as ID = \"HOST:PORT\""))?;
        let storage = self.node_map("storage")?;
        if let Some(storage) = &storage {
            if let Some(both) = sequencers.keys().find(|id| storage.contains_key(id)) {
                bail!(
                    "{} and {} both name node {}: ids are unique across all roles",
                    self.at("sequencers"),
                    self.at("storage"),
                    both.0
                );
            }
        }
        // Only sequencers use it; other nodes check it when it is given, since their
        // [cluster] section should be the same.
        let replication = c.replication.unwrap_or(REPLICATION_DEFAULT);
        if let Some(storage) = storage
            .as_ref()
            .filter(|_| role == Role::Sequencer || c.replication.is_some())
        {
            if replication == 0 || replication > storage.len() {
                let at = match c.replication {
                    Some(_) => self.at("replication"),
                    None => format!("replication (default {REPLICATION_DEFAULT})"),
                };
                bail!(
                    "{at} is {replication}; it must be 1..={} (the number of storage nodes)",
                    storage.len()
                );
            }
        }
        let cut_interval_us = self.bounded(
            "cut_interval_us",
            c.cut_interval_us,
            CUT_INTERVAL_US_DEFAULT,
            CUT_INTERVAL_US_MAX,
        )?;
        let flush_interval_ms = self.bounded(
            "flush_interval_ms",
            c.flush_interval_ms,
            FLUSH_INTERVAL_MS_DEFAULT,
            FLUSH_INTERVAL_MS_MAX,
        )?;
        let gateway_timeout_ms = self.bounded(
            "gateway_timeout_ms",
            c.gateway_timeout_ms,
            GATEWAY_TIMEOUT_MS_DEFAULT,
            GATEWAY_TIMEOUT_MS_MAX,
        )?;
        let raft_tick_ms = self.bounded(
            "raft_tick_ms",
            c.raft_tick_ms,
            RAFT_TICK_MS_DEFAULT,
            RAFT_TICK_MS_MAX,
        )?;
        if gateway_timeout_ms < raft_tick_ms {
            bail!(
                "{} is {gateway_timeout_ms}; it must be at least raft_tick_ms ({raft_tick_ms}): \
                 the sequencers count it in ticks",
                self.at("gateway_timeout_ms")
            );
        }
        let node = NodeId(id);
        if role != Role::Storage {
            self.refuse(
                &v.segment_mib,
                "segment_mib",
                role,
                "only a storage node keeps segment files",
            )?;
        }

        match role {
            Role::Sequencer | Role::Storage => {
                self.refuse(
                    &v.http,
                    "http",
                    role,
                    "only a gateway serves HTTP; use `listen`",
                )?;
                self.refuse(
                    &v.cache_mb,
                    "cache_mb",
                    role,
                    "only a gateway caches records",
                )?;
                let functions = (!v.functions.is_empty()).then_some(());
                self.refuse(
                    &functions,
                    "functions",
                    role,
                    "only a gateway runs functions",
                )?;
                self.refuse(&v.workers, "workers", role, "only a gateway takes workers")?;
                self.refuse(
                    &v.packages,
                    "packages",
                    role,
                    "only a gateway serves classes",
                )?;
                self.refuse(
                    &v.idempotency_retention_s,
                    "idempotency_retention_s",
                    role,
                    "only a gateway keeps idempotency keys",
                )?;
                self.refuse(
                    &v.workflow_retention_s,
                    "workflow_retention_s",
                    role,
                    "only a gateway collects workflow instances",
                )?;
                self.refuse(
                    &v.object_retention_s,
                    "object_retention_s",
                    role,
                    "only a gateway collects object versions",
                )?;
                for (value, key) in [
                    (&v.http_header_timeout_ms, "http_header_timeout_ms"),
                    (&v.http_body_timeout_ms, "http_body_timeout_ms"),
                    (&v.http_idle_timeout_ms, "http_idle_timeout_ms"),
                    (&v.http_connections_max, "http_connections_max"),
                ] {
                    self.refuse(value, key, role, "only a gateway serves HTTP")?;
                }
                self.refuse(
                    &v.insecure,
                    "insecure",
                    role,
                    "only a gateway asks for tokens",
                )?;
                self.refuse(
                    &v.rate_per_token,
                    "rate_per_token",
                    role,
                    "only a gateway asks for tokens",
                )?;
                let storage = storage.as_ref().ok_or_else(|| {
                    self.missing("storage", "every storage node as ID = \"HOST:PORT\"")
                })?;
                let (map_key, members) = match role {
                    Role::Sequencer => ("sequencers", &sequencers),
                    _ => ("storage", storage),
                };
                let advertised = members.get(&node).ok_or_else(|| {
                    anyhow!(
                        "{}: {role} {id} is not listed there; every {role} must be, with the \
                         address it listens on",
                        self.at(map_key)
                    )
                })?;
                let listen = self.listen(map_key, id, advertised)?;
                let data_dir = v
                    .data_dir
                    .clone()
                    .ok_or_else(|| self.missing("data_dir", "where the node keeps its data"))?;
                if data_dir.as_os_str().is_empty() {
                    bail!("{} is empty", self.at("data_dir"));
                }
                let segment_mib = self.bounded(
                    "segment_mib",
                    v.segment_mib,
                    SEGMENT_MIB_DEFAULT,
                    SEGMENT_MIB_MAX,
                )?;
                Ok(match role {
                    Role::Sequencer => RoleOptions::Sequencer(SequencerOptions {
                        id: node,
                        data_dir,
                        listen,
                        sequencers: sequencers.clone(),
                        storage: storage.clone(),
                        replication,
                        cut_interval: Duration::from_micros(cut_interval_us),
                        raft_tick: Duration::from_millis(raft_tick_ms),
                        election_ticks: ELECTION_TICKS_DEFAULT,
                        gateway_timeout: Duration::from_millis(gateway_timeout_ms),
                    }),
                    _ => RoleOptions::Storage(StorageOptions {
                        id: node,
                        data_dir,
                        listen,
                        sequencers: sequencers.clone(),
                        durability: match c.durability.unwrap_or(DurabilityMode::Fsync) {
                            DurabilityMode::Fsync => Durability::Fsync,
                            DurabilityMode::Async => Durability::Async { flush_interval_ms },
                        },
                        segment_bytes_max: segment_mib * 1024 * 1024,
                    }),
                })
            }
            Role::Gateway => {
                self.refuse(
                    &v.data_dir,
                    "data_dir",
                    role,
                    "its state is rebuilt from the log",
                )?;
                self.refuse(&v.listen, "listen", role, "its address is `http`")?;
                let other = [
                    ("sequencers", Some(&sequencers)),
                    ("storage", storage.as_ref()),
                ];
                for (key, map) in other {
                    if map.is_some_and(|m| m.contains_key(&node)) {
                        bail!(
                            "gateway {id} is also listed in {}: ids are unique across all roles",
                            self.at(key)
                        );
                    }
                }
                let http_text = v.http.as_deref().unwrap_or(GATEWAY_HTTP_DEFAULT);
                let http = resolve_one(http_text)
                    .map_err(|e| anyhow!("{} = {http_text:?}: {e}", self.at("http")))?;
                let cache_mb = v.cache_mb.unwrap_or(CACHE_MB_DEFAULT);
                if cache_mb == 0 || cache_mb > CACHE_MB_MAX {
                    bail!(
                        "{} is {cache_mb}; it must be 1..={CACHE_MB_MAX}",
                        self.at("cache_mb")
                    );
                }
                let workers_text = v.workers.as_deref().unwrap_or(GATEWAY_WORKERS_DEFAULT);
                let workers = resolve_one(workers_text)
                    .map_err(|e| anyhow!("{} = {workers_text:?}: {e}", self.at("workers")))?;
                let key_retention = idempotency_retention(v.idempotency_retention_s)
                    .map_err(|e| anyhow!("{}: {e}", self.at("idempotency_retention_s")))?;
                let workflow_retention = workflow_retention(v.workflow_retention_s)
                    .map_err(|e| anyhow!("{}: {e}", self.at("workflow_retention_s")))?;
                let object_retention = object_retention(v.object_retention_s)
                    .map_err(|e| anyhow!("{}: {e}", self.at("object_retention_s")))?;
                let http_limits = self.http_limits()?;
                let source = self
                    .path
                    .as_ref()
                    .map_or("the flags".to_string(), |p| p.display().to_string());
                Ok(RoleOptions::Gateway(GatewayOptions {
                    key_retention,
                    workflow_retention,
                    object_retention,
                    id: node,
                    http,
                    sequencers: sequencers.clone(),
                    cache_bytes_max: cache_mb * 1024 * 1024,
                    pending_appends_max: PENDING_APPENDS_MAX_DEFAULT,
                    functions: function_configs(&v.functions, &source)?,
                    triggers: queue_triggers(&v.functions, &source)?,
                    workers,
                    packages: self.packages()?,
                    http_limits,
                    insecure: v.insecure.unwrap_or(false),
                    rate_per_token: self.rate_per_token()?,
                }))
            }
        }
    }

    /// A map of node ids to `HOST:PORT` addresses, checked.
    fn node_map(&self, key: &'static str) -> anyhow::Result<Option<BTreeMap<NodeId, String>>> {
        let map = match key {
            "sequencers" => &self.values.cluster.sequencers,
            _ => &self.values.cluster.storage,
        };
        let Some(map) = map else {
            return Ok(None);
        };
        if map.is_empty() {
            bail!("{} lists no nodes", self.at(key));
        }
        let mut nodes = BTreeMap::new();
        for (id_text, addr) in map {
            let id: u32 = id_text.trim().parse().map_err(|_| {
                anyhow!(
                    "{}: `{id_text}` is not a node id (0..=4294967295)",
                    self.at(key)
                )
            })?;
            check_host_port(addr)
                .map_err(|e| anyhow!("{}: node {id} = {addr:?}: {e}", self.at(key)))?;
            if nodes.insert(NodeId(id), addr.clone()).is_some() {
                bail!("{}: node {id} is listed twice", self.at(key));
            }
        }
        Ok(Some(nodes))
    }

    /// The address to bind: `listen` if given, else the node's address in its role's map.
    /// Other nodes dial the map's address, so `listen` must be that address or the same port
    /// on every interface (`0.0.0.0:PORT`, `[::]:PORT`).
    fn listen(&self, map_key: &str, id: u32, advertised: &str) -> anyhow::Result<SocketAddr> {
        let Some(listen_text) = &self.values.listen else {
            return resolve_one(advertised).map_err(|e| {
                anyhow!(
                    "{}: node {id} = {advertised:?} (the address to listen on): {e}",
                    self.at(map_key)
                )
            });
        };
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| anyhow!("{} = {listen_text:?} is not IP:PORT", self.at("listen")))?;
        let port = check_host_port(advertised).expect("node_map checked every address");
        if listen.port() == port
            && (listen.ip().is_unspecified() || resolve_all(advertised).contains(&listen))
        {
            return Ok(listen);
        }
        bail!(
            "{} = \"{listen}\" does not match node {id} = {advertised:?} in {}: other nodes \
             dial that address, so listen on it or on 0.0.0.0:{port}",
            self.at("listen"),
            self.at(map_key)
        )
    }

    /// A gateway's HTTP limits: each key if given, else its default.
    fn http_limits(&self) -> anyhow::Result<::gateway::serve::HttpLimits> {
        use ::gateway::serve::{
            BODY_TIMEOUT_DEFAULT, CONNECTIONS_MAX_DEFAULT, HEADER_TIMEOUT_DEFAULT,
            IDLE_TIMEOUT_DEFAULT,
        };
        let v = &self.values;
        let ms = |key: &str, value: Option<u64>, default: Duration| {
            self.bounded(key, value, default.as_millis() as u64, HTTP_TIMEOUT_MS_MAX)
                .map(Duration::from_millis)
        };
        Ok(::gateway::serve::HttpLimits {
            header_timeout: ms(
                "http_header_timeout_ms",
                v.http_header_timeout_ms,
                HEADER_TIMEOUT_DEFAULT,
            )?,
            body_timeout: ms(
                "http_body_timeout_ms",
                v.http_body_timeout_ms,
                BODY_TIMEOUT_DEFAULT,
            )?,
            idle_timeout: ms(
                "http_idle_timeout_ms",
                v.http_idle_timeout_ms,
                IDLE_TIMEOUT_DEFAULT,
            )?,
            connections_max: self.bounded(
                "http_connections_max",
                v.http_connections_max,
                CONNECTIONS_MAX_DEFAULT as u64,
                HTTP_CONNECTIONS_MAX,
            )? as usize,
        })
    }

    /// A gateway's `rate_per_token`, 0..=`RATE_PER_TOKEN_MAX` (0: no limit).
    fn rate_per_token(&self) -> anyhow::Result<u32> {
        use ::gateway::auth::{RATE_PER_TOKEN_DEFAULT, RATE_PER_TOKEN_MAX};
        let rate = self.values.rate_per_token.unwrap_or(RATE_PER_TOKEN_DEFAULT);
        if rate > RATE_PER_TOKEN_MAX {
            bail!(
                "{} is {rate}; it must be 0 (no limit) to {RATE_PER_TOKEN_MAX}",
                self.at("rate_per_token")
            );
        }
        Ok(rate)
    }

    /// `value` (or `default`), which must be 1..=`max`.
    fn bounded(
        &self,
        key: &str,
        value: Option<u64>,
        default: u64,
        max: u64,
    ) -> anyhow::Result<u64> {
        let value = value.unwrap_or(default);
        if value == 0 || value > max {
            bail!("{} is {value}; it must be 1..={max}", self.at(key));
        }
        Ok(value)
    }
}

/// Checks `HOST:PORT` (a name, an IPv4 address or a bracketed IPv6 address, and a port
/// 1..=65535) and returns the port.
fn check_host_port(addr: &str) -> Result<u16, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| "not HOST:PORT".to_string())?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("not HOST:PORT".into());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("an IPv6 address needs brackets: [::1]:7000".into());
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("`{port}` is not a port (1..=65535)")),
    }
}

/// The addresses `HOST:PORT` stands for: itself if it is an IP address, else what the
/// resolver says (empty if it cannot tell).
fn resolve_all(addr: &str) -> Vec<SocketAddr> {
    if let Ok(ip) = addr.parse::<SocketAddr>() {
        return vec![ip];
    }
    addr.to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

fn resolve_one(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = addr.parse::<SocketAddr>() {
        return Ok(ip);
    }
    check_host_port(addr)?;
    let mut resolved = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve it: {e}"))?;
    resolved
        .next()
        .ok_or_else(|| "it resolves to no address".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQUENCER: &str = r#"
role = "sequencer"
id = 0
data_dir = "/var/lib/tally/seq0"
listen = "127.0.0.1:7000"

[cluster]
sequencers = { 0 = "127.0.0.1:7000", 1 = "127.0.0.1:7001", 2 = "127.0.0.1:7002" }
storage = { 10 = "127.0.0.1:7100", 11 = "127.0.0.1:7101", 12 = "127.0.0.1:7102" }
"#;

    const STORAGE: &str = r#"
role = "storage"
id = 11
data_dir = "/var/lib/tally/storage11"

[cluster]
sequencers = { 0 = "127.0.0.1:7000" }
storage = { 10 = "127.0.0.1:7100", 11 = "127.0.0.1:7101" }
replication = 2
durability = "async"
flush_interval_ms = 7
"#;

    const GATEWAY: &str = r#"
role = "gateway"
id = 20
http = "127.0.0.1:8080"

[cluster]
sequencers = { 0 = "127.0.0.1:7000" }
"#;

    fn file(text: &str) -> NodeFile {
        parse_file(Path::new("node.toml"), text).expect("the test file parses")
    }

    fn load_text(role: Role, text: &str, flags: NodeFile) -> anyhow::Result<RoleOptions> {
        resolve(role, Some((Path::new("node.toml"), file(text))), flags)
    }

    fn sequencer(text: &str, flags: NodeFile) -> SequencerOptions {
        match load_text(Role::Sequencer, text, flags).expect("valid config") {
            RoleOptions::Sequencer(o) => o,
            other => panic!("not a sequencer: {other:?}"),
        }
    }

    /// Loads `text` as a `role` node with `flags` and expects an error containing `expect`.
    fn check_error(role: Role, text: &str, flags: NodeFile, expect: &str) {
        let error = load_text(role, text, flags)
            .map(|o| format!("{o:?}"))
            .expect_err("the config must be refused");
        let message = format!("{error:#}");
        assert!(
            message.contains(expect),
            "error {message:?} does not contain {expect:?}"
        );
        assert!(!message.contains('\n'), "error {message:?} is not one line");
    }

    /// Parses `text` and expects a parse error containing `expect`.
    fn check_parse_error(text: &str, expect: &str) {
        let message = format!(
            "{:#}",
            parse_file(Path::new("node.toml"), text).expect_err("the file must be refused")
        );
        assert!(
            message.contains(expect),
            "error {message:?} does not contain {expect:?}"
        );
        assert!(!message.contains('\n'), "error {message:?} is not one line");
    }

    fn without(text: &str, line_start: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with(line_start))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn sequencer_file_parses_with_defaults() {
        let o = sequencer(SEQUENCER, NodeFile::default());
        assert_eq!(o.id, NodeId(0));
        assert_eq!(o.data_dir, PathBuf::from("/var/lib/tally/seq0"));
        assert_eq!(o.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(o.sequencers.len(), 3);
        assert_eq!(o.sequencers[&NodeId(2)], "127.0.0.1:7002");
        assert_eq!(o.storage[&NodeId(12)], "127.0.0.1:7102");
        assert_eq!(o.replication, REPLICATION_DEFAULT);
        assert_eq!(
            o.cut_interval,
            Duration::from_micros(CUT_INTERVAL_US_DEFAULT)
        );
        assert_eq!(o.raft_tick, Duration::from_millis(RAFT_TICK_MS_DEFAULT));
        assert_eq!(
            o.gateway_timeout,
            Duration::from_millis(GATEWAY_TIMEOUT_MS_DEFAULT)
        );
        assert_eq!(o.election_ticks, ELECTION_TICKS_DEFAULT);
    }

    #[test]
    fn storage_file_parses_durability_and_listen_defaults_to_its_map_address() {
        let RoleOptions::Storage(o) =
            load_text(Role::Storage, STORAGE, NodeFile::default()).expect("valid config")
        else {
            panic!("not a storage node")
        };
        assert_eq!(o.id, NodeId(11));
        assert_eq!(o.listen, "127.0.0.1:7101".parse().unwrap());
        assert_eq!(
            o.durability,
            Durability::Async {
                flush_interval_ms: 7
            }
        );
        assert_eq!(o.segment_bytes_max, SEGMENT_BYTES_MAX_DEFAULT);
        let small = STORAGE.replace("[cluster]", "segment_mib = 2\n[cluster]");
        let Ok(RoleOptions::Storage(o)) = load_text(Role::Storage, &small, NodeFile::default())
        else {
            panic!("a valid storage node")
        };
        assert_eq!(o.segment_bytes_max, 2 * 1024 * 1024);
        assert_eq!(
            o.sequencers.keys().copied().collect::<Vec<_>>(),
            [NodeId(0)]
        );
    }

    #[test]
    fn gateway_file_parses_with_defaults() {
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, GATEWAY, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        assert_eq!(o.id, NodeId(20));
        assert_eq!(o.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(o.cache_bytes_max, CACHE_MB_DEFAULT * 1024 * 1024);
        assert_eq!(o.pending_appends_max, PENDING_APPENDS_MAX_DEFAULT);
        assert_eq!(
            o.workflow_retention,
            ::gateway::http::WORKFLOW_RETENTION_DEFAULT
        );
        let kept = GATEWAY.replace("[cluster]", "workflow_retention_s = 60\n[cluster]");
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, &kept, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        assert_eq!(o.workflow_retention, Duration::from_secs(60));
        let kept = GATEWAY.replace("[cluster]", "object_retention_s = 90\n[cluster]");
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, &kept, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        assert_eq!(o.object_retention, Duration::from_secs(90));
        assert_eq!(o.http_limits, ::gateway::serve::HttpLimits::default());
        let limited = GATEWAY.replace(
            "[cluster]",
            "http_header_timeout_ms = 500\nhttp_connections_max = 64\n[cluster]",
        );
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, &limited, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        assert_eq!(o.http_limits.header_timeout, Duration::from_millis(500));
        assert_eq!(o.http_limits.connections_max, 64);
        assert_eq!(
            o.http_limits.body_timeout,
            ::gateway::serve::BODY_TIMEOUT_DEFAULT
        );
        let zero = GATEWAY.replace("[cluster]", "http_idle_timeout_ms = 0\n[cluster]");
        check_error(
            Role::Gateway,
            &zero,
            NodeFile::default(),
            "`http_idle_timeout_ms` in node.toml is 0",
        );
        let on_sequencer = SEQUENCER.replace("[cluster]", "http_connections_max = 9\n[cluster]");
        check_error(
            Role::Sequencer,
            &on_sequencer,
            NodeFile::default(),
            "only a gateway serves HTTP",
        );
        let on_storage = STORAGE.replace("[cluster]", "insecure = true\n[cluster]");
        check_error(
            Role::Storage,
            &on_storage,
            NodeFile::default(),
            "only a gateway asks for tokens",
        );
        let insecure = GATEWAY.replace("[cluster]", "insecure = true\n[cluster]");
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, &insecure, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        assert!(o.insecure);
        let never = GATEWAY.replace("[cluster]", "workflow_retention_s = 0\n[cluster]");
        check_error(
            Role::Gateway,
            &never,
            NodeFile::default(),
            "`workflow_retention_s` in node.toml: 0 s",
        );
        let on_storage = SEQUENCER.replace("[cluster]", "workflow_retention_s = 60\n[cluster]");
        check_error(
            Role::Sequencer,
            &on_storage,
            NodeFile::default(),
            "only a gateway collects workflow instances",
        );
        // Packages: read relative to the file, checked, and a gateway's only.
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(
            dir.path().join("shop.toml"),
            "name = \"shop\"\n[classes.cart]\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("bad.toml"), "name = \"a b\"\n").expect("write");
        let with =
            |p: &str| GATEWAY.replace("[cluster]", &format!("packages = [\"{p}\"]\n[cluster]"));
        let at = |text: &str| {
            resolve(
                Role::Gateway,
                Some((&dir.path().join("node.toml"), file(text))),
                NodeFile::default(),
            )
        };
        let Ok(RoleOptions::Gateway(o)) = at(&with("shop.toml")) else {
            panic!("a package file next to the node's file")
        };
        assert_eq!(o.packages[0].name, "shop");
        for (bad, why) in [
            ("bad.toml", "package name"),
            ("gone.toml", "reading the package"),
        ] {
            let e = at(&with(bad)).expect_err(bad).to_string();
            assert!(e.contains("`packages`") && e.contains(why), "{bad}: {e}");
        }
        check_error(
            Role::Sequencer,
            &SEQUENCER.replace("[cluster]", "packages = []\n[cluster]"),
            NodeFile::default(),
            "only a gateway serves classes",
        );
        let no_http = without(GATEWAY, "http");
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, &no_http, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        assert_eq!(o.http, GATEWAY_HTTP_DEFAULT.parse().unwrap());
    }

    #[test]
    fn a_gateway_file_limits_its_functions_and_takes_workers_and_other_roles_refuse_both() {
        let text = format!(
            "{GATEWAY}\n[functions.echo]\nmax_concurrency = 4\ntimeout_ms = 250\nretries = 2\n"
        );
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, &text, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        let echo = o.functions["echo"];
        assert_eq!(echo.max_concurrency, 4);
        assert_eq!(echo.timeout, Duration::from_millis(250));
        assert_eq!(echo.retries, 2);
        assert_eq!(
            echo.backoff,
            gateway::functions::FunctionConfig::default().backoff
        );

        assert_eq!(o.workers, GATEWAY_WORKERS_DEFAULT.parse().unwrap());
        let elsewhere = GATEWAY.replace("[cluster]", "workers = \"127.0.0.1:9999\"\n[cluster]");
        let RoleOptions::Gateway(o) =
            load_text(Role::Gateway, &elsewhere, NodeFile::default()).expect("valid config")
        else {
            panic!("not a gateway")
        };
        assert_eq!(o.workers, "127.0.0.1:9999".parse().unwrap());
        let workers_on_sequencer =
            SEQUENCER.replace("[cluster]", "workers = \"127.0.0.1:9999\"\n[cluster]");
        check_error(
            Role::Sequencer,
            &workers_on_sequencer,
            NodeFile::default(),
            "a sequencer has no workers",
        );

        let zero = format!("{GATEWAY}\n[functions.echo]\ntimeout_ms = 0\n");
        check_error(
            Role::Gateway,
            &zero,
            NodeFile::default(),
            "`functions.echo.timeout_ms` in node.toml is 0",
        );
        let unknown = format!("{GATEWAY}\n[functions.echo]\ncolour = 1\n");
        let refused = parse_file(Path::new("node.toml"), &unknown).unwrap_err();
        assert!(
            refused.to_string().contains("unknown field `colour`"),
            "{refused}"
        );
        let sequencer = format!("{SEQUENCER}\n[functions.echo]\nretries = 1\n");
        check_error(
            Role::Sequencer,
            &sequencer,
            NodeFile::default(),
            "a sequencer has no functions",
        );
    }

    #[test]
    fn the_example_file_is_a_valid_sequencer_config() {
        let text = include_str!("../examples/cluster.toml");
        let parsed = file(text);
        assert_eq!(parsed.role, Some(Role::Sequencer));
        // Its addresses are not this machine's, so check it with loopback overrides.
        let flags = NodeFile {
            listen: Some("0.0.0.0:7000".into()),
            ..NodeFile::default()
        };
        let o = match resolve(
            Role::Sequencer,
            Some((Path::new("cluster.toml"), parsed)),
            flags,
        )
        .expect("the example is valid")
        {
            RoleOptions::Sequencer(o) => o,
            other => panic!("not a sequencer: {other:?}"),
        };
        assert_eq!(o.sequencers.len(), 3);
        assert_eq!(o.storage.len(), 3);
        assert_eq!(o.replication, 3);
    }

    #[test]
    fn flags_override_the_file() {
        let flags = NodeFile {
            id: Some(1),
            data_dir: Some("/other".into()),
            listen: Some("0.0.0.0:7001".into()),
            cluster: ClusterFile {
                replication: Some(2),
                cut_interval_us: Some(300),
                raft_tick_ms: Some(10),
                gateway_timeout_ms: Some(500),
                ..ClusterFile::default()
            },
            ..NodeFile::default()
        };
        let o = sequencer(SEQUENCER, flags);
        assert_eq!(o.id, NodeId(1));
        assert_eq!(o.data_dir, PathBuf::from("/other"));
        assert_eq!(o.listen, "0.0.0.0:7001".parse().unwrap());
        assert_eq!(o.replication, 2);
        assert_eq!(o.cut_interval, Duration::from_micros(300));
        assert_eq!(o.raft_tick, Duration::from_millis(10));
        assert_eq!(o.gateway_timeout, Duration::from_millis(500));

        let flags = NodeFile {
            cluster: ClusterFile {
                durability: Some(DurabilityMode::Fsync),
                ..ClusterFile::default()
            },
            ..NodeFile::default()
        };
        let RoleOptions::Storage(o) = load_text(Role::Storage, STORAGE, flags).expect("valid")
        else {
            panic!("not a storage node")
        };
        assert_eq!(o.durability, Durability::Fsync);
    }

    #[test]
    fn flags_alone_are_enough() {
        let flags = NodeFile {
            id: Some(2),
            data_dir: Some("/d".into()),
            cluster: ClusterFile {
                sequencers: Some(parse_node_map("0=127.0.0.1:7000, 2=127.0.0.1:7002").unwrap()),
                storage: Some(parse_node_map("10=127.0.0.1:7100").unwrap()),
                replication: Some(1),
                ..ClusterFile::default()
            },
            ..NodeFile::default()
        };
        let RoleOptions::Sequencer(o) = resolve(Role::Sequencer, None, flags).expect("valid")
        else {
            panic!("not a sequencer")
        };
        assert_eq!(o.listen, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(o.replication, 1);
    }

    #[test]
    fn missing_identity_values_name_the_key_and_the_file() {
        let cases: [(Role, String, &str); 7] = [
            (
                Role::Sequencer,
                without(SEQUENCER, "id ="),
                "node.toml: missing `id`",
            ),
            (
                Role::Sequencer,
                without(SEQUENCER, "role ="),
                "node.toml: missing `role`",
            ),
            (
                Role::Sequencer,
                without(SEQUENCER, "data_dir ="),
                "node.toml: missing `data_dir`",
            ),
            (
                Role::Sequencer,
                without(SEQUENCER, "sequencers ="),
                "node.toml: missing `sequencers`",
            ),
            (
                Role::Sequencer,
                without(SEQUENCER, "storage ="),
                "node.toml: missing `storage`",
            ),
            (
                Role::Storage,
                without(STORAGE, "storage ="),
                "node.toml: missing `storage`",
            ),
            (
                Role::Gateway,
                without(GATEWAY, "sequencers ="),
                "node.toml: missing `sequencers`",
            ),
        ];
        for (role, text, expect) in cases {
            check_error(role, &text, NodeFile::default(), expect);
        }
        let error = resolve(Role::Gateway, None, NodeFile::default()).unwrap_err();
        assert!(format!("{error}").starts_with("missing --id"), "{error}");
    }

    #[test]
    fn invalid_values_are_refused_with_one_line_naming_them() {
        let seq = |extra: &str| format!("{SEQUENCER}{extra}\n");
        let cases: Vec<(Role, String, &str)> = vec![
            (Role::Storage, SEQUENCER.into(), "node.toml says role = \"sequencer\", but this is `tally storage`"),
            (Role::Sequencer, seq("replication = 4"), "`replication` in node.toml is 4; it must be 1..=3"),
            (Role::Sequencer, seq("replication = 0"), "it must be 1..=3"),
            (Role::Sequencer, seq("cut_interval_us = 0"), "`cut_interval_us` in node.toml is 0"),
            (Role::Sequencer, seq("raft_tick_ms = 0"), "`raft_tick_ms` in node.toml is 0"),
            (Role::Sequencer, seq("gateway_timeout_ms = 0"), "`gateway_timeout_ms` in node.toml is 0"),
            (Role::Sequencer, seq("gateway_timeout_ms = 10"), "it must be at least raft_tick_ms (50)"),
            (Role::Storage, format!("{STORAGE}flush_interval_ms = 0\n").replace("flush_interval_ms = 7\n", ""), "`flush_interval_ms` in node.toml is 0"),
            (Role::Sequencer, SEQUENCER.replace("id = 0", "id = 5"), "sequencer 5 is not listed there"),
            (Role::Storage, STORAGE.replace("id = 11", "id = 0"), "storage 0 is not listed there"),
            (Role::Sequencer, SEQUENCER.replace("listen = \"127.0.0.1:7000\"", "listen = \"127.0.0.1:7009\""), "does not match node 0 = \"127.0.0.1:7000\""),
            (Role::Sequencer, SEQUENCER.replace("listen = \"127.0.0.1:7000\"", "listen = \"nowhere\""), "is not IP:PORT"),
            (Role::Sequencer, SEQUENCER.replace("1 = \"127.0.0.1:7001\"", "1 = \"127.0.0.1\""), "node 1 = \"127.0.0.1\": not HOST:PORT"),
            (Role::Sequencer, SEQUENCER.replace("1 = \"127.0.0.1:7001\"", "1 = \"h:99999\""), "is not a port"),
            (Role::Sequencer, SEQUENCER.replace("1 = \"127.0.0.1:7001\"", "x = \"127.0.0.1:7001\""), "`x` is not a node id"),
            (Role::Sequencer, SEQUENCER.replace("10 = ", "1 = "), "both name node 1"),
            (Role::Sequencer, SEQUENCER.replace("sequencers = { 0 = \"127.0.0.1:7000\", 1 = \"127.0.0.1:7001\", 2 = \"127.0.0.1:7002\" }", "sequencers = {}"), "lists no nodes"),
            (Role::Sequencer, SEQUENCER.replace("[cluster]", "http = \"127.0.0.1:1\"\n[cluster]"), "a sequencer has no http"),
            (Role::Gateway, GATEWAY.replace("id = 20", "id = 0"), "gateway 0 is also listed in `sequencers`"),
            (Role::Gateway, GATEWAY.replace("[cluster]", "data_dir = \"/x\"\n[cluster]"), "a gateway has no data_dir"),
            (Role::Gateway, GATEWAY.replace("[cluster]", "listen = \"127.0.0.1:1\"\n[cluster]"), "a gateway has no listen"),
            (Role::Gateway, GATEWAY.replace("[cluster]", "cache_mb = 0\n[cluster]"), "`cache_mb` in node.toml is 0"),
            (Role::Storage, STORAGE.replace("[cluster]", "segment_mib = 0\n[cluster]"), "`segment_mib` in node.toml is 0; it must be 1..=4096"),
            (Role::Sequencer, SEQUENCER.replace("[cluster]", "segment_mib = 1\n[cluster]"), "a sequencer has no segment_mib"),
            (Role::Gateway, GATEWAY.replace("[cluster]", "segment_mib = 1\n[cluster]"), "a gateway has no segment_mib"),
        ];
        for (role, text, expect) in cases {
            check_error(role, &text, NodeFile::default(), expect);
        }
    }

    #[test]
    fn a_bad_value_from_a_flag_names_the_flag() {
        let flags = NodeFile {
            cluster: ClusterFile {
                replication: Some(9),
                ..ClusterFile::default()
            },
            ..NodeFile::default()
        };
        check_error(Role::Sequencer, SEQUENCER, flags, "--replication is 9");
        let flags = NodeFile {
            listen: Some("127.0.0.1:1".into()),
            ..NodeFile::default()
        };
        check_error(
            Role::Sequencer,
            SEQUENCER,
            flags,
            "--listen = \"127.0.0.1:1\" does not match",
        );
    }

    #[test]
    fn the_default_replication_is_checked_against_the_storage_nodes_on_sequencers() {
        let two_storage_nodes = SEQUENCER.replace(", 12 = \"127.0.0.1:7102\"", "");
        check_error(
            Role::Sequencer,
            &two_storage_nodes,
            NodeFile::default(),
            "replication (default 3) is 3; it must be 1..=2",
        );
        // A storage node does not use it, so only a given value is checked there.
        load_text(
            Role::Storage,
            &without(STORAGE, "replication"),
            NodeFile::default(),
        )
        .expect("a storage node without replication is valid");
    }

    #[test]
    fn malformed_files_are_refused_with_the_line() {
        check_parse_error(
            "role = \"sequencer\"\nid = 0\ncolour = 3\n",
            "node.toml:3: unknown field `colour`",
        );
        check_parse_error(
            "role = \"sequencer\"\n[cluster]\nshards = 3\n",
            "node.toml:3: unknown field `shards`",
        );
        check_parse_error(
            "role = \"leader\"\n",
            "node.toml:1: unknown variant `leader`",
        );
        check_parse_error("id = -1\n", "node.toml:1:");
        check_parse_error("id = \n", "node.toml:1:");
        check_parse_error(
            "[cluster]\ndurability = \"sometimes\"\n",
            "unknown variant `sometimes`",
        );
    }

    #[test]
    fn node_maps_from_flags_are_parsed() {
        assert_eq!(
            parse_node_map("0=a:1,1=b:2").unwrap(),
            BTreeMap::from([("0".into(), "a:1".into()), ("1".into(), "b:2".into())])
        );
        assert!(parse_node_map("0=a:1,0=b:2").unwrap_err().contains("twice"));
        assert!(parse_node_map("0").unwrap_err().contains("ID=HOST:PORT"));
        assert!(parse_node_map("").is_err());
    }

    #[test]
    fn the_example_node_file_gives_each_role_its_table_and_a_data_dir_under_the_node_s() {
        let path = Path::new("node.toml");
        let text = include_str!("../examples/node.toml");
        let roles: Vec<RoleOptions> = [Role::Sequencer, Role::Storage, Role::Gateway]
            .into_iter()
            .map(|role| {
                let file = role_file(path, text, role).expect("the example is valid");
                assert_eq!(file.role, Some(role));
                resolve(role, Some((path, file)), NodeFile::default()).expect("each role checks")
            })
            .collect();
        match &roles[..] {
            [RoleOptions::Sequencer(s), RoleOptions::Storage(t), RoleOptions::Gateway(g)] => {
                assert_eq!((s.id, t.id, g.id), (NodeId(0), NodeId(10), NodeId(20)));
                assert_eq!(s.data_dir, Path::new("/var/lib/tally/sequencer"));
                assert_eq!(t.data_dir, Path::new("/var/lib/tally/storage"));
                assert_eq!(s.storage.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        // A one-role file reads as before through the same function.
        let one = role_file(path, SEQUENCER, Role::Storage).unwrap();
        assert_eq!(one.role, Some(Role::Sequencer));
    }

    #[test]
    fn a_node_file_refuses_roles_and_tables_that_do_not_match() {
        let cluster = "[cluster]\nsequencers = { 0 = \"127.0.0.1:7000\" }\n\
                       storage = { 10 = \"127.0.0.1:7100\" }\n";
        let cases = [
            ("roles = []\n", "`roles` is empty"),
            (
                "roles = [\"storage\", \"storage\"]\n[storage]\nid = 10\n",
                "lists storage twice",
            ),
            (
                "roles = [\"sequencer\", \"storage\"]\n[sequencer]\nid = 0\n",
                "lists storage, but there is no [storage] table",
            ),
            (
                "roles = [\"storage\"]\n[storage]\nid = 10\n[gateway]\nid = 20\n",
                "a [gateway] table, but `roles` does not list gateway",
            ),
            (
                "roles = [\"storage\"]\n[storage]\nid = 10\n[storage.cluster]\nreplication = 1\n",
                "[storage.cluster] is not read",
            ),
            (
                "roles = [\"storage\"]\n[storage]\nrole = \"gateway\"\nid = 10\n",
                "says role = \"gateway\"",
            ),
            (
                "roles = [\"storage\"]\n[storage]\nid = 10\n[storage.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\n",
                "[storage.tls] is not read",
            ),
            (
                "roles = [\"storage\"]\n[storage]\nid = 10\nport = 1\n",
                "unknown field",
            ),
        ];
        for (text, expect) in cases {
            let text = format!("{text}{cluster}");
            let error = role_file(Path::new("n.toml"), &text, Role::Storage)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expect), "{text}: {error}");
            assert!(error.contains("n.toml"), "{error}");
        }
        let gateway = format!("roles = [\"storage\"]\n[storage]\nid = 10\n{cluster}");
        let error = role_file(Path::new("n.toml"), &gateway, Role::Gateway).unwrap_err();
        assert!(error.to_string().contains("runs no gateway"), "{error}");
    }

    #[test]
    fn load_host_checks_every_role_and_names_the_address_it_is_dialled_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let text = format!(
            "roles = [\"storage\", \"gateway\"]\ndata_dir = {:?}\n\
             [storage]\nid = 10\n[gateway]\nid = 20\nhttp = \"127.0.0.1:0\"\n\
             [cluster]\nsequencers = {{ 0 = \"127.0.0.1:7000\" }}\n\
             storage = {{ 10 = \"localhost:7100\" }}\nreplication = 1\n",
            dir.path().display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        let (roles, tls) = load_host(&path).unwrap();
        assert!(tls.is_none());
        assert_eq!(roles.len(), 2);
        assert!(
            matches!(&roles[0].0, RoleOptions::Storage(o) if o.data_dir == dir.path().join("storage"))
        );
        assert_eq!(roles[0].1.as_deref(), Some("localhost:7100"));
        assert!(matches!(roles[1], (RoleOptions::Gateway(_), None)));
        // A one-role file is not a node's.
        std::fs::write(&path, SEQUENCER).unwrap();
        let error = load_host(&path).unwrap_err().to_string();
        assert!(error.contains("no `roles` list"), "{error}");
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    /// `[tls]` paths are read relative to the file; a missing file, a key that is not the
    /// certificate's and an unknown key are errors naming the file.
    #[test]
    fn the_tls_section_is_read_relative_to_its_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::cert::make_ca(&certs, "test CA").unwrap();
        crate::cert::make_node(&certs, "a", &["127.0.0.1".to_string()]).unwrap();
        crate::cert::make_node(&certs, "b", &["127.0.0.1".to_string()]).unwrap();
        let file = dir.path().join("seq.toml");
        let write = |tls: &str| {
            std::fs::write(
                &file,
                format!("role = \"sequencer\"\nid = 0\n\n[tls]\n{tls}"),
            )
            .unwrap()
        };
        write("cert = \"certs/a.pem\"\nkey = \"certs/a-key.pem\"\nca = \"certs/ca.pem\"\n");
        let tls = load_tls(&file).unwrap().expect("a [tls] section");
        assert_eq!(tls.cert, dir.path().join("certs/a.pem"));
        for (tls, expect) in [
            (
                "cert = \"certs/a.pem\"\nkey = \"certs/b-key.pem\"\nca = \"certs/ca.pem\"\n",
                "do not make a certificate and its key",
            ),
            (
                "cert = \"certs/a.pem\"\nkey = \"certs/a-key.pem\"\nca = \"certs/none.pem\"\n",
                "none.pem",
            ),
            (
                "cert = \"certs/a.pem\"\nkey = \"certs/a-key.pem\"\n",
                "missing field `ca`",
            ),
        ] {
            write(tls);
            let error = format!("{:#}", load_tls(&file).unwrap_err());
            assert!(error.contains(expect), "{error}");
            assert!(error.contains("seq.toml"), "{error}");
        }
        std::fs::write(&file, "role = \"sequencer\"\nid = 0\n").unwrap();
        assert!(load_tls(&file).unwrap().is_none());
    }
}
