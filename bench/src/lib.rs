//! Load generators that drive a running system and report throughput and latency. They talk
//! only to addresses they are given; they start no server and read no env.
//!
//! `run_append` is a closed-loop append benchmark against Tally's gateways over HTTP: `clients`
//! tasks each append, wait for the seqnum, and append again until the duration ends. With the
//! `jetstream` feature, `run_jetstream` does the same against a NATS JetStream stream (publish,
//! await the PubAck). Both report in one shape (`AppendReport`), which prints for people
//! (`print_human`) and as JSON (`to_json`). `run_calls` calls a function over HTTP the same way
//! (Tally's `/function/{name}`, or Restate's ingress) and reports a `CallReport`;
//! `run_workflows` starts a new workflow instance per call on Tally's gateways
//! (`/workflows/{name}/{id}`) and reports the same way. All of them share one driver
//! (`closed_loop`). `run_store` measures transactions over objects (YCSB-T transfers, Retwis)
//! on Tally's `bank` and `retwis` functions or on PostgreSQL at SERIALIZABLE, counting
//! aborts apart from errors. `run_queue` measures a queue with producers and consumers at once
//! on Tally's queues over HTTP, or, with the `jetstream` and `redis` features, on a JetStream
//! work-queue stream or a Redis stream's consumer group; its flags (`QueueArgs`) are the same
//! in every binary that runs it. `run_objects` calls methods of objects (a counter's `add` on
//! Tally or on a Restate virtual object) or runs transfers between accounts as transactions
//! (serializable or sagas) on Tally, counting failed and undecided transactions apart from
//! errors.

mod ack_log;
mod append;
mod call;
mod closed_loop;
mod cpu;
mod filler;
mod http;
#[cfg(feature = "jetstream")]
mod jetstream;
#[cfg(feature = "jetstream")]
mod jetstream_queue;
mod object;
mod progress;
mod queue;
#[cfg(feature = "redis")]
mod redis_append;
#[cfg(feature = "redis")]
mod redis_queue;
mod report;
mod store;
#[cfg(test)]
mod test_server;
mod workflow;

pub use ack_log::{read_ack_log, Ack};
pub use append::{
    base_url, root_cause, run_append, AppendConfig, ErrorBody, ErrorReply, LoadArgs, Protocol,
    CLIENTS_MAX, DURATION_MAX, RECORD_BYTES_MAX, TAGS_MAX,
};
pub use call::{function_url, run_calls, CallConfig, ID_PLACEHOLDER, INPUT_BYTES_MAX};
pub use filler::{filler, filler_origin, FILLER_HEADER_BYTES};
pub use http::client_builder_for;
#[cfg(feature = "jetstream")]
pub use jetstream::{run_jetstream, JetStreamConfig, REPLICAS_MAX};
pub use object::{
    run_objects, ObjectArgs, ObjectConfig, ObjectReport, ObjectTarget, ObjectWorkload, TxnStyle,
    ACCOUNT_DEPOSIT, OBJECT_CLIENTS_MAX, OBJECT_KEYS_MAX,
};
pub use queue::{
    default_shards, run_queue, QueueArgs, QueueConfig, QueueReport, QueueTarget, GROUP,
    MESSAGE_BYTES_MAX, POP_WAIT, QUEUE_CLIENTS_MAX, SHARDS_MAX,
};
#[cfg(feature = "redis")]
pub use redis_append::{run_redis_append, RedisAppendConfig};
pub use report::{AppendReport, CallReport, Percentiles, RunConfig};
pub use store::{
    run_store, Distribution, StoreConfig, StoreReport, StoreTarget, TransferMode, Workload,
    RETWIS_MIX, SERIALIZATION_TRIES_MAX,
};
pub use workflow::{run_workflows, workflow_url, WorkflowConfig, WAIT_MS_MAX};
