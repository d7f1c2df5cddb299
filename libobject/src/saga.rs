//! Sagas across objects, on libflow: the calls run one after the other, each once; when one
//! fails, the compensations of those that succeeded run, newest first, each once, and the saga
//! ends `compensated`. A concurrent reader may see the state between two calls (a debit
//! before its credit): sagas trade isolation for never waiting on another transaction.

use crate::{CallRequest, CALL_FUNCTION};
use libflow::{Error, Flow, RetryPolicy, Workflows};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The workflow that runs a saga; instance `saga.{id}` runs saga `id`.
pub const SAGA_WORKFLOW: &str = "libobject.saga";

/// A saga: its calls, in order, each with the call that undoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub calls: Vec<SagaCall>,
}

/// One call of a saga, and its compensation (a method of the same object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaCall {
    pub class: String,
    pub key: String,
    pub method: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Compensation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    pub method: String,
    #[serde(default)]
    pub input: Value,
}

/// The instance id of saga `id`.
pub fn saga_instance(id: &str) -> String {
    format!("saga.{id}")
}

/// Registers `SAGA_WORKFLOW`. A call's failure is the saga's (a call whose method's function
/// could not run is tried again, as libflow's default retry policy says).
pub fn register_sagas(workflows: &mut Workflows) -> &mut Workflows {
    workflows.register_with(SAGA_WORKFLOW, RetryPolicy::default(), run)
}

/// A call's failure as a step's: tried again if it could not run, final if the method failed.
fn step_error(e: tally_sdk::FunctionError) -> Error {
    if e.unavailable {
        Error::retryable(e.message)
    } else {
        Error::terminal(e.message)
    }
}

async fn run(flow: Flow, saga: Saga) -> Result<Value, Error> {
    let id = flow.id().to_string();
    let mut results = Vec::with_capacity(saga.calls.len());
    for (i, c) in saga.calls.iter().enumerate() {
        // Keyed by the saga and the position, as the object sees them too: a call libflow
        // makes again is answered by the object's first run of it.
        let request = CallRequest {
            call_key: Some(format!("{id}#{i}")),
            ..CallRequest::new(&c.class, &c.key, &c.method, c.input.clone())
        };
        // A step, not a child invocation: the object's key makes the call once however often
        // the step runs, so nothing more than the step's result needs logging.
        let bytes = bytes::Bytes::from(serde_json::to_vec(&request).expect("requests serialize"));
        let ctx = flow.ctx().clone();
        let name = format!("{}.{}", c.class, c.method);
        let mut call = flow
            .step(&name, move || {
                let (ctx, bytes) = (ctx.clone(), bytes.clone());
                async move {
                    let raw = ctx
                        .call(CALL_FUNCTION, bytes, None)
                        .await
                        .map_err(step_error)?;
                    serde_json::from_slice::<Value>(&raw)
                        .map_err(|e| Error::terminal(e.to_string()))
                }
            })
            .internal();
        if let Some(undo) = &c.compensate {
            let undo = CallRequest {
                call_key: Some(format!("{id}#{i}:undo")),
                ..CallRequest::new(&c.class, &c.key, &undo.method, undo.input.clone())
            };
            call = call.compensate_with_call(CALL_FUNCTION, &undo);
        }
        results.push(call.await?);
    }
    Ok(json!({ "results": results }))
}

impl crate::Objects {
    /// Checks a saga before it starts: each call, and each compensation, names a method
    /// that a call from outside may call.
    pub fn admit_saga(&self, saga: &Saga) -> Result<(), crate::Error> {
        if saga.calls.is_empty() {
            return Err(crate::Error::Invalid(
                "a saga makes at least one call".into(),
            ));
        }
        for c in &saga.calls {
            self.admit(&CallRequest::new(
                &c.class,
                &c.key,
                &c.method,
                c.input.clone(),
            ))?;
            if let Some(undo) = &c.compensate {
                self.admit(&CallRequest::new(
                    &c.class,
                    &c.key,
                    &undo.method,
                    undo.input.clone(),
                ))?;
            }
        }
        Ok(())
    }
}
