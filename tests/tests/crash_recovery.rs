//! Crash recovery of a real `tally up`: SIGKILL while `tally bench append` runs, restart, and
//! every acknowledged append is there at the same seqnum, in the same order.

use std::process::{Command, Stdio};
use std::time::Duration;
use tally_tests::history::{ack_lines, check_acks, check_no_duplicates, read_book};
use tally_tests::{tally_bin, wait_until, Tally};

/// Every record of book 0, by seqnum.
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
    let records = read_book(&tally.url(""), None);
    check_acks(&records, &acked);
    check_no_duplicates(&records);
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
    let records: Vec<(u64, Vec<u8>)> = read_book(&tally.url(""), None)
        .into_iter()
        .map(|(seqnum, stored)| (seqnum, stored.data))
        .collect();
    assert_eq!(records, appended);
}

#[test]
fn a_second_tally_up_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Tally::up(dir.path(), &[]).unwrap();
    let mut second = Command::new(tally_bin())
        .args([
            "up",
            "--http-addr",
            "127.0.0.1:0",
            "--worker-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
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
