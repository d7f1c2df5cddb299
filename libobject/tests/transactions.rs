//! Serializable transactions across objects over the in-memory log (2PC-1 to 2PC-4, 2PC-6,
//! 2PC-7 of the exactly-once tests): one outcome per id, nothing staged visible, messages
//! only on commit and once, no deadlock on cycles, and a coordinator that dies at each of
//! its appends leaves no participant waiting and no transfer applied twice.

mod common;

use common::*;
use libobject::{CallRequest, Error, ObjectRef, TxnCall, TxnOutcome, TxnStatus};
use logbook::crashing::CrashAt;
use logbook::{LogBook, Seqnum};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn call(key: &str, method: &str, input: Value) -> TxnCall {
    TxnCall {
        class: "account".into(),
        key: key.into(),
        method: method.into(),
        input,
    }
}

fn transfer_calls(from: &str, to: &str, amount: i64) -> Vec<TxnCall> {
    vec![
        call(from, "withdraw", json!({ "amount": amount })),
        call(to, "deposit", json!({ "amount": amount })),
    ]
}

async fn transact(g: &Gateway, id: &str, calls: Vec<TxnCall>) -> Result<TxnOutcome, Error> {
    g.objects.transact(&g.ctx(0), id, calls, None).await
}

async fn balance(g: &Gateway, key: &str) -> i64 {
    let out = g
        .call("account", key, "balance", Value::Null)
        .await
        .unwrap();
    out["balance"].as_i64().unwrap_or(0)
}

async fn open(g: &Gateway, key: &str, amount: i64) {
    g.call("account", key, "deposit", json!({ "amount": amount }))
        .await
        .unwrap();
}

#[tokio::test]
async fn two_pc_1_a_transfer_commits_once_and_its_id_answers_the_same_outcome() {
    let w = world();
    let g = w.survivor();
    open(&g, "a", 10).await;
    let first = transact(&g, "t1", transfer_calls("a", "b", 5))
        .await
        .unwrap();
    assert_eq!(first.outcome, TxnStatus::Success);
    assert_eq!(
        first.results,
        vec![json!({"balance": 5}), json!({"balance": 5})]
    );
    let again = transact(&g, "t1", transfer_calls("a", "b", 5))
        .await
        .unwrap();
    let fresh = gateway(&w, None);
    let elsewhere = transact(&fresh, "t1", transfer_calls("a", "b", 5))
        .await
        .unwrap();
    assert_eq!((&again, &elsewhere), (&first, &first));
    assert_eq!((balance(&g, "a").await, balance(&g, "b").await), (5, 5));
    let other = transact(&g, "t1", transfer_calls("a", "b", 1)).await;
    assert!(matches!(other, Err(Error::Invalid(_))), "{other:?}");
    // Its history: the transaction, in each participant's, with its id.
    let h = history(&g, "account", "b").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].transaction.as_deref(), Some("t1"));
    assert_eq!(h[0].state, Some(json!({"balance": 5})));
}

#[tokio::test]
async fn two_pc_2_and_4_an_abort_changes_nothing_and_messages_leave_only_on_commit() {
    let w = world();
    let g = w.survivor();
    open(&g, "a", 1).await;
    let notify = |key: &str| json!({ "amount": 5, "notify": key });
    let calls = vec![
        call("b", "deposit", notify("n1")),
        call("a", "withdraw", notify("n1")),
    ];
    let failed = transact(&g, "t2", calls).await.unwrap();
    assert_eq!(failed.outcome, TxnStatus::Failure);
    assert_eq!(failed.participant, Some(1));
    assert!(failed.error.unwrap().message.contains("insufficient funds"));
    assert_eq!((balance(&g, "a").await, balance(&g, "b").await), (1, 0));
    let h = history(&g, "account", "b").await;
    assert!(
        h[0].error.as_ref().unwrap().message.contains("aborted"),
        "{h:?}"
    );
    assert_eq!(h[0].state, None);

    // Committed: each participant's message goes out once; the aborted ones never did.
    open(&g, "a", 9).await;
    let calls = vec![
        call("b", "deposit", notify("n2")),
        call("a", "withdraw", notify("n2")),
    ];
    let done = transact(&g, "t3", calls).await.unwrap();
    assert_eq!(done.outcome, TxnStatus::Success);
    let n2 = wait_for_history(&g, "counter", "n2", 2).await;
    assert!(n2
        .iter()
        .all(|c| c.caller.as_ref().unwrap().class == "account"));
    assert_eq!(
        history(&g, "counter", "n1").await.len(),
        0,
        "an abort sent nothing"
    );
    assert_eq!(
        w.runs(libobject::CALL_FUNCTION),
        2,
        "two messages, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pc_3_no_one_sees_a_staged_state_and_later_calls_queue_behind() {
    let w = world();
    let g = w.survivor();
    open(&g, "a", 10).await;
    // b's vote waits at the gate: a has voted (its withdrawal staged), b has not.
    let calls = vec![
        call("a", "withdraw", json!({"amount": 5})),
        call("b", "gated_deposit", json!({"amount": 5, "gate": 0})),
    ];
    let txn = {
        let g = g.clone();
        tokio::spawn(async move { transact(&g, "t4", calls).await })
    };
    let a = ObjectRef::new("account", "a");
    let voted = libobject::vote_tag;
    wait_until(|| async {
        let seq = w
            .log
            .check_tail(BOOK, libobject::txn_tag("t4"))
            .await
            .unwrap();
        match seq {
            Some(r) => w
                .log
                .check_tail(BOOK, voted(r.seqnum.0, 0))
                .await
                .unwrap()
                .is_some(),
            None => false,
        }
    })
    .await;
    // A read beside the queue sees the state before the transaction, not the staged one.
    assert_eq!(balance(&g, "a").await, 10);
    let later = {
        let g = g.clone();
        tokio::spawn(async move {
            g.call("account", "a", "deposit", json!({"amount": 1}))
                .await
        })
    };
    wait_until(|| async {
        let view = g.objects.inspect(&g.ctx(0), &a).await.unwrap();
        view.queued_total == 2
    })
    .await;
    assert!(
        !later.is_finished(),
        "a call after the transaction waits for it"
    );
    GATES[0].add_permits(1);
    assert_eq!(txn.await.unwrap().unwrap().outcome, TxnStatus::Success);
    assert_eq!(later.await.unwrap().unwrap(), json!({"balance": 6}));
    let h = history(&g, "account", "a").await;
    let methods: Vec<_> = h
        .iter()
        .map(|c| (c.method.as_str(), c.transaction.is_some()))
        .collect();
    assert_eq!(
        methods,
        [("deposit", false), ("withdraw", true), ("deposit", false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pc_5_an_abort_decided_before_a_participant_gets_there_stages_nothing_there() {
    let w = world();
    let g = w.survivor();
    open(&g, "a", 1).await;
    // b is busy: a gated deposit runs on it, queued before the transaction.
    let busy = {
        let g = g.clone();
        tokio::spawn(async move {
            // Keyed, so it is logged (queued) before it runs.
            let gated = CallRequest {
                call_key: Some("busy".into()),
                ..CallRequest::new(
                    "account",
                    "b",
                    "gated_deposit",
                    json!({"amount": 5, "gate": 1}),
                )
            };
            g.objects.call(&g.ctx(0), gated).await
        })
    };
    let b = ObjectRef::new("account", "b");
    wait_until(|| async {
        let view = g.objects.inspect(&g.ctx(0), &b).await.unwrap();
        view.queued_total == 1
    })
    .await;
    // a fails at once: the outcome is failure while b has not reached the transaction.
    let calls = vec![
        call("a", "withdraw", json!({"amount": 100})),
        call("b", "deposit", json!({"amount": 5})),
    ];
    let outcome = transact(&g, "t5", calls).await.unwrap();
    assert_eq!(
        (outcome.outcome, outcome.participant),
        (TxnStatus::Failure, Some(0))
    );
    assert!(!busy.is_finished(), "b is still busy");
    GATES[1].add_permits(1);
    assert_eq!(busy.await.unwrap().unwrap(), json!({"balance": 5}));
    // b reaches the transaction, aborted: its deposit never runs, it casts no vote, and the
    // call after it is not held up.
    let after = g
        .call("account", "b", "deposit", json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(after, json!({"balance": 6}));
    let vote = w
        .log
        .check_tail(BOOK, libobject::vote_tag(outcome.seqnum, 1))
        .await
        .unwrap();
    assert!(vote.is_none(), "b voted on a transaction already aborted");
    let h = history(&g, "account", "b").await;
    let kinds: Vec<_> = h
        .iter()
        .map(|c| (c.method.as_str(), c.error.is_some()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("gated_deposit", false),
            ("deposit", true),
            ("deposit", false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pc_6_cycles_of_transactions_never_deadlock_and_none_is_retryable() {
    let w = world();
    let (g1, g2) = (slow_gateway(&w, 7), slow_gateway(&w, 8));
    for key in ["a", "b", "c"] {
        open(&g1, key, 1_000).await;
    }
    let pairs = [
        ("a", "b"),
        ("b", "a"),
        ("b", "c"),
        ("c", "a"),
        ("a", "c"),
        ("c", "b"),
    ];
    let mut tasks = Vec::new();
    for i in 0..60 {
        let g = if i % 2 == 0 { g1.clone() } else { g2.clone() };
        let calls = if i % 5 == 4 {
            // A 3-cycle in one transaction.
            vec![
                call("a", "withdraw", json!({"amount": 2})),
                call("b", "deposit", json!({"amount": 1})),
                call("c", "deposit", json!({"amount": 1})),
            ]
        } else {
            let (from, to) = pairs[i % pairs.len()];
            transfer_calls(from, to, 1 + (i as i64 % 3))
        };
        tasks.push(tokio::spawn(async move {
            transact(&g, &format!("cycle-{i}"), calls).await.unwrap()
        }));
    }
    for t in tasks {
        let outcome = t.await.unwrap();
        assert_eq!(outcome.outcome, TxnStatus::Success, "{outcome:?}");
    }
    let total = balance(&g1, "a").await + balance(&g1, "b").await + balance(&g2, "c").await;
    assert_eq!(total, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pc_7_a_coordinator_that_dies_at_any_append_leaves_one_outcome() {
    // The coordinator's appends: 0 the transaction record, then (its participants' drives)
    // two votes and two done records, in an order the tasks decide.
    for crash in [
        CrashAt::Before(0),
        CrashAt::After(0),
        CrashAt::After(1),
        CrashAt::After(2),
        CrashAt::After(3),
        CrashAt::Before(4),
    ] {
        let w = world();
        let setup = w.survivor();
        open(&setup, "a", 10).await;
        let dying = gateway(&w, Some(crash));
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            transact(&dying, "t7", transfer_calls("a", "b", 5)),
        )
        .await;
        // Another gateway touches one participant: that finishes whatever was logged.
        let other = gateway(&w, None);
        let touched = other
            .call("account", "b", "deposit", json!({"amount": 0}))
            .await;
        assert!(touched.is_ok(), "{crash:?}: {touched:?}");
        // The client sends its request again: one outcome, one transfer.
        let outcome = transact(&other, "t7", transfer_calls("a", "b", 5))
            .await
            .unwrap();
        assert_eq!(outcome.outcome, TxnStatus::Success, "{crash:?}");
        assert_eq!(
            (balance(&other, "a").await, balance(&other, "b").await),
            (5, 5),
            "{crash:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sent_by_two_coordinators_at_once_is_applied_once() {
    let w = world();
    // Appends that take a while to land: both coordinators find no record and append one.
    let (g1, g2) = (slow_gateway(&w, 3), slow_gateway(&w, 4));
    open(&g1, "a", 100).await;
    for i in 0..10 {
        let id = format!("twice-{i}");
        let (one, two) = tokio::join!(
            transact(&g1, &id, transfer_calls("a", "b", 3)),
            transact(&g2, &id, transfer_calls("a", "b", 3))
        );
        assert_eq!(one.unwrap(), two.unwrap());
    }
    assert_eq!((balance(&g1, "a").await, balance(&g1, "b").await), (70, 30));
    let dups = history(&g1, "account", "b").await;
    assert!(
        dups.iter().any(|c| c.duplicate_of.is_some()),
        "no record was sent twice"
    );
}

#[tokio::test]
async fn transactions_are_checked_before_anything_is_logged() {
    let w = world();
    let g = w.survivor();
    let tail = w.log.check_tail(BOOK, logbook::Tag::ANY).await.unwrap();
    let bad: Vec<(&str, Vec<TxnCall>)> = vec![
        ("empty", vec![]),
        (
            "twice",
            vec![
                call("a", "deposit", json!({"amount": 1})),
                call("a", "withdraw", json!({"amount": 1})),
            ],
        ),
        ("shared", vec![call("a", "balance", Value::Null)]),
        ("unknown", vec![call("a", "fly", Value::Null)]),
        ("", vec![call("a", "deposit", json!({"amount": 1}))]),
    ];
    for (id, calls) in bad {
        let refused = transact(&g, id, calls).await;
        assert!(refused.is_err(), "{id}: {refused:?}");
    }
    assert_eq!(
        w.log.check_tail(BOOK, logbook::Tag::ANY).await.unwrap(),
        tail
    );
    // A participant's call may not call another object: it fails, and the transaction with it.
    open(&g, "a", 1).await;
    let calls = vec![
        call("a", "call_out", Value::Null),
        call("b", "deposit", json!({"amount": 1})),
    ];
    let out = transact(&g, "calls-out", calls).await.unwrap();
    assert_eq!(out.outcome, TxnStatus::Failure);
    assert_eq!(balance(&g, "b").await, 0);
    let _ = CallRequest::new("x", "y", "z", Value::Null);
    let _ = Arc::new(Seqnum::ZERO);
}

async fn wait_for_history(
    g: &Gateway,
    class: &str,
    key: &str,
    n: usize,
) -> Vec<libobject::HistoryEntry> {
    for _ in 0..1_000 {
        let h = history(g, class, key).await;
        if h.len() >= n {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{class}/{key} never got {n} calls");
}
