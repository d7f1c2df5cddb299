//! Schedules: a workflow started every interval, once per tick, by a chain of instances of the
//! workflow `libflow.schedule`. Instance `schedule.NAME.N` sleeps until tick N (a durable
//! timer: it holds no task, and survives the death of its gateway), starts the scheduled
//! workflow's instance `NAME.N`, and starts `schedule.NAME.N+1`; then it ends, so no history
//! grows without bound. Both starts are child calls, once per tick however often the chain
//! is driven again; ticks missed while no gateway ran are started, in order, when one runs
//! again. `stop` ends a schedule: each link looks (a logged step) whether its schedule was
//! stopped before it starts its tick, so a link already on its way starts nothing.

use crate::workflows::StartInput;
use crate::{check_instance_id, Error, Flow, Workflows};
use logbook::{Seqnum, Tag};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tally_sdk::Ctx;

/// The workflow that runs schedules.
pub const SCHEDULE_WORKFLOW: &str = "libflow.schedule";
/// The shortest interval of a schedule, in milliseconds.
pub const SCHEDULE_EVERY_MS_MIN: u64 = 1000;

/// A workflow started every `every_ms`, the first time at `first_ms` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub workflow: String,
    #[serde(default)]
    pub input: Value,
    pub every_ms: u64,
    pub first_ms: u64,
    /// The tick this instance of the chain starts (from 0).
    #[serde(default)]
    pub tick: u64,
}

impl Schedule {
    /// Checks the schedule's name (it becomes part of instance ids) and interval.
    pub fn check(&self) -> Result<(), String> {
        check_instance_id(&self.name)?;
        if self.name.contains('.') {
            return Err(format!("a schedule's name has no '.': {:?}", self.name));
        }
        if self.workflow.is_empty() || self.workflow == SCHEDULE_WORKFLOW {
            return Err(format!("a schedule cannot start {:?}", self.workflow));
        }
        if self.every_ms < SCHEDULE_EVERY_MS_MIN {
            return Err(format!(
                "a schedule's interval is at least {SCHEDULE_EVERY_MS_MIN} ms, not {}",
                self.every_ms
            ));
        }
        Ok(())
    }

    /// The id of the chain's instance that starts tick `tick`.
    pub fn chain_id(name: &str, tick: u64) -> String {
        format!("schedule.{name}.{tick}")
    }

    /// The id of the scheduled workflow's instance of tick `tick`.
    pub fn tick_id(&self, tick: u64) -> String {
        format!("{}.{tick}", self.name)
    }

    /// The instance that starts the schedule, and its function's input.
    pub fn start(&self) -> (String, bytes::Bytes) {
        let id = Schedule::chain_id(&self.name, self.tick);
        let input = crate::start_input(&id, serde_json::to_value(self).expect("serializes"));
        (id, input)
    }
}

/// The stream of schedule `name`'s stop record.
fn stop_tag(name: &str) -> Tag {
    logbook::Tag::named(&["libflow", "schedule-stop", name])
}

/// Stops schedule `name` (in the context's book): no tick starts after this returns.
pub async fn stop(ctx: &Ctx, name: &str) -> Result<Seqnum, Error> {
    let record = json!({ "schedule": name, "stopped": true }).to_string();
    Ok(ctx.append(&[stop_tag(name)], record).await?)
}

/// Whether schedule `name` was stopped.
pub async fn stopped(ctx: &Ctx, name: &str) -> Result<bool, Error> {
    Ok(ctx.read_next(stop_tag(name), Seqnum(0)).await?.is_some())
}

async fn run(flow: Flow, schedule: Schedule) -> Result<Value, Error> {
    let at = schedule
        .first_ms
        .saturating_add(schedule.tick.saturating_mul(schedule.every_ms));
    flow.sleep_until(at).await?;
    let (ctx, name) = (flow.ctx().clone(), schedule.name.clone());
    let was_stopped: bool = flow
        .step("stopped", move || {
            let (ctx, name) = (ctx.clone(), name.clone());
            async move { stopped(&ctx, &name).await }
        })
        .await?;
    if was_stopped {
        return Ok(json!({ "stopped": true }));
    }
    let id = schedule.tick_id(schedule.tick);
    let start = StartInput {
        instance: id.clone(),
        input: schedule.input.clone(),
        parent: None,
        signal: None,
    };
    flow.call_async(&schedule.workflow, &start).await?;
    let next = Schedule {
        tick: schedule.tick + 1,
        ..schedule.clone()
    };
    let chain = StartInput {
        instance: Schedule::chain_id(&next.name, next.tick),
        input: serde_json::to_value(&next)?,
        parent: None,
        signal: None,
    };
    flow.call_async(SCHEDULE_WORKFLOW, &chain).await?;
    Ok(json!({ "started": id }))
}

impl Workflows {
    /// Serves schedules (`SCHEDULE_WORKFLOW`) beside the workflows they start.
    pub fn with_schedules(&mut self) -> &mut Workflows {
        self.register(SCHEDULE_WORKFLOW, run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_checked_and_names_its_instances() {
        let s = Schedule {
            name: "nightly".into(),
            workflow: "steps".into(),
            input: Value::Null,
            every_ms: 60_000,
            first_ms: 0,
            tick: 0,
        };
        assert_eq!(s.check(), Ok(()));
        assert_eq!(Schedule::chain_id("nightly", 3), "schedule.nightly.3");
        assert_eq!(s.tick_id(3), "nightly.3");
        let fast = Schedule {
            every_ms: 10,
            ..s.clone()
        };
        assert!(fast.check().unwrap_err().contains("at least"));
        let dotted = Schedule {
            name: "a.b".into(),
            ..s
        };
        assert!(dotted.check().is_err());
    }
}
