//! `hello-worker`: a worker process serving functions for a gateway, built apart from the
//! `tally` binary. Run `tally up`, then `cargo run --example hello-worker -- --gateway
//! 127.0.0.1:8081` and `curl -X POST http://127.0.0.1:8080/function/hello -d '{"name":"x"}'`.
//!
//! - `hello`: `{"name": "x"}` in, a greeting out.
//! - `visit`: appends the input to the caller's book under tag 7 and returns the stream's tail:
//!   log calls from a worker.
//! - `welcome-worker`: the very `welcome` the gateway runs in-process (it calls `greet` and
//!   waits, then starts `guestbook`), unchanged, here in a worker.
//! - `wallet.add` and `wallet.coins`: the methods of a class `wallet` (a package of its own,
//!   `tally package put wallet.toml`: `[classes.wallet] fields = { coins = "integer" }`,
//!   `methods = { add = { function = "wallet.add" }, coins = { function = "wallet.coins",
//!   shared = true } }`), written with `libobject::method`.

use bytes::Bytes;
use clap::Parser;
use gateway::functions::{Ctx, FunctionError, FunctionResult};
use logbook::Tag;
use serde_json::json;
use tally_sdk::Worker;

#[derive(Parser)]
struct Args {
    /// The gateway's worker address (`tally up` prints it: "workers attach at ...").
    #[arg(long, default_value = "127.0.0.1:8081")]
    gateway: String,
    /// This worker's name, as the gateway shows it.
    #[arg(long, default_value = "hello-worker")]
    name: String,
    /// Also register `echo` (a gateway that serves `echo` itself refuses this worker).
    #[arg(long)]
    also_echo: bool,
    /// An API token of scope `worker`, once the gateway asks for tokens.
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Attach over mutual TLS (a gateway with a `[tls]` section asks for it): the cluster's
    /// CA, and this worker's certificate and key (`tally cert node`), PEM files.
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<std::path::PathBuf>,
    #[arg(long, requires = "ca")]
    cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "ca")]
    key: Option<std::path::PathBuf>,
}

async fn hello(_ctx: Ctx, input: Bytes) -> FunctionResult {
    #[derive(serde::Deserialize)]
    struct Person {
        name: String,
    }
    let person: Person = serde_json::from_slice(&input)
        .map_err(|e| FunctionError::bad_input(format!("expected {{\"name\": \"...\"}}: {e}")))?;
    let reply = json!({ "greeting": format!("hello, {}", person.name), "from": "hello-worker" });
    Ok(serde_json::to_vec(&reply)?.into())
}

#[derive(serde::Deserialize)]
struct Coins {
    by: i64,
}

/// `wallet.add`: `{"by": N}` in, the new number of coins out.
async fn wallet_add(
    this: libobject::This,
    add: Coins,
) -> Result<serde_json::Value, libobject::Error> {
    let coins = this.state_value()["coins"].as_i64().unwrap_or(0) + add.by;
    this.set_state(&json!({ "coins": coins }))?;
    Ok(json!({ "coins": coins, "from": "hello-worker" }))
}

/// `wallet.coins` (shared): the number of coins.
async fn wallet_coins(
    this: libobject::This,
    _: serde_json::Value,
) -> Result<serde_json::Value, libobject::Error> {
    Ok(json!({ "coins": this.state_value()["coins"] }))
}

async fn visit(ctx: Ctx, input: Bytes) -> FunctionResult {
    let seqnum = ctx.append(&[Tag(7)], input).await?;
    let tail = ctx.check_tail(Tag(7)).await?;
    let reply = json!({
        "appended": seqnum.0,
        "tail": tail.map(|r| r.seqnum.0),
        "book": ctx.book().0,
    });
    Ok(serde_json::to_vec(&reply)?.into())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Logs, and traces when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _telemetry = match gateway::telemetry::init("hello-worker", false) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let args = Args::parse();
    let mut worker = Worker::new(&args.name);
    worker
        .register("hello", hello)
        .register("visit", visit)
        .register("welcome-worker", gateway::examples::welcome)
        .register("search-worker", gateway::examples::search)
        .register("wallet.add", libobject::method(wallet_add))
        .register("wallet.coins", libobject::method(wallet_coins));
    if args.also_echo {
        worker.register("echo", |_ctx, input| async move { Ok(input) });
    }
    if let Some(token) = &args.token {
        worker.token(token);
    }
    if let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) {
        match logbook::rpc::ClientTls::from_files(ca, cert, key) {
            Ok(tls) => worker.tls(tls),
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    }
    match worker.serve(&args.gateway).await {
        Ok(()) => {
            eprintln!("hello-worker: the gateway closed the connection");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
