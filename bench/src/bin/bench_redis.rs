//! `bench-redis`: the queue benchmark of `tally bench queue` against Redis streams, with the
//! same flags and the same report (`--redis redis://host:port`); built with bench's `redis`
//! feature, which keeps the Redis client out of the `tally` binary.

use clap::Parser;

/// Producers and consumers of one queue at once: messages pushed and acked a second, push and
/// pop-and-ack latency, and the backlog at the end.
///
/// With --redis, producers XADD to a stream and consumers read it in a consumer group
/// (XREADGROUP COUNT 1 BLOCK 1000, then XACK), for --duration seconds after --warmup seconds.
#[derive(Parser)]
#[command(name = "bench-redis", version)]
struct Args {
    #[command(flatten)]
    queue: bench::QueueArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Args::parse().queue.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
