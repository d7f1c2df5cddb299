//! `bench-redis`: the queue benchmark of `tally bench queue` against Redis streams, with the
//! same flags and the same report (`--redis redis://host:port`); and `bench-redis append`, the
//! closed-loop append benchmark of `tally bench append` against one Redis stream (XADD). Built
//! with bench's `redis` feature, which keeps the Redis client out of the `tally` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Producers and consumers of one queue at once: messages pushed and acked a second, push and
/// pop-and-ack latency, and the backlog at the end.
///
/// With --redis, producers XADD to a stream and consumers read it in a consumer group
/// (XREADGROUP COUNT 1 BLOCK 1000, then XACK), for --duration seconds after --warmup seconds.
#[derive(Parser)]
#[command(name = "bench-redis", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    queue: bench::QueueArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop appends to one stream: each client has its own connection, adds one record
    /// (XADD STREAM * d RECORD), waits for its id, and adds again, for --duration seconds.
    /// How durable an acknowledged XADD is depends on the server's appendonly and appendfsync.
    Append(AppendArgs),
}

#[derive(clap::Args)]
struct AppendArgs {
    /// The Redis server.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    server: String,
    #[command(flatten)]
    load: bench::LoadArgs,
    /// The stream's key.
    #[arg(long, default_value = "tally-bench-append")]
    stream: String,
    /// Write the figures and the configuration as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let done = match cli.command {
        Some(Command::Append(args)) => append(args).await,
        None => cli.queue.run().await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn append(args: AppendArgs) -> anyhow::Result<()> {
    let config = bench::RedisAppendConfig {
        server: args.server,
        stream: args.stream,
        clients: args.load.clients,
        record_bytes: args.load.record_bytes,
        duration: args.load.duration()?,
        warmup: Duration::ZERO,
    };
    let report = bench::run_redis_append(config, true).await?;
    report.show(args.json.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_queue_benchmark_takes_flags_and_appends_a_subcommand() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("bench-redis").chain(args.iter().copied()))
        };
        let cli = parse(&["--redis", "redis://127.0.0.1:1", "--consumers", "3"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.queue.consumers, 3);
        let cli = parse(&[
            "append",
            "--server",
            "redis://127.0.0.1:1",
            "--clients",
            "2",
        ])
        .unwrap();
        let Some(Command::Append(args)) = cli.command else {
            panic!("not the append subcommand");
        };
        assert_eq!(args.load.clients, 2);
        assert!(parse(&["--consumers", "2", "append"]).is_err());
    }
}
