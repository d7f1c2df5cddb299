//! The closed-loop driver every load generator shares: `clients` tasks, spread round-robin
//! over the targets, each make one operation (append a record, call a function), wait for its
//! acknowledgement, and make the next until the duration ends. It measures latency per client
//! and merges the histograms at the end; the only state shared per operation is a pair of
//! atomic counters for progress.
//!
//! What an operation is (an HTTP append to a gateway, a JetStream publish awaiting its PubAck,
//! an HTTP function call to Tally or to Restate's ingress) is the `Target`'s business; the
//! payloads, retries, backoff, the measured window, the ack log and the figures are this
//! module's, so every system is measured the same way.
//!
//! It keeps going when operations start failing after some were acknowledged (a crash test
//! kills the server mid-run and then checks the ack log), but gives up quickly when nothing
//! has ever succeeded, so a wrong address is an error rather than a report of zeros.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::ack_log::{write_acks, Ack, ACK_QUEUE_DEPTH};
use crate::filler::{filler, FILLER_HEADER_BYTES};
use crate::progress::{Progress, Timeline};
use crate::report::Percentiles;

pub const CLIENTS_MAX: usize = 4096;
pub const RECORD_BYTES_MAX: usize = 16 << 20;
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// Backoff between attempts after a failure, doubling from min to max, reset by a success.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Retries of one operation answered with a retryable failure before it counts as an error.
const RETRIES_PER_OPERATION_MAX: u32 = 50;
/// Failures in a row, by one client, with nothing acknowledged by anyone, that end the run.
const FAILURES_BEFORE_ABORT: u32 = 3;
const LATENCY_US_MAX: u64 = 60_000_000;

/// The shape of a run, whatever system it drives.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Load {
    /// Concurrent closed-loop clients, each with one operation in flight.
    pub clients: usize,
    pub payload: Payload,
    pub duration: Duration,
    /// Time spent running before measuring starts; operations during it are not counted.
    pub warmup: Duration,
}

impl Load {
    /// `clients` clients appending records of `bytes` made by `filler`.
    pub(crate) fn filler(
        clients: usize,
        bytes: usize,
        duration: Duration,
        warmup: Duration,
    ) -> Load {
        Load {
            clients,
            payload: Payload::Filler { bytes },
            duration,
            warmup,
        }
    }
}

/// The `duration_s` line of a configuration's description: the window and its warmup.
pub(crate) fn duration_line(duration: Duration, warmup: Duration) -> (&'static str, String) {
    (
        "duration_s",
        format!(
            "{:.1} (warmup {:.1})",
            duration.as_secs_f64(),
            warmup.as_secs_f64()
        ),
    )
}

/// What each operation sends.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Payload {
    /// A record of `bytes` made by `filler`: it names its client and counter, so an ack log
    /// can be checked against what the system stored.
    Filler { bytes: usize },
    /// The same body every time: a function's input.
    Fixed(Bytes),
}

impl Payload {
    fn bytes(&self) -> usize {
        match self {
            Payload::Filler { bytes } => *bytes,
            Payload::Fixed(body) => body.len(),
        }
    }

    fn make(&self, client: u32, counter: u64) -> Bytes {
        match self {
            Payload::Filler { bytes } => Bytes::from(filler(client, counter, *bytes)),
            // A reference count, not a copy.
            Payload::Fixed(body) => body.clone(),
        }
    }
}

impl Load {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=CLIENTS_MAX).contains(&self.clients),
            "clients must be 1..={CLIENTS_MAX}, not {}",
            self.clients
        );
        match &self.payload {
            Payload::Filler { bytes } => ensure!(
                (FILLER_HEADER_BYTES..=RECORD_BYTES_MAX).contains(bytes),
                "record_bytes must be {FILLER_HEADER_BYTES}..={RECORD_BYTES_MAX} (each record \
                 starts with its client id and counter), not {bytes}"
            ),
            Payload::Fixed(body) => ensure!(
                body.len() <= RECORD_BYTES_MAX,
                "the body must be at most {RECORD_BYTES_MAX} bytes, not {}",
                body.len()
            ),
        }
        ensure!(
            !self.duration.is_zero() && self.duration <= DURATION_MAX,
            "duration must be above 0 and at most {} s",
            DURATION_MAX.as_secs()
        );
        ensure!(
            self.warmup <= DURATION_MAX,
            "warmup must be at most {} s",
            DURATION_MAX.as_secs()
        );
        Ok(())
    }
}

/// Why one attempt failed.
pub(crate) enum Failure {
    /// The system asked for the same operation to be sent again (Tally's `discarded` or
    /// `unavailable`, JetStream's "no responders" while a stream leader is elected).
    Retryable(String),
    Fatal(String),
}

/// Where a client's operations go: one gateway's connection pool, one NATS connection, one
/// function endpoint.
pub(crate) trait Target: Send + Sync + 'static {
    /// What one operation is, in messages and progress lines: "append", "call".
    const OPERATION: &'static str;

    /// Makes one attempt at the `counter`-th operation of `client`, sending `payload` (the
    /// same on every attempt of one operation); on success, the position the system gave it
    /// (a seqnum, a stream sequence; 0 where there is none).
    fn attempt(
        &self,
        client: u32,
        counter: u64,
        payload: Bytes,
    ) -> impl Future<Output = Result<u64, Failure>> + Send;
}

/// What a run measured. Counts cover the measured window only (after warmup).
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    /// Acknowledged operations.
    pub operations: u64,
    /// Acknowledged operations of the whole run, warmup included.
    pub operations_with_warmup: u64,
    pub errors: u64,
    pub retried: u64,
    pub elapsed_s: f64,
    pub operations_per_s: f64,
    /// Payload bytes acknowledged per second, in MB (10^6 bytes).
    pub mb_per_s: f64,
    pub latency_us: Percentiles,
    pub first_error: Option<String>,
    pub started_unix_ms: u64,
}

#[derive(Default)]
struct Shared {
    /// Acknowledged operations by every client, warmup included.
    acked: AtomicU64,
    errors: AtomicU64,
    /// Set when the run must end early: nothing succeeds, or the ack log failed.
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means another client panicked; the join reports that.
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| message.to_string());
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|first| first.clone())
    }
}

/// One client's measurements, merged with the others' at the end.
struct Counts {
    latency_us: Histogram<u64>,
    operations: u64,
    errors: u64,
    retried: u64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            operations: 0,
            errors: 0,
            retried: 0,
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        self.operations += other.operations;
        self.errors += other.errors;
        self.retried += other.retried;
    }
}

/// Runs `load` against `targets` (client `i` uses `targets[i % targets.len()]`), writing every
/// acknowledged operation to `ack_log` when given, and showing progress on stderr under
/// `progress_label` when given.
///
/// Fails when the ack log cannot be written, or no operation at all was acknowledged (with
/// the first error seen, e.g. "no append was acknowledged: cannot connect to ADDR: connection
/// refused").
pub(crate) async fn run<T: Target>(
    load: &Load,
    targets: &[Arc<T>],
    ack_log: Option<&Path>,
    progress_label: Option<&'static str>,
) -> anyhow::Result<Measured> {
    load.validate()?;
    ensure!(!targets.is_empty(), "no target to send to");
    let (ack_tx, ack_writer) = match ack_log {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create ack log {}", path.display()))?;
            let (tx, rx) = mpsc::channel(ACK_QUEUE_DEPTH);
            (Some(tx), Some(tokio::spawn(write_acks(file, rx))))
        }
        None => (None, None),
    };

    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let measure_start = start + load.warmup;
    let end = measure_start + load.duration;
    let started_unix_ms = (SystemTime::now() + load.warmup)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let progress = Progress::start(
        progress_label,
        T::OPERATION,
        Timeline {
            start,
            measure_start,
            end,
        },
        {
            let shared = Arc::clone(&shared);
            move || {
                (
                    shared.acked.load(Ordering::Relaxed),
                    shared.errors.load(Ordering::Relaxed),
                )
            }
        },
    );

    let workers: Vec<_> = (0..load.clients)
        .map(|client| {
            let worker = Worker {
                client: client as u32,
                target: Arc::clone(&targets[client % targets.len()]),
                payload: load.payload.clone(),
                shared: Arc::clone(&shared),
                ack_tx: ack_tx.clone(),
                measure_start,
                end,
            };
            tokio::spawn(worker.run())
        })
        .collect();
    // The writer ends once the last worker drops its sender.
    drop(ack_tx);

    let mut total = Counts::new();
    let mut panic = None;
    for worker in workers {
        match worker.await {
            Ok(counts) => total.merge(&counts),
            Err(e) => panic = Some(e),
        }
    }
    let finished = Instant::now();
    progress.finish().await;
    if let (Some(writer), Some(path)) = (ack_writer, ack_log) {
        writer
            .await
            .context("the ack log writer panicked")?
            .with_context(|| format!("writing ack log {}", path.display()))?;
    }
    if let Some(e) = panic {
        bail!("a benchmark client panicked: {e}");
    }
    if shared.acked.load(Ordering::Relaxed) == 0 {
        let reason = shared.first_error().unwrap_or_else(|| {
            format!("no reply within {:.1} s", (finished - start).as_secs_f64())
        });
        bail!("no {} was acknowledged: {reason}", T::OPERATION);
    }

    let elapsed_s = finished
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    let per_s = |n: f64| if elapsed_s > 0.0 { n / elapsed_s } else { 0.0 };
    Ok(Measured {
        operations: total.operations,
        operations_with_warmup: shared.acked.load(Ordering::Relaxed),
        errors: total.errors,
        retried: total.retried,
        elapsed_s,
        operations_per_s: per_s(total.operations as f64),
        mb_per_s: per_s(total.operations as f64 * load.payload.bytes() as f64 / 1e6),
        latency_us: Percentiles::from_histogram(&total.latency_us),
        first_error: shared.first_error(),
        started_unix_ms,
    })
}

struct Worker<T> {
    client: u32,
    target: Arc<T>,
    payload: Payload,
    shared: Arc<Shared>,
    ack_tx: Option<mpsc::Sender<Ack>>,
    measure_start: Instant,
    end: Instant,
}

impl<T: Target> Worker<T> {
    async fn run(self) -> Counts {
        let mut counts = Counts::new();
        let mut backoff = BACKOFF_MIN;
        let mut failures_in_row = 0u32;
        // Bounded by `end`: every iteration either finishes before it or breaks out.
        for counter in 0u64.. {
            if Instant::now() >= self.end || self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let payload = self.payload.make(self.client, counter);
            let began = Instant::now();
            let measured = began >= self.measure_start;
            // An operation still in flight at the end is abandoned: it was never acknowledged.
            let Ok((outcome, retries)) =
                tokio::time::timeout_at(self.end, self.attempt_with_retries(counter, payload))
                    .await
            else {
                break;
            };
            if measured {
                counts.retried += u64::from(retries);
            }
            match outcome {
                Ok(position) => {
                    let latency_us = began.elapsed().as_micros() as u64;
                    if measured {
                        counts.latency_us.saturating_record(latency_us.max(1));
                        counts.operations += 1;
                    }
                    self.shared.acked.fetch_add(1, Ordering::Relaxed);
                    backoff = BACKOFF_MIN;
                    failures_in_row = 0;
                    if let Some(tx) = &self.ack_tx {
                        let ack = Ack {
                            seqnum: position,
                            client: self.client,
                            counter,
                        };
                        if tx.send(ack).await.is_err() {
                            self.shared.note_error("the ack log writer stopped");
                            self.shared.stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                Err(message) => {
                    if measured {
                        counts.errors += 1;
                    }
                    self.shared.note_error(&message);
                    failures_in_row += 1;
                    if failures_in_row >= FAILURES_BEFORE_ABORT
                        && self.shared.acked.load(Ordering::Relaxed) == 0
                    {
                        self.shared.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    // Pause so a dead server is not hammered in a tight loop.
                    tokio::time::sleep_until((Instant::now() + backoff).min(self.end)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        counts
    }

    /// Makes one operation, retrying retryable failures with a capped backoff. Returns the
    /// position or the error, and how many retries it took.
    async fn attempt_with_retries(
        &self,
        counter: u64,
        payload: Bytes,
    ) -> (Result<u64, String>, u32) {
        let mut backoff = BACKOFF_MIN;
        let mut retries = 0;
        loop {
            match self
                .target
                .attempt(self.client, counter, payload.clone())
                .await
            {
                Ok(position) => return (Ok(position), retries),
                Err(Failure::Retryable(_)) if retries < RETRIES_PER_OPERATION_MAX => {
                    retries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(Failure::Retryable(message) | Failure::Fatal(message)) => {
                    return (Err(message), retries)
                }
            }
        }
    }
}
