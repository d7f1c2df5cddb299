//! `bench-jetstream`: the closed-loop append benchmark of `tally bench append`, against a NATS
//! JetStream stream, with the same flags where they mean the same thing and the same report.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Closed-loop JetStream publish load: throughput and latency percentiles.
///
/// Each client has its own connection, publishes one record of --record-bytes to the stream's
/// subject, awaits the PubAck, and publishes again, for --duration seconds.
#[derive(Parser)]
#[command(name = "bench-jetstream", version)]
struct Args {
    /// NATS server (repeat or comma-separate for several; clients spread over them).
    #[arg(long, default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    server: Vec<String>,
    /// Concurrent clients, each with its own connection and one publish in flight.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
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
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0, "--duration must be at least 1 second");
    let config = bench::JetStreamConfig {
        servers: args.server,
        subject: format!("{}.append", args.stream),
        stream: args.stream,
        replicas: args.replicas,
        clients: args.clients,
        record_bytes: args.record_bytes,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::ZERO,
    };
    let report = bench::run_jetstream(config, true).await?;
    report.print_human();
    if let Some(path) = args.json {
        report.write_json(&path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
