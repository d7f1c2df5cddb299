//! What can go wrong with an object operation or a transaction, classified for the caller: the
//! request itself is wrong (a bad path, a type mismatch, a document too large: the same request
//! will fail again), or the log failed (retry if the log says so), or the log holds a record
//! this library cannot read (corruption: never skipped).
//!
//! A transaction that aborts is not an error: it is an `Outcome`.

use logbook::{LogError, Seqnum};

/// An object operation's or a transaction's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The path is malformed, or leads through something that is not an object or an array,
    /// or past an array's end, or to a member that does not exist.
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    /// The operation needs another kind of value where the path leads (`fetch_add` on a
    /// string, `push` on an object).
    #[error("{op} at {path:?} needs {expected}, but finds {found}")]
    TypeMismatch {
        op: &'static str,
        path: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A number would leave the range JSON numbers are kept in (i64, u64 or finite f64).
    #[error("{op} at {path:?} overflows")]
    Overflow { op: &'static str, path: String },
    /// A document, a value or a transaction is larger than its limit.
    #[error("{what} is {bytes} bytes; the limit is {max} bytes")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        max: usize,
    },
    /// The request is malformed in another way: an empty name, too many objects in one
    /// transaction, a push limit of 0. The message says what to change.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A keyed operation whose key names another operation in the log (another kind of
    /// operation, or another object): the key is not unique in its step. Nothing changed.
    #[error("key {key:?} names another operation, at seqnum {seqnum}: each keyed operation needs a key of its own")]
    KeyReused { key: String, seqnum: Seqnum },
    /// A read at a snapshot below a collection's horizon (a transaction that outlived
    /// `Settings::transaction_lifetime`): the versions it needs are trimmed. Begin again.
    #[error("the snapshot at seqnum {snapshot} is below the collected horizon {horizon}: begin the transaction again")]
    SnapshotCollected { snapshot: Seqnum, horizon: Seqnum },
    /// A record in an object's stream is not a libstore record, or contradicts the log.
    #[error("record {seqnum} of an object's stream cannot be read: {reason}")]
    Corrupt { seqnum: Seqnum, reason: String },
    /// The log failed the call; `is_retryable` says whether trying again may help.
    #[error("log: {0}")]
    Log(#[from] LogError),
}

impl Error {
    /// Whether the same call may succeed if repeated (the log was unavailable, or an append
    /// was discarded by a view change). A retried write may then take effect twice: use a
    /// transaction with a condition, or `compare_and_set`, where that matters.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Log(e) if e.is_retryable())
    }

    /// Whether the request itself is wrong (HTTP 4xx): it fails the same way every time.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Error::BadPath { .. }
                | Error::TypeMismatch { .. }
                | Error::Overflow { .. }
                | Error::TooLarge { .. }
                | Error::Invalid(_)
        )
    }

    pub(crate) fn bad_path(path: &str, reason: impl Into<String>) -> Error {
        Error::BadPath {
            path: path.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for tally_sdk::FunctionError {
    fn from(e: Error) -> tally_sdk::FunctionError {
        if e.is_bad_request() {
            tally_sdk::FunctionError::bad_input(e.to_string())
        } else if e.is_retryable() {
            tally_sdk::FunctionError::unavailable(e.to_string())
        } else {
            tally_sdk::FunctionError::new(e.to_string())
        }
    }
}
