//! The function-call benchmark: closed-loop clients (see `closed_loop`), spread round-robin
//! over the endpoints, each POST the same small JSON input to an endpoint that runs a function
//! and answers its output, wait for the answer, and call again until the duration ends.
//!
//! An endpoint is a full URL, so the same driver and the same measurement serve any system
//! that calls functions over HTTP: a Tally gateway's `/function/{name}` (`function_url`), or
//! Restate's ingress, `/{service}/{handler}`. A call succeeds on any 2xx answer; its body is
//! read but not checked.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use bytes::Bytes;
use serde::Serialize;

use crate::append::{
    as_secs_f64, base_url, classify_error_reply, describe_request_error, CONNECT_TIMEOUT,
    REQUEST_TIMEOUT,
};
use crate::closed_loop::{self, Failure, Load, Payload};
use crate::report::{CallReport, RunConfig};

/// The most bytes of input a call sends: Tally's limit on a function's input.
pub const INPUT_BYTES_MAX: usize = 1 << 20;

/// What to run. `Default` calls the local gateway's `noop` with `{}` from 32 clients for 10 s
/// after 1 s of warmup.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallConfig {
    /// Function endpoints, "http://host:port/path", each taking a POST of the input and
    /// answering the function's output; clients are spread round-robin.
    pub urls: Vec<String>,
    /// The body of every call, JSON (sent as `application/json`).
    pub input: String,
    /// Concurrent closed-loop clients, each with one call in flight.
    pub clients: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    /// Time spent calling before measuring starts; calls during it are not counted.
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
    /// Send an `Idempotency-Key` header with every call, unique to the call (a retry of the
    /// same call sends the same key), so the system takes its keyed path (on Tally, a durable
    /// invocation: written to the log before it runs, its result after).
    pub idempotency_keys: bool,
}

impl Default for CallConfig {
    fn default() -> CallConfig {
        CallConfig {
            urls: vec!["http://127.0.0.1:8080/function/noop".to_string()],
            input: "{}".to_string(),
            clients: 32,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            idempotency_keys: false,
        }
    }
}

impl CallConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.urls.is_empty(), "no endpoint URL given");
        for url in &self.urls {
            endpoint_url(url)?;
        }
        ensure!(
            self.input.len() <= INPUT_BYTES_MAX,
            "the input must be at most {INPUT_BYTES_MAX} bytes, not {}",
            self.input.len()
        );
        serde_json::from_str::<serde_json::Value>(&self.input)
            .with_context(|| format!("the input must be JSON, not {:?}", self.input))?;
        self.load().validate()
    }

    fn load(&self) -> Load {
        Load {
            clients: self.clients,
            payload: Payload::Fixed(Bytes::from(self.input.clone())),
            duration: self.duration,
            warmup: self.warmup,
        }
    }
}

impl RunConfig for CallConfig {
    const TITLE: &'static str = "call benchmark";
    const BENCHMARK: &'static str = "call";
    const TOOL: &'static str = "tally-bench";

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("urls", self.urls.join(", ")),
            (
                "input",
                format!("{} ({} bytes)", self.input, self.input.len()),
            ),
            ("clients", self.clients.to_string()),
            (
                "idempotency",
                if self.idempotency_keys {
                    "a unique Idempotency-Key per call".to_string()
                } else {
                    "no key".to_string()
                },
            ),
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

/// The URL that calls function `name` at the gateway `addr` ("host:port" or
/// "http://host:port"): "http://host:port/function/NAME".
pub fn function_url(addr: &str, name: &str) -> anyhow::Result<String> {
    ensure!(
        !name.is_empty()
            && !name.contains(|c: char| c.is_whitespace() || c.is_control() || "/?#%".contains(c)),
        "bad function name {name:?}"
    );
    Ok(format!("{}/function/{name}", base_url(addr)?))
}

/// An endpoint URL checked: plain HTTP, a host, a path.
fn endpoint_url(url: &str) -> anyhow::Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url.trim()).with_context(|| format!("bad URL {url:?}"))?;
    ensure!(
        parsed.scheme() == "http" && parsed.host().is_some() && parsed.path() != "/",
        "bad URL {url:?}: expected http://host:port/path (https is not supported)"
    );
    Ok(parsed)
}

/// One endpoint and the connection pool its clients share.
struct Endpoint {
    url: reqwest::Url,
    http: reqwest::Client,
    /// Set when every call carries a key: what makes this run's keys differ from any other
    /// run's against the same server.
    key_prefix: Option<String>,
}

impl Endpoint {
    fn new(url: &str, pool_size: usize, key_prefix: Option<String>) -> anyhow::Result<Endpoint> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(pool_size)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Endpoint {
            url: endpoint_url(url)?,
            http,
            key_prefix,
        })
    }
}

impl closed_loop::Target for Endpoint {
    const OPERATION: &'static str = "call";

    async fn attempt(&self, client: u32, counter: u64, input: Bytes) -> Result<u64, Failure> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(input);
        if let Some(prefix) = &self.key_prefix {
            request = request.header("idempotency-key", format!("{prefix}-{client}-{counter}"));
        }
        let addr = self.url.as_str();
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Fatal(describe_request_error(addr, &e)))?;
        let status = response.status();
        // Read to the end either way, so the connection goes back to the pool.
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::Fatal(describe_request_error(addr, &e)))?;
        if status.is_success() {
            return Ok(0);
        }
        Err(classify_error_reply(addr, status, &body))
    }
}

/// A prefix no other run's keys share: the time in nanoseconds and this process's id.
fn run_key_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{nanos:x}-{}", std::process::id())
}

/// Runs the benchmark described by `config`; shows progress on stderr when `progress`.
///
/// Fails when the configuration is invalid or no call at all succeeded (with the first error
/// seen, e.g. "no call was acknowledged: cannot connect to URL: connection refused").
pub async fn run_calls(config: CallConfig, progress: bool) -> anyhow::Result<CallReport> {
    config.validate()?;
    let pool_size = config.clients.div_ceil(config.urls.len());
    let key_prefix = config.idempotency_keys.then(run_key_prefix);
    let endpoints = config
        .urls
        .iter()
        .map(|url| Endpoint::new(url, pool_size, key_prefix.clone()).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let measured = closed_loop::run(
        &config.load(),
        &endpoints,
        None,
        progress.then_some("bench call"),
    )
    .await?;
    Ok(CallReport::new(config, measured))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;
    use crate::test_server::{self, Request};

    /// What a fake function endpoint saw: (request line, idempotency key, body) per call.
    type Seen = Arc<Mutex<Vec<(String, Option<String>, Vec<u8>)>>>;

    /// Answers every call with its input, except every `fail_every`-th, answered 503
    /// `unavailable` (Tally's retryable error).
    async fn serve(fail_every: u64) -> (String, Seen, tokio::task::JoinHandle<()>) {
        let seen: Seen = Arc::default();
        let calls = std::sync::atomic::AtomicU64::new(0);
        let (addr, server) = test_server::serve({
            let seen = Arc::clone(&seen);
            move |request: Request| {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let key = request.header("idempotency-key").map(str::to_string);
                let body = String::from_utf8(request.body.clone()).unwrap();
                seen.lock().unwrap().push((request.line, key, request.body));
                if n.checked_rem(fail_every) == Some(0) {
                    let reply = r#"{"error":{"code":"unavailable","message":"busy"}}"#;
                    return ("503 Service Unavailable", reply.into());
                }
                ("200 OK", body)
            }
        })
        .await;
        (addr, seen, server)
    }

    fn config(url: String, idempotency_keys: bool) -> CallConfig {
        CallConfig {
            urls: vec![url],
            input: r#"{"n":1}"#.into(),
            clients: 3,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            idempotency_keys,
        }
    }

    #[tokio::test]
    async fn calls_post_the_input_as_json_to_the_url_and_are_counted() {
        let (addr, seen, server) = serve(0).await;
        let url = format!("http://{addr}/Bench/noop");
        let report = run_calls(config(url, false), false).await.unwrap();
        server.abort();

        assert!(report.calls > 10, "{report:?}");
        assert_eq!((report.errors, report.retried), (0, 0));
        assert!(report.latency_us.p50 > 0 && report.latency_us.max >= report.latency_us.p99);
        let seen = seen.lock().unwrap();
        assert!(seen.len() as u64 >= report.calls);
        for (line, key, body) in seen.iter() {
            assert_eq!(line, "POST /Bench/noop HTTP/1.1");
            assert_eq!(key, &None);
            assert_eq!(body, br#"{"n":1}"#);
        }
    }

    #[tokio::test]
    async fn every_call_has_its_own_key_and_a_retry_keeps_it() {
        let (addr, seen, server) = serve(4).await;
        let url = function_url(&addr, "noop").unwrap();
        let report = run_calls(config(url, true), false).await.unwrap();
        server.abort();

        assert!(report.retried > 0 && report.calls > 0, "{report:?}");
        assert_eq!(report.errors, 0);
        let seen = seen.lock().unwrap();
        let keys: Vec<&str> = seen.iter().map(|(_, k, _)| k.as_deref().unwrap()).collect();
        let distinct: BTreeSet<&str> = keys.iter().copied().collect();
        // Every 4th attempt failed and was sent again with the same key.
        assert!(distinct.len() < keys.len(), "no retry reused its key");
        assert!(distinct.len() as u64 >= report.calls);
        assert!(seen
            .iter()
            .all(|(line, _, _)| line == "POST /function/noop HTTP/1.1"));
    }

    #[tokio::test]
    async fn no_server_fails_fast_naming_the_url() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let url = format!("http://{addr}/function/noop");
        let error = run_calls(config(url.clone(), false), false)
            .await
            .unwrap_err();
        let expect =
            format!("no call was acknowledged: cannot connect to {url}: connection refused");
        assert_eq!(error.to_string(), expect);
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let check = |change: fn(&mut CallConfig), expect: &str| {
            let mut config = CallConfig::default();
            change(&mut config);
            let error = format!("{:#}", config.validate().unwrap_err());
            assert!(error.contains(expect), "{error:?} lacks {expect:?}");
        };
        assert!(CallConfig::default().validate().is_ok());
        check(|c| c.urls.clear(), "no endpoint URL");
        check(
            |c| c.urls = vec!["https://x:1/f".into()],
            "expected http://",
        );
        check(|c| c.urls = vec!["http://x:1".into()], "expected http://");
        check(|c| c.urls = vec!["x:1/f".into()], "bad URL");
        check(|c| c.input = "not json".into(), "the input must be JSON");
        check(|c| c.input = " ".repeat(INPUT_BYTES_MAX + 1), "at most");
        check(|c| c.clients = 0, "clients must be");
        check(|c| c.duration = Duration::ZERO, "duration must be");
    }

    #[test]
    fn function_urls_name_the_gateway_and_the_function() {
        assert_eq!(
            function_url("127.0.0.1:8080", "noop").unwrap(),
            "http://127.0.0.1:8080/function/noop"
        );
        assert_eq!(
            function_url("http://h:1/", "append3-worker").unwrap(),
            "http://h:1/function/append3-worker"
        );
        for bad in ["", "a/b", "a b", "a?b"] {
            assert!(function_url("h:1", bad).is_err(), "{bad:?} accepted");
        }
    }
}
