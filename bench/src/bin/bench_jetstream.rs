//! `bench-jetstream`: the closed-loop append benchmark of `tally bench append`, against a NATS
//! JetStream stream, with the same flags where they mean the same thing and the same report;
//! and `bench-jetstream queue`, the queue benchmark of `tally bench queue` with the same flags
//! (`--nats nats://host:port`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Closed-loop JetStream publish load: throughput and latency percentiles.
///
/// Each client has its own connection, publishes one record of --record-bytes to the stream's
/// subject, awaits the PubAck, and publishes again, for --duration seconds.
#[derive(Parser)]
#[command(
    name = "bench-jetstream",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    append: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Producers and consumers of one queue at once: messages pushed and acked a second, push
    /// and pop-and-ack latency, and the backlog at the end.
    ///
    /// With --nats, the queue is a work-queue stream (file storage, 1 replica): producers
    /// publish and await the PubAck; consumers pull one message at a time from one durable pull
    /// consumer and ack it awaiting the server's confirmation.
    Queue(bench::QueueArgs),
}

#[derive(clap::Args)]
struct Args {
    /// NATS server (repeat or comma-separate for several; clients spread over them).
    #[arg(long, default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    server: Vec<String>,
    #[command(flatten)]
    load: bench::LoadArgs,
    /// The stream to publish to (its subject is STREAM.append).
    #[arg(long, default_value = "TALLY_BENCH")]
    stream: String,
    /// Replicas of the stream (file storage) when this creates it.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Write the figures and the configuration as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let done = match cli.command {
        Some(Command::Queue(queue)) => queue.run().await,
        None => run(cli.append).await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = bench::JetStreamConfig {
        servers: args.server,
        subject: format!("{}.append", args.stream),
        stream: args.stream,
        replicas: args.replicas,
        clients: args.load.clients,
        record_bytes: args.load.record_bytes,
        duration: args.load.duration()?,
        warmup: Duration::ZERO,
    };
    let report = bench::run_jetstream(config, true).await?;
    report.show(args.json.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn appends_take_flags_and_the_queue_benchmark_a_subcommand() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("bench-jetstream").chain(args.iter().copied()))
        };
        let cli = parse(&["--server", "nats://127.0.0.1:1", "--clients", "2"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.append.load.clients, 2);
        let cli = parse(&["queue", "--nats", "nats://127.0.0.1:1", "--consumers", "3"]).unwrap();
        let Some(Command::Queue(queue)) = cli.command else {
            panic!("not the queue subcommand");
        };
        assert_eq!(queue.consumers, 3);
        assert!(parse(&["--clients", "2", "queue"]).is_err());
    }
}
