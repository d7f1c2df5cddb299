//! A bank on libstore, against the in-memory log: accounts are objects of the collection
//! `accounts`, transfers are one-shot or interactive transactions, and an audit reads every
//! account in one snapshot. `handle` takes the JSON actions a client would send
//! (`{"action":"open","account":"a1","balance":100}`, `{"action":"transfer","from":"a1",
//! "to":"a2","amount":5,"mode":"oneshot"}` or `"interactive"`, `{"action":"balance",
//! "account":"a1"}`, `{"action":"audit"}`); `main` opens accounts, runs transfers from many
//! tasks at once and audits.
//!
//! Run with `cargo run -p libstore --example bank`.

use libstore::{Error, OneShot, Op, Outcome, Store, Test};
use logbook::memory::MemoryLogBook;
use logbook::BookId;
use serde_json::{json, Value};
use std::sync::Arc;
use tally_sdk::Ctx;

/// How often an interactive transfer is tried before it gives up on conflicts.
const INTERACTIVE_TRIES_MAX: u32 = 20;

/// Answers one JSON action.
async fn handle(store: &Store, action: &Value) -> Result<Value, Error> {
    let accounts = store.collection("accounts");
    let text = |field: &str| action[field].as_str().unwrap_or_default().to_string();
    match action["action"].as_str() {
        Some("open") => {
            let account = accounts.object(&text("account"));
            let balance = action["balance"].as_i64().unwrap_or(0);
            account.set("", json!({ "balance": balance })).await?;
            // The directory of accounts is an object too: the audit reads it first.
            store
                .collection("bank")
                .object("directory")
                .push("/accounts", json!(text("account")), None)
                .await?;
            Ok(json!({ "opened": text("account") }))
        }
        Some("transfer") => {
            let (from, to) = (accounts.object(&text("from")), accounts.object(&text("to")));
            let amount = action["amount"].as_i64().unwrap_or(0);
            let outcome = if action["mode"] == "interactive" {
                transfer_interactive(store, &from, &to, amount).await?
            } else {
                let transfer = OneShot::new()
                    .condition(
                        &from,
                        "/balance",
                        Test::Ge(json!(amount)),
                        "insufficient funds",
                    )
                    .write(&from, Op::add("/balance", -amount))
                    .write(&to, Op::add("/balance", amount));
                store.run(&transfer).await?
            };
            Ok(match outcome {
                Outcome::Committed { .. } => json!({ "committed": true }),
                Outcome::Aborted { reason, .. } => json!({ "committed": false, "reason": reason }),
            })
        }
        Some("balance") => {
            let balance = accounts.object(&text("account")).get("/balance").await?;
            Ok(json!({ "balance": balance }))
        }
        Some("audit") => {
            // One snapshot for the directory and every account: a consistent total.
            let mut tx = store.begin().await?;
            let directory = store.collection("bank").object("directory");
            let names = tx.get(&directory, "/accounts").await?.unwrap_or(json!([]));
            let mut total = 0;
            let names = names.as_array().cloned().unwrap_or_default();
            for name in &names {
                let account = accounts.object(name.as_str().unwrap_or_default());
                total += tx
                    .get(&account, "/balance")
                    .await?
                    .and_then(|b| b.as_i64())
                    .unwrap_or(0);
            }
            Ok(json!({ "accounts": names.len(), "total": total }))
        }
        _ => Ok(json!({ "error": format!("unknown action in {action}") })),
    }
}

/// A transfer as an interactive transaction, tried again while it loses to concurrent ones.
async fn transfer_interactive(
    store: &Store,
    from: &libstore::Object,
    to: &libstore::Object,
    amount: i64,
) -> Result<Outcome, Error> {
    let mut reason = String::new();
    for _ in 0..INTERACTIVE_TRIES_MAX {
        let mut tx = store.begin().await?;
        let balance = tx
            .get(from, "/balance")
            .await?
            .and_then(|b| b.as_i64())
            .unwrap_or(0);
        if balance < amount {
            // Dropped without a commit: nothing is appended.
            return Ok(Outcome::Aborted {
                seqnum: None,
                reason: "insufficient funds".into(),
            });
        }
        tx.fetch_add(from, "/balance", -amount).await?;
        tx.fetch_add(to, "/balance", amount).await?;
        match tx.commit().await? {
            committed @ Outcome::Committed { .. } => return Ok(committed),
            Outcome::Aborted { reason: why, .. } => reason = why,
        }
    }
    Ok(Outcome::Aborted {
        seqnum: None,
        reason,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let log = Arc::new(MemoryLogBook::new());
    let store = Store::new(Ctx::new(log, BookId(1), "bank".into()));
    for i in 0..10 {
        let open = json!({ "action": "open", "account": format!("a{i}"), "balance": 100 });
        println!("{open} -> {}", handle(&store, &open).await?);
    }
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = 0;
            for n in 0..25u64 {
                let mode = if (t + n) % 2 == 0 { "oneshot" } else { "interactive" };
                let transfer = json!({
                    "action": "transfer", "mode": mode, "amount": 1 + (t * 7 + n) % 30,
                    "from": format!("a{}", (t + n) % 10), "to": format!("a{}", (t * 3 + n + 1) % 10),
                });
                if handle(&store, &transfer).await?["committed"] == true {
                    committed += 1;
                }
            }
            Ok::<u64, Error>(committed)
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("a transfer task panicked")?;
    }
    println!("{committed} of 200 transfers committed");
    let balance = json!({ "action": "balance", "account": "a0" });
    println!("{balance} -> {}", handle(&store, &balance).await?);
    let audit = json!({ "action": "audit" });
    println!("{audit} -> {}", handle(&store, &audit).await?);
    Ok(())
}
