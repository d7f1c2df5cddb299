//! `tally cluster`: a multi-process cluster on this machine, for trying Tally out and for tests.
//! Every node is a child process of the same `tally` executable running one role from its own
//! TOML file, on free loopback ports, in a directory that holds everything:
//!
//! ```text
//! DIR/cluster.json          the nodes: role, id, pid, addresses, config, data dir, log
//! DIR/seq-0.toml  seq-0/  seq-0.log         sequencers 0, 1, ...
//! DIR/storage-10.toml  storage-10/  ...     storage nodes 10, 11, ...
//! DIR/gateway-20.toml  gateway-20.log       gateways 20, 21, ...
//! ```
//!
//! With `--nodes N` every process hosts three roles instead (`tally node`): node K runs
//! sequencer K, storage node 10+K and gateway 20+K from `DIR/node-K.toml`, with its data in
//! `DIR/node-K/` and its log in `DIR/node-K.log`; any of the three ids names the process.
//!
//! `up` on a directory whose nodes are all stopped starts them again from the same files, so
//! ids, ports and data survive a full restart. The processes run in their own sessions (no
//! terminal signals reach them); `down`, `kill` and `start` find them through cluster.json.
//! A pid counts as a node only while its command line still names the node's config file, so
//! a reused pid is never signalled.
//!
//! This is a local tool: it binds 127.0.0.1 only. A cluster on several machines is started by
//! running `tally <role> --config FILE` on each (README, "Run a cluster").

use crate::config::{self, DurabilityMode, NodeFile, Role};
use crate::roles::{CUT_INTERVAL_US_DEFAULT, REPLICATION_DEFAULT};
use anyhow::{anyhow, bail, Context as _};
use logbook::rpc::pb;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CLUSTER_DIR_DEFAULT: &str = "./tally-cluster";
/// The list of nodes, in the cluster's directory.
pub const MANIFEST_FILE: &str = "cluster.json";
/// Held (flock) by every command that changes the cluster, so two never interleave.
const LOCK_FILE: &str = "cluster.lock";

/// Node ids by role: sequencers from 0, storage nodes from 10, gateways from 20.
pub const SEQUENCER_ID_FIRST: u32 = 0;
pub const STORAGE_ID_FIRST: u32 = 10;
pub const GATEWAY_ID_FIRST: u32 = 20;
/// How many nodes of each role `up` starts, by default and at most (the id ranges must not
/// overlap).
pub const SEQUENCERS_DEFAULT: usize = 3;
pub const STORAGE_DEFAULT: usize = 3;
pub const GATEWAYS_DEFAULT: usize = 2;
pub const SEQUENCERS_MAX: usize = 9;
pub const STORAGE_MAX: usize = 10;
pub const GATEWAYS_MAX: usize = 32;
/// How long `up` and `start` wait for the nodes to be ready, by default.
pub const READY_TIMEOUT_SECS_DEFAULT: u64 = 60;
/// How long `down` waits after SIGTERM before SIGKILL, by default.
pub const GRACE_SECS_DEFAULT: u64 = 10;
/// How long a process may take to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// One Status call, at most.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// cluster.json: every node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub nodes: Vec<NodeEntry>,
    /// For a cluster made with `--tls`: the certificate, key and CA the CLI's own gRPC calls
    /// to its nodes use (its nodes ask for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<config::TlsFile>,
}

/// One node in cluster.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub role: Role,
    pub id: u32,
    /// The last process started for it (it may have stopped since).
    pub pid: Option<u32>,
    /// The gRPC address (sequencers and storage nodes).
    pub rpc: Option<String>,
    /// The HTTP URL (gateways).
    pub http: Option<String>,
    /// Where workers attach (gateways).
    #[serde(default)]
    pub workers: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The node (`--nodes`) whose process hosts this role with others; none for a process
    /// of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u32>,
}

impl NodeEntry {
    /// `seq-0`, `storage-10`, `gateway-20`: the stem of its files.
    fn stem(role: Role, id: u32) -> String {
        match role {
            Role::Sequencer => format!("seq-{id}"),
            Role::Storage => format!("storage-{id}"),
            Role::Gateway => format!("gateway-{id}"),
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.role, self.id)
    }

    /// What the process is called: `node 1`, or the role's name for a process of one role.
    fn process_name(&self) -> String {
        match self.host {
            Some(host) => format!("node {host}"),
            None => self.name(),
        }
    }

    /// Whether the node's process is running.
    pub fn alive(&self) -> bool {
        self.pid.is_some_and(|pid| process_runs(pid, &self.config))
    }

    /// The line the role prints on stdout once it serves.
    fn ready_prefix(&self) -> String {
        format!("tally {} {} ready: ", self.role, self.id)
    }
}

impl Manifest {
    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no cluster in {} (no {MANIFEST_FILE}); start one with `tally cluster up --dir {}`",
                dir.display(),
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let manifest: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        manifest.use_tls()?;
        Ok(manifest)
    }

    /// For a cluster with TLS, whose nodes take mutual TLS only: this process's calls to them
    /// present the CLI's certificate.
    fn use_tls(&self) -> anyhow::Result<()> {
        if let Some(tls) = &self.tls {
            crate::roles::tls::install(crate::roles::tls::RoleTls::load(
                &tls.cert, &tls.key, &tls.ca,
            )?)?;
        }
        Ok(())
    }

    /// Replaces cluster.json atomically, so a reader never sees half of it.
    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("the manifest serializes");
        fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    fn node(&self, id: u32) -> anyhow::Result<usize> {
        self.nodes.iter().position(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<String> = self.nodes.iter().map(|n| n.id.to_string()).collect();
            anyhow!(
                "no node {id} in this cluster (its nodes: {})",
                ids.join(", ")
            )
        })
    }

    fn count(&self, role: Role) -> usize {
        self.nodes.iter().filter(|n| n.role == role).count()
    }

    fn of(&self, role: Role) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// The entries grouped by process (roles sharing a config file share one), in the order
    /// their processes first appear.
    fn processes(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for index in 0..self.nodes.len() {
            if !groups.iter().any(|g| g.contains(&index)) {
                groups.push(self.process_of(index));
            }
        }
        groups
    }

    /// The entries the process of entry `index` runs: those sharing its config file.
    fn process_of(&self, index: usize) -> Vec<usize> {
        let config = &self.nodes[index].config;
        (0..self.nodes.len())
            .filter(|&i| &self.nodes[i].config == config)
            .collect()
    }

    /// How many processes host several roles (`--nodes`).
    fn hosts(&self) -> usize {
        let mut hosts: Vec<u32> = self.nodes.iter().filter_map(|n| n.host).collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts.len()
    }

    /// The roles a process of `group` runs, for messages: `sequencer 0, storage 10`.
    fn roles_of(&self, group: &[usize]) -> String {
        let names: Vec<String> = group.iter().map(|&i| self.nodes[i].name()).collect();
        names.join(", ")
    }
}

/// The HTTP URLs of the gateways among `nodes`, by id.
pub fn gateway_urls(nodes: &[NodeEntry]) -> Vec<String> {
    let mut gateways: Vec<&NodeEntry> = nodes.iter().filter(|n| n.role == Role::Gateway).collect();
    gateways.sort_by_key(|n| n.id);
    gateways
        .into_iter()
        .filter_map(|n| n.http.clone())
        .collect()
}

/// What `tally cluster up` was asked for; `None` is the default (or, on a restart, what the
/// files say).
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    /// Processes that each host a sequencer, a storage node and a gateway (`tally node`),
    /// instead of a process per role.
    pub nodes: Option<usize>,
    pub sequencers: Option<usize>,
    pub storage: Option<usize>,
    pub gateways: Option<usize>,
    pub replication: Option<usize>,
    pub durability: Option<DurabilityMode>,
    pub cut_interval_us: Option<u64>,
    pub timeout: Duration,
    /// Make a CA and a certificate per process (in DIR/certs), and have every node speak
    /// mutual TLS and every gateway HTTPS.
    pub tls: bool,
}

/// `tally cluster up`: creates the cluster's files (or reuses them), starts every node, waits
/// until each is ready and the sequencer leader's view holds every gateway, and prints the
/// gateways' addresses. On failure it stops what it started.
pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    if !options.dir.join(MANIFEST_FILE).exists() {
        layout(&options)?;
    }
    fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", options.dir.display()))?;
    let _lock = DirLock::acquire(&dir)?;
    let mut manifest = if dir.join(MANIFEST_FILE).exists() {
        let manifest = Manifest::read(&dir)?;
        let running: Vec<String> = manifest
            .nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| format!("{} (pid {})", n.name(), n.pid.unwrap_or_default()))
            .collect();
        if !running.is_empty() {
            bail!(
                "the cluster in {} is running: {}; stop it with `tally cluster down --dir {}` \
                 (or restart one stopped node with `tally cluster start --node ID`)",
                dir.display(),
                running.join(", "),
                dir.display()
            );
        }
        check_restart(&manifest, &options)?;
        let manifest = refresh(&manifest)?;
        println!("restarting the cluster in {} from its files", dir.display());
        manifest
    } else {
        let manifest = create(&dir, &options)?;
        manifest.use_tls()?;
        manifest
    };

    let mut started = Vec::new();
    let result = async {
        for group in manifest.processes() {
            let process = spawn(&dir, &manifest.nodes[group[0]])?;
            for &index in &group {
                manifest.nodes[index].pid = Some(process.child.id());
            }
            started.push((group, process));
            manifest.write(&dir)?;
        }
        let deadline = Instant::now() + options.timeout;
        wait_ready(&mut manifest, &mut started, deadline).await?;
        manifest.write(&dir)?;
        wait_for_view(&manifest, deadline).await
    }
    .await;
    let leader = match result {
        Ok(leader) => leader,
        Err(e) => {
            stop_children(&mut started).await;
            return Err(e.context(format!(
                "starting the cluster in {} (every node it started is stopped again)",
                dir.display()
            )));
        }
    };
    for gateway in manifest.of(Role::Gateway) {
        let workers = gateway
            .workers
            .as_deref()
            .map_or(String::new(), |w| format!(" (workers attach at {w})"));
        println!(
            "gateway {}: {}{workers}",
            gateway.id,
            gateway.http.as_deref().unwrap_or("?")
        );
    }
    let hosts = match manifest.hosts() {
        0 => String::new(),
        n => format!("{} hosting ", count(n, "node")),
    };
    println!(
        "cluster up in {}: {hosts}{} (leader {}, view {}), {}, {}; logs in {}/*.log",
        dir.display(),
        count(manifest.count(Role::Sequencer), "sequencer"),
        leader.id,
        leader.view,
        count(manifest.count(Role::Storage), "storage node"),
        count(manifest.count(Role::Gateway), "gateway"),
        dir.display()
    );
    println!(
        "status: tally cluster status --dir {0}; stop: tally cluster down --dir {0}",
        dir.display()
    );
    Ok(())
}

fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// On a restart, flags must agree with what the files say: they describe the cluster being
/// started, and changing them silently would not happen anyway.
fn check_restart(manifest: &Manifest, options: &UpOptions) -> anyhow::Result<()> {
    if options.tls && manifest.tls.is_none() {
        bail!("--tls makes a new cluster's certificates; this cluster was made without it");
    }
    let counts = [
        (
            "--sequencers",
            options.sequencers,
            Role::Sequencer,
            "sequencers",
        ),
        ("--storage", options.storage, Role::Storage, "storage nodes"),
        ("--gateways", options.gateways, Role::Gateway, "gateways"),
    ];
    let differs = |flag: &str, given: String, has: String| {
        anyhow!(
            "{flag} {given} differs from the cluster in {} ({has}); it restarts from its TOML \
             files: edit them, or use another --dir",
            options.dir.display()
        )
    };
    if let Some(given) = options.nodes.filter(|n| *n != manifest.hosts()) {
        return Err(differs(
            "--nodes",
            given.to_string(),
            format!("it has {}", count(manifest.hosts(), "node")),
        ));
    }
    for (flag, given, role, noun) in counts {
        let has = manifest.count(role);
        if let Some(given) = given.filter(|given| *given != has) {
            return Err(differs(
                flag,
                given.to_string(),
                format!("it has {has} {noun}"),
            ));
        }
    }
    let first = manifest
        .of(Role::Sequencer)
        .next()
        .ok_or_else(|| anyhow!("{MANIFEST_FILE} lists no sequencer"))?;
    let text = fs::read_to_string(&first.config)
        .with_context(|| format!("reading {}", first.config.display()))?;
    let cluster = config::role_file(&first.config, &text, Role::Sequencer)?.cluster;
    let settings = [
        (
            "--replication",
            options.replication.map(|r| r.to_string()),
            cluster
                .replication
                .unwrap_or(REPLICATION_DEFAULT)
                .to_string(),
        ),
        (
            "--durability",
            options.durability.map(|d| d.name().to_string()),
            cluster
                .durability
                .unwrap_or(DurabilityMode::Fsync)
                .name()
                .to_string(),
        ),
        (
            "--cut-interval-us",
            options.cut_interval_us.map(|c| c.to_string()),
            cluster
                .cut_interval_us
                .unwrap_or(CUT_INTERVAL_US_DEFAULT)
                .to_string(),
        ),
    ];
    for (flag, given, has) in settings {
        if let Some(given) = given {
            if given != has {
                return Err(differs(
                    flag,
                    given,
                    format!("its files say {} {has}", &flag[2..]),
                ));
            }
        }
    }
    Ok(())
}

/// The manifest's nodes as their TOML files now say (a file may have been edited), each file
/// checked as its role would check it.
fn refresh(manifest: &Manifest) -> anyhow::Result<Manifest> {
    let mut nodes = Vec::new();
    for node in &manifest.nodes {
        let (file, options) = load_node(node.role, &node.config)?;
        anyhow::ensure!(
            file.id == Some(node.id),
            "{} has id {:?}, but {MANIFEST_FILE} says node {}",
            node.config.display(),
            file.id,
            node.id
        );
        let (rpc, http) = addresses(&file, &options);
        nodes.push(NodeEntry {
            rpc,
            http,
            data_dir: file.data_dir.clone(),
            ..node.clone()
        });
    }
    Ok(Manifest {
        nodes,
        tls: manifest.tls.clone(),
    })
}

fn load_node(role: Role, path: &Path) -> anyhow::Result<(NodeFile, config::RoleOptions)> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file = config::role_file(path, &text, role)?;
    let options = config::resolve(role, Some((path, file.clone())), NodeFile::default())?;
    Ok((file, options))
}

/// A node's gRPC address (as the other nodes dial it) and HTTP URL.
fn addresses(file: &NodeFile, options: &config::RoleOptions) -> (Option<String>, Option<String>) {
    let rpc = file.dialled_addr();
    let scheme = if file.tls.is_some() { "https" } else { "http" };
    let http = match options {
        config::RoleOptions::Gateway(g) => Some(format!("{scheme}://{}", g.http)),
        _ => None,
    };
    (rpc, http)
}

/// The shape of a new cluster, from `up`'s options.
struct Layout {
    sequencers: usize,
    storage: usize,
    gateways: usize,
    replication: usize,
    cut_interval_us: u64,
}

/// Checks `up`'s options for a new cluster, before anything is written.
fn layout(options: &UpOptions) -> anyhow::Result<Layout> {
    if let Some(nodes) = options.nodes {
        let given: Vec<&str> = [
            ("--sequencers", options.sequencers),
            ("--storage", options.storage),
            ("--gateways", options.gateways),
        ]
        .into_iter()
        .filter_map(|(flag, n)| n.map(|_| flag))
        .collect();
        anyhow::ensure!(
            given.is_empty(),
            "--nodes {nodes} puts a sequencer, a storage node and a gateway in each node; \
             {} cannot be given with it",
            given.join(" and ")
        );
        anyhow::ensure!(
            (1..=SEQUENCERS_MAX).contains(&nodes),
            "--nodes is {nodes}; it must be 1..={SEQUENCERS_MAX}"
        );
    }
    let sequencers = options
        .nodes
        .or(options.sequencers)
        .unwrap_or(SEQUENCERS_DEFAULT);
    let storage = options.nodes.or(options.storage).unwrap_or(STORAGE_DEFAULT);
    let gateways = options
        .nodes
        .or(options.gateways)
        .unwrap_or(GATEWAYS_DEFAULT);
    for (flag, n, max) in [
        ("--sequencers", sequencers, SEQUENCERS_MAX),
        ("--storage", storage, STORAGE_MAX),
        ("--gateways", gateways, GATEWAYS_MAX),
    ] {
        anyhow::ensure!(
            (1..=max).contains(&n),
            "{flag} is {n}; it must be 1..={max}"
        );
    }
    // One storage node cannot hold three replicas: a small cluster replicates to all it has.
    let replication = options
        .replication
        .unwrap_or(REPLICATION_DEFAULT.min(storage));
    anyhow::ensure!(
        (1..=storage).contains(&replication),
        "--replication is {replication}; it must be 1..={storage} (the number of storage nodes)"
    );
    let cut_interval_us = options.cut_interval_us.unwrap_or(CUT_INTERVAL_US_DEFAULT);
    anyhow::ensure!(
        (1..=config::CUT_INTERVAL_US_MAX).contains(&cut_interval_us),
        "--cut-interval-us is {cut_interval_us}; it must be 1..={}",
        config::CUT_INTERVAL_US_MAX
    );
    Ok(Layout {
        sequencers,
        storage,
        gateways,
        replication,
        cut_interval_us,
    })
}

/// Lays out a new cluster: picks ports, writes one TOML file per node and cluster.json.
fn create(dir: &Path, options: &UpOptions) -> anyhow::Result<Manifest> {
    let Layout {
        sequencers,
        storage,
        gateways,
        replication,
        cut_interval_us,
    } = layout(options)?;
    // A gateway takes two ports: HTTP, and one for its workers.
    let ports = free_ports(sequencers + storage + 2 * gateways)?;
    let mut ports = ports.into_iter();
    let mut next_addr = || format!("127.0.0.1:{}", ports.next().expect("one port per node"));
    let ids = |first: u32, n: usize| (first..).take(n).collect::<Vec<u32>>();
    let sequencer_map: BTreeMap<u32, String> = ids(SEQUENCER_ID_FIRST, sequencers)
        .into_iter()
        .map(|id| (id, next_addr()))
        .collect();
    let storage_map: BTreeMap<u32, String> = ids(STORAGE_ID_FIRST, storage)
        .into_iter()
        .map(|id| (id, next_addr()))
        .collect();
    let gateway_map: BTreeMap<u32, String> = ids(GATEWAY_ID_FIRST, gateways)
        .into_iter()
        .map(|id| (id, next_addr()))
        .collect();
    let workers_map: BTreeMap<u32, String> =
        gateway_map.keys().map(|id| (*id, next_addr())).collect();
    let cluster = cluster_section(
        &sequencer_map,
        &storage_map,
        replication,
        options.durability.unwrap_or(DurabilityMode::Fsync),
        cut_interval_us,
    );

    let certs = options.tls.then(|| dir.join(CERTS_DIR));
    let tls = match &certs {
        Some(certs) => {
            crate::cert::make_ca(certs, "tally cluster CA")?;
            Some(tls_files(certs, "cli")?)
        }
        None => None,
    };
    // A process's `[tls]` section (its own certificate), and its URLs' scheme.
    let tls_section = |stem: &str| -> anyhow::Result<String> {
        let Some(certs) = &certs else {
            return Ok(String::new());
        };
        let files = tls_files(certs, stem)?;
        Ok(format!(
            "\n[tls]\ncert = {}\nkey = {}\nca = {}\n",
            toml_string(&files.cert.to_string_lossy()),
            toml_string(&files.key.to_string_lossy()),
            toml_string(&files.ca.to_string_lossy()),
        ))
    };
    let scheme = if options.tls { "https" } else { "http" };
    if options.nodes.is_some() {
        let nodes = create_hosts(
            dir,
            &cluster,
            [&sequencer_map, &storage_map, &gateway_map],
            &workers_map,
            &tls_section,
            scheme,
        )?;
        return finish_create(dir, Manifest { nodes, tls });
    }
    let mut nodes = Vec::new();
    let plan = [
        (Role::Gateway, &gateway_map),
        (Role::Sequencer, &sequencer_map),
        (Role::Storage, &storage_map),
    ];
    for (role, map) in plan {
        for (&id, addr) in map {
            let stem = NodeEntry::stem(role, id);
            let config = dir.join(format!("{stem}.toml"));
            let data_dir = (role != Role::Gateway).then(|| dir.join(&stem));
            let mut text = format!(
                "# Written by `tally cluster up`; `tally cluster up --dir {}` starts the cluster\n\
                 # again from these files. The [cluster] section is the same in every node's file.\n\
                 role = \"{role}\"\nid = {id}\n",
                dir.display()
            );
            match &data_dir {
                Some(data_dir) => {
                    text += &format!("data_dir = {}\n", toml_string(&data_dir.to_string_lossy()));
                    text += &format!("listen = {}\n", toml_string(addr));
                }
                None => {
                    text += &format!("http = {}\n", toml_string(addr));
                    text += &format!("workers = {}\n", toml_string(&workers_map[&id]));
                }
            }
            text += &cluster;
            text += &tls_section(&stem)?;
            fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;
            if let Some(data_dir) = &data_dir {
                fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
            }
            nodes.push(NodeEntry {
                role,
                id,
                pid: None,
                rpc: (role != Role::Gateway).then(|| addr.clone()),
                http: (role == Role::Gateway).then(|| format!("{scheme}://{addr}")),
                workers: (role == Role::Gateway).then(|| workers_map[&id].clone()),
                data_dir,
                config,
                log: dir.join(format!("{stem}.log")),
                host: None,
            });
        }
    }
    finish_create(dir, Manifest { nodes, tls })
}

/// Where `--tls` puts the cluster's CA and certificates, under the cluster's directory.
pub const CERTS_DIR: &str = "certs";

/// Makes the certificate of process `stem` (for 127.0.0.1 and localhost, where the cluster
/// runs), signed by the CA in `certs`; its files.
fn tls_files(certs: &Path, stem: &str) -> anyhow::Result<config::TlsFile> {
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    let cert = crate::cert::make_node(certs, stem, &hosts)?;
    let (_, key) = crate::cert::node_files(certs, stem);
    let (ca, _) = crate::cert::ca_files(certs);
    Ok(config::TlsFile { cert, key, ca })
}

/// Checks every file of a new cluster as its node will, then writes cluster.json.
fn finish_create(dir: &Path, manifest: Manifest) -> anyhow::Result<Manifest> {
    for node in &manifest.nodes {
        load_node(node.role, &node.config)?;
    }
    manifest.write(dir)?;
    Ok(manifest)
}

/// The files of a cluster of nodes that each host three roles: node K runs the K-th
/// sequencer, storage node and gateway of `maps` from `node-K.toml`.
fn create_hosts(
    dir: &Path,
    cluster: &str,
    maps: [&BTreeMap<u32, String>; 3],
    workers: &BTreeMap<u32, String>,
    tls_section: &dyn Fn(&str) -> anyhow::Result<String>,
    scheme: &str,
) -> anyhow::Result<Vec<NodeEntry>> {
    let [sequencers, storage, gateways] = maps;
    let mut nodes = Vec::new();
    let members = sequencers.iter().zip(storage).zip(gateways);
    for (host, (((&seq, seq_addr), (&store, store_addr)), (&gateway, http))) in
        (0u32..).zip(members)
    {
        let stem = format!("node-{host}");
        let config = dir.join(format!("{stem}.toml"));
        let data_dir = dir.join(&stem);
        let mut text = format!(
            "# Written by `tally cluster up`; `tally cluster up --dir {}` starts the cluster\n\
             # again from these files. The [cluster] section is the same in every node's file.\n\
             # `tally node --config` runs every role `roles` lists in one process.\n\
             roles = [\"sequencer\", \"storage\", \"gateway\"]\ndata_dir = {}\n\n\
             [sequencer]\nid = {seq}\nlisten = {}\n\n\
             [storage]\nid = {store}\nlisten = {}\n\n\
             [gateway]\nid = {gateway}\nhttp = {}\nworkers = {}\n{cluster}",
            dir.display(),
            toml_string(&data_dir.to_string_lossy()),
            toml_string(seq_addr),
            toml_string(store_addr),
            toml_string(http),
            toml_string(&workers[&gateway]),
        );
        text += &tls_section(&stem)?;
        fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;
        let entry = |role: Role, id: u32| NodeEntry {
            role,
            id,
            pid: None,
            rpc: match role {
                Role::Sequencer => Some(seq_addr.clone()),
                Role::Storage => Some(store_addr.clone()),
                Role::Gateway => None,
            },
            http: (role == Role::Gateway).then(|| format!("{scheme}://{http}")),
            workers: (role == Role::Gateway).then(|| workers[&gateway].clone()),
            data_dir: (role != Role::Gateway).then(|| data_dir.join(role.name())),
            config: config.clone(),
            log: dir.join(format!("{stem}.log")),
            host: Some(host),
        };
        for (role, id) in [
            (Role::Sequencer, seq),
            (Role::Storage, store),
            (Role::Gateway, gateway),
        ] {
            let node = entry(role, id);
            if let Some(data_dir) = &node.data_dir {
                fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
            }
            nodes.push(node);
        }
    }
    Ok(nodes)
}

/// The `[cluster]` section every node's file shares.
fn cluster_section(
    sequencers: &BTreeMap<u32, String>,
    storage: &BTreeMap<u32, String>,
    replication: usize,
    durability: DurabilityMode,
    cut_interval_us: u64,
) -> String {
    let inline = |map: &BTreeMap<u32, String>| {
        let items: Vec<String> = map
            .iter()
            .map(|(id, addr)| format!("{id} = {}", toml_string(addr)))
            .collect();
        format!("{{ {} }}", items.join(", "))
    };
    format!(
        "\n[cluster]\nsequencers = {}\nstorage = {}\nreplication = {replication}\n\
         cut_interval_us = {cut_interval_us}\ndurability = \"{}\"\nflush_interval_ms = {}\n\
         gateway_timeout_ms = {}\nraft_tick_ms = {}\n",
        inline(sequencers),
        inline(storage),
        durability.name(),
        config::FLUSH_INTERVAL_MS_DEFAULT,
        crate::roles::GATEWAY_TIMEOUT_MS_DEFAULT,
        crate::roles::RAFT_TICK_MS_DEFAULT,
    )
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `count` distinct free ports on 127.0.0.1. They are held together while picked, so no two
/// are the same; another program could still take one before the node binds it, and the
/// node then fails with the address in its log.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A node process this command started, and where its log was when it started.
struct Started {
    child: Child,
    log_offset: u64,
}

/// Starts one node: `tally <role> --config FILE` in its own session (no terminal signals),
/// stdout and stderr appended to its log.
fn spawn(dir: &Path, node: &NodeEntry) -> anyhow::Result<Started> {
    let exe = std::env::current_exe().context("finding the tally executable")?;
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .with_context(|| format!("opening {}", node.log.display()))?;
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    writeln!(
        log,
        "---- tally cluster: starting {} from {} (unix time {unix_secs}) ----",
        node.process_name(),
        node.config.display()
    )
    .with_context(|| format!("writing {}", node.log.display()))?;
    let log_offset = log
        .seek(SeekFrom::End(0))
        .with_context(|| format!("reading {}", node.log.display()))?;
    let stderr = log
        .try_clone()
        .with_context(|| format!("opening {}", node.log.display()))?;
    let mut command = Command::new(exe);
    command
        .arg(match node.host {
            Some(_) => "node",
            None => node.role.name(),
        })
        .arg("--config")
        .arg(&node.config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", node.process_name()))?;
    Ok(Started { child, log_offset })
}

/// Waits until every started node printed its ready line; a gateway's line gives its URL.
async fn wait_ready(
    manifest: &mut Manifest,
    started: &mut [(Vec<usize>, Started)],
    deadline: Instant,
) -> anyhow::Result<()> {
    // (process, manifest index) of every role not ready yet.
    let mut waiting: Vec<(usize, usize)> = started
        .iter()
        .enumerate()
        .flat_map(|(p, (group, _))| group.iter().map(move |&index| (p, index)))
        .collect();
    loop {
        let mut still = Vec::new();
        for &(p, index) in &waiting {
            let process = &mut started[p].1;
            let node = &mut manifest.nodes[index];
            let output = read_from(&node.log, process.log_offset);
            let prefix = node.ready_prefix();
            if let Some(line) = output.lines().find(|l| l.starts_with(&prefix)) {
                let addr = line[prefix.len()..].trim().to_string();
                if node.role == Role::Gateway {
                    node.http = Some(addr);
                }
                continue;
            }
            if let Some(status) = process.child.try_wait().context("checking a node")? {
                bail!(
                    "{} exited ({status}) before {} was ready; read {}{}",
                    node.process_name(),
                    node.name(),
                    node.log.display(),
                    last_line(&output)
                        .map(|l| format!(" (its last line: {l})"))
                        .unwrap_or_default()
                );
            }
            still.push((p, index));
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let late: Vec<String> = waiting
                .iter()
                .map(|&(_, index)| {
                    let node = &manifest.nodes[index];
                    format!("{} (read {})", node.name(), node.log.display())
                })
                .collect();
            bail!("not ready in time: {}", late.join(", "));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The leader, as `up` reports it.
struct LeaderSummary {
    id: u64,
    view: u64,
}

/// Waits until a sequencer answers as leader with a view that holds every gateway.
async fn wait_for_view(manifest: &Manifest, deadline: Instant) -> anyhow::Result<LeaderSummary> {
    let gateways: Vec<u32> = manifest.of(Role::Gateway).map(|g| g.id).collect();
    loop {
        let statuses = statuses(manifest, Role::Sequencer).await;
        let leader = pick_leader(&statuses);
        let missing: Vec<u32> = match leader {
            Some(leader) => {
                let in_view = view_gateways(leader);
                gateways
                    .iter()
                    .copied()
                    .filter(|g| !in_view.contains(g))
                    .collect()
            }
            None => gateways.clone(),
        };
        if let (Some(leader), true) = (leader, missing.is_empty()) {
            return Ok(LeaderSummary {
                id: leader["id"].as_u64().unwrap_or_default(),
                view: leader["view"]["id"].as_u64().unwrap_or_default(),
            });
        }
        if Instant::now() >= deadline {
            let logs = |role: Role, only: Option<&[u32]>| -> Vec<String> {
                manifest
                    .of(role)
                    .filter(|n| only.is_none_or(|ids| ids.contains(&n.id)))
                    .map(|n| n.log.display().to_string())
                    .collect()
            };
            return Err(match leader {
                None => anyhow!(
                    "no sequencer answered as leader in time ({}); read {}",
                    describe_statuses(&statuses),
                    logs(Role::Sequencer, None).join(", ")
                ),
                Some(leader) => anyhow!(
                    "sequencer {} leads, but its view ({}) lacks gateways {missing:?} in time; \
                     read {}",
                    leader["id"],
                    match leader["view"]["id"].as_u64() {
                        Some(id) => format!("view {id}"),
                        None => "no view yet".into(),
                    },
                    logs(Role::Gateway, Some(&missing)).join(", ")
                ),
            });
        }
        tokio::time::sleep(POLL_INTERVAL * 2).await;
    }
}

/// The gateway ids in a leader status's view.
fn view_gateways(status: &Value) -> Vec<u32> {
    status["view"]["gateways"]
        .as_object()
        .map(|g| g.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

/// Stops the processes this command started: SIGTERM, then SIGKILL after a short grace.
async fn stop_children(started: &mut [(Vec<usize>, Started)]) {
    for (_, process) in started.iter_mut() {
        if let Ok(None) = process.child.try_wait() {
            let _ = signal(process.child.id(), libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut running = 0;
        for (_, process) in started.iter_mut() {
            if let Ok(None) = process.child.try_wait() {
                running += 1;
            }
        }
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            for (_, process) in started.iter_mut() {
                let _ = process.child.kill();
                let _ = process.child.wait();
            }
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The Status of each running node of `role` (or why there is none), by id.
async fn statuses(manifest: &Manifest, role: Role) -> BTreeMap<u32, Result<Value, String>> {
    let mut calls = tokio::task::JoinSet::new();
    let mut statuses = BTreeMap::new();
    for node in manifest.of(role) {
        if !node.alive() {
            statuses.insert(node.id, Err("not running".to_string()));
            continue;
        }
        let (id, addr) = (node.id, node.rpc.clone().unwrap_or_default());
        calls.spawn(async move {
            let status = match role {
                Role::Sequencer => sequencer_status(&addr).await,
                _ => storage_status(&addr).await,
            };
            (id, status)
        });
    }
    while let Some(done) = calls.join_next().await {
        let (id, status) = done.expect("a status call does not panic");
        // The root cause ("Connection refused") says it; the layers above repeat the call.
        statuses.insert(id, status.map_err(|e| e.root_cause().to_string()));
    }
    statuses
}

async fn channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    // As a role dials (the cluster's certificate, if it has one), with the status timeouts.
    let endpoint = crate::roles::endpoint(addr)
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(STATUS_TIMEOUT)
        .timeout(STATUS_TIMEOUT);
    endpoint.connect().await.context("connecting")
}

fn parse_status(reply: pb::StatusReply) -> anyhow::Result<Value> {
    serde_json::from_str(&reply.json).context("the status is not JSON")
}

async fn sequencer_status(addr: &str) -> anyhow::Result<Value> {
    let mut client = pb::sequencer_client::SequencerClient::new(channel(addr).await?);
    let reply = client
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| anyhow!("{}: {}", s.code(), s.message()))?;
    parse_status(reply.into_inner())
}

async fn storage_status(addr: &str) -> anyhow::Result<Value> {
    let mut client = pb::storage_client::StorageClient::new(channel(addr).await?);
    let reply = client
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| anyhow!("{}: {}", s.code(), s.message()))?;
    parse_status(reply.into_inner())
}

/// The sequencer that answers as leader; with several (a deposed one that has not noticed
/// yet), the one of the highest term.
fn pick_leader(statuses: &BTreeMap<u32, Result<Value, String>>) -> Option<&Value> {
    statuses
        .values()
        .filter_map(|s| s.as_ref().ok())
        .filter(|s| s["is_leader"].as_bool() == Some(true))
        .max_by_key(|s| s["term"].as_u64().unwrap_or_default())
}

fn describe_statuses(statuses: &BTreeMap<u32, Result<Value, String>>) -> String {
    let parts: Vec<String> = statuses
        .iter()
        .map(|(id, status)| match status {
            Ok(s) => match s["leader"].as_u64() {
                Some(leader) => format!("sequencer {id}: follower of {leader}"),
                None => format!("sequencer {id}: no leader known"),
            },
            Err(e) => format!("sequencer {id}: {e}"),
        })
        .collect();
    parts.join("; ")
}

/// `tally cluster status`: every node's liveness and, from the sequencer leader, the view and
/// the progress of shards and nodes. `json` prints the leader's status and the nodes as JSON.
pub async fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let manifest = Manifest::read(dir)?;
    let (sequencers, storage) = tokio::join!(
        statuses(&manifest, Role::Sequencer),
        statuses(&manifest, Role::Storage)
    );
    let leader = pick_leader(&sequencers);
    if json {
        let nodes: Vec<Value> = manifest
            .nodes
            .iter()
            .map(|n| {
                let own = match n.role {
                    Role::Sequencer => sequencers.get(&n.id),
                    Role::Storage => storage.get(&n.id),
                    Role::Gateway => None,
                };
                json!({
                    "role": n.role,
                    "id": n.id,
                    "pid": n.pid,
                    "alive": n.alive(),
                    "rpc": n.rpc,
                    "http": n.http,
                    "status": own.and_then(|s| s.as_ref().ok()),
                    "error": own.and_then(|s| s.as_ref().err()),
                })
            })
            .collect();
        let out = json!({ "dir": dir, "leader": leader, "nodes": nodes });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("JSON serializes")
        );
        return Ok(());
    }
    print!(
        "{}",
        describe(dir, &manifest, leader, &sequencers, &storage)
    );
    Ok(())
}

/// The human form of `tally cluster status`.
fn describe(
    dir: &Path,
    manifest: &Manifest,
    leader: Option<&Value>,
    sequencers: &BTreeMap<u32, Result<Value, String>>,
    storage: &BTreeMap<u32, Result<Value, String>>,
) -> String {
    let mut out = format!("cluster in {}\n", dir.display());
    let position = leader.and_then(|l| l["metalog_position"].as_u64());
    match leader {
        Some(l) => {
            out += &format!(
                "leader: sequencer {} (term {}), metalog position {}, {} events\n",
                l["id"], l["term"], l["metalog_position"], l["events"]
            );
            match l["view"].as_object() {
                Some(v) => {
                    out += &format!(
                        "view {} from metalog position {}, write quorum {}\n",
                        v["id"], v["start_position"], v["write_quorum"]
                    );
                    if let Some(shards) = v.get("shards").and_then(Value::as_object) {
                        for (shard, replicas) in shards {
                            out += &format!("  shard {shard}: storage {}\n", list(replicas));
                        }
                    }
                }
                None => out += "view: none yet\n",
            }
        }
        None => out += &format!("leader: none ({})\n", describe_statuses(sequencers)),
    }
    out += &format!(
        "\n{:<14} {:>8} {:<6} {:<28} {}\n",
        "NODE", "PID", "ALIVE", "ADDRESS", "STATE"
    );
    for node in &manifest.nodes {
        let state = match node.role {
            Role::Sequencer => match sequencers.get(&node.id) {
                Some(Ok(s)) if s["is_leader"].as_bool() == Some(true) => "leader".to_string(),
                Some(Ok(s)) => {
                    let mut state = "follower".to_string();
                    if let Some(p) = s["metalog_position"].as_u64() {
                        state += &format!(", position {p}");
                        if let Some(lead) = position {
                            state += &format!(", lag {}", lead.saturating_sub(p));
                        }
                    }
                    state
                }
                Some(Err(e)) if node.alive() => format!("no answer: {e}"),
                _ => "stopped".to_string(),
            },
            Role::Storage | Role::Gateway => {
                let key = if node.role == Role::Storage {
                    "storage_nodes"
                } else {
                    "gateway_nodes"
                };
                let seen = leader.map(|l| &l[key][node.id.to_string()]);
                let mut parts = Vec::new();
                if let (Role::Gateway, Some(leader)) = (node.role, leader) {
                    let in_view = view_gateways(leader).contains(&node.id);
                    parts.push(if in_view { "in view" } else { "not in view" }.to_string());
                }
                if let Some(seen) = seen.filter(|s| s.is_object()) {
                    if let Some(applied) = seen["applied"].as_u64() {
                        parts.push(format!("applied {applied}"));
                        if let Some(p) = position {
                            parts.push(format!("lag {}", p.saturating_sub(applied)));
                        }
                    }
                    if let Some(ms) = seen["last_seen_ms"].as_u64() {
                        parts.push(format!("seen {ms} ms ago"));
                    }
                } else if leader.is_some() {
                    parts.push("not heard from".into());
                }
                match storage.get(&node.id) {
                    _ if !node.alive() => parts.push("stopped".into()),
                    Some(Err(e)) => parts.push(format!("no answer: {e}")),
                    _ => {}
                }
                parts.join(", ")
            }
        };
        out += &format!(
            "{:<14} {:>8} {:<6} {:<28} {}\n",
            node.name(),
            node.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            if node.alive() { "yes" } else { "no" },
            node.rpc.as_deref().or(node.http.as_deref()).unwrap_or("-"),
            state
        );
    }
    if let Some(shards) = leader.and_then(|l| l["shards"].as_object()) {
        out += &format!("\n{:<8} {:>12}  {}\n", "SHARD", "ORDERED", "DURABLE ON");
        for (shard, progress) in shards {
            let durable: Vec<String> = progress["durable"]
                .as_object()
                .map(|d| d.iter().map(|(node, n)| format!("{node}={n}")).collect())
                .unwrap_or_default();
            out += &format!(
                "{:<8} {:>12}  {}\n",
                shard,
                progress["ordered"].to_string(),
                durable.join(" ")
            );
        }
    }
    out
}

fn list(value: &Value) -> String {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| value.to_string())
}

/// `tally cluster down`: SIGTERM to every running node, SIGKILL to those still running after
/// `grace`; returns once all are gone. Data and files stay.
pub async fn down(dir: &Path, grace: Duration) -> anyhow::Result<()> {
    let (_lock, manifest) = open(dir)?;
    let mut running: Vec<&NodeEntry> = manifest.nodes.iter().filter(|n| n.alive()).collect();
    // One per process: roles that share one are stopped with it.
    let mut pids = std::collections::BTreeSet::new();
    running.retain(|n| pids.insert(n.pid));
    for node in &running {
        signal(node.pid.expect("a running node has a pid"), libc::SIGTERM)
            .with_context(|| format!("SIGTERM to {}", node.process_name()))?;
    }
    let stubborn = wait_gone(&running, grace).await;
    for node in &stubborn {
        eprintln!(
            "{} did not stop within {grace:?}: SIGKILL",
            node.process_name()
        );
        signal(node.pid.expect("a running node has a pid"), libc::SIGKILL)
            .with_context(|| format!("SIGKILL to {}", node.process_name()))?;
    }
    let left = wait_gone(&stubborn, KILL_WAIT).await;
    if !left.is_empty() {
        let names: Vec<String> = left.iter().map(|n| n.process_name()).collect();
        bail!("still running after SIGKILL: {}", names.join(", "));
    }
    println!(
        "stopped {} of the cluster in {}; data kept (`tally cluster up --dir {}` starts it again)",
        count(running.len(), "node"),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// `tally cluster kill --node ID`: SIGKILL to one node; returns once it is gone.
pub async fn kill(dir: &Path, id: u32) -> anyhow::Result<()> {
    let (_lock, manifest) = open(dir)?;
    let index = manifest.node(id)?;
    let node = &manifest.nodes[index];
    let what = match node.host {
        Some(_) => format!(
            "{} ({})",
            node.process_name(),
            manifest.roles_of(&manifest.process_of(index))
        ),
        None => node.name(),
    };
    if !node.alive() {
        println!("{what} is not running");
        return Ok(());
    }
    let pid = node.pid.expect("a running node has a pid");
    signal(pid, libc::SIGKILL).with_context(|| format!("SIGKILL to {what}"))?;
    if !wait_gone(&[node], KILL_WAIT).await.is_empty() {
        bail!("{what} (pid {pid}) is still running after SIGKILL");
    }
    println!("killed {what} (pid {pid})");
    Ok(())
}

/// `tally cluster start --node ID`: starts one stopped node from its file and waits until it
/// is ready.
pub async fn start(dir: &Path, id: u32, timeout: Duration) -> anyhow::Result<()> {
    let (_lock, mut manifest) = open(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let index = manifest.node(id)?;
    let node = &manifest.nodes[index];
    if node.alive() {
        bail!(
            "{} is already running (pid {})",
            node.process_name(),
            node.pid.unwrap_or_default()
        );
    }
    // Every role of the node's process starts with it.
    let group = manifest.process_of(index);
    let refreshed = refresh(&Manifest {
        nodes: group.iter().map(|&i| manifest.nodes[i].clone()).collect(),
        tls: manifest.tls.clone(),
    })?;
    for (&i, node) in group.iter().zip(refreshed.nodes) {
        manifest.nodes[i] = node;
    }
    let process = spawn(&dir, &manifest.nodes[index])?;
    for &i in &group {
        manifest.nodes[i].pid = Some(process.child.id());
    }
    manifest.write(&dir)?;
    let mut started = vec![(group.clone(), process)];
    let deadline = Instant::now() + timeout;
    if let Err(e) = wait_ready(&mut manifest, &mut started, deadline).await {
        stop_children(&mut started).await;
        return Err(e);
    }
    manifest.write(&dir)?;
    for &i in &group {
        let node = &manifest.nodes[i];
        println!(
            "started {} (pid {}): {}",
            node.name(),
            node.pid.unwrap_or_default(),
            node.http.as_deref().or(node.rpc.as_deref()).unwrap_or("-")
        );
    }
    Ok(())
}

/// Waits up to `timeout` for the nodes' processes to end; returns those still running.
async fn wait_gone<'a>(nodes: &[&'a NodeEntry], timeout: Duration) -> Vec<&'a NodeEntry> {
    let deadline = Instant::now() + timeout;
    loop {
        let running: Vec<&NodeEntry> = nodes.iter().copied().filter(|n| n.alive()).collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether `pid` is a running process started with `config` on its command line. A zombie
/// (exited, not yet reaped) has an empty command line and counts as stopped.
fn process_runs(pid: u32, config: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let config = config.as_os_str().as_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == config)
}

fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: kill(2) takes plain integers; the pid was checked to be a node of this cluster.
    if unsafe { libc::kill(pid, signal) } == -1 {
        let e = std::io::Error::last_os_error();
        // Gone in the meantime: what the caller wanted.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// What a log holds from `offset` on (lossy UTF-8; empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

/// Locks an existing cluster's directory and reads its manifest.
fn open(dir: &Path) -> anyhow::Result<(DirLock, Manifest)> {
    // First for its error: a directory without a cluster is not locked or created into.
    Manifest::read(dir)?;
    let lock = DirLock::acquire(dir)?;
    Ok((lock, Manifest::read(dir)?))
}

/// An exclusive flock on DIR/cluster.lock for the life of the value. The file descriptor is
/// close-on-exec, so the nodes started meanwhile do not inherit the lock.
struct DirLock {
    _file: fs::File,
}

impl DirLock {
    fn acquire(dir: &Path) -> anyhow::Result<DirLock> {
        use std::os::fd::AsRawFd as _;
        let path = dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this value owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == -1 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(DirLock { _file: file })
    }
}

/// The `[cluster]` section of a written file, parsed back (for tests of `create`).
#[cfg(test)]
fn cluster_of(path: &Path) -> config::ClusterFile {
    let text = fs::read_to_string(path).expect("the file was written");
    config::role_file(path, &text, Role::Sequencer)
        .expect("it parses")
        .cluster
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> UpOptions {
        UpOptions {
            dir: dir.to_path_buf(),
            nodes: None,
            sequencers: None,
            storage: None,
            gateways: None,
            replication: None,
            durability: None,
            cut_interval_us: None,
            timeout: Duration::from_secs(1),
            tls: false,
        }
    }

    #[test]
    fn with_tls_every_process_has_its_certificate_and_gateways_serve_https() {
        let dir = tempfile::tempdir().unwrap();
        for nodes in [None, Some(3)] {
            let dir = dir.path().join(format!("{nodes:?}"));
            std::fs::create_dir_all(&dir).unwrap();
            let options = UpOptions {
                nodes,
                tls: true,
                ..options(&dir)
            };
            let manifest = create(&dir, &options).unwrap();
            let cli = manifest.tls.clone().expect("the CLI's certificate");
            assert_eq!(cli.cert, dir.join("certs/cli.pem"));
            let mut certs = std::collections::BTreeSet::new();
            for node in &manifest.nodes {
                let tls = config::load_tls(&node.config)
                    .unwrap()
                    .expect("a [tls] section");
                assert_eq!(tls.ca, dir.join("certs/ca.pem"));
                certs.insert(tls.cert.clone());
                if node.role == Role::Gateway {
                    assert!(node.http.as_deref().unwrap().starts_with("https://"));
                }
            }
            // One certificate per process: 8 processes, or 3 nodes of three roles.
            assert_eq!(certs.len(), if nodes.is_some() { 3 } else { 8 });
            // A restart reads the same files; --tls on a cluster made without it is refused.
            assert_eq!(refresh(&manifest).unwrap().tls, manifest.tls);
        }
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let manifest = create(&plain, &options(&plain)).unwrap();
        let again = UpOptions {
            tls: true,
            ..options(&plain)
        };
        let error = check_restart(&manifest, &again).unwrap_err().to_string();
        assert!(error.contains("made without it"), "{error}");
    }

    #[test]
    fn create_writes_one_valid_file_per_node_and_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = create(dir.path(), &options(dir.path())).unwrap();
        let ids: Vec<(Role, u32)> = manifest.nodes.iter().map(|n| (n.role, n.id)).collect();
        assert_eq!(
            ids,
            [
                (Role::Gateway, 20),
                (Role::Gateway, 21),
                (Role::Sequencer, 0),
                (Role::Sequencer, 1),
                (Role::Sequencer, 2),
                (Role::Storage, 10),
                (Role::Storage, 11),
                (Role::Storage, 12),
            ]
        );
        let mut ports = std::collections::BTreeSet::new();
        for node in &manifest.nodes {
            let (_, options) = load_node(node.role, &node.config).unwrap();
            let addr = node.rpc.clone().or(node.http.clone()).unwrap();
            assert!(addr.contains("127.0.0.1:"), "{addr}");
            assert!(ports.insert(addr.rsplit(':').next().unwrap().to_string()));
            match (node.role, options) {
                (Role::Sequencer, config::RoleOptions::Sequencer(o)) => {
                    assert_eq!(o.sequencers.len(), 3);
                    assert_eq!(o.storage.len(), 3);
                    assert_eq!(o.replication, 3);
                    assert_eq!(Some(o.data_dir), node.data_dir);
                    assert_eq!(
                        node.config,
                        dir.path().join(format!("seq-{}.toml", node.id))
                    );
                }
                (Role::Storage, config::RoleOptions::Storage(o)) => {
                    assert_eq!(o.durability, storage_node::Durability::Fsync);
                    assert_eq!(Some(o.data_dir.clone()), node.data_dir);
                    assert!(o.data_dir.is_dir());
                }
                (Role::Gateway, config::RoleOptions::Gateway(o)) => {
                    assert_eq!(node.http, Some(format!("http://{}", o.http)));
                    assert_eq!(node.data_dir, None);
                }
                (role, options) => panic!("{role} file gave {options:?}"),
            }
        }
        let read = Manifest::read(dir.path()).unwrap();
        assert_eq!(read.nodes.len(), 8);
        assert_eq!(
            serde_json::to_value(&read.nodes[0]).unwrap()["role"],
            "gateway"
        );
        // A restart finds the same addresses in the files.
        let refreshed = refresh(&read).unwrap();
        for (a, b) in refreshed.nodes.iter().zip(&manifest.nodes) {
            assert_eq!(
                (&a.rpc, &a.http, &a.data_dir),
                (&b.rpc, &b.http, &b.data_dir)
            );
        }
    }

    #[test]
    fn with_nodes_each_process_hosts_a_sequencer_a_storage_node_and_a_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path());
        o.nodes = Some(3);
        let manifest = create(dir.path(), &o).unwrap();
        let ids: Vec<(u32, Role, u32)> = manifest
            .nodes
            .iter()
            .map(|n| (n.host.unwrap(), n.role, n.id))
            .collect();
        let expected: Vec<(u32, Role, u32)> = (0..3)
            .flat_map(|k| {
                [
                    (k, Role::Sequencer, k),
                    (k, Role::Storage, 10 + k),
                    (k, Role::Gateway, 20 + k),
                ]
            })
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(manifest.hosts(), 3);
        let groups = manifest.processes();
        assert_eq!(groups, [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]);
        for node in &manifest.nodes {
            let k = node.host.unwrap();
            assert_eq!(node.config, dir.path().join(format!("node-{k}.toml")));
            assert_eq!(node.log, dir.path().join(format!("node-{k}.log")));
            let (_, options) = load_node(node.role, &node.config).unwrap();
            match options {
                config::RoleOptions::Sequencer(s) => {
                    assert_eq!(Some(&s.data_dir), node.data_dir.as_ref());
                    assert!(s.data_dir.ends_with(format!("node-{k}/sequencer")));
                    assert_eq!(s.replication, 3);
                }
                config::RoleOptions::Storage(s) => assert!(s.data_dir.is_dir()),
                config::RoleOptions::Gateway(g) => {
                    assert_eq!(node.http, Some(format!("http://{}", g.http)))
                }
            }
        }
        let (roles, _) = config::load_host(&manifest.nodes[0].config).unwrap();
        assert_eq!(roles.len(), 3);
        assert_eq!(roles[0].1, manifest.nodes[0].rpc);
        assert_eq!(roles[1].1, manifest.nodes[1].rpc);
        // The same files on a restart, and --nodes must agree with them.
        let read = Manifest::read(dir.path()).unwrap();
        assert_eq!(read.nodes[4].host, Some(1));
        refresh(&read).unwrap();
        check_restart(&read, &o).unwrap();
        let mut two = o.clone();
        two.nodes = Some(2);
        let error = check_restart(&read, &two).unwrap_err().to_string();
        assert!(
            error.contains("--nodes 2 differs") && error.contains("3 nodes"),
            "{error}"
        );
    }

    #[test]
    fn nodes_refuses_role_counts_and_sizes_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path());
        o.nodes = Some(3);
        o.storage = Some(3);
        let error = layout(&o).map(|_| ()).unwrap_err().to_string();
        assert!(
            error.contains("--storage cannot be given with it"),
            "{error}"
        );
        o.storage = None;
        o.nodes = Some(0);
        assert!(layout(&o).is_err());
        o.nodes = Some(1);
        assert_eq!(layout(&o).unwrap().replication, 1);
    }

    #[test]
    fn create_takes_the_options_and_replicates_to_all_of_a_small_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path());
        o.sequencers = Some(1);
        o.storage = Some(2);
        o.gateways = Some(1);
        o.durability = Some(DurabilityMode::Async);
        o.cut_interval_us = Some(300);
        let manifest = create(dir.path(), &o).unwrap();
        assert_eq!(manifest.nodes.len(), 4);
        let cluster = cluster_of(&manifest.nodes[1].config);
        assert_eq!(cluster.replication, Some(2));
        assert_eq!(cluster.durability, Some(DurabilityMode::Async));
        assert_eq!(cluster.cut_interval_us, Some(300));
        check_restart(&manifest, &o).unwrap();
        let mut differs = o.clone();
        differs.storage = Some(3);
        let e = check_restart(&manifest, &differs).unwrap_err().to_string();
        assert!(e.contains("--storage 3 differs"), "{e}");
        let mut differs = o.clone();
        differs.durability = Some(DurabilityMode::Fsync);
        let e = check_restart(&manifest, &differs).unwrap_err().to_string();
        assert!(
            e.contains("--durability fsync differs") && e.contains("durability async"),
            "{e}"
        );
    }

    #[test]
    fn create_refuses_bad_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let check = |change: fn(&mut UpOptions), expect: &str| {
            let mut o = options(dir.path());
            change(&mut o);
            let e = create(dir.path(), &o).unwrap_err().to_string();
            assert!(e.contains(expect), "{e:?} does not contain {expect:?}");
        };
        check(
            |o| o.replication = Some(4),
            "--replication is 4; it must be 1..=3",
        );
        check(|o| o.sequencers = Some(0), "--sequencers is 0");
        check(
            |o| o.storage = Some(11),
            "--storage is 11; it must be 1..=10",
        );
        check(|o| o.gateways = Some(0), "--gateways is 0");
        check(|o| o.cut_interval_us = Some(0), "--cut-interval-us is 0");
        assert!(!dir.path().join(MANIFEST_FILE).exists());
    }

    #[test]
    fn a_pid_is_a_node_only_while_it_runs_the_node_config() {
        let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id();
        // Right after spawn the kernel may not have set up the new command line yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process_runs(pid, Path::new("1000")) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let runs = process_runs(pid, Path::new("1000"));
        let other = process_runs(pid, Path::new("/nowhere/seq-0.toml"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(runs && !other);
        assert!(!process_runs(pid, Path::new("1000")));
    }

    #[test]
    fn the_leader_is_the_one_of_the_highest_term() {
        let statuses = BTreeMap::from([
            (0, Ok(json!({"id": 0, "is_leader": true, "term": 2}))),
            (1, Ok(json!({"id": 1, "is_leader": true, "term": 3}))),
            (2, Err("connecting".to_string())),
        ]);
        assert_eq!(pick_leader(&statuses).unwrap()["id"], 1);
        let statuses = BTreeMap::from([(0, Ok(json!({"id": 0, "is_leader": false, "leader": 1})))]);
        assert!(pick_leader(&statuses).is_none());
        assert_eq!(describe_statuses(&statuses), "sequencer 0: follower of 1");
    }

    #[test]
    fn status_describes_the_view_progress_and_lag() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = create(dir.path(), &options(dir.path())).unwrap();
        let leader = json!({
            "role": "sequencer", "id": 0, "is_leader": true, "leader": 0, "term": 3,
            "events": 12, "metalog_position": 10,
            "view": {"id": 2, "start_position": 4, "write_quorum": 2,
                     "shards": {"20": [10, 11, 12]},
                     "gateways": {"20": {"incarnation": 1, "http_addr": "127.0.0.1:1"}},
                     "storage": {"10": "127.0.0.1:2"}},
            "shards": {"20": {"ordered": 123, "durable": {"10": 123, "11": 120}}},
            "storage_nodes": {"10": {"last_seen_ms": 12, "applied": 10}},
            "gateway_nodes": {"20": {"last_seen_ms": 5, "applied": 8}},
        });
        let sequencers = BTreeMap::from([
            (0, Ok(leader.clone())),
            (
                1,
                Ok(json!({"is_leader": false, "leader": 0, "metalog_position": 7})),
            ),
            (2, Err("connecting".to_string())),
        ]);
        let text = describe(
            dir.path(),
            &manifest,
            Some(&leader),
            &sequencers,
            &BTreeMap::new(),
        );
        for expect in [
            "leader: sequencer 0 (term 3), metalog position 10, 12 events",
            "view 2 from metalog position 4, write quorum 2",
            "shard 20: storage 10, 11, 12",
            "follower, position 7, lag 3",
            "stopped",
            "applied 10, lag 0, seen 12 ms ago",
            "in view, applied 8, lag 2, seen 5 ms ago",
            "not in view, not heard from",
            "10=123 11=120",
        ] {
            assert!(text.contains(expect), "{text}\ndoes not contain {expect:?}");
        }
        let sequencer_2 = text
            .lines()
            .find(|l| l.starts_with("sequencer 2 "))
            .unwrap();
        assert!(sequencer_2.ends_with(" stopped"), "{sequencer_2}");
    }
}
