//! The function-call benchmark: closed-loop clients (see `closed_loop`), spread round-robin
//! over the endpoints, each POST the same small JSON input to an endpoint that runs a function
//! and answers its output, wait for the answer, and call again until the duration ends.
//!
//! An endpoint is a full URL, so the same driver and the same measurement serve any system
//! that calls functions over HTTP: a Tally gateway's `/function/{name}` (`function_url`), or
//! Restate's ingress, `/{service}/{handler}`. A URL holding `{n}` (`ID_PLACEHOLDER`) gets a
//! unique id in its place on every call (the same on a retry of that call), so each call can
//! start a new workflow instance named by it. A call succeeds on any 2xx answer; its body is
//! read, and checked only when `expect_status` asks for an instance's final status.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use bytes::Bytes;
use serde::Serialize;

use crate::append::{
    as_secs_f64, base_url, classify_error_reply, describe_request_error, snippet, CONNECT_TIMEOUT,
    REQUEST_TIMEOUT,
};
use crate::closed_loop::{self, Failure, Load, Measured, Payload};
use crate::report::{CallReport, RunConfig};

/// The most bytes of input a call sends: Tally's limit on a function's input.
pub const INPUT_BYTES_MAX: usize = 1 << 20;

/// In an endpoint URL, what each call replaces with its own unique id: the run's id, the
/// client and the client's counter, e.g. "bench-18b2c0ffee-4242-3-17".
pub const ID_PLACEHOLDER: &str = "{n}";

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
    /// When set, a 2xx answer counts only if its body is a JSON object whose `status` is this
    /// (a workflow instance's JSON: "succeeded"); any other answer counts as an error.
    pub expect_status: Option<String>,
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
            expect_status: None,
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
                "expect",
                match &self.expect_status {
                    Some(status) => format!("a 2xx answer with \"status\":\"{status}\""),
                    None => "any 2xx answer".to_string(),
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

/// An endpoint URL checked: plain HTTP, a host, a path. A URL with `ID_PLACEHOLDER` is checked
/// with an id in its place.
fn endpoint_url(url: &str) -> anyhow::Result<EndpointUrl> {
    let url = url.trim();
    let per_call = url.contains(ID_PLACEHOLDER);
    let checked = url.replace(ID_PLACEHOLDER, "bench-0-0-0");
    let parsed = reqwest::Url::parse(&checked).with_context(|| format!("bad URL {url:?}"))?;
    ensure!(
        matches!(parsed.scheme(), "http" | "https")
            && parsed.host().is_some()
            && parsed.path() != "/",
        "bad URL {url:?}: expected http(s)://host:port/path"
    );
    if per_call {
        Ok(EndpointUrl::PerCall(url.to_string()))
    } else {
        Ok(EndpointUrl::Fixed(parsed))
    }
}

/// Where an endpoint's calls go.
enum EndpointUrl {
    /// The same URL for every call, parsed once.
    Fixed(reqwest::Url),
    /// A URL holding `ID_PLACEHOLDER`, which each call replaces with its id.
    PerCall(String),
}

/// One endpoint and the connection pool its clients share.
struct Endpoint {
    url: EndpointUrl,
    http: reqwest::Client,
    /// What makes this run's call ids differ from any other run's against the same server.
    run_id: String,
    /// Send each call's id as its `Idempotency-Key`.
    idempotency_keys: bool,
    expect_status: Option<String>,
}

impl Endpoint {
    fn new(
        url: &str,
        config: &CallConfig,
        request_timeout: Duration,
        run_id: &str,
    ) -> anyhow::Result<Endpoint> {
        let http = crate::http::client_builder()?
            .timeout(request_timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(config.clients.div_ceil(config.urls.len()))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Endpoint {
            url: endpoint_url(url)?,
            http,
            run_id: run_id.to_string(),
            idempotency_keys: config.idempotency_keys,
            expect_status: config.expect_status.clone(),
        })
    }

    /// Whether a 2xx answer's `body` is what the run expects.
    fn check_answer(&self, addr: &str, body: &[u8]) -> Result<(), Failure> {
        let Some(expect) = &self.expect_status else {
            return Ok(());
        };
        let status = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|answer| answer.get("status")?.as_str().map(str::to_string));
        match status {
            Some(status) if status == *expect => Ok(()),
            Some(status) => Err(Failure::Fatal(format!(
                "{addr}: status {status:?}, not {expect:?}: {}",
                snippet(body)
            ))),
            None => Err(Failure::Fatal(format!(
                "{addr}: no \"status\" in the answer: {}",
                snippet(body)
            ))),
        }
    }
}

impl closed_loop::Target for Endpoint {
    const OPERATION: &'static str = "call";

    async fn attempt(&self, client: u32, counter: u64, input: Bytes) -> Result<u64, Failure> {
        let id = format!("{}-{client}-{counter}", self.run_id);
        let url = match &self.url {
            EndpointUrl::Fixed(url) => url.clone(),
            EndpointUrl::PerCall(template) => {
                let url = template.replace(ID_PLACEHOLDER, &id);
                reqwest::Url::parse(&url)
                    .map_err(|e| Failure::Fatal(format!("bad URL {url:?}: {e}")))?
            }
        };
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(input);
        if self.idempotency_keys {
            request = request.header("idempotency-key", id);
        }
        let addr = url.as_str();
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
            return self.check_answer(addr, &body).map(|()| 0);
        }
        Err(classify_error_reply(addr, status, &body))
    }
}

/// An id no other run's share: the time in nanoseconds and this process's id.
fn run_id() -> String {
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
    let measured = measure(&config, REQUEST_TIMEOUT, progress.then_some("bench call")).await?;
    Ok(CallReport::new(config, measured))
}

/// Runs `config`'s closed loop, each request given up after `request_timeout`, with progress
/// under `progress_label` when given.
pub(crate) async fn measure(
    config: &CallConfig,
    request_timeout: Duration,
    progress_label: Option<&'static str>,
) -> anyhow::Result<Measured> {
    config.validate()?;
    let run_id = run_id();
    let endpoints = config
        .urls
        .iter()
        .map(|url| Endpoint::new(url, config, request_timeout, &run_id).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    closed_loop::run(&config.load(), &endpoints, None, progress_label).await
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
            expect_status: None,
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
    async fn an_id_placeholder_in_the_url_is_unique_per_call_and_kept_on_retry() {
        let (addr, seen, server) = serve(4).await;
        let url = format!("http://{addr}/workflow/{ID_PLACEHOLDER}?x=1");
        let report = run_calls(config(url, false), false).await.unwrap();
        server.abort();

        assert!(report.retried > 0 && report.calls > 0, "{report:?}");
        assert_eq!(report.errors, 0);
        let seen = seen.lock().unwrap();
        let ids: Vec<&str> = seen
            .iter()
            .map(|(line, key, _)| {
                assert_eq!(key, &None);
                line.strip_prefix("POST /workflow/")
                    .and_then(|rest| rest.strip_suffix("?x=1 HTTP/1.1"))
                    .unwrap_or_else(|| panic!("unexpected request {line:?}"))
            })
            .collect();
        let distinct: BTreeSet<&str> = ids.iter().copied().collect();
        // Every 4th attempt failed and was sent again with the same id.
        assert!(distinct.len() < ids.len(), "no retry reused its id");
        assert!(distinct.len() as u64 >= report.calls);
        assert!(distinct.iter().all(|id| id.starts_with("bench-")));
    }

    #[tokio::test]
    async fn an_answer_without_the_expected_status_is_an_error() {
        let (addr, _seen, server) = serve(0).await;
        let mut config = config(format!("http://{addr}/function/noop"), false);
        config.expect_status = Some("succeeded".into());
        let error = run_calls(config, false).await.unwrap_err();
        server.abort();
        let error = error.to_string();
        assert!(
            error.contains(r#"no "status" in the answer: {"n":1}"#),
            "{error}"
        );
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
        let https = CallConfig {
            urls: vec!["https://x:1/f".into()],
            ..CallConfig::default()
        };
        assert!(https.validate().is_ok());
        check(
            |c| c.urls = vec!["ftp://x:1/f".into()],
            "expected http(s)://",
        );
        check(
            |c| c.urls = vec!["http://x:1".into()],
            "expected http(s)://",
        );
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
