//! `bench-worker`: a worker process serving the gateway's benchmark functions, so
//! `bench/compare-restate.sh` measures the same handlers in-process and in a worker. Run
//! `tally up`, then `cargo run --release -p gateway --example bench-worker -- --gateway
//! 127.0.0.1:8081` and `curl -X POST http://127.0.0.1:8080/function/noop-worker -d '{}'`.
//!
//! - `noop-worker`: the very `noop` the gateway runs in-process (its input back, no log call).
//! - `append3-worker`: the very `append3` (three appends to the caller's book, one after the
//!   other), its log calls going back to the gateway over the worker's stream.
//!
//! The names differ from the in-process ones because a worker cannot take an in-process
//! function's name.

use clap::Parser;
use tally_sdk::Worker;

#[derive(Parser)]
struct Args {
    /// The gateway's worker address (`tally up` prints it: "workers attach at ...").
    #[arg(long, default_value = "127.0.0.1:8081")]
    gateway: String,
    /// This worker's name, as the gateway shows it.
    #[arg(long, default_value = "bench-worker")]
    name: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut worker = Worker::new(&args.name);
    worker
        .register("noop-worker", gateway::examples::noop)
        .register("append3-worker", gateway::examples::append3);
    match worker.serve(&args.gateway).await {
        Ok(()) => {
            eprintln!("bench-worker: the gateway closed the connection");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
