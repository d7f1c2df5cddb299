//! libflow: durable, exactly-once workflows on the log.
//!
//! A workflow is an `async fn(Flow, In) -> Result<Out, Error>` registered with `Workflows`.
//! An instance (an id) keeps its history in a step stream of the log: one record per
//! operation, each a conditional append at its position, so two executions of one instance
//! never both succeed at a position and the loser stops. A crashed, restarted or re-driven
//! instance replays its history (operations return their logged outcome without running
//! again) and continues where it stopped: its effects happen once.
//!
//! - `flow.step(name, || async { .. })`: run once, result logged; retries with backoff.
//!   `step_with_key(name, |key| async { .. })` also hands it a key that is the same in every
//!   run and try of the step (for a keyed libstore store: its writes take effect once).
//! - `flow.call(function, &input)` / `call_async`: child invocations, once per position.
//! - `flow.child(workflow, &input)`: a child instance (`{id}:{position}`), whose end is one
//!   record in both step streams (Halfmoon's invocation edge).
//! - `flow.sleep(d)`, `wait_signal(name)`, `wait_signal_timeout(name, d)`: durable timers and
//!   events from outside (`signal`).
//! - `flow.join_all(..)`: fan-out and fan-in, deterministic on replay.
//! - `.compensate_with_call(..)` on a step or call: sagas; a failed instance runs the
//!   compensations of what succeeded, newest first, each once, and ends `compensated`.
//! - `flow.now()`, `random()`, `uuid()`, `version(change, max)`.
//! - `flow.table(name)`: exactly-once key-value tables in the log, with three logging
//!   protocols (`Protocol`).
//!
//! libflow depends on `logbook` and the SDK only; it runs wherever a function runs.

mod entry;
mod error;
mod flow;
mod query;
mod schedule;
mod table;
mod workflows;

pub use entry::{instances_tag, key_tag, signal_tag, steps_tag, Status, CANCEL_SIGNAL};
pub use error::Error;
pub use flow::{CallBuilder, Flow, RetryPolicy, Step, StepBody, WithKey};
pub use query::{query_function, query_input, Query, QueryError};
pub use schedule::{Schedule, SCHEDULE_EVERY_MS_MIN, SCHEDULE_WORKFLOW};
/// Stopping schedules.
pub mod schedules {
    pub use crate::schedule::{stop, stopped};
}
pub use table::{Protocol, Table};
pub use workflows::{
    cancel_input, check_instance_id, check_signal_name, collect, describe, list, signal,
    signal_input, signal_key, start_input, wait_ended, Collected, Delivery, Ended, Instance,
    SignalError, StartInput, StepView, Summary, Workflows, INSTANCE_ID_BYTES_MAX,
    SUSPEND_AFTER_DEFAULT, WORKFLOW_LIMITS,
};
