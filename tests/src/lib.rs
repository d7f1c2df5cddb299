//! Helpers for integration tests that start real `tally` processes: find the binary, start
//! `tally up` on an ephemeral loopback port in a temp dir, wait for it to be ready, kill it;
//! or start a multi-process cluster with `tally cluster up` (`Cluster`) and kill, restart and
//! watch its nodes. Tests wait on conditions with deadlines, never on fixed sleeps. `bank`
//! drives and checks TX-1 against the `bank` example; `objects` reads and checks objects'
//! histories.

pub mod bank;
pub mod history;
pub mod objects;
pub mod queue;

use anyhow::{bail, Context as _};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where cargo puts the binaries of this build: target/<profile>/ (this test runs from
/// target/<profile>/deps/).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The `tally` binary: `$TALLY_BIN`, else the one cargo built next to this test.
pub fn tally_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TALLY_BIN") {
        return PathBuf::from(bin);
    }
    let bin = profile_dir().join("tally");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tally-cli` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A running `tally up`.
pub struct Tally {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub stdout_lines: Vec<String>,
}

impl Tally {
    /// Starts `tally up` on `data_dir` with a free loopback port and waits until it answers.
    pub fn up(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Tally> {
        let mut child = Command::new(tally_bin())
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http-addr", "127.0.0.1:0", "--worker-addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning tally up")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix("listening on http://") {
                        break rest.trim().to_string();
                    }
                }
                _ => {
                    let status = child.wait().ok();
                    bail!("tally up exited before listening ({status:?}); it printed {seen:?}");
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let tally = Tally {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            stdout_lines: seen,
        };
        wait_until(Duration::from_secs(30), || healthy(&tally.addr))
            .context("waiting for /health")?;
        Ok(tally)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Where `tally up` takes workers, from what it printed.
    pub fn workers_addr(&self) -> String {
        self.stdout_lines
            .iter()
            .find_map(|l| l.strip_prefix("workers attach at "))
            .expect("tally up prints the worker address")
            .to_string()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping")?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        anyhow::ensure!(rc == 0, "SIGTERM failed");
        let status = self.child.wait().context("waiting for tally up to stop")?;
        anyhow::ensure!(status.success(), "tally up exited with {status}");
        Ok(())
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(addr: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    use std::io::{Read as _, Write as _};
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
}

/// `tally bench append` against one gateway in the background (4 clients, 200-byte records,
/// 4 tags, for an hour or until killed), logging every ack to `acks`.
pub fn background_bench(gateway: &str, acks: &Path) -> std::process::Child {
    std::process::Command::new(tally_bin())
        .args(["bench", "append", "--addr", gateway])
        .args(["--clients", "4", "--record-bytes", "200", "--tags", "4"])
        .args(["--duration", "3600"])
        .arg("--ack-log")
        .arg(acks)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the bench")
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    bail!("condition not met within {timeout:?}")
}

/// An HTTP client for tests: a request that takes over 30 s fails.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Sends a request; its status and JSON body (null if it is not JSON).
pub fn send(request: reqwest::blocking::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().expect("the request is answered");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(serde_json::Value::Null))
}

/// A counter or gauge (without labels) of the `/metrics` of the gateway at `base`; 0 if
/// absent or unreachable.
pub fn metric(http: &reqwest::blocking::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Starts `tally up --data-dir DATA ARGS...` (the addresses are the caller's to give) and
/// returns it with the URL it listens on, once it says so; or, if it exits first, its exit
/// code and stderr. Its stdout is read on to the end, so it never writes to a closed pipe.
pub fn start_up(data: &Path, args: &[&str]) -> Result<(Child, String), String> {
    let mut child = Command::new(tally_bin())
        .arg("up")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning tally up: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("listening on ") {
            let url = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            std::thread::spawn(move || for _ in lines {});
            // Its stderr too, for the same reason.
            if let Some(stderr) = child.stderr.take() {
                std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
            }
            return Ok((child, url));
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Err(format!(
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Runs `tally` with `args` and returns its stdout; fails with its stderr on a non-zero exit.
pub fn run_tally(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tally_bin())
        .args(args)
        .output()
        .context("running tally")?;
    if !out.status.success() {
        bail!(
            "tally {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The gateway example binary `name` (built beside `tally`: `cargo test --workspace` builds
/// the examples).
pub fn example_bin(name: &str) -> PathBuf {
    // target/<profile>/tally -> target/<profile>/examples/NAME
    let bin = tally_bin()
        .parent()
        .expect("the binary lives in target/<profile>")
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p gateway --example {name}` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// One node of a `Cluster`, as cluster.json lists it.
pub use tally_cli::cluster::NodeEntry as ClusterNode;

/// A multi-process cluster on loopback, started by `tally cluster up` in `dir`. Dropping it
/// runs `tally cluster down` (data stays in `dir`). A cluster brought down can be started
/// again on the same `dir` with `Cluster::up`: same ids, ports and data.
/// The segment files of a log in `dir` (`tally up`'s `DATA/log`, a storage node's data dir),
/// with their sizes, by name (oldest first).
pub fn segments(dir: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().map_or(0, |m| m.len()))
        })
        .collect();
    found.sort();
    found
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<ClusterNode>,
    running: bool,
}

impl Cluster {
    /// `tally cluster up` with `sequencers`, `storage` nodes and `gateways`; returns once every
    /// node is ready and every gateway is in the view.
    pub fn up(
        dir: &Path,
        sequencers: usize,
        storage: usize,
        gateways: usize,
    ) -> anyhow::Result<Cluster> {
        Cluster::up_with(dir, sequencers, storage, gateways, &[])
    }

    /// `tally cluster up --nodes N`: N processes, node K hosting sequencer K, storage node
    /// 10+K and gateway 20+K (`tally node`); `extra` flags as for `up_with`.
    pub fn up_nodes(dir: &Path, nodes: usize, extra: &[&str]) -> anyhow::Result<Cluster> {
        let dir_arg = dir.to_string_lossy().into_owned();
        let nodes = nodes.to_string();
        let mut args = vec!["cluster", "up", "--dir", &dir_arg, "--nodes", &nodes];
        args.extend_from_slice(extra);
        Cluster::start_with(dir, &args)
    }

    /// `up` with more flags for `tally cluster up` (`--replication 2`, `--durability async`).
    pub fn up_with(
        dir: &Path,
        sequencers: usize,
        storage: usize,
        gateways: usize,
        extra: &[&str],
    ) -> anyhow::Result<Cluster> {
        let dir_arg = dir.to_string_lossy().into_owned();
        let counts = [
            sequencers.to_string(),
            storage.to_string(),
            gateways.to_string(),
        ];
        let mut args = vec![
            "cluster",
            "up",
            "--dir",
            &dir_arg,
            "--sequencers",
            &counts[0],
            "--storage",
            &counts[1],
            "--gateways",
            &counts[2],
        ];
        args.extend_from_slice(extra);
        Cluster::start_with(dir, &args)
    }

    /// Runs `tally` with `args` (a `cluster up`) and reads the cluster it started.
    fn start_with(dir: &Path, args: &[&str]) -> anyhow::Result<Cluster> {
        if let Err(e) = run_tally(args) {
            bail!("{e:#}\n{}", logs_tail(dir));
        }
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            running: true,
        };
        cluster.reload()?;
        Ok(cluster)
    }

    /// Reads cluster.json again (pids change when nodes are started).
    pub fn reload(&mut self) -> anyhow::Result<()> {
        let path = self.dir.join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let manifest: tally_cli::cluster::Manifest =
            serde_json::from_str(&text).context("parsing cluster.json")?;
        self.nodes = manifest.nodes;
        Ok(())
    }

    /// The gateways' URLs (`http://127.0.0.1:PORT`), by id.
    pub fn gateways(&self) -> Vec<String> {
        tally_cli::cluster::gateway_urls(&self.nodes)
    }

    /// The ids of the nodes of `role`.
    pub fn ids(&self, role: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .nodes
            .iter()
            .filter(|n| n.role.name() == role)
            .map(|n| n.id)
            .collect();
        ids.sort();
        ids
    }

    pub fn node(&self, id: u32) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// SIGKILL one node (`tally cluster kill`); returns once it is gone.
    pub fn kill(&mut self, id: u32) -> anyhow::Result<()> {
        self.cluster(&["kill", "--node", &id.to_string()])?;
        Ok(())
    }

    /// Starts one stopped node again from its file (`tally cluster start`); returns once it
    /// printed its ready line.
    pub fn start(&mut self, id: u32) -> anyhow::Result<()> {
        self.cluster(&["start", "--node", &id.to_string()])?;
        self.reload()
    }

    /// `tally cluster status --json`: the leader's status (`leader`, null without one) and
    /// every node's liveness (`nodes`).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cluster(&["status", "--json"])?;
        serde_json::from_str(&out).context("parsing tally cluster status --json")
    }

    /// The leader's status (`status()`'s `leader`), once a leader answers (within a minute).
    pub fn leader_status(&self) -> serde_json::Value {
        let mut status = serde_json::Value::Null;
        let found = wait_until(Duration::from_secs(60), || {
            status = self
                .status()
                .map(|s| s["leader"].clone())
                .unwrap_or(serde_json::Value::Null);
            status.is_object()
        });
        assert!(found.is_ok(), "no sequencer leads");
        status
    }

    /// Whether storage node `id`, per the leader now, has applied the metalog up to where
    /// `target` (an earlier `leader_status`) was and holds every record ordered then (counts
    /// are per view: compared only while the view is the one `target` saw).
    pub fn storage_caught_up(&self, id: u32, target: &serde_json::Value) -> bool {
        let now = self.leader_status();
        let key = id.to_string();
        let applied = now["storage_nodes"][&key]["applied"].as_u64();
        if applied < target["metalog_position"].as_u64() {
            return false;
        }
        if now["view"]["id"] != target["view"]["id"] {
            return true;
        }
        let shards = target["shards"].as_object().cloned().unwrap_or_default();
        shards.iter().all(|(shard, then)| {
            now["shards"][shard]["durable"][&key].as_u64() >= then["ordered"].as_u64()
        })
    }

    /// The sequencer that answers as leader, if one does.
    pub fn leader(&self) -> Option<u32> {
        let status = self.status().ok()?;
        status["leader"]["id"].as_u64().map(|id| id as u32)
    }

    /// `tally cluster down`: stops every node (SIGTERM, then SIGKILL), keeps the data.
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.running = false;
        self.cluster(&["down", "--grace-secs", "10"])?;
        Ok(())
    }

    /// A node's log, for a failing test's message.
    pub fn log(&self, id: u32) -> String {
        self.node(id)
            .and_then(|n| std::fs::read_to_string(&n.log).ok())
            .unwrap_or_default()
    }

    fn cluster(&self, args: &[&str]) -> anyhow::Result<String> {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut all = vec!["cluster", args[0], "--dir", &dir];
        all.extend_from_slice(&args[1..]);
        run_tally(&all).map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs_tail(&self.dir)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.down() {
                eprintln!("stopping the cluster in {}: {e:#}", self.dir.display());
            }
        }
    }
}

/// The last lines of every node log in a cluster's dir, for an error message (the temp dir
/// is gone once the test fails).
fn logs_tail(dir: &Path) -> String {
    const LINES: usize = 20;
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("---- {} (last {LINES} lines)\n", log.display());
        for line in &lines[lines.len().saturating_sub(LINES)..] {
            out += line;
            out += "\n";
        }
    }
    out
}
