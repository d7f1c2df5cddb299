//! Network partitions of a real cluster: each of its 8 processes (3 sequencers, 3 storage
//! nodes, 2 gateways) runs in its own network namespace, linked to a bridge by a veth pair, on
//! its own address. A partition takes a node's link down: that node can reach nobody, and
//! nobody it. Under load, one node at a time is cut off (each sequencer in turn, so the leader
//! is too, a storage node and a gateway) and healed; appends must keep being acknowledged
//! through every partition that leaves a majority, and at the end every acknowledged append
//! must be in the log, at its seqnum, in its client's order.
//!
//! It needs root (namespaces, links) and says it skipped otherwise. `TALLY_PARTITION_ROUNDS=N`
//! repeats the round of partitions N times (default 1, CI's short form).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_tests::history::{ack_lines, check_acks, read_book};
use tally_tests::{tally_bin, wait_until};

const WAIT: Duration = Duration::from_secs(60);
/// Acknowledged appends that prove progress during or after a partition.
const PROGRESS: usize = 100;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge with one namespace per node, each on `10.77.S.N`; removed on drop.
struct Net {
    tag: String,
    subnet: u32,
    nodes: Vec<u32>,
}

impl Net {
    fn new(nodes: &[u32]) -> Net {
        let pid = std::process::id();
        let net = Net {
            tag: format!("{}", pid % 1_000_000),
            subnet: pid % 250 + 1,
            nodes: nodes.to_vec(),
        };
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let gateway_addr = format!("10.77.{}.254/24", net.subnet);
        ip(&["addr", "add", &gateway_addr, "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for (i, node) in nodes.iter().enumerate() {
            let ns = net.ns(*node);
            let outside = net.veth(*node);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &outside, "master", &bridge]);
            ip(&["link", "set", &outside, "up"]);
            let addr = format!("10.77.{}.{}/24", net.subnet, i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("tb{}", self.tag)
    }

    fn ns(&self, node: u32) -> String {
        format!("tally-{}-{node}", self.tag)
    }

    fn veth(&self, node: u32) -> String {
        format!("tv{}n{node}", self.tag)
    }

    fn addr(&self, node: u32) -> String {
        let i = self.nodes.iter().position(|n| *n == node).expect("a node");
        format!("10.77.{}.{}", self.subnet, i + 1)
    }

    /// Cuts `node` off from every other node (and from the test), or heals it.
    fn isolate(&self, node: u32, cut: bool) {
        ip(&[
            "link",
            "set",
            &self.veth(node),
            if cut { "down" } else { "up" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(*node)])
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &self.veth(*node)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// The processes of the cluster, killed on drop.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `tally ROLE --config FILE` in `node`'s namespace; returns once it printed its ready
/// line (what it prints goes on to `log`).
fn start(net: &Net, node: u32, role: &str, config: &Path, log: &Path) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.ns(node)])
        .arg(tally_bin())
        .args([role, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("a log file"))
        .spawn()
        .expect("start a node");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + WAIT;
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(" ready: ") => break,
            Some(Ok(_)) => {}
            _ => panic!(
                "{role} {node} exited before it was ready: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
        assert!(Instant::now() < deadline, "{role} {node} never got ready");
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

#[test]
fn appends_go_on_through_partitions_of_a_minority_and_nothing_acknowledged_is_lost() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let rounds: usize = std::env::var("TALLY_PARTITION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (sequencers, storage, gateways) = ([0u32, 1, 2], [10u32, 11, 12], [20u32, 21]);
    let all: Vec<u32> = sequencers
        .iter()
        .chain(&storage)
        .chain(&gateways)
        .copied()
        .collect();
    let net = Net::new(&all);
    let dir = tempfile::tempdir().unwrap();
    let map = |ids: &[u32], port: u16| {
        let items: Vec<String> = ids
            .iter()
            .map(|id| format!("{id} = \"{}:{port}\"", net.addr(*id)))
            .collect();
        format!("{{ {} }}", items.join(", "))
    };
    let cluster = format!(
        "[cluster]\nsequencers = {}\nstorage = {}\n",
        map(&sequencers, 7000),
        map(&storage, 7100)
    );
    let mut configs = BTreeMap::new();
    for id in &all {
        let role = match id {
            0..=9 => "sequencer",
            10..=19 => "storage",
            _ => "gateway",
        };
        let mut text = format!("role = \"{role}\"\nid = {id}\n");
        if role == "gateway" {
            // On the test's own network of namespaces: no tokens needed.
            text += &format!(
                "http = \"{}:8080\"\nworkers = \"127.0.0.1:0\"\ninsecure = true\n",
                net.addr(*id)
            );
        } else {
            let data = dir.path().join(format!("{role}-{id}"));
            std::fs::create_dir_all(&data).unwrap();
            text += &format!("data_dir = \"{}\"\n", data.display());
        }
        text += &cluster;
        let path = dir.path().join(format!("{role}-{id}.toml"));
        std::fs::write(&path, text).unwrap();
        configs.insert(*id, (role, path));
    }
    // Sequencers and storage nodes first (they wait for each other), then the gateways.
    let mut nodes = Nodes(Vec::new());
    let log = |id: u32| dir.path().join(format!("node-{id}.log"));
    let backbone: Vec<u32> = sequencers.iter().chain(&storage).copied().collect();
    std::thread::scope(|s| {
        let started: Vec<_> = backbone
            .iter()
            .map(|id| {
                let (role, path) = &configs[id];
                let (net, log) = (&net, log(*id));
                s.spawn(move || start(net, *id, role, path, &log))
            })
            .collect();
        for child in started {
            nodes.0.push(child.join().unwrap());
        }
    });
    for id in &gateways {
        let (role, path) = &configs[id];
        nodes.0.push(start(&net, *id, role, path, &log(*id)));
    }
    let urls: Vec<String> = gateways
        .iter()
        .map(|id| format!("http://{}:8080", net.addr(*id)))
        .collect();

    // Load through both gateways, from outside every namespace (over the bridge).
    let acks = dir.path().join("acks.txt");
    let mut bench = Command::new(tally_bin())
        .args(["bench", "append", "--addr", &urls.join(",")])
        .args([
            "--clients",
            "8",
            "--record-bytes",
            "200",
            "--duration",
            "600",
        ])
        .arg("--ack-log")
        .arg(&acks)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the bench");
    let progress = |what: &str| {
        let from = ack_lines(&acks);
        let moved = wait_until(WAIT, || ack_lines(&acks) >= from + PROGRESS);
        assert!(
            moved.is_ok(),
            "no progress {what}: {} acks, from {from}",
            ack_lines(&acks)
        );
    };
    progress("before any partition");
    // Each sequencer in turn (the leader among them), a storage node, a gateway: a minority
    // cut off each time, so appends go on (the gateway's own clients stall, the other's not).
    let victims: Vec<u32> = sequencers
        .iter()
        .copied()
        .chain([storage[1], gateways[1]])
        .collect();
    for round in 0..rounds {
        for victim in &victims {
            net.isolate(*victim, true);
            progress(&format!("with node {victim} cut off (round {round})"));
            net.isolate(*victim, false);
            progress(&format!("after node {victim} came back (round {round})"));
        }
    }
    let _ = bench.kill();
    let _ = bench.wait();

    // Everything acknowledged is in the log at its seqnum, read through the first gateway.
    let acked = bench::read_ack_log(&acks).expect("read the ack log");
    assert!(acked.len() >= PROGRESS * (2 * victims.len() * rounds + 1));
    let seen = acked.iter().map(|a| a.seqnum).max();
    let records = read_book(&urls[0], seen);
    check_acks(&records, &acked);
    drop(nodes);
}
