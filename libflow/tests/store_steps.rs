//! Object writes and transactions of libstore inside workflow steps, exactly once: a workflow
//! whose steps write objects, fetch-add counters, run one-shot transfers and an interactive
//! transfer, crashed at every append (before and after the log takes it) and driven again,
//! ends with the balances, counters and output of the failure-free run. The same workflow
//! without keys (each step's store unkeyed) does not: the test can fail.

mod common;

use common::{crash_and_redrive, outside, Children, Crash};
use libflow::{Error, Flow, Status, Workflows};
use libstore::{OneShot, Op, Store, Test};
use logbook::memory::MemoryLogBook;
use serde_json::{json, Value};
use std::sync::Arc;
use tally_sdk::{Ctx, FunctionError};

/// A libstore error inside a step: a log failure stops the execution (it is driven again),
/// anything else fails the step.
fn lift(e: libstore::Error) -> Error {
    match e {
        libstore::Error::Log(e) => Error::Log(e),
        e => FunctionError::from(e).into(),
    }
}

/// The step's store: keyed by the step's key, or (the injected bug) not.
fn store(ctx: &Ctx, key: &str, keyed: bool) -> Store {
    let store = Store::new(ctx.clone());
    if keyed {
        store.keyed(key)
    } else {
        store
    }
}

fn transfer(store: &Store, from: &str, to: &str, amount: i64) -> OneShot {
    let accounts = store.collection("accounts");
    let (from, to) = (accounts.object(from), accounts.object(to));
    OneShot::new()
        .read(&from, "/balance")
        .condition(
            &from,
            "/balance",
            Test::Ge(json!(amount)),
            "insufficient funds",
        )
        .write(&from, Op::add("/balance", -amount))
        .write(&to, Op::add("/balance", amount))
}

async fn bank(flow: Flow, input: Value) -> Result<Value, Error> {
    let keyed = input["keyed"].as_bool().unwrap_or(true);
    let ctx = flow.ctx().clone();
    // Object writes: open three accounts and a ledger.
    let c = ctx.clone();
    let opened: usize = flow
        .step_with_key("open", move |key| {
            let store = store(&c, &key, keyed);
            async move {
                let accounts = store.collection("accounts");
                for (name, balance) in [("a1", 100), ("a2", 0), ("a3", 0)] {
                    let account = accounts.object(name);
                    account.fetch_add("/balance", balance).await.map_err(lift)?;
                }
                let ledger = store.collection("ledger").object("main");
                ledger
                    .push("/entries", json!("opened"), Some(10))
                    .await
                    .map_err(lift)
            }
        })
        .await?;
    // Fetch-adds: a counter, twice, and the old values back.
    let c = ctx.clone();
    let counted: Vec<Value> = flow
        .step_with_key("count", move |key| {
            let store = store(&c, &key, keyed);
            async move {
                let counter = store.collection("counters").object("transfers");
                let a = counter.fetch_add("/n", 1).await.map_err(lift)?;
                let b = counter.fetch_add("/n", 10).await.map_err(lift)?;
                Ok(vec![json!(a), json!(b)])
            }
        })
        .await?;
    // One-shot transfers: one that commits, one that aborts (insufficient funds).
    let c = ctx.clone();
    let oneshots: Vec<Value> = flow
        .step_with_key("oneshot", move |key| {
            let store = store(&c, &key, keyed);
            async move {
                let ok = store.run(&transfer(&store, "a1", "a2", 30)).await;
                let too_much = store.run(&transfer(&store, "a2", "a3", 1000)).await;
                let ok = ok.map_err(lift)?;
                let too_much = too_much.map_err(lift)?;
                Ok(vec![
                    json!(ok.is_committed()),
                    json!(too_much.is_committed()),
                ])
            }
        })
        .await?;
    // An interactive transfer, tried until it commits, and a ledger entry.
    let c = ctx.clone();
    let interactive: bool = flow
        .step_with_key("interactive", move |key| {
            let store = store(&c, &key, keyed);
            async move {
                let accounts = store.collection("accounts");
                let (a2, a3) = (accounts.object("a2"), accounts.object("a3"));
                loop {
                    let mut tx = store.begin().await.map_err(lift)?;
                    let balance = tx.get(&a2, "/balance").await.map_err(lift)?;
                    if balance.and_then(|b| b.as_i64()).unwrap_or(0) >= 12 {
                        tx.fetch_add(&a2, "/balance", -12).await.map_err(lift)?;
                        tx.fetch_add(&a3, "/balance", 12).await.map_err(lift)?;
                    }
                    if tx.commit().await.map_err(lift)?.is_committed() {
                        break;
                    }
                }
                let ledger = store.collection("ledger").object("main");
                ledger
                    .push("/entries", json!("moved"), Some(10))
                    .await
                    .map_err(lift)?;
                Ok(true)
            }
        })
        .await?;
    Ok(json!({
        "opened": opened, "counted": counted, "oneshots": oneshots, "interactive": interactive,
    }))
}

fn workflows() -> Workflows {
    let mut w = Workflows::new();
    w.register("bank", bank);
    w
}

/// Every balance, the counter and the ledger, read from outside.
async fn state(log: &Arc<MemoryLogBook>) -> Value {
    let store = Store::new(outside(log));
    let mut state = json!({});
    for name in ["a1", "a2", "a3"] {
        let account = store.collection("accounts").object(name);
        state[name] = account.get("/balance").await.unwrap().unwrap_or_default();
    }
    let counter = store.collection("counters").object("transfers");
    state["n"] = counter.get("/n").await.unwrap().unwrap_or_default();
    let ledger = store.collection("ledger").object("main");
    state["ledger"] = ledger.get("/entries").await.unwrap().unwrap_or_default();
    state
}

/// Runs `bank` failure-free, then crashed at every append and driven again; returns the
/// crash points whose end state or output differ from the failure-free run's.
async fn crash_everywhere(keyed: bool) -> Vec<(Crash, Value)> {
    let w = workflows();
    let input = json!({ "keyed": keyed });
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    let (clean, appends) =
        crash_and_redrive(&w, &log, &kids, None, "bank", "b", input.clone()).await;
    assert_eq!(clean.status, Status::Succeeded, "{clean:?}");
    let clean_state = state(&log).await;
    assert_eq!(
        clean_state,
        json!({"a1": 70, "a2": 18, "a3": 12, "n": 11, "ledger": ["opened", "moved"]})
    );
    assert!(appends >= 10, "{appends} appends");
    println!("keyed: {keyed}, {appends} appends in the failure-free run");
    let mut wrong = Vec::new();
    for n in 0..appends {
        for crash in [Crash::Before(n), Crash::After(n)] {
            let log = Arc::new(MemoryLogBook::new());
            let (ended, _) =
                crash_and_redrive(&w, &log, &kids, Some(crash), "bank", "b", input.clone()).await;
            assert_eq!(ended.status, Status::Succeeded, "{crash:?}: {ended:?}");
            let got = state(&log).await;
            if got != clean_state || ended.output != clean.output {
                wrong.push((crash, json!({ "state": got, "output": ended.output })));
            }
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_object_writes_and_transactions_take_effect_once_through_a_crash_at_every_append() {
    let wrong = crash_everywhere(true).await;
    assert!(
        wrong.is_empty(),
        "crash points that changed the end: {wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_a_crash_after_a_write_applies_it_twice() {
    let wrong = crash_everywhere(false).await;
    assert!(
        !wrong.is_empty(),
        "the same workflow with unkeyed stores must show double effects"
    );
    println!(
        "{} crash points change the end without keys, e.g. {:?}",
        wrong.len(),
        wrong[0]
    );
}
