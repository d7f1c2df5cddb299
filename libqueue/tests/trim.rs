//! Bounded replay and trimming: checkpoints bound a cold pop's replay; a trim reclaims what
//! every group is done with, and answers stay the same after it and with aux data dropped.

mod common;

use common::*;
use libqueue::{Group, Queue, Settings, SystemClock};
use logbook::{LogBook, ReadRange, Seqnum};
use std::sync::Arc;
use std::time::Duration;

/// Pops and acks `n` messages of `group`, returning their data.
async fn drain(group: &Group, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = group.pop().await.unwrap().expect("a message");
        out.push(String::from_utf8(d.data.to_vec()).unwrap());
        group.ack(&d).await.unwrap();
    }
    out
}

async fn count(log: &Arc<dyn LogBook>, tag: logbook::Tag) -> usize {
    let range = ReadRange {
        from: Seqnum::ZERO,
        to: Seqnum::MAX,
        limit: 10_000,
    };
    log.read_range(BOOK, tag, range).await.unwrap().len()
}

#[tokio::test]
async fn a_cold_pop_replays_about_checkpoint_every_records() {
    let log = memory();
    let queue = open(log.clone(), "q", 1, Arc::new(SystemClock)).await;
    let settings = Settings {
        checkpoint_every: 16,
        ..Settings::default()
    };
    let group = queue.group_with("g", settings).await.unwrap();
    for i in 0..200 {
        queue.push(i.to_string()).await.unwrap();
    }
    drain(&group, 150).await;
    // A new process on a log without aux data: only checkpoints bound its replay.
    let cold_log: Arc<dyn LogBook> = Arc::new(NoAux(log.clone()));
    let cold = Queue::open(ctx(cold_log, "cold"), "q").await.unwrap();
    let cold_group = cold.group_with("g", settings).await.unwrap();
    assert_eq!(drain(&cold_group, 1).await, ["150"]);
    let stats = cold_group.replay_stats();
    assert!(stats.replay_max <= 18, "{stats:?}");
    assert!(group.replay_stats().checkpoints > 0);
}

#[tokio::test]
async fn trims_reclaim_what_every_group_acked_and_answers_stay_the_same() {
    let log = memory();
    let dyn_log: Arc<dyn LogBook> = log.clone();
    let queue = open(log.clone(), "q", 2, Arc::new(SystemClock)).await;
    let fast = queue.group("fast").await.unwrap();
    let slow = queue.group("slow").await.unwrap();
    for i in 0..100 {
        queue.push(format!("{i:03}")).await.unwrap();
    }
    drain(&fast, 100).await;
    let slow_first = drain(&slow, 40).await;
    // A slow delivery in flight and a dead letter must survive the trims.
    let held = slow.pop().await.unwrap().unwrap();

    let first = queue.trim().await.unwrap();
    assert_eq!(first.group_streams_cut, 0, "one round behind: nothing yet");
    assert_eq!(first.checkpoints, 4);
    let second = queue.trim().await.unwrap();
    assert_eq!(second.group_streams_cut, 4);
    let pushes_before: usize =
        count(&dyn_log, push_tag_of(0)).await + count(&dyn_log, push_tag_of(1)).await;
    assert!(
        pushes_before < 100,
        "the messages both groups acked are gone: {pushes_before} left"
    );
    assert!(
        pushes_before >= 60,
        "none the slow group needs is gone: {pushes_before} left"
    );

    // Fresh handles with no cache, on a log without aux data, answer alike.
    let cold_log: Arc<dyn LogBook> = Arc::new(NoAux(dyn_log.clone()));
    let cold = Queue::open(ctx(cold_log, "cold"), "q").await.unwrap();
    let cold_slow = cold.group("slow").await.unwrap();
    let warm = slow.stats().await.unwrap();
    assert_eq!(cold_slow.stats().await.unwrap(), warm);
    assert_eq!(
        cold.group("fast").await.unwrap().stats().await.unwrap().lag,
        0
    );
    slow.ack(&held).await.unwrap();
    let mut rest = drain(&cold_slow, 59).await;
    assert_eq!(cold_slow.pop().await.unwrap(), None);
    let mut all = slow_first;
    all.push(String::from_utf8(held.data.to_vec()).unwrap());
    all.append(&mut rest);
    all.sort();
    let expect: Vec<String> = (0..100).map(|i| format!("{i:03}")).collect();
    assert_eq!(all, expect, "every message once, none lost to the trims");
    queue.trim().await.unwrap();
    queue.trim().await.unwrap();
    assert_eq!(queue.len().await.unwrap(), 0);
    let left = count(&dyn_log, push_tag_of(0)).await + count(&dyn_log, push_tag_of(1)).await;
    assert_eq!(left, 0, "everything acked by both groups is trimmed");
    // The queue still works after its trims.
    queue.push("later").await.unwrap();
    assert_eq!(
        fast.pop_wait(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap()
            .data,
        "later"
    );
}

/// The tag of shard `shard` of queue "q" (the queue's format: a stable hash).
fn push_tag_of(shard: u32) -> logbook::Tag {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in ["libqueue", "push", "q", &shard.to_string()] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    logbook::Tag(h)
}
