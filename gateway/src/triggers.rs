//! Functions triggered by a queue (`[functions.NAME] queue = "..."`): each gateway that serves
//! such a function runs consumers of the queue's group `function.NAME`; each message becomes
//! one asynchronous invocation of the function, started under the idempotency key
//! `queue:QUEUE:ID`, with the message as its input.
//!
//! - The invocation is in the log before it runs and retried as the function's config says;
//!   if this gateway dies, another one runs it on. A consumer waits for it to end.
//! - Succeeded: the delivery is acked. Failed (its retries spent): it is left unacked, so the
//!   message is delivered again after the visibility timeout; a redelivery finds the same
//!   invocation under the same key (it does not run the function again) and after
//!   `max_deliveries` the message becomes a dead letter of the group.
//! - A consumer that dies between the invocation's success and the ack leaves the message in
//!   flight; its redelivery finds the succeeded invocation under the key and acks. So each
//!   message runs the function once to success, however often it is delivered.

use crate::functions::{Dispatcher, Status};
use crate::http::AppState;
use bytes::Bytes;
use libqueue::Settings;
use logbook::BookId;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A function triggered by a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTrigger {
    pub function: String,
    pub queue: String,
    /// The queue's book (and the invocations').
    pub book: BookId,
}

/// Most consumers of one trigger a gateway runs (each has one message at a time).
pub const TRIGGER_CONSUMERS_MAX: usize = 64;
/// How long a consumer's pop waits before it looks again.
const POP_WAIT: Duration = Duration::from_secs(5);
/// How long a consumer waits after a failed pop before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

impl QueueTrigger {
    /// The consumer group of the function's consumers.
    pub fn group(&self) -> String {
        format!("function.{}", self.function)
    }

    /// The idempotency key of the invocation of message `id`.
    pub fn key(&self, id: &libqueue::MessageId) -> String {
        format!("queue:{}:{id}", self.queue)
    }
}

/// Starts the consumers of each trigger: the function's `max_concurrency` of them (at most
/// `TRIGGER_CONSUMERS_MAX`), each until the state is dropped. Makes each queue (one shard,
/// unless it exists) and group first, so the group sees every message pushed after this
/// returns; a queue the log cannot make now is left to the consumers, which try again.
pub async fn start(state: &Arc<AppState>, triggers: &[QueueTrigger]) {
    for trigger in triggers {
        if let Err(e) = open(state, trigger, Settings::default()).await {
            tracing::warn!(queue = %trigger.queue, function = %trigger.function, error = %e.message(), "making a trigger's queue and group");
        }
    }
    for trigger in triggers {
        let config = state
            .dispatcher
            .registry()
            .config(&trigger.function)
            .unwrap_or_default();
        let consumers = config.max_concurrency.clamp(1, TRIGGER_CONSUMERS_MAX);
        // A delivery stays in flight while its invocation may still be running.
        let settings = Settings {
            visibility_timeout: (config.timeout + config.backoff) * (config.retries + 1)
                + Duration::from_secs(1),
            ..Settings::default()
        };
        for _ in 0..consumers {
            tokio::spawn(consume(Arc::downgrade(state), trigger.clone(), settings));
        }
    }
}

/// The trigger's queue (made if new) and group handle.
async fn open(
    state: &AppState,
    trigger: &QueueTrigger,
    settings: Settings,
) -> Result<libqueue::Group, crate::http::ApiError> {
    state
        .queues
        .queue(state, trigger.book, &trigger.queue, None, true)
        .await?;
    state
        .queues
        .group(
            state,
            trigger.book,
            &trigger.queue,
            &trigger.group(),
            settings,
        )
        .await
}

/// The trigger's group handle, once the log makes it (tried again every `RETRY_AFTER`);
/// `None` once the state is dropped.
async fn opened(
    state: &Weak<AppState>,
    trigger: &QueueTrigger,
    settings: Settings,
) -> Option<libqueue::Group> {
    loop {
        let live = state.upgrade()?;
        match open(&live, trigger, settings).await {
            Ok(handle) => return Some(handle),
            Err(e) => {
                tracing::warn!(queue = %trigger.queue, function = %trigger.function, error = %e.message(), "opening a trigger's group")
            }
        }
        drop(live);
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

async fn consume(state: Weak<AppState>, trigger: QueueTrigger, settings: Settings) {
    let Some(handle) = opened(&state, &trigger, settings).await else {
        return;
    };
    loop {
        let popped = handle.pop_wait(POP_WAIT).await;
        let Some(live) = state.upgrade() else {
            return;
        };
        let delivery = match popped {
            Ok(Some(delivery)) => delivery,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(queue = %trigger.queue, function = %trigger.function, error = %e, "popping for a trigger");
                drop(live);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        live.queues.touch(trigger.book, &trigger.queue);
        let key = trigger.key(&delivery.id);
        let succeeded = run(&live.dispatcher, &trigger, &key, delivery.data.clone()).await;
        drop(live);
        if !succeeded {
            continue;
        }
        match handle.ack(&delivery).await {
            Ok(()) => {}
            // Taken again by another consumer after a timeout: its ack counts instead.
            Err(libqueue::Error::NotInFlight { .. }) => {}
            Err(e) => {
                tracing::warn!(queue = %trigger.queue, id = %delivery.id, error = %e, "acking a trigger's message")
            }
        }
    }
}

/// Starts (or finds, under `key`) the invocation of a message and waits for it; whether it
/// succeeded.
async fn run(dispatcher: &Dispatcher, trigger: &QueueTrigger, key: &str, input: Bytes) -> bool {
    let started = dispatcher
        .start_async(&trigger.function, trigger.book, input, Some(key))
        .await;
    match started {
        Ok(rx) => {
            let ended = Dispatcher::wait(rx).await;
            if ended.status == Status::Failed {
                tracing::warn!(queue = %trigger.queue, function = %trigger.function, invocation = %ended.id, "a triggered invocation failed; the message will be delivered again");
            }
            ended.status == Status::Succeeded
        }
        Err(e) => {
            tracing::warn!(queue = %trigger.queue, function = %trigger.function, error = %e, "starting a triggered invocation");
            false
        }
    }
}
