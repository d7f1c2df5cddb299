//! Dataflow methods (Oparaca's macro functions): a method declared as calls on objects whose
//! keys and inputs may use the method's input and other steps' outputs. A step runs once the
//! steps it uses have answered, steps that do not depend on each other run at once, and each
//! runs once: the dataflow is a libflow workflow, each step a keyed call of `libobject.call`.
//! It changes no state of its own object, and it is not a transaction: a step that fails ends
//! it with that step's error, after the steps before it took effect.
//!
//! Expressions: a JSON string that starts with `$` is replaced by a value: `$input` (the
//! method's input), `$key` (the object's key), `$STEP` (that step's output), each followed by
//! any `.field` path (`$input.account`, `$seat.order`). Other values are taken as they are.

use crate::{CallRequest, Error as ObjectError, CALL_FUNCTION};
use libflow::{Error, Flow, RetryPolicy, Workflows};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The workflow that runs dataflow methods.
pub const DATAFLOW_WORKFLOW: &str = "libobject.dataflow";
/// Most steps in a dataflow.
pub const DATAFLOW_STEPS_MAX: usize = 64;

/// One step: a call on an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Its name: `$NAME` is its output.
    pub step: String,
    pub class: String,
    /// The object's key: a string, or an expression that gives one.
    pub key: String,
    pub method: String,
    #[serde(default)]
    pub input: Value,
}

/// A dataflow method's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataflow {
    pub steps: Vec<Step>,
    /// What it answers (an expression over the steps), or every step's output by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// What the dataflow workflow is given: the definition as it was when the call started (so a
/// package installed meanwhile changes nothing of a dataflow under way), and the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataflowRun {
    pub dataflow: Dataflow,
    pub key: String,
    pub input: Value,
}

/// The roots a value's expressions use: `input`, `key`, step names.
fn roots(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            if let Some(expr) = s.strip_prefix('$') {
                into.insert(expr.split('.').next().unwrap_or_default().to_string());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| roots(v, into)),
        Value::Object(members) => members.values().for_each(|v| roots(v, into)),
        _ => {}
    }
}

impl Step {
    /// The steps this one uses.
    fn uses(&self) -> BTreeSet<String> {
        let mut used = BTreeSet::new();
        roots(&Value::String(self.key.clone()), &mut used);
        roots(&self.input, &mut used);
        used.retain(|r| r != "input" && r != "key");
        used
    }
}

impl Dataflow {
    /// Steps have distinct names (not `input` or `key`), use only steps that exist, and
    /// form no cycle.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.len() > DATAFLOW_STEPS_MAX {
            return Err(format!("a dataflow has 1 to {DATAFLOW_STEPS_MAX} steps"));
        }
        let mut names = BTreeSet::new();
        for s in &self.steps {
            if !crate::valid_name(&s.step) || s.step == "input" || s.step == "key" {
                return Err(format!("step {:?}: a step name is 1 to 64 letters, digits, '_' or '-', not input or key", s.step));
            }
            if !names.insert(s.step.clone()) {
                return Err(format!("two steps are named {:?}", s.step));
            }
        }
        for s in &self.steps {
            if let Some(missing) = s.uses().into_iter().find(|u| !names.contains(u)) {
                return Err(format!(
                    "step {:?} uses ${missing}, which is no step",
                    s.step
                ));
            }
        }
        if let Some(output) = &self.output {
            let mut used = BTreeSet::new();
            roots(output, &mut used);
            if let Some(missing) = used
                .into_iter()
                .find(|u| !names.contains(u) && u != "input" && u != "key")
            {
                return Err(format!("the output uses ${missing}, which is no step"));
            }
        }
        self.waves().map(|_| ())
    }

    /// The steps in waves: each wave's steps use only steps of earlier waves.
    fn waves(&self) -> Result<Vec<Vec<usize>>, String> {
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut left: Vec<usize> = (0..self.steps.len()).collect();
        let mut waves = Vec::new();
        while !left.is_empty() {
            let (ready, rest): (Vec<usize>, Vec<usize>) = left
                .iter()
                .partition(|&&i| self.steps[i].uses().is_subset(&done));
            if ready.is_empty() {
                let names: Vec<&str> = rest.iter().map(|&i| self.steps[i].step.as_str()).collect();
                return Err(format!(
                    "steps {names:?} use each other: a dataflow has no cycle"
                ));
            }
            done.extend(ready.iter().map(|&i| self.steps[i].step.clone()));
            waves.push(ready);
            left = rest;
        }
        Ok(waves)
    }
}

/// The value of an expression string, or the string itself.
fn resolve(value: &Value, scope: &BTreeMap<String, Value>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => match s.strip_prefix('$') {
            Some(expr) => {
                let mut parts = expr.split('.');
                let root = parts.next().unwrap_or_default();
                let mut at = scope
                    .get(root)
                    .ok_or_else(|| format!("${root} has no value"))?;
                for part in parts {
                    at = match at {
                        Value::Object(m) => m.get(part),
                        Value::Array(items) => {
                            part.parse::<usize>().ok().and_then(|i| items.get(i))
                        }
                        _ => None,
                    }
                    .ok_or_else(|| format!("{s}: no {part:?} in {at}"))?;
                }
                at.clone()
            }
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| Ok((k.clone(), resolve(v, scope)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Registers `DATAFLOW_WORKFLOW`. A step's failure is the dataflow's: steps are not tried
/// again.
pub fn register_dataflows(workflows: &mut Workflows) -> &mut Workflows {
    workflows.register_with(DATAFLOW_WORKFLOW, RetryPolicy::none(), run)
}

async fn run(flow: Flow, run: DataflowRun) -> Result<Value, Error> {
    let id = flow.id().to_string();
    let waves = run.dataflow.waves().map_err(Error::terminal)?;
    let mut scope = BTreeMap::from([
        ("input".to_string(), run.input.clone()),
        ("key".to_string(), Value::String(run.key.clone())),
    ]);
    for wave in waves {
        let mut calls = Vec::with_capacity(wave.len());
        for &i in &wave {
            let s = &run.dataflow.steps[i];
            let key = match resolve(&Value::String(s.key.clone()), &scope) {
                Ok(Value::String(k)) => k,
                Ok(other) => {
                    return Err(Error::terminal(format!(
                        "step {}: its key is {other}, not a string",
                        s.step
                    )))
                }
                Err(e) => return Err(Error::terminal(format!("step {}: {e}", s.step))),
            };
            let input = resolve(&s.input, &scope)
                .map_err(|e| Error::terminal(format!("step {}: {e}", s.step)))?;
            let request = CallRequest {
                call_key: Some(format!("{id}#{}", s.step)),
                ..CallRequest::new(&s.class, &key, &s.method, input)
            };
            calls.push(flow.call::<Value>(CALL_FUNCTION, &request));
        }
        let outputs = flow.join_all(calls).await;
        for (&i, output) in wave.iter().zip(outputs) {
            let step = &run.dataflow.steps[i].step;
            let output = output.map_err(|e| {
                let e = ObjectError::from(tally_sdk::FunctionError::new(e.to_string()));
                Error::terminal(format!("step {step}: {e}"))
            })?;
            scope.insert(step.clone(), output);
        }
    }
    match &run.dataflow.output {
        Some(output) => resolve(output, &scope).map_err(Error::terminal),
        None => Ok(Value::Object(
            run.dataflow
                .steps
                .iter()
                .map(|s| (s.step.clone(), scope[&s.step].clone()))
                .collect(),
        )),
    }
}

/// How long a call of a dataflow method waits for it to end before answering `unavailable`
/// (it goes on; calling again under the same key waits for the same run).
pub const DATAFLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl crate::Objects {
    /// Runs a dataflow method as workflow instance `dataflow.{hash of the call's key}` (a
    /// call without a key gets a fresh instance), and answers its output.
    pub(crate) async fn run_dataflow(
        &self,
        ctx: &tally_sdk::Ctx,
        request: &CallRequest,
        dataflow: &Dataflow,
    ) -> Result<Value, ObjectError> {
        let instance = match &request.call_key {
            Some(key) => format!(
                "dataflow.{:016x}",
                stable_hash(&format!(
                    "{}/{}.{}/{key}",
                    request.class, request.key, request.method
                ))
            ),
            None => format!("dataflow.{}", crate::objects::fresh_suffix()),
        };
        let run = DataflowRun {
            dataflow: dataflow.clone(),
            key: request.key.clone(),
            input: request.input.clone(),
        };
        let start = libflow::start_input(
            &instance,
            serde_json::to_value(run).expect("runs serialize"),
        );
        ctx.invoke_async_keyed(DATAFLOW_WORKFLOW, &format!("workflow:{instance}"), start)
            .await
            .map_err(ObjectError::from)?;
        // The instance's first record is in the log once its invocation began running.
        let steps = libflow::steps_tag(&instance);
        ctx.read_next_blocking(
            steps,
            logbook::Seqnum::ZERO,
            DATAFLOW_WAIT.min(std::time::Duration::from_millis(
                logbook::READ_BLOCKING_TIMEOUT_MS_MAX,
            )),
        )
        .await?;
        let ended = libflow::wait_ended(ctx, &instance, DATAFLOW_WAIT)
            .await
            .map_err(|e| ObjectError::Unavailable(format!("dataflow {instance}: {e}")))?;
        let Some(ended) = ended else {
            return Err(ObjectError::Unavailable(format!(
                "dataflow {instance} did not start"
            )));
        };
        match ended.status {
            libflow::Status::Succeeded => Ok(ended.output.unwrap_or(Value::Null)),
            libflow::Status::Running => Err(ObjectError::Unavailable(format!(
                "dataflow {instance} is still running"
            ))),
            _ => Err(ObjectError::Failed(ended.error.unwrap_or_default())),
        }
    }
}

/// FNV-1a: the same in every process, so a key names the same instance everywhere.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(name: &str, key: &str, input: Value) -> Step {
        Step {
            step: name.into(),
            class: "c".into(),
            key: key.into(),
            method: "m".into(),
            input,
        }
    }

    #[test]
    fn steps_run_in_waves_of_what_they_use() {
        let d = Dataflow {
            steps: vec![
                step("c", "$a.k", json!({"x": "$b.v"})),
                step("a", "$input.k", json!(null)),
                step("b", "fixed", json!({"n": 1})),
                step("d", "$key", json!(["$c", "$input"])),
            ],
            output: Some(json!({"last": "$d"})),
        };
        d.check().unwrap();
        assert_eq!(d.waves().unwrap(), vec![vec![1, 2], vec![0], vec![3]]);
        let cycle = Dataflow {
            steps: vec![step("a", "$b", json!(null)), step("b", "$a", json!(null))],
            output: None,
        };
        assert!(cycle.check().unwrap_err().contains("cycle"));
        let missing = Dataflow {
            steps: vec![step("a", "$nope.k", json!(null))],
            output: None,
        };
        assert!(missing.check().unwrap_err().contains("no step"));
        let twice = Dataflow {
            steps: vec![step("a", "k", json!(null)), step("a", "k", json!(null))],
            output: None,
        };
        assert!(twice.check().is_err());
    }

    #[test]
    fn expressions_resolve_paths_and_leave_other_values_alone() {
        let scope = BTreeMap::from([
            ("input".to_string(), json!({"a": {"b": [10, 20]}})),
            ("s".to_string(), json!({"order": 3})),
        ]);
        let got = resolve(
            &json!({"x": "$input.a.b.1", "y": "$s.order", "z": "plain", "n": 5}),
            &scope,
        );
        assert_eq!(got, Ok(json!({"x": 20, "y": 3, "z": "plain", "n": 5})));
        assert!(resolve(&json!("$s.missing"), &scope).is_err());
        assert!(resolve(&json!("$t"), &scope).is_err());
    }
}
