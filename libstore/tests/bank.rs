//! TX-1 in memory: many clients move money between accounts (a few of them hot) with one-shot
//! and interactive transfers at once, some clients crash at an append (before or after the
//! log takes it) and start again, and auditors read every account in one snapshot all along.
//! Every audit and the end state hold the invariant: the total never changes, no balance is
//! negative, and the committed transfers (each one's ledger entry is written by the same
//! transaction) equal the balances' deltas. A reader without aux data or caches, deciding
//! every transaction from the log alone, finds the same balances.

mod common;

use common::{seed, store_over, NoAux, Rng};
use libstore::{Error, Object, OneShot, Op, Outcome, Store, Test};
use logbook::crashing::{CrashAt, CrashPlan, CrashingLog};
use logbook::memory::MemoryLogBook;
use logbook::LogBook;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const ACCOUNTS: u64 = 40;
const HOT: u64 = 8;
const CLIENTS: u64 = 12;
const TRANSFERS: u64 = 40;
const BALANCE: i64 = 100;
const INTERACTIVE_TRIES_MAX: u32 = 100;

fn account(store: &Store, i: u64) -> Object {
    store.collection("accounts").object(&format!("a{i}"))
}

fn ledger(store: &Store, client: u64) -> Object {
    store.collection("ledgers").object(&format!("c{client}"))
}

/// A transfer, and the entry its transaction adds to the client's ledger.
struct Transfer {
    from: u64,
    to: u64,
    amount: i64,
}

impl Transfer {
    fn entry(&self) -> Value {
        json!({ "from": self.from, "to": self.to, "amount": self.amount })
    }
}

async fn one_shot(store: &Store, client: u64, t: &Transfer) -> Result<bool, Error> {
    let (from, to) = (account(store, t.from), account(store, t.to));
    let transfer = OneShot::new()
        .condition(
            &from,
            "/balance",
            Test::Ge(json!(t.amount)),
            "insufficient funds",
        )
        .write(&from, Op::add("/balance", -t.amount))
        .write(&to, Op::add("/balance", t.amount))
        .write(&ledger(store, client), Op::push("/done", t.entry(), None));
    Ok(store.run(&transfer).await?.is_committed())
}

async fn interactive(store: &Store, client: u64, t: &Transfer) -> Result<bool, Error> {
    let (from, to) = (account(store, t.from), account(store, t.to));
    for _ in 0..INTERACTIVE_TRIES_MAX {
        let mut tx = store.begin().await?;
        let balance = tx.get(&from, "/balance").await?.and_then(|b| b.as_i64());
        if balance.expect("every account has a balance") < t.amount {
            return Ok(false);
        }
        tx.fetch_add(&from, "/balance", -t.amount).await?;
        tx.fetch_add(&to, "/balance", t.amount).await?;
        tx.push(&ledger(store, client), "/done", t.entry(), None)
            .await?;
        match tx.commit().await? {
            Outcome::Committed { .. } => return Ok(true),
            Outcome::Aborted { .. } => tokio::task::yield_now().await,
        }
    }
    panic!("an interactive transfer lost {INTERACTIVE_TRIES_MAX} times in a row")
}

/// Every balance, read in one snapshot; checks the invariant of every snapshot.
async fn audit(store: &Store) -> Result<Vec<i64>, Error> {
    let mut tx = store.begin().await?;
    let mut balances = Vec::new();
    for i in 0..ACCOUNTS {
        let balance = tx.get(&account(store, i), "/balance").await?;
        balances.push(balance.and_then(|b| b.as_i64()).expect("a balance"));
    }
    assert!(
        balances.iter().all(|&b| b >= 0),
        "a negative balance: {balances:?}"
    );
    assert_eq!(
        balances.iter().sum::<i64>(),
        BALANCE * ACCOUNTS as i64,
        "the total changed at snapshot {}",
        tx.snapshot()
    );
    Ok(balances)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_keep_the_bank_invariant_through_crashes() {
    let seed = seed(11);
    let log = Arc::new(MemoryLogBook::new());
    let setup = store_over(log.clone());
    for i in 0..ACCOUNTS {
        account(&setup, i)
            .set("", json!({ "balance": BALANCE }))
            .await
            .unwrap();
    }

    let done = Arc::new(AtomicBool::new(false));
    let audits = Arc::new(AtomicU64::new(0));
    let mut auditors = Vec::new();
    for _ in 0..2 {
        let (store, done, audits) = (store_over(log.clone()), done.clone(), audits.clone());
        auditors.push(tokio::spawn(async move {
            // At least one audit after every transfer ended.
            loop {
                let finished = done.load(Ordering::SeqCst);
                audit(&store).await.unwrap();
                audits.fetch_add(1, Ordering::SeqCst);
                if finished {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }));
    }

    let crashes = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (log, crashes) = (log.clone(), crashes.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed * 100 + client);
            // Half the clients die once, at an append drawn from the seed.
            let crash = (client % 2 == 0).then(|| {
                let n = rng.below(TRANSFERS);
                if rng.below(2) == 0 {
                    CrashAt::Before(n)
                } else {
                    CrashAt::After(n)
                }
            });
            let process = |crash| {
                let memory: Arc<dyn LogBook> = log.clone();
                let plan = CrashPlan::new(crash);
                (
                    plan.clone(),
                    store_over(Arc::new(CrashingLog::new(memory, plan))),
                )
            };
            let (mut plan, mut store) = process(crash);
            let mut committed = Vec::new();
            for n in 0..TRANSFERS {
                let pick = |rng: &mut Rng| {
                    if rng.below(2) == 0 {
                        rng.below(HOT)
                    } else {
                        rng.below(ACCOUNTS)
                    }
                };
                let t = Transfer {
                    from: pick(&mut rng),
                    to: pick(&mut rng),
                    amount: 1 + rng.below(30) as i64,
                };
                let result = if (client + n) % 2 == 0 {
                    one_shot(&store, client, &t).await
                } else {
                    interactive(&store, client, &t).await
                };
                match result {
                    Ok(true) => committed.push(t.entry()),
                    Ok(false) => {}
                    // The process died: whether its transfer happened is in the log (the
                    // ledger says). It starts again and goes on.
                    Err(e) => {
                        assert!(plan.is_dead(), "a transfer failed without a crash: {e}");
                        crashes.fetch_add(1, Ordering::SeqCst);
                        (plan, store) = process(None);
                    }
                }
            }
            committed
        }));
    }
    let mut known = BTreeMap::new();
    for (client, task) in clients.into_iter().enumerate() {
        known.insert(client as u64, task.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    for auditor in auditors {
        auditor.await.unwrap();
    }

    // The committed transfers are the ledgers' entries (a superset of what clients were told:
    // a transfer whose client crashed after the append may have committed).
    let reader = store_over(log.clone());
    let mut expected = vec![BALANCE; ACCOUNTS as usize];
    let mut transfers = 0;
    for client in 0..CLIENTS {
        let done = ledger(&reader, client).get("/done").await.unwrap();
        let entries = done.and_then(|d| d.as_array().cloned()).unwrap_or_default();
        let told = &known[&client];
        assert!(
            told.iter().all(|t| entries.contains(t)),
            "client {client} was told of a transfer its ledger lacks"
        );
        assert!(entries.len() >= told.len());
        for e in &entries {
            let amount = e["amount"].as_i64().unwrap();
            expected[e["from"].as_u64().unwrap() as usize] -= amount;
            expected[e["to"].as_u64().unwrap() as usize] += amount;
        }
        transfers += entries.len();
    }
    let balances = audit(&reader).await.unwrap();
    assert_eq!(
        balances, expected,
        "balances differ from the committed transfers"
    );

    // A reader with nothing cached, and no aux data, decides every transaction alike.
    let cold = store_over(Arc::new(NoAux(log)));
    assert_eq!(audit(&cold).await.unwrap(), balances);
    println!(
        "{transfers} transfers committed, {} crashes, {} audits",
        crashes.load(Ordering::SeqCst),
        audits.load(Ordering::SeqCst)
    );
    assert!(transfers > (CLIENTS * TRANSFERS / 2) as usize);
    assert!(crashes.load(Ordering::SeqCst) > 0);
}
