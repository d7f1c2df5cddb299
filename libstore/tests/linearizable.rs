//! TX-3: one hot object under concurrent fetch-adds and reads is linearizable. Tasks record
//! when each operation was invoked and answered (on one logical clock) and what it returned;
//! a checker then looks for a linearization, and is shown to reject broken histories.

mod common;

use common::{seed, store, Rng};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A fetch-add of 1 that returned the old value.
    Add { old: u64 },
    /// A read of the counter.
    Read { value: u64 },
}

/// One operation of the history: invoked at `inv`, answered at `resp` (`inv < resp`).
#[derive(Debug, Clone, Copy)]
struct Event {
    inv: u64,
    resp: u64,
    kind: Kind,
}

/// Checks a counter history (starting at 0, every add adding 1) for a linearization.
///
/// The adds' old values fix their order (the add that returned `v` took the counter from `v`
/// to `v + 1`); a read of `v` must fall after the add that made `v` and before the one that
/// ended it. Points are chosen as early as each operation's interval and the order allow:
/// if the earliest choice misses an operation's answer, no choice fits.
fn check_linearizable(history: &[Event]) -> Result<(), String> {
    let mut adds: Vec<&Event> = Vec::new();
    let mut reads: Vec<&Event> = Vec::new();
    for e in history {
        match e.kind {
            Kind::Add { .. } => adds.push(e),
            Kind::Read { .. } => reads.push(e),
        }
    }
    adds.sort_by_key(|e| match e.kind {
        Kind::Add { old } => old,
        Kind::Read { .. } => unreachable!(),
    });
    for (i, add) in adds.iter().enumerate() {
        if add.kind != (Kind::Add { old: i as u64 }) {
            return Err(format!(
                "the adds' old values are not 0..{}: {:?} at rank {i}",
                adds.len(),
                add.kind
            ));
        }
    }
    let eps = 1e-6;
    // The point of the add that made value v (v = 0: none, the start).
    let mut made_at = f64::NEG_INFINITY;
    for v in 0..=adds.len() {
        // Reads of v, as early as possible after the add that made it.
        let mut latest_read = f64::NEG_INFINITY;
        for read in reads
            .iter()
            .filter(|r| r.kind == Kind::Read { value: v as u64 })
        {
            let point = (read.inv as f64).max(made_at) + eps;
            if point >= read.resp as f64 {
                return Err(format!(
                    "read of {v} ({}..{}) ends before the add that made {v} can have happened",
                    read.inv, read.resp
                ));
            }
            latest_read = latest_read.max(point);
        }
        let Some(next) = adds.get(v) else { break };
        let point = (next.inv as f64).max(made_at).max(latest_read) + eps;
        if point >= next.resp as f64 {
            return Err(format!(
                "the add from {v} ({}..{}) answered before a read of {v} or the add to {v} could happen",
                next.inv, next.resp
            ));
        }
        made_at = point;
    }
    if let Some(read) = reads.iter().find(|r| match r.kind {
        Kind::Read { value } => value as usize > adds.len(),
        Kind::Add { .. } => false,
    }) {
        return Err(format!("a read of a value no add made: {read:?}"));
    }
    Ok(())
}

#[test]
fn the_checker_rejects_stale_reads_lost_adds_and_reordered_adds() {
    let add = |inv, resp, old| Event {
        inv,
        resp,
        kind: Kind::Add { old },
    };
    let read = |inv, resp, value| Event {
        inv,
        resp,
        kind: Kind::Read { value },
    };
    let good = [
        add(0, 3, 0),
        read(1, 2, 0),
        read(2, 5, 1),
        add(4, 6, 1),
        read(7, 8, 2),
    ];
    assert_eq!(check_linearizable(&good), Ok(()));
    // Overlapping operations may go either way.
    assert_eq!(
        check_linearizable(&[add(0, 9, 1), add(1, 8, 0), read(2, 3, 1)]),
        Ok(())
    );
    let broken: Vec<(&str, Vec<Event>)> = vec![
        ("stale read", vec![add(0, 1, 0), read(2, 3, 0)]),
        ("read from the future", vec![read(0, 1, 1), add(2, 3, 0)]),
        ("lost add", vec![add(0, 1, 0), add(2, 3, 0)]),
        ("reordered adds", vec![add(0, 1, 1), add(2, 3, 0)]),
        (
            "non-monotonic reads",
            vec![add(0, 9, 0), read(1, 2, 1), read(3, 4, 0)],
        ),
        ("read of nothing made", vec![add(0, 1, 0), read(2, 3, 5)]),
    ];
    for (what, history) in broken {
        assert!(check_linearizable(&history).is_err(), "{what} passed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_object_under_concurrent_fetch_adds_is_linearizable() {
    const TASKS: u64 = 16;
    const OPS: u64 = 40;
    let seed = seed(3);
    let (store, _) = store();
    let clock = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, clock) = (store.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed * 1000 + t);
            let hot = store.collection("counters").object("hot");
            let mut history = Vec::new();
            for _ in 0..OPS {
                let inv = clock.fetch_add(1, Ordering::SeqCst);
                let kind = if rng.below(3) == 0 {
                    let value = hot
                        .get("/n")
                        .await
                        .unwrap()
                        .map_or(0, |v| v.as_u64().unwrap());
                    Kind::Read { value }
                } else {
                    let old = hot.fetch_add("/n", 1).await.unwrap();
                    Kind::Add {
                        old: old.as_u64().unwrap(),
                    }
                };
                let resp = clock.fetch_add(1, Ordering::SeqCst);
                history.push(Event { inv, resp, kind });
                // Read-your-writes: a read right after an add sees at least that add.
                if let Kind::Add { old } = kind {
                    let inv = clock.fetch_add(1, Ordering::SeqCst);
                    let value = hot.get("/n").await.unwrap().unwrap().as_u64().unwrap();
                    assert!(value > old, "read {value} after the add from {old}");
                    let resp = clock.fetch_add(1, Ordering::SeqCst);
                    history.push(Event {
                        inv,
                        resp,
                        kind: Kind::Read { value },
                    });
                }
            }
            history
        }));
    }
    let mut history = Vec::new();
    for task in tasks {
        history.extend(task.await.unwrap());
    }
    let adds = history
        .iter()
        .filter(|e| matches!(e.kind, Kind::Add { .. }))
        .count();
    let hot = store.collection("counters").object("hot");
    assert_eq!(hot.get("/n").await.unwrap(), Some(json!(adds)));
    check_linearizable(&history).unwrap();
    // The history must hold concurrency to mean anything: operations that overlap.
    let overlapping = history
        .iter()
        .filter(|a| history.iter().any(|b| a.inv < b.inv && b.inv < a.resp))
        .count();
    assert!(overlapping > 0, "no two operations overlapped");
    println!(
        "{} operations, {overlapping} overlapping another",
        history.len()
    );
}
