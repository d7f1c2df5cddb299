//! The queue benchmark: producers and consumers of one queue at the same time (a steady
//! state), on Tally's queues over HTTP, on NATS JetStream (a work-queue stream and a durable
//! pull consumer) or on Redis streams (a stream and a consumer group).
//!
//! A run first sets up the queue and its consumer group (the setup phase; the group exists
//! before anything is pushed), connects every client, then runs `producers` and `consumers`
//! closed-loop tasks side by side for `warmup` and then `duration`, each with a connection of
//! its own. A producer pushes one message of `message_bytes` (made by `filler`, so a consumer
//! can tell it came from this run) and waits for the system's acknowledgement. A consumer pops
//! one message, waiting up to `POP_WAIT` for one, acks it, waits for the ack's answer, and pops
//! again; a pop that finds nothing in time is counted apart, not as a latency sample.
//!
//! What is counted in the measured window: pushes acknowledged, messages acked (each with the
//! latency of its pop-and-ack round), empty pops and errors. Over the whole run, warmup
//! included, the clients also count every push acknowledged and every message acked; their
//! difference at the end is the backlog (a push or an ack still in flight when the window
//! closes is abandoned and not counted).
//!
//! The Tally driver is here; the JetStream driver (`jetstream_queue`) and the Redis one
//! (`redis_queue`) are behind the `jetstream` and `redis` features, so that the `tally` binary
//! links neither client: a binary built without one says which binary has it. It does not
//! start the systems it measures; it only talks to the URL it is given.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::append::as_secs_f64;
use crate::filler::{filler, filler_origin, FILLER_HEADER_BYTES};
use crate::progress::{Progress, Timeline};
use crate::report::Percentiles;

/// Producers, and consumers, a run has at most (each).
pub const QUEUE_CLIENTS_MAX: usize = 1024;
/// Tally's limit on a message (libqueue's `MESSAGE_BYTES_MAX`), below NATS's default
/// `max_payload` (1 MiB) and Redis's limits.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024 - 1024;
/// libqueue's limit on a queue's shards.
pub const SHARDS_MAX: u32 = 256;
/// How long one pop waits for a message: Tally's `wait_ms`, JetStream's pull request
/// `expires`, Redis's `BLOCK`.
pub const POP_WAIT: Duration = Duration::from_millis(1000);
/// The consumer group (Tally, Redis) or durable consumer (JetStream) every consumer is in.
pub const GROUP: &str = "bench";
/// A queue's name: 1 to this many bytes of ASCII letters, digits, '-' and '_', valid as a
/// Tally queue, a JetStream stream and subject, and a Redis key alike.
pub const QUEUE_NAME_BYTES_MAX: usize = 64;
pub const DEFAULT_TALLY_ADDR: &str = "127.0.0.1:8080";
/// How long one request may take before it is an error; above `POP_WAIT`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A client's pause after an error, so a system that refuses everything is not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
const LATENCY_US_MAX: u64 = 120_000_000;

/// The system a run drives.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "system", rename_all = "lowercase")]
pub enum QueueTarget {
    /// A Tally gateway's base URL ("http://127.0.0.1:8080"); the queue has `shards` shards.
    Tally { url: String, shards: u32 },
    /// A NATS server ("nats://127.0.0.1:4222"): a stream with work-queue retention and file
    /// storage (one replica) and one durable pull consumer.
    JetStream { url: String },
    /// A Redis server ("redis://127.0.0.1:6379"): a stream and a consumer group.
    Redis { url: String },
}

impl QueueTarget {
    fn name(&self) -> &'static str {
        match self {
            QueueTarget::Tally { .. } => "tally",
            QueueTarget::JetStream { .. } => "jetstream",
            QueueTarget::Redis { .. } => "redis",
        }
    }

    fn url(&self) -> &str {
        match self {
            QueueTarget::Tally { url, .. }
            | QueueTarget::JetStream { url }
            | QueueTarget::Redis { url } => url,
        }
    }

    /// What a push and a pop round are on this system, in words.
    fn operations(&self) -> (&'static str, &'static str) {
        match self {
            QueueTarget::Tally { .. } => (
                "POST /queues/Q/push",
                "POST /queues/Q/pop?group=G&wait_ms=1000, then POST /queues/Q/ack",
            ),
            QueueTarget::JetStream { .. } => (
                "publish, await the PubAck",
                "pull 1 message (expires 1 s), then ack awaiting the server's confirmation",
            ),
            QueueTarget::Redis { .. } => ("XADD", "XREADGROUP COUNT 1 BLOCK 1000, then XACK"),
        }
    }
}

/// The shards of a Tally queue by default: one per consumer, at most `SHARDS_MAX`.
pub fn default_shards(consumers: usize) -> u32 {
    consumers.clamp(1, SHARDS_MAX as usize) as u32
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueConfig {
    pub target: QueueTarget,
    /// The queue (Tally), stream and subject (JetStream) or stream key (Redis).
    pub queue: String,
    pub producers: usize,
    pub consumers: usize,
    pub message_bytes: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
    /// The system's processes (each with every process below it) whose CPU time over the
    /// measured window is reported; none: not measured.
    pub cpu_pids: Vec<u32>,
}

impl QueueConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (what, n) in [("producers", self.producers), ("consumers", self.consumers)] {
            ensure!(
                (1..=QUEUE_CLIENTS_MAX).contains(&n),
                "{what} must be 1..={QUEUE_CLIENTS_MAX}, not {n}"
            );
        }
        ensure!(
            (FILLER_HEADER_BYTES..=MESSAGE_BYTES_MAX).contains(&self.message_bytes),
            "the message size must be {FILLER_HEADER_BYTES}..={MESSAGE_BYTES_MAX} bytes (each \
             message starts with its producer and counter), not {}",
            self.message_bytes
        );
        ensure!(!self.duration.is_zero(), "duration must be above 0");
        check_queue_name(&self.queue)?;
        match &self.target {
            QueueTarget::Tally { shards, .. } => ensure!(
                (1..=SHARDS_MAX).contains(shards),
                "shards must be 1..={SHARDS_MAX}, not {shards}"
            ),
            QueueTarget::JetStream { url } => ensure!(
                url.starts_with("nats://"),
                "a NATS server is nats://host:port, not {url:?}"
            ),
            QueueTarget::Redis { url } => ensure!(
                url.starts_with("redis://"),
                "a Redis server is redis://host:port, not {url:?}"
            ),
        }
        Ok(())
    }
}

fn check_queue_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        (1..=QUEUE_NAME_BYTES_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "bad queue name {name:?}: 1 to {QUEUE_NAME_BYTES_MAX} ASCII letters, digits, '-' or '_'"
    );
    Ok(())
}

/// The flags of the queue benchmark, the same in every binary that runs it (`tally bench
/// queue`, `bench-jetstream queue`, `bench-redis`).
#[derive(Clone, Debug, clap::Args)]
pub struct QueueArgs {
    /// Tally gateway address or base URL.
    #[arg(long, default_value = DEFAULT_TALLY_ADDR, conflicts_with_all = ["nats", "redis"])]
    pub addr: String,
    /// Drive NATS JetStream at this server instead (nats://host:port): a work-queue stream
    /// (file storage, 1 replica) and a durable pull consumer. Only in `bench-jetstream queue`.
    #[arg(long, conflicts_with = "redis")]
    pub nats: Option<String>,
    /// Drive Redis streams at this server instead (redis://host:port): XADD, and a consumer
    /// group read with XREADGROUP and XACK. Only in `bench-redis`.
    #[arg(long)]
    pub redis: Option<String>,
    /// Concurrent producers, each with its own connection and one push in flight.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Concurrent consumers, each with its own connection and one pop (then ack) in flight.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Tally: the queue's shards (default: one per consumer, at most 256).
    #[arg(long)]
    pub shards: Option<u32>,
    /// The queue (Tally), stream (JetStream) or stream key (Redis); default: a new one for
    /// each run, qbench-<unix ms>.
    #[arg(long)]
    pub queue: Option<String>,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// How long to run before measuring, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Report the CPU time this process (and every process below it) used over the measured
    /// window, and messages acked per CPU second; may be repeated (the server's process).
    #[arg(long = "cpu-pid")]
    pub cpu_pids: Vec<u32>,
    /// Write the figures and the configuration as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl QueueArgs {
    /// The run these flags describe.
    pub fn config(&self) -> anyhow::Result<QueueConfig> {
        let target = match (&self.nats, &self.redis) {
            (Some(url), _) => QueueTarget::JetStream {
                url: crate::append::scheme_url(url, "nats")?,
            },
            (None, Some(url)) => QueueTarget::Redis {
                url: crate::append::scheme_url(url, "redis")?,
            },
            (None, None) => QueueTarget::Tally {
                url: crate::base_url(&self.addr)?,
                shards: self.shards.unwrap_or(default_shards(self.consumers)),
            },
        };
        ensure!(
            self.shards.is_none() || matches!(target, QueueTarget::Tally { .. }),
            "--shards is for Tally's queues only"
        );
        let queue = match &self.queue {
            Some(queue) => queue.clone(),
            None => format!("qbench-{}", unix_ms(SystemTime::now())),
        };
        let config = QueueConfig {
            target,
            queue,
            producers: self.producers,
            consumers: self.consumers,
            message_bytes: self.size,
            duration: Duration::from_secs(self.duration),
            warmup: Duration::from_secs(self.warmup),
            cpu_pids: self.cpu_pids.clone(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Runs the benchmark, prints its report and writes the JSON file if asked to.
    pub async fn run(&self) -> anyhow::Result<()> {
        let report = run_queue(self.config()?, true).await?;
        report.print_human();
        if let Some(path) = &self.json {
            report.write_json(path)?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a run measured. Counts cover the measured window only (after warmup), except the
/// `_total` counts and the backlog, which cover the whole run.
#[derive(Clone, Debug, Serialize)]
pub struct QueueReport {
    pub config: QueueConfig,
    /// How long the setup phase took (the queue, the group, every client's connection).
    pub setup_s: f64,
    /// Pushes the system acknowledged.
    pub pushed: u64,
    /// Messages popped and acked, the ack answered.
    pub acked: u64,
    /// Pops that found no message within `POP_WAIT`.
    pub empty_pops: u64,
    /// Failed pushes, pops and acks (a failed request, a timeout, an unexpected answer, a
    /// message no producer of this run pushed).
    pub errors: u64,
    pub elapsed_s: f64,
    pub pushed_per_s: f64,
    /// Messages acked per second: the throughput compared.
    pub acked_per_s: f64,
    /// Of every acknowledged push.
    pub push_latency_us: Percentiles,
    /// Of every pop-and-ack round that acked a message (waiting for it included).
    pub pop_latency_us: Percentiles,
    /// Pushes acknowledged over the whole run, warmup included.
    pub pushed_total: u64,
    /// Messages acked over the whole run, warmup included.
    pub acked_total: u64,
    /// `pushed_total - acked_total`: messages left in the queue (or in flight) at the end.
    pub backlog: u64,
    pub first_error: Option<String>,
    pub started_unix_ms: u64,
    /// CPU seconds the system's processes (`cpu_pids`) used over the measured window.
    pub server_cpu_s: Option<f64>,
    /// Messages acked per CPU second of the system: throughput per core used.
    pub acked_per_cpu_s: Option<f64>,
}

impl QueueReport {
    pub fn human(&self) -> String {
        let c = &self.config;
        let (push, pop) = c.target.operations();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "queue benchmark");
        let _ = writeln!(
            out,
            "  system        {} at {}",
            c.target.name(),
            c.target.url()
        );
        let shards = match &c.target {
            QueueTarget::Tally { shards, .. } => format!(", {shards} shards"),
            _ => String::new(),
        };
        let _ = writeln!(out, "  queue         {} (group {GROUP}{shards})", c.queue);
        let _ = writeln!(
            out,
            "  clients       {} producers, {} consumers, {} B messages",
            c.producers, c.consumers, c.message_bytes
        );
        let _ = writeln!(out, "  push          {push}");
        let _ = writeln!(out, "  pop           {pop}");
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
            "  messages      {} pushed, {} acked, {} empty pops, {} errors in {:.2} s",
            self.pushed, self.acked, self.empty_pops, self.errors, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "  throughput    {:.1} acked/s, {:.1} pushed/s",
            self.acked_per_s, self.pushed_per_s
        );
        for (what, l) in [
            ("push_us", &self.push_latency_us),
            ("pop_ack_us", &self.pop_latency_us),
        ] {
            let _ = writeln!(
                out,
                "  {what:<13} p50 {}  p99 {}  p999 {}  max {}  mean {:.1}",
                l.p50, l.p99, l.p999, l.max, l.mean
            );
        }
        let _ = writeln!(
            out,
            "  backlog       {} at the end ({} pushed, {} acked in the whole run)",
            self.backlog, self.pushed_total, self.acked_total
        );
        if let (Some(cpu_s), Some(per)) = (self.server_cpu_s, self.acked_per_cpu_s) {
            let _ = writeln!(
                out,
                "  server_cpu    {cpu_s:.2} s over the window ({:.2} cores), {per:.1} acked per CPU second",
                cpu_s / self.elapsed_s.max(f64::EPSILON)
            );
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
            object.insert("benchmark".into(), "queue".into());
            object.insert("tool".into(), "tally-bench".into());
            object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            object.insert("group".into(), GROUP.into());
            object.insert("pop_wait_ms".into(), (POP_WAIT.as_millis() as u64).into());
        }
        value
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON values serialize");
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// What a system's clients do.

/// One producer's connection.
pub(crate) trait Producer: Send + 'static {
    /// Pushes `message`; Ok once the system acknowledged it.
    fn push(&mut self, message: Bytes) -> impl Future<Output = Result<(), String>> + Send;
}

/// One consumer's connection.
pub(crate) trait Consumer: Send + 'static {
    /// Pops one message, waiting up to `POP_WAIT`, and acks it; the message once the ack was
    /// answered, or None when no message came in time.
    fn pop_ack(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

/// Sets up the queue, then runs the load, showing progress on stderr when `progress` is true.
pub async fn run_queue(config: QueueConfig, progress: bool) -> anyhow::Result<QueueReport> {
    config.validate()?;
    if progress {
        eprintln!(
            "queue: setting up {} on {} at {}",
            config.queue,
            config.target.name(),
            config.target.url()
        );
    }
    let began = Instant::now();
    match &config.target {
        QueueTarget::Tally { url, shards } => {
            let (producers, consumers) = tally_setup(&config, url, *shards).await?;
            drive(config, began, producers, consumers, progress).await
        }
        #[cfg(feature = "jetstream")]
        QueueTarget::JetStream { url } => {
            let (producers, consumers) = crate::jetstream_queue::setup(&config, url).await?;
            drive(config, began, producers, consumers, progress).await
        }
        #[cfg(not(feature = "jetstream"))]
        QueueTarget::JetStream { .. } => bail!(
            "this binary has no NATS client (bench's `jetstream` feature keeps it out of \
             `tally`): run `bench-jetstream queue` with the same flags (cargo build --release \
             -p bench --features jetstream --bin bench-jetstream)"
        ),
        #[cfg(feature = "redis")]
        QueueTarget::Redis { url } => {
            let (producers, consumers) = crate::redis_queue::setup(&config, url).await?;
            drive(config, began, producers, consumers, progress).await
        }
        #[cfg(not(feature = "redis"))]
        QueueTarget::Redis { .. } => bail!(
            "this binary has no Redis client (bench's `redis` feature keeps it out of `tally`): \
             run `bench-redis` with the same flags (cargo build --release -p bench --features \
             redis --bin bench-redis)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Tally.

/// One client's HTTP connection to a gateway and the queue's URLs.
struct TallyClient {
    http: reqwest::Client,
    push_url: String,
    pop_url: String,
    ack_url: String,
}

/// A delivery as `POST /queues/{name}/pop` answers it.
#[derive(Deserialize)]
struct TallyDelivery {
    id: String,
    data: String,
    receipt: u64,
}

impl TallyClient {
    fn new(base: &str, queue: &str) -> anyhow::Result<TallyClient> {
        let http = crate::http::client_builder()?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .context("making an HTTP client")?;
        let queue_url = format!("{base}/queues/{queue}");
        Ok(TallyClient {
            http,
            push_url: format!("{queue_url}/push"),
            pop_url: format!(
                "{queue_url}/pop?group={GROUP}&wait_ms={}",
                POP_WAIT.as_millis()
            ),
            ack_url: format!("{queue_url}/ack"),
        })
    }

    /// Sends `request`; the answer's status and body, or an error for a failed request or a
    /// status other than 2xx.
    async fn send(
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(reqwest::StatusCode, Bytes), String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::root_cause(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("{url}: {status}: {text}"));
        }
        Ok((status, body))
    }
}

impl Producer for TallyClient {
    async fn push(&mut self, message: Bytes) -> Result<(), String> {
        let request = self.http.post(&self.push_url).body(message);
        TallyClient::send(request, &self.push_url).await.map(|_| ())
    }
}

impl Consumer for TallyClient {
    async fn pop_ack(&mut self) -> Result<Option<Bytes>, String> {
        let (status, body) =
            TallyClient::send(self.http.post(&self.pop_url), &self.pop_url).await?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let delivery: TallyDelivery = serde_json::from_slice(&body)
            .map_err(|e| format!("{}: not a delivery: {e}", self.pop_url))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&delivery.data)
            .map_err(|e| format!("{}: data is not base64: {e}", self.pop_url))?;
        let receipt = delivery.receipt.to_string();
        let request = self.http.post(&self.ack_url).query(&[
            ("group", GROUP),
            ("id", &delivery.id),
            ("receipt", &receipt),
        ]);
        TallyClient::send(request, &self.ack_url).await?;
        Ok(Some(Bytes::from(data)))
    }
}

/// Makes the queue with `shards` shards and the group (before any push, so the group sees
/// every message), then connects every client.
async fn tally_setup(
    config: &QueueConfig,
    base: &str,
    shards: u32,
) -> anyhow::Result<(Vec<TallyClient>, Vec<TallyClient>)> {
    let setup = TallyClient::new(base, &config.queue)?;
    let queue_url = format!("{base}/queues/{}", config.queue);
    let request = setup.http.put(&queue_url).query(&[("shards", shards)]);
    let (_, body) = TallyClient::send(request, &queue_url)
        .await
        .map_err(|e| anyhow::anyhow!("making the queue: {e}"))?;
    let answer: Value = serde_json::from_slice(&body).context("the queue's answer")?;
    ensure!(
        answer["shards"] == shards,
        "queue {} exists with {} shards, not {shards}",
        config.queue,
        answer["shards"]
    );
    let group_url = format!("{queue_url}/groups/{GROUP}");
    TallyClient::send(setup.http.put(&group_url), &group_url)
        .await
        .map_err(|e| anyhow::anyhow!("making the group: {e}"))?;
    let clients = |n: usize| {
        (0..n)
            .map(|_| TallyClient::new(base, &config.queue))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    Ok((clients(config.producers)?, clients(config.consumers)?))
}

// ---------------------------------------------------------------------------------------------
// The closed loops.

#[derive(Default)]
struct Shared {
    pushed_total: AtomicU64,
    acked_total: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means another client panicked; the join reports that.
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| message.to_string());
        }
    }
}

/// The window of a run, shared by every client.
#[derive(Clone, Copy)]
struct Window {
    measure_start: Instant,
    end: Instant,
}

struct Counts {
    push_latency_us: Histogram<u64>,
    pop_latency_us: Histogram<u64>,
    pushed: u64,
    acked: u64,
    empty_pops: u64,
    errors: u64,
}

impl Counts {
    fn new() -> Counts {
        let histogram = || {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid")
        };
        Counts {
            push_latency_us: histogram(),
            pop_latency_us: histogram(),
            pushed: 0,
            acked: 0,
            empty_pops: 0,
            errors: 0,
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.push_latency_us
            .add(&other.push_latency_us)
            .expect("histograms share bounds");
        self.pop_latency_us
            .add(&other.pop_latency_us)
            .expect("histograms share bounds");
        self.pushed += other.pushed;
        self.acked += other.acked;
        self.empty_pops += other.empty_pops;
        self.errors += other.errors;
    }
}

/// Producer `id`'s loop: push a new message, wait for the acknowledgement, again.
async fn produce(
    mut producer: impl Producer,
    id: u32,
    message_bytes: usize,
    window: Window,
    shared: Arc<Shared>,
) -> Counts {
    let mut counts = Counts::new();
    let mut counter = 0;
    while Instant::now() < window.end {
        let message = Bytes::from(filler(id, counter, message_bytes));
        counter += 1;
        let began = Instant::now();
        let measured = began >= window.measure_start;
        // A push still in flight at the end is abandoned, not counted.
        let Ok(outcome) = tokio::time::timeout_at(window.end, producer.push(message)).await else {
            break;
        };
        match outcome {
            Ok(()) => {
                shared.pushed_total.fetch_add(1, Ordering::Relaxed);
                if measured {
                    let latency_us = began.elapsed().as_micros() as u64;
                    counts.push_latency_us.saturating_record(latency_us.max(1));
                    counts.pushed += 1;
                }
            }
            Err(e) => {
                shared.error(&format!("push: {e}"));
                counts.errors += u64::from(measured);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    counts
}

/// A consumer's loop: pop a message, ack it, again.
async fn consume(mut consumer: impl Consumer, window: Window, shared: Arc<Shared>) -> Counts {
    let mut counts = Counts::new();
    while Instant::now() < window.end {
        let began = Instant::now();
        let measured = began >= window.measure_start;
        let Ok(outcome) = tokio::time::timeout_at(window.end, consumer.pop_ack()).await else {
            break;
        };
        match outcome {
            Ok(Some(message)) if filler_origin(&message).is_none() => {
                shared.error(&format!(
                    "popped a message of {} bytes that no producer of this run pushed",
                    message.len()
                ));
                counts.errors += u64::from(measured);
            }
            Ok(Some(_)) => {
                shared.acked_total.fetch_add(1, Ordering::Relaxed);
                if measured {
                    let latency_us = began.elapsed().as_micros() as u64;
                    counts.pop_latency_us.saturating_record(latency_us.max(1));
                    counts.acked += 1;
                }
            }
            Ok(None) => counts.empty_pops += u64::from(measured),
            Err(e) => {
                shared.error(&format!("pop and ack: {e}"));
                counts.errors += u64::from(measured);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    counts
}

/// Runs the producers and consumers of a set-up queue side by side; `began` is when the setup
/// phase began.
async fn drive(
    config: QueueConfig,
    began: Instant,
    producers: Vec<impl Producer>,
    consumers: Vec<impl Consumer>,
    progress: bool,
) -> anyhow::Result<QueueReport> {
    let setup_s = began.elapsed().as_secs_f64();
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let window = Window {
        measure_start: start + config.warmup,
        end: start + config.warmup + config.duration,
    };
    let started_unix_ms = unix_ms(SystemTime::now() + config.warmup);
    // The system's CPU time at the start and the end of the measured window.
    let cpu = crate::cpu::window(&config.cpu_pids, window.measure_start, window.end);
    let display = Progress::start(
        progress.then_some("queue"),
        "ack",
        Timeline {
            start,
            measure_start: window.measure_start,
            end: window.end,
        },
        {
            let shared = Arc::clone(&shared);
            move || {
                (
                    shared.acked_total.load(Ordering::Relaxed),
                    shared.errors.load(Ordering::Relaxed),
                )
            }
        },
    );
    let mut tasks = Vec::with_capacity(config.producers + config.consumers);
    for (id, producer) in producers.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let bytes = config.message_bytes;
        tasks.push(tokio::spawn(produce(
            producer, id as u32, bytes, window, shared,
        )));
    }
    for consumer in consumers {
        tasks.push(tokio::spawn(consume(consumer, window, Arc::clone(&shared))));
    }
    let mut total = Counts::new();
    let mut panic = None;
    for task in tasks {
        match task.await {
            Ok(counts) => total.merge(&counts),
            Err(e) => panic = Some(e),
        }
    }
    let finished = Instant::now();
    display.finish().await;
    if let Some(e) = panic {
        bail!("a benchmark client panicked: {e}");
    }
    let first_error = shared.first_error.lock().ok().and_then(|f| f.clone());
    let pushed_total = shared.pushed_total.load(Ordering::Relaxed);
    let acked_total = shared.acked_total.load(Ordering::Relaxed);
    if pushed_total == 0 {
        bail!(
            "no push was acknowledged: {}",
            first_error.as_deref().unwrap_or("no answer before the end")
        );
    }
    let elapsed_s = finished
        .saturating_duration_since(window.measure_start)
        .as_secs_f64();
    let per_s = |n: u64| {
        if elapsed_s > 0.0 {
            n as f64 / elapsed_s
        } else {
            0.0
        }
    };
    let server_cpu_s = match cpu {
        Some(task) => Some(task.await?),
        None => None,
    };
    Ok(QueueReport {
        setup_s,
        pushed: total.pushed,
        acked: total.acked,
        empty_pops: total.empty_pops,
        errors: total.errors,
        elapsed_s,
        pushed_per_s: per_s(total.pushed),
        acked_per_s: per_s(total.acked),
        push_latency_us: Percentiles::from_histogram(&total.push_latency_us),
        pop_latency_us: Percentiles::from_histogram(&total.pop_latency_us),
        pushed_total,
        acked_total,
        backlog: pushed_total.saturating_sub(acked_total),
        first_error,
        started_unix_ms,
        server_cpu_s,
        acked_per_cpu_s: server_cpu_s
            .filter(|s| *s > 0.0)
            .map(|s| total.acked as f64 / s),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config() -> QueueConfig {
        QueueConfig {
            target: QueueTarget::Tally {
                url: "http://127.0.0.1:8080".into(),
                shards: 4,
            },
            queue: "qbench-1".into(),
            producers: 4,
            consumers: 4,
            message_bytes: 1024,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            cpu_pids: vec![],
        }
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let check = |change: fn(&mut QueueConfig), expect: &str| {
            let mut c = config();
            change(&mut c);
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains(expect), "{error:?} lacks {expect:?}");
        };
        assert!(config().validate().is_ok());
        check(|c| c.producers = 0, "producers must be");
        check(|c| c.consumers = QUEUE_CLIENTS_MAX + 1, "consumers must be");
        check(
            |c| c.message_bytes = FILLER_HEADER_BYTES - 1,
            "message size",
        );
        check(|c| c.message_bytes = MESSAGE_BYTES_MAX + 1, "message size");
        check(|c| c.duration = Duration::ZERO, "duration");
        check(|c| c.queue = "a.b".into(), "bad queue name");
        check(|c| c.queue = String::new(), "bad queue name");
        check(
            |c| c.queue = "q".repeat(QUEUE_NAME_BYTES_MAX + 1),
            "bad queue name",
        );
        check(
            |c| {
                c.target = QueueTarget::Tally {
                    url: "http://127.0.0.1:1".into(),
                    shards: SHARDS_MAX + 1,
                }
            },
            "shards must be",
        );
        check(
            |c| {
                c.target = QueueTarget::JetStream {
                    url: "redis://127.0.0.1:1".into(),
                }
            },
            "nats://",
        );
    }

    /// The flags of `bench-redis` and the others, parsed as a binary would.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        queue: QueueArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<QueueConfig> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        cli.queue.config()
    }

    #[test]
    fn flags_pick_one_system_and_tally_gets_a_shard_per_consumer() {
        let c = parse(&["--consumers", "16", "--queue", "q"]).unwrap();
        assert_eq!(
            c.target,
            QueueTarget::Tally {
                url: "http://127.0.0.1:8080".into(),
                shards: 16
            }
        );
        let c = parse(&["--consumers", "1000", "--queue", "q"]).unwrap();
        assert_eq!(c.target.name(), "tally");
        assert!(matches!(c.target, QueueTarget::Tally { shards: 256, .. }));
        let c = parse(&["--nats", "127.0.0.1:4222", "--queue", "q"]).unwrap();
        assert_eq!(
            c.target,
            QueueTarget::JetStream {
                url: "nats://127.0.0.1:4222".into()
            }
        );
        let c = parse(&["--redis", "redis://127.0.0.1:6379/"]).unwrap();
        assert_eq!(
            c.target,
            QueueTarget::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert!(c.queue.starts_with("qbench-"), "{}", c.queue);
        assert!(parse(&["--nats", "127.0.0.1:1", "--redis", "127.0.0.1:2"]).is_err());
        assert!(parse(&["--addr", "127.0.0.1:1", "--redis", "127.0.0.1:2"]).is_err());
        assert!(parse(&["--redis", "127.0.0.1:2", "--shards", "4"]).is_err());
        assert!(parse(&["--nats", "http://127.0.0.1:4222"]).is_err());
    }

    #[test]
    fn json_report_has_the_configuration_rates_latencies_and_backlog() {
        let report = QueueReport {
            config: config(),
            setup_s: 0.1,
            pushed: 100,
            acked: 90,
            empty_pops: 2,
            errors: 0,
            elapsed_s: 1.0,
            pushed_per_s: 100.0,
            acked_per_s: 90.0,
            push_latency_us: Percentiles::default(),
            pop_latency_us: Percentiles::default(),
            pushed_total: 120,
            acked_total: 110,
            backlog: 10,
            first_error: None,
            started_unix_ms: 0,
            server_cpu_s: Some(0.5),
            acked_per_cpu_s: Some(180.0),
        };
        let json = report.to_json();
        assert_eq!(json["benchmark"], "queue");
        assert_eq!(json["group"], GROUP);
        assert_eq!(json["pop_wait_ms"], 1000);
        let c = &json["config"];
        assert_eq!(c["target"]["system"], "tally");
        assert_eq!(c["target"]["shards"], 4);
        assert_eq!(c["producers"], 4);
        assert_eq!(c["consumers"], 4);
        assert_eq!(c["message_bytes"], 1024);
        assert_eq!(c["duration_s"], 1.0);
        for field in [
            "acked_per_s",
            "pushed_per_s",
            "push_latency_us",
            "pop_latency_us",
            "backlog",
            "errors",
            "empty_pops",
            "acked_per_cpu_s",
        ] {
            assert!(json.get(field).is_some(), "no {field}");
        }
        assert_eq!(json["push_latency_us"]["p99"], 0);
        let human = report.human();
        assert!(human.starts_with("queue benchmark"), "{human}");
        assert!(human.contains("backlog       10 at the end"), "{human}");
        assert!(human.contains("180.0 acked per CPU second"), "{human}");
    }

    #[test]
    fn other_systems_serialize_under_their_own_names() {
        let name = |target: QueueTarget| serde_json::to_value(target).unwrap()["system"].clone();
        assert_eq!(
            name(QueueTarget::JetStream {
                url: "nats://h:1".into()
            }),
            "jetstream"
        );
        assert_eq!(
            name(QueueTarget::Redis {
                url: "redis://h:1".into()
            }),
            "redis"
        );
    }
}
