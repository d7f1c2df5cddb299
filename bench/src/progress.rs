//! Live progress of a running benchmark on stderr: an indicatif spinner redrawn 4 times a
//! second on a terminal, a plain line every second otherwise (so logs show progress), or
//! nothing. It only reads counters; it never changes what the benchmark does.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const BAR_INTERVAL: Duration = Duration::from_millis(250);
const LINE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept for the current rate; with the intervals above, about the last second (bar)
/// or the last 4 seconds (lines).
const RATE_SAMPLES_MAX: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bar,
    Lines,
}

/// What the progress display needs to know about the run.
pub(crate) struct Timeline {
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
}

pub(crate) struct Progress {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing progress, each line led by `label`, if there is one; `counts` returns
    /// (acknowledged, errors) so far, counted in `operation`s ("append", "call").
    pub fn start(
        label: Option<&'static str>,
        operation: &'static str,
        timeline: Timeline,
        counts: impl Fn() -> (u64, u64) + Send + 'static,
    ) -> Progress {
        let Some(label) = label else {
            return Progress {
                stop: None,
                task: None,
            };
        };
        let mode = if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(show(mode, label, operation, timeline, counts, stopped));
        Progress {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the display and clears the spinner.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            // The task may already be gone; then there is nothing to stop.
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // A panic while drawing progress must not lose the benchmark's result.
            let _ = task.await;
        }
    }
}

async fn show(
    mode: Mode,
    label: &'static str,
    operation: &'static str,
    timeline: Timeline,
    counts: impl Fn() -> (u64, u64),
    mut stopped: oneshot::Receiver<()>,
) {
    let bar = match mode {
        Mode::Bar => ProgressBar::new_spinner(),
        Mode::Lines => ProgressBar::hidden(),
    };
    let mut tick = tokio::time::interval(match mode {
        Mode::Bar => BAR_INTERVAL,
        Mode::Lines => LINE_INTERVAL,
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so the first line has a rate.
    tick.tick().await;
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::with_capacity(RATE_SAMPLES_MAX + 1);
    samples.push_back((Instant::now(), counts().0));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stopped => break,
        }
        let now = Instant::now();
        let (acked, errors) = counts();
        samples.push_back((now, acked));
        if samples.len() > RATE_SAMPLES_MAX {
            samples.pop_front();
        }
        let rate = rate_per_s(&samples);
        let message = status_line(&timeline, now, operation, acked, errors, rate);
        match mode {
            Mode::Bar => {
                bar.set_message(message);
                bar.tick();
            }
            Mode::Lines => eprintln!("{label}: {message}"),
        }
    }
    bar.finish_and_clear();
}

fn rate_per_s(samples: &VecDeque<(Instant, u64)>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
            n1.saturating_sub(n0) as f64 / (t1 - t0).as_secs_f64()
        }
        _ => 0.0,
    }
}

fn status_line(
    timeline: &Timeline,
    now: Instant,
    operation: &str,
    acked: u64,
    errors: u64,
    rate: f64,
) -> String {
    let total_s = (timeline.end - timeline.start).as_secs_f64();
    let elapsed_s = (now - timeline.start).as_secs_f64().min(total_s);
    let phase = if now < timeline.measure_start {
        "warmup "
    } else {
        ""
    };
    format!(
        "{phase}{elapsed_s:.1}/{total_s:.1} s  {operation}s {acked}  {rate:.0}/s  errors {errors}"
    )
}
