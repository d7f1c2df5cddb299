//! What can go wrong with a queue operation, classified for the caller: the request is wrong
//! (it fails the same way every time), an ack or a dead-letter operation names a delivery or
//! a message that is not (or no longer) what it says, the log failed (retry if it says so),
//! or the log holds a record this library cannot read (corruption: never skipped).

use crate::MessageId;
use logbook::{LogError, Seqnum};

/// A queue operation's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed: an empty name, 0 shards, a shard count other than the
    /// queue's, a message too large. The message says what to change.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An ack of a delivery that is not the message's current one: it was acked already, or
    /// its visibility timeout passed and another pop took the message, or it was never
    /// delivered by that pop. The ack did nothing, for every reader; do not count the work.
    #[error("message {id} is not in flight under that delivery: acked already, or taken by a later pop after its visibility timeout")]
    NotInFlight { id: MessageId },
    /// A requeue or discard of a message that is not a dead letter of the group.
    #[error("message {id} is not a dead letter of the group")]
    NotDeadLetter { id: MessageId },
    /// The outcome asked for lies in a part of the group's records that a trim removed (a
    /// record whose writer took longer than a trim round to read it back, or an idempotency
    /// key whose first record is that old).
    #[error("the group's records up to {0} were trimmed; the outcome is no longer known")]
    Trimmed(Seqnum),
    /// A record in a queue's stream is not a libqueue record, or contradicts the log.
    #[error("record {seqnum} of a queue's stream cannot be read: {reason}")]
    Corrupt { seqnum: Seqnum, reason: String },
    /// The log failed the call; `is_retryable` says whether trying again may help.
    #[error("log: {0}")]
    Log(#[from] LogError),
}

impl Error {
    /// Whether the same call may succeed if repeated. A retried push without a key may then
    /// push the message twice; push with a key where that matters.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Log(e) if e.is_retryable())
    }

    /// Whether the request itself is wrong (HTTP 4xx): it fails the same way every time.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Error::Invalid(_) | Error::NotInFlight { .. } | Error::NotDeadLetter { .. }
        )
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
