//! `bank`: accounts as libstore objects, moved between by one-shot or interactive
//! transactions, driven by JSON so scripts and tests can use it:
//!
//! - `{"action":"open","account":"a1","balance":100}`: a one-shot transaction that makes
//!   `accounts/a1` (`{"balance": 100}`) unless it exists, and adds the name to the index
//!   (`bank/index`, `{"accounts": [...]}`: the set of accounts, in the order opened).
//! - `{"action":"transfer","from":"a1","to":"a2","amount":5,"mode":"oneshot","id":"t1"}`:
//!   `mode` is `oneshot` (the default: one record, applied in log order, so contention
//!   queues) or `interactive` (read at a snapshot, commit, and on a conflict try again, up to
//!   `INTERACTIVE_TRIES` times). Insufficient funds or a missing account aborts. With an
//!   `id`, the transfer also writes its ledger entry `transfers/{id}` (`{"from", "to",
//!   "amount", "mode"}`) in the same transaction, and a transfer whose id is in the ledger
//!   is not applied again: the answer is then `{"committed": true, "duplicate": true}`.
//!   Answers `{"committed": true}` or `{"committed": false, "reason": "..."}`.
//! - `{"action":"balance","account":"a1"}`: `{"balance": N}`.
//! - `{"action":"audit"}`: `{"accounts": N, "total": T}`, every account read in one
//!   snapshot (a read-only transaction: it appends nothing).

use crate::functions::{FunctionError, FunctionResult};
use bytes::Bytes;
use libstore::{Object, OneShot, Op, Outcome, Store, Test};
use serde::Deserialize;
use serde_json::{json, Value};

/// The collection of accounts.
pub const ACCOUNTS: &str = "accounts";
/// The collection of ledger entries, one per transfer that carried an id.
pub const TRANSFERS: &str = "transfers";
/// How often an interactive transfer tries before it gives up on conflicts.
pub const INTERACTIVE_TRIES: usize = 5;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Open {
        account: String,
        balance: u64,
    },
    Transfer {
        from: String,
        to: String,
        amount: u64,
        #[serde(default)]
        mode: Mode,
        #[serde(default)]
        id: Option<String>,
    },
    Balance {
        account: String,
    },
    Audit,
}

#[derive(Deserialize, serde::Serialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Oneshot,
    Interactive,
}

/// The index of accounts: `bank/index`.
fn index(store: &Store) -> Object {
    store.collection("bank").object("index")
}

fn account(store: &Store, name: &str) -> Object {
    store.collection(ACCOUNTS).object(name)
}

fn committed() -> Value {
    json!({ "committed": true })
}

fn aborted(reason: impl Into<String>) -> Value {
    json!({ "committed": false, "reason": reason.into() })
}

/// The reason a transfer already in the ledger aborts with.
fn duplicate_reason(id: &str) -> String {
    format!("transfer {id} was applied already")
}

/// The `bank` function, over the store of its call (made by the `Stores` it is registered with,
/// so its caches outlive the call).
pub async fn bank(store: Store, input: Bytes) -> FunctionResult {
    let request: Request = serde_json::from_slice(&input).map_err(|e| {
        FunctionError::bad_input(format!(
            "expected {{\"action\": \"open\"|\"transfer\"|\"balance\"|\"audit\", ...}}: {e}"
        ))
    })?;
    let answer = match request {
        Request::Open { account, balance } => open(&store, &account, balance).await?,
        Request::Transfer {
            from,
            to,
            amount,
            mode,
            id,
        } => {
            if from == to {
                return Err(FunctionError::bad_input("from and to are the same account"));
            }
            let amount = i64::try_from(amount)
                .ok()
                .filter(|a| *a > 0)
                .ok_or_else(|| FunctionError::bad_input("amount is 1 to 2^63-1"))?;
            let transfer = Transfer {
                from: account(&store, &from),
                to: account(&store, &to),
                amount,
                ledger: id
                    .as_deref()
                    .map(|id| store.collection(TRANSFERS).object(id)),
                entry: json!({ "from": from, "to": to, "amount": amount, "mode": mode }),
                id,
            };
            match mode {
                Mode::Oneshot => transfer.oneshot(&store).await?,
                Mode::Interactive => transfer.interactive(&store).await?,
            }
        }
        Request::Balance { account: name } => {
            let balance = account(&store, &name).get("/balance").await?;
            let balance =
                balance.ok_or_else(|| FunctionError::bad_input(format!("no account {name}")))?;
            json!({ "balance": balance })
        }
        Request::Audit => audit(&store).await?,
    };
    tally_sdk::json::output(&answer)
}

async fn open(store: &Store, name: &str, balance: u64) -> Result<Value, FunctionError> {
    let object = account(store, name);
    let open = OneShot::new()
        .condition(
            &object,
            "",
            Test::Exists(false),
            &format!("account {name} exists"),
        )
        .write(&object, Op::set("", json!({ "balance": balance })))
        .write(&index(store), Op::push("/accounts", json!(name), None));
    Ok(match store.run(&open).await? {
        Outcome::Committed { .. } => committed(),
        Outcome::Aborted { reason, .. } => aborted(reason),
    })
}

struct Transfer {
    from: Object,
    to: Object,
    amount: i64,
    id: Option<String>,
    /// The ledger entry's object, when the transfer has an id.
    ledger: Option<Object>,
    entry: Value,
}

impl Transfer {
    async fn oneshot(&self, store: &Store) -> Result<Value, FunctionError> {
        let mut transfer = OneShot::new();
        if let (Some(id), Some(ledger)) = (&self.id, &self.ledger) {
            transfer = transfer
                .condition(ledger, "", Test::Exists(false), &duplicate_reason(id))
                .write(ledger, Op::set("", self.entry.clone()));
        }
        let (from, to) = (&self.from, &self.to);
        let missing = |o: &Object| format!("no account {}", o.id().key);
        let transfer = transfer
            .condition(from, "/balance", Test::Exists(true), &missing(from))
            .condition(to, "/balance", Test::Exists(true), &missing(to))
            .condition(
                from,
                "/balance",
                Test::Ge(json!(self.amount)),
                "insufficient funds",
            )
            .write(from, Op::add("/balance", -self.amount))
            .write(to, Op::add("/balance", self.amount));
        Ok(match store.run(&transfer).await? {
            Outcome::Committed { .. } => committed(),
            Outcome::Aborted { reason, .. } => self.aborted(reason),
        })
    }

    /// An abort's answer: one because the ledger has the transfer already is a commit.
    fn aborted(&self, reason: String) -> Value {
        match &self.id {
            Some(id) if reason == duplicate_reason(id) => {
                json!({ "committed": true, "duplicate": true })
            }
            _ => aborted(reason),
        }
    }

    async fn interactive(&self, store: &Store) -> Result<Value, FunctionError> {
        let mut conflict = String::new();
        for _ in 0..INTERACTIVE_TRIES {
            let mut tx = store.begin().await?;
            if let (Some(id), Some(ledger)) = (&self.id, &self.ledger) {
                if tx.get(ledger, "").await?.is_some() {
                    return Ok(self.aborted(duplicate_reason(id)));
                }
                tx.set(ledger, "", self.entry.clone()).await?;
            }
            let balance = |v: Option<Value>, o: &Object| {
                v.and_then(|v| v.as_i64())
                    .ok_or_else(|| format!("no account {}", o.id().key))
            };
            let from = match balance(tx.get(&self.from, "/balance").await?, &self.from) {
                Ok(from) => from,
                Err(reason) => return Ok(aborted(reason)),
            };
            if let Err(reason) = balance(tx.get(&self.to, "/balance").await?, &self.to) {
                return Ok(aborted(reason));
            }
            if from < self.amount {
                // Read-only so far but for the ledger entry: dropped, it appends nothing.
                return Ok(aborted("insufficient funds"));
            }
            tx.fetch_add(&self.from, "/balance", -self.amount).await?;
            tx.fetch_add(&self.to, "/balance", self.amount).await?;
            match tx.commit().await? {
                Outcome::Committed { .. } => return Ok(committed()),
                Outcome::Aborted { reason, .. } => conflict = reason,
            }
        }
        Ok(aborted(format!(
            "conflicts in {INTERACTIVE_TRIES} tries; the last: {conflict}"
        )))
    }
}

/// Every account's balance in one snapshot.
async fn audit(store: &Store) -> Result<Value, FunctionError> {
    let mut tx = store.begin().await?;
    let names = tx.get(&index(store), "/accounts").await?;
    let names: Vec<String> = match names {
        None => Vec::new(),
        Some(names) => serde_json::from_value(names)
            .map_err(|e| FunctionError::new(format!("bank/index holds no list of names: {e}")))?,
    };
    let mut total: i64 = 0;
    for name in &names {
        let balance = tx.get(&account(store, name), "/balance").await?;
        total += balance.and_then(|b| b.as_i64()).unwrap_or(0);
    }
    Ok(json!({ "accounts": names.len(), "total": total }))
}
