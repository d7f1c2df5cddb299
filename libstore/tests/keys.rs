//! Keyed stores: of the records with one key, every reader applies only the first, and a
//! later one answers the first one's result. What a workflow step that runs again relies on.

mod common;

use common::{store, store_over, NoAux};
use libstore::{Error, OneShot, Op, Outcome, Store, Test};
use serde_json::json;
use std::sync::Arc;

/// Sets up two accounts, a1 with `balance` and a2 with 0.
async fn accounts(store: &Store, balance: i64) {
    let accounts = store.collection("accounts");
    let a1 = accounts.object("a1");
    a1.set("", json!({ "balance": balance })).await.unwrap();
    let a2 = accounts.object("a2");
    a2.set("", json!({ "balance": 0 })).await.unwrap();
}

async fn balance(store: &Store, account: &str) -> i64 {
    let o = store.collection("accounts").object(account);
    o.get("/balance").await.unwrap().unwrap().as_i64().unwrap()
}

fn transfer(store: &Store, amount: i64) -> OneShot {
    let accounts = store.collection("accounts");
    let (a1, a2) = (accounts.object("a1"), accounts.object("a2"));
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
}

#[tokio::test]
async fn a_keyed_write_run_again_changes_nothing_and_answers_the_same() {
    let (store, _) = store();
    let run = |store: Store| async move {
        let o = store.collection("c").object("k");
        let old = o.fetch_add("/n", 5).await.unwrap();
        let len = o.push("/l", json!("x"), None).await.unwrap();
        let before = o.set("/s", json!("new")).await.unwrap();
        (old, len, before)
    };
    let first = run(store.keyed("step-1")).await;
    assert_eq!(first, (0.into(), 1, None));
    // Another writer moves the object on between the runs.
    store
        .collection("c")
        .object("k")
        .fetch_add("/n", 100)
        .await
        .unwrap();
    let again = run(store.keyed("step-1")).await;
    assert_eq!(
        again, first,
        "a duplicate answers its first record's results"
    );
    let o = store.collection("c").object("k");
    assert_eq!(
        o.get("").await.unwrap(),
        Some(json!({"n": 105, "l": ["x"], "s": "new"}))
    );
    // Another prefix is another step: it applies.
    run(store.keyed("step-2")).await;
    assert_eq!(o.get("/n").await.unwrap(), Some(json!(110)));
}

#[tokio::test]
async fn a_keyed_one_shot_transaction_answers_its_first_outcome() {
    let (store, _) = store();
    accounts(&store, 10).await;
    let step = store.keyed("step");
    let first = step.run(&transfer(&store, 8)).await.unwrap();
    assert!(first.is_committed(), "{first:?}");
    let aborted = step.run(&transfer(&store, 8)).await.unwrap();
    assert!(!aborted.is_committed(), "2 left: {aborted:?}");
    // Run again: the first committed and the second aborted, whatever the balance is now.
    store
        .collection("accounts")
        .object("a1")
        .fetch_add("/balance", 100)
        .await
        .unwrap();
    let again = store.keyed("step");
    assert_eq!(again.run(&transfer(&store, 8)).await.unwrap(), first);
    assert_eq!(again.run(&transfer(&store, 8)).await.unwrap(), aborted);
    assert_eq!(
        (balance(&store, "a1").await, balance(&store, "a2").await),
        (102, 8)
    );
}

#[tokio::test]
async fn a_keyed_interactive_commit_run_again_answers_the_first_outcome() {
    let (store, _) = store();
    accounts(&store, 10).await;
    let pay = |store: Store| async move {
        let accounts = store.collection("accounts");
        let (a1, a2) = (accounts.object("a1"), accounts.object("a2"));
        let mut tx = store.begin().await.unwrap();
        let b = tx
            .get(&a1, "/balance")
            .await
            .unwrap()
            .unwrap()
            .as_i64()
            .unwrap();
        if b >= 5 {
            tx.fetch_add(&a1, "/balance", -5).await.unwrap();
            tx.fetch_add(&a2, "/balance", 5).await.unwrap();
        }
        tx.commit().await.unwrap()
    };
    let first = pay(store.keyed("s")).await;
    assert!(first.is_committed());
    // The run again reads 5 and writes again: its commit is a duplicate.
    assert_eq!(pay(store.keyed("s")).await, first);
    assert_eq!(
        (balance(&store, "a1").await, balance(&store, "a2").await),
        (5, 5)
    );
    // With 0 left, a run writes nothing, yet answers the first commit's outcome.
    pay(store.keyed("t")).await;
    assert!(pay(store.keyed("t")).await.is_committed());
    assert_eq!(balance(&store, "a1").await, 0);
    let (
        Outcome::Committed {
            seqnum: Some(s1), ..
        },
        Outcome::Committed {
            seqnum: Some(s2), ..
        },
    ) = (pay(store.keyed("s")).await, first)
    else {
        panic!("both committed with a record")
    };
    assert_eq!(s1, s2, "the duplicate names the first commit's record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_of_one_step_take_effect_once() {
    let (store, _) = store();
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let step = store.keyed("racing");
            tokio::spawn(async move {
                let o = step.collection("c").object("k");
                o.fetch_add("/n", 1).await.unwrap()
            })
        })
        .collect();
    let mut olds = Vec::new();
    for run in runs {
        olds.push(run.await.unwrap());
    }
    assert!(olds.iter().all(|old| *old == 0.into()), "{olds:?}");
    assert_eq!(
        store.collection("c").object("k").get("/n").await.unwrap(),
        Some(json!(1))
    );
}

#[tokio::test]
async fn a_reader_with_nothing_cached_skips_the_duplicates_alike() {
    let (store, log) = store();
    accounts(&store, 100).await;
    for _ in 0..3 {
        let step = store.keyed("same");
        let accounts = step.collection("accounts");
        accounts
            .object("a1")
            .fetch_add("/balance", -1)
            .await
            .unwrap();
        step.run(&transfer(&store, 10)).await.unwrap();
        let mut tx = step.begin().await.unwrap();
        tx.fetch_add(&accounts.object("a2"), "/balance", 1)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let cold = store_over(Arc::new(NoAux(log)));
    for reader in [&store, &cold] {
        assert_eq!(balance(reader, "a1").await, 89);
        assert_eq!(balance(reader, "a2").await, 11);
    }
}

#[tokio::test]
async fn a_key_used_by_another_operation_is_an_error_that_changes_nothing() {
    let (store, _) = store();
    let o = store.collection("c").object("k");
    store
        .keyed("p")
        .collection("c")
        .object("k")
        .fetch_add("/n", 1)
        .await
        .unwrap();
    let reused = store
        .keyed("p")
        .collection("c")
        .object("k")
        .push("/n", json!(1), None)
        .await;
    assert!(matches!(reused, Err(Error::KeyReused { .. })), "{reused:?}");
    let other = store
        .keyed("p")
        .collection("c")
        .object("other")
        .fetch_add("/n", 1)
        .await;
    assert!(matches!(other, Err(Error::KeyReused { .. })), "{other:?}");
    assert_eq!(o.get("").await.unwrap(), Some(json!({"n": 1})));
    assert_eq!(
        store.collection("c").object("other").get("").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_keyed_transaction_writes_at_most_one_object_less() {
    let (store, _) = store();
    let mut t = OneShot::new();
    for i in 0..libstore::TXN_OBJECTS_MAX {
        t = t.write(
            &store.collection("c").object(&i.to_string()),
            Op::add("/n", 1),
        );
    }
    assert!(store.run(&t).await.unwrap().is_committed());
    let keyed = store.keyed("k").run(&t).await;
    assert!(matches!(keyed, Err(Error::Invalid(_))), "{keyed:?}");
    assert!(matches!(
        store.keyed("").run(&t).await,
        Err(Error::Invalid(_))
    ));
}
