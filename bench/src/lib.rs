//! Load generators that drive a running Tally gateway over HTTP and report throughput and
//! latency. It talks only HTTP to addresses it is given; it starts no server and reads no env.
//!
//! `run_append` is a closed-loop append benchmark: `clients` tasks each append, wait for the
//! seqnum, and append again until the duration ends. Its report prints for people
//! (`print_human`) and as JSON (`to_json`).

mod ack_log;
mod append;
mod filler;
mod progress;
mod report;

pub use ack_log::{read_ack_log, Ack};
pub use append::{
    base_url, root_cause, run_append, AppendConfig, ErrorBody, ErrorReply, CLIENTS_MAX,
    DURATION_MAX, RECORD_BYTES_MAX, TAGS_MAX,
};
pub use filler::{filler, filler_origin, FILLER_HEADER_BYTES};
pub use report::{AppendReport, Percentiles};
