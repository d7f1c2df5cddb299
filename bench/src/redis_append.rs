//! The closed-loop append benchmark against a Redis stream (behind the `redis` feature), for
//! side-by-side figures: each client has a connection of its own, adds one record to the
//! stream (`XADD key * d <record>`), waits for its entry id, and adds again. The records are
//! the ones `run_append` writes (`filler`), the driver and the report are shared. How durable an
//! acknowledged `XADD` is depends on the server's `appendonly`/`appendfsync` settings, which
//! the caller chooses when it starts the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::Serialize;

use crate::append::{as_secs_f64, root_cause, scheme_url, CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::closed_loop::{self, Failure, Load};
use crate::report::{AppendReport, RunConfig};

/// The field each entry holds its record in.
const FIELD: &str = "d";

/// What to run against Redis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RedisAppendConfig {
    /// The Redis server, "redis://host:port" or "host:port".
    pub server: String,
    /// The stream's key.
    pub stream: String,
    /// Concurrent closed-loop clients, each with its own connection and one XADD in flight.
    pub clients: usize,
    pub record_bytes: usize,
    #[serde(rename = "duration_s", serialize_with = "as_secs_f64")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", serialize_with = "as_secs_f64")]
    pub warmup: Duration,
}

impl RedisAppendConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        scheme_url(&self.server, "redis")?;
        ensure!(
            !self.stream.is_empty() && !self.stream.contains(char::is_whitespace),
            "bad stream key {:?}",
            self.stream
        );
        self.load().validate()
    }

    fn load(&self) -> Load {
        Load::filler(self.clients, self.record_bytes, self.duration, self.warmup)
    }
}

impl RunConfig for RedisAppendConfig {
    const TITLE: &'static str = "redis stream append benchmark";
    const BENCHMARK: &'static str = "redis-xadd";
    const TOOL: &'static str = "bench-redis";

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("server", self.server.clone()),
            ("stream", self.stream.clone()),
            ("clients", self.clients.to_string()),
            ("record_bytes", self.record_bytes.to_string()),
            closed_loop::duration_line(self.duration, self.warmup),
        ]
    }
}

/// One client's connection.
struct Connection {
    connection: MultiplexedConnection,
    stream: String,
}

impl closed_loop::Target for Connection {
    const OPERATION: &'static str = "append";

    async fn attempt(&self, _client: u32, _counter: u64, record: Bytes) -> Result<u64, Failure> {
        let id: String = redis::cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg(FIELD)
            .arg(record.as_ref())
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| Failure::Fatal(format!("XADD: {}", root_cause(&e))))?;
        // An entry id is "<ms>-<seq>": the position the server gave the record.
        let (ms, seq) = id
            .split_once('-')
            .and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)))
            .ok_or_else(|| Failure::Fatal(format!("XADD answered {id:?}, not an entry id")))?;
        Ok(ms.wrapping_mul(1 << 20).wrapping_add(seq))
    }
}

/// Runs the benchmark described by `config`; shows progress on stderr when `progress`.
pub async fn run_redis_append(
    config: RedisAppendConfig,
    progress: bool,
) -> anyhow::Result<AppendReport<RedisAppendConfig>> {
    config.validate()?;
    let url = scheme_url(&config.server, "redis")?;
    let client = redis::Client::open(url.as_str())
        .map_err(|e| anyhow::anyhow!("bad Redis server {url:?}: {}", root_cause(&e)))?;
    let options = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(REQUEST_TIMEOUT);
    let mut connections = Vec::with_capacity(config.clients);
    for _ in 0..config.clients {
        let connection = client
            .get_multiplexed_async_connection_with_config(&options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {}", root_cause(&e)))
            .context("connecting the clients")?;
        connections.push(Arc::new(Connection {
            connection,
            stream: config.stream.clone(),
        }));
    }
    let measured = closed_loop::run(
        &config.load(),
        &connections,
        None,
        progress.then_some("bench-redis append"),
    )
    .await?;
    Ok(AppendReport::new(config, measured))
}
