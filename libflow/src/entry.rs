//! The records an instance writes, and the tags that name its streams.
//!
//! An instance's **step stream** (`steps_tag(id)`) holds one record per position: position 0
//! is `Start`, the last is `End`, and each one in between is the outcome of one operation of
//! the workflow, written by a conditional append at its position, so two executions of one
//! instance never both write a position. A record also carries the table writes that take
//! effect with it (`writes`), and then the tag of each written key (`key_tag`): a key's
//! versions are the records carrying its tag, in log order. Signals sent to an instance are
//! plain records of `signal_tag(id, name)`. Records are JSON.

use logbook::Tag;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::Protocol;

/// One record of a step stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub op: Op,
    /// Table writes that take effect with this record, in the order they were made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<Write>,
    /// When the record was made (ms since the Unix epoch): for people, never for replay.
    pub at_ms: u64,
}

/// A write to a table: a new value, or `None` for a delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub table: String,
    pub key: String,
    pub value: Option<Value>,
}

/// How an operation ended: its JSON result, or its failure's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Value),
    Err(String),
}

/// What a workflow instance has come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    Compensated,
    Cancelled,
}

/// The operation a step-stream record is the outcome of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Position 0: the instance's workflow, input, and the table protocols it runs with.
    Start {
        /// The instance's id (for lists of instances).
        #[serde(default)]
        instance: String,
        workflow: String,
        input: Value,
        protocols: BTreeMap<String, Protocol>,
        /// The instance whose child this one is (`Flow::child`): its end is the parent's
        /// record of the call (`Child`), and only the parent's execution drives it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<String>,
    },
    /// A step's result after `attempts` tries.
    Step {
        name: String,
        outcome: Outcome,
        attempts: u32,
    },
    /// A synchronous child call's result.
    Call { function: String, outcome: Outcome },
    /// A child workflow's end (`Flow::child`): one record in the parent's step stream (the
    /// call's result) and in the child's (its last record, in place of an `End`).
    Child {
        workflow: String,
        instance: String,
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The call failed before the child ran (no such workflow, or the id is another
        /// instance's): the record is not in the child's stream.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refused: bool,
    },
    /// An asynchronous child call's invocation id.
    CallAsync {
        function: String,
        invocation: String,
    },
    /// A durable timer: the instance sleeps until `deadline_ms`.
    Timer { deadline_ms: u64 },
    /// A signal taken by a wait (`payload`), or the wait's timeout (`None`).
    Signal {
        name: String,
        payload: Option<Value>,
    },
    /// A logged table read (symmetric and read-log tables) and the value it returned.
    Read {
        table: String,
        key: String,
        value: Option<Value>,
    },
    /// A logged table write (symmetric and write-log tables); the write is in `writes`.
    Write { table: String, key: String },
    /// A value the workflow must see alike on every replay (`now`, `random`).
    Value { name: String, value: Value },
    /// The version `version(change)` chose.
    Version { change: String, version: u32 },
    /// Buffered writes, written before the buffer outgrew one record's tags.
    Flush,
    /// An operation dropped before it finished; the position is filled so later ones go on.
    Abandoned,
    /// The instance was cancelled here: the operation at this position, and every later one
    /// but the compensations, fails with `Error::Cancelled`.
    Cancelled,
    /// The instance's outcome.
    End {
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Op {
    /// The outcome of a replayed step or call (`Slot::replayed` checked the kind).
    pub(crate) fn into_outcome(self) -> Outcome {
        match self {
            Op::Step { outcome, .. } | Op::Call { outcome, .. } => outcome,
            Op::Child {
                status: Status::Succeeded,
                output,
                ..
            } => Outcome::Ok(output.unwrap_or(Value::Null)),
            Op::Child { status, error, .. } => Outcome::Err(
                error.unwrap_or_else(|| format!("the child workflow ended {status:?}")),
            ),
            other => unreachable!("{} has no outcome", other.describe()),
        }
    }

    /// How the operation reads in a non-determinism error.
    pub fn describe(&self) -> String {
        match self {
            Op::Start { workflow, .. } => format!("the start of workflow {workflow:?}"),
            Op::Step { name, .. } => format!("step {name:?}"),
            Op::Call { function, .. } => format!("call of {function:?}"),
            Op::Child { workflow, .. } => format!("child workflow {workflow:?}"),
            Op::CallAsync { function, .. } => format!("asynchronous call of {function:?}"),
            Op::Timer { .. } => "a timer".to_string(),
            Op::Signal { name, .. } => format!("a wait for signal {name:?}"),
            Op::Read { table, key, .. } => format!("a read of {table}/{key}"),
            Op::Write { table, key } => format!("a write of {table}/{key}"),
            Op::Value { name, .. } => format!("{name}()"),
            Op::Version { change, .. } => format!("version({change:?})"),
            Op::Flush => "a flush of buffered writes".to_string(),
            Op::Abandoned => "an abandoned operation".to_string(),
            Op::Cancelled => "the instance's cancellation".to_string(),
            Op::End { .. } => "the end of the instance".to_string(),
        }
    }
}

/// The step stream of instance `id`.
pub fn steps_tag(id: &str) -> Tag {
    Tag::named(&["libflow", "steps", id])
}

/// The id of the child instance started at `position` of instance `parent`.
pub fn child_id(parent: &str, position: u64) -> String {
    format!("{parent}:{position}")
}

/// The versions of `key` in `table`.
pub fn key_tag(table: &str, key: &str) -> Tag {
    Tag::named(&["libflow", "table", table, key])
}

/// Every instance's `Start` record, in a book: the list of instances.
pub fn instances_tag() -> Tag {
    Tag::named(&["libflow", "instances"])
}

/// The name of the signal that cancels an instance (no user signal may start with `libflow.`).
pub const CANCEL_SIGNAL: &str = "libflow.cancel";

/// Every signal sent to instance `id`, whatever its name (what garbage collection trims).
pub fn signals_tag(id: &str) -> Tag {
    Tag::named(&["libflow", "signals", id])
}

/// What instance `id` gave up its task to wait for (`WaitRecord`s): `GET /workflows/{id}`
/// shows the newest while nothing was written after it.
pub fn waits_tag(id: &str) -> Tag {
    Tag::named(&["libflow", "waits", id])
}

/// A note that an execution gave up its task at `position` to wait for a signal (and, with
/// `deadline_ms`, a timer). Not part of the step stream: it changes no replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitRecord {
    pub position: u64,
    pub signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// The signals named `name` sent to instance `id`.
pub fn signal_tag(id: &str, name: &str) -> Tag {
    Tag::named(&["libflow", "signal", id, name])
}

/// The record a signal is: its payload, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalRecord {
    pub instance: String,
    pub name: String,
    pub payload: Value,
    /// The signal's id: a signal appended twice under one id is one signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_and_distinct_per_stream() {
        assert_eq!(steps_tag("a"), steps_tag("a"));
        assert_ne!(steps_tag("a"), steps_tag("b"));
        assert_ne!(key_tag("t", "ab"), key_tag("ta", "b"));
        assert_ne!(signal_tag("i", "x"), steps_tag("i"));
        // The names are part of the log's format: they must never change.
        assert_eq!(steps_tag("a"), Tag(0x0f70_9c93_64e3_f434));
    }

    #[test]
    fn an_entry_round_trips_through_json() {
        let entry = Entry {
            op: Op::Step {
                name: "s".into(),
                outcome: Outcome::Ok(serde_json::json!({"n": 1})),
                attempts: 2,
            },
            writes: vec![Write {
                table: "t".into(),
                key: "k".into(),
                value: None,
            }],
            at_ms: 7,
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        assert_eq!(serde_json::from_slice::<Entry>(&bytes).unwrap(), entry);
    }
}
