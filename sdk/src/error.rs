//! What a function returns: its output bytes, or a `FunctionError` that says whose fault the
//! failure is (the caller's bad input, a function that could not run, or the function itself).

use bytes::Bytes;
use logbook::LogError;

/// A function's failure: the caller gets its message, with 400 for bad input and 500 else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FunctionError {
    pub message: String,
    /// The input was malformed: the caller's fault, not the function's.
    pub bad_input: bool,
    /// The function could not run (its worker is gone): HTTP 503, worth retrying later.
    pub unavailable: bool,
}

impl FunctionError {
    pub fn new(message: impl Into<String>) -> FunctionError {
        FunctionError {
            message: message.into(),
            bad_input: false,
            unavailable: false,
        }
    }

    pub fn bad_input(message: impl Into<String>) -> FunctionError {
        FunctionError {
            bad_input: true,
            ..FunctionError::new(message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> FunctionError {
        FunctionError {
            unavailable: true,
            ..FunctionError::new(message)
        }
    }
}

impl From<LogError> for FunctionError {
    fn from(e: LogError) -> FunctionError {
        FunctionError::new(format!("log: {e}"))
    }
}

impl From<serde_json::Error> for FunctionError {
    fn from(e: serde_json::Error) -> FunctionError {
        FunctionError::new(format!("json: {e}"))
    }
}

/// What a function returns.
pub type FunctionResult = Result<Bytes, FunctionError>;
