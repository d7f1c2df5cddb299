//! `flow-worker`: a worker process serving a libflow workflow, `mixed-worker`, for a gateway:
//! libflow runs in a worker unchanged. With `--crash-at N` the process aborts at its N-th
//! append to the log (from 0), just before or just after the log takes it (`--crash-when`):
//! what the crash tests use to kill the worker at every step boundary.
//!
//! It also answers the query `count` of `mixed-worker` instances (its table's counter).
//!
//! `mixed-worker` (any input) mixes what a workflow does: a table read and writes, a
//! synchronous call (`append3`, whose three appends to tag 3 of the call's book are its
//! effect), an asynchronous one (`append3` again), a durable timer, the signal `approve`, a
//! step and a random number; it answers what it read and got.

use clap::{Parser, ValueEnum};
use libflow::{Error, Flow, Workflows};
use logbook::crashing::{CrashAt, CrashPlan, CrashingLog};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tally_sdk::Worker;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum When {
    Before,
    After,
}

#[derive(Parser)]
struct Args {
    /// The gateway's worker address (`tally up` prints it: "workers attach at ...").
    #[arg(long, default_value = "127.0.0.1:8081")]
    gateway: String,
    /// Abort the process at this append (from 0, counted over the whole process).
    #[arg(long)]
    crash_at: Option<u64>,
    /// Just before the append reaches the log, or just after it was acknowledged.
    #[arg(long, value_enum, default_value = "before")]
    crash_when: When,
}

async fn mixed(flow: Flow, _input: Value) -> Result<Value, Error> {
    let counters = flow.table("worker-counters");
    let id = flow.id().to_string();
    let before: u64 = counters.get(&id).await?.unwrap_or(0);
    counters.put(&id, &(before + 1)).await?;
    let called: Value = flow.call("append3", &json!({})).await?;
    let started = flow.call_async("append3", &json!({})).await?;
    flow.sleep(Duration::from_millis(20)).await?;
    let approval: Value = flow.wait_signal("approve").await?;
    let count = counters
        .update(&id, |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    let stamp: u64 = flow.step("stamp", || async { Ok(7u64) }).await?;
    let lucky = flow.random().await?;
    Ok(json!({
        "before": before, "called": called["seqnums"].as_array().map(Vec::len),
        "started": !started.is_empty(), "approval": approval, "count": count,
        "stamp": stamp, "lucky": lucky,
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut workflows = Workflows::new();
    workflows.register("mixed-worker", mixed);
    // The process dies at its append `crash_at`, counted over all its calls.
    let at = args.crash_at.map(|n| match args.crash_when {
        When::Before => CrashAt::Before(n),
        When::After => CrashAt::After(n),
    });
    let plan = CrashPlan::with_on_crash(at, |at| {
        eprintln!("flow-worker: crashing at {at:?}");
        std::process::abort();
    });
    // A query, answered here for the gateway (`GET /workflows/{id}/queries/count`).
    workflows.query("mixed-worker", "count", |q: libflow::Query| async move {
        let count: Option<u64> = q.get("worker-counters", &q.instance().id).await?;
        Ok(json!({ "count": count.unwrap_or(0), "status": q.instance().status }))
    });
    let handler = workflows.handler("mixed-worker").expect("registered above");
    let mut worker = Worker::new("flow-worker");
    workflows.serve_queries_in(&mut worker);
    worker.register_limited(
        "mixed-worker",
        libflow::WORKFLOW_LIMITS,
        move |ctx, input| {
            let plan = plan.clone();
            let ctx = ctx.wrap_log(|inner| Arc::new(CrashingLog::new(inner, plan)));
            handler(ctx, input)
        },
    );
    match worker.serve(&args.gateway).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
