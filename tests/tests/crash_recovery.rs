//! Crash recovery of a real `tally up`: SIGKILL while `tally bench append` runs, restart, and
//! every acknowledged append is there at the same seqnum, in the same order.

use base64::Engine as _;
use reqwest::blocking::Client;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;
use tally_tests::{tally_bin, wait_until, Tally};

/// Every record of book 0, by seqnum.
fn read_book(tally: &Tally) -> BTreeMap<u64, Vec<u8>> {
    let http = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut records = BTreeMap::new();
    let mut from = 0u64;
    loop {
        let page: Value = http
            .get(tally.url(&format!("/log/0/records?from={from}&limit=10000")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        for r in page["records"].as_array().unwrap() {
            let data = base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().unwrap())
                .unwrap();
            assert!(
                records
                    .insert(r["seqnum"].as_u64().unwrap(), data)
                    .is_none(),
                "a seqnum read twice"
            );
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => return records,
        }
    }
}

fn ack_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn acknowledged_appends_survive_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let acks = dir.path().join("acks.txt");
    let data_dir = dir.path().join("data");
    let tally = Tally::up(&data_dir, &[]).unwrap();

    let mut bench = Command::new(tally_bin())
        .args([
            "bench",
            "append",
            "--addr",
            &tally.addr,
            "--clients",
            "8",
            "--record-bytes",
            "200",
        ])
        .args(["--duration", "6", "--tags", "3", "--ack-log"])
        .arg(&acks)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), || ack_lines(&acks) >= 500)
        .expect("the bench gets appends acknowledged");
    tally.kill9().unwrap();
    let status = bench.wait().unwrap();
    assert!(
        status.success(),
        "the bench rides out the crash and reports: {status}"
    );

    let acked = bench::read_ack_log(&acks).unwrap();
    assert!(acked.len() >= 500, "{} acks", acked.len());
    let tally = Tally::up(&data_dir, &[]).unwrap();
    let records = read_book(&tally);
    for ack in &acked {
        let data = records
            .get(&ack.seqnum)
            .unwrap_or_else(|| panic!("acknowledged seqnum {} is lost", ack.seqnum));
        assert_eq!(
            bench::filler_origin(data),
            Some((ack.client, ack.counter)),
            "seqnum {} holds another record",
            ack.seqnum
        );
    }
    // Each client's acknowledged appends keep their order.
    let mut by_client: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for ack in &acked {
        by_client
            .entry(ack.client)
            .or_default()
            .push((ack.counter, ack.seqnum));
    }
    for (client, mut appends) in by_client {
        appends.sort();
        assert!(
            appends.windows(2).all(|w| w[0].1 < w[1].1),
            "client {client}'s appends were reordered"
        );
    }
    // The restarted log keeps going above everything recovered.
    let last = *records.keys().last().unwrap();
    let out = tally_tests::run_tally(&[
        "log",
        "append",
        "--addr",
        &tally.addr,
        "--tag",
        "1",
        "after",
    ])
    .unwrap();
    assert!(out.trim().parse::<u64>().unwrap() > last);
}

#[test]
fn clean_restart_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let mut appended = Vec::new();
    for i in 0..20 {
        let out = tally_tests::run_tally(&[
            "log",
            "append",
            "--addr",
            &tally.addr,
            "--tag",
            "5",
            &format!("r{i}"),
        ])
        .unwrap();
        appended.push((
            out.trim().parse::<u64>().unwrap(),
            format!("r{i}").into_bytes(),
        ));
    }
    tally.stop().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let records: Vec<(u64, Vec<u8>)> = read_book(&tally).into_iter().collect();
    assert_eq!(records, appended);
}

#[test]
fn a_second_tally_up_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Tally::up(dir.path(), &[]).unwrap();
    let mut second = Command::new(tally_bin())
        .args(["up", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = wait_until(Duration::from_secs(30), || {
        status = second.try_wait().unwrap();
        status.is_some()
    });
    if exited.is_err() {
        second.kill().unwrap();
        panic!("a second tally up on the same data dir kept running");
    }
    assert!(!status.unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("in use by another running store"),
        "{stderr}"
    );
}
