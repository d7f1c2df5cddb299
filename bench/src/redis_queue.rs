//! The queue benchmark's Redis streams driver (behind the `redis` feature): the queue is a
//! stream (its key the queue's name), the consumers a consumer group (`GROUP`), each consumer
//! a member of it under its own name.
//!
//! A producer adds one entry (`XADD key * m <message>`) and waits for its id. A consumer
//! reads one new entry for the group (`XREADGROUP GROUP bench cN COUNT 1 BLOCK 1000 STREAMS
//! key >`), then acks it (`XACK`) and waits for the answer. Every client has a multiplexed
//! connection of its own, so one consumer's blocked read never holds up another client's
//! command. Acked entries stay in the stream (XACK only takes them off the group's pending
//! list), as a log keeps its records until trimmed.
//!
//! It makes the group, and the stream with it (`XGROUP CREATE ... MKSTREAM`), before any
//! push; an existing group is used as it is.

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Value};

use crate::append::root_cause;
use crate::queue::{QueueConfig, CONNECT_TIMEOUT, GROUP, POP_WAIT, REQUEST_TIMEOUT};

/// The field each entry holds its message in.
const FIELD: &str = "m";

pub(crate) struct Client {
    connection: MultiplexedConnection,
    key: String,
    /// This consumer's name in the group.
    name: String,
}

fn failure(what: &str, e: &redis::RedisError) -> String {
    format!("{what}: {}", root_cause(e))
}

impl crate::queue::Producer for Client {
    async fn push(&mut self, message: Bytes) -> Result<(), String> {
        redis::cmd("XADD")
            .arg(&self.key)
            .arg("*")
            .arg(FIELD)
            .arg(message.as_ref())
            .query_async::<String>(&mut self.connection)
            .await
            .map_err(|e| failure("XADD", &e))?;
        Ok(())
    }
}

impl crate::queue::Consumer for Client {
    async fn pop_ack(&mut self) -> Result<Option<Bytes>, String> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.name)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(POP_WAIT.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query_async(&mut self.connection)
            .await
            .map_err(|e| failure("XREADGROUP", &e))?;
        let Some(entry) = reply
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next())
        else {
            return Ok(None);
        };
        let message = match entry.map.get(FIELD) {
            Some(Value::BulkString(data)) => Bytes::from(data.clone()),
            _ => return Err(format!("entry {} has no field {FIELD}", entry.id)),
        };
        let acked: i64 = redis::cmd("XACK")
            .arg(&self.key)
            .arg(GROUP)
            .arg(&entry.id)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| failure("XACK", &e))?;
        if acked != 1 {
            return Err(format!("XACK of entry {} acked {acked} entries", entry.id));
        }
        Ok(Some(message))
    }
}

async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    let options = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(REQUEST_TIMEOUT);
    client
        .get_multiplexed_async_connection_with_config(&options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis: {}", root_cause(&e)))
}

/// Makes the group and its stream (before any push), then connects every client.
pub(crate) async fn setup(
    config: &QueueConfig,
    url: &str,
) -> anyhow::Result<(Vec<Client>, Vec<Client>)> {
    let client = redis::Client::open(url)
        .map_err(|e| anyhow::anyhow!("bad Redis server {url:?}: {}", root_cause(&e)))?;
    let mut first = connect(&client).await?;
    let made: Result<Value, _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&config.queue)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut first)
        .await;
    match made {
        Ok(_) => {}
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => anyhow::bail!("XGROUP CREATE {} {GROUP}: {}", config.queue, root_cause(&e)),
    }
    let mut connecting = Vec::with_capacity(config.producers + config.consumers);
    for _ in 0..config.producers + config.consumers {
        let client = client.clone();
        connecting.push(tokio::spawn(async move { connect(&client).await }));
    }
    let mut producers = Vec::with_capacity(config.producers);
    let mut consumers = Vec::with_capacity(config.consumers);
    for (i, task) in connecting.into_iter().enumerate() {
        let connection = task
            .await
            .map_err(|e| anyhow::anyhow!("a connecting task panicked: {e}"))??;
        let key = config.queue.clone();
        if i < config.producers {
            let name = format!("p{i}");
            producers.push(Client {
                connection,
                key,
                name,
            });
        } else {
            let name = format!("c{}", i - config.producers);
            consumers.push(Client {
                connection,
                key,
                name,
            });
        }
    }
    Ok((producers, consumers))
}
