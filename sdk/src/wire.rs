//! Conversions between the worker protocol's messages (`logbook/proto/worker.proto`) and the
//! SDK's types, used by both ends of a worker's connection: the `Worker` here and the
//! gateway's worker service. Not part of the SDK's API.

use crate::{FunctionError, FunctionResult};
use logbook::rpc::worker_pb::{self as wpb, reply};
use logbook::{BookId, LogError, Record, Seqnum, Tag};

pub fn call_result(result: Option<wpb::call_done::Result>) -> FunctionResult {
    match result {
        Some(wpb::call_done::Result::Output(output)) => Ok(output),
        Some(wpb::call_done::Result::Failure(f)) => Err(failure_of(f)),
        None => Err(FunctionError::new("the worker sent no result")),
    }
}

pub fn failure_of(f: wpb::Failure) -> FunctionError {
    FunctionError {
        message: f.message,
        bad_input: f.bad_input,
        unavailable: false,
    }
}

pub fn failure(e: &FunctionError) -> wpb::Failure {
    wpb::Failure {
        message: e.message.clone(),
        bad_input: e.bad_input,
    }
}

pub fn tags(tags: &[u64]) -> Vec<Tag> {
    tags.iter().map(|t| Tag(*t)).collect()
}

pub fn record_pb(r: Record) -> wpb::Record {
    wpb::Record {
        seqnum: r.seqnum.0,
        tags: r.tags.iter().map(|t| t.0).collect(),
        data: r.data,
        aux: r.aux,
    }
}

pub fn record_of(r: wpb::Record, book: BookId) -> Record {
    Record {
        seqnum: Seqnum(r.seqnum),
        book,
        tags: tags(&r.tags),
        data: r.data,
        aux: r.aux,
    }
}

pub fn log_failure(e: &LogError) -> reply::Result {
    let (seqnum, stream_len) = match e {
        LogError::CondFailed { seqnum, stream_len } => (seqnum.0, *stream_len),
        LogError::Trimmed(seqnum) => (seqnum.0, 0),
        _ => (0, 0),
    };
    reply::Result::LogFailure(wpb::LogFailure {
        code: e.code().to_string(),
        message: e.to_string(),
        seqnum,
        stream_len,
    })
}

/// A LogBook error from its wire form; codes without their own fields keep the message.
pub fn log_error_of(f: wpb::LogFailure) -> LogError {
    match f.code.as_str() {
        "cond_failed" => LogError::CondFailed {
            seqnum: Seqnum(f.seqnum),
            stream_len: f.stream_len,
        },
        "trimmed" => LogError::Trimmed(Seqnum(f.seqnum)),
        "discarded" => LogError::Discarded,
        "bad_argument" | "too_large" => LogError::BadArgument(f.message),
        "unavailable" => LogError::Unavailable(f.message),
        _ => LogError::Io(f.message),
    }
}
