//! The append benchmark against Tally: closed-loop clients (see `closed_loop`), spread
//! round-robin over the gateway addresses, each append a record (over HTTP, or over the log
//! protocol with a connection of its own), wait for its seqnum, and append again until the
//! duration ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

use crate::closed_loop::{self, Failure, Load};
use crate::report::{AppendReport, RunConfig};

pub use crate::closed_loop::{CLIENTS_MAX, DURATION_MAX, RECORD_BYTES_MAX};
pub const TAGS_MAX: usize = 1 << 20;

pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The size of an append benchmark's closed loop, as every append benchmark's command line
/// takes it (`tally bench append`, `bench-jetstream`, `bench-redis append`).
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Concurrent clients, each with its own connection and one append in flight.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

impl LoadArgs {
    /// The duration, checked to be at least a second.
    pub fn duration(&self) -> anyhow::Result<Duration> {
        ensure!(self.duration > 0, "--duration must be at least 1 second");
        Ok(Duration::from_secs(self.duration))
    }
}

/// How appends reach the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `POST /log/{book}/append` at the gateway's HTTP address.
    Http,
    /// The log protocol (gRPC, `tally-client`) at the gateway's worker address.
    Grpc,
}

/// What to run. `Default` gives one local gateway, 4 clients, 1 KiB records for 10 s.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppendConfig {
    /// Gateway addresses, "host:port" or "http://host:port"; clients are spread round-robin.
    /// With `Protocol::Grpc`, the addresses of the log protocol.
    pub addrs: Vec<String>,
    pub protocol: Protocol,
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

pub(crate) fn as_secs_f64<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64())
}

impl Default for AppendConfig {
    fn default() -> AppendConfig {
        AppendConfig {
            addrs: vec!["127.0.0.1:8080".to_string()],
            protocol: Protocol::Http,
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
        self.load().validate()?;
        ensure!(
            self.tags <= TAGS_MAX,
            "tags must be at most {TAGS_MAX}, not {}",
            self.tags
        );
        Ok(())
    }

    fn load(&self) -> Load {
        Load::filler(self.clients, self.record_bytes, self.duration, self.warmup)
    }
}

impl RunConfig for AppendConfig {
    const TITLE: &'static str = "append benchmark";
    const BENCHMARK: &'static str = "append";
    const TOOL: &'static str = "tally-bench";

    fn describe(&self) -> Vec<(&'static str, String)> {
        let tags = match self.tags {
            0 => "0 (untagged)".to_string(),
            n => format!("{n} (round-robin over 1..={n})"),
        };
        let protocol = match self.protocol {
            Protocol::Http => "http (POST /log/{book}/append)",
            Protocol::Grpc => "grpc (the log protocol, a connection per client)",
        };
        let mut lines = vec![
            ("addrs", self.addrs.join(", ")),
            ("protocol", protocol.to_string()),
            ("book", self.book.to_string()),
            ("clients", self.clients.to_string()),
            ("record_bytes", self.record_bytes.to_string()),
            ("tags", tags),
            closed_loop::duration_line(self.duration, self.warmup),
        ];
        if let Some(path) = &self.ack_log {
            lines.push(("ack_log", path.display().to_string()));
        }
        lines
    }
}

/// A gateway address, "host:port" or "http(s)://host:port[/]", as "http://host:port" (or
/// "https://...": `TALLY_CA` names the CA to trust, `http::client_builder`).
pub fn base_url(addr: &str) -> anyhow::Result<String> {
    let addr = addr.trim().trim_end_matches('/');
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
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

/// A server address, "host:port" or "SCHEME://host:port[/]", as "SCHEME://host:port" (NATS's
/// "nats", Redis's "redis").
pub(crate) fn scheme_url(addr: &str, scheme: &str) -> anyhow::Result<String> {
    let addr = addr.trim().trim_end_matches('/');
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("bad server {addr:?}"))?;
    ensure!(
        parsed.scheme() == scheme
            && parsed.host().is_some()
            && parsed.port().is_some()
            && parsed.path().is_empty(),
        "bad server {addr:?}: expected {scheme}://host:port"
    );
    Ok(url)
}

/// One gateway and the connection pool its clients share.
struct Gateway {
    addr: String,
    base: String,
    http: reqwest::Client,
    book: u32,
    tags: u64,
}

impl Gateway {
    fn new(addr: &str, pool_size: usize, book: u32, tags: u64) -> anyhow::Result<Gateway> {
        let http = crate::http::client_builder()?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(pool_size)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Gateway {
            addr: addr.trim().to_string(),
            base: base_url(addr)?,
            http,
            book,
            tags,
        })
    }
}

/// The tag of a client's `counter`-th record: round-robin over 1..=tags, each client starting
/// at its own; 0 (untagged) when `tags` is 0.
fn tag_of(tags: u64, client: u32, counter: u64) -> u64 {
    match tags {
        0 => 0,
        tags => 1 + (u64::from(client) % tags + counter % tags) % tags,
    }
}

impl closed_loop::Target for Gateway {
    const OPERATION: &'static str = "append";

    async fn attempt(&self, client: u32, counter: u64, record: Bytes) -> Result<u64, Failure> {
        append_once(self, tag_of(self.tags, client, counter), record).await
    }
}

/// One client's connection to the log protocol.
struct LogProtocol {
    client: tally_client::LogClient,
    book: logbook::BookId,
    tags: u64,
}

impl closed_loop::Target for LogProtocol {
    const OPERATION: &'static str = "append";

    async fn attempt(&self, client: u32, counter: u64, record: Bytes) -> Result<u64, Failure> {
        let tags = match tag_of(self.tags, client, counter) {
            0 => Vec::new(),
            tag => vec![logbook::Tag(tag)],
        };
        match self.client.append(self.book, &tags, record).await {
            Ok(seqnum) => Ok(seqnum.0),
            Err(
                e @ tally_client::Error::Append {
                    retryable: true, ..
                },
            ) => Err(Failure::Retryable(e.to_string())),
            Err(e) => Err(Failure::Fatal(e.to_string())),
        }
    }
}

/// Runs the benchmark described by `config`; shows progress on stderr when `progress`.
///
/// Fails when the configuration is invalid, the ack log cannot be written, or no append at all
/// was acknowledged (with the first error seen, e.g. "cannot connect to ADDR: connection
/// refused").
pub async fn run_append(config: AppendConfig, progress: bool) -> anyhow::Result<AppendReport> {
    config.validate()?;
    match config.protocol {
        Protocol::Http => {
            let pool_size = config.clients.div_ceil(config.addrs.len());
            let gateways = config
                .addrs
                .iter()
                .map(|addr| {
                    Gateway::new(addr, pool_size, config.book, config.tags as u64).map(Arc::new)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            measure(config, &gateways, progress).await
        }
        Protocol::Grpc => {
            // A connection per client, clients spread round-robin over the addresses.
            let mut clients = Vec::with_capacity(config.clients);
            for i in 0..config.clients {
                let addr = &config.addrs[i % config.addrs.len()];
                clients.push(Arc::new(LogProtocol {
                    client: tally_client::LogClient::connect(addr).await?,
                    book: logbook::BookId(config.book),
                    tags: config.tags as u64,
                }));
            }
            measure(config, &clients, progress).await
        }
    }
}

/// One closed-loop run of `config` against `targets`.
async fn measure<T: closed_loop::Target>(
    config: AppendConfig,
    targets: &[Arc<T>],
    progress: bool,
) -> anyhow::Result<AppendReport> {
    let label = progress.then_some("bench append");
    let measured =
        closed_loop::run(&config.load(), targets, config.ack_log.as_deref(), label).await?;
    Ok(AppendReport::new(config, measured))
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

async fn append_once(target: &Gateway, tag: u64, record: Bytes) -> Result<u64, Failure> {
    let book = target.book;
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

pub(crate) fn classify_error_reply(
    addr: &str,
    status: reqwest::StatusCode,
    body: &[u8],
) -> Failure {
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

pub(crate) fn snippet(body: &[u8]) -> String {
    const SNIPPET_BYTES_MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_BYTES_MAX)]);
    text.trim().to_string()
}

/// A transport failure in words: "cannot connect to ADDR: connection refused".
pub(crate) fn describe_request_error(addr: &str, error: &reqwest::Error) -> String {
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
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;
    use crate::filler::FILLER_HEADER_BYTES;
    use crate::test_server;
    use crate::{filler_origin, read_ack_log, Ack};

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

    /// Serves `gateway` until the returned task is aborted.
    async fn serve(gateway: Arc<FakeGateway>) -> (String, JoinHandle<()>) {
        test_server::serve(move |request| gateway.answer(&request.line, request.body)).await
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tally-bench-{}-{name}", std::process::id()))
    }

    fn config(addr: &str, duration_ms: u64, ack_log: Option<&Path>) -> AppendConfig {
        AppendConfig {
            addrs: vec![addr.to_string()],
            protocol: Protocol::Http,
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

    /// Over the log protocol, against the gateway's real `LogService` on an in-memory log:
    /// every ack is the stored record its client wrote, under the tag it chose.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_the_log_protocol_every_ack_is_a_stored_record_of_its_client() {
        use logbook::{BookId, LogBook, Seqnum, Tag};
        let log = Arc::new(logbook::memory::MemoryLogBook::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tokens = gateway::auth::Tokens::unread(log.clone(), None);
        let service = gateway::log_service::LogService::new(log.clone(), None, tokens);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let ack_log = temp_path("acks-grpc");
        let mut config = config(&addr, 400, Some(&ack_log));
        config.protocol = Protocol::Grpc;
        let report = run_append(config.clone(), false).await.unwrap();
        server.abort();
        assert!(report.appends > 10, "{report:?}");
        assert_eq!((report.errors, report.retried), (0, 0));
        let acks = crate::read_ack_log(&ack_log).unwrap();
        assert!(acks.len() as u64 >= report.appends);
        for ack in &acks {
            let record = log
                .read_next(BookId(config.book), Tag::ANY, Seqnum(ack.seqnum))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(record.seqnum, Seqnum(ack.seqnum));
            assert_eq!(filler_origin(&record.data), Some((ack.client, ack.counter)));
            let tag = tag_of(config.tags as u64, ack.client, ack.counter);
            assert_eq!(record.tags, vec![Tag(tag)]);
        }
        let _ = std::fs::remove_file(&ack_log);
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
        assert_eq!(base_url("https://x:1/").unwrap(), "https://x:1");
        assert_eq!(base_url("x:1").unwrap(), "http://x:1");
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
