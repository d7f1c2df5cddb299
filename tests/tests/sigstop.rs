//! SIGSTOP of one role at a time in a real cluster on loopback (3 sequencers, 3 storage nodes,
//! 2 gateways) under load. A stopped process holds its sockets open and answers nothing,
//! unlike a killed one whose peers see connections refused: what it has in flight stalls
//! rather than fails, and when it is continued it wakes up with stale timers and a stale view
//! of the cluster (a leader that was deposed, a gateway that was left out of the view).
//!
//! Each test ends by checking that every acknowledged append is in the log at its seqnum, in
//! its client's order.
//!
//! A gateway keeps up while the replica it asks first for other shards' index data is stopped.
//! A stopped sequencer leader is replaced within seconds, without the new leader evicting
//! the gateways.
//!
//! In rounds, every sequencer, one storage node and one gateway are stopped, one at a time
//! (the leader among the sequencers: if none of them led when stopped, the one leading then
//! is stopped once more); a seeded RNG picks the order, the storage node, the gateway, how
//! long each stays stopped (100 or 200 acknowledged appends per gateway), and whether a
//! gateway stays stopped until the sequencers leave it out of the view. While a node is
//! stopped appends must go on (through the other gateway when the stopped node is a
//! gateway); once it is continued it must catch up and appends must go on everywhere. The
//! seed is printed first; `TALLY_SIGSTOP_SEED=N` replays a run's choices (timing still
//! varies). `TALLY_SIGSTOP_ROUNDS=N` runs N rounds (default 1, CI's short form).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_tests::history::{ack_lines, check_acks, read_book};
use tally_tests::{wait_until, Cluster};

const WAIT: Duration = Duration::from_secs(60);
/// Acknowledged appends that prove progress while a node is stopped or after it continues.
const PROGRESS: usize = 100;

/// The tests share the machine's two cores, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small deterministic generator (SplitMix64), so a seed replays the same choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick(&mut self, ids: &[u32]) -> u32 {
        ids[self.below(ids.len() as u64) as usize]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// A node stopped with SIGSTOP; continued (SIGCONT) when dropped, so a failing test leaves no
/// stopped process behind for `tally cluster down` to wait on.
struct Stopped {
    pid: i32,
}

impl Stopped {
    fn stop(cluster: &Cluster, id: u32) -> Stopped {
        let node = cluster.node(id).expect("a node of the cluster");
        assert!(node.alive(), "node {id} is not running");
        let pid = node.pid.expect("a running node has a pid") as i32;
        // SAFETY: kill(2) on a process the cluster started, checked above to still be it.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP to node {id} (pid {pid})");
        let stopped = Stopped { pid };
        wait_until(WAIT, || process_state(pid) == Some('T')).expect("the node stops");
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process this guard stopped.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

/// The state letter of a process (`R`, `S`, `T` for stopped, ...) from /proc.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the comm may hold spaces, so look after its closing parenthesis.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A node's own status, as `tally cluster status --json` lists it (null if it did not answer).
fn node_status(cluster: &Cluster, id: u32) -> Value {
    let Ok(status) = cluster.status() else {
        return Value::Null;
    };
    status["nodes"]
        .as_array()
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n["id"].as_u64() == Some(u64::from(id)))
        })
        .map_or(Value::Null, |n| n["status"].clone())
}

/// Whether the current view (per the leader) lists gateway `id`.
fn view_has_gateway(cluster: &Cluster, id: u32) -> bool {
    !cluster.leader_status()["view"]["gateways"][id.to_string()].is_null()
}

/// A loaded cluster: 3 sequencers, 3 storage nodes, 2 gateways, and one `tally bench append`
/// per gateway, so a stopped gateway's clients never hide the others' progress.
struct Loaded {
    // Fields drop in order: the benches stop before the cluster goes down and its dir goes.
    benches: Vec<Child>,
    cluster: Cluster,
    dir: tempfile::TempDir,
    gateways: Vec<u32>,
    urls: Vec<String>,
}

impl Loaded {
    fn start() -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
        let gateways = cluster.ids("gateway");
        let urls = cluster.gateways();
        let mut loaded = Loaded {
            benches: Vec::new(),
            cluster,
            dir,
            gateways,
            urls,
        };
        loaded.benches = (0..loaded.gateways.len())
            .map(|i| tally_tests::background_bench(&loaded.urls[i], &loaded.acks(i)))
            .collect();
        loaded.progress(None, PROGRESS, "before any stop");
        loaded
    }

    fn acks(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("acks-{}.txt", self.gateways[i]))
    }

    /// Waits until the load of every gateway but `except` has `count` more acks; returns how
    /// long that took.
    fn progress(&self, except: Option<u32>, count: usize, what: &str) -> Duration {
        let started = Instant::now();
        let watched: Vec<(u32, PathBuf, usize)> = (0..self.gateways.len())
            .filter(|i| Some(self.gateways[*i]) != except)
            .map(|i| {
                let acks = self.acks(i);
                let wanted = ack_lines(&acks) + count;
                (self.gateways[i], acks, wanted)
            })
            .collect();
        let moved = wait_until(WAIT, || {
            watched
                .iter()
                .all(|(_, acks, wanted)| ack_lines(acks) >= *wanted)
        });
        if moved.is_err() {
            let counts: Vec<String> = watched
                .iter()
                .map(|(id, acks, wanted)| {
                    format!("gateway {id}: {} acks of {wanted}", ack_lines(acks))
                })
                .collect();
            panic!(
                "no progress {what}: {}; status: {:?}",
                counts.join(", "),
                self.cluster.status().ok()
            );
        }
        let took = started.elapsed();
        eprintln!("  {count} acks per gateway {what} in {took:?}");
        took
    }

    /// Stops the load, then checks that everything acknowledged is in the log at its seqnum,
    /// read through the first gateway (each bench's clients count from 0, so each ack log is
    /// checked on its own). Returns how many acks it checked.
    fn check_history(&mut self) -> usize {
        for bench in &mut self.benches {
            let _ = bench.kill();
            let _ = bench.wait();
        }
        let logs: Vec<Vec<bench::Ack>> = (0..self.gateways.len())
            .map(|i| bench::read_ack_log(&self.acks(i)).expect("an ack log"))
            .collect();
        let seen = logs.iter().flatten().map(|a| a.seqnum).max();
        let records = read_book(&self.urls[0], seen);
        for acks in &logs {
            check_acks(&records, acks);
        }
        logs.iter().map(Vec::len).sum()
    }

    /// Waits until sequencer `id` has applied the metalog as far as the leader has now.
    fn sequencer_catches_up(&self, id: u32) {
        let target = self.cluster.leader_status()["metalog_position"]
            .as_u64()
            .unwrap();
        let caught_up = wait_until(WAIT, || {
            node_status(&self.cluster, id)["metalog_position"].as_u64() >= Some(target)
        });
        assert!(
            caught_up.is_ok(),
            "sequencer {id} did not catch up to position {target}: {}",
            node_status(&self.cluster, id)
        );
    }

    /// Waits until storage node `id` has applied the metalog as far as the leader has now and
    /// holds every record ordered now (repaired from its peers where it missed them).
    fn storage_catches_up(&self, id: u32) {
        let target = self.cluster.leader_status();
        let caught_up = wait_until(WAIT, || self.cluster.storage_caught_up(id, &target));
        assert!(
            caught_up.is_ok(),
            "storage {id} did not catch up to {target}: {}",
            self.cluster.leader_status()
        );
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        for bench in &mut self.benches {
            let _ = bench.kill();
            let _ = bench.wait();
        }
    }
}

/// How soon a gateway must ack `PROGRESS` appends while a storage node is stopped. Waiting
/// out an RPC timeout (5 s) per batch of metalog entries it applies, it acked a few per second.
const STORAGE_STOP_PROGRESS_MAX: Duration = Duration::from_secs(10);

#[test]
fn a_gateway_keeps_up_while_the_replica_it_asks_first_for_index_data_is_stopped() {
    let _serial = one_at_a_time();
    let mut loaded = Loaded::start();
    // A gateway asks a shard's replicas for index data in the view's order: the first gateway
    // asks the first replica of the second gateway's shard first.
    let view = &loaded.cluster.leader_status()["view"];
    let other_shard = loaded.gateways[1].to_string();
    let first_replica = view["shards"][&other_shard][0].as_u64().unwrap() as u32;
    let stopped = Stopped::stop(&loaded.cluster, first_replica);
    let took = loaded.progress(
        None,
        PROGRESS,
        &format!("with storage {first_replica} stopped"),
    );
    assert!(
        took < STORAGE_STOP_PROGRESS_MAX,
        "{PROGRESS} acks per gateway took {took:?} with storage {first_replica} stopped"
    );
    drop(stopped);
    loaded.storage_catches_up(first_replica);
    loaded.progress(None, PROGRESS, "after the storage node continued");
    loaded.check_history();
}

/// Appends acknowledged at each gateway that show appends resumed after a stop.
const RESUMED: usize = 20;
/// How soon appends must resume when the sequencer leader stops: an election takes about a
/// second (50 ms ticks, 10 to 20 ticks of silence), and subscribers must not wait out RPC
/// timeouts on the stopped leader.
const LEADER_STOP_PAUSE_MAX: Duration = Duration::from_secs(5);

#[test]
fn a_stopped_sequencer_leader_is_replaced_within_seconds_and_no_gateway_leaves_the_view() {
    let _serial = one_at_a_time();
    let mut loaded = Loaded::start();
    let before = loaded.cluster.leader_status();
    let leader = before["id"].as_u64().unwrap() as u32;
    let stopped = Stopped::stop(&loaded.cluster, leader);
    let paused = loaded.progress(None, RESUMED, &format!("after leader {leader} stopped"));
    assert!(
        paused < LEADER_STOP_PAUSE_MAX,
        "appends resumed {paused:?} after the leader stopped"
    );
    loaded.progress(None, PROGRESS, "under the new leader");
    let after = loaded.cluster.leader_status();
    assert_ne!(after["id"], before["id"], "a new leader");
    // The gateways heartbeat every member, so the new leader has heard from them lately.
    assert_eq!(
        after["view"]["id"], before["view"]["id"],
        "no gateway left the view: {after}"
    );
    drop(stopped);
    loaded.sequencer_catches_up(leader);
    loaded.progress(None, PROGRESS, "after the old leader continued");
    loaded.check_history();
}

#[derive(Debug, Clone, Copy)]
enum Victim {
    Sequencer(u32),
    Storage(u32),
    Gateway(u32),
}

#[test]
fn appends_go_on_while_a_minority_is_stopped_and_nothing_acknowledged_is_lost() {
    let _serial = one_at_a_time();
    let seed: u64 = std::env::var("TALLY_SIGSTOP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    let rounds: usize = std::env::var("TALLY_SIGSTOP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    eprintln!("seed {seed} (replay with TALLY_SIGSTOP_SEED={seed}), {rounds} round(s)");
    let mut rng = Rng(seed);
    let began = Instant::now();

    let mut loaded = Loaded::start();
    let cluster = &loaded.cluster;
    let (sequencers, storage) = (cluster.ids("sequencer"), cluster.ids("storage"));
    let gateways = loaded.gateways.clone();
    let mut leaders_stopped = 0;
    for round in 0..rounds {
        let mut victims: Vec<Victim> = sequencers.iter().map(|s| Victim::Sequencer(*s)).collect();
        victims.push(Victim::Storage(rng.pick(&storage)));
        victims.push(Victim::Gateway(rng.pick(&gateways)));
        rng.shuffle(&mut victims);
        let mut leader_hit = false;
        let mut step = 0;
        while step < victims.len() || !leader_hit {
            let victim = match victims.get(step) {
                Some(victim) => *victim,
                // No sequencer was leading when it was stopped: stop the one that leads now.
                None => Victim::Sequencer(cluster.leader_status()["id"].as_u64().unwrap() as u32),
            };
            step += 1;
            // How long it stays stopped, in acknowledged appends.
            let stopped_for = PROGRESS * (1 + rng.below(2) as usize);
            let what = format!("round {round}, {victim:?}");
            match victim {
                Victim::Sequencer(id) => {
                    let was_leader = cluster.leader_status()["id"].as_u64() == Some(id.into());
                    leader_hit |= was_leader;
                    leaders_stopped += usize::from(was_leader);
                    eprintln!("{what}: stop (leader: {was_leader})");
                    let stopped = Stopped::stop(cluster, id);
                    loaded.progress(None, stopped_for, &format!("{what}, while stopped"));
                    drop(stopped);
                    loaded.sequencer_catches_up(id);
                }
                Victim::Storage(id) => {
                    eprintln!("{what}: stop");
                    let stopped = Stopped::stop(cluster, id);
                    loaded.progress(None, stopped_for, &format!("{what}, while stopped"));
                    drop(stopped);
                    loaded.storage_catches_up(id);
                }
                Victim::Gateway(id) => {
                    let evict = rng.below(2) == 0;
                    eprintln!("{what}: stop (until it leaves the view: {evict})");
                    let stopped = Stopped::stop(cluster, id);
                    loaded.progress(
                        Some(id),
                        stopped_for,
                        &format!("{what}, at the other gateway"),
                    );
                    if evict {
                        let left = wait_until(WAIT, || !view_has_gateway(cluster, id));
                        assert!(left.is_ok(), "gateway {id} stayed in the view");
                        loaded.progress(
                            Some(id),
                            PROGRESS,
                            &format!("{what}, after it left the view"),
                        );
                    }
                    drop(stopped);
                    let back = wait_until(WAIT, || view_has_gateway(cluster, id));
                    assert!(back.is_ok(), "gateway {id} did not come back into the view");
                }
            }
            // Appends go on everywhere, the continued gateway's clients included.
            loaded.progress(None, PROGRESS, &format!("{what}, after it continued"));
        }
    }
    assert!(
        leaders_stopped >= rounds,
        "{leaders_stopped} leaders stopped"
    );
    let checked = loaded.check_history();
    eprintln!(
        "{checked} acknowledged appends checked; {leaders_stopped} leader(s) stopped; {:?} in all",
        began.elapsed()
    );
}
