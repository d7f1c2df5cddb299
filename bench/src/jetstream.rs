//! The same closed-loop append benchmark against NATS JetStream, for side-by-side figures:
//! each client has its own NATS connection (as each Tally client has its own HTTP connection),
//! publishes one record to the stream's subject, awaits the PubAck, and publishes again. The
//! records are the ones `run_append` writes (`filler`), the driver and the report are shared.
//!
//! It creates the stream (file storage, `replicas` replicas) when it is missing, retrying while
//! a cluster is still electing its JetStream meta leader; it never deletes one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use async_nats::jetstream::context::{ContextBuilder, PublishError, PublishErrorKind};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::Context as JetStream;
use async_nats::{ConnectOptions, Subject};
use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::append::{as_secs_f64, root_cause, scheme_url, CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::closed_loop::{self, Failure, Load};
use crate::report::{AppendReport, RunConfig};

/// JetStream's own limit on a stream's replicas.
pub const REPLICAS_MAX: usize = 5;
/// How long to keep trying to create the stream: a new cluster answers "JetStream system
/// temporarily unavailable" until it has elected a meta leader.
const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const STREAM_SETUP_RETRY: Duration = Duration::from_millis(250);
/// One stream-management request; short, so a cluster that is not ready is asked again soon.
const STREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run against JetStream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JetStreamConfig {
    /// NATS servers, "nats://host:port" or "host:port"; clients are spread round-robin.
    pub servers: Vec<String>,
    /// The stream appended to; created with `replicas` replicas and file storage if missing.
    pub stream: String,
    /// The subject published to, the stream's only subject when this tool creates it.
    pub subject: String,
    pub replicas: usize,
    /// Concurrent closed-loop clients, each with its own connection and one publish in flight.
    pub clients: usize,
    pub record_bytes: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
}

impl JetStreamConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.servers.is_empty(), "no NATS server given");
        for server in &self.servers {
            server_url(server)?;
        }
        ensure!(
            !self.stream.is_empty()
                && !self
                    .stream
                    .contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c)),
            "bad stream name {:?}: no spaces, '.', '*', '>', '/' or '\\'",
            self.stream
        );
        ensure!(
            !self.subject.is_empty() && !self.subject.contains(char::is_whitespace),
            "bad subject {:?}",
            self.subject
        );
        ensure!(
            (1..=REPLICAS_MAX).contains(&self.replicas),
            "replicas must be 1..={REPLICAS_MAX}, not {}",
            self.replicas
        );
        self.load().validate()
    }

    fn load(&self) -> Load {
        Load::filler(self.clients, self.record_bytes, self.duration, self.warmup)
    }
}

impl RunConfig for JetStreamConfig {
    const TITLE: &'static str = "jetstream publish benchmark";
    const BENCHMARK: &'static str = "jetstream-publish";
    const TOOL: &'static str = "bench-jetstream";

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("servers", self.servers.join(", ")),
            ("stream", self.stream.clone()),
            ("subject", self.subject.clone()),
            ("replicas", self.replicas.to_string()),
            ("clients", self.clients.to_string()),
            ("record_bytes", self.record_bytes.to_string()),
            closed_loop::duration_line(self.duration, self.warmup),
        ]
    }
}

/// A server address, "host:port" or "nats://host:port", as "nats://host:port".
fn server_url(server: &str) -> anyhow::Result<String> {
    scheme_url(server, "nats")
}

/// One client's connection and the subject it publishes to.
struct Connection {
    server: String,
    jetstream: JetStream,
    subject: Subject,
}

impl closed_loop::Target for Connection {
    const OPERATION: &'static str = "append";

    async fn attempt(&self, _client: u32, _counter: u64, record: Bytes) -> Result<u64, Failure> {
        let ack = self
            .jetstream
            .publish(self.subject.clone(), record)
            .await
            .map_err(|e| self.failure(&e))?
            .await
            .map_err(|e| self.failure(&e))?;
        Ok(ack.sequence)
    }
}

impl Connection {
    fn failure(&self, error: &PublishError) -> Failure {
        let message = format!("{}: {}", self.server, root_cause(error));
        match error.kind() {
            // No responders: no stream leader yet (a new or failing-over cluster).
            PublishErrorKind::StreamNotFound => Failure::Retryable(message),
            _ => Failure::Fatal(message),
        }
    }
}

pub(crate) async fn connect(server: &str) -> anyhow::Result<async_nats::Client> {
    ConnectOptions::new()
        .name("bench-jetstream")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(server_url(server)?)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {}", root_cause(&e)))
}

/// Makes sure the stream exists, creating it if missing, retrying while the server or cluster
/// is not ready. An existing stream must have the requested replicas, or the figures would be
/// labelled wrong.
async fn ensure_stream(
    client: &async_nats::Client,
    config: &JetStreamConfig,
) -> anyhow::Result<()> {
    let jetstream = ContextBuilder::new()
        .timeout(STREAM_REQUEST_TIMEOUT)
        .build(client.clone());
    let wanted = StreamConfig {
        name: config.stream.clone(),
        subjects: vec![config.subject.clone()],
        storage: StorageType::File,
        num_replicas: config.replicas,
        ..StreamConfig::default()
    };
    let deadline = Instant::now() + STREAM_SETUP_TIMEOUT;
    let stream = loop {
        match jetstream.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => break stream,
            // Expected while a cluster starts: retried, and the last one reported at the end.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(STREAM_SETUP_RETRY).await;
            }
            Err(e) => bail!(
                "cannot create stream {} within {} s: {}",
                config.stream,
                STREAM_SETUP_TIMEOUT.as_secs(),
                root_cause(&e)
            ),
        }
    };
    let info = stream.cached_info();
    ensure!(
        info.config.num_replicas == config.replicas,
        "stream {} exists with {} replicas, not {}",
        config.stream,
        info.config.num_replicas,
        config.replicas
    );
    ensure!(
        info.config.storage == StorageType::File,
        "stream {} exists with memory storage, not file storage",
        config.stream
    );
    Ok(())
}

/// Runs the benchmark described by `config`; shows progress on stderr when `progress`.
///
/// Fails when the configuration is invalid, a server cannot be reached, the stream cannot be
/// created, or no publish at all was acknowledged.
pub async fn run_jetstream(
    config: JetStreamConfig,
    progress: bool,
) -> anyhow::Result<AppendReport<JetStreamConfig>> {
    config.validate()?;
    let first = connect(&config.servers[0]).await?;
    ensure_stream(&first, &config).await?;
    drop(first);

    // Connect every client before the clock starts, concurrently.
    let connecting: Vec<_> = (0..config.clients)
        .map(|client| {
            let server = config.servers[client % config.servers.len()].clone();
            tokio::spawn(async move { connect(&server).await.map(|c| (server, c)) })
        })
        .collect();
    let subject = Subject::from(config.subject.as_str());
    let mut connections = Vec::with_capacity(config.clients);
    for task in connecting {
        let (server, client) = task.await.context("a connecting task panicked")??;
        connections.push(Arc::new(Connection {
            server,
            jetstream: ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client),
            subject: subject.clone(),
        }));
    }

    let measured = closed_loop::run(
        &config.load(),
        &connections,
        None,
        progress.then_some("bench-jetstream"),
    )
    .await?;
    Ok(AppendReport::new(config, measured))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JetStreamConfig {
        JetStreamConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: "BENCH".into(),
            subject: "BENCH.append".into(),
            replicas: 1,
            clients: 4,
            record_bytes: 1024,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
        }
    }

    #[test]
    fn server_addresses_accept_host_port_or_nats_url() {
        let check = |server: &str, expect: &str| assert_eq!(server_url(server).unwrap(), expect);
        check("127.0.0.1:4222", "nats://127.0.0.1:4222");
        check(" nats://127.0.0.1:4222/ ", "nats://127.0.0.1:4222");
        for bad in [
            "http://127.0.0.1:4222",
            "nats://127.0.0.1",
            "127.0.0.1:4222/x",
        ] {
            assert!(server_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let check = |change: fn(&mut JetStreamConfig), expect: &str| {
            let mut c = config();
            change(&mut c);
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains(expect), "{error:?} lacks {expect:?}");
        };
        assert!(config().validate().is_ok());
        check(|c| c.servers.clear(), "no NATS server");
        check(|c| c.stream = "a.b".into(), "bad stream name");
        check(|c| c.replicas = 0, "replicas must be");
        check(|c| c.replicas = REPLICAS_MAX + 1, "replicas must be");
        check(|c| c.clients = 0, "clients must be");
    }

    #[test]
    fn json_report_names_the_tool_and_keeps_the_append_fields() {
        let report = AppendReport::new(
            config(),
            closed_loop::Measured {
                operations: 10,
                operations_with_warmup: 10,
                errors: 0,
                retried: 0,
                elapsed_s: 1.0,
                operations_per_s: 10.0,
                mb_per_s: 0.01024,
                latency_us: Default::default(),
                first_error: None,
                started_unix_ms: 0,
            },
        );
        let json = report.to_json();
        assert_eq!(json["tool"], "bench-jetstream");
        assert_eq!(json["config"]["replicas"], 1);
        for field in [
            "appends_per_s",
            "mb_per_s",
            "latency_us",
            "errors",
            "elapsed_s",
        ] {
            assert!(json.get(field).is_some(), "no {field}");
        }
        assert!(report.human().starts_with("jetstream publish benchmark"));
    }
}
