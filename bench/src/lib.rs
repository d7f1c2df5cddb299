//! Load generators that drive a running system and report throughput and latency. They talk
//! only to addresses they are given; they start no server and read no env.
//!
//! `run_append` is a closed-loop append benchmark against Tally's gateways over HTTP: `clients`
//! tasks each append, wait for the seqnum, and append again until the duration ends. With the
//! `jetstream` feature, `run_jetstream` does the same against a NATS JetStream stream (publish,
//! await the PubAck). Both share the driver (`closed_loop`) and the report (`AppendReport`),
//! which prints for people (`print_human`) and as JSON (`to_json`).

mod ack_log;
mod append;
mod closed_loop;
mod filler;
#[cfg(feature = "jetstream")]
mod jetstream;
mod progress;
mod report;

pub use ack_log::{read_ack_log, Ack};
pub use append::{
    base_url, root_cause, run_append, AppendConfig, ErrorBody, ErrorReply, CLIENTS_MAX,
    DURATION_MAX, RECORD_BYTES_MAX, TAGS_MAX,
};
pub use filler::{filler, filler_origin, FILLER_HEADER_BYTES};
#[cfg(feature = "jetstream")]
pub use jetstream::{run_jetstream, JetStreamConfig, REPLICAS_MAX};
pub use report::{AppendReport, Percentiles, RunConfig};
