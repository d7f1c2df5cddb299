//! `tally-bench-restate-service`: a Restate service (`Bench`) with the handlers that
//! `bench/compare-restate.sh` and `bench/compare-workflows.sh` call through Restate's ingress,
//! side by side with Tally's `noop` and `append3` functions and its `steps` workflow, and a
//! virtual object (`Counter`) that `bench/compare-objects.sh` calls side by side with Tally's
//! example class `counter`.
//!
//! - `Bench/noop`: returns its JSON input (`{}` for none) at once; Restate still journals the
//!   invocation (its input and output) before answering.
//! - `Bench/append3`: three `ctx.run` steps one after the other, each returning a small value
//!   (its step number) that Restate journals durably before the next starts, as Tally's
//!   `append3` appends three small records to the log one after the other. Out: the three
//!   values.
//! - `Bench/steps`: the workflow of `bench/compare-workflows.sh`, `{"steps": N}` in (default
//!   10, at most `STEPS_MAX`): N `ctx.run` steps in a row, each returning its step number,
//!   each journaled before the next starts. Out: `{"steps": N, "sum": 1 + ... + N}`.
//! - `Counter/{key}/add`: `{"by": N}` in, `{"value": V}` out: adds N to the value kept in the
//!   object's state (0 at first). Restate runs one call at a time per key, as Tally runs one
//!   call at a time per object, and journals the state change with the call.
//!
//! It serves only what it is told to: `tally-bench-restate-service [ADDR]`, default
//! 127.0.0.1:9080. It does not register itself; the script posts the deployment to Restate's
//! admin API.

use restate_sdk::prelude::*;
use serde_json::{json, Value};

const DEFAULT_ADDR: &str = "127.0.0.1:9080";
/// The most steps one `Bench/steps` call runs.
const STEPS_MAX: u64 = 1000;

/// The service's name in Restate's ingress paths: `/Bench/noop`, `/Bench/append3`,
/// `/Bench/steps`.
struct Bench;

#[restate_sdk::service]
impl Bench {
    #[handler]
    async fn noop(
        &self,
        _ctx: Context<'_>,
        Json(input): Json<Value>,
    ) -> HandlerResult<Json<Value>> {
        Ok(Json(input))
    }

    #[handler]
    async fn append3(&self, ctx: Context<'_>, _input: Json<Value>) -> HandlerResult<Json<Value>> {
        let mut steps = Vec::with_capacity(3);
        // Each step is awaited before the next starts: three journal entries in sequence.
        for step in 1..=3u64 {
            steps.push(ctx.run(move || async move { Ok(step) }).await?);
        }
        Ok(Json(json!({ "steps": steps })))
    }

    #[handler]
    async fn steps(
        &self,
        ctx: Context<'_>,
        Json(input): Json<Value>,
    ) -> HandlerResult<Json<Value>> {
        let steps = input.get("steps").and_then(Value::as_u64).unwrap_or(10);
        if !(1..=STEPS_MAX).contains(&steps) {
            let message = format!("steps must be 1..={STEPS_MAX}, not {steps}");
            return Err(TerminalError::new(message).into());
        }
        let mut sum = 0;
        // Each step is awaited before the next starts: one journal entry after the other.
        for step in 1..=steps {
            sum += ctx.run(move || async move { Ok(step) }).await?;
        }
        Ok(Json(json!({ "steps": steps, "sum": sum })))
    }
}

/// The virtual object's name in Restate's ingress paths: `/Counter/{key}/add`.
struct Counter;

/// The state key holding a counter's value.
const VALUE: &str = "value";

#[restate_sdk::object]
impl Counter {
    #[handler]
    async fn add(
        &self,
        ctx: ObjectContext<'_>,
        Json(input): Json<Value>,
    ) -> HandlerResult<Json<Value>> {
        let Some(by) = input.get("by").and_then(Value::as_i64) else {
            return Err(TerminalError::new("add takes {\"by\": N}, N an integer").into());
        };
        let value = ctx.get::<i64>(VALUE).await?.unwrap_or(0);
        let Some(value) = value.checked_add(by) else {
            return Err(TerminalError::new("the counter would overflow").into());
        };
        ctx.set(VALUE, value);
        Ok(Json(json!({ "value": value })))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The script waits for this line before it registers the deployment.
    println!("listening on http://{addr}");
    HttpServer::new(Endpoint::builder().bind(Bench).bind(Counter).build())
        .serve(listener)
        .await;
    std::process::ExitCode::SUCCESS
}
