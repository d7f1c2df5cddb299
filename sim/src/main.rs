//! `cargo run -p sim --release -- --seeds N`: runs N seeds of the sequencer-group simulation
//! from a base seed (printed first; `--seed`/`SIM_SEED` run one seed and print its trace hash).

use anyhow::bail;
use clap::Parser;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "A seeded, deterministic simulation of Tally's sequencer group under faults")]
struct Args {
    /// Run this one seed (also `SIM_SEED`), print its faults and trace hash.
    #[arg(long, env = "SIM_SEED")]
    seed: Option<u64>,
    /// Run this many seeds, from `--from` (a random base, printed, if not given).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of a sweep.
    #[arg(long)]
    from: Option<u64>,
    /// Simulated seconds with faults on, per seed.
    #[arg(long, default_value_t = 60)]
    safety_s: u64,
    /// With `--seed`: print the state of the world every simulated second.
    #[arg(long)]
    verbose: bool,
    /// Seeds run at once (threads; each seed is deterministic on its own). Default: one per
    /// core.
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = |seed| sim::Options {
        safety: args.safety_s * 1_000_000,
        verbose: args.verbose && args.seed.is_some(),
        ..sim::Options::new(seed)
    };
    if let Some(seed) = args.seed {
        println!("seed {seed}");
        match sim::run(options(seed)) {
            Ok(outcome) => {
                println!("faults: {}", outcome.faults);
                println!(
                    "{:.1} simulated s, {} events, {} committed ({} views), {} records ordered, \
                     {} appends acknowledged, {} reads checked, {} trims",
                    outcome.simulated as f64 / 1e6,
                    outcome.events,
                    outcome.committed,
                    outcome.views,
                    outcome.ordered,
                    outcome.acknowledged,
                    outcome.reads,
                    outcome.trims
                );
                println!("trace hash: {:016x}", outcome.trace_hash);
                return Ok(());
            }
            Err(failure) => bail!("{failure}"),
        }
    }
    let from = args.from.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(32)
    });
    println!("seeds {from}..{}", from.wrapping_add(args.seeds));
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let simulated = AtomicU64::new(0);
    let failure: Mutex<Option<sim::Failure>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= args.seeds || failure.lock().unwrap().is_some() {
                    return;
                }
                match sim::run(options(from.wrapping_add(i))) {
                    Ok(outcome) => {
                        simulated.fetch_add(outcome.simulated, Ordering::SeqCst);
                    }
                    Err(f) => {
                        let mut first = failure.lock().unwrap();
                        // The lowest failing seed is reported, whatever thread found it.
                        if first.as_ref().is_none_or(|g| f.seed < g.seed) {
                            *first = Some(f);
                        }
                        return;
                    }
                }
                let finished = done.fetch_add(1, Ordering::SeqCst) + 1;
                if finished.is_multiple_of(100) || finished == args.seeds {
                    let wall = started.elapsed().as_secs_f64();
                    let hours = simulated.load(Ordering::SeqCst) as f64 / 3.6e9;
                    eprintln!(
                        "{finished} seeds passed, {hours:.2} simulated hours in {wall:.0} s \
                         ({:.1} simulated hours a minute)",
                        hours / (wall / 60.0)
                    );
                }
            });
        }
    });
    if let Some(failure) = failure.into_inner().unwrap() {
        bail!("{failure}");
    }
    println!("all {} seeds passed", args.seeds);
    Ok(())
}
