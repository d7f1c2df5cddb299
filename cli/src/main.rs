//! The `tally` binary: `tally up` runs every role in one process; the other commands are
//! clients of a running gateway.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tally_cli::client::Client;
use tally_cli::node::{Node, NodeConfig};

const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a fault-tolerant serverless runtime on a shared log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Tally on this machine: every role in one process, data in one directory.
    Up(UpArgs),
    /// Call a function and print its output.
    Invoke(InvokeArgs),
    /// Append to and read from a LogBook.
    #[command(subcommand)]
    Log(LogCommand),
    /// Measure a running Tally.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a cluster role (interim flags).
    #[command(hide = true)]
    Role(RoleArgs),
}

#[derive(Args)]
struct RoleArgs {
    role: String,
    #[arg(long)]
    id: u32,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "./d")]
    data_dir: PathBuf,
    #[arg(long, value_delimiter = ',')]
    sequencers: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    storage: Vec<String>,
}

fn id_map(items: &[String]) -> std::collections::BTreeMap<logbook::wire::NodeId, String> {
    items
        .iter()
        .map(|i| {
            let (id, addr) = i.split_once('=').expect("id=addr");
            (
                logbook::wire::NodeId(id.parse().expect("id")),
                addr.to_string(),
            )
        })
        .collect()
}

async fn role(args: RoleArgs) -> anyhow::Result<()> {
    use tally_cli::roles::*;
    let id = logbook::wire::NodeId(args.id);
    let sequencers = id_map(&args.sequencers);
    match args.role.as_str() {
        "status-seq" => {
            let mut c = logbook::rpc::pb::sequencer_client::SequencerClient::new(channel(
                &args.listen.to_string(),
            )?);
            println!(
                "{}",
                c.status(logbook::rpc::pb::StatusRequest {})
                    .await?
                    .into_inner()
                    .json
            );
            Ok(())
        }
        "status-st" => {
            let mut c = logbook::rpc::pb::storage_client::StorageClient::new(channel(
                &args.listen.to_string(),
            )?);
            println!(
                "{}",
                c.status(logbook::rpc::pb::StatusRequest {})
                    .await?
                    .into_inner()
                    .json
            );
            Ok(())
        }
        "sequencer" => {
            sequencer::run(SequencerOptions {
                id,
                data_dir: args.data_dir,
                listen: args.listen,
                sequencers,
                storage: id_map(&args.storage),
                replication: 3,
                cut_interval: std::time::Duration::from_micros(CUT_INTERVAL_US_DEFAULT),
                raft_tick: std::time::Duration::from_millis(RAFT_TICK_MS_DEFAULT),
                election_ticks: ELECTION_TICKS_DEFAULT,
                gateway_timeout: std::time::Duration::from_millis(GATEWAY_TIMEOUT_MS_DEFAULT),
            })
            .await
        }
        "storage" => {
            storage::run(StorageOptions {
                id,
                data_dir: args.data_dir,
                listen: args.listen,
                sequencers,
                durability: storage_node::Durability::Fsync,
                segment_bytes_max: 64 << 20,
            })
            .await
        }
        _ => {
            gateway::run(GatewayOptions {
                id,
                http: args.listen,
                sequencers,
                cache_bytes_max: 256 << 20,
                pending_appends_max: 100_000,
            })
            .await
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Acknowledge an append after it is fsynced (group commit).
    Fsync,
    /// Acknowledge after the write; fsync in the background every 10 ms.
    Async,
}

#[derive(Args)]
struct UpArgs {
    /// Where the log lives.
    #[arg(long, default_value = "./tally-data", env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the HTTP gateway (port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_HTTP_ADDR, env = "TALLY_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// When an append is acknowledged.
    #[arg(long, value_enum, default_value = "fsync")]
    durability: DurabilityArg,
    /// Least time between two of the sequencer's cuts, in microseconds.
    #[arg(long, default_value_t = tally_cli::node::CUT_INTERVAL_US_DEFAULT, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    cut_interval_us: u64,
    /// Record cache size, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: usize,
}

#[derive(Args)]
struct AddrArg {
    /// Address of a gateway.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR, env = "TALLY_ADDR")]
    addr: String,
}

#[derive(Args)]
struct InvokeArgs {
    /// The function's name.
    name: String,
    /// Input passed to the function as the request body (default: empty).
    input: Option<String>,
    #[command(flatten)]
    addr: AddrArg,
    /// The LogBook the call works in.
    #[arg(long)]
    book: Option<u32>,
    /// Calls with the same key run the function once and return the same result.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Append one record and print its seqnum.
    Append {
        #[command(flatten)]
        addr: AddrArg,
        #[arg(long, default_value_t = 0)]
        book: u32,
        /// A tag for the record (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<u64>,
        /// The record's data.
        data: String,
    },
    /// Print records, one a line: seqnum, tags, data.
    Read {
        #[command(flatten)]
        addr: AddrArg,
        #[arg(long, default_value_t = 0)]
        book: u32,
        /// Only records with this tag (0: every record of the book).
        #[arg(long, default_value_t = 0)]
        tag: u64,
        /// Start at this seqnum.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print at most this many records (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print records as they are appended, until interrupted.
    Tail {
        #[command(flatten)]
        addr: AddrArg,
        #[arg(long, default_value_t = 0)]
        book: u32,
        #[arg(long, default_value_t = 0)]
        tag: u64,
        /// Start at this seqnum (default: after the current tail).
        #[arg(long)]
        from: Option<u64>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Closed-loop append load: throughput and latency percentiles.
    Append {
        /// Gateway address (repeat or comma-separate for several; clients spread over them).
        #[arg(long, default_value = DEFAULT_HTTP_ADDR, value_delimiter = ',')]
        addr: Vec<String>,
        /// Concurrent clients, each with one append in flight.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Bytes per record.
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Spread records over this many tags (0: untagged).
        #[arg(long, default_value_t = 1)]
        tags: usize,
        #[arg(long, default_value_t = 0)]
        book: u32,
        /// Write the figures and the configuration as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write every acknowledged append (`seqnum client counter`) to this file.
        #[arg(long)]
        ack_log: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line; no backtrace: these are errors for a person to act on.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Invoke(args) => invoke(args).await,
            Command::Log(cmd) => log(cmd).await,
            Command::Bench(cmd) => bench(cmd).await,
            Command::Role(args) => role(args).await,
        }
    })
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut config = NodeConfig::new(args.data_dir.clone());
    config.durability = match args.durability {
        DurabilityArg::Fsync => storage_node::Durability::Fsync,
        DurabilityArg::Async => storage_node::Durability::Async {
            flush_interval_ms: 10,
        },
    };
    config.cut_interval_us = args.cut_interval_us;
    config.cache_bytes_max = args.cache_mb * 1024 * 1024;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
    let node = Node::start(config).await?;
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the HTTP gateway to {}", args.http_addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    let app = gateway::http::default_app(node.log.clone(), node.metrics.clone());

    let r = &node.recovered;
    println!(
        "tally up: data in {} (view {}, {} records recovered{})",
        args.data_dir.display(),
        r.view.0,
        r.records,
        if r.truncated_tail_bytes > 0 {
            format!(", {} torn bytes truncated", r.truncated_tail_bytes)
        } else {
            String::new()
        }
    );
    println!("listening on http://{addr}");
    println!("try: curl -X POST http://{addr}/function/echo -d hi");
    std::io::stdout().flush().ok();

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    node.shutdown();
    let stats = node.store.stats();
    println!(
        "tally up: stopped ({} records in {} appends, {} metalog entries, {} fsyncs, {} bytes written)",
        stats.records, stats.appends, stats.metalog_entries, stats.fsyncs, stats.bytes_written
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.addr.addr)?;
    let input = args.input.unwrap_or_default().into_bytes();
    let output = client
        .invoke(
            &args.name,
            input,
            args.book,
            args.idempotency_key.as_deref(),
        )
        .await?;
    let mut stdout = std::io::stdout();
    stdout.write_all(&output)?;
    if !output.ends_with(b"\n") {
        writeln!(stdout)?;
    }
    Ok(())
}

async fn log(cmd: LogCommand) -> anyhow::Result<()> {
    match cmd {
        LogCommand::Append {
            addr,
            book,
            tags,
            data,
        } => {
            let seqnum = Client::new(&addr.addr)?
                .append(book, &tags, data.into_bytes())
                .await?;
            println!("{seqnum}");
        }
        LogCommand::Read {
            addr,
            book,
            tag,
            from,
            limit,
        } => {
            let client = Client::new(&addr.addr)?;
            let mut from = from;
            let mut left = limit.unwrap_or(usize::MAX);
            while left > 0 {
                let (records, next) = client.read(book, tag, from, left.min(1000)).await?;
                for r in &records {
                    println!("{}", r.line());
                }
                left -= records.len().min(left);
                match next {
                    Some(n) if !records.is_empty() => from = n,
                    _ => break,
                }
            }
        }
        LogCommand::Tail {
            addr,
            book,
            tag,
            from,
        } => {
            let client = Client::new(&addr.addr)?;
            let mut from = match from {
                Some(f) => f,
                None => {
                    // Start after the current tail: walk to the end of the stream.
                    let mut from = 0;
                    loop {
                        let (records, next) = client.read(book, tag, from, 1000).await?;
                        if let Some(last) = records.last() {
                            from = last.seqnum + 1;
                        }
                        if next.is_none() {
                            break from;
                        }
                    }
                }
            };
            loop {
                if let Some(r) = client.next_blocking(book, tag, from, 30_000).await? {
                    println!("{}", r.line());
                    std::io::stdout().flush().ok();
                    from = r.seqnum + 1;
                }
            }
        }
    }
    Ok(())
}

async fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Append {
            addr,
            clients,
            record_bytes,
            duration,
            tags,
            book,
            json,
            ack_log,
        } => {
            anyhow::ensure!(clients > 0, "--clients must be at least 1");
            anyhow::ensure!(
                record_bytes > 0 && record_bytes <= logbook::RECORD_BYTES_MAX,
                "--record-bytes must be 1..={}",
                logbook::RECORD_BYTES_MAX
            );
            anyhow::ensure!(duration > 0, "--duration must be at least 1 second");
            let config = bench::AppendConfig {
                addrs: addr,
                clients,
                record_bytes,
                duration: Duration::from_secs(duration),
                tags,
                book,
                warmup: Duration::ZERO,
                ack_log,
            };
            let report = bench::run_append(config, true).await?;
            report.print_human();
            if let Some(path) = json {
                report.write_json(&path)?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
