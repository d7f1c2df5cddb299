//! libobject's errors, classified for the caller: the call's own fault (no such class or
//! method, refused by an access rule, malformed input), the method's failure, and the log's.

use logbook::LogError;
use tally_sdk::FunctionError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No class of this name is installed.
    #[error("no class {0:?}")]
    NoClass(String),
    /// The class has no such method (nor inherits one).
    #[error("class {class:?} has no method {method:?}")]
    NoMethod { class: String, method: String },
    /// An access rule refuses the call; nothing was logged.
    #[error("{0}")]
    Forbidden(String),
    /// Malformed input: a package, a call, a state that does not fit the class's fields.
    #[error("{0}")]
    Invalid(String),
    /// The method failed (its own logic, or a panic); the object's state is unchanged.
    #[error("{0}")]
    Failed(String),
    /// A synchronous call into an object that waits on the same chain of calls.
    #[error("{0}")]
    Reentrant(String),
    /// The method's function could not run (no gateway serves it, its worker is gone).
    #[error("{0}")]
    Unavailable(String),
    /// A record of an object's streams that libobject did not write, or cannot read.
    #[error("corrupt object record at seqnum {seqnum}: {message}")]
    Corrupt { seqnum: u64, message: String },
    #[error("log: {0}")]
    Log(#[from] LogError),
}

impl Error {
    /// The method failed by its own logic: the call's error, the state unchanged.
    pub fn failed(message: impl Into<String>) -> Error {
        Error::Failed(message.into())
    }

    /// The error's kind as a done record keeps it, and as the HTTP error code says it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoClass(_) => ErrorKind::NoClass,
            Error::NoMethod { .. } => ErrorKind::NoMethod,
            Error::Forbidden(_) => ErrorKind::Forbidden,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Failed(_) | Error::Corrupt { .. } => ErrorKind::Failed,
            Error::Reentrant(_) => ErrorKind::Reentrant,
            Error::Unavailable(_) | Error::Log(_) => ErrorKind::Unavailable,
        }
    }

    /// The error of `kind` with `message`, as a done record or a nested call hands it back.
    pub fn of_kind(kind: ErrorKind, message: String) -> Error {
        match kind {
            ErrorKind::NoClass => Error::NoClass(message),
            ErrorKind::NoMethod => Error::Failed(message),
            ErrorKind::Forbidden => Error::Forbidden(message),
            ErrorKind::Invalid => Error::Invalid(message),
            ErrorKind::Failed => Error::Failed(message),
            ErrorKind::Reentrant => Error::Reentrant(message),
            ErrorKind::Unavailable => Error::Unavailable(message),
        }
    }
}

/// What kind of error ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NoClass,
    NoMethod,
    Forbidden,
    Invalid,
    Failed,
    Reentrant,
    Unavailable,
}

/// A nested call's error crosses a function boundary as a `FunctionError`; its kind rides in
/// front of the message (`[forbidden] ...`), so the caller's `This::call` gets it back.
impl From<Error> for FunctionError {
    fn from(e: Error) -> FunctionError {
        let kind = serde_json::to_value(e.kind())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let message = format!("[{kind}] {e}");
        match e.kind() {
            ErrorKind::Unavailable => FunctionError::unavailable(message),
            ErrorKind::Invalid => FunctionError::bad_input(message),
            _ => FunctionError::new(message),
        }
    }
}

impl From<FunctionError> for Error {
    fn from(e: FunctionError) -> Error {
        let (kind, message) = split_kind(&e.message);
        match kind {
            Some(kind) => Error::of_kind(kind, message.to_string()),
            None if e.unavailable => Error::Unavailable(e.message),
            None if e.bad_input => Error::Invalid(e.message),
            None => Error::Failed(e.message),
        }
    }
}

/// `[kind] message` split, if the message starts with a kind libobject knows. A function's
/// caller may have put its own name in front (`fn: [kind] message`); the kind is looked for
/// after it too.
fn split_kind(message: &str) -> (Option<ErrorKind>, &str) {
    let start = message.find('[');
    let Some(start) = start else {
        return (None, message);
    };
    let rest = &message[start + 1..];
    let Some(end) = rest.find("] ") else {
        return (None, message);
    };
    match serde_json::from_value::<ErrorKind>(serde_json::Value::String(rest[..end].into())) {
        Ok(kind) => (Some(kind), &rest[end + 2..]),
        Err(_) => (None, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_a_function_boundary() {
        for e in [
            Error::Forbidden("no".into()),
            Error::Invalid("bad".into()),
            Error::Failed("insufficient funds".into()),
            Error::Reentrant("loop".into()),
            Error::Unavailable("gone".into()),
        ] {
            let mut f = FunctionError::from(e.clone());
            assert_eq!(Error::from(f.clone()), e);
            // A caller's Ctx::invoke puts the callee's name in front.
            f.message = format!("libobject.call: {}", f.message);
            assert_eq!(Error::from(f), e);
        }
        assert_eq!(
            Error::from(FunctionError::new("plain [x] failure")),
            Error::Failed("plain [x] failure".into())
        );
    }
}
