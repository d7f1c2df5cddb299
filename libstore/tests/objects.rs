//! Objects, one-shot and interactive transactions against the in-memory log: what each
//! operation returns and leaves, the errors of bad requests, the API regressions of TX-5, and
//! that aux data is only a cache (dropping it changes no answer) while checkpoints keep a
//! cold read's replay bounded.

mod common;

use common::{store, store_over, store_with, NoAux};
use libstore::{Error, Isolation, OneShot, Op, Outcome, Settings, Store, Stores, Test};
use logbook::memory::MemoryLogBook;
use logbook::{BookId, LogBook, Tag};
use serde_json::{json, Value};
use std::sync::Arc;
use tally_sdk::Ctx;

#[tokio::test]
async fn path_operations_return_and_leave_what_they_say() {
    let (store, _) = store();
    let o = store.collection("c").object("k");
    assert_eq!(o.get("").await.unwrap(), None);
    assert_eq!(o.set("", json!({"n": 1, "l": []})).await.unwrap(), None);
    assert_eq!(o.fetch_add("/n", 41).await.unwrap(), 1.into());
    assert_eq!(o.push("/l", json!("a"), Some(2)).await.unwrap(), 1);
    assert_eq!(o.push("/l", json!("b"), Some(2)).await.unwrap(), 2);
    assert_eq!(o.push("/l", json!("c"), Some(2)).await.unwrap(), 2);
    assert_eq!(o.pop("/l").await.unwrap(), Some(json!("c")));
    o.make_object("/m").await.unwrap();
    assert!(o.compare_and_set("/m/x", None, json!(1)).await.unwrap());
    assert!(!o.compare_and_set("/m/x", None, json!(2)).await.unwrap());
    assert_eq!(o.delete("/m").await.unwrap(), Some(json!({"x": 1})));
    let results = o
        .apply(vec![Op::add("/n", 1), Op::set("/s", json!("t"))])
        .await
        .unwrap();
    assert_eq!(results, vec![json!(42), Value::Null]);
    assert_eq!(
        o.get("").await.unwrap(),
        Some(json!({"n": 43, "l": ["b"], "s": "t"}))
    );
    assert_eq!(o.get("/l/0").await.unwrap(), Some(json!("b")));
}

#[tokio::test]
async fn bad_requests_are_errors_that_change_nothing() {
    let log = Arc::new(MemoryLogBook::new());
    let settings = Settings {
        document_bytes_max: 100,
        ..Settings::default()
    };
    let store = store_with(log, settings);
    let o = store.collection("c").object("k");
    o.set("", json!({"s": "text", "n": 1})).await.unwrap();

    let e = o.fetch_add("/s", 1).await.unwrap_err();
    assert!(matches!(e, Error::TypeMismatch { op: "add", .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "add at \"/s\" needs a number, but finds a string"
    );
    assert!(e.is_bad_request() && !e.is_retryable());
    let e = o.set("/s/x", json!(1)).await.unwrap_err();
    assert!(matches!(e, Error::BadPath { .. }), "{e}");
    assert!(matches!(
        o.get("no-slash").await,
        Err(Error::BadPath { .. })
    ));
    let e = o.set("/big", json!("x".repeat(200))).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { max: 100, .. }), "{e}");
    // Several ops are all or none: the first one's effect is undone by the second's error.
    let e = o
        .apply(vec![Op::add("/n", 1), Op::push("/s", json!(1), None)])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TypeMismatch { op: "push", .. }), "{e}");
    assert!(matches!(o.apply(vec![]).await, Err(Error::Invalid(_))));
    assert!(matches!(
        o.push("/l", json!(1), Some(0)).await,
        Err(Error::Invalid(_))
    ));
    let nameless = store.collection("").object("k");
    assert!(matches!(nameless.get("").await, Err(Error::Invalid(_))));
    assert_eq!(o.get("").await.unwrap(), Some(json!({"s": "text", "n": 1})));
}

#[tokio::test]
async fn a_write_is_read_back_and_a_delete_reads_as_missing() {
    let (store, _) = store();
    let o = store.collection("users").object("ada");
    o.set("", json!({"name": "Ada"})).await.unwrap();
    assert_eq!(o.get("/name").await.unwrap(), Some(json!("Ada")));
    assert_eq!(o.delete("").await.unwrap(), Some(json!({"name": "Ada"})));
    assert_eq!(o.get("").await.unwrap(), None);
    assert_eq!(o.delete("").await.unwrap(), None);
    // Another store (another process) over the same log reads the same.
    let (other, log) = common::store();
    let o = other.collection("users").object("ada");
    o.set("/name", json!("Ada")).await.unwrap();
    let reader = store_over(log);
    assert_eq!(
        reader
            .collection("users")
            .object("ada")
            .get("")
            .await
            .unwrap(),
        Some(json!({"name": "Ada"}))
    );
}

#[tokio::test]
async fn a_one_shot_transaction_commits_or_aborts_by_its_own_logic() {
    let (store, _) = store();
    let accounts = store.collection("accounts");
    let (a1, a2) = (accounts.object("a1"), accounts.object("a2"));
    a1.set("", json!({"balance": 10, "name": "x"}))
        .await
        .unwrap();
    let transfer = |amount: i64| {
        OneShot::new()
            .read(&a1, "/balance")
            .condition(
                &a1,
                "/balance",
                Test::Ge(json!(amount)),
                "insufficient funds",
            )
            .write(&a1, Op::add("/balance", -amount))
            .write(&a2, Op::add("/balance", amount))
    };
    let outcome = store.run(&transfer(4)).await.unwrap();
    assert!(
        matches!(&outcome, Outcome::Committed { reads, .. } if reads == &[Some(json!(10))]),
        "{outcome:?}"
    );
    let outcome = store.run(&transfer(7)).await.unwrap();
    assert!(
        matches!(&outcome, Outcome::Aborted { reason, .. } if reason == "insufficient funds"),
        "{outcome:?}"
    );
    // A write that fails aborts the whole transaction: the first write does not happen.
    let bad = OneShot::new()
        .write(&a2, Op::add("/balance", 1))
        .write(&a1, Op::add("/name", 1));
    let outcome = store.run(&bad).await.unwrap();
    assert!(
        matches!(&outcome, Outcome::Aborted { reason, .. } if reason.contains("needs a number")),
        "{outcome:?}"
    );
    assert_eq!(a1.get("/balance").await.unwrap(), Some(json!(6)));
    assert_eq!(a2.get("").await.unwrap(), Some(json!({"balance": 4})));
    // A condition without a message says which test failed.
    let missing = OneShot {
        conditions: vec![libstore::Condition {
            object: a2.id().clone(),
            path: "/frozen".into(),
            test: Test::Exists(true),
            message: None,
        }],
        ..OneShot::new().write(&a2, Op::set("/x", json!(1)))
    };
    let Outcome::Aborted { reason, .. } = store.run(&missing).await.unwrap() else {
        panic!("the condition fails")
    };
    assert!(
        reason.contains("\"/frozen\" {\"exists\":true} does not hold"),
        "{reason}"
    );
    assert!(matches!(
        store.run(&OneShot::new().read(&a1, "/balance")).await,
        Err(Error::Invalid(_))
    ));
}

#[test]
fn a_one_shot_transaction_and_an_outcome_read_as_json() {
    let text = r#"{"reads":[{"collection":"accounts","key":"a1","path":"/balance"}],
        "conditions":[{"collection":"accounts","key":"a1","path":"/balance","ge":5,"message":"insufficient funds"}],
        "writes":[{"collection":"accounts","key":"a1","op":"add","path":"/balance","delta":-5},
                  {"collection":"accounts","key":"a2","op":"push","path":"/log","value":"in","limit":10}]}"#;
    let tx: OneShot = serde_json::from_str(text).unwrap();
    assert_eq!(tx.conditions[0].test, Test::Ge(json!(5)));
    assert_eq!(tx.writes[1].op, Op::push("/log", json!("in"), Some(10)));
    let again: OneShot = serde_json::from_value(serde_json::to_value(&tx).unwrap()).unwrap();
    assert_eq!(again, tx);
    let aborted = Outcome::Aborted {
        seqnum: None,
        reason: "insufficient funds".into(),
    };
    assert_eq!(
        serde_json::to_value(&aborted).unwrap(),
        json!({"committed": false, "reason": "insufficient funds"})
    );
}

/// How many records the book holds.
async fn records(log: &MemoryLogBook) -> u64 {
    let range = logbook::ReadRange {
        from: logbook::Seqnum::ZERO,
        to: logbook::Seqnum::MAX,
        limit: logbook::READ_RANGE_RECORDS_MAX,
    };
    log.read_range(common::BOOK, Tag::ANY, range)
        .await
        .unwrap()
        .len() as u64
}

#[tokio::test]
async fn interactive_transactions_read_their_writes_and_validate_at_commit() {
    let (store, log) = store();
    let c = store.collection("c");
    let (x, y) = (c.object("x"), c.object("y"));
    x.set("", json!({"n": 1})).await.unwrap();
    y.set("", json!({"n": 1})).await.unwrap();

    // Reads see the transaction's own writes; nothing is appended before commit.
    let before = records(&log).await;
    let mut tx = store.begin().await.unwrap();
    tx.fetch_add(&x, "/n", 5).await.unwrap();
    assert_eq!(tx.get(&x, "/n").await.unwrap(), Some(json!(6)));
    assert_eq!(x.get("/n").await.unwrap(), Some(json!(1)));
    assert_eq!(records(&log).await, before);
    assert!(tx.commit().await.unwrap().is_committed());
    assert_eq!(x.get("/n").await.unwrap(), Some(json!(6)));

    // Read-only and dropped transactions append nothing.
    let before = records(&log).await;
    let mut ro = store.begin().await.unwrap();
    ro.get(&x, "/n").await.unwrap();
    let mut dropped = store.begin().await.unwrap();
    dropped.set(&y, "/n", json!(0)).await.unwrap();
    drop(dropped);
    let outcome = ro.commit().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Committed {
            seqnum: None,
            reads: vec![]
        }
    );
    assert_eq!(records(&log).await, before);

    // A write between the snapshot and the commit aborts a transaction that read the object.
    let mut tx = store.begin().await.unwrap();
    tx.get(&x, "/n").await.unwrap();
    tx.set(&y, "/n", json!(2)).await.unwrap();
    x.fetch_add("/n", 1).await.unwrap();
    let Outcome::Aborted { reason, .. } = tx.commit().await.unwrap() else {
        panic!("x changed after the snapshot")
    };
    assert!(reason.starts_with("c/x changed at seqnum"), "{reason}");
    assert_eq!(y.get("/n").await.unwrap(), Some(json!(1)));
}

/// Two transactions that each read both objects and write the other one's: write skew.
async fn write_skew(store: &Store, isolation: Isolation) -> (bool, bool) {
    let c = store.collection("doctors");
    let (a, b) = (c.object("a"), c.object("b"));
    a.set("", json!({"on_call": true})).await.unwrap();
    b.set("", json!({"on_call": true})).await.unwrap();
    let mut t1 = store.begin_with(isolation).await.unwrap();
    let mut t2 = store.begin_with(isolation).await.unwrap();
    for t in [&mut t1, &mut t2] {
        assert_eq!(t.get(&a, "/on_call").await.unwrap(), Some(json!(true)));
        assert_eq!(t.get(&b, "/on_call").await.unwrap(), Some(json!(true)));
    }
    t1.set(&a, "/on_call", json!(false)).await.unwrap();
    t2.set(&b, "/on_call", json!(false)).await.unwrap();
    let first = t1.commit().await.unwrap().is_committed();
    let second = t2.commit().await.unwrap().is_committed();
    (first, second)
}

#[tokio::test]
async fn serializable_aborts_write_skew_and_snapshot_isolation_allows_it() {
    assert_eq!(
        write_skew(&store().0, Isolation::Serializable).await,
        (true, false)
    );
    assert_eq!(
        write_skew(&store().0, Isolation::Snapshot).await,
        (true, true)
    );
}

/// An outcome without its seqnums (checkpoints move them; they are not answers).
fn shown(outcome: Result<Outcome, Error>) -> String {
    let outcome = match outcome {
        Ok(Outcome::Committed { reads, .. }) => Ok((true, format!("{reads:?}"))),
        Ok(Outcome::Aborted { reason, .. }) => Ok((false, reason.replace(char::is_numeric, ""))),
        Err(e) => Err(e),
    };
    format!("{outcome:?}")
}

/// A sequential workload of every kind of operation; every answer, in order.
async fn workload(store: &Store) -> Vec<String> {
    let mut answers = Vec::new();
    let c = store.collection("c");
    let objects: Vec<_> = (0..4).map(|i| c.object(&format!("o{i}"))).collect();
    for o in &objects {
        answers.push(format!("{:?}", o.set("", json!({"n": 0, "l": []})).await));
    }
    for round in 0..60usize {
        let (o, p) = (&objects[round % 4], &objects[(round * 7 + 1) % 4]);
        answers.push(format!("{:?}", o.fetch_add("/n", round).await));
        answers.push(format!("{:?}", p.push("/l", json!(round), Some(5)).await));
        let transfer = OneShot::new()
            .read(p, "/n")
            .condition(o, "/n", Test::Ge(json!(40)), "too small")
            .write(o, Op::add("/n", -40))
            .write(p, Op::add("/n", 40));
        answers.push(shown(store.run(&transfer).await));
        // Two interleaved transactions: the second one's commit conflicts with the first.
        let mut t1 = store.begin().await.unwrap();
        let mut t2 = store.begin().await.unwrap();
        answers.push(format!("{:?}", t1.fetch_add(o, "/n", 1).await));
        answers.push(format!("{:?}", t2.get(o, "/n").await));
        answers.push(format!("{:?}", t2.fetch_add(p, "/n", 1).await));
        answers.push(shown(t1.commit().await));
        answers.push(shown(t2.commit().await));
        if round % 10 == 9 {
            answers.push(format!("{:?}", o.fetch_add("/l", 1).await));
        }
    }
    for o in &objects {
        answers.push(format!("{:?}", o.get("").await));
    }
    answers
}

#[tokio::test]
async fn dropping_aux_data_changes_no_answer() {
    let with_aux = workload(&store().0).await;
    let log = Arc::new(MemoryLogBook::new());
    let without = workload(&store_over(Arc::new(NoAux(log.clone())))).await;
    assert_eq!(with_aux.len(), without.len());
    for (a, b) in with_aux.iter().zip(&without) {
        assert_eq!(a, b);
    }
    assert!(with_aux.iter().any(|a| a.contains("Ok((false")));
    assert!(with_aux.iter().any(|a| a.contains("TypeMismatch")));
    // A fresh reader (no decisions in memory, no aux data in the log) reads the same.
    let reader = store_over(log);
    for (i, answer) in with_aux.iter().rev().take(4).rev().enumerate() {
        let doc = reader
            .collection("c")
            .object(&format!("o{i}"))
            .get("")
            .await;
        assert_eq!(&format!("{doc:?}"), answer);
    }
}

#[tokio::test]
async fn checkpoints_bound_the_replay_of_a_cold_read() {
    let settings = Settings {
        checkpoint_every: 8,
        ..Settings::default()
    };
    let log = Arc::new(MemoryLogBook::new());
    // The writer's own caches make each write replay at most one record; it still appends a
    // checkpoint whenever its view is more than 8 records above the last one.
    let writer = store_with(log.clone(), settings);
    let o = writer.collection("c").object("hot");
    for i in 0..200 {
        assert_eq!(o.fetch_add("/n", 1).await.unwrap(), i.into());
    }
    let stats = writer.stats();
    assert!(stats.replay_max <= 1, "{stats:?}");
    assert!(stats.checkpoints >= 200 / 9 - 1, "{stats:?}");
    // About one checkpoint per 8 records, however often the object is read.
    for _ in 0..50 {
        o.get("/n").await.unwrap();
    }
    assert!(
        writer.stats().checkpoints <= 200 / 8 + 1,
        "{:?}",
        writer.stats()
    );
    // A reader with no cache at all (no aux data, nothing in memory) replays only what lies
    // above the newest checkpoint.
    let cold = store_with(Arc::new(NoAux(log.clone())), settings);
    let o = cold.collection("c").object("hot");
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(200)));
    assert!(cold.stats().replay_max <= 8 + 1, "{:?}", cold.stats());
    // A reader with aux data replays nothing beyond the newest record.
    let warm = store_with(log, settings);
    let o = warm.collection("c").object("hot");
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(200)));
    assert!(warm.stats().replay_max <= 1, "{:?}", warm.stats());
}

#[tokio::test]
async fn stores_share_caches_across_calls_of_one_book_and_only_of_one_book() {
    // No aux data, so only the in-memory caches can spare a replay.
    let log: Arc<dyn LogBook> = Arc::new(NoAux(Arc::new(MemoryLogBook::new())));
    let stores = Stores::with_settings(Settings {
        checkpoint_every: 1000,
        ..Settings::default()
    })
    .unwrap();
    let call = |book: u32, id: &str| stores.of(Ctx::new(log.clone(), BookId(book), id.into()));
    let first = call(1, "call-1");
    let o = first.collection("c").object("hot");
    for _ in 0..100 {
        o.fetch_add("/n", 1).await.unwrap();
    }
    // A later call of the same book reads the view the first one left: no replay.
    let later = call(1, "call-2");
    let replayed = later.stats().records_replayed;
    let o = later.collection("c").object("hot");
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(100)));
    assert_eq!(
        later.stats().records_replayed,
        replayed,
        "{:?}",
        later.stats()
    );
    // A store of its own replays the object's whole stream.
    let alone = Store::new(Ctx::new(log.clone(), BookId(1), "alone".into()));
    let o = alone.collection("c").object("hot");
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(100)));
    assert!(alone.stats().records_replayed >= 100, "{:?}", alone.stats());
    // Another book's store shares nothing with book 1's.
    let other = call(2, "call-3");
    assert_eq!(
        other.collection("c").object("hot").get("/n").await.unwrap(),
        None
    );
    assert_eq!(other.stats().views, 1, "{:?}", other.stats());
}

#[tokio::test]
async fn a_commit_record_that_aborted_does_not_abort_the_transactions_after_it() {
    let (store, log) = store();
    let c = store.collection("c");
    let (x, y, z) = (c.object("x"), c.object("y"), c.object("z"));
    for o in [&x, &y, &z] {
        o.set("", json!({"n": 0})).await.unwrap();
    }
    // T1 reads x and writes y; T2 reads y and writes z; both at the same snapshot.
    let mut t1 = store.begin().await.unwrap();
    let mut t2 = store.begin().await.unwrap();
    t1.get(&x, "/n").await.unwrap();
    t1.set(&y, "/n", json!(1)).await.unwrap();
    t2.get(&y, "/n").await.unwrap();
    t2.set(&z, "/n", json!(2)).await.unwrap();
    // x changes, so T1's commit record aborts; T2 validates y against T1's record, which
    // changed nothing because it aborted: T2 commits.
    x.fetch_add("/n", 1).await.unwrap();
    assert!(!t1.commit().await.unwrap().is_committed());
    assert!(t2.commit().await.unwrap().is_committed());
    // A reader with nothing cached decides both records the same from the log alone.
    let cold = store_over(Arc::new(NoAux(log)));
    let c = cold.collection("c");
    assert_eq!(c.object("y").get("/n").await.unwrap(), Some(json!(0)));
    assert_eq!(c.object("z").get("/n").await.unwrap(), Some(json!(2)));
}

#[tokio::test]
async fn history_shows_each_change_with_its_effect_and_pages_in_log_order() {
    let settings = Settings {
        checkpoint_every: 2,
        ..Settings::default()
    };
    let log = Arc::new(MemoryLogBook::new());
    let store = store_with(log.clone(), settings);
    let accounts = store.collection("accounts");
    let (a1, a2) = (accounts.object("a1"), accounts.object("a2"));
    a1.set("", json!({"balance": 10})).await.unwrap();
    a1.fetch_add("/balance", 5).await.unwrap();
    // A write that fails is in the history, not applied, with its reason.
    a1.push("/balance", json!(1), None).await.unwrap_err();
    let transfer = |amount: i64| {
        OneShot::new()
            .condition(
                &a1,
                "/balance",
                Test::Ge(json!(amount)),
                "insufficient funds",
            )
            .write(&a1, Op::add("/balance", -amount))
            .write(&a2, Op::add("/balance", amount))
    };
    assert!(store.run(&transfer(4)).await.unwrap().is_committed());
    assert!(!store.run(&transfer(100)).await.unwrap().is_committed());
    let mut tx = store.begin().await.unwrap();
    tx.fetch_add(&a1, "/balance", 1).await.unwrap();
    assert!(tx.commit().await.unwrap().is_committed());
    a1.delete("").await.unwrap();

    // (kind, applied, doc after): checkpoints (every 2 records here) are not changes.
    let expect = [
        ("write", true, Some(json!({"balance": 10}))),
        ("write", true, Some(json!({"balance": 15}))),
        ("write", false, Some(json!({"balance": 15}))),
        ("oneshot", true, Some(json!({"balance": 11}))),
        ("oneshot", false, Some(json!({"balance": 11}))),
        ("transaction", true, Some(json!({"balance": 12}))),
        ("write", true, None),
    ];
    let summary = |changes: &[libstore::Change]| -> Vec<(String, bool, Option<Value>)> {
        changes
            .iter()
            .map(|c| {
                let kind = serde_json::to_value(c.kind).unwrap();
                (kind.as_str().unwrap().to_string(), c.applied, c.doc.clone())
            })
            .collect()
    };
    let want: Vec<(String, bool, Option<Value>)> = expect
        .iter()
        .map(|(k, a, d)| (k.to_string(), *a, d.clone()))
        .collect();
    let all = a1.history(logbook::Seqnum::ZERO, 100).await.unwrap();
    assert_eq!(summary(&all.changes), want);
    assert_eq!(all.next, None);
    assert!(all.changes.windows(2).all(|w| w[0].seqnum < w[1].seqnum));
    assert_eq!(
        all.changes[2].reason.as_deref(),
        Some("push at \"/balance\" needs an array, but finds a number")
    );
    assert_eq!(all.changes[4].reason.as_deref(), Some("insufficient funds"));
    assert_eq!(all.changes[3].ops, vec![Op::add("/balance", -4)]);
    assert_eq!(
        all.changes[5].ops,
        vec![Op::set("", json!({"balance": 12}))]
    );

    // Pages of 3 give the same changes; a reader with nothing cached agrees.
    let cold = store_with(Arc::new(NoAux(log)), settings);
    let cold_a1 = cold.collection("accounts").object("a1");
    let mut paged = Vec::new();
    let mut after = logbook::Seqnum::ZERO;
    loop {
        let page = cold_a1.history(after, 3).await.unwrap();
        paged.extend(page.changes);
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(paged, all.changes);
    let a2_history = a2.history(logbook::Seqnum::ZERO, 100).await.unwrap();
    assert_eq!(summary(&a2_history.changes).len(), 2);
    assert!(matches!(
        a1.history(logbook::Seqnum::ZERO, 0).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn a_value_larger_than_a_document_is_refused_before_it_is_logged() {
    let settings = Settings {
        document_bytes_max: 100,
        ..Settings::default()
    };
    let log = Arc::new(MemoryLogBook::new());
    let store = store_with(log.clone(), settings);
    let o = store.collection("c").object("k");
    let e = o.set("", json!("x".repeat(200))).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLarge {
                what: "the value",
                ..
            }
        ),
        "{e}"
    );
    let big = OneShot::new().write(&o, Op::set("/s", json!("x".repeat(200))));
    assert!(matches!(store.run(&big).await, Err(Error::TooLarge { .. })));
    let tail = log.check_tail(common::BOOK, Tag::ANY).await.unwrap();
    assert!(tail.is_none(), "{tail:?}");
}
