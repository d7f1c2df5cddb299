//! A full disk on one storage node of a loopback cluster (3 sequencers, 3 storage nodes, 2
//! gateways) under load: the node's data dir is a small tmpfs, filled up by a filler file.
//! The node must say so once, clearly, in its log and keep running (no panic, no exit, no
//! restart), appends must go on with the other two replicas (a write quorum of 2 of 3), and
//! once the filler is removed the node must open its store again by itself and catch up on
//! what it missed (twice in a row), and then count in a write quorum again: with another
//! replica killed, appends go on. At the end every acknowledged append must be in the log at
//! its seqnum, in its client's order.
//!
//! It needs root (mount) and says it skipped otherwise.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use tally_tests::history::{ack_lines, check_acks, read_book};
use tally_tests::{wait_until, Cluster};

const WAIT: Duration = Duration::from_secs(60);
/// Acknowledged appends that prove progress.
const PROGRESS: usize = 200;

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a {size} tmpfs on {}",
            dir.display()
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a node that did not stop): detach it, so no mount outlives the test.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Fills the file system of `dir` with a file `filler`: writes until the disk is full.
fn fill(filler: &Path) {
    let mut file = std::fs::File::create(filler).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
}

/// The load of each gateway, stopped on drop.
struct Load {
    acks: Vec<PathBuf>,
    benches: Vec<Child>,
}

impl Load {
    /// Waits until every gateway's load has `count` more acks.
    fn progress(&self, count: usize, what: &str, cluster: &Cluster) {
        let wanted: Vec<usize> = self.acks.iter().map(|a| ack_lines(a) + count).collect();
        let moved = wait_until(WAIT, || {
            self.acks
                .iter()
                .zip(&wanted)
                .all(|(acks, wanted)| ack_lines(acks) >= *wanted)
        });
        if moved.is_err() {
            let counts: Vec<usize> = self.acks.iter().map(|a| ack_lines(a)).collect();
            panic!(
                "no progress {what}: {counts:?} acks of {wanted:?}; status: {:?}",
                cluster.status().ok()
            );
        }
    }

    fn stop(&mut self) {
        for bench in &mut self.benches {
            let _ = bench.kill();
            let _ = bench.wait();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_full_disk_on_one_storage_node_stalls_nothing_and_the_node_recovers_when_space_returns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    // `tally cluster up` puts storage node 11's data in cluster/storage-11.
    let victim = 11;
    let data_dir = cluster_dir.join(format!("storage-{victim}"));
    let disk = SmallDisk::mount(&data_dir, "16m");
    let mut cluster = Cluster::up(&cluster_dir, 3, 3, 2).expect("cluster up");
    assert!(cluster
        .node(victim)
        .is_some_and(|n| n.data_dir.as_deref() == Some(&*data_dir)));
    let acks: Vec<PathBuf> = cluster
        .ids("gateway")
        .iter()
        .map(|id| dir.path().join(format!("acks-{id}.txt")))
        .collect();
    let gateways = cluster.gateways();
    let mut load = Load {
        benches: gateways
            .iter()
            .zip(&acks)
            .map(|(g, a)| tally_tests::background_bench(g, a))
            .collect(),
        acks,
    };
    load.progress(PROGRESS, "before the disk fills", &cluster);

    let pid = cluster.node(victim).unwrap().pid;
    let log = || cluster.log(victim);
    let count = |what: &str| log().matches(what).count();
    const FULL: &str = "the disk is full";
    const REOPENED: &str = "the store is open again";
    // Twice: a node that recovered handles the next full disk the same way.
    for round in 1..=2 {
        let filler = disk.dir.join("filler");
        fill(&filler);
        let said = wait_until(WAIT, || count(FULL) == round);
        assert!(
            said.is_ok(),
            "storage {victim} never said its disk is full:\n{}",
            log()
        );
        assert!(log().contains("No space left on device"), "{}", log());
        load.progress(PROGRESS, "with a full disk on one replica", &cluster);
        assert_eq!(
            count(FULL),
            round,
            "one error per full disk, not one per entry:\n{}",
            log()
        );

        std::fs::remove_file(&filler).unwrap();
        let target = cluster.leader_status();
        let recovered = wait_until(WAIT, || cluster.storage_caught_up(victim, &target));
        assert!(
            recovered.is_ok(),
            "storage {victim} did not recover: {}\n{}",
            cluster.leader_status(),
            log()
        );
        assert_eq!(count(REOPENED), round, "{}", log());
        load.progress(PROGRESS, "after space returned", &cluster);
    }
    let node = cluster.node(victim).unwrap();
    assert!(
        node.alive() && node.pid == pid,
        "storage {victim} restarted:\n{}",
        log()
    );
    assert!(
        !log().contains("panicked"),
        "storage {victim} panicked:\n{}",
        log()
    );
    // It counts in a write quorum again: with another replica gone, appends go on.
    let other = 12;
    cluster.kill(other).unwrap();
    load.progress(PROGRESS, &format!("with storage {other} killed"), &cluster);
    cluster.start(other).unwrap();
    load.stop();

    let logs: Vec<Vec<bench::Ack>> = load
        .acks
        .iter()
        .map(|a| bench::read_ack_log(a).expect("an ack log"))
        .collect();
    let seen = logs.iter().flatten().map(|a| a.seqnum).max();
    let records = read_book(&gateways[0], seen);
    for acks in &logs {
        check_acks(&records, acks);
    }
    drop(cluster);
}
