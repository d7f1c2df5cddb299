//! The errors a `LogBook` call returns, classified so callers know whether to retry.

use crate::Seqnum;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogError {
    /// The request is malformed: a zero tag, empty data, a reversed range. Never retry.
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// A record, aux data or batch exceeds its limit. Never retry.
    #[error("{what} is {bytes} bytes; the limit is {max} bytes")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        max: usize,
    },
    /// The append was pending when its view was sealed and was not ordered. Retry it.
    #[error("append discarded by a view change; retry it")]
    Discarded,
    /// A conditional append was ordered but lost its race: the condition's stream already had
    /// a record at the requested position. The record is not visible to reads.
    #[error(
        "condition failed: the stream already holds {stream_len} records (record at {seqnum})"
    )]
    CondFailed { seqnum: Seqnum, stream_len: u64 },
    /// The record was trimmed away.
    #[error("record {0} was trimmed")]
    Trimmed(Seqnum),
    /// Stored bytes failed their checksum or framing. Never skipped silently.
    #[error("corrupt data in segment {segment} at offset {offset_bytes}: {reason}")]
    Corrupt {
        segment: String,
        offset_bytes: u64,
        reason: String,
    },
    /// The log is not serving right now (starting, shutting down, overloaded). Retry later.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// An IO error on the serving node, e.g. a full disk.
    #[error("io error: {0}")]
    Io(String),
}

impl LogError {
    /// Whether the same call may succeed if repeated.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Discarded | LogError::Unavailable(_))
    }

    /// A stable, never reused code for the error's kind, for wire formats and HTTP bodies.
    pub fn code(&self) -> &'static str {
        match self {
            LogError::BadArgument(_) => "bad_argument",
            LogError::TooLarge { .. } => "too_large",
            LogError::Discarded => "discarded",
            LogError::CondFailed { .. } => "cond_failed",
            LogError::Trimmed(_) => "trimmed",
            LogError::Corrupt { .. } => "corrupt",
            LogError::Unavailable(_) => "unavailable",
            LogError::Io(_) => "io",
        }
    }
}
