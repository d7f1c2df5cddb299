//! `tally-bench-restate-service`: a Restate service (`Bench`) with the two handlers that
//! `bench/compare-restate.sh` calls through Restate's ingress, side by side with Tally's `noop`
//! and `append3` functions.
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
    HttpServer::new(Endpoint::builder().bind(Bench).build())
        .serve(listener)
        .await;
    std::process::ExitCode::SUCCESS
}
