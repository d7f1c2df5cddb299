//! The object-store benchmark: YCSB-T transfers between accounts and BokiStore's Retwis mix,
//! driven by closed-loop clients against Tally's `bank` and `retwis` functions over HTTP, or
//! against PostgreSQL at SERIALIZABLE doing the same operations on tables of the same shape.
//!
//! A run first sets up its data (the setup phase: makes `accounts` accounts, or registers
//! `users` users), then runs `clients` tasks, each drawing an operation from the workload, making
//! it and waiting for the answer, for `warmup` and then `duration`. An operation ends one of
//! three ways: committed; aborted (Tally answered `{"committed":false,...}`: a conflict it gave
//! up on, or insufficient funds; PostgreSQL failed serialization `SERIALIZATION_TRIES_MAX`
//! times, or the transaction's own check failed); or an error (a failed request, a timeout,
//! an unexpected answer). Latency covers every answered operation, committed or aborted.
//!
//! It does not start the systems it measures; it only talks to the URL it is given.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel, NoTls};

use crate::append::as_secs_f64;
use crate::progress::{Progress, Timeline};
use crate::report::Percentiles;

pub const STORE_CLIENTS_MAX: usize = 1024;
/// Accounts or users a run sets up, at most.
pub const ITEMS_MAX: u64 = 1_000_000;
/// Every account's balance after the setup phase; transfers move 1 to `TRANSFER_AMOUNT_MAX`.
pub const BALANCE_INITIAL: u64 = 1_000_000;
pub const TRANSFER_AMOUNT_MAX: u64 = 10;
/// Attempts of one PostgreSQL transaction that fails serialization (or deadlocks) before it
/// counts as aborted.
pub const SERIALIZATION_TRIES_MAX: u32 = 10;
/// Users each user follows after the setup phase, at most.
pub const FOLLOWS_MAX: u64 = 1000;
/// Requests in flight at once during the setup phase.
const SETUP_CONCURRENCY: usize = 32;
/// Attempts of one Tally request answered 503 (unavailable: try again) before it is an error.
const UNAVAILABLE_TRIES_MAX: u32 = 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const LATENCY_US_MAX: u64 = 120_000_000;
/// Posts a timeline read asks for (Tally's default).
const TIMELINE_LIMIT: i64 = 20;

/// Which keys a transfer picks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    /// YCSB's Zipfian generator over the keys, key 0 the most popular.
    Zipfian {
        theta: f64,
    },
}

/// How a transfer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMode {
    /// Tally: one record with its conditions, applied in log order. PostgreSQL: one
    /// transaction of two conditional UPDATEs (no read round trip).
    Oneshot,
    /// Tally: read both balances at a snapshot, commit with one record, retried by `bank` on
    /// a conflict. PostgreSQL: SELECT both balances, then UPDATE both, in one transaction.
    Interactive,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Workload {
    /// YCSB-T: transfers between `accounts` accounts.
    Ycsbt {
        accounts: u64,
        distribution: Distribution,
        mode: TransferMode,
    },
    /// Retwis over `users` users, in the mix of `RETWIS_MIX`, users drawn uniformly. The setup
    /// phase registers them, then has user `u` follow users `u + 1` to `u + follows` (modulo
    /// `users`), so every user starts with `follows` followers and as many followed.
    Retwis { users: u64, follows: u64 },
}

/// Retwis's operations and their shares in percent (BokiStore's read-heavy mix).
pub const RETWIS_MIX: [(&str, u32); 5] = [
    ("timeline", 50),
    ("profile", 15),
    ("login", 15),
    ("post", 15),
    ("follow", 5),
];

/// The system a run drives.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "system", rename_all = "lowercase")]
pub enum StoreTarget {
    /// A Tally gateway's base URL ("http://127.0.0.1:8080"); `bank` and `retwis` are called
    /// as `POST {url}/function/bank` and `/function/retwis`.
    Tally { url: String },
    /// A PostgreSQL connection string; the tables are made by the setup phase.
    Postgres { url: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreConfig {
    pub target: StoreTarget,
    pub workload: Workload,
    pub clients: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
    /// Seeds every client's choice of operations (client `i` uses `seed + i`).
    pub seed: u64,
    /// The system's processes (each with every process below it) whose CPU time over the
    /// measured window is reported; none: not measured.
    pub cpu_pids: Vec<u32>,
}

impl StoreConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=STORE_CLIENTS_MAX).contains(&self.clients),
            "clients must be 1..={STORE_CLIENTS_MAX}, not {}",
            self.clients
        );
        ensure!(!self.duration.is_zero(), "duration must be above 0");
        match &self.workload {
            Workload::Ycsbt {
                accounts,
                distribution,
                ..
            } => {
                ensure!(
                    (2..=ITEMS_MAX).contains(accounts),
                    "accounts must be 2..={ITEMS_MAX}, not {accounts}"
                );
                if let Distribution::Zipfian { theta } = distribution {
                    ensure!(
                        *theta > 0.0 && *theta < 1.0,
                        "the zipfian theta must be above 0 and below 1, not {theta}"
                    );
                }
            }
            Workload::Retwis { users, follows } => {
                ensure!(
                    (2..=ITEMS_MAX).contains(users),
                    "users must be 2..={ITEMS_MAX}, not {users}"
                );
                ensure!(
                    follows < users && *follows <= FOLLOWS_MAX,
                    "follows must be below users and at most {FOLLOWS_MAX}, not {follows}"
                );
            }
        }
        Ok(())
    }
}

/// What a run measured. Counts cover the measured window only (after warmup).
#[derive(Clone, Debug, Serialize)]
pub struct StoreReport {
    pub config: StoreConfig,
    /// How long the setup phase took.
    pub setup_s: f64,
    pub committed: u64,
    pub aborted: u64,
    pub errors: u64,
    /// PostgreSQL: serialization failures and deadlocks retried. Tally: 503s retried.
    pub retried: u64,
    pub elapsed_s: f64,
    /// Committed operations per second: the throughput compared.
    pub committed_per_s: f64,
    /// aborted / (committed + aborted); 0 when nothing was answered.
    pub abort_rate: f64,
    /// Of every answered operation, committed or aborted.
    pub latency_us: Percentiles,
    pub first_abort: Option<String>,
    pub first_error: Option<String>,
    pub started_unix_ms: u64,
    /// CPU seconds the system's processes (`cpu_pids`) used over the measured window.
    pub server_cpu_s: Option<f64>,
    /// Committed operations per CPU second of the system: throughput per core used.
    pub committed_per_cpu_s: Option<f64>,
}

impl StoreReport {
    pub fn human(&self) -> String {
        let c = &self.config;
        let l = &self.latency_us;
        let mut out = String::new();
        let (system, url) = match &c.target {
            StoreTarget::Tally { url } => ("tally", url),
            StoreTarget::Postgres { url } => ("postgres (serializable)", url),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "store benchmark");
        let _ = writeln!(out, "  system        {system} at {url}");
        let workload = match &c.workload {
            Workload::Ycsbt {
                accounts,
                distribution,
                mode,
            } => {
                let d = match distribution {
                    Distribution::Uniform => "uniform".to_string(),
                    Distribution::Zipfian { theta } => format!("zipfian {theta}"),
                };
                format!("ycsbt: transfers between {accounts} accounts, {d}, {mode:?}")
            }
            Workload::Retwis { users, follows } => {
                let mix: Vec<String> = RETWIS_MIX
                    .iter()
                    .map(|(op, share)| format!("{share}% {op}"))
                    .collect();
                format!(
                    "retwis: {users} users following {follows} each; {}",
                    mix.join(", ")
                )
            }
        };
        let _ = writeln!(out, "  workload      {workload}");
        let _ = writeln!(out, "  clients       {}", c.clients);
        let _ = writeln!(
            out,
            "  duration      {} s after {} s of warmup (setup took {:.1} s)",
            c.duration.as_secs_f64(),
            c.warmup.as_secs_f64(),
            self.setup_s
        );
        let _ = writeln!(out, "results");
        let _ = writeln!(
            out,
            "  operations    {} committed, {} aborted, {} errors in {:.2} s (retried {})",
            self.committed, self.aborted, self.errors, self.elapsed_s, self.retried
        );
        let _ = writeln!(
            out,
            "  throughput    {:.1} committed/s",
            self.committed_per_s
        );
        let _ = writeln!(out, "  abort_rate    {:.4}", self.abort_rate);
        let _ = writeln!(
            out,
            "  latency_us    p50 {}  p99 {}  p999 {}  max {}  mean {:.1}",
            l.p50, l.p99, l.p999, l.max, l.mean
        );
        if let (Some(cpu_s), Some(per)) = (self.server_cpu_s, self.committed_per_cpu_s) {
            let _ = writeln!(
                out,
                "  server_cpu    {cpu_s:.2} s over the window ({:.2} cores), {per:.1} committed per CPU second",
                cpu_s / self.elapsed_s.max(f64::EPSILON)
            );
        }
        if let Some(reason) = &self.first_abort {
            let _ = writeln!(out, "  first_abort   {reason}");
        }
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "  first_error   {error}");
        }
        out
    }

    pub fn print_human(&self) {
        print!("{}", self.human());
    }

    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("the report has only plain fields");
        if let Some(object) = value.as_object_mut() {
            object.insert("benchmark".into(), "store".into());
            object.insert("tool".into(), "tally-bench".into());
            object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        }
        value
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON values serialize");
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// Operations.

#[derive(Clone, Debug, PartialEq)]
enum Operation {
    Transfer { from: u64, to: u64, amount: u64 },
    Timeline { user: u64 },
    Profile { user: u64 },
    Login { user: u64 },
    Post { user: u64, text: String },
    Follow { user: u64, follows: u64 },
}

enum Outcome {
    Committed,
    Aborted(String),
}

/// YCSB's Zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"): item 0 is the most popular.
#[derive(Clone, Debug)]
pub(crate) struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    pub(crate) fn new(items: u64, theta: f64) -> Zipfian {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(items);
        let zeta_2 = zeta(2);
        Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
        }
    }

    pub(crate) fn next(&self, rng: &mut SmallRng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let item = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        item.min(self.items - 1)
    }
}

/// Draws a client's operations.
struct Generator {
    rng: SmallRng,
    workload: Workload,
    zipfian: Option<Arc<Zipfian>>,
    client: usize,
    posts: u64,
}

impl Generator {
    fn next(&mut self) -> Operation {
        match self.workload {
            Workload::Ycsbt { accounts, .. } => {
                let from = self.key(accounts);
                let mut to = self.key(accounts);
                while to == from {
                    to = self.key(accounts);
                }
                let amount = self.rng.random_range(1..=TRANSFER_AMOUNT_MAX);
                Operation::Transfer { from, to, amount }
            }
            Workload::Retwis { users, .. } => {
                let user = self.rng.random_range(0..users);
                let mut pick = self.rng.random_range(0..100u32);
                let mut op = RETWIS_MIX[0].0;
                for (name, share) in RETWIS_MIX {
                    if pick < share {
                        op = name;
                        break;
                    }
                    pick -= share;
                }
                match op {
                    "timeline" => Operation::Timeline { user },
                    "profile" => Operation::Profile { user },
                    "login" => Operation::Login { user },
                    "post" => {
                        self.posts += 1;
                        let text = format!("post {} of client {}", self.posts, self.client);
                        Operation::Post { user, text }
                    }
                    _ => {
                        let mut follows = self.rng.random_range(0..users);
                        while follows == user {
                            follows = self.rng.random_range(0..users);
                        }
                        Operation::Follow { user, follows }
                    }
                }
            }
        }
    }

    fn key(&mut self, items: u64) -> u64 {
        match &self.zipfian {
            Some(z) => z.next(&mut self.rng),
            None => self.rng.random_range(0..items),
        }
    }
}

/// An account's name on Tally: `accounts/a{n}`.
fn account_name(account: u64) -> String {
    format!("a{account}")
}

fn user_name(user: u64) -> String {
    format!("u{user}")
}

// ---------------------------------------------------------------------------------------------
// Systems.

enum Connection {
    Tally(TallyConnection),
    Postgres(Client),
}

struct TallyConnection {
    http: reqwest::Client,
    bank_url: String,
    retwis_url: String,
    accounts_url: String,
}

impl TallyConnection {
    fn new(base: &str) -> anyhow::Result<TallyConnection> {
        let http = crate::http::client_builder()?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("making an HTTP client")?;
        let base = base.trim_end_matches('/');
        Ok(TallyConnection {
            http,
            bank_url: format!("{base}/function/bank"),
            retwis_url: format!("{base}/function/retwis"),
            accounts_url: format!("{base}/objects/accounts"),
        })
    }

    /// POSTs `body` to `url`; the JSON answer, retrying 503s. Counts retries in `retried`.
    async fn call(&self, url: &str, body: Value, retried: &mut u64) -> Result<Value, String> {
        self.send(self.http.post(url), url, body, retried).await
    }

    /// Sends `request` to `url` with the JSON `body`; the JSON answer, retrying 503s.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        body: Value,
        retried: &mut u64,
    ) -> Result<Value, String> {
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        for _ in 0..UNAVAILABLE_TRIES_MAX {
            let request = request
                .try_clone()
                .expect("a request with a byte body can be cloned");
            let response = request
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| format!("{url}: {}", crate::root_cause(&e)))?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| format!("{url}: reading the answer: {e}"))?;
            if status.as_u16() == 503 {
                *retried += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                return Err(format!("{url}: {status}: {text}"));
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| format!("{url}: the answer is not JSON: {e}"));
        }
        Err(format!(
            "{url}: unavailable (503) {UNAVAILABLE_TRIES_MAX} times"
        ))
    }

    /// Committed unless the answer says `"committed": false`.
    fn outcome(answer: Value) -> Outcome {
        match answer.get("committed") {
            Some(Value::Bool(false)) => Outcome::Aborted(
                answer["reason"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            ),
            _ => Outcome::Committed,
        }
    }

    async fn run(
        &self,
        op: &Operation,
        mode: TransferMode,
        retried: &mut u64,
    ) -> Result<Outcome, String> {
        let (url, body) = match op {
            Operation::Transfer { from, to, amount } => (
                &self.bank_url,
                json!({
                    "action": "transfer", "from": account_name(*from), "to": account_name(*to),
                    "amount": amount, "mode": mode,
                }),
            ),
            Operation::Timeline { user } => (
                &self.retwis_url,
                json!({"action": "timeline", "user": user_name(*user), "limit": TIMELINE_LIMIT}),
            ),
            Operation::Profile { user } => (
                &self.retwis_url,
                json!({"action": "profile", "user": user_name(*user)}),
            ),
            Operation::Login { user } => (
                &self.retwis_url,
                json!({"action": "login", "user": user_name(*user), "password": "pw"}),
            ),
            Operation::Post { user, text } => (
                &self.retwis_url,
                json!({"action": "post", "user": user_name(*user), "text": text}),
            ),
            Operation::Follow { user, follows } => (
                &self.retwis_url,
                json!({
                    "action": "follow", "user": user_name(*user), "follows": user_name(*follows),
                }),
            ),
        };
        let answer = self.call(url, body, retried).await?;
        if let (Operation::Login { .. }, Some(false)) =
            (op, answer.get("ok").and_then(Value::as_bool))
        {
            return Err("login answered ok: false for a registered user".to_string());
        }
        Ok(TallyConnection::outcome(answer))
    }

    /// Sets up item `item`: account `item` is written as `accounts/a{item}`,
    /// `{"balance": BALANCE_INITIAL}`, with `PUT /objects` (the document bank's `open` makes,
    /// without its entry in `bank/index`, one document every open would queue on, which only
    /// `audit` reads); user `item` is registered with retwis's `register`.
    async fn setup_one(&self, workload: &Workload, step: SetupStep) -> Result<(), String> {
        let mut retried = 0;
        let item = match step {
            SetupStep::Create(item) => item,
            SetupStep::Follow { user, follows } => {
                let body = json!({
                    "action": "follow", "user": user_name(user), "follows": user_name(follows),
                });
                return match TallyConnection::outcome(
                    self.call(&self.retwis_url, body, &mut retried).await?,
                ) {
                    Outcome::Committed => Ok(()),
                    Outcome::Aborted(reason) => Err(format!("user {user} following: {reason}")),
                };
            }
        };
        let answer = match workload {
            Workload::Ycsbt { .. } => {
                let url = format!("{}/{}", self.accounts_url, account_name(item));
                self.send(
                    self.http.put(&url),
                    &url,
                    json!({ "balance": BALANCE_INITIAL }),
                    &mut retried,
                )
                .await?
            }
            Workload::Retwis { .. } => {
                let body = json!({
                    "action": "register", "user": user_name(item),
                    "name": format!("User {item}"), "password": "pw",
                });
                self.call(&self.retwis_url, body, &mut retried).await?
            }
        };
        match TallyConnection::outcome(answer) {
            Outcome::Committed => Ok(()),
            Outcome::Aborted(reason) => Err(format!("setting up item {item}: {reason}")),
        }
    }
}

async fn connect_postgres(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        // The client's requests fail once the connection has; they report it.
        let _ = connection.await;
    });
    // Single statements outside an explicit transaction run at SERIALIZABLE too.
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .context("setting the isolation level")?;
    Ok(client)
}

const POSTGRES_SCHEMA: &str = "
DROP TABLE IF EXISTS accounts, users, follows, posts, timelines;
CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE users (id text PRIMARY KEY, name text NOT NULL, password text NOT NULL,
                    posts bigint NOT NULL DEFAULT 0);
CREATE TABLE follows (follower text NOT NULL, followee text NOT NULL,
                      PRIMARY KEY (follower, followee));
CREATE INDEX follows_followee ON follows (followee, follower);
CREATE TABLE posts (id bigserial PRIMARY KEY, user_id text NOT NULL, text text NOT NULL,
                    at_ms bigint NOT NULL);
CREATE INDEX posts_user ON posts (user_id, id);
CREATE TABLE timelines (user_id text NOT NULL, post_id bigint NOT NULL,
                        PRIMARY KEY (user_id, post_id));
";

/// Why a PostgreSQL transaction ended without committing.
enum PgFailure {
    /// Serialization failure or deadlock: try again.
    Retry,
    /// The transaction's own check failed (insufficient funds, no such user).
    Abort(String),
    Error(String),
}

impl From<tokio_postgres::Error> for PgFailure {
    fn from(e: tokio_postgres::Error) -> PgFailure {
        match e.code() {
            Some(code)
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                PgFailure::Retry
            }
            _ => PgFailure::Error(match e.as_db_error() {
                Some(db) => format!("postgres: {}: {}", db.code().code(), db.message()),
                None => format!("postgres: {e}"),
            }),
        }
    }
}

async fn postgres_attempt(
    client: &mut Client,
    op: &Operation,
    mode: TransferMode,
) -> Result<(), PgFailure> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()
        .await?;
    match op {
        Operation::Transfer { from, to, amount } => {
            let (from, to, amount) = (*from as i64, *to as i64, *amount as i64);
            match mode {
                TransferMode::Oneshot => {
                    // Rows are locked in id order, so two transfers never wait on each other
                    // in a cycle (no deadlock to detect after deadlock_timeout).
                    let debit = "UPDATE accounts SET balance = balance - $2 \
                                 WHERE id = $1 AND balance >= $2";
                    let credit = "UPDATE accounts SET balance = balance + $2 WHERE id = $1";
                    let debited = if from < to {
                        let debited = tx.execute(debit, &[&from, &amount]).await?;
                        tx.execute(credit, &[&to, &amount]).await?;
                        debited
                    } else {
                        tx.execute(credit, &[&to, &amount]).await?;
                        tx.execute(debit, &[&from, &amount]).await?
                    };
                    if debited == 0 {
                        return Err(PgFailure::Abort("insufficient funds".into()));
                    }
                }
                TransferMode::Interactive => {
                    let rows = tx
                        .query(
                            "SELECT id, balance FROM accounts WHERE id = $1 OR id = $2",
                            &[&from, &to],
                        )
                        .await?;
                    let balance_of = |id: i64| {
                        rows.iter()
                            .find(|r| r.get::<_, i64>(0) == id)
                            .map(|r| r.get::<_, i64>(1))
                    };
                    let (Some(from_balance), Some(to_balance)) = (balance_of(from), balance_of(to))
                    else {
                        return Err(PgFailure::Abort("no such account".into()));
                    };
                    if from_balance < amount {
                        return Err(PgFailure::Abort("insufficient funds".into()));
                    }
                    let set = "UPDATE accounts SET balance = $2 WHERE id = $1";
                    let mut writes = [(from, from_balance - amount), (to, to_balance + amount)];
                    // In id order, as above.
                    writes.sort_unstable();
                    for (id, balance) in writes {
                        tx.execute(set, &[&id, &balance]).await?;
                    }
                }
            }
        }
        Operation::Timeline { user } => {
            tx.query(
                "SELECT p.user_id, p.text, p.at_ms FROM timelines t \
                 JOIN posts p ON p.id = t.post_id WHERE t.user_id = $1 \
                 ORDER BY t.post_id DESC LIMIT $2::bigint",
                &[&user_name(*user), &TIMELINE_LIMIT],
            )
            .await?;
        }
        Operation::Profile { user } => {
            let rows = tx
                .query(
                    "SELECT name, posts, \
                     (SELECT count(*) FROM follows WHERE followee = $1), \
                     (SELECT count(*) FROM follows WHERE follower = $1) \
                     FROM users WHERE id = $1",
                    &[&user_name(*user)],
                )
                .await?;
            if rows.is_empty() {
                return Err(PgFailure::Error(format!("no user {}", user_name(*user))));
            }
        }
        Operation::Login { user } => {
            let rows = tx
                .query(
                    "SELECT password = $2 FROM users WHERE id = $1",
                    &[&user_name(*user), &"pw"],
                )
                .await?;
            if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
                return Err(PgFailure::Error(
                    "login failed for a registered user".to_string(),
                ));
            }
        }
        Operation::Post { user, text } => {
            let user = user_name(*user);
            let counted = tx
                .execute("UPDATE users SET posts = posts + 1 WHERE id = $1", &[&user])
                .await?;
            if counted == 0 {
                return Err(PgFailure::Abort(format!("no user {user}")));
            }
            let at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let row = tx
                .query_one(
                    "INSERT INTO posts (user_id, text, at_ms) VALUES ($1, $2, $3) RETURNING id",
                    &[&user, text, &at_ms],
                )
                .await?;
            let post: i64 = row.get(0);
            // Fan-out on write, as Tally's retwis: the author's timeline and every follower's.
            tx.execute(
                "INSERT INTO timelines (user_id, post_id) \
                 SELECT follower, $2::bigint FROM follows WHERE followee = $1::text \
                 UNION ALL SELECT $1::text, $2::bigint",
                &[&user, &post],
            )
            .await?;
        }
        Operation::Follow { user, follows } => {
            let (user, follows) = (user_name(*user), user_name(*follows));
            let exist = tx
                .query_one(
                    "SELECT count(*) FROM users WHERE id = $1 OR id = $2",
                    &[&user, &follows],
                )
                .await?;
            if exist.get::<_, i64>(0) != 2 {
                return Err(PgFailure::Abort(format!("no user {user} or {follows}")));
            }
            tx.execute(
                "INSERT INTO follows (follower, followee) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&user, &follows],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn postgres_run(
    client: &mut Client,
    op: &Operation,
    mode: TransferMode,
    retried: &mut u64,
) -> Result<Outcome, String> {
    for _ in 0..SERIALIZATION_TRIES_MAX {
        // A transaction that fails is rolled back when it is dropped.
        match postgres_attempt(client, op, mode).await {
            Ok(()) => return Ok(Outcome::Committed),
            Err(PgFailure::Retry) => *retried += 1,
            Err(PgFailure::Abort(reason)) => return Ok(Outcome::Aborted(reason)),
            Err(PgFailure::Error(e)) => return Err(e),
        }
    }
    Ok(Outcome::Aborted(format!(
        "serialization failures in {SERIALIZATION_TRIES_MAX} tries"
    )))
}

async fn postgres_setup(url: &str, workload: &Workload) -> anyhow::Result<()> {
    let client = connect_postgres(url).await?;
    client
        .batch_execute(POSTGRES_SCHEMA)
        .await
        .context("making the tables")?;
    match workload {
        Workload::Ycsbt { accounts, .. } => {
            client
                .execute(
                    "INSERT INTO accounts SELECT g, $2::bigint FROM generate_series(0, $1::bigint - 1) g",
                    &[&(*accounts as i64), &(BALANCE_INITIAL as i64)],
                )
                .await
                .context("opening the accounts")?;
        }
        Workload::Retwis { users, follows } => {
            client
                .execute(
                    "INSERT INTO users (id, name, password) \
                     SELECT 'u' || g, 'User ' || g, 'pw' FROM generate_series(0, $1::bigint - 1) g",
                    &[&(*users as i64)],
                )
                .await
                .context("registering the users")?;
            // The same graph as on Tally: user g follows g + 1 to g + follows.
            client
                .execute(
                    "INSERT INTO follows (follower, followee) \
                     SELECT 'u' || g, 'u' || ((g + k) % $1::bigint) \
                     FROM generate_series(0, $1::bigint - 1) g, generate_series(1, $2::bigint) k",
                    &[&(*users as i64), &(*follows as i64)],
                )
                .await
                .context("making the follow graph")?;
        }
    }
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .context("VACUUM ANALYZE")?;
    Ok(())
}

/// One request of the setup phase on Tally.
#[derive(Clone, Copy, Debug)]
enum SetupStep {
    /// Make account or user number n.
    Create(u64),
    Follow {
        user: u64,
        follows: u64,
    },
}

async fn tally_setup(url: &str, workload: &Workload) -> anyhow::Result<()> {
    let connection = Arc::new(TallyConnection::new(url)?);
    match workload {
        Workload::Ycsbt { accounts, .. } => {
            tally_setup_steps(&connection, workload, *accounts, SetupStep::Create).await
        }
        Workload::Retwis { users, follows } => {
            let (users, follows) = (*users, *follows);
            // Every user exists before anyone follows them.
            tally_setup_steps(&connection, workload, users, SetupStep::Create).await?;
            if follows == 0 {
                return Ok(());
            }
            tally_setup_steps(&connection, workload, users * follows, move |i| {
                let user = i / follows;
                SetupStep::Follow {
                    user,
                    follows: (user + 1 + i % follows) % users,
                }
            })
            .await
        }
    }
}

/// Makes `steps` setup requests, step `i` being `step(i)`, `SETUP_CONCURRENCY` at a time.
async fn tally_setup_steps(
    connection: &Arc<TallyConnection>,
    workload: &Workload,
    steps: u64,
    step: impl Fn(u64) -> SetupStep + Copy + Send + 'static,
) -> anyhow::Result<()> {
    let items = steps;
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..SETUP_CONCURRENCY)
        .map(|_| {
            let (connection, next, workload) =
                (Arc::clone(connection), Arc::clone(&next), workload.clone());
            tokio::spawn(async move {
                loop {
                    let item = next.fetch_add(1, Ordering::Relaxed);
                    if item >= items {
                        return Ok(());
                    }
                    connection.setup_one(&workload, step(item)).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .context("a setup task panicked")?
            .map_err(|e: String| anyhow::anyhow!("setup on Tally failed: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The closed loop.

#[derive(Default)]
struct Shared {
    answered: AtomicU64,
    errors: AtomicU64,
    first_abort: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
}

/// Keeps `message` in `slot` if it holds none yet: the first failure or error of a run.
pub(crate) fn note_first(slot: &Mutex<Option<String>>, message: &str) {
    // A poisoned lock only means another client panicked; the join reports that.
    if let Ok(mut first) = slot.lock() {
        first.get_or_insert_with(|| message.to_string());
    }
}

struct Counts {
    latency_us: Histogram<u64>,
    committed: u64,
    aborted: u64,
    errors: u64,
    retried: u64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            committed: 0,
            aborted: 0,
            errors: 0,
            retried: 0,
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        self.committed += other.committed;
        self.aborted += other.aborted;
        self.errors += other.errors;
        self.retried += other.retried;
    }
}

/// Sets up the data, then runs the load, showing progress on stderr when `progress` is true.
pub async fn run_store(config: StoreConfig, progress: bool) -> anyhow::Result<StoreReport> {
    config.validate()?;
    let setup_began = Instant::now();
    if progress {
        eprintln!("store: setting up {:?}", config.workload);
    }
    match &config.target {
        StoreTarget::Tally { url } => tally_setup(url, &config.workload).await?,
        StoreTarget::Postgres { url } => postgres_setup(url, &config.workload).await?,
    }
    let setup_s = setup_began.elapsed().as_secs_f64();

    let mut connections = Vec::with_capacity(config.clients);
    for _ in 0..config.clients {
        connections.push(match &config.target {
            StoreTarget::Tally { url } => Connection::Tally(TallyConnection::new(url)?),
            StoreTarget::Postgres { url } => Connection::Postgres(connect_postgres(url).await?),
        });
    }
    let (mode, zipfian) = match &config.workload {
        Workload::Ycsbt {
            accounts,
            distribution,
            mode,
        } => (
            *mode,
            match distribution {
                Distribution::Zipfian { theta } => Some(Arc::new(Zipfian::new(*accounts, *theta))),
                Distribution::Uniform => None,
            },
        ),
        Workload::Retwis { .. } => (TransferMode::Oneshot, None),
    };

    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    let started_unix_ms = (SystemTime::now() + config.warmup)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // The system's CPU time at the start and the end of the measured window.
    let cpu = crate::cpu::window(&config.cpu_pids, measure_start, end);
    let display = Progress::start(
        progress.then_some("store"),
        "operation",
        Timeline {
            start,
            measure_start,
            end,
        },
        {
            let shared = Arc::clone(&shared);
            move || {
                (
                    shared.answered.load(Ordering::Relaxed),
                    shared.errors.load(Ordering::Relaxed),
                )
            }
        },
    );
    let workers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(client, mut connection)| {
            let mut generator = Generator {
                rng: SmallRng::seed_from_u64(config.seed.wrapping_add(client as u64)),
                workload: config.workload.clone(),
                zipfian: zipfian.clone(),
                client,
                posts: 0,
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut counts = Counts::new();
                while Instant::now() < end {
                    let op = generator.next();
                    let began = Instant::now();
                    let measured = began >= measure_start;
                    let mut retried = 0;
                    let attempt = async {
                        match &mut connection {
                            Connection::Tally(c) => c.run(&op, mode, &mut retried).await,
                            Connection::Postgres(c) => {
                                postgres_run(c, &op, mode, &mut retried).await
                            }
                        }
                    };
                    // An operation still in flight at the end is abandoned, not counted.
                    let Ok(outcome) = tokio::time::timeout_at(end, attempt).await else {
                        break;
                    };
                    let latency_us = began.elapsed().as_micros() as u64;
                    match outcome {
                        Ok(outcome) => {
                            shared.answered.fetch_add(1, Ordering::Relaxed);
                            if let Outcome::Aborted(reason) = &outcome {
                                note_first(&shared.first_abort, reason);
                            }
                            if measured {
                                counts.latency_us.saturating_record(latency_us.max(1));
                                match outcome {
                                    Outcome::Committed => counts.committed += 1,
                                    Outcome::Aborted(_) => counts.aborted += 1,
                                }
                            }
                        }
                        Err(e) => {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            note_first(&shared.first_error, &e);
                            if measured {
                                counts.errors += 1;
                            }
                        }
                    }
                    if measured {
                        counts.retried += retried;
                    }
                }
                counts
            })
        })
        .collect();
    let mut total = Counts::new();
    let mut panic = None;
    for worker in workers {
        match worker.await {
            Ok(counts) => total.merge(&counts),
            Err(e) => panic = Some(e),
        }
    }
    let finished = Instant::now();
    display.finish().await;
    if let Some(e) = panic {
        bail!("a benchmark client panicked: {e}");
    }
    let first = |slot: &Mutex<Option<String>>| slot.lock().ok().and_then(|f| f.clone());
    let first_error = first(&shared.first_error);
    if shared.answered.load(Ordering::Relaxed) == 0 {
        bail!(
            "no operation was answered: {}",
            first_error.as_deref().unwrap_or("no answer before the end")
        );
    }
    let elapsed_s = finished
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    let answered = total.committed + total.aborted;
    let server_cpu_s = match cpu {
        Some(task) => Some(task.await?),
        None => None,
    };
    Ok(StoreReport {
        setup_s,
        committed: total.committed,
        aborted: total.aborted,
        errors: total.errors,
        retried: total.retried,
        elapsed_s,
        committed_per_s: if elapsed_s > 0.0 {
            total.committed as f64 / elapsed_s
        } else {
            0.0
        },
        abort_rate: if answered > 0 {
            total.aborted as f64 / answered as f64
        } else {
            0.0
        },
        latency_us: Percentiles::from_histogram(&total.latency_us),
        first_abort: first(&shared.first_abort),
        first_error,
        started_unix_ms,
        server_cpu_s,
        committed_per_cpu_s: server_cpu_s
            .filter(|s| *s > 0.0)
            .map(|s| total.committed as f64 / s),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_favors_the_first_keys_and_stays_in_range() {
        let z = Zipfian::new(100, 0.99);
        let mut rng = SmallRng::seed_from_u64(7);
        let draws: Vec<u64> = (0..100_000).map(|_| z.next(&mut rng)).collect();
        assert!(draws.iter().all(|&k| k < 100));
        let zeros = draws.iter().filter(|&&k| k == 0).count();
        // Item 0's share is 1 / zeta(100, 0.99), about 0.19.
        assert!((15_000..23_000).contains(&zeros), "{zeros}");
    }

    #[test]
    fn retwis_mix_adds_up_to_one_hundred_percent() {
        assert_eq!(RETWIS_MIX.iter().map(|(_, s)| s).sum::<u32>(), 100);
        let mut generator = Generator {
            rng: SmallRng::seed_from_u64(1),
            workload: Workload::Retwis {
                users: 10,
                follows: 0,
            },
            zipfian: None,
            client: 0,
            posts: 0,
        };
        let timelines = (0..10_000)
            .filter(|_| matches!(generator.next(), Operation::Timeline { .. }))
            .count();
        assert!((4_700..5_300).contains(&timelines), "{timelines}");
    }

    #[test]
    fn transfers_move_between_two_different_accounts() {
        let mut generator = Generator {
            rng: SmallRng::seed_from_u64(1),
            workload: Workload::Ycsbt {
                accounts: 2,
                distribution: Distribution::Uniform,
                mode: TransferMode::Oneshot,
            },
            zipfian: None,
            client: 0,
            posts: 0,
        };
        for _ in 0..100 {
            let Operation::Transfer { from, to, amount } = generator.next() else {
                panic!("ycsbt makes transfers");
            };
            assert_ne!(from, to);
            assert!((1..=TRANSFER_AMOUNT_MAX).contains(&amount));
        }
    }
}
