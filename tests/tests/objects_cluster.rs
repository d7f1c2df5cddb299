//! TX-1 on a cluster: clients spread over both gateways of a `tally cluster` mix one-shot and
//! interactive `bank` transfers while one gateway is SIGKILLed and later started again; the
//! total never changes, no balance is negative, and the ledger accounts for every balance
//! (`TALLY_SLOW_TESTS=1` for the full size).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tally_tests::bank::{self, Scale, Targets};
use tally_tests::{wait_until, Cluster};

#[test]
fn bank_keeps_its_invariant_on_two_gateways_when_one_is_sigkilled() {
    let scale = Scale::from_env();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    let victim = cluster.ids("gateway")[1];
    bank::open(&gateways[0], scale);
    let targets = Targets::new(gateways.clone());
    let mut down_for = Duration::ZERO;
    let run = bank::run(&targets, scale, 0xc1a5, |targets, answered| {
        let started = Instant::now();
        let floor = answered.load(Ordering::SeqCst) + 50;
        wait_until(scale.duration, || {
            started.elapsed() >= scale.duration / 3 && answered.load(Ordering::SeqCst) >= floor
        })
        .expect("transfers go on");
        cluster.kill(victim).unwrap();
        targets.set(1, None);
        let killed_at = Instant::now();
        // The survivor alone, for a while, then the victim again.
        let floor = answered.load(Ordering::SeqCst) + 50;
        wait_until(scale.duration, || {
            started.elapsed() >= scale.duration * 2 / 3 && answered.load(Ordering::SeqCst) >= floor
        })
        .expect("transfers go on at the survivor");
        cluster.start(victim).unwrap();
        down_for = killed_at.elapsed();
        targets.set(1, Some(gateways[1].clone()));
    });
    // A write at the restarted gateway after every transfer ended: reads at the other one
    // carrying its X-Tally-Seen see everything before it.
    let http = reqwest::blocking::Client::new();
    let response = http
        .put(format!("{}/objects/marks/end", gateways[1]))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: u64 = response.headers()["x-tally-seen"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let report = bank::check(&gateways[0], Some(seen), scale, &run);
    println!(
        "{} accounts ({} hot), {} clients over 2 gateways, {:?}, gateway {victim} SIGKILLed for {down_for:?}: {report:?}",
        scale.accounts, scale.hot, scale.clients, scale.duration
    );
    assert!(
        report.oneshot_committed > 0 && report.interactive_committed > 0,
        "{report:?}"
    );
}
