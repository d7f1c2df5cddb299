//! Open transactions (participants found as they run: two-phase commit with locks) over the
//! in-memory log: every object the methods reach commits or none does, no staged state is
//! seen, messages leave only on commit; cycles of transactions waiting for each other's
//! locks lose exactly one victim, `retryable`, and nothing else is aborted (2PC-6); a
//! coordinator that dies at any of its appends leaves one outcome (2PC-7).

mod common;

use common::*;
use libobject::{TxnCall, TxnOutcome, TxnStatus};
use logbook::crashing::CrashAt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn pay(from: &str, input: Value) -> TxnCall {
    TxnCall {
        class: "account".into(),
        key: from.into(),
        method: "pay".into(),
        input,
    }
}

async fn transact(g: &Gateway, id: &str, root: TxnCall) -> TxnOutcome {
    g.objects
        .transact_open(&g.ctx(0), id, root, None)
        .await
        .unwrap()
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

async fn counter(g: &Gateway, key: &str) -> i64 {
    let out = g.call("counter", key, "get", Value::Null).await.unwrap();
    out["value"].as_i64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_the_methods_reach_commits_or_none_does() {
    let w = world();
    let g = w.survivor();
    open(&g, "a", 100).await;
    open(&g, "b", 10).await;

    // a pays b: a's withdrawal and b's deposit (a call a's method makes) commit together.
    let input = json!({"to": "b", "amount": 30, "notify": "paid"});
    let outcome = transact(&g, "o1", pay("a", input.clone())).await;
    assert_eq!(outcome.outcome, TxnStatus::Success, "{outcome:?}");
    assert_eq!(
        outcome.results,
        vec![json!({"balance": 70, "there": {"balance": 40}})]
    );
    assert_eq!((balance(&g, "a").await, balance(&g, "b").await), (70, 40));
    // The same id again: the same outcome, nothing runs again.
    let again = transact(&g, "o1", pay("a", input)).await;
    assert_eq!(again, outcome);
    assert_eq!((balance(&g, "a").await, balance(&g, "b").await), (70, 40));
    // b's deposit sent its message on commit, once.
    wait_until(|| async { counter(&g, "paid").await == 1 }).await;
    let fetched = g
        .objects
        .transaction(&g.ctx(0), "o1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched, outcome);

    // a takes 50 from b, which has 40: b's call fails, and a's withdrawal... deposit
    // (its own change) does not happen either, even though a's method swallows the failure.
    let input = json!({"to": "b", "amount": 50, "take": true, "swallow": true, "notify": "x"});
    let outcome = transact(&g, "o2", pay("a", input)).await;
    assert_eq!(outcome.outcome, TxnStatus::Failure, "{outcome:?}");
    assert_eq!(outcome.participant, Some(1), "b is the one that failed");
    let error = outcome.error.unwrap();
    assert!(
        error.message.contains("account/b") && error.message.contains("insufficient"),
        "{error:?}"
    );
    assert_eq!((balance(&g, "a").await, balance(&g, "b").await), (70, 40));

    // The root's own failure names the root.
    let outcome = transact(&g, "o3", pay("b", json!({"to": "a", "amount": 500}))).await;
    assert_eq!(outcome.outcome, TxnStatus::Failure);
    assert_eq!(outcome.participant, Some(0));

    // An abort sent no message.
    assert_eq!(counter(&g, "x").await, 0);
    assert_eq!(counter(&g, "paid").await, 1);
    // Each object's history names the transaction its call belonged to (an abort is
    // answered before every participant wrote it down).
    let joined = || async {
        let h = history(&g, "account", "b").await;
        h.iter()
            .filter_map(|c| c.transaction.clone())
            .collect::<Vec<_>>()
    };
    wait_until(|| async { joined().await.len() == 3 }).await;
    assert_eq!(joined().await, vec!["o1", "o2", "o3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_object_shows_no_staged_state_and_queues_later_calls() {
    let w = world();
    let g = w.survivor();
    open(&g, "p", 100).await;
    open(&g, "q", 0).await;
    let input = json!({"to": "q", "amount": 25, "hold": true});
    let t = {
        let g = g.clone();
        tokio::spawn(async move { transact(&g, "s1", pay("p", input)).await })
    };
    // The transaction is held after q voted: q is locked, its deposit staged.
    wait_until(|| async {
        let view = g
            .objects
            .inspect(&g.ctx(0), &libobject::ObjectRef::new("account", "q"))
            .await
            .unwrap();
        let head = view.queued.first().and_then(|q| q.transaction.clone());
        // q ran its deposit (the two opening deposits ran before).
        head == Some("s1".into()) && w.runs("account.deposit") == 3
    })
    .await;
    // A read beside the queue sees the state before the transaction; a call queues behind.
    assert_eq!(balance(&g, "q").await, 0);
    let later = {
        let g = g.clone();
        tokio::spawn(async move {
            g.call("account", "q", "deposit", json!({"amount": 1}))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!later.is_finished(), "a call ran past a locked object");
    GATES[0].add_permits(1);
    assert_eq!(t.await.unwrap().outcome, TxnStatus::Success);
    assert_eq!(later.await.unwrap(), json!({"balance": 26}));
}

/// n transactions, each holding one account and calling the next one's: a cycle.
async fn cycle(g: &[std::sync::Arc<Gateway>], name: &str, n: usize) -> (Vec<TxnOutcome>, Duration) {
    let keys: Vec<String> = (0..n).map(|i| format!("{name}-{i}")).collect();
    for k in &keys {
        open(&g[0], k, 100).await;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let g = g[i % g.len()].clone();
        let input = json!({
            "to": keys[(i + 1) % n], "amount": 1 + i as i64,
            "before": [name, n], "notify": format!("{name}-sent"),
        });
        let (id, root) = (format!("{name}-t{i}"), pay(&keys[i], input));
        tasks.push(tokio::spawn(async move {
            let outcome = transact(&g, &id, root).await;
            (outcome, started.elapsed())
        }));
    }
    let mut outcomes = Vec::new();
    let mut detected = Duration::ZERO;
    for t in tasks {
        let (outcome, elapsed) = t.await.unwrap();
        if outcome.outcome == TxnStatus::Retryable {
            detected = elapsed;
        }
        outcomes.push(outcome);
    }
    (outcomes, detected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pc_6_a_cycle_of_locks_loses_exactly_its_youngest_and_the_retry_commits() {
    let w = world();
    let gateways = [slow_gateway(&w, 11), slow_gateway(&w, 12)];
    // Deadlocks broken, as the gateways observe them (each writes the victim's abort once).
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for g in &gateways {
        let broken = broken.clone();
        g.objects.set_observer(std::sync::Arc::new(move |o| {
            if let libobject::Observation::Deadlock { .. } = o {
                broken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    for (k, n) in [2, 3, 5].into_iter().enumerate() {
        let name = format!("ring{n}");
        let (outcomes, detected) = cycle(&gateways, &name, n).await;
        assert_eq!(broken.load(std::sync::atomic::Ordering::SeqCst), k + 1);
        let victims: Vec<&TxnOutcome> = outcomes
            .iter()
            .filter(|o| o.outcome != TxnStatus::Success)
            .collect();
        assert_eq!(victims.len(), 1, "{n}-cycle: {outcomes:#?}");
        let victim = victims[0];
        assert_eq!(victim.outcome, TxnStatus::Retryable);
        assert!(
            victim.error.as_ref().unwrap().message.contains("deadlock"),
            "{victim:?}"
        );
        let youngest = outcomes.iter().map(|o| o.seqnum).max().unwrap();
        assert_eq!(victim.seqnum, youngest, "the youngest is the victim");
        eprintln!("{n}-cycle: victim {} after {detected:?}", victim.id);

        // Money moved only for the n - 1 that committed; their messages went, once each.
        let g = &gateways[0];
        let mut total = 0;
        for i in 0..n {
            total += balance(g, &format!("{name}-{i}")).await;
        }
        assert_eq!(total, 100 * n as i64);
        wait_until(|| async { counter(g, &format!("{name}-sent")).await == n as i64 - 1 }).await;

        // The victim, sent again under a fresh id (no cycle now), commits.
        let i: usize = victim.id.rsplit('t').next().unwrap().parse().unwrap();
        let input = json!({"to": format!("{name}-{}", (i + 1) % n), "amount": 1});
        let retry = transact(
            g,
            &format!("{}-retry", victim.id),
            pay(&format!("{name}-{i}"), input),
        )
        .await;
        assert_eq!(retry.outcome, TxnStatus::Success, "{retry:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_that_wait_without_a_cycle_are_never_victims() {
    // Locks taken in one order (a before b before c): they queue, but can never wait in a
    // cycle; under this contention no transaction may be aborted (no false positive).
    let w = world();
    let gateways = [slow_gateway(&w, 21), slow_gateway(&w, 22)];
    for key in ["a", "b", "c"] {
        open(&gateways[0], key, 1_000).await;
    }
    let pairs = [("a", "b"), ("b", "c"), ("a", "c")];
    let mut tasks = Vec::new();
    for i in 0..45 {
        let g = gateways[i % 2].clone();
        let (from, to) = pairs[i % pairs.len()];
        let root = pay(from, json!({"to": to, "amount": 1}));
        tasks.push(tokio::spawn(async move {
            transact(&g, &format!("line-{i}"), root).await
        }));
    }
    for t in tasks {
        let outcome = t.await.unwrap();
        assert_eq!(outcome.outcome, TxnStatus::Success, "{outcome:?}");
    }
    let g = &gateways[0];
    let balances = (
        balance(g, "a").await,
        balance(g, "b").await,
        balance(g, "c").await,
    );
    assert_eq!(balances, (1_000 - 30, 1_000, 1_000 + 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pc_7_an_open_transactions_coordinator_that_dies_at_any_append_leaves_one_outcome() {
    // The dying gateway's appends: 0 the root's join, then (its drives) b's join, b's vote,
    // the decision (with a's outcome) and the done records, in an order the tasks decide.
    for crash in [
        CrashAt::Before(0),
        CrashAt::After(0),
        CrashAt::After(1),
        CrashAt::After(2),
        CrashAt::After(3),
        CrashAt::After(4),
        CrashAt::After(5),
    ] {
        let w = world();
        open(&w.survivor(), "a", 10).await;
        let dying = gateway(&w, Some(crash));
        let root = pay("a", json!({"to": "b", "amount": 4, "notify": "n"}));
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            dying
                .objects
                .transact_open(&dying.ctx(0), "t7", root.clone(), None),
        )
        .await;
        // Another gateway asks for the outcome: that finishes whatever was logged.
        let other = gateway(&w, None);
        let found = other
            .objects
            .transaction(&other.ctx(0), "t7")
            .await
            .unwrap();
        // Sent again (or for the first time, if nothing was logged): one outcome.
        let outcome = transact(&other, "t7", root).await;
        assert_eq!(
            outcome.outcome,
            TxnStatus::Success,
            "{crash:?}: {outcome:?}"
        );
        if let Some(found) = found {
            assert_eq!(found, outcome, "{crash:?}");
        }
        assert_eq!(
            (balance(&other, "a").await, balance(&other, "b").await),
            (6, 4),
            "{crash:?}"
        );
        wait_until(|| async { counter(&other, "n").await == 1 }).await;
    }
}
