//! What can stop a workflow operation, classified for the driver: a failure of the workflow's
//! own logic (logged, then compensated), an infrastructure error worth running the instance
//! again for, or a reason to stop this execution at once (another execution owns the
//! instance, or the code no longer matches the history).

use logbook::LogError;
use tally_sdk::FunctionError;

/// A workflow operation's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The workflow's (or a step's) own failure. `retryable` steps are tried again as their
    /// retry policy says; a terminal failure or the last try fails the operation.
    #[error("{message}")]
    Failed { message: String, retryable: bool },
    /// Replaying the instance met another operation than the history holds at `position`.
    #[error(
        "non-determinism at position {position}: the history has {history} but the code asks for {code}"
    )]
    NonDeterminism {
        position: u64,
        history: String,
        code: String,
    },
    /// Another execution of this instance wrote `position` first; this one stops.
    #[error("another execution of the instance owns position {position}")]
    Superseded { position: u64 },
    /// The instance was cancelled (`POST /workflows/{id}/cancel`): its compensations run, and
    /// it ends `cancelled`. Let it pass (`?`).
    #[error("the instance was cancelled")]
    Cancelled,
    /// The instance waits (a timer or a signal) and gave up its task: a timer's invocation,
    /// or the signal's, drives it on. Let it pass (`?`): it ends this execution.
    #[error("the instance is suspended until {0}")]
    Suspended(String),
    /// The log failed in a way the instance cannot decide about; the execution stops and the
    /// instance is driven again later from its history.
    #[error("log: {0}")]
    Log(LogError),
}

impl Error {
    /// A failure that is worth trying again (a step retries it as its policy says).
    pub fn retryable(message: impl Into<String>) -> Error {
        Error::Failed {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that no retry can fix: the step or workflow fails at once.
    pub fn terminal(message: impl Into<String>) -> Error {
        Error::Failed {
            message: message.into(),
            retryable: false,
        }
    }

    /// Whether this stops the execution without deciding the instance's outcome.
    pub(crate) fn stops_execution(&self) -> bool {
        matches!(
            self,
            Error::Superseded { .. } | Error::Suspended(_) | Error::Log(_)
        )
    }
}

impl From<LogError> for Error {
    fn from(e: LogError) -> Error {
        Error::Log(e)
    }
}

impl From<FunctionError> for Error {
    fn from(e: FunctionError) -> Error {
        // A callee's bad input will be as bad next time; an unavailable one may come back.
        Error::Failed {
            message: e.message,
            retryable: !e.bad_input,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::terminal(format!("json: {e}"))
    }
}
