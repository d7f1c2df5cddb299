//! The closed-loop append benchmark: `clients` tasks, spread round-robin over the gateway
//! addresses, each append a record, wait for its seqnum, and append again until the duration
//! ends. It measures latency per client and merges the histograms at the end; the only state
//! shared per append is a pair of atomic counters for progress.
//!
//! It keeps going when requests start failing after some were acknowledged (a crash test kills
//! the server mid-run and then checks the ack log), but gives up quickly when nothing has ever
//! succeeded, so a wrong address is an error rather than a report of zeros.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::ack_log::{write_acks, Ack, ACK_QUEUE_DEPTH};
use crate::filler::{filler, FILLER_HEADER_BYTES};
use crate::progress::{Progress, Timeline};
use crate::report::{AppendReport, Percentiles};

pub const CLIENTS_MAX: usize = 4096;
pub const RECORD_BYTES_MAX: usize = 16 << 20;
pub const TAGS_MAX: usize = 1 << 20;
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 60 * 60);

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between attempts after a failure, doubling from min to max, reset by a success.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Retries of one record answered `discarded`/`unavailable` before it counts as an error.
const RETRIES_PER_RECORD_MAX: u32 = 50;
/// Failures in a row, by one client, with nothing acknowledged by anyone, that end the run.
const FAILURES_BEFORE_ABORT: u32 = 3;
const LATENCY_US_MAX: u64 = 60_000_000;

/// What to run. `Default` gives one local gateway, 4 clients, 1 KiB records for 10 s.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppendConfig {
    /// Gateway addresses, "host:port" or "http://host:port"; clients are spread round-robin.
    pub addrs: Vec<String>,
    /// Concurrent closed-loop clients, each with one append in flight.
    pub clients: usize,
    pub record_bytes: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    /// Distinct tags to spread records over, round-robin over 1..=tags; 0 means untagged.
    pub tags: usize,
    pub book: u32,
    /// Time spent appending before measuring starts; appends during it are not counted.
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
    /// When set, every acknowledged append (warmup included) is written there as a line
    /// `seqnum client counter`; see `read_ack_log`.
    pub ack_log: Option<PathBuf>,
}

fn as_secs_f64<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64())
}

impl Default for AppendConfig {
    fn default() -> AppendConfig {
        AppendConfig {
            addrs: vec!["127.0.0.1:8080".to_string()],
            clients: 4,
            record_bytes: 1024,
            duration: Duration::from_secs(10),
            tags: 0,
            book: 1,
            warmup: Duration::ZERO,
            ack_log: None,
        }
    }
}

impl AppendConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.addrs.is_empty(), "no gateway address given");
        for addr in &self.addrs {
            base_url(addr)?;
        }
        ensure!(
            (1..=CLIENTS_MAX).contains(&self.clients),
            "clients must be 1..={CLIENTS_MAX}, not {}",
            self.clients
        );
        ensure!(
            (FILLER_HEADER_BYTES..=RECORD_BYTES_MAX).contains(&self.record_bytes),
            "record_bytes must be {FILLER_HEADER_BYTES}..={RECORD_BYTES_MAX} (each record \
             starts with its client id and counter), not {}",
            self.record_bytes
        );
        ensure!(
            self.tags <= TAGS_MAX,
            "tags must be at most {TAGS_MAX}, not {}",
            self.tags
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
        Ok(())
    }
}

/// A gateway address, "host:port" or "http://host:port[/]", as "http://host:port".
pub fn base_url(addr: &str) -> anyhow::Result<String> {
    let addr = addr.trim().trim_end_matches('/');
    ensure!(
        !addr.starts_with("https://"),
        "{addr}: https is not supported, gateways speak plain HTTP"
    );
    let url = if addr.starts_with("http://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let parsed =
        reqwest::Url::parse(&url).with_context(|| format!("bad gateway address {addr:?}"))?;
    ensure!(
        parsed.host().is_some() && parsed.path() == "/" && parsed.query().is_none(),
        "bad gateway address {addr:?}: expected host:port"
    );
    Ok(url)
}

/// One gateway and the connection pool its clients share.
struct Target {
    addr: String,
    base: String,
    http: reqwest::Client,
}

impl Target {
    fn new(addr: &str, pool_size: usize) -> anyhow::Result<Target> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(pool_size)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Target {
            addr: addr.trim().to_string(),
            base: base_url(addr)?,
            http,
        })
    }
}

#[derive(Default)]
struct Shared {
    /// Acknowledged appends by every client, warmup included.
    acked: AtomicU64,
    errors: AtomicU64,
    /// Set when the run must end early: nothing succeeds, or the ack log failed.
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means another client panicked; the join reports that.
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| message.to_string());
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|first| first.clone())
    }
}

/// One client's measurements, merged with the others' at the end.
struct Tally {
    latency_us: Histogram<u64>,
    appends: u64,
    errors: u64,
    retried: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            appends: 0,
            errors: 0,
            retried: 0,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        self.appends += other.appends;
        self.errors += other.errors;
        self.retried += other.retried;
    }
}

/// Runs the benchmark described by `config`; shows progress on stderr when `progress`.
///
/// Fails when the configuration is invalid, the ack log cannot be written, or no append at all
/// was acknowledged (with the first error seen, e.g. "cannot connect to ADDR: connection
/// refused").
pub async fn run_append(config: AppendConfig, progress: bool) -> anyhow::Result<AppendReport> {
    config.validate()?;
    let pool_size = config.clients.div_ceil(config.addrs.len());
    let targets = config
        .addrs
        .iter()
        .map(|addr| Target::new(addr, pool_size).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (ack_tx, ack_writer) = match &config.ack_log {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create ack log {}", path.display()))?;
            let (tx, rx) = mpsc::channel(ACK_QUEUE_DEPTH);
            (Some(tx), Some(tokio::spawn(write_acks(file, rx))))
        }
        None => (None, None),
    };

    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    let started_unix_ms = (SystemTime::now() + config.warmup)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let progress = Progress::start(
        progress,
        Timeline {
            start,
            measure_start,
            end,
        },
        {
            let shared = Arc::clone(&shared);
            move || {
                (
                    shared.acked.load(Ordering::Relaxed),
                    shared.errors.load(Ordering::Relaxed),
                )
            }
        },
    );

    let workers: Vec<_> = (0..config.clients)
        .map(|client| {
            let worker = Worker {
                client: client as u32,
                target: Arc::clone(&targets[client % targets.len()]),
                book: config.book,
                record_bytes: config.record_bytes,
                tags: config.tags as u64,
                shared: Arc::clone(&shared),
                ack_tx: ack_tx.clone(),
                measure_start,
                end,
            };
            tokio::spawn(worker.run())
        })
        .collect();
    // The writer ends once the last worker drops its sender.
    drop(ack_tx);

    let mut total = Tally::new();
    let mut panic = None;
    for worker in workers {
        match worker.await {
            Ok(tally) => total.merge(&tally),
            Err(e) => panic = Some(e),
        }
    }
    let finished = Instant::now();
    progress.finish().await;
    if let Some(writer) = ack_writer {
        let path = config.ack_log.as_deref().unwrap_or_else(|| "?".as_ref());
        writer
            .await
            .context("the ack log writer panicked")?
            .with_context(|| format!("writing ack log {}", path.display()))?;
    }
    if let Some(e) = panic {
        bail!("a benchmark client panicked: {e}");
    }
    if shared.acked.load(Ordering::Relaxed) == 0 {
        let reason = shared.first_error().unwrap_or_else(|| {
            format!("no reply within {:.1} s", (finished - start).as_secs_f64())
        });
        bail!("no append was acknowledged: {reason}");
    }

    let elapsed_s = finished
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    let per_s = |n: f64| if elapsed_s > 0.0 { n / elapsed_s } else { 0.0 };
    Ok(AppendReport {
        appends: total.appends,
        errors: total.errors,
        retried: total.retried,
        elapsed_s,
        appends_per_s: per_s(total.appends as f64),
        mb_per_s: per_s(total.appends as f64 * config.record_bytes as f64 / 1e6),
        latency_us: Percentiles::from_histogram(&total.latency_us),
        first_error: shared.first_error(),
        started_unix_ms,
        config,
    })
}

struct Worker {
    client: u32,
    target: Arc<Target>,
    book: u32,
    record_bytes: usize,
    tags: u64,
    shared: Arc<Shared>,
    ack_tx: Option<mpsc::Sender<Ack>>,
    measure_start: Instant,
    end: Instant,
}

impl Worker {
    async fn run(self) -> Tally {
        let mut tally = Tally::new();
        let mut backoff = BACKOFF_MIN;
        let mut failures_in_row = 0u32;
        // Bounded by `end`: every iteration either finishes before it or breaks out.
        for counter in 0u64.. {
            if Instant::now() >= self.end || self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let record = Bytes::from(filler(self.client, counter, self.record_bytes));
            let tag = match self.tags {
                0 => 0,
                tags => 1 + (u64::from(self.client) % tags + counter % tags) % tags,
            };
            let began = Instant::now();
            let measured = began >= self.measure_start;
            // An append still in flight at the end is abandoned: it was never acknowledged.
            let Ok((outcome, retries)) =
                tokio::time::timeout_at(self.end, self.append_with_retries(tag, record)).await
            else {
                break;
            };
            if measured {
                tally.retried += u64::from(retries);
            }
            match outcome {
                Ok(seqnum) => {
                    let latency_us = began.elapsed().as_micros() as u64;
                    if measured {
                        tally.latency_us.saturating_record(latency_us.max(1));
                        tally.appends += 1;
                    }
                    self.shared.acked.fetch_add(1, Ordering::Relaxed);
                    backoff = BACKOFF_MIN;
                    failures_in_row = 0;
                    if let Some(tx) = &self.ack_tx {
                        let ack = Ack {
                            seqnum,
                            client: self.client,
                            counter,
                        };
                        if tx.send(ack).await.is_err() {
                            self.shared.note_error("the ack log writer stopped");
                            self.shared.stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                Err(message) => {
                    if measured {
                        tally.errors += 1;
                    }
                    self.shared.note_error(&message);
                    failures_in_row += 1;
                    if failures_in_row >= FAILURES_BEFORE_ABORT
                        && self.shared.acked.load(Ordering::Relaxed) == 0
                    {
                        self.shared.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    // Pause so a dead server is not hammered in a tight loop.
                    tokio::time::sleep_until((Instant::now() + backoff).min(self.end)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tally
    }

    /// Appends `record`, retrying `discarded`/`unavailable` with a capped backoff. Returns the
    /// seqnum or the error, and how many retries it took.
    async fn append_with_retries(&self, tag: u64, record: Bytes) -> (Result<u64, String>, u32) {
        let mut backoff = BACKOFF_MIN;
        let mut retries = 0;
        loop {
            match append_once(&self.target, self.book, tag, record.clone()).await {
                Ok(seqnum) => return (Ok(seqnum), retries),
                Err(Failure::Retryable(_)) if retries < RETRIES_PER_RECORD_MAX => {
                    retries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(Failure::Retryable(message) | Failure::Fatal(message)) => {
                    return (Err(message), retries)
                }
            }
        }
    }
}

enum Failure {
    /// `discarded` or `unavailable`: the same record may be sent again.
    Retryable(String),
    Fatal(String),
}

#[derive(Deserialize)]
struct AppendReply {
    seqnum: u64,
}

/// A gateway's error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Deserialize)]
pub struct ErrorReply {
    pub error: ErrorBody,
}

#[derive(Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

async fn append_once(target: &Target, book: u32, tag: u64, record: Bytes) -> Result<u64, Failure> {
    let url = match tag {
        0 => format!("{}/log/{book}/append", target.base),
        tag => format!("{}/log/{book}/append?tag={tag}", target.base),
    };
    let response = target
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(record)
        .send()
        .await
        .map_err(|e| Failure::Fatal(describe_request_error(&target.addr, &e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| Failure::Fatal(describe_request_error(&target.addr, &e)))?;
    if status.is_success() {
        return serde_json::from_slice::<AppendReply>(&body)
            .map(|r| r.seqnum)
            .map_err(|e| {
                Failure::Fatal(format!(
                    "{}: bad append reply ({e}): {}",
                    target.addr,
                    snippet(&body)
                ))
            });
    }
    Err(classify_error_reply(&target.addr, status, &body))
}

fn classify_error_reply(addr: &str, status: reqwest::StatusCode, body: &[u8]) -> Failure {
    match serde_json::from_slice::<ErrorReply>(body) {
        Ok(ErrorReply { error }) => {
            let message = format!("{addr}: {} ({status}): {}", error.code, error.message);
            match error.code.as_str() {
                "discarded" | "unavailable" => Failure::Retryable(message),
                _ => Failure::Fatal(message),
            }
        }
        // No JSON body: a proxy or a server starting up; only 503 is worth retrying.
        Err(_) if status == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
            Failure::Retryable(format!("{addr}: {status}: {}", snippet(body)))
        }
        Err(_) => Failure::Fatal(format!("{addr}: {status}: {}", snippet(body))),
    }
}

fn snippet(body: &[u8]) -> String {
    const SNIPPET_BYTES_MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_BYTES_MAX)]);
    text.trim().to_string()
}

/// A transport failure in words: "cannot connect to ADDR: connection refused".
fn describe_request_error(addr: &str, error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("request to {addr} timed out");
    }
    let cause = root_cause(error);
    if error.is_connect() {
        format!("cannot connect to {addr}: {cause}")
    } else {
        format!("request to {addr} failed: {cause}")
    }
}

/// The innermost cause of an error chain in words, naming refused and reset connections
/// plainly.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(error);
    let mut last = error.to_string();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
                _ => io.to_string(),
            };
        }
        last = e.to_string();
        source = e.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};

    use super::*;
    use crate::{filler_origin, read_ack_log};

    /// A minimal HTTP/1.1 gateway stand-in: appends get the next seqnum (the index of the stored
    /// body), except every `discard_every`-th attempt, answered `discarded`.
    #[derive(Default)]
    struct FakeGateway {
        discard_every: u64,
        attempts: AtomicU64,
        /// (request line, body) per stored record; the seqnum is the index.
        records: Mutex<Vec<(String, Vec<u8>)>>,
    }

    impl FakeGateway {
        fn answer(&self, request_line: &str, body: Vec<u8>) -> (&'static str, String) {
            if !request_line.starts_with("POST /log/") {
                return ("200 OK", r#"{"status":"ok"}"#.into());
            }
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if attempt.checked_rem(self.discard_every) == Some(0) {
                let reply = r#"{"error":{"code":"discarded","message":"view changed"}}"#;
                return ("503 Service Unavailable", reply.into());
            }
            let mut records = self.records.lock().unwrap();
            records.push((request_line.to_string(), body));
            ("200 OK", format!(r#"{{"seqnum":{}}}"#, records.len() - 1))
        }

        fn record_count(&self) -> usize {
            self.records.lock().unwrap().len()
        }
    }

    /// Serves until the returned task is aborted; aborting drops every connection too.
    async fn serve(gateway: Arc<FakeGateway>) -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.spawn(serve_connection(stream, Arc::clone(&gateway)));
            }
        });
        (addr, task)
    }

    async fn serve_connection(stream: TcpStream, gateway: Arc<FakeGateway>) -> std::io::Result<()> {
        let mut stream = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if stream.read_line(&mut request_line).await? == 0 {
                return Ok(());
            }
            let mut content_length = 0;
            loop {
                let mut header = String::new();
                stream.read_line(&mut header).await?;
                let header = header.trim_end().to_ascii_lowercase();
                if header.is_empty() {
                    break;
                }
                if let Some(value) = header.strip_prefix("content-length:") {
                    content_length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; content_length];
            stream.read_exact(&mut body).await?;
            let (status, reply) = gateway.answer(request_line.trim_end(), body);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                reply.len()
            );
            stream.get_mut().write_all(response.as_bytes()).await?;
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tally-bench-{}-{name}", std::process::id()))
    }

    fn config(addr: &str, duration_ms: u64, ack_log: Option<&Path>) -> AppendConfig {
        AppendConfig {
            addrs: vec![addr.to_string()],
            clients: 3,
            record_bytes: 64,
            duration: Duration::from_millis(duration_ms),
            tags: 2,
            book: 5,
            warmup: Duration::ZERO,
            ack_log: ack_log.map(Path::to_path_buf),
        }
    }

    /// Every ack names a stored record at its seqnum whose body the acking client wrote.
    fn check_acks_match_records(acks: &[Ack], gateway: &FakeGateway) {
        let records = gateway.records.lock().unwrap();
        for ack in acks {
            let (_, body) = &records[ack.seqnum as usize];
            assert_eq!(
                filler_origin(body),
                Some((ack.client, ack.counter)),
                "{ack:?}"
            );
        }
        let mut seqnums: Vec<u64> = acks.iter().map(|a| a.seqnum).collect();
        seqnums.sort_unstable();
        seqnums.dedup();
        assert_eq!(seqnums.len(), acks.len(), "a seqnum was acknowledged twice");
    }

    #[tokio::test]
    async fn appends_are_counted_and_each_ack_is_logged_with_its_seqnum() {
        let gateway = Arc::new(FakeGateway::default());
        let (addr, server) = serve(Arc::clone(&gateway)).await;
        let log = temp_path("acks-counted");
        let report = run_append(config(&addr, 400, Some(&log)), false)
            .await
            .unwrap();
        server.abort();

        assert!(report.appends > 10, "{report:?}");
        assert_eq!((report.errors, report.retried), (0, 0));
        assert!(report.latency_us.p50 > 0 && report.latency_us.max >= report.latency_us.p99);
        assert!(
            report.elapsed_s >= 0.4 && report.elapsed_s < 2.0,
            "{}",
            report.elapsed_s
        );
        let acks = read_ack_log(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(acks.len() as u64, report.appends);
        check_acks_match_records(&acks, &gateway);
        let records = gateway.records.lock().unwrap();
        for tag in ["?tag=1 ", "?tag=2 "] {
            assert!(
                records.iter().any(|(line, _)| line.contains(tag)),
                "no {tag}"
            );
        }
        assert!(records
            .iter()
            .all(|(line, _)| line.starts_with("POST /log/5/append?tag=")));
    }

    #[tokio::test]
    async fn discarded_appends_are_retried_not_counted_as_errors() {
        let gateway = Arc::new(FakeGateway {
            discard_every: 3,
            ..FakeGateway::default()
        });
        let (addr, server) = serve(Arc::clone(&gateway)).await;
        let log = temp_path("acks-retried");
        let report = run_append(config(&addr, 300, Some(&log)), false)
            .await
            .unwrap();
        server.abort();

        assert!(report.retried > 0 && report.appends > 0, "{report:?}");
        assert_eq!(report.errors, 0);
        let acks = read_ack_log(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        check_acks_match_records(&acks, &gateway);
    }

    #[tokio::test]
    async fn server_killed_mid_run_counts_errors_and_keeps_every_ack() {
        let gateway = Arc::new(FakeGateway::default());
        let (addr, server) = serve(Arc::clone(&gateway)).await;
        let log = temp_path("acks-killed");
        let run = tokio::spawn(run_append(config(&addr, 1200, Some(&log)), false));
        while gateway.record_count() < 50 {
            tokio::task::yield_now().await;
        }
        server.abort();
        let report = run.await.unwrap().unwrap();

        assert!(report.appends >= 50 && report.errors > 0, "{report:?}");
        assert!(report.elapsed_s >= 1.2, "stopped early: {report:?}");
        let first_error = report.first_error.as_deref().unwrap_or_default();
        assert!(first_error.contains(&addr), "{first_error}");
        let acks = read_ack_log(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(acks.len() as u64, report.appends);
        check_acks_match_records(&acks, &gateway);
    }

    #[tokio::test]
    async fn no_server_fails_fast_with_connection_refused() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let began = Instant::now();
        let error = run_append(config(&addr, 10_000, None), false)
            .await
            .unwrap_err();
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "took {:?}",
            began.elapsed()
        );
        let expect =
            format!("no append was acknowledged: cannot connect to {addr}: connection refused");
        assert_eq!(error.to_string(), expect);
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let check = |change: fn(&mut AppendConfig), expect: &str| {
            let mut config = AppendConfig::default();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(expect), "{error:?} lacks {expect:?}");
        };
        assert!(AppendConfig::default().validate().is_ok());
        check(|c| c.addrs.clear(), "no gateway address");
        check(
            |c| c.addrs = vec!["https://x:1".into()],
            "https is not supported",
        );
        check(|c| c.addrs = vec!["x:1/path".into()], "expected host:port");
        check(|c| c.clients = 0, "clients must be");
        check(|c| c.clients = CLIENTS_MAX + 1, "clients must be");
        check(
            |c| c.record_bytes = FILLER_HEADER_BYTES - 1,
            "record_bytes must be",
        );
        check(
            |c| c.record_bytes = RECORD_BYTES_MAX + 1,
            "record_bytes must be",
        );
        check(|c| c.tags = TAGS_MAX + 1, "tags must be");
        check(|c| c.duration = Duration::ZERO, "duration must be");
        check(|c| c.warmup = DURATION_MAX * 2, "warmup must be");
    }

    #[test]
    fn addresses_accept_host_port_or_http_url() {
        let check = |addr: &str, expect: &str| assert_eq!(base_url(addr).unwrap(), expect);
        check("127.0.0.1:8080", "http://127.0.0.1:8080");
        check("http://127.0.0.1:8080", "http://127.0.0.1:8080");
        check(" http://localhost:9/ ", "http://localhost:9");
        check("[::1]:80", "http://[::1]:80");
    }

    #[test]
    fn error_replies_are_classified_by_code() {
        let check = |status: u16, body: &str, retryable: bool, expect: &str| {
            let status = reqwest::StatusCode::from_u16(status).unwrap();
            let (got_retryable, message) =
                match classify_error_reply("a:1", status, body.as_bytes()) {
                    Failure::Retryable(m) => (true, m),
                    Failure::Fatal(m) => (false, m),
                };
            assert_eq!((got_retryable, message.as_str()), (retryable, expect));
        };
        let error = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        check(
            503,
            &error("discarded"),
            true,
            "a:1: discarded (503 Service Unavailable): m",
        );
        check(
            503,
            &error("unavailable"),
            true,
            "a:1: unavailable (503 Service Unavailable): m",
        );
        check(
            413,
            &error("too_large"),
            false,
            "a:1: too_large (413 Payload Too Large): m",
        );
        check(503, "busy", true, "a:1: 503 Service Unavailable: busy");
        check(502, "", false, "a:1: 502 Bad Gateway: ");
    }
}
