//! TX-2: recorded histories of concurrent transactions, checked as Elle checks list-append
//! histories. Each object holds a list; transactions read lists and append unique elements.
//! The final lists give each key's version order, so every read and append places its
//! transaction in a dependency graph (ww: appended next; wr: read what the other appended;
//! rw: read a version the other then appended after), and a cycle is an anomaly: G0 (ww only),
//! G1c (ww and wr), G2 (with rw). Aborted transactions' reads are in the graph too: a cycle
//! through one would be a snapshot that never existed (opacity).
//!
//! Serializable transactions show no anomaly; the same workload under snapshot isolation shows
//! write skew (a G2 cycle): the checker can fail, and does when it should.

mod common;

use common::{seed, store, Rng};
use libstore::{Isolation, OneShot, Op, Outcome, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use tokio::sync::Barrier;

type Key = u64;
type Element = u64;

/// One transaction as a client saw it.
#[derive(Debug, Clone, Default)]
struct Txn {
    committed: bool,
    /// Lists read, before the transaction's own appends.
    reads: Vec<(Key, Vec<Element>)>,
    appends: Vec<(Key, Element)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dep {
    Ww,
    Wr,
    Rw,
}

/// A dependency cycle: transactions, each with the edge to the next (the last to the first).
type Cycle = Vec<(usize, Dep)>;

/// A class of cycles: the edges it may use, and the anomaly it is.
type Class = (&'static [Dep], fn(Cycle) -> Anomaly);

/// What the checker found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Anomaly {
    /// A read saw an element no committed transaction appended (G1a: aborted read).
    AbortedRead {
        txn: usize,
        element: Element,
    },
    /// A committed append is missing from the final list (a lost write).
    LostAppend {
        txn: usize,
        element: Element,
    },
    /// A read is not a prefix of the key's final list.
    IncompatibleOrder {
        txn: usize,
        key: Key,
    },
    /// A dependency cycle: only ww edges (G0), ww and wr (G1c), or with rw (G2).
    G0(Cycle),
    G1c(Cycle),
    G2(Cycle),
}

/// Checks a list-append history against the final lists.
fn check(history: &[Txn], finals: &BTreeMap<Key, Vec<Element>>) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut writer: BTreeMap<Element, usize> = BTreeMap::new();
    for (i, t) in history.iter().enumerate() {
        for &(_, e) in &t.appends {
            if t.committed {
                writer.insert(e, i);
            }
        }
    }
    for (i, t) in history.iter().enumerate().filter(|(_, t)| t.committed) {
        for &(k, e) in &t.appends {
            if !finals.get(&k).is_some_and(|l| l.contains(&e)) {
                anomalies.push(Anomaly::LostAppend { txn: i, element: e });
            }
        }
    }
    let mut edges: BTreeSet<(usize, usize, Dep)> = BTreeSet::new();
    for list in finals.values() {
        for pair in list.windows(2) {
            if let (Some(&a), Some(&b)) = (writer.get(&pair[0]), writer.get(&pair[1])) {
                edges.insert((a, b, Dep::Ww));
            }
        }
    }
    for (i, t) in history.iter().enumerate() {
        for (k, read) in &t.reads {
            let empty = Vec::new();
            let list = finals.get(k).unwrap_or(&empty);
            if let Some(&e) = read.iter().find(|e| !writer.contains_key(e)) {
                anomalies.push(Anomaly::AbortedRead { txn: i, element: e });
                continue;
            }
            if !list.starts_with(read) {
                anomalies.push(Anomaly::IncompatibleOrder { txn: i, key: *k });
                continue;
            }
            if let Some(last) = read.last() {
                edges.insert((writer[last], i, Dep::Wr));
            }
            if let Some(next) = list.get(read.len()) {
                edges.insert((i, writer[next], Dep::Rw));
            }
        }
    }
    edges.retain(|(a, b, _)| a != b);
    let classes: [Class; 3] = [
        (&[Dep::Ww], Anomaly::G0),
        (&[Dep::Ww, Dep::Wr], Anomaly::G1c),
        (&[Dep::Ww, Dep::Wr, Dep::Rw], Anomaly::G2),
    ];
    for (deps, anomaly) in classes {
        let sub: Vec<_> = edges
            .iter()
            .filter(|e| deps.contains(&e.2))
            .copied()
            .collect();
        if let Some(cycle) = find_cycle(history.len(), &sub) {
            anomalies.push(anomaly(cycle));
            // A smaller class's cycle is also one of every larger class.
            break;
        }
    }
    anomalies
}

/// A cycle in the graph, if any: from each node, a shortest path back to it (BFS).
fn find_cycle(nodes: usize, edges: &[(usize, usize, Dep)]) -> Option<Cycle> {
    let mut out: Vec<Vec<(usize, Dep)>> = vec![Vec::new(); nodes];
    for &(a, b, d) in edges {
        out[a].push((b, d));
    }
    for start in 0..nodes {
        let mut came_from: BTreeMap<usize, (usize, Dep)> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for &(m, d) in &out[n] {
                if m == start {
                    // Walk back from n to start.
                    let mut cycle = vec![(n, d)];
                    let mut at = n;
                    while at != start {
                        let (prev, dep) = came_from[&at];
                        cycle.push((prev, dep));
                        at = prev;
                    }
                    cycle.reverse();
                    return Some(cycle);
                }
                if let std::collections::btree_map::Entry::Vacant(v) = came_from.entry(m) {
                    v.insert((n, d));
                    queue.push_back(m);
                }
            }
        }
    }
    None
}

fn txn(committed: bool, reads: &[(Key, &[Element])], appends: &[(Key, Element)]) -> Txn {
    Txn {
        committed,
        reads: reads.iter().map(|(k, l)| (*k, l.to_vec())).collect(),
        appends: appends.to_vec(),
    }
}

#[test]
fn the_checker_names_each_anomaly_of_a_broken_history() {
    let finals = |lists: &[(Key, &[Element])]| -> BTreeMap<Key, Vec<Element>> {
        lists.iter().map(|(k, l)| (*k, l.to_vec())).collect()
    };
    // Serial: T0 appends 1 to x; T1 reads [1], appends 2 to y; T2 reads both.
    let serial = [
        txn(true, &[(0, &[])], &[(0, 1)]),
        txn(true, &[(0, &[1])], &[(1, 2)]),
        txn(true, &[(0, &[1]), (1, &[2])], &[]),
    ];
    assert_eq!(check(&serial, &finals(&[(0, &[1]), (1, &[2])])), vec![]);
    // G0: T0 and T1 append to x and y in opposite orders.
    let g0 = [
        txn(true, &[], &[(0, 1), (1, 4)]),
        txn(true, &[], &[(0, 2), (1, 3)]),
    ];
    let found = check(&g0, &finals(&[(0, &[1, 2]), (1, &[3, 4])]));
    assert!(matches!(found[..], [Anomaly::G0(_)]), "{found:?}");
    // G1c: each reads the other's append.
    let g1c = [
        txn(true, &[(1, &[2])], &[(0, 1)]),
        txn(true, &[(0, &[1])], &[(1, 2)]),
    ];
    let found = check(&g1c, &finals(&[(0, &[1]), (1, &[2])]));
    assert!(matches!(found[..], [Anomaly::G1c(_)]), "{found:?}");
    // G2, write skew: each read both empty lists and appended to one.
    let skew = [
        txn(true, &[(0, &[]), (1, &[])], &[(0, 1)]),
        txn(true, &[(0, &[]), (1, &[])], &[(1, 2)]),
    ];
    let found = check(&skew, &finals(&[(0, &[1]), (1, &[2])]));
    assert!(
        matches!(&found[..], [Anomaly::G2(c)] if c.iter().all(|(_, d)| *d == Dep::Rw)),
        "{found:?}"
    );
    // G1a: a read of an aborted transaction's append; and a lost append.
    let g1a = [
        txn(false, &[], &[(0, 1)]),
        txn(true, &[(0, &[1])], &[]),
        txn(true, &[], &[(1, 2)]),
    ];
    let found = check(&g1a, &finals(&[(0, &[1])]));
    assert!(
        found.contains(&Anomaly::AbortedRead { txn: 1, element: 1 }),
        "{found:?}"
    );
    assert!(
        found.contains(&Anomaly::LostAppend { txn: 2, element: 2 }),
        "{found:?}"
    );
    // An aborted transaction that read an inconsistent snapshot is caught (opacity).
    let torn = [
        txn(true, &[], &[(0, 1), (1, 2)]),
        txn(false, &[(0, &[1]), (1, &[])], &[(0, 3)]),
    ];
    let found = check(&torn, &finals(&[(0, &[1]), (1, &[2])]));
    assert!(matches!(found[..], [Anomaly::G2(_)]), "{found:?}");
}

const KEYS: u64 = 4;
const TASKS: u64 = 6;
const ROUNDS: u64 = 15;

fn list(store: &Store, k: Key) -> libstore::Object {
    store.collection("lists").object(&format!("k{k}"))
}

fn elements(value: Option<Value>) -> Vec<Element> {
    value
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| e.as_u64().expect("elements are numbers"))
        .collect()
}

/// Runs the workload and returns its history and the final lists. Each round, every task
/// begins an interactive transaction, reads two keys, waits for the others to have read (so
/// the round's transactions overlap), appends to one of the keys and commits; then runs a
/// one-shot transaction that reads a key and appends to another.
async fn run(isolation: Isolation, seed: u64) -> (Vec<Txn>, BTreeMap<Key, Vec<Element>>, usize) {
    let (store, _) = store();
    let barrier = Arc::new(Barrier::new(TASKS as usize));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed * 100 + task);
            let mut history = Vec::new();
            let mut element = task * 1_000_000;
            for _ in 0..ROUNDS {
                let (a, b) = (rng.below(KEYS), rng.below(KEYS));
                let mut tx = store.begin_with(isolation).await.unwrap();
                let mut t = Txn::default();
                for k in [a, b] {
                    let read = elements(tx.get(&list(&store, k), "/l").await.unwrap());
                    if !t.reads.iter().any(|(key, _)| *key == k) {
                        t.reads.push((k, read));
                    }
                }
                barrier.wait().await;
                let target = if rng.below(2) == 0 { a } else { b };
                element += 1;
                tx.push(&list(&store, target), "/l", json!(element), None)
                    .await
                    .unwrap();
                t.appends.push((target, element));
                t.committed = tx.commit().await.unwrap().is_committed();
                history.push(t);

                let (r, w) = (rng.below(KEYS), rng.below(KEYS));
                element += 1;
                let oneshot = OneShot::new()
                    .read(&list(&store, r), "/l")
                    .write(&list(&store, w), Op::push("/l", json!(element), None));
                let Outcome::Committed { reads, .. } = store.run(&oneshot).await.unwrap() else {
                    panic!("a one-shot append has nothing to abort it")
                };
                history.push(Txn {
                    committed: true,
                    reads: vec![(r, elements(reads[0].clone()))],
                    appends: vec![(w, element)],
                });
            }
            history
        }));
    }
    let mut history = Vec::new();
    for task in tasks {
        history.extend(task.await.unwrap());
    }
    let mut finals = BTreeMap::new();
    let mut tx = store.begin().await.unwrap();
    for k in 0..KEYS {
        finals.insert(k, elements(tx.get(&list(&store, k), "/l").await.unwrap()));
    }
    let aborted = history.iter().filter(|t| !t.committed).count();
    (history, finals, aborted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serializable_histories_have_no_anomaly() {
    let seed = seed(5);
    let (history, finals, aborted) = run(Isolation::Serializable, seed).await;
    println!("{} transactions, {aborted} aborted", history.len());
    assert!(
        aborted > 0,
        "no transaction conflicted: the test shows nothing"
    );
    assert_eq!(check(&history, &finals), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_isolation_histories_show_write_skew() {
    let seed = seed(5);
    let (history, finals, aborted) = run(Isolation::Snapshot, seed).await;
    println!("{} transactions, {aborted} aborted", history.len());
    let found = check(&history, &finals);
    println!("{found:?}");
    assert!(
        matches!(&found[..], [Anomaly::G2(cycle)] if cycle.iter().any(|(_, d)| *d == Dep::Rw)),
        "snapshot isolation should show write skew: {found:?}"
    );
}
