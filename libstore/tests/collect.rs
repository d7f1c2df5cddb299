//! Garbage collection: after `collect`, every read, a new transaction and a reader with
//! nothing cached see what they saw before; a transaction older than the horizon keeps what
//! it read and fails a new read with a clear error; records come back as counts; keys are
//! remembered as long as the collection's retention.

mod common;

use common::{seed, store_over, store_with, NoAux, Rng};
use libstore::{Collected, Error, OneShot, Op, Settings, Store, Test, View};
use logbook::memory::MemoryLogBook;
use logbook::{LogBook, ReadRange, Seqnum};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const ACCOUNTS: u64 = 6;

/// Collections in tests need no transaction to outlive them, and checkpoints come often.
fn settings() -> Settings {
    Settings {
        checkpoint_every: 4,
        transaction_lifetime: Duration::ZERO,
        ..Settings::default()
    }
}

fn name(i: u64) -> String {
    format!("a{i}")
}

/// A mixed workload on the accounts: writes (some keyed, some repeated), one-shot and
/// interactive transfers.
async fn workload(store: &Store, rng: &mut Rng, ops: usize) {
    let accounts = store.collection("accounts");
    for i in 0..ops {
        let (a, b) = (rng.below(ACCOUNTS), rng.below(ACCOUNTS));
        let (from, to) = (accounts.object(&name(a)), accounts.object(&name(b)));
        match rng.below(4) {
            0 => {
                from.fetch_add("/balance", 7).await.unwrap();
            }
            1 => {
                // A keyed write, then the same key again.
                let key = format!("w{}", rng.next());
                for _ in 0..2 {
                    let keyed = store.keyed(&key).collection("accounts").object(&name(a));
                    keyed.push("/log", json!(i), Some(5)).await.unwrap();
                }
            }
            2 => {
                let t = OneShot::new()
                    .condition(&from, "/balance", Test::Ge(json!(3)), "insufficient funds")
                    .write(&from, Op::add("/balance", -3))
                    .write(&to, Op::add("/balance", 3));
                store.run(&t).await.unwrap();
            }
            _ => {
                let mut tx = store.begin().await.unwrap();
                let balance = tx.get(&from, "/balance").await.unwrap();
                if balance.and_then(|b| b.as_i64()).unwrap_or(0) >= 2 {
                    tx.fetch_add(&from, "/balance", -2).await.unwrap();
                    tx.fetch_add(&to, "/balance", 2).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    }
}

async fn views(store: &Store) -> BTreeMap<String, View> {
    let mut views = BTreeMap::new();
    for i in 0..ACCOUNTS {
        let view = store
            .collection("accounts")
            .object(&name(i))
            .view()
            .await
            .unwrap();
        views.insert(name(i), view);
    }
    views
}

async fn stream_len(log: &Arc<MemoryLogBook>, object: &str) -> usize {
    let tag = libstore::object_tag(&libstore::ObjectId::new("accounts", object));
    let range = ReadRange {
        from: Seqnum::ZERO,
        to: Seqnum::MAX,
        limit: 10_000,
    };
    log.read_range(common::BOOK, tag, range)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn answers_stay_the_same_after_a_collection() {
    let mut rng = Rng::new(seed(12));
    let log = Arc::new(MemoryLogBook::new());
    let store = store_with(log.clone(), settings());
    workload(&store, &mut rng, 120).await;
    // A transaction from before the collections, which read a0 only.
    let mut old = store.begin().await.unwrap();
    let a0 = store.collection("accounts").object("a0");
    let a1 = store.collection("accounts").object("a1");
    let old_a0 = old.get(&a0, "/balance").await.unwrap();
    // A write after its snapshot: the snapshot is then strictly below the next horizon.
    a1.fetch_add("/balance", 1).await.unwrap();

    // The first collection marks the log and trims nothing.
    let first = store.collect(Duration::ZERO).await.unwrap();
    assert_eq!(first, Collected::default());
    workload(&store, &mut rng, 40).await;
    let before = views(&store).await;
    let len_before = stream_len(&log, "a0").await;

    let second = store.collect(Duration::ZERO).await.unwrap();
    assert!(second.horizon > Seqnum::ZERO, "{second:?}");
    assert_eq!(second.objects, ACCOUNTS, "{second:?}");
    assert!(second.records > 100, "{second:?}");
    assert!(
        stream_len(&log, "a0").await < len_before,
        "a0's stream is trimmed"
    );

    // Every reader agrees with before: this store, a new one, one without aux data.
    let fresh = store_with(log.clone(), settings());
    let cold = store_over(Arc::new(NoAux(log.clone())));
    for reader in [&store, &fresh, &cold] {
        assert_eq!(views(reader).await, before);
    }
    // A new transaction reads the same state and commits.
    let mut tx = fresh.begin().await.unwrap();
    let b0 = tx.get(&a0, "/balance").await.unwrap();
    assert_eq!(
        b0,
        before["a0"]
            .doc
            .as_ref()
            .and_then(|d| d.get("balance"))
            .cloned()
    );
    tx.fetch_add(&a1, "/balance", 1).await.unwrap();
    assert!(tx.commit().await.unwrap().is_committed());

    // The old transaction keeps what it read; a new read below the horizon is an error.
    assert_eq!(old.get(&a0, "/balance").await.unwrap(), old_a0);
    let collected = old.get(&a1, "/balance").await;
    assert!(
        matches!(collected, Err(Error::SnapshotCollected { .. })),
        "{collected:?}"
    );

    // More work and another collection, from the same horizon on: still the same answers.
    workload(&store, &mut rng, 40).await;
    let before = views(&store).await;
    let third = store.collect(Duration::ZERO).await.unwrap();
    assert!(third.horizon > second.horizon);
    let cold = store_over(Arc::new(NoAux(log.clone())));
    assert_eq!(views(&cold).await, before);
    assert_eq!(views(&store).await, before);
}

#[tokio::test]
async fn a_collection_keeps_what_a_young_transaction_reads() {
    let log = Arc::new(MemoryLogBook::new());
    let settings = Settings {
        transaction_lifetime: Duration::from_secs(3600),
        ..settings()
    };
    let store = store_with(log.clone(), settings);
    let a = store.collection("c").object("a");
    a.set("", json!({"n": 1})).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    a.set("/n", json!(2)).await.unwrap();
    store.collect(Duration::ZERO).await.unwrap();
    // Within the lifetime the horizon stays put: nothing is trimmed.
    let nothing = store.collect(Duration::ZERO).await.unwrap();
    assert_eq!(nothing.records, 0);
    let b = store.collection("c").object("b");
    assert_eq!(tx.get(&b, "").await.unwrap(), None);
    assert_eq!(tx.get(&a, "/n").await.unwrap(), Some(json!(1)));
}

#[tokio::test]
async fn a_key_is_remembered_as_long_as_the_retention() {
    let log = Arc::new(MemoryLogBook::new());
    let store = store_with(log.clone(), settings());
    let o = store.collection("c").object("k");
    let run = || {
        let keyed = store.keyed("step").collection("c").object("k");
        async move { keyed.fetch_add("/n", 1).await }
    };
    assert_eq!(run().await.unwrap(), 0.into());
    store.collect(Duration::ZERO).await.unwrap();
    // A run again after a collection that did not pass its first run: a duplicate.
    assert_eq!(run().await.unwrap(), 0.into());
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(1)));
    // This collection's horizon passes the first run, but a duplicate above it keeps the
    // key: a reader with nothing cached still skips it.
    let passed = store.collect(Duration::ZERO).await.unwrap();
    assert!(passed.records > 0);
    let cold = store_over(Arc::new(NoAux(log.clone())));
    assert_eq!(
        cold.collection("c").object("k").get("/n").await.unwrap(),
        Some(json!(1))
    );
    // A run after the horizon passed the first record looks above it only, finds the
    // duplicate and still changes nothing (its answer is the duplicate's own, as if it ran at
    // its position: the first one's is collected); once a collection passes every record of
    // the key, a run again applies (the retention is over).
    assert_eq!(run().await.unwrap(), 1.into());
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(1)));
    store.collect(Duration::ZERO).await.unwrap();
    store.collect(Duration::ZERO).await.unwrap();
    run().await.unwrap();
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(2)));
    let cold = store_over(Arc::new(NoAux(log.clone())));
    assert_eq!(
        cold.collection("c").object("k").get("/n").await.unwrap(),
        Some(json!(2))
    );
}

/// An object's history shows a repeat of a keyed write as a change that did not apply, and
/// after a collection starts at the object's base: the document after the last change is the
/// object's document either way.
#[tokio::test]
async fn a_history_shows_repeats_and_starts_at_a_collected_objects_base() {
    let log = Arc::new(MemoryLogBook::new());
    let store = store_with(log.clone(), settings());
    let o = store.collection("c").object("h");
    o.fetch_add("/n", 1).await.unwrap();
    let step = store.keyed("step-7");
    step.collection("c")
        .object("h")
        .fetch_add("/n", 10)
        .await
        .unwrap();
    // The step runs again: its write is a repeat.
    let again = store.keyed("step-7");
    again
        .collection("c")
        .object("h")
        .fetch_add("/n", 10)
        .await
        .unwrap();
    let page = o.history(Seqnum::ZERO, 10).await.unwrap();
    let applied: Vec<bool> = page.changes.iter().map(|c| c.applied).collect();
    assert_eq!(applied, [true, true, false], "{page:?}");
    let repeat = page.changes[2].reason.clone().unwrap_or_default();
    assert!(repeat.contains("repeat"), "{repeat}");
    assert_eq!(page.changes[2].doc, Some(json!({ "n": 11 })));

    // Two collections put the horizon above every change so far; later changes follow it.
    store.collect(Duration::ZERO).await.unwrap();
    o.fetch_add("/n", 100).await.unwrap();
    store.collect(Duration::ZERO).await.unwrap();
    o.fetch_add("/n", 1000).await.unwrap();
    let page = o.history(Seqnum::ZERO, 10).await.unwrap();
    let last = page.changes.last().expect("the newest change");
    assert!(last.applied);
    assert_eq!(last.doc, Some(json!({ "n": 1111 })));
    assert_eq!(o.view().await.unwrap().doc, Some(json!({ "n": 1111 })));
    assert!(
        page.changes.len() < 5,
        "changes below the horizon are gone: {page:?}"
    );
}
