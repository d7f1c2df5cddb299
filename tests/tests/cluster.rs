//! A multi-process cluster on loopback (3 sequencers, 3 storage nodes, 2 gateways) under load
//! from several clients, with one role killed in each test. Each test ends by checking that
//! every acknowledged append is in the log at its seqnum with its client's data, in its
//! client's order. The tests share the machine's two cores, so they run one at a time. One
//! more test, on a smaller cluster, checks that trimmed records give their space back on the
//! storage nodes.

use bench::Ack;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_cli::config::Role;
use tally_tests::history::{
    ack_lines, check_acks, check_no_duplicates, read_book, read_tag, Stored,
};
use tally_tests::{tally_bin, wait_until, Cluster};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const TAGS: u64 = 4;
const WAIT: Duration = Duration::from_secs(60);

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `tally bench append` against `gateways` in the background, logging every ack.
fn bench(gateways: &[String], acks: &Path, seconds: u32) -> Child {
    Command::new(tally_bin())
        .args(["bench", "append", "--addr", &gateways.join(",")])
        .args(["--clients", "8", "--record-bytes", "200"])
        .args([
            "--duration",
            &seconds.to_string(),
            "--tags",
            &TAGS.to_string(),
        ])
        .arg("--ack-log")
        .arg(acks)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the bench")
}

/// Waits until the ack log holds at least `count` lines.
fn wait_acks(acks: &Path, count: usize, cluster: &Cluster) {
    if wait_until(WAIT, || ack_lines(acks) >= count).is_err() {
        panic!(
            "only {} acks, wanted {count}; status: {:?}",
            ack_lines(acks),
            cluster.status().ok()
        );
    }
}

fn finish(bench: Child) {
    let out = bench.wait_with_output().expect("the bench exits");
    assert!(
        out.status.success(),
        "the bench failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn acks_of(path: &Path) -> Vec<Ack> {
    bench::read_ack_log(path).expect("read the ack log")
}

fn max_seqnum(acks: &[Ack]) -> Option<u64> {
    acks.iter().map(|a| a.seqnum).max()
}

/// The records of `all` up to the last seqnum of `like` (a later read may hold more).
fn prefix(all: &BTreeMap<u64, Stored>, like: &BTreeMap<u64, Stored>) -> BTreeMap<u64, Stored> {
    let last = like.keys().last().copied().unwrap_or(0);
    all.range(..=last).map(|(s, r)| (*s, r.clone())).collect()
}

/// The leader's status (`tally cluster status --json`'s `leader`), once a leader answers.
fn leader_status(cluster: &Cluster) -> Value {
    let mut status = Value::Null;
    wait_until(WAIT, || {
        status = cluster
            .status()
            .map(|s| s["leader"].clone())
            .unwrap_or(Value::Null);
        status.is_object()
    })
    .expect("a sequencer leads");
    status
}

#[test]
fn two_gateways_append_concurrently_and_every_reader_sees_one_order() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    assert_eq!(gateways.len(), 2);
    let acks_path = dir.path().join("acks.txt");
    finish(bench(&gateways, &acks_path, 3));
    let acks = acks_of(&acks_path);
    assert!(acks.len() >= 200, "{} acks", acks.len());
    let seen = max_seqnum(&acks);

    // Both gateways hold the same records in the same order, once they cover what was read.
    let first = read_book(&gateways[0], seen);
    let second = read_book(&gateways[1], first.keys().last().copied());
    assert_eq!(first, prefix(&second, &first), "the gateways disagree");
    check_acks(&first, &acks);
    check_no_duplicates(&first);
    // No gaps: within a view, the book's seqnums are consecutive (this book is the only one).
    let mut by_view: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for seqnum in first.keys() {
        by_view
            .entry(seqnum >> 48)
            .or_default()
            .push(seqnum & ((1 << 48) - 1));
    }
    for (view, positions) in by_view {
        let expected: Vec<u64> = (0..positions.len() as u64).collect();
        assert_eq!(positions, expected, "view {view} has a gap");
    }
    // A tag's read returns exactly the records with that tag, on either gateway (up to what
    // the whole-book read saw; appends in flight when the bench stopped may come after).
    let last = *first.keys().last().unwrap();
    for tag in 1..=TAGS {
        let expected: Vec<u64> = first
            .iter()
            .filter(|(_, r)| r.tags.contains(&tag))
            .map(|(s, _)| *s)
            .collect();
        assert!(!expected.is_empty(), "tag {tag} has records");
        for gateway in &gateways {
            let got: Vec<u64> = read_tag(gateway, tag, Some(last))
                .into_keys()
                .filter(|s| *s <= last)
                .collect();
            assert_eq!(got, expected, "tag {tag} at {gateway}");
        }
    }
    // Read-your-writes across gateways: append at one, read it at the other at once.
    let http = reqwest::blocking::Client::new();
    for i in 0..20 {
        let (writer, reader) = (&gateways[i % 2], &gateways[(i + 1) % 2]);
        let reply = http
            .post(format!("{writer}/log/0/append?tag=99"))
            .body(format!("ryw {i}"))
            .send()
            .unwrap();
        let seen: u64 = reply.headers()["x-tally-seen"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let page: Value = http
            .get(format!("{reader}/log/0/records?tag=99&from={seen}"))
            .header("x-tally-seen", seen)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            page["records"][0]["seqnum"].as_u64(),
            Some(seen),
            "append {i}"
        );
    }
}

#[test]
fn a_storage_node_killed_under_load_stalls_nothing_and_catches_up() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    let acks_path = dir.path().join("acks.txt");
    let load = bench(&gateways, &acks_path, 8);
    wait_acks(&acks_path, 200, &cluster);
    let victim = cluster.ids("storage")[1];
    cluster.kill(victim).unwrap();
    // Ordering goes on with two of three replicas.
    let at_kill = ack_lines(&acks_path);
    wait_acks(&acks_path, at_kill + 500, &cluster);
    cluster.start(victim).unwrap();
    finish(load);

    // The restarted node catches up: it applies the whole metalog and holds every ordered
    // record of every shard (repaired from its peers).
    let mut last = Value::Null;
    let caught_up = wait_until(WAIT, || {
        last = leader_status(&cluster);
        let position = last["metalog_position"].as_u64();
        let node = &last["storage_nodes"][victim.to_string()];
        let applied = node["applied"].as_u64();
        let shards = last["shards"].as_object().cloned().unwrap_or_default();
        position.is_some()
            && applied == position
            && shards
                .values()
                .all(|s| s["durable"][victim.to_string()] == s["ordered"])
    });
    assert!(
        caught_up.is_ok(),
        "storage {victim} did not catch up: {last}"
    );

    let acks = acks_of(&acks_path);
    let records = read_book(&gateways[0], max_seqnum(&acks));
    check_acks(&records, &acks);
    check_no_duplicates(&records);
}

#[test]
fn a_killed_sequencer_leader_is_replaced_within_seconds() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    let acks_path = dir.path().join("acks.txt");
    let load = bench(&gateways, &acks_path, 10);
    wait_acks(&acks_path, 200, &cluster);
    let old = cluster.leader().expect("a leader");
    cluster.kill(old).unwrap();
    let killed_at = Instant::now();
    let at_kill = ack_lines(&acks_path);
    wait_until(WAIT, || cluster.leader().is_some_and(|l| l != old)).expect("a new leader");
    // Appends flow again through the new leader.
    wait_acks(&acks_path, at_kill + 500, &cluster);
    let recovered = killed_at.elapsed();
    assert!(
        recovered < Duration::from_secs(10),
        "appends resumed only after {recovered:?}"
    );
    // The old leader comes back as a follower.
    cluster.start(old).unwrap();
    finish(load);

    let acks = acks_of(&acks_path);
    let records = read_book(&gateways[1], max_seqnum(&acks));
    check_acks(&records, &acks);
    check_no_duplicates(&records);
    let status = leader_status(&cluster);
    assert!(status["term"].as_u64() > Some(1), "a new term: {status}");
}

#[test]
fn a_killed_gateway_loses_no_acknowledged_append() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    // One bench per gateway, so the survivor's clients never see the dead one.
    let (acks_a, acks_b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    let survivor = bench(&gateways[..1], &acks_a, 6);
    let doomed = bench(&gateways[1..], &acks_b, 6);
    wait_acks(&acks_b, 200, &cluster);
    let victim = cluster.ids("gateway")[1];
    cluster.kill(victim).unwrap();
    // The sequencers notice and install a view without it.
    let without = wait_until(WAIT, || {
        let status = leader_status(&cluster);
        let members = status["view"]["gateways"].as_object().map(|g| g.len());
        members == Some(1) && status["view"]["gateways"][victim.to_string()].is_null()
    });
    assert!(without.is_ok(), "no view without gateway {victim}");
    finish(survivor);
    let _ = doomed.wait_with_output();
    // Appends go on at the survivor in the new view.
    let acks_c = dir.path().join("c.txt");
    finish(bench(&gateways[..1], &acks_c, 2));
    assert!(
        ack_lines(&acks_c) >= 100,
        "{} acks after the view change",
        ack_lines(&acks_c)
    );

    // Everything either gateway acknowledged is readable from the survivor (each bench's
    // clients count from 0, so each log is checked on its own).
    let later = acks_of(&acks_c);
    let records = read_book(&gateways[0], max_seqnum(&later));
    for acks in [acks_of(&acks_a), acks_of(&acks_b), later] {
        check_acks(&records, &acks);
    }
}

/// `tally cluster up --nodes 3`: three processes, each hosting a sequencer, a storage node
/// and a gateway. The node whose sequencer leads is SIGKILLed under load, taking a leader, a
/// storage replica and a gateway at once: appends go on at the other two nodes, and once
/// started again the node serves every acknowledged append.
#[test]
fn a_killed_co_located_node_loses_no_acknowledged_append() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up_nodes(&dir.path().join("cluster"), 3, &[]).expect("cluster up");
    assert_eq!(cluster.ids("sequencer"), [0, 1, 2]);
    assert_eq!(cluster.ids("storage"), [10, 11, 12]);
    assert_eq!(cluster.ids("gateway"), [20, 21, 22]);
    let leader = cluster.leader().expect("a leader");
    let doomed_gateway = 20 + leader;
    let pid = cluster.node(leader).unwrap().pid;
    assert_eq!(cluster.node(doomed_gateway).unwrap().pid, pid);
    assert_eq!(
        cluster.node(10 + leader).unwrap().pid,
        pid,
        "one process per node"
    );
    let url = |cluster: &Cluster, id: u32| cluster.node(id).unwrap().http.clone().unwrap();
    let survivors: Vec<String> = cluster
        .ids("gateway")
        .into_iter()
        .filter(|g| *g != doomed_gateway)
        .map(|g| url(&cluster, g))
        .collect();
    let (acks_a, acks_b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    let survivor = bench(&survivors, &acks_a, 12);
    let doomed = bench(&[url(&cluster, doomed_gateway)], &acks_b, 12);
    wait_acks(&acks_b, 200, &cluster);
    wait_acks(&acks_a, 200, &cluster);
    cluster.kill(leader).unwrap();
    let at_kill = ack_lines(&acks_a);
    wait_until(WAIT, || cluster.leader().is_some_and(|l| l != leader)).expect("a new leader");
    wait_acks(&acks_a, at_kill + 500, &cluster);
    finish(survivor);
    let _ = doomed.wait_with_output();

    cluster.start(leader).unwrap();
    assert!(cluster.node(doomed_gateway).unwrap().pid != pid);
    let (a, b) = (acks_of(&acks_a), acks_of(&acks_b));
    let records = read_book(
        &url(&cluster, doomed_gateway),
        max_seqnum(&a).max(max_seqnum(&b)),
    );
    // Each bench's clients count from 0, so each log is checked on its own.
    for acks in [a, b] {
        check_acks(&records, &acks);
    }
}

/// Over the log protocol, a client appends at one gateway and another client reads at the other
/// right after, passing the first one's `seen()`: the read waits until its gateway covers the
/// append, so every read finds the record that was just appended elsewhere.
#[test]
fn a_read_at_another_gateway_sees_what_the_reader_was_told_of() {
    use futures::StreamExt as _;
    use logbook::{BookId, Tag};
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let workers: Vec<String> = cluster
        .ids("gateway")
        .into_iter()
        .map(|id| cluster.node(id).unwrap().workers.clone().unwrap())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let writer = tally_client::LogClient::connect(&workers[0]).await.unwrap();
        let reader = tally_client::LogClient::connect(&workers[1]).await.unwrap();
        for i in 0..50u32 {
            let tag = Tag(1000 + u64::from(i));
            let seqnum = writer
                .append(BookId(0), &[tag], i.to_string())
                .await
                .unwrap();
            assert_eq!(writer.seen(), Some(seqnum));
            let records: Vec<_> = reader
                .read(BookId(0), tag)
                .seen(writer.seen().unwrap())
                .await
                .unwrap()
                .collect()
                .await;
            let seqnums: Vec<_> = records.into_iter().map(|r| r.unwrap().seqnum).collect();
            assert_eq!(seqnums, [seqnum], "append {i} at the other gateway");
        }
    });
}

#[test]
fn a_whole_cluster_restart_keeps_everything_acknowledged() {
    whole_cluster_restart(&[]);
}

/// With `--durability async` an append is acknowledged once replicated in memory and
/// written, so a crash of every process (not of the machines) still loses nothing.
#[test]
fn in_async_mode_a_crash_of_every_process_keeps_everything_acknowledged() {
    whole_cluster_restart(&["--durability", "async"]);
}

/// Every process of a loaded cluster SIGKILLed at once, then the cluster started again on
/// its data (`extra`: more flags for `tally cluster up`, the same both times).
fn whole_cluster_restart(extra: &[&str]) {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    let mut cluster = Cluster::up_with(&cluster_dir, 3, 3, 2, extra).expect("cluster up");
    let acks_path = dir.path().join("acks.txt");
    let load = bench(&cluster.gateways(), &acks_path, 6);
    wait_acks(&acks_path, 500, &cluster);
    // Every process dies at once, mid-load.
    for node in cluster.nodes.clone() {
        cluster.kill(node.id).unwrap();
    }
    let _ = load.wait_with_output();
    cluster.down().unwrap();
    drop(cluster);

    let cluster =
        Cluster::up_with(&cluster_dir, 3, 3, 2, extra).expect("the same cluster up again");
    let acks = acks_of(&acks_path);
    assert!(acks.len() >= 500);
    let gateways = cluster.gateways();
    let first = read_book(&gateways[0], max_seqnum(&acks));
    check_acks(&first, &acks);
    check_no_duplicates(&first);
    let second = read_book(&gateways[1], first.keys().last().copied());
    assert_eq!(prefix(&second, &first), first);
    // And it takes appends again, above everything before.
    let out = tally_tests::run_tally(&["log", "append", "--addr", &gateways[1], "--tag", "1", "x"])
        .unwrap();
    let seqnum: u64 = out.trim().parse().unwrap();
    assert!(seqnum > *first.keys().last().unwrap());
}

#[test]
fn trimmed_records_give_their_space_back_on_the_storage_nodes() {
    const N: usize = 1000;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    let args = ["--replication", "2"];
    let mut cluster = Cluster::up_with(&cluster_dir, 1, 2, 1, &args).expect("cluster up");
    // Segments of 1 MiB; ended workflow instances and their invocations kept for 1 s.
    cluster.down().unwrap();
    for node in &cluster.nodes {
        let keys = match node.role {
            Role::Storage => "segment_mib = 1\n",
            Role::Gateway => "workflow_retention_s = 1\nidempotency_retention_s = 1\n",
            Role::Sequencer => continue,
        };
        let text = std::fs::read_to_string(&node.config).unwrap();
        let text = text.replacen("\n[cluster]", &format!("\n{keys}[cluster]"), 1);
        std::fs::write(&node.config, text).unwrap();
    }
    drop(cluster);
    let mut cluster = Cluster::up_with(&cluster_dir, 1, 2, 1, &args).expect("cluster up again");
    let gateway = cluster.gateways()[0].clone();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let http = tally_tests::client();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n >= N {
                        return;
                    }
                    let url = format!("{gateway}/workflows/writes/g{n}?wait_ms=30000");
                    let (status, ended) =
                        tally_tests::send(http.post(url).json(&serde_json::json!({"steps": 2})));
                    assert_eq!(
                        (status, &ended["status"]),
                        (200, &"succeeded".into()),
                        "{ended}"
                    );
                }
            });
        }
    });
    let storage: Vec<(u32, std::path::PathBuf)> = (cluster.nodes.iter())
        .filter(|n| n.role == Role::Storage)
        .map(|n| (n.id, n.data_dir.clone().unwrap()))
        .collect();
    // The segments sealed by now (all but each node's newest; not the one sealed almost empty
    // by the restart) hold ended instances only.
    let sealed: Vec<Vec<(String, u64)>> = (storage.iter())
        .map(|(_, dir)| {
            let mut sealed = tally_tests::segments(dir);
            sealed.pop();
            sealed.retain(|(_, bytes)| *bytes > 64 * 1024);
            sealed
        })
        .collect();
    assert!(
        sealed.iter().all(|s| !s.is_empty()),
        "no segment was sealed: {sealed:?}"
    );
    let http = tally_tests::client();
    wait_until(WAIT, || {
        tally_tests::metric(&http, &gateway, "tally_workflows_collected_total") >= N as f64
    })
    .unwrap();
    // Each storage node rewrites its sealed segments without the payloads of what was trimmed.
    let shrunk = |(_, dir): &(u32, std::path::PathBuf), sealed: &[(String, u64)]| {
        let now = tally_tests::segments(dir);
        sealed.iter().all(|(name, before)| {
            now.iter()
                .any(|(n, bytes)| n == name && *bytes < before * 9 / 10)
        })
    };
    let came_back = wait_until(WAIT, || {
        storage.iter().zip(&sealed).all(|(n, s)| shrunk(n, s))
    });
    let after: Vec<_> = storage
        .iter()
        .map(|(_, dir)| tally_tests::segments(dir))
        .collect();
    println!("sealed segments before: {sealed:?}\nafter: {after:?}");
    came_back.unwrap();
    let status = cluster.status().unwrap();
    println!("{status}");
    // A storage node restarted recovers its compacted segments, and the cluster goes on.
    let (id, _) = storage[0];
    cluster.kill(id).unwrap();
    cluster.start(id).unwrap();
    let url = format!("{gateway}/workflows/writes/after?wait_ms=30000");
    let (status, ended) = tally_tests::send(http.post(url).json(&serde_json::json!({"steps": 2})));
    assert_eq!(
        (status, &ended["status"]),
        (200, &"succeeded".into()),
        "{ended}"
    );
}
