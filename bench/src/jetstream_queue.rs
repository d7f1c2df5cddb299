//! The queue benchmark's JetStream driver (behind the `jetstream` feature): the queue is a
//! stream with work-queue retention (a message is removed once acked) and file storage, one
//! replica, whose only subject is the queue's name; every consumer pulls from one durable pull
//! consumer (`GROUP`, explicit acks).
//!
//! A producer publishes one message and awaits its PubAck. A consumer sends a pull request for
//! one message that expires after `POP_WAIT`, and acks what it got with a double ack: the ack
//! asks for a reply, and the round ends when the server confirmed it, as Tally's ack and
//! Redis's XACK end with the server's answer. Every client has its own NATS connection.
//!
//! It makes the stream and the consumer when they are missing; it never deletes either.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::Context as JetStream;
use async_nats::Subject;
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use crate::append::root_cause;
use crate::jetstream::connect;
use crate::queue::{QueueConfig, GROUP, POP_WAIT, REQUEST_TIMEOUT};

/// How long to keep trying to make the stream and the consumer (a server just started may
/// not have JetStream ready).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const SETUP_RETRY: Duration = Duration::from_millis(250);
/// One stream-management request; short, so a server that is not ready is asked again soon.
const SETUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The server's default limits on a pull consumer's waiting pull requests and messages acked
/// late; raised to the consumer count when there are more consumers.
const MAX_WAITING_DEFAULT: i64 = 512;
const MAX_ACK_PENDING_DEFAULT: i64 = 1000;

pub(crate) struct Producer {
    jetstream: JetStream,
    subject: Subject,
}

impl crate::queue::Producer for Producer {
    async fn push(&mut self, message: Bytes) -> Result<(), String> {
        self.jetstream
            .publish(self.subject.clone(), message)
            .await
            .map_err(|e| format!("publish: {}", root_cause(&e)))?
            .await
            .map_err(|e| format!("publish ack: {}", root_cause(&e)))?;
        Ok(())
    }
}

pub(crate) struct Consumer {
    consumer: PullConsumer,
}

impl crate::queue::Consumer for Consumer {
    async fn pop_ack(&mut self) -> Result<Option<Bytes>, String> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(POP_WAIT)
            .messages()
            .await
            .map_err(|e| format!("pull request: {}", root_cause(&e)))?;
        let Some(message) = batch.next().await else {
            return Ok(None);
        };
        let message = message.map_err(|e| format!("pull: {}", root_cause(e.as_ref())))?;
        message
            .double_ack()
            .await
            .map_err(|e| format!("ack: {}", root_cause(e.as_ref())))?;
        Ok(Some(message.message.payload))
    }
}

/// Makes the stream and the durable consumer if they are missing (before any publish), then
/// connects every client.
pub(crate) async fn setup(
    config: &QueueConfig,
    url: &str,
) -> anyhow::Result<(Vec<Producer>, Vec<Consumer>)> {
    let first = connect(url).await?;
    let jetstream = ContextBuilder::new()
        .timeout(SETUP_REQUEST_TIMEOUT)
        .build(first);
    let wanted = StreamConfig {
        name: config.queue.clone(),
        subjects: vec![config.queue.clone()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        num_replicas: 1,
        ..StreamConfig::default()
    };
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let stream = loop {
        match jetstream.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => break stream,
            // Expected while the server starts: retried, and the last one reported at the end.
            Err(_) if Instant::now() < deadline => tokio::time::sleep(SETUP_RETRY).await,
            Err(e) => bail!(
                "cannot make stream {} within {} s: {}",
                config.queue,
                SETUP_TIMEOUT.as_secs(),
                root_cause(&e)
            ),
        }
    };
    let info = &stream.cached_info().config;
    ensure!(
        info.retention == RetentionPolicy::WorkQueue && info.storage == StorageType::File,
        "stream {} exists, but not as a work queue in file storage",
        config.queue
    );
    let consumers = i64::try_from(config.consumers).expect("consumers are at most 1024");
    stream
        .get_or_create_consumer(
            GROUP,
            pull::Config {
                durable_name: Some(GROUP.to_string()),
                ack_policy: AckPolicy::Explicit,
                max_waiting: MAX_WAITING_DEFAULT.max(consumers),
                max_ack_pending: MAX_ACK_PENDING_DEFAULT.max(consumers),
                ..pull::Config::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("making consumer {GROUP}: {}", root_cause(&e)))?;

    // Connect every client before the clock starts, concurrently.
    let connecting: Vec<_> = (0..config.producers + config.consumers)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { connect(&url).await })
        })
        .collect();
    let subject = Subject::from(config.queue.as_str());
    let mut producers = Vec::with_capacity(config.producers);
    let mut consumers = Vec::with_capacity(config.consumers);
    for (i, task) in connecting.into_iter().enumerate() {
        let client = task.await.context("a connecting task panicked")??;
        let jetstream = ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client);
        if i < config.producers {
            producers.push(Producer {
                jetstream,
                subject: subject.clone(),
            });
            continue;
        }
        let consumer = jetstream
            .get_stream(&config.queue)
            .await
            .map_err(|e| anyhow::anyhow!("finding stream {}: {}", config.queue, root_cause(&e)))?
            .get_consumer(GROUP)
            .await
            .map_err(|e| anyhow::anyhow!("finding consumer {GROUP}: {}", root_cause(e.as_ref())))?;
        consumers.push(Consumer { consumer });
    }
    Ok((producers, consumers))
}
