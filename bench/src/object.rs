//! The objects benchmark: closed-loop clients calling methods of the example classes that
//! `tally up` serves (`gateway/src/examples/objects.toml`), or of a Restate virtual object
//! doing the same (`bench/restate-service`). Two workloads:
//!
//! - `counter`: each call adds 1 to counter `c{k}`, k drawn over `keys` keys: `POST
//!   /objects/counter/c{k}/add` on a Tally gateway, `POST /Counter/c{k}/add` on Restate's
//!   ingress, `{"by": 1}` in, `{"value": V}` out. Both run one call at a time per object, so
//!   one key measures a hot object, many keys how objects run side by side.
//! - `transfer` (Tally only): each call is a transaction moving 1 from one `account` to
//!   another (two distinct accounts drawn over `accounts`), `POST /transactions/{id}`,
//!   serializable or a saga, under an id no other transfer has (`transfer_id`). The setup
//!   phase first opens every account with a deposit of `ACCOUNT_DEPOSIT`.
//!
//! Each client draws its keys from a generator of its own, seeded by the run's seed and its
//! number. An operation ends one of four ways: success; failure (a transaction's 422
//! `failure`); retryable (a transaction's 503 `retryable`: it could not be decided); or an
//! error (a failed request, a timeout, any other answer). A 503 without an outcome (the
//! gateway's `unavailable`, or a proxy's) is sent again, the same transaction id with it,
//! and counted in `retried`; a counter's `add` sent again may count twice, which the
//! benchmark never reads. Latency covers every operation that ended in success, failure or
//! retryable.
//!
//! It does not start the systems it measures; it only talks to the URL it is given.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
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

use crate::append::{as_secs_f64, describe_request_error, snippet, DURATION_MAX};
use crate::progress::{Progress, Timeline};
use crate::queue::DEFAULT_TALLY_ADDR;
use crate::report::{rfc3339_utc, Percentiles, RunConfig};
use crate::store::{Distribution, Zipfian};

pub const OBJECT_CLIENTS_MAX: usize = 1024;
/// Counters or accounts a run draws from, at most.
pub const OBJECT_KEYS_MAX: u64 = 1_000_000;
/// What the setup phase deposits into every account: transfers of 1 never run one dry.
pub const ACCOUNT_DEPOSIT: i64 = 1_000_000_000;
/// What a counter's `add` adds, and a transfer moves.
pub const STEP: i64 = 1;
/// Deposits in flight at once during the setup phase.
const SETUP_CONCURRENCY: usize = 32;
/// How often the setup phase says how far it got.
const SETUP_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts of one request answered 503 without an outcome before it is an error.
const UNAVAILABLE_TRIES_MAX: u32 = 20;
const UNAVAILABLE_BACKOFF: Duration = Duration::from_millis(5);
/// Above the minute a gateway waits for a saga to end before it answers `running`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const LATENCY_US_MAX: u64 = 120_000_000;

/// How a transfer runs on Tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TxnStyle {
    /// One transaction record in both accounts' queues, both votes, one decision.
    Serializable,
    /// A workflow: the withdrawal, then the deposit, each with its compensation.
    Saga,
    /// An open transaction: one call of `pay` on the payer, whose call of the payee's
    /// `deposit` joins it (two-phase commit with locks; cycles lose a victim, `retryable`).
    Open,
}

impl TxnStyle {
    /// Its name in a request's `style` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TxnStyle::Serializable => "serializable",
            TxnStyle::Saga => "saga",
            TxnStyle::Open => "open",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum ObjectWorkload {
    /// `add` `{"by": 1}` on counter `c{k}`, k drawn over `keys`.
    Counter {
        keys: u64,
        distribution: Distribution,
    },
    /// A transfer of 1 from account `a{i}` to `a{j}`, i and j distinct, drawn over `accounts`.
    Transfer {
        accounts: u64,
        distribution: Distribution,
        style: TxnStyle,
    },
}

impl ObjectWorkload {
    /// What one operation is, in the report: "call" or "transaction".
    fn operation(&self) -> &'static str {
        match self {
            ObjectWorkload::Counter { .. } => "call",
            ObjectWorkload::Transfer { .. } => "transaction",
        }
    }
}

/// The system a run drives.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "system", rename_all = "lowercase")]
pub enum ObjectTarget {
    /// A Tally gateway's base URL ("http://127.0.0.1:8080").
    Tally { url: String },
    /// Restate's ingress base URL ("http://127.0.0.1:8080"), serving the virtual object
    /// `Counter` of `bench/restate-service`.
    Restate { url: String },
}

impl ObjectTarget {
    fn url(&self) -> &str {
        match self {
            ObjectTarget::Tally { url } | ObjectTarget::Restate { url } => url,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObjectConfig {
    pub target: ObjectTarget,
    pub workload: ObjectWorkload,
    /// Concurrent closed-loop clients, each with one operation in flight.
    pub clients: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    /// Time spent running before measuring starts; operations during it are not counted.
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
    /// Seeds every client's choice of keys (client `i` uses `seed + i`).
    pub seed: u64,
    /// The system's processes (each with every process below it) whose CPU time over the
    /// measured window is reported; none: not measured.
    pub cpu_pids: Vec<u32>,
}

impl ObjectConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=OBJECT_CLIENTS_MAX).contains(&self.clients),
            "clients must be 1..={OBJECT_CLIENTS_MAX}, not {}",
            self.clients
        );
        ensure!(
            !self.duration.is_zero() && self.duration <= DURATION_MAX,
            "duration must be above 0 and at most {} s",
            DURATION_MAX.as_secs()
        );
        ensure!(
            self.warmup <= DURATION_MAX,
            "warmup must be at most {} s",
            DURATION_MAX.as_secs()
        );
        let distribution = match &self.workload {
            ObjectWorkload::Counter { keys, distribution } => {
                ensure!(
                    (1..=OBJECT_KEYS_MAX).contains(keys),
                    "keys must be 1..={OBJECT_KEYS_MAX}, not {keys}"
                );
                distribution
            }
            ObjectWorkload::Transfer {
                accounts,
                distribution,
                ..
            } => {
                ensure!(
                    (2..=OBJECT_KEYS_MAX).contains(accounts),
                    "accounts must be 2..={OBJECT_KEYS_MAX} (a transfer is between two), not \
                     {accounts}"
                );
                ensure!(
                    matches!(self.target, ObjectTarget::Tally { .. }),
                    "transfers run on Tally only; Restate runs the counter workload"
                );
                distribution
            }
        };
        if let Distribution::Zipfian { theta } = distribution {
            ensure!(
                *theta > 0.0 && *theta < 1.0,
                "the zipfian theta must be above 0 and below 1, not {theta}"
            );
        }
        crate::base_url(self.target.url())?;
        Ok(())
    }
}

impl RunConfig for ObjectConfig {
    const TITLE: &'static str = "object benchmark";
    const BENCHMARK: &'static str = "object";
    const TOOL: &'static str = "tally-bench";

    fn describe(&self) -> Vec<(&'static str, String)> {
        let distribution = |d: &Distribution| match d {
            Distribution::Uniform => "uniform".to_string(),
            Distribution::Zipfian { theta } => format!("zipfian {theta}"),
        };
        let (system, request) = match (&self.target, &self.workload) {
            (ObjectTarget::Tally { url }, ObjectWorkload::Counter { .. }) => (
                format!("tally at {url}"),
                format!(r#"POST /objects/counter/c{{k}}/add {{"by":{STEP}}}"#),
            ),
            (ObjectTarget::Restate { url }, _) => (
                format!("restate at {url}"),
                format!(r#"POST /Counter/c{{k}}/add {{"by":{STEP}}}"#),
            ),
            (ObjectTarget::Tally { url }, ObjectWorkload::Transfer { style, .. }) => (
                format!("tally at {url}"),
                format!(
                    "POST /transactions/{{id}}, {}: withdraw {STEP}, deposit {STEP}",
                    style.name()
                ),
            ),
        };
        let workload = match &self.workload {
            ObjectWorkload::Counter {
                keys,
                distribution: d,
            } => {
                format!("counter: {keys} keys, {}", distribution(d))
            }
            ObjectWorkload::Transfer {
                accounts,
                distribution: d,
                style,
            } => format!(
                "transfer: {accounts} accounts, {}, {}, each opened with {ACCOUNT_DEPOSIT}",
                distribution(d),
                style.name()
            ),
        };
        vec![
            ("system", system),
            ("workload", workload),
            ("request", request),
            ("clients", self.clients.to_string()),
            ("seed", self.seed.to_string()),
            (
                "duration_s",
                format!(
                    "{:.1} (warmup {:.1})",
                    self.duration.as_secs_f64(),
                    self.warmup.as_secs_f64()
                ),
            ),
        ]
    }
}

/// The flags of `tally bench object`.
#[derive(Clone, Debug, clap::Args)]
pub struct ObjectArgs {
    /// counter (`add` on counters) or transfer (transactions between accounts, Tally only).
    #[arg(long, value_parser = ["counter", "transfer"])]
    pub workload: String,
    /// Tally gateway address or base URL.
    #[arg(long, default_value = DEFAULT_TALLY_ADDR, conflicts_with = "restate")]
    pub addr: String,
    /// Drive Restate's ingress at this base URL instead (http://host:port): the virtual object
    /// `Counter` of bench/restate-service, `POST /Counter/c{k}/add`. Counter workload only.
    #[arg(long)]
    pub restate: Option<String>,
    /// counter: how many counters (c0, c1, ...); 1 is one hot object [default: 10000].
    #[arg(long)]
    pub keys: Option<u64>,
    /// transfer: how many accounts (a0, a1, ...), opened before the run [default: 10000].
    #[arg(long)]
    pub accounts: Option<u64>,
    /// How keys are drawn: uniform, or zipfian (key 0 the most popular).
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "zipfian"])]
    pub distribution: String,
    /// The zipfian constant, above 0 and below 1.
    #[arg(long, default_value_t = 0.99)]
    pub theta: f64,
    /// transfer: serializable or saga [default: serializable].
    #[arg(long, value_enum)]
    pub style: Option<TxnStyle>,
    /// Concurrent clients, each with one operation in flight.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// How long to run before measuring, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Seeds the clients' choice of keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Report the CPU time this process (and every process below it) used over the measured
    /// window, and successful operations per CPU second; may be repeated (the server's
    /// processes, e.g. `tally up`'s).
    #[arg(long = "cpu-pid")]
    pub cpu_pids: Vec<u32>,
    /// Write the figures and the configuration as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Keys each workload draws from when its flag is not given.
const DEFAULT_KEYS: u64 = 10_000;

impl ObjectArgs {
    /// The run these flags describe.
    pub fn config(&self) -> anyhow::Result<ObjectConfig> {
        let distribution = match self.distribution.as_str() {
            "zipfian" => Distribution::Zipfian { theta: self.theta },
            _ => Distribution::Uniform,
        };
        let workload = match self.workload.as_str() {
            "transfer" => {
                ensure!(
                    self.keys.is_none(),
                    "--keys is for the counter workload; transfers take --accounts"
                );
                ObjectWorkload::Transfer {
                    accounts: self.accounts.unwrap_or(DEFAULT_KEYS),
                    distribution,
                    style: self.style.unwrap_or(TxnStyle::Serializable),
                }
            }
            _ => {
                ensure!(
                    self.accounts.is_none() && self.style.is_none(),
                    "--accounts and --style are for the transfer workload"
                );
                ObjectWorkload::Counter {
                    keys: self.keys.unwrap_or(DEFAULT_KEYS),
                    distribution,
                }
            }
        };
        let target = match &self.restate {
            Some(url) => ObjectTarget::Restate {
                url: crate::base_url(url)?,
            },
            None => ObjectTarget::Tally {
                url: crate::base_url(&self.addr)?,
            },
        };
        let config = ObjectConfig {
            target,
            workload,
            clients: self.clients,
            duration: Duration::from_secs(self.duration),
            warmup: Duration::from_secs(self.warmup),
            seed: self.seed,
            cpu_pids: self.cpu_pids.clone(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Runs the benchmark, prints its report and writes the JSON file if asked to.
    pub async fn run(&self) -> anyhow::Result<()> {
        let report = run_objects(self.config()?, true).await?;
        report.print_human();
        if let Some(path) = &self.json {
            report.write_json(path)?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

/// What a run measured. Counts cover the measured window only (after warmup).
#[derive(Clone, Debug, Serialize)]
pub struct ObjectReport {
    pub config: ObjectConfig,
    /// How long the setup phase took (opening the accounts; nothing for counters).
    pub setup_s: f64,
    /// Calls answered with their output; transactions answered `success`.
    pub succeeded: u64,
    /// Transactions answered `failure` (422).
    pub failed: u64,
    /// Transactions answered `retryable` (503 with that outcome).
    pub retryable: u64,
    /// Operations that ended otherwise: a failed request, a timeout, another answer.
    pub errors: u64,
    /// Requests answered 503 without an outcome and sent again.
    pub retried: u64,
    pub elapsed_s: f64,
    /// Successful operations per second: the throughput compared.
    pub succeeded_per_s: f64,
    /// Of every operation that ended in success, failure or retryable.
    pub latency_us: Percentiles,
    /// The first failure or retryable outcome seen (warmup included).
    pub first_failure: Option<String>,
    /// The first error seen (warmup included).
    pub first_error: Option<String>,
    /// When the measured window began, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// CPU seconds the system's processes (`cpu_pids`) used over the measured window.
    pub server_cpu_s: Option<f64>,
    /// Successful operations per CPU second of the system: throughput per core used.
    pub succeeded_per_cpu_s: Option<f64>,
}

impl ObjectReport {
    /// The report as lines of text, configuration first.
    pub fn human(&self) -> String {
        let l = &self.latency_us;
        let operation = self.config.workload.operation();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{} ({})",
            ObjectConfig::TITLE,
            rfc3339_utc(self.started_unix_ms)
        );
        for (name, value) in self.config.describe() {
            let _ = writeln!(out, "  {name:<14}{value}");
        }
        if let ObjectWorkload::Transfer { accounts, .. } = &self.config.workload {
            let _ = writeln!(
                out,
                "  setup_s       {:.2} (opening {accounts} accounts)",
                self.setup_s
            );
        }
        let _ = writeln!(out, "results");
        let _ = writeln!(
            out,
            "  {:<14}{} succeeded, {} failed, {} retryable, {} errors in {:.2} s (retried {})",
            format!("{operation}s"),
            self.succeeded,
            self.failed,
            self.retryable,
            self.errors,
            self.elapsed_s,
            self.retried
        );
        let _ = writeln!(
            out,
            "  throughput    {:.1} {operation}s/s",
            self.succeeded_per_s
        );
        let _ = writeln!(
            out,
            "  latency_us    p50 {}  p99 {}  p999 {}  max {}  mean {:.1}",
            l.p50, l.p99, l.p999, l.max, l.mean
        );
        if let (Some(cpu_s), Some(per)) = (self.server_cpu_s, self.succeeded_per_cpu_s) {
            let _ = writeln!(
                out,
                "  server_cpu    {cpu_s:.2} s over the window ({:.2} cores), {per:.1} {operation}s \
                 per CPU second",
                cpu_s / self.elapsed_s.max(f64::EPSILON)
            );
        }
        if let Some(failure) = &self.first_failure {
            let _ = writeln!(out, "  first_failure {failure}");
        }
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "  first_error   {error}");
        }
        out
    }

    /// Prints `human()` to stdout.
    pub fn print_human(&self) {
        print!("{}", self.human());
    }

    /// Figures, full configuration, a timestamp and the tool's version, as one JSON object.
    pub fn to_json(&self) -> Value {
        crate::report::with_provenance::<ObjectConfig>(self, self.started_unix_ms)
    }

    /// Writes `to_json()`, pretty-printed, to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        crate::report::write_json(&self.to_json(), path)
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, requests and answers.

/// Draws keys 0..items, uniformly or by YCSB's Zipfian generator (shared by every client).
#[derive(Clone)]
struct Keys {
    items: u64,
    zipfian: Option<Arc<Zipfian>>,
}

impl Keys {
    fn new(items: u64, distribution: Distribution) -> Keys {
        let zipfian = match distribution {
            Distribution::Zipfian { theta } => Some(Arc::new(Zipfian::new(items, theta))),
            Distribution::Uniform => None,
        };
        Keys { items, zipfian }
    }

    fn pick(&self, rng: &mut SmallRng) -> u64 {
        match &self.zipfian {
            Some(z) => z.next(rng),
            None => rng.random_range(0..self.items),
        }
    }

    /// Two distinct keys; `items` is at least 2 (`ObjectConfig::validate`).
    fn pick_pair(&self, rng: &mut SmallRng) -> (u64, u64) {
        debug_assert!(self.items >= 2, "a pair needs two keys");
        let from = self.pick(rng);
        // Ends: each draw is a key other than `from` with a probability of at least that of
        // the least popular key.
        loop {
            let to = self.pick(rng);
            if to != from {
                return (from, to);
            }
        }
    }
}

/// The id of transfer `counter` of `client` in run `run`: "b{run}-{client}-{counter}",
/// unique to the transfer, so the gateway never answers one with another's outcome.
fn transfer_id(run: &str, client: usize, counter: u64) -> String {
    format!("b{run}-{client}-{counter}")
}

/// The body of `POST /transactions/{id}` moving `STEP` from account `a{from}` to `a{to}`: a
/// withdrawal, then a deposit; in a saga each with the call that undoes it.
fn transfer_body(from: u64, to: u64, style: TxnStyle) -> Value {
    if style == TxnStyle::Open {
        return json!({ "call": {
            "class": "account", "key": account_key(from), "method": "pay",
            "input": { "to": account_key(to), "amount": STEP },
        }});
    }
    let call = |key: u64, method: &str, undo: &str| {
        let mut call = json!({
            "class": "account", "key": account_key(key), "method": method,
            "input": { "amount": STEP },
        });
        if style == TxnStyle::Saga {
            call["compensate"] = json!({ "method": undo, "input": { "amount": STEP } });
        }
        call
    };
    json!({
        "style": style,
        "calls": [call(from, "withdraw", "deposit"), call(to, "deposit", "withdraw")],
    })
}

fn account_key(account: u64) -> String {
    format!("a{account}")
}

/// Where counter `c{key}`'s `add` is called.
fn counter_url(target: &ObjectTarget, key: u64) -> String {
    match target {
        ObjectTarget::Tally { url } => format!("{url}/objects/counter/c{key}/add"),
        ObjectTarget::Restate { url } => format!("{url}/Counter/c{key}/add"),
    }
}

/// How one operation ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Success,
    Failure(String),
    Retryable(String),
}

/// What one answer means.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Ended(Outcome),
    /// Nothing was decided; send the same request again.
    Again(String),
    Error(String),
}

/// Reads a counter's answer: 2xx with `{"value": N}`.
fn counter_answer(status: u16, body: &[u8]) -> Answer {
    if status == 503 {
        return Answer::Again(format!("503: {}", snippet(body)));
    }
    let value = serde_json::from_slice::<Value>(body).ok();
    match value.as_ref().and_then(|v| v.get("value")) {
        Some(v) if (200..300).contains(&status) && v.is_number() => Answer::Ended(Outcome::Success),
        _ => Answer::Error(format!("{status}: {}", snippet(body))),
    }
}

/// Reads a transaction's answer: its status and `outcome` must agree.
fn transfer_answer(status: u16, body: &[u8]) -> Answer {
    let answer = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let outcome = answer.get("outcome").and_then(Value::as_str);
    let error = || {
        let e = &answer["error"];
        match e.get("message").and_then(Value::as_str) {
            Some(message) => message.to_string(),
            None => snippet(body),
        }
    };
    match (status, outcome) {
        (200, Some("success")) => Answer::Ended(Outcome::Success),
        (422, Some("failure")) => Answer::Ended(Outcome::Failure(error())),
        (503, Some("retryable")) => Answer::Ended(Outcome::Retryable(error())),
        (503, None) => Answer::Again(format!("503: {}", snippet(body))),
        (202, Some("running")) => {
            Answer::Error("the saga was still running after the gateway's minute".to_string())
        }
        _ => Answer::Error(format!("{status}: {}", snippet(body))),
    }
}

/// One client: its connection pool, its keys and what it sends.
struct Client {
    http: reqwest::Client,
    target: ObjectTarget,
    workload: ObjectWorkload,
    keys: Keys,
    rng: SmallRng,
    run: String,
    client: usize,
    /// Operations this client started.
    counter: u64,
}

impl Client {
    /// Draws and makes the next operation; counts the 503s it sent again in `retried`.
    async fn next(&mut self, retried: &mut u64) -> Result<Outcome, String> {
        let counter = self.counter;
        self.counter += 1;
        let (url, body) = match &self.workload {
            ObjectWorkload::Counter { .. } => {
                let key = self.keys.pick(&mut self.rng);
                (counter_url(&self.target, key), json!({ "by": STEP }))
            }
            ObjectWorkload::Transfer { style, .. } => {
                let (from, to) = self.keys.pick_pair(&mut self.rng);
                let id = transfer_id(&self.run, self.client, counter);
                let url = format!("{}/transactions/{id}", self.target.url());
                (url, transfer_body(from, to, *style))
            }
        };
        let read = match self.workload {
            ObjectWorkload::Counter { .. } => counter_answer,
            ObjectWorkload::Transfer { .. } => transfer_answer,
        };
        post(&self.http, &url, &body, read, retried).await
    }
}

/// POSTs `body` to `url` until `read` makes something of the answer other than `Again`, at
/// most `UNAVAILABLE_TRIES_MAX` times.
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    read: fn(u16, &[u8]) -> Answer,
    retried: &mut u64,
) -> Result<Outcome, String> {
    let body = serde_json::to_vec(body).expect("JSON values serialize");
    let mut last = String::new();
    for attempt in 0..UNAVAILABLE_TRIES_MAX {
        if attempt > 0 {
            *retried += 1;
            tokio::time::sleep(UNAVAILABLE_BACKOFF).await;
        }
        let response = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| describe_request_error(url, &e))?;
        let status = response.status().as_u16();
        // Read to the end either way, so the connection goes back to the pool.
        let answer = response
            .bytes()
            .await
            .map_err(|e| describe_request_error(url, &e))?;
        match read(status, &answer) {
            Answer::Ended(outcome) => return Ok(outcome),
            Answer::Error(e) => return Err(format!("{url}: {e}")),
            Answer::Again(e) => last = e,
        }
    }
    Err(format!(
        "{url}: unavailable {UNAVAILABLE_TRIES_MAX} times: {last}"
    ))
}

fn http_client(pool: usize) -> anyhow::Result<reqwest::Client> {
    crate::http::client_builder()?
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

/// An id no other run's share: the time in nanoseconds, in hex.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}")
}

// ---------------------------------------------------------------------------------------------
// The setup phase.

/// Opens accounts a0 to a{accounts - 1} on the Tally gateway at `url`: a deposit of
/// `ACCOUNT_DEPOSIT` each, `SETUP_CONCURRENCY` at a time, saying how far it got every second
/// when `progress`.
async fn open_accounts(url: &str, accounts: u64, progress: bool) -> anyhow::Result<()> {
    let http = http_client(SETUP_CONCURRENCY)?;
    let next = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let reporter = progress.then(|| {
        let opened = Arc::clone(&opened);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SETUP_PROGRESS_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = opened.load(Ordering::Relaxed);
                eprintln!("bench object: opened {n} of {accounts} accounts");
            }
        })
    });
    let tasks: Vec<_> = (0..SETUP_CONCURRENCY)
        .map(|_| {
            let (http, next, opened) = (http.clone(), Arc::clone(&next), Arc::clone(&opened));
            let base = url.to_string();
            tokio::spawn(async move {
                let mut retried = 0;
                loop {
                    let account = next.fetch_add(1, Ordering::Relaxed);
                    if account >= accounts {
                        return Ok(());
                    }
                    let url = format!("{base}/objects/account/{}/deposit", account_key(account));
                    let body = json!({ "amount": ACCOUNT_DEPOSIT });
                    post(&http, &url, &body, deposit_answer, &mut retried).await?;
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut failed: Option<String> = None;
    for task in tasks {
        match task.await.context("a setup task panicked")? {
            Ok(()) => {}
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    if let Some(e) = failed {
        bail!("opening the accounts failed: {e}");
    }
    if progress {
        eprintln!(
            "bench object: opened {accounts} accounts in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Reads a deposit's answer: 2xx with `{"balance": N}`.
fn deposit_answer(status: u16, body: &[u8]) -> Answer {
    if status == 503 {
        return Answer::Again(format!("503: {}", snippet(body)));
    }
    let value = serde_json::from_slice::<Value>(body).ok();
    match value.as_ref().and_then(|v| v.get("balance")) {
        Some(v) if (200..300).contains(&status) && v.is_number() => Answer::Ended(Outcome::Success),
        _ => Answer::Error(format!("{status}: {}", snippet(body))),
    }
}

// ---------------------------------------------------------------------------------------------
// The closed loop.

#[derive(Default)]
struct Shared {
    /// Operations that ended (success, failure, retryable), warmup included.
    ended: AtomicU64,
    errors: AtomicU64,
    first_failure: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
}

struct Counts {
    latency_us: Histogram<u64>,
    succeeded: u64,
    failed: u64,
    retryable: u64,
    errors: u64,
    retried: u64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            succeeded: 0,
            failed: 0,
            retryable: 0,
            errors: 0,
            retried: 0,
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.retryable += other.retryable;
        self.errors += other.errors;
        self.retried += other.retried;
    }
}

impl Client {
    /// Runs operations until `end`, counting those that start after `measure_start`.
    async fn run(mut self, shared: Arc<Shared>, measure_start: Instant, end: Instant) -> Counts {
        let mut counts = Counts::new();
        while Instant::now() < end {
            let began = Instant::now();
            let measured = began >= measure_start;
            let mut retried = 0;
            // An operation still in flight at the end is abandoned, not counted.
            let Ok(outcome) = tokio::time::timeout_at(end, self.next(&mut retried)).await else {
                break;
            };
            let latency_us = began.elapsed().as_micros() as u64;
            match outcome {
                Ok(outcome) => {
                    shared.ended.fetch_add(1, Ordering::Relaxed);
                    if let Outcome::Failure(reason) | Outcome::Retryable(reason) = &outcome {
                        crate::store::note_first(&shared.first_failure, reason);
                    }
                    if measured {
                        counts.latency_us.saturating_record(latency_us.max(1));
                        match outcome {
                            Outcome::Success => counts.succeeded += 1,
                            Outcome::Failure(_) => counts.failed += 1,
                            Outcome::Retryable(_) => counts.retryable += 1,
                        }
                    }
                }
                Err(e) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    crate::store::note_first(&shared.first_error, &e);
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
    }
}

/// Sets up the data (transfers: opens the accounts), then runs the load, showing progress on
/// stderr when `progress` is true.
///
/// Fails when the configuration is invalid, the setup fails, or no operation at all ended
/// (with the first error seen).
pub async fn run_objects(config: ObjectConfig, progress: bool) -> anyhow::Result<ObjectReport> {
    config.validate()?;
    let setup_began = Instant::now();
    let (items, distribution) = match &config.workload {
        ObjectWorkload::Counter { keys, distribution } => (*keys, *distribution),
        ObjectWorkload::Transfer {
            accounts,
            distribution,
            ..
        } => {
            open_accounts(config.target.url(), *accounts, progress).await?;
            (*accounts, *distribution)
        }
    };
    let setup_s = setup_began.elapsed().as_secs_f64();
    let keys = Keys::new(items, distribution);
    let http = http_client(config.clients)?;
    let run = run_id();

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
        progress.then_some("bench object"),
        config.workload.operation(),
        Timeline {
            start,
            measure_start,
            end,
        },
        {
            let shared = Arc::clone(&shared);
            move || {
                (
                    shared.ended.load(Ordering::Relaxed),
                    shared.errors.load(Ordering::Relaxed),
                )
            }
        },
    );
    let workers: Vec<_> = (0..config.clients)
        .map(|client| {
            let client = Client {
                http: http.clone(),
                target: config.target.clone(),
                workload: config.workload.clone(),
                keys: keys.clone(),
                rng: SmallRng::seed_from_u64(config.seed.wrapping_add(client as u64)),
                run: run.clone(),
                client,
                counter: 0,
            };
            tokio::spawn(client.run(Arc::clone(&shared), measure_start, end))
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
    if shared.ended.load(Ordering::Relaxed) == 0 {
        bail!(
            "no {} ended: {}",
            config.workload.operation(),
            first_error.as_deref().unwrap_or("no answer before the end")
        );
    }
    let elapsed_s = finished
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    let server_cpu_s = match cpu {
        Some(task) => Some(task.await.context("the CPU sampler panicked")?),
        None => None,
    };
    Ok(ObjectReport {
        setup_s,
        succeeded: total.succeeded,
        failed: total.failed,
        retryable: total.retryable,
        errors: total.errors,
        retried: total.retried,
        elapsed_s,
        succeeded_per_s: if elapsed_s > 0.0 {
            total.succeeded as f64 / elapsed_s
        } else {
            0.0
        },
        latency_us: Percentiles::from_histogram(&total.latency_us),
        first_failure: first(&shared.first_failure),
        first_error,
        started_unix_ms,
        server_cpu_s,
        succeeded_per_cpu_s: server_cpu_s
            .filter(|s| *s > 0.0)
            .map(|s| total.succeeded as f64 / s),
        config,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::Parser;

    use super::*;
    use crate::test_server::{self, Request};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ObjectArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<ObjectConfig> {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        Cli::try_parse_from(argv)?.args.config()
    }

    #[test]
    fn flags_make_the_run_they_name() {
        let c = config(&["--workload", "counter"]).unwrap();
        assert_eq!(
            c.target,
            ObjectTarget::Tally {
                url: "http://127.0.0.1:8080".into()
            }
        );
        assert_eq!(
            c.workload,
            ObjectWorkload::Counter {
                keys: 10_000,
                distribution: Distribution::Uniform
            }
        );
        assert_eq!((c.clients, c.seed), (32, 1));
        assert_eq!((c.duration.as_secs(), c.warmup.as_secs()), (10, 2));

        let c = config(&[
            "--workload",
            "counter",
            "--keys",
            "1",
            "--restate",
            "127.0.0.1:9070/",
            "--cpu-pid",
            "7",
            "--cpu-pid",
            "8",
        ])
        .unwrap();
        assert_eq!(
            c.target,
            ObjectTarget::Restate {
                url: "http://127.0.0.1:9070".into()
            }
        );
        assert_eq!(
            c.workload,
            ObjectWorkload::Counter {
                keys: 1,
                distribution: Distribution::Uniform
            }
        );
        assert_eq!(c.cpu_pids, [7, 8]);

        let c = config(&[
            "--workload",
            "transfer",
            "--accounts",
            "100",
            "--distribution",
            "zipfian",
            "--style",
            "saga",
            "--addr",
            "http://10.0.0.1:81",
        ])
        .unwrap();
        assert_eq!(
            c.workload,
            ObjectWorkload::Transfer {
                accounts: 100,
                distribution: Distribution::Zipfian { theta: 0.99 },
                style: TxnStyle::Saga
            }
        );
        assert_eq!(
            c.target,
            ObjectTarget::Tally {
                url: "http://10.0.0.1:81".into()
            }
        );
        let c = config(&["--workload", "transfer"]).unwrap();
        assert_eq!(
            c.workload,
            ObjectWorkload::Transfer {
                accounts: 10_000,
                distribution: Distribution::Uniform,
                style: TxnStyle::Serializable
            }
        );
    }

    #[test]
    fn flags_that_do_not_fit_the_workload_are_refused() {
        let check = |args: &[&str], expect: &str| {
            let error = format!("{:#}", config(args).unwrap_err());
            assert!(
                error.contains(expect),
                "{args:?}: {error:?} lacks {expect:?}"
            );
        };
        check(&[], "--workload");
        check(&["--workload", "queue"], "invalid value 'queue'");
        check(
            &["--workload", "transfer", "--keys", "5"],
            "--keys is for the counter",
        );
        check(
            &["--workload", "counter", "--accounts", "5"],
            "--accounts and --style",
        );
        check(
            &["--workload", "counter", "--style", "saga"],
            "--accounts and --style",
        );
        check(
            &["--workload", "transfer", "--style", "2pc"],
            "invalid value '2pc'",
        );
        check(
            &["--workload", "transfer", "--restate", "http://127.0.0.1:1"],
            "transfers run on Tally only",
        );
        check(
            &["--workload", "counter", "--addr", "h:1", "--restate", "h:2"],
            "cannot be used with",
        );
        check(
            &["--workload", "transfer", "--accounts", "1"],
            "accounts must be 2..=",
        );
        check(
            &["--workload", "counter", "--keys", "0"],
            "keys must be 1..=",
        );
        check(
            &["--workload", "counter", "--keys", "1000001"],
            "keys must be 1..=",
        );
        check(
            &[
                "--workload",
                "counter",
                "--distribution",
                "zipfian",
                "--theta",
                "1",
            ],
            "theta must be above 0 and below 1",
        );
        check(
            &["--workload", "counter", "--clients", "0"],
            "clients must be 1..=",
        );
        check(
            &["--workload", "counter", "--duration", "0"],
            "duration must be above 0",
        );
        check(
            &["--workload", "counter", "--restate", "http://h:1/x"],
            "expected host:port",
        );
    }

    #[test]
    fn uniform_keys_cover_the_range_and_stay_in_it() {
        let keys = Keys::new(10, Distribution::Uniform);
        let mut rng = SmallRng::seed_from_u64(3);
        let drawn: Vec<u64> = (0..10_000).map(|_| keys.pick(&mut rng)).collect();
        let distinct: BTreeSet<u64> = drawn.iter().copied().collect();
        assert_eq!(distinct, (0..10).collect());
        // Each key's share is about a tenth.
        for key in 0..10 {
            let n = drawn.iter().filter(|&&k| k == key).count();
            assert!((800..1200).contains(&n), "key {key}: {n}");
        }
    }

    #[test]
    fn one_key_is_always_the_hot_one() {
        for distribution in [Distribution::Uniform, Distribution::Zipfian { theta: 0.99 }] {
            let keys = Keys::new(1, distribution);
            let mut rng = SmallRng::seed_from_u64(5);
            assert!(
                (0..1000).all(|_| keys.pick(&mut rng) == 0),
                "{distribution:?}"
            );
        }
    }

    #[test]
    fn zipfian_keys_favor_key_zero() {
        let keys = Keys::new(10_000, Distribution::Zipfian { theta: 0.99 });
        let mut rng = SmallRng::seed_from_u64(9);
        let drawn: Vec<u64> = (0..10_000).map(|_| keys.pick(&mut rng)).collect();
        assert!(drawn.iter().all(|&k| k < 10_000));
        let zeros = drawn.iter().filter(|&&k| k == 0).count();
        // Key 0's share is 1 / zeta(10000, 0.99), about 0.1; uniform would give it 1.
        assert!((700..1300).contains(&zeros), "{zeros}");
    }

    #[test]
    fn a_transfer_is_between_two_distinct_accounts() {
        for distribution in [Distribution::Uniform, Distribution::Zipfian { theta: 0.99 }] {
            let keys = Keys::new(2, distribution);
            let mut rng = SmallRng::seed_from_u64(11);
            let pairs: BTreeSet<(u64, u64)> = (0..1000).map(|_| keys.pick_pair(&mut rng)).collect();
            // Both directions between the two accounts, and nothing else.
            assert_eq!(pairs, BTreeSet::from([(0, 1), (1, 0)]), "{distribution:?}");
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_keys() {
        let keys = Keys::new(1000, Distribution::Zipfian { theta: 0.5 });
        let draw = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..50)
                .map(|_| keys.pick_pair(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn a_transfer_id_names_the_run_the_client_and_the_call() {
        assert_eq!(transfer_id("18b2c0ffee", 3, 17), "b18b2c0ffee-3-17");
        // Ids that differ in where the client's number ends and the counter's begins differ.
        assert_ne!(transfer_id("r", 1, 12), transfer_id("r", 11, 2));
        let id = transfer_id(&run_id(), OBJECT_CLIENTS_MAX - 1, u64::MAX);
        // A saga runs as workflow instance "saga.{id}": letters, digits and -_.: only.
        assert!(id.len() <= 200, "{id}");
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{id}"
        );
    }

    #[test]
    fn a_serializable_transfer_withdraws_then_deposits() {
        let expect = json!({
            "style": "serializable",
            "calls": [
                {"class": "account", "key": "a4", "method": "withdraw", "input": {"amount": 1}},
                {"class": "account", "key": "a9", "method": "deposit", "input": {"amount": 1}},
            ],
        });
        assert_eq!(transfer_body(4, 9, TxnStyle::Serializable), expect);
    }

    #[test]
    fn a_saga_transfer_carries_each_call_s_compensation() {
        let expect = json!({
            "style": "saga",
            "calls": [
                {"class": "account", "key": "a0", "method": "withdraw", "input": {"amount": 1},
                 "compensate": {"method": "deposit", "input": {"amount": 1}}},
                {"class": "account", "key": "a7", "method": "deposit", "input": {"amount": 1},
                 "compensate": {"method": "withdraw", "input": {"amount": 1}}},
            ],
        });
        assert_eq!(transfer_body(0, 7, TxnStyle::Saga), expect);
    }

    #[test]
    fn an_open_transfer_is_one_call_of_pay() {
        let expect = json!({"call": {
            "class": "account", "key": "a3", "method": "pay", "input": {"to": "a8", "amount": 1},
        }});
        assert_eq!(transfer_body(3, 8, TxnStyle::Open), expect);
    }

    #[test]
    fn counters_are_called_where_each_system_serves_them() {
        let tally = ObjectTarget::Tally {
            url: "http://h:1".into(),
        };
        let restate = ObjectTarget::Restate {
            url: "http://h:2".into(),
        };
        assert_eq!(counter_url(&tally, 5), "http://h:1/objects/counter/c5/add");
        assert_eq!(counter_url(&restate, 0), "http://h:2/Counter/c0/add");
    }

    #[test]
    fn answers_are_read_by_status_and_outcome() {
        use Answer::{Again, Ended, Error};
        let check = |read: fn(u16, &[u8]) -> Answer, status: u16, body: &str, expect: Answer| {
            assert_eq!(read(status, body.as_bytes()), expect, "{status} {body}");
        };
        check(
            counter_answer,
            200,
            r#"{"value":3}"#,
            Ended(Outcome::Success),
        );
        check(
            counter_answer,
            200,
            r#"{"other":3}"#,
            Error(r#"200: {"other":3}"#.into()),
        );
        check(
            counter_answer,
            404,
            r#"{"value":3}"#,
            Error(r#"404: {"value":3}"#.into()),
        );
        check(counter_answer, 503, "busy", Again("503: busy".into()));
        check(
            deposit_answer,
            200,
            r#"{"balance":9}"#,
            Ended(Outcome::Success),
        );
        check(
            deposit_answer,
            422,
            r#"{"error":{}}"#,
            Error(r#"422: {"error":{}}"#.into()),
        );
        check(
            transfer_answer,
            200,
            r#"{"outcome":"success"}"#,
            Ended(Outcome::Success),
        );
        check(
            transfer_answer,
            422,
            r#"{"outcome":"failure","error":{"kind":"failed","message":"insufficient funds"}}"#,
            Ended(Outcome::Failure("insufficient funds".into())),
        );
        check(
            transfer_answer,
            503,
            r#"{"outcome":"retryable","error":{"message":"no function"}}"#,
            Ended(Outcome::Retryable("no function".into())),
        );
        check(
            transfer_answer,
            503,
            r#"{"error":{"code":"unavailable","message":"x"}}"#,
            Again(r#"503: {"error":{"code":"unavailable","message":"x"}}"#.into()),
        );
        check(
            transfer_answer,
            202,
            r#"{"outcome":"running"}"#,
            Error("the saga was still running after the gateway's minute".into()),
        );
        // A status and an outcome that disagree are an error, not a guess.
        check(
            transfer_answer,
            200,
            r#"{"outcome":"failure"}"#,
            Error(r#"200: {"outcome":"failure"}"#.into()),
        );
        check(transfer_answer, 400, "bad", Error("400: bad".into()));
    }

    fn short(target: ObjectTarget, workload: ObjectWorkload) -> ObjectConfig {
        ObjectConfig {
            target,
            workload,
            clients: 3,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            seed: 1,
            cpu_pids: vec![],
        }
    }

    /// Request lines and bodies a fake server saw.
    type Seen = Arc<Mutex<Vec<(String, Value)>>>;

    #[tokio::test]
    async fn counter_calls_go_to_restate_s_virtual_object_keys() {
        let seen: Seen = Arc::default();
        let (addr, server) = test_server::serve({
            let seen = Arc::clone(&seen);
            move |request: Request| {
                let body = serde_json::from_slice(&request.body).unwrap();
                seen.lock().unwrap().push((request.line, body));
                ("200 OK", r#"{"value":1}"#.into())
            }
        })
        .await;
        let config = short(
            ObjectTarget::Restate {
                url: format!("http://{addr}"),
            },
            ObjectWorkload::Counter {
                keys: 4,
                distribution: Distribution::Uniform,
            },
        );
        let report = run_objects(config, false).await.unwrap();
        server.abort();

        assert!(report.succeeded > 10, "{report:?}");
        assert_eq!((report.failed, report.retryable, report.errors), (0, 0, 0));
        assert!(report.setup_s < 0.1, "{report:?}");
        let seen = seen.lock().unwrap();
        let keys: BTreeSet<&str> = seen
            .iter()
            .map(|(line, body)| {
                assert_eq!(body, &json!({"by": 1}));
                line.strip_prefix("POST /Counter/")
                    .and_then(|rest| rest.strip_suffix("/add HTTP/1.1"))
                    .unwrap_or_else(|| panic!("unexpected request {line:?}"))
            })
            .collect();
        assert_eq!(keys, BTreeSet::from(["c0", "c1", "c2", "c3"]));
    }

    #[tokio::test]
    async fn transfers_open_the_accounts_first_and_count_each_outcome() {
        let seen: Seen = Arc::default();
        let transactions = AtomicU64::new(0);
        let (addr, server) = test_server::serve({
            let seen = Arc::clone(&seen);
            move |request: Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                seen.lock().unwrap().push((request.line.clone(), body));
                if request.line.contains("/deposit ") {
                    return ("200 OK", r#"{"balance":1000000000}"#.into());
                }
                // Of every 4 attempts: a success, a failure, an undecided transaction, and
                // the gateway's unavailable (nothing decided: the same id comes again).
                match transactions.fetch_add(1, Ordering::Relaxed) % 4 {
                    0 => ("200 OK", r#"{"outcome":"success"}"#.into()),
                    1 => (
                        "422 Unprocessable Entity",
                        r#"{"outcome":"failure","error":{"message":"insufficient funds"}}"#.into(),
                    ),
                    2 => (
                        "503 Service Unavailable",
                        r#"{"outcome":"retryable","error":{"message":"undecided"}}"#.into(),
                    ),
                    _ => (
                        "503 Service Unavailable",
                        r#"{"error":{"code":"unavailable","message":"busy"}}"#.into(),
                    ),
                }
            }
        })
        .await;
        let config = short(
            ObjectTarget::Tally {
                url: format!("http://{addr}"),
            },
            ObjectWorkload::Transfer {
                accounts: 50,
                distribution: Distribution::Zipfian { theta: 0.99 },
                style: TxnStyle::Saga,
            },
        );
        let report = run_objects(config, false).await.unwrap();
        server.abort();

        assert!(report.succeeded > 0 && report.failed > 0 && report.retryable > 0);
        assert!(report.retried > 0, "{report:?}");
        assert_eq!(report.errors, 0, "{report:?}");
        // Clients race to note theirs first.
        let first = report.first_failure.as_deref();
        assert!(
            matches!(first, Some("insufficient funds" | "undecided")),
            "{first:?}"
        );
        let seen = seen.lock().unwrap();
        // The setup phase opened every account once, before any transaction.
        let deposits: Vec<&str> = seen
            .iter()
            .take_while(|(line, _)| line.contains("/deposit "))
            .map(|(line, _)| line.as_str())
            .collect();
        let opened: BTreeSet<&str> = deposits.iter().copied().collect();
        assert_eq!(deposits.len(), 50);
        assert_eq!(opened.len(), 50);
        assert!(opened.contains("POST /objects/account/a49/deposit HTTP/1.1"));
        let ids: Vec<&str> = seen[50..]
            .iter()
            .map(|(line, body)| {
                let calls = body["calls"].as_array().unwrap();
                assert_eq!(body["style"], "saga");
                assert_ne!(calls[0]["key"], calls[1]["key"]);
                line.strip_prefix("POST /transactions/")
                    .and_then(|rest| rest.strip_suffix(" HTTP/1.1"))
                    .unwrap_or_else(|| panic!("unexpected request {line:?}"))
            })
            .collect();
        // Every unavailable answer sent its transaction again under the same id; each id
        // otherwise ran once.
        let distinct: BTreeSet<&str> = ids.iter().copied().collect();
        assert!(distinct.len() < ids.len());
        assert!(ids.len() - distinct.len() <= ids.len() / 4 + 1);
        assert!(
            distinct.iter().all(|id| id.starts_with('b')),
            "{distinct:?}"
        );
    }

    #[tokio::test]
    async fn no_server_fails_fast_naming_the_url() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let config = short(
            ObjectTarget::Tally {
                url: format!("http://{addr}"),
            },
            ObjectWorkload::Transfer {
                accounts: 10,
                distribution: Distribution::Uniform,
                style: TxnStyle::Serializable,
            },
        );
        let error = run_objects(config, false).await.unwrap_err().to_string();
        let expect = format!(
            "opening the accounts failed: cannot connect to http://{addr}/objects/account/a"
        );
        assert!(error.starts_with(&expect), "{error}");
    }

    #[test]
    fn the_report_names_the_object_benchmark_and_its_figures() {
        let report = ObjectReport {
            config: short(
                ObjectTarget::Tally {
                    url: "http://127.0.0.1:8080".into(),
                },
                ObjectWorkload::Transfer {
                    accounts: 100,
                    distribution: Distribution::Uniform,
                    style: TxnStyle::Serializable,
                },
            ),
            setup_s: 1.5,
            succeeded: 900,
            failed: 1,
            retryable: 2,
            errors: 3,
            retried: 4,
            elapsed_s: 2.0,
            succeeded_per_s: 450.0,
            latency_us: Percentiles::default(),
            first_failure: None,
            first_error: None,
            started_unix_ms: 1_700_000_000_123,
            server_cpu_s: Some(0.5),
            succeeded_per_cpu_s: Some(1800.0),
        };
        let json = report.to_json();
        assert_eq!(json["benchmark"], "object");
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(json["config"]["workload"]["name"], "transfer");
        assert_eq!(json["config"]["workload"]["style"], "serializable");
        assert_eq!(json["config"]["target"]["system"], "tally");
        assert_eq!(json["succeeded_per_cpu_s"], 1800.0);
        assert_eq!(json["retryable"], 2);
        let text = report.human();
        assert!(
            text.starts_with("object benchmark (2023-11-14T22:13:20Z)"),
            "{text}"
        );
        assert!(
            text.contains("transactions  900 succeeded, 1 failed, 2 retryable, 3 errors"),
            "{text}"
        );
        assert!(text.contains("450.0 transactions/s"), "{text}");
        assert!(
            text.contains("setup_s       1.50 (opening 100 accounts)"),
            "{text}"
        );
        assert!(
            text.contains("(0.25 cores), 1800.0 transactions per CPU second"),
            "{text}"
        );
    }
}
