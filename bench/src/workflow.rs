//! The workflow benchmark: closed-loop clients (see `closed_loop`), spread round-robin over
//! the gateways, each start a new instance of a workflow under an id of its own
//! (`POST /workflows/{name}/{id}?wait_ms=N` with the input), wait for the instance's JSON once
//! it has ended, and start the next. A call counts only if it answered 2xx and the instance's
//! `status` is `succeeded`; an instance that failed, or had not ended within `wait_ms`, is an
//! error.
//!
//! It is the call benchmark (`call`) with a unique id in every URL and the answer checked, and
//! reports in the same shape (`CallReport`), so its figures compare with calls of any other
//! system's workflow endpoint driven by `bench call --url .../{n}`.

use std::time::Duration;

use anyhow::ensure;
use serde::Serialize;

use crate::append::{as_secs_f64, base_url, REQUEST_TIMEOUT};
use crate::call::{self, CallConfig, ID_PLACEHOLDER};
use crate::report::{CallReport, RunConfig};

/// The longest a gateway is asked to wait for an instance to end: its limit on `wait_ms`.
pub const WAIT_MS_MAX: u64 = 60_000;

/// The status an instance must end with for its call to count.
const SUCCEEDED: &str = "succeeded";

/// What to run. `Default` starts the local gateway's `steps` workflow with `{"steps": 10}`
/// from 32 clients for 10 s after 1 s of warmup, waiting up to 60 s for each instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowConfig {
    /// Gateway addresses, "host:port" or "http://host:port"; clients are spread round-robin.
    pub addrs: Vec<String>,
    /// The workflow to start: `/workflows/{name}/{id}`.
    pub name: String,
    /// The input of every instance, JSON.
    pub input: String,
    /// Concurrent closed-loop clients, each with one instance in flight.
    pub clients: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    /// Time spent calling before measuring starts; calls during it are not counted.
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
    /// How long the gateway waits for an instance to end before it answers (`?wait_ms=`).
    pub wait_ms: u64,
}

impl Default for WorkflowConfig {
    fn default() -> WorkflowConfig {
        WorkflowConfig {
            addrs: vec!["127.0.0.1:8080".to_string()],
            name: "steps".to_string(),
            input: r#"{"steps":10}"#.to_string(),
            clients: 32,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            wait_ms: WAIT_MS_MAX,
        }
    }
}

impl WorkflowConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.call_config()?.validate()
    }

    /// The call benchmark this one is: one URL per gateway, with the call's id in it, and
    /// the answer's status checked.
    fn call_config(&self) -> anyhow::Result<CallConfig> {
        ensure!(
            (1..=WAIT_MS_MAX).contains(&self.wait_ms),
            "wait_ms must be 1..={WAIT_MS_MAX}, not {}",
            self.wait_ms
        );
        let urls = self
            .addrs
            .iter()
            .map(|addr| workflow_url(addr, &self.name, self.wait_ms))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(CallConfig {
            urls,
            input: self.input.clone(),
            clients: self.clients,
            duration: self.duration,
            warmup: self.warmup,
            idempotency_keys: false,
            expect_status: Some(SUCCEEDED.to_string()),
        })
    }
}

impl RunConfig for WorkflowConfig {
    const TITLE: &'static str = "workflow benchmark";
    const BENCHMARK: &'static str = "workflow";
    const TOOL: &'static str = "tally-bench";

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("addrs", self.addrs.join(", ")),
            (
                "workflow",
                format!(
                    "{} (POST /workflows/{}/{ID_PLACEHOLDER}?wait_ms={}, a new id per call)",
                    self.name, self.name, self.wait_ms
                ),
            ),
            (
                "input",
                format!("{} ({} bytes)", self.input, self.input.len()),
            ),
            ("clients", self.clients.to_string()),
            (
                "expect",
                format!("a 2xx answer with \"status\":\"{SUCCEEDED}\""),
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

/// The URL that starts an instance of workflow `name` at the gateway `addr` ("host:port" or
/// "http://host:port") and waits up to `wait_ms` for it:
/// "http://host:port/workflows/NAME/{n}?wait_ms=WAIT_MS", `{n}` standing for the call's id.
pub fn workflow_url(addr: &str, name: &str, wait_ms: u64) -> anyhow::Result<String> {
    ensure!(
        !name.is_empty()
            && !name.contains(|c: char| {
                c.is_whitespace() || c.is_control() || "/?#%{}".contains(c)
            }),
        "bad workflow name {name:?}"
    );
    Ok(format!(
        "{}/workflows/{name}/{ID_PLACEHOLDER}?wait_ms={wait_ms}",
        base_url(addr)?
    ))
}

/// Runs the benchmark described by `config`; shows progress on stderr when `progress`.
///
/// Fails when the configuration is invalid or no instance at all succeeded (with the first
/// error seen, e.g. "no call was acknowledged: URL: not_found (404 Not Found): ...", which is
/// what a gateway without the workflow answers).
pub async fn run_workflows(
    config: WorkflowConfig,
    progress: bool,
) -> anyhow::Result<CallReport<WorkflowConfig>> {
    let calls = config.call_config()?;
    // The gateway holds each answer up to `wait_ms`: a request may take that long and more.
    let request_timeout = Duration::from_millis(config.wait_ms) + REQUEST_TIMEOUT;
    let measured = call::measure(
        &calls,
        request_timeout,
        progress.then_some("bench workflow"),
    )
    .await?;
    Ok(CallReport::new(config, measured))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::test_server::{self, Request};

    /// What a fake gateway saw: (request line, body) per call.
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A fake gateway whose every `fail_every`-th instance ends `failed`, the others
    /// `succeeded`; it answers each with the instance JSON, named by the id in its path.
    async fn serve(fail_every: u64) -> (String, Seen, tokio::task::JoinHandle<()>) {
        let seen: Seen = Arc::default();
        let calls = AtomicU64::new(0);
        let (addr, server) = test_server::serve({
            let seen = Arc::clone(&seen);
            move |request: Request| {
                let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
                let path = request.line.split(' ').nth(1).unwrap_or_default();
                let id = path
                    .strip_prefix("/workflows/steps/")
                    .and_then(|rest| rest.split('?').next())
                    .unwrap_or_default()
                    .to_string();
                seen.lock().unwrap().push((request.line, request.body));
                let status = if n.checked_rem(fail_every) == Some(0) {
                    "failed"
                } else {
                    "succeeded"
                };
                let reply = serde_json::json!({
                    "id": id, "workflow": "steps", "status": status, "output": {"steps": 10},
                });
                ("200 OK", reply.to_string())
            }
        })
        .await;
        (addr, seen, server)
    }

    fn config(addr: String) -> WorkflowConfig {
        WorkflowConfig {
            addrs: vec![addr],
            clients: 3,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            ..WorkflowConfig::default()
        }
    }

    #[tokio::test]
    async fn every_call_starts_an_instance_of_its_own_and_counts_if_it_succeeded() {
        let (addr, seen, server) = serve(0).await;
        let report = run_workflows(config(addr), false).await.unwrap();
        server.abort();

        assert!(report.calls > 10, "{report:?}");
        assert_eq!((report.errors, report.retried), (0, 0));
        let seen = seen.lock().unwrap();
        let mut ids = BTreeSet::new();
        for (line, body) in seen.iter() {
            let path = line
                .strip_prefix("POST /workflows/steps/")
                .and_then(|rest| rest.strip_suffix("?wait_ms=60000 HTTP/1.1"))
                .unwrap_or_else(|| panic!("unexpected request {line:?}"));
            assert!(path.starts_with("bench-"), "{path:?}");
            assert!(ids.insert(path.to_string()), "id {path} used twice");
            assert_eq!(body, br#"{"steps":10}"#);
        }
        assert!(ids.len() as u64 >= report.calls);
    }

    #[tokio::test]
    async fn an_instance_that_did_not_succeed_is_an_error() {
        let (addr, _seen, server) = serve(3).await;
        let report = run_workflows(config(addr), false).await.unwrap();
        server.abort();

        assert!(report.calls > 0 && report.errors > 0, "{report:?}");
        let error = report.first_error.unwrap();
        assert!(
            error.contains(r#"status "failed", not "succeeded""#),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_gateway_without_the_workflow_fails_fast() {
        let (addr, server) = test_server::serve(|_| {
            let reply = r#"{"error":{"code":"not_found","message":"no route"}}"#;
            ("404 Not Found", reply.to_string())
        })
        .await;
        let error = run_workflows(config(addr), false).await.unwrap_err();
        server.abort();
        let error = error.to_string();
        assert!(
            error.starts_with("no call was acknowledged: ") && error.contains("not_found (404"),
            "{error}"
        );
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let check = |change: fn(&mut WorkflowConfig), expect: &str| {
            let mut config = WorkflowConfig::default();
            change(&mut config);
            let error = format!("{:#}", config.validate().unwrap_err());
            assert!(error.contains(expect), "{error:?} lacks {expect:?}");
        };
        assert!(WorkflowConfig::default().validate().is_ok());
        check(|c| c.wait_ms = 0, "wait_ms must be");
        check(|c| c.wait_ms = WAIT_MS_MAX + 1, "wait_ms must be");
        check(|c| c.name = "a/b".into(), "bad workflow name");
        check(|c| c.name = "{n}".into(), "bad workflow name");
        check(|c| c.input = "not json".into(), "the input must be JSON");
        check(|c| c.clients = 0, "clients must be");
    }

    #[test]
    fn workflow_urls_name_the_gateway_the_workflow_and_the_wait() {
        assert_eq!(
            workflow_url("127.0.0.1:8080", "steps", 60_000).unwrap(),
            "http://127.0.0.1:8080/workflows/steps/{n}?wait_ms=60000"
        );
        assert_eq!(
            workflow_url("http://h:1/", "order", 5).unwrap(),
            "http://h:1/workflows/order/{n}?wait_ms=5"
        );
    }
}
