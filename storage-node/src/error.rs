//! The errors a `Store` returns, classified for the caller: corruption, IO (with a full disk
//! recognisable), a bad request, or a closed store.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// Stored bytes failed their checksum or framing. Never skipped or truncated away: repair
    /// the segment from a replica.
    #[error("corrupt data in segment {segment} at offset {offset_bytes}: {reason}")]
    Corrupt {
        segment: String,
        offset_bytes: u64,
        reason: String,
    },
    /// An operating-system error. After a failed write or sync the store stops accepting
    /// writes (a failed fsync cannot be retried safely); reopen it to recover from the files.
    #[error("io error: {message}")]
    Io {
        message: String,
        /// The `errno`, when the error came from the kernel.
        errno: Option<i32>,
    },
    /// The request is malformed: a local-id gap or repeat, a record over its limit.
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// The store was shut down.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// An `Io` error from `err`, with `context` saying what was being done.
    pub fn io(context: impl std::fmt::Display, err: &std::io::Error) -> StoreError {
        StoreError::Io {
            message: format!("{context}: {err}"),
            errno: err.raw_os_error(),
        }
    }

    /// Whether the disk is full (`ENOSPC`).
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Io { errno: Some(e), .. } if *e == libc::ENOSPC)
    }
}

impl From<StoreError> for logbook::LogError {
    fn from(e: StoreError) -> logbook::LogError {
        match e {
            StoreError::Corrupt {
                segment,
                offset_bytes,
                reason,
            } => logbook::LogError::Corrupt {
                segment,
                offset_bytes,
                reason,
            },
            StoreError::Io { message, .. } => logbook::LogError::Io(message),
            StoreError::BadArgument(m) => logbook::LogError::BadArgument(m),
            StoreError::Closed => logbook::LogError::Unavailable("storage closed".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_recognised_as_no_space() {
        let err = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(StoreError::io("write", &err).is_no_space());
        let err = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(!StoreError::io("write", &err).is_no_space());
    }

    #[test]
    fn errors_map_to_log_errors_by_class() {
        let log: logbook::LogError = StoreError::Closed.into();
        assert!(log.is_retryable());
        let log: logbook::LogError = StoreError::BadArgument("x".into()).into();
        assert_eq!(log.code(), "bad_argument");
    }
}
