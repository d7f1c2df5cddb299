//! `Flow`: what a workflow's code sees of its instance. Every operation takes the next
//! position of the instance's step stream when it is first polled, and writes its outcome
//! there with a conditional append once every earlier position is written; a replay finds
//! the outcome at that position and returns it without running the operation again.
//!
//! Operations may run concurrently (`join_all`): they take positions in the order they are
//! first polled, which `join_all` makes the order they are listed in, run at once, and write
//! their outcomes in position order. An operation's future must be awaited to its end: one
//! dropped half-way leaves its position `Abandoned`.
//!
//! **Running ahead of the disk.** An operation hands its record to the log and goes on
//! without waiting for the log to acknowledge it: the records of one execution are a chain of
//! conditional appends (`Cond::chained`, with the execution's token), so they land in position
//! order or not at all, and once one loses its position to another execution every later one
//! loses too. A crash loses a suffix of the chain, never a record in the middle. What leaves
//! the instance waits until every record handed to the log before it is acknowledged (a
//! barrier): an external step before it runs, a child call before it starts the child, a
//! suspension, and the instance's end (its reply). Table operations, `now`/`random`/`uuid`,
//! `version`, timers' records and steps marked `internal()` do not wait.

use crate::entry::{
    key_tag, now_ms, signal_tag, steps_tag, waits_tag, Entry, Op, Outcome, SignalRecord, Status,
    WaitRecord, Write,
};
use crate::table::{Protocol, Table};
use crate::Error;
use bytes::Bytes;
use logbook::{Cond, LogError, ReadRange, Seqnum, Tag, TAGS_PER_RECORD_MAX};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::Ctx;
use tokio::sync::watch;

/// Tries of one append that the log refused for a reason worth retrying (a view change).
const APPEND_TRIES: u32 = 8;
/// Longest one blocking read of a signal stream waits before looking again.
const SIGNAL_POLL: Duration = Duration::from_secs(30);
/// Records an execution hands to the log before the oldest of them is acknowledged, at most.
const RUN_AHEAD_MAX: u64 = 64;

/// How often a step is tried, and how long it waits between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, at least 1.
    pub max_attempts: u32,
    /// The wait before the second try; it doubles with each try, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// One try, no retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    fn backoff(&self, failed_tries: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failed_tries.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// A workflow instance, as its code sees it. Clones share the instance.
#[derive(Clone)]
pub struct Flow {
    inner: Arc<Inner>,
}

/// What an execution knows of its instance besides the history.
#[derive(Clone)]
pub(crate) struct Setup {
    pub workflow: String,
    pub input: Value,
    pub protocols: BTreeMap<String, Protocol>,
    pub default_protocol: Protocol,
    pub retry: RetryPolicy,
    /// A wait longer than this gives up the instance's task (`Error::Suspended`).
    pub suspend_after: Duration,
    /// The instance whose child this one is: a child never gives up its task (its parent's
    /// execution waits for it, and only that execution drives it).
    pub parent: Option<String>,
}

struct Inner {
    ctx: Ctx,
    id: String,
    steps: Tag,
    /// This execution's token: each record it writes names it, and names it as its
    /// predecessor's (`Cond::chained`).
    token: u64,
    setup: Setup,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
}

/// How far the step stream is written, or why this execution stopped.
#[derive(Clone)]
struct Progress {
    /// Positions below this are in the log, acknowledged.
    written: u64,
    /// Positions below this are handed to the log (acknowledged or not).
    sent: u64,
    stopped: Option<Error>,
}

struct State {
    /// The records of the step stream this execution knows, by position: those read at its
    /// start, then those it wrote and the log acknowledged.
    history: Vec<(Seqnum, Entry)>,
    /// Records handed to the log and not yet acknowledged, by position (past `history`).
    in_flight: BTreeMap<u64, Entry>,
    /// Acknowledged positions past a gap (a record before them is not acknowledged yet).
    acked: BTreeMap<u64, Seqnum>,
    /// Positions below this are replayed from the history.
    replay_len: u64,
    /// The next position an operation takes.
    next: u64,
    /// Writes of read-log tables not yet in the log; the next record carries them.
    pending: Vec<Write>,
    /// Compensations of the operations that succeeded, by position.
    saga: BTreeMap<u64, (String, Value)>,
    /// Signals taken so far, by name: a wait takes the next one of its name.
    signals_taken: BTreeMap<String, u64>,
    /// Someone asked to cancel the instance (its cancel signal is in the log).
    cancel_requested: bool,
    /// The instance's `Cancelled` record is written (or replayed): operations fail, but for
    /// the compensations (`compensating`).
    cancelled: bool,
    compensating: bool,
}

impl Flow {
    /// An execution of instance `id` over its history so far (`history[0]` is its `Start`).
    pub(crate) fn new(ctx: Ctx, id: &str, history: Vec<(Seqnum, Entry)>, setup: Setup) -> Flow {
        let written = history.len() as u64;
        let (progress, _) = watch::channel(Progress {
            written,
            sent: written,
            stopped: None,
        });
        Flow {
            inner: Arc::new(Inner {
                ctx,
                id: id.to_string(),
                steps: steps_tag(id),
                token: random_u64() | 1,
                setup,
                state: Mutex::new(State {
                    history,
                    in_flight: BTreeMap::new(),
                    acked: BTreeMap::new(),
                    replay_len: written,
                    // Position 0 is the instance's start.
                    next: 1,
                    pending: Vec::new(),
                    saga: BTreeMap::new(),
                    signals_taken: BTreeMap::new(),
                    cancel_requested: false,
                    cancelled: false,
                    compensating: false,
                }),
                progress,
            }),
        }
    }

    /// The instance's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The invocation's context: the log, in the instance's book. Use it inside steps; a
    /// log call made outside a step runs again on every replay.
    pub fn ctx(&self) -> &Ctx {
        &self.inner.ctx
    }

    /// The table `name`, with the protocol this instance runs it with.
    pub fn table(&self, name: &str) -> Table {
        let setup = &self.inner.setup;
        let protocol = setup
            .protocols
            .get(name)
            .copied()
            .unwrap_or(setup.default_protocol);
        Table {
            flow: self.clone(),
            name: name.to_string(),
            protocol,
        }
    }

    /// Runs `f` once for the instance and logs its result; a replay returns the logged result
    /// without running it. A retryable failure is tried again as the retry policy says
    /// (`.retry(..)`, else the workflow's); the last failure fails the step.
    ///
    /// ```no_run
    /// # async fn f(flow: libflow::Flow) -> Result<(), libflow::Error> {
    /// let charged: u64 = flow.step("charge", || async { Ok(42) }).await?;
    /// # Ok(()) }
    /// ```
    pub fn step<T, F, Fut>(&self, name: &str, f: F) -> Step<T, F>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        Step {
            flow: self.clone(),
            name: name.to_string(),
            f,
            retry: self.inner.setup.retry,
            internal: false,
            compensation: None,
            _out: std::marker::PhantomData,
        }
    }

    /// Like `step`, and hands `f` the step's **key**: a string that names the instance and
    /// the step's position, the same in every execution of the instance and every try of the
    /// step. Effects keyed by it take effect once however often the step runs: a libstore
    /// store keyed with it (`Store::new(ctx).keyed(&key)`) makes the step's object writes and
    /// transactions exactly once (a write run again answers its first run's result).
    ///
    /// ```no_run
    /// # async fn f(flow: libflow::Flow) -> Result<(), libflow::Error> {
    /// use libstore::Store;
    /// use tally_sdk::FunctionError as E;
    ///
    /// let ctx = flow.ctx().clone();
    /// let paid: bool = flow
    ///     .step_with_key("pay", move |key| {
    ///         let store = Store::new(ctx.clone()).keyed(&key);
    ///         async move {
    ///             let accounts = store.collection("accounts");
    ///             let (a1, a2) = (accounts.object("a1"), accounts.object("a2"));
    ///             let mut tx = store.begin().await.map_err(E::from)?;
    ///             tx.fetch_add(&a1, "/balance", -5).await.map_err(E::from)?;
    ///             tx.fetch_add(&a2, "/balance", 5).await.map_err(E::from)?;
    ///             Ok(tx.commit().await.map_err(E::from)?.is_committed())
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn step_with_key<T, F, Fut>(&self, name: &str, f: F) -> Step<T, WithKey<F>>
    where
        F: FnMut(String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        Step {
            flow: self.clone(),
            name: name.to_string(),
            f: WithKey(f),
            retry: self.inner.setup.retry,
            internal: false,
            compensation: None,
            _out: std::marker::PhantomData,
        }
    }

    /// Calls `function` with `input` (JSON) and returns its JSON output. The child runs once
    /// for this position of the instance, however often the instance is replayed: its
    /// invocation's idempotency key is derived from the instance and position.
    pub fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        function: &str,
        input: &(impl Serialize + ?Sized),
    ) -> CallBuilder<T> {
        CallBuilder {
            flow: self.clone(),
            child: false,
            function: function.to_string(),
            input: serde_json::to_value(input).map_err(Error::from),
            compensation: None,
            _out: std::marker::PhantomData,
        }
    }

    /// Runs workflow `workflow` with `input` as a child instance of this one and returns its
    /// output (or fails with its error). The child's id is this instance's id and the
    /// call's position (`{id}:{position}`, `GET /workflows/{id}:{position}` shows it); it runs
    /// once for this position however often this instance is replayed, and its end is one
    /// record in both step streams: the child costs its start and that record, Halfmoon's one
    /// append per invocation edge. A child never gives up its task while it waits, and only
    /// its parent's execution drives it: a signal sent to it is kept for its wait.
    pub fn child<T: DeserializeOwned + Send + 'static>(
        &self,
        workflow: &str,
        input: &(impl Serialize + ?Sized),
    ) -> CallBuilder<T> {
        CallBuilder {
            child: true,
            ..self.call(workflow, input)
        }
    }

    /// Starts `function` with `input` without waiting; returns the child's invocation id.
    /// The child is started once for this position, however often the instance is replayed.
    pub async fn call_async(
        &self,
        function: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Result<String, Error> {
        let input = serde_json::to_vec(input)?;
        let mut slot = self.slot();
        let probe = Op::CallAsync {
            function: function.to_string(),
            invocation: String::new(),
        };
        if let Some((_, entry)) = slot.replayed(&probe)? {
            let Op::CallAsync { invocation, .. } = entry.op else {
                unreachable!("replayed checks the kind")
            };
            return Ok(invocation);
        }
        // The child is seen outside the instance: what it depends on must be in the log.
        self.barrier().await?;
        let key = self.child_key(slot.pos);
        let invocation = match self.ctx().invoke_async_keyed(function, &key, input).await {
            Ok(id) => id,
            Err(e) => return Err(slot.give_up_if_stopped(stop_or_fail(e))),
        };
        slot.commit(Op::CallAsync {
            function: function.to_string(),
            invocation: invocation.clone(),
        })
        .await?;
        Ok(invocation)
    }

    /// Sleeps `duration` on a durable timer: a restarted or re-driven instance sleeps only
    /// what is left of it.
    pub async fn sleep(&self, duration: Duration) -> Result<(), Error> {
        let deadline = now_ms().saturating_add(duration.as_millis() as u64);
        self.sleep_until(deadline).await
    }

    /// Sleeps until `deadline_ms` (ms since the Unix epoch) on a durable timer.
    pub async fn sleep_until(&self, deadline_ms: u64) -> Result<(), Error> {
        let deadline = self.timer(deadline_ms).await?;
        self.suspend_for_timer(deadline).await?;
        wait_until(deadline).await;
        Ok(())
    }

    /// Whether nothing but the operation at `pos` is under way: every position before it is
    /// written, and no later one is taken.
    fn quiet(&self, pos: u64) -> bool {
        let state = self.state();
        state.next == pos + 1 && state.history.len() as u64 >= pos
    }

    /// Gives up the instance's task while it waits for `deadline_ms`, if that is far enough
    /// away and nothing else of the instance is under way: an invocation of the workflow,
    /// in the log and due at the deadline, drives it on from its history.
    async fn suspend_for_timer(&self, deadline_ms: u64) -> Result<(), Error> {
        if !self.may_suspend() || !self.far(deadline_ms) {
            return Ok(());
        }
        // The instance goes on from its history in the log: all of it must be there.
        self.barrier().await?;
        let written = self.state().history.len() as u64;
        if written == 0 || !self.quiet(written - 1) {
            return Ok(());
        }
        self.suspend_for_timer_at(written, deadline_ms).await?;
        Err(self.suspended(format!("{deadline_ms} ms since the epoch")))
    }

    /// Ends this execution to wait without a task: anything else of it that would still run
    /// fails at once rather than wait for a position that will not be written here.
    fn suspended(&self, until: String) -> Error {
        let e = Error::Suspended(until);
        self.stop(e.clone());
        e
    }

    /// The instance whose child this one is.
    pub(crate) fn parent(&self) -> Option<&str> {
        self.inner.setup.parent.as_deref()
    }

    /// Whether this execution may give up its task to wait: a child's may not.
    fn may_suspend(&self) -> bool {
        self.parent().is_none()
    }

    /// Whether `deadline_ms` is far enough away to give up the task until then.
    fn far(&self, deadline_ms: u64) -> bool {
        deadline_ms.saturating_sub(now_ms()) > self.inner.setup.suspend_after.as_millis() as u64
    }

    /// Waits for the next signal `name` sent to the instance (`POST
    /// /workflows/{id}/signals/{name}`) and returns its JSON payload. Each signal is taken by
    /// one wait, in the order they were sent; one sent before the wait is kept for it.
    pub async fn wait_signal<T: DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        let slot = self.slot();
        let payload = self.signal(slot, name, None).await?;
        let payload = payload.expect("a wait without a deadline ends with a signal");
        Ok(serde_json::from_value(payload)?)
    }

    /// Like `wait_signal`, but gives up after `timeout` (a durable timer) and returns `None`.
    pub async fn wait_signal_timeout<T: DeserializeOwned>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<T>, Error> {
        // Both positions are taken before the first await, so they are the same on replay.
        let timer_slot = self.slot();
        let signal_slot = self.slot();
        let deadline = now_ms().saturating_add(timeout.as_millis() as u64);
        let deadline = self.timer_at(timer_slot, deadline).await?;
        let payload = self.signal(signal_slot, name, Some(deadline)).await?;
        payload
            .map(serde_json::from_value)
            .transpose()
            .map_err(Error::from)
    }

    /// The time (ms since the Unix epoch), the same on every replay.
    pub async fn now(&self) -> Result<u64, Error> {
        let value = self.value("now", || Value::from(now_ms())).await?;
        value
            .as_u64()
            .ok_or_else(|| Error::terminal("now(): not a number in the history"))
    }

    /// A random number, the same on every replay.
    pub async fn random(&self) -> Result<u64, Error> {
        let value = self.value("random", || Value::from(random_u64())).await?;
        value
            .as_u64()
            .ok_or_else(|| Error::terminal("random(): not a number in the history"))
    }

    /// A random UUID (version 4), the same on every replay.
    pub async fn uuid(&self) -> Result<String, Error> {
        let value = self
            .value("uuid", || Value::from(uuid_of(random_u64(), random_u64())))
            .await?;
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::terminal("uuid(): not a string in the history"))
    }

    /// Which version of the code around change `change` this instance runs: `max` for an
    /// instance that reaches this point for the first time, the version it chose before on a
    /// replay, and 0 for an instance that passed this point before the call was added (its
    /// history has no version here: run the old code).
    ///
    /// ```no_run
    /// # async fn f(flow: libflow::Flow) -> Result<(), libflow::Error> {
    /// if flow.version("send-receipt", 1).await? >= 1 {
    ///     flow.call::<serde_json::Value>("send_receipt", &()).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn version(&self, change: &str, max: u32) -> Result<u32, Error> {
        let probe = Op::Version {
            change: change.to_string(),
            version: 0,
        };
        {
            let state = self.state();
            if state.next < state.replay_len {
                let (_, entry) = &state.history[state.next as usize];
                if !same_op(&entry.op, &probe) {
                    // The history has no version here: it was made by the old code.
                    return Ok(0);
                }
            }
        }
        let mut slot = self.slot();
        if let Some((_, entry)) = slot.replayed(&probe)? {
            let Op::Version { version, .. } = entry.op else {
                unreachable!("replayed checks the kind")
            };
            return Ok(version);
        }
        slot.commit(Op::Version {
            change: change.to_string(),
            version: max,
        })
        .await?;
        Ok(max)
    }

    /// Runs `futures` concurrently and returns their outputs in order. Operations started
    /// inside them take positions in the order the futures are listed.
    pub async fn join_all<F: IntoFuture>(
        &self,
        futures: impl IntoIterator<Item = F>,
    ) -> Vec<F::Output> {
        futures::future::join_all(futures.into_iter().map(IntoFuture::into_future)).await
    }

    // -----------------------------------------------------------------------------------
    // The step stream

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .expect("no panics while the flow's state is locked")
    }

    /// The key of the step at `position` (`step_with_key`).
    fn step_key(&self, position: u64) -> String {
        format!("libflow-step:{}:{}", self.inner.id, position)
    }

    /// The idempotency key of the child started at `position`.
    fn child_key(&self, position: u64) -> String {
        format!("libflow:{}:{}", self.inner.id, position)
    }

    /// Notes that the instance's cancellation was asked for: the next operation past the
    /// history writes `Cancelled` in its place.
    pub(crate) fn request_cancel(&self) {
        self.state().cancel_requested = true;
    }

    /// Takes the next position; the record written there carries the buffered writes. A
    /// cancelled instance takes none (the operation fails with `Cancelled`), but for its
    /// compensations.
    pub(crate) fn slot(&self) -> Slot {
        let mut state = self.state();
        if state.cancelled && !state.compensating {
            return Slot {
                flow: self.clone(),
                pos: u64::MAX,
                replay: None,
                carried: Vec::new(),
                done: true,
                cancel: true,
            };
        }
        let pos = state.next;
        state.next += 1;
        let replay = (pos < state.replay_len).then(|| state.history[pos as usize].clone());
        let carried = std::mem::take(&mut state.pending);
        // Past the history, a requested cancellation takes this position.
        let cancel = replay.is_none() && state.cancel_requested && !state.compensating;
        if cancel {
            state.cancelled = true;
        }
        Slot {
            flow: self.clone(),
            pos,
            replay,
            carried,
            done: false,
            cancel,
        }
    }

    /// Takes position 0, the instance's start, in a flow made over an empty history.
    pub(crate) fn slot_at_start(&self) -> Slot {
        self.state().next = 0;
        self.slot()
    }

    /// Takes the next position for a record that also carries `write`, flushing the buffered
    /// writes first if they and `write` would not fit one record's tags.
    pub(crate) async fn slot_with(&self, write: Option<Write>) -> Result<Slot, Error> {
        self.slot_for(write, 0).await
    }

    /// `slot_with`, for a record with `extra` tags besides its stream's and its writes'.
    async fn slot_for(&self, write: Option<Write>, extra: usize) -> Result<Slot, Error> {
        let flush = {
            let state = self.state();
            let mut keys: Vec<Tag> = state
                .pending
                .iter()
                .chain(write.iter())
                .map(|w| key_tag(&w.table, &w.key))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys.len() + extra >= TAGS_PER_RECORD_MAX
        };
        let flush = flush.then(|| self.slot());
        let mut slot = self.slot();
        slot.carried.extend(write);
        if let Some(mut flush) = flush {
            if flush.replayed(&Op::Flush)?.is_none() {
                flush.commit(Op::Flush).await?;
            }
        }
        Ok(slot)
    }

    /// Buffers a read-log write for the next record.
    pub(crate) async fn buffer(&self, write: Write) -> Result<(), Error> {
        let full = {
            let mut state = self.state();
            state.pending.push(write);
            let mut keys: Vec<Tag> = state
                .pending
                .iter()
                .map(|w| key_tag(&w.table, &w.key))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys.len() >= TAGS_PER_RECORD_MAX
        };
        if full {
            let mut flush = self.slot();
            if flush.replayed(&Op::Flush)?.is_none() {
                flush.commit(Op::Flush).await?;
            }
        }
        Ok(())
    }

    /// The instance's logical time: the seqnum of the record at the last position taken
    /// (once it is written).
    pub(crate) async fn logical_time(&self) -> Result<Seqnum, Error> {
        let pos = self.state().next - 1;
        self.wait_written(pos + 1).await?;
        Ok(self.state().history[pos as usize].0)
    }

    /// Waits until every record handed to the log so far is acknowledged: what leaves the
    /// instance after this depends on nothing a crash could lose.
    pub(crate) async fn barrier(&self) -> Result<(), Error> {
        let sent = self.inner.progress.borrow().sent;
        self.wait_written(sent).await
    }

    /// Waits until the positions below `len` are handed to the log.
    async fn wait_sent(&self, len: u64) -> Result<(), Error> {
        self.wait_progress(|p| p.sent >= len).await
    }

    /// Waits until fewer than `RUN_AHEAD_MAX` records handed to the log are unacknowledged.
    /// (An append the log answers at its first poll is acknowledged a moment before it counts
    /// as handed over.)
    async fn wait_run_ahead(&self) -> Result<(), Error> {
        self.wait_progress(|p| p.sent.saturating_sub(p.written) < RUN_AHEAD_MAX)
            .await
    }

    /// Waits until `done` holds of the progress; fails if the execution stops first.
    async fn wait_progress(&self, done: impl Fn(&Progress) -> bool) -> Result<(), Error> {
        let mut progress = self.inner.progress.subscribe();
        let progress = progress
            .wait_for(|p| done(p) || p.stopped.is_some())
            .await
            .expect("the flow keeps its progress sender");
        match &progress.stopped {
            Some(e) if !done(&progress) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// The newest value this execution wrote to `table`/`key` in records before `pos` that the
    /// log has not acknowledged yet (`Some(None)`: a delete), if it wrote one.
    pub(crate) fn in_flight_write(
        &self,
        table: &str,
        key: &str,
        pos: u64,
    ) -> Option<Option<Value>> {
        let state = self.state();
        state
            .in_flight
            .range(..pos)
            .rev()
            .flat_map(|(_, entry)| entry.writes.iter().rev())
            .find(|w| w.table == table && w.key == key)
            .map(|w| w.value.clone())
    }

    /// Waits until the positions below `len` are written.
    async fn wait_written(&self, len: u64) -> Result<(), Error> {
        self.wait_progress(|p| p.written >= len).await
    }

    /// Stops this execution: every operation waiting for its turn fails with `e`.
    fn stop(&self, e: Error) {
        self.inner.progress.send_modify(|p| {
            if p.stopped.is_none() {
                p.stopped = Some(e);
            }
        });
    }

    /// The condition of this execution's record at `pos`: the next link of its chain. The
    /// first record after the history it read names no predecessor (its position decides).
    fn cond_at(&self, pos: u64) -> Cond {
        let replayed = pos == 0 || pos - 1 < self.state().replay_len;
        let after = if replayed { 0 } else { self.inner.token };
        Cond::chained(self.inner.steps, pos, self.inner.token, after)
    }

    /// Appends `data` at `pos` of the step stream, once. A condition lost to a record equal
    /// to `data` (an earlier try of this append that landed) counts as written; one lost
    /// because this execution's record before it is not in the log yet is tried again once
    /// that one is.
    async fn append_at(
        &self,
        pos: u64,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, Error> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.ctx().cond_append(tags, data.clone(), cond).await {
                Ok(seqnum) => return Ok(seqnum),
                Err(LogError::CondFailed { .. }) => {
                    // Whatever is at `pos` came after every earlier position.
                    self.wait_written(pos).await?;
                    let after = match pos {
                        0 => Seqnum(0),
                        _ => Seqnum(self.state().history[pos as usize - 1].0 .0 + 1),
                    };
                    match self.ctx().read_next(self.inner.steps, after).await? {
                        Some(record) if record.data == data => return Ok(record.seqnum),
                        Some(_) => return Err(Error::Superseded { position: pos }),
                        // Nothing there yet: this try overtook the record before it.
                        None if tries < APPEND_TRIES => {}
                        None => return Err(Error::Superseded { position: pos }),
                    }
                }
                Err(e) if e.is_retryable() && tries < APPEND_TRIES => {
                    tokio::time::sleep(Duration::from_millis(10 << tries.min(6))).await;
                }
                Err(e) => return Err(Error::Log(e)),
            }
        }
    }

    /// Notes that the log acknowledged the record at `pos` (handed to it, in `in_flight`).
    fn acknowledged(&self, pos: u64, seqnum: Seqnum) {
        let mut state = self.state();
        state.acked.insert(pos, seqnum);
        loop {
            let next = state.history.len() as u64;
            let Some(seqnum) = state.acked.remove(&next) else {
                break;
            };
            let entry = state
                .in_flight
                .remove(&next)
                .expect("an acknowledged record was handed to the log");
            state.history.push((seqnum, entry));
        }
        let written = state.history.len() as u64;
        drop(state);
        self.inner
            .progress
            .send_modify(|p| p.written = p.written.max(written));
    }

    /// Remembers a compensation for the operation at `pos`, which succeeded.
    fn register_compensation(&self, pos: u64, compensation: Option<(String, Value)>) {
        if let Some(c) = compensation {
            self.state().saga.insert(pos, c);
        }
    }

    /// What a step or call at `pos` returns for `outcome`; a success remembers its
    /// compensation.
    fn settle<T: DeserializeOwned>(
        &self,
        pos: u64,
        outcome: Outcome,
        compensation: Option<(String, Value)>,
    ) -> Result<T, Error> {
        match outcome {
            Outcome::Ok(value) => {
                self.register_compensation(pos, compensation);
                Ok(serde_json::from_value(value)?)
            }
            Outcome::Err(message) => Err(Error::terminal(message)),
        }
    }

    /// Runs the compensations of the operations that succeeded, newest first, each a call
    /// logged like any other (so each runs once however often the instance is replayed).
    /// Returns how many ran.
    pub(crate) async fn compensate(&self) -> Result<usize, Error> {
        let saga: Vec<(String, Value)> = {
            let mut state = self.state();
            state.compensating = true;
            std::mem::take(&mut state.saga)
                .into_values()
                .rev()
                .collect()
        };
        let n = saga.len();
        for (function, input) in saga {
            self.call::<Value>(&function, &input).await?;
        }
        Ok(n)
    }

    /// Writes the instance's end (with any buffered writes) and waits until it and every
    /// record before it are in the log; returns the end's record (an earlier execution's, on
    /// a replay).
    pub(crate) async fn end(&self, op: Op) -> Result<Entry, Error> {
        // The end is written whatever came before it, a cancellation too.
        self.state().compensating = true;
        let mut slot = self.slot();
        if let Some((_, entry)) = slot.replayed(&op)? {
            return Ok(entry);
        }
        slot.commit_durable(op).await
    }

    // -----------------------------------------------------------------------------------
    // Operations with more than one part

    /// Runs child workflow `workflow` at the next position and returns the position and the
    /// child's outcome (from the history, on a replay). The child's function is called
    /// without a durable invocation of its own: this instance's history is what drives it
    /// again, and its step stream what makes a second run a replay.
    async fn run_child(&self, workflow: &str, input: Value) -> Result<(u64, Outcome), Error> {
        // The record carries the child's stream's tag too.
        let mut slot = self.slot_for(None, 1).await?;
        let pos = slot.pos;
        let instance = crate::entry::child_id(&self.inner.id, pos);
        let probe = Op::Child {
            workflow: workflow.to_string(),
            instance: instance.clone(),
            status: Status::Running,
            output: None,
            error: None,
            refused: false,
        };
        if let Some((_, entry)) = slot.replayed(&probe)? {
            return Ok((pos, entry.op.into_outcome()));
        }
        // The child is seen outside the instance: what it depends on must be in the log.
        self.barrier().await?;
        let start = crate::workflows::child_input(&instance, input, &self.inner.id);
        // The call failed before the child ran (no such workflow, or the id is another
        // instance's): the record is the parent's alone.
        let refused = |error: String| Op::Child {
            workflow: workflow.to_string(),
            instance: instance.clone(),
            status: Status::Failed,
            output: None,
            error: Some(error),
            refused: true,
        };
        let op = match self.ctx().invoke(workflow, start).await {
            Ok(output) => match serde_json::from_slice::<crate::Ended>(&output) {
                Ok(ended) if ended.status != Status::Running => Op::Child {
                    workflow: workflow.to_string(),
                    instance: instance.clone(),
                    status: ended.status,
                    output: ended.output,
                    error: ended.error,
                    refused: false,
                },
                Ok(_) => {
                    let e = Error::Log(LogError::Unavailable(format!(
                        "child {instance} stopped before its end"
                    )));
                    return Err(slot.give_up(e));
                }
                Err(_) => refused(format!("{workflow} is not a workflow")),
            },
            Err(e) => match stop_or_fail(e) {
                Error::Failed { message, .. } => refused(message),
                stop => return Err(slot.give_up(stop)),
            },
        };
        let outcome = op.clone().into_outcome();
        // The child's records are in the log (it waited for them before it answered): this
        // one lands after them in its stream.
        slot.commit(op).await?;
        Ok((pos, outcome))
    }

    async fn value(&self, name: &str, make: impl FnOnce() -> Value) -> Result<Value, Error> {
        let mut slot = self.slot();
        let probe = Op::Value {
            name: name.to_string(),
            value: Value::Null,
        };
        if let Some((_, entry)) = slot.replayed(&probe)? {
            let Op::Value { value, .. } = entry.op else {
                unreachable!("replayed checks the kind")
            };
            return Ok(value);
        }
        let value = make();
        slot.commit(Op::Value {
            name: name.to_string(),
            value: value.clone(),
        })
        .await?;
        Ok(value)
    }

    async fn timer(&self, deadline_ms: u64) -> Result<u64, Error> {
        let slot = self.slot();
        self.timer_at(slot, deadline_ms).await
    }

    /// Logs a timer at `slot` (its deadline from the history on a replay).
    async fn timer_at(&self, mut slot: Slot, deadline_ms: u64) -> Result<u64, Error> {
        let probe = Op::Timer { deadline_ms: 0 };
        if let Some((_, entry)) = slot.replayed(&probe)? {
            let Op::Timer { deadline_ms } = entry.op else {
                unreachable!("replayed checks the kind")
            };
            return Ok(deadline_ms);
        }
        slot.commit(Op::Timer { deadline_ms }).await?;
        Ok(deadline_ms)
    }

    /// Takes the next signal `name` at `slot`, or none once `deadline_ms` passed.
    async fn signal(
        &self,
        mut slot: Slot,
        name: &str,
        deadline_ms: Option<u64>,
    ) -> Result<Option<Value>, Error> {
        let probe = Op::Signal {
            name: name.to_string(),
            payload: None,
        };
        if let Some((_, entry)) = slot.replayed(&probe)? {
            let Op::Signal { payload, .. } = entry.op else {
                unreachable!("replayed checks the kind")
            };
            if payload.is_some() {
                *self
                    .state()
                    .signals_taken
                    .entry(name.to_string())
                    .or_default() += 1;
            }
            return Ok(payload);
        }
        // Which signal this wait takes is decided once every earlier position is written.
        slot.wait_turn().await?;
        let index = self.state().signals_taken.get(name).copied().unwrap_or(0);
        // With nothing else under way, a wait for a signal not sent yet gives up the task: the
        // signal's own invocation drives the instance on (a wait with a deadline keeps its
        // task until then, unless the deadline is far: then its timer's invocation does).
        let suspend =
            self.may_suspend() && self.quiet(slot.pos) && deadline_ms.is_none_or(|d| self.far(d));
        let wait = if suspend { Some(now_ms()) } else { deadline_ms };
        let payload = self.find_signal(name, index, wait).await?;
        if suspend && payload.is_none() {
            if let Some(deadline) = deadline_ms {
                self.suspend_for_timer_at(slot.pos, deadline).await?;
            }
            // For people only (`GET /workflows/{id}`): what the instance waits for.
            let note = WaitRecord {
                position: slot.pos,
                signal: name.to_string(),
                deadline_ms,
            };
            let data = Bytes::from(serde_json::to_vec(&note)?);
            self.ctx()
                .append(&[waits_tag(&self.inner.id)], data)
                .await?;
            slot.done = true;
            return Err(self.suspended(format!("signal {name:?}")));
        }
        if payload.is_some() {
            *self
                .state()
                .signals_taken
                .entry(name.to_string())
                .or_default() += 1;
        }
        slot.commit(Op::Signal {
            name: name.to_string(),
            payload: payload.clone(),
        })
        .await?;
        Ok(payload)
    }

    /// Starts the invocation that drives the instance on at `deadline_ms`, resuming at
    /// position `pos`.
    async fn suspend_for_timer_at(&self, pos: u64, deadline_ms: u64) -> Result<(), Error> {
        let setup = &self.inner.setup;
        let key = format!("libflow-resume:{}:{pos}:timer", self.inner.id);
        let input = crate::workflows::start_input(&self.inner.id, setup.input.clone());
        self.ctx()
            .invoke_async_keyed_at(&setup.workflow, &key, input, deadline_ms)
            .await
            .map_err(stop_or_fail)?;
        Ok(())
    }

    /// The payload of signal `name` number `index` (from 0), waiting for it until
    /// `deadline_ms` (none: for ever).
    async fn find_signal(
        &self,
        name: &str,
        index: u64,
        deadline_ms: Option<u64>,
    ) -> Result<Option<Value>, Error> {
        let tag = signal_tag(&self.inner.id, name);
        let ctx = self.ctx();
        let mut seen = std::collections::BTreeSet::new();
        let mut from = Seqnum(0);
        loop {
            let range = ReadRange {
                from,
                to: Seqnum::MAX,
                limit: logbook::READ_RANGE_RECORDS_MAX,
            };
            let records = ctx.read_range(tag, range).await?;
            for record in &records {
                from = Seqnum(record.seqnum.0 + 1);
                let Ok(signal) = serde_json::from_slice::<SignalRecord>(&record.data) else {
                    continue;
                };
                if signal.instance != self.inner.id || signal.name != name {
                    continue;
                }
                // A signal delivered twice (its invocation ran again) counts once.
                let id = signal
                    .id
                    .clone()
                    .unwrap_or_else(|| record.seqnum.0.to_string());
                if !seen.insert(id) {
                    continue;
                }
                if seen.len() as u64 == index + 1 {
                    return Ok(Some(signal.payload));
                }
            }
            if !records.is_empty() {
                continue;
            }
            let wait = match deadline_ms {
                Some(deadline) => {
                    let now = now_ms();
                    if now >= deadline {
                        return Ok(None);
                    }
                    Duration::from_millis(deadline - now).min(SIGNAL_POLL)
                }
                None => SIGNAL_POLL,
            };
            ctx.read_next_blocking(tag, from, wait).await?;
        }
    }
}

/// A position of the step stream taken by one operation.
pub(crate) struct Slot {
    flow: Flow,
    pos: u64,
    /// The record at this position, if the history has it.
    replay: Option<(Seqnum, Entry)>,
    /// Writes the record at this position carries.
    carried: Vec<Write>,
    /// Written or replayed: nothing to fill in when dropped.
    done: bool,
    /// The instance is cancelled: the operation fails; if this slot took a position, it
    /// writes `Cancelled` there when dropped.
    cancel: bool,
}

impl Slot {
    /// Leaves the position empty and stops the execution with `e`: the execution that drives
    /// the instance again fills it.
    fn give_up(mut self, e: Error) -> Error {
        self.done = true;
        self.flow.stop(e.clone());
        e
    }

    /// `give_up` if `e` stops the execution; otherwise `e`, and the position is abandoned.
    fn give_up_if_stopped(self, e: Error) -> Error {
        if e.stops_execution() {
            self.give_up(e)
        } else {
            e
        }
    }

    /// The history's record at this position, if there is one and it is the same operation
    /// as `probe`; a different one is a non-determinism error.
    pub(crate) fn replayed(&mut self, probe: &Op) -> Result<Option<(Seqnum, Entry)>, Error> {
        if self.cancel {
            return Err(Error::Cancelled);
        }
        let Some((seqnum, entry)) = self.replay.take() else {
            return Ok(None);
        };
        self.done = true;
        if matches!(entry.op, Op::Cancelled) {
            let mut state = self.flow.state();
            if !state.compensating {
                state.cancelled = true;
                return Err(Error::Cancelled);
            }
        }
        if matches!(entry.op, Op::Abandoned) {
            return Err(Error::terminal(format!(
                "{} at position {} was abandoned by an earlier execution",
                probe.describe(),
                self.pos
            )));
        }
        if !same_op(&entry.op, probe) || !same_writes(&entry.writes, &self.carried) {
            let e = Error::NonDeterminism {
                position: self.pos,
                history: entry.op.describe(),
                code: probe.describe(),
            };
            self.flow.stop(e.clone());
            return Err(e);
        }
        Ok(Some((seqnum, entry)))
    }

    /// The position.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The writes this position's record carries.
    pub(crate) fn carried(&self) -> &[Write] {
        &self.carried
    }

    /// Waits until every earlier position is written.
    pub(crate) async fn wait_turn(&self) -> Result<(), Error> {
        self.flow.wait_written(self.pos).await
    }

    /// Waits until every earlier position is handed to the log: every write of this
    /// execution before this position is in the history or in flight.
    pub(crate) async fn wait_sent(&self) -> Result<(), Error> {
        self.flow.wait_sent(self.pos).await
    }

    /// Hands `op`'s record at this position to the log, after every earlier one, and returns
    /// without waiting for the log's acknowledgement (`Flow::barrier` waits for it). A record
    /// the log refuses stops the execution.
    pub(crate) async fn commit(self, op: Op) -> Result<(), Error> {
        if let Handed::OnItsWay(append) = self.hand_over(op).await?.1 {
            tokio::spawn(append);
        }
        Ok(())
    }

    /// Like `commit`, and waits until the log took the record: then every earlier position
    /// is in the log too (the record landed right after them). Returns the record.
    pub(crate) async fn commit_durable(self, op: Op) -> Result<Entry, Error> {
        let (entry, handed) = self.hand_over(op).await?;
        match handed {
            Handed::Taken(result) => result?,
            Handed::OnItsWay(append) => append.await?,
        };
        Ok(entry)
    }

    /// Builds the record, hands it to the log once every earlier position's is, and returns
    /// it with its append (which notes the log's answer in the flow when it comes).
    async fn hand_over(mut self, op: Op) -> Result<(Entry, Handed), Error> {
        self.done = true;
        let flow = self.flow.clone();
        let pos = self.pos;
        flow.wait_sent(pos).await?;
        flow.wait_run_ahead().await?;
        let entry = Entry {
            op,
            writes: std::mem::take(&mut self.carried),
            at_ms: now_ms(),
        };
        let mut tags = vec![flow.inner.steps];
        match &entry.op {
            Op::Start { .. } => tags.push(crate::entry::instances_tag()),
            // The child's end: the last record of its stream too.
            Op::Child {
                instance,
                refused: false,
                ..
            } => tags.push(crate::entry::steps_tag(instance)),
            _ => {}
        }
        for w in &entry.writes {
            let tag = key_tag(&w.table, &w.key);
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        let data = match serde_json::to_vec(&entry) {
            Ok(data) => Bytes::from(data),
            Err(e) => {
                let e = Error::from(e);
                flow.stop(e.clone());
                return Err(e);
            }
        };
        let cond = flow.cond_at(pos);
        flow.state().in_flight.insert(pos, entry.clone());
        let mut append: BoxFuture<Seqnum> = Box::pin({
            let flow = flow.clone();
            async move {
                let result = flow.append_at(pos, &tags, data, cond).await;
                match &result {
                    Ok(seqnum) => flow.acknowledged(pos, *seqnum),
                    Err(e) => flow.stop(e.clone()),
                }
                result
            }
        });
        // The first poll hands the record to the log; the next position's goes after it.
        let handed = match futures::poll!(append.as_mut()) {
            std::task::Poll::Ready(result) => Handed::Taken(result),
            std::task::Poll::Pending => Handed::OnItsWay(append),
        };
        flow.inner
            .progress
            .send_modify(|p| p.sent = p.sent.max(pos + 1));
        Ok((entry, handed))
    }
}

/// A record handed to the log: its append's outcome, or the append on its way.
enum Handed {
    Taken(Result<Seqnum, Error>),
    OnItsWay(BoxFuture<Seqnum>),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.done || self.replay.is_some() {
            return;
        }
        // Later positions wait for this one: fill it in.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let slot = Slot {
            flow: self.flow.clone(),
            pos: self.pos,
            replay: None,
            carried: std::mem::take(&mut self.carried),
            done: true,
            cancel: false,
        };
        let op = if self.cancel {
            Op::Cancelled
        } else {
            Op::Abandoned
        };
        runtime.spawn(async move {
            let _ = slot.commit(op).await;
        });
    }
}

/// Whether a history's record and the code's operation are the same operation.
fn same_op(history: &Op, code: &Op) -> bool {
    match (history, code) {
        (Op::Step { name: a, .. }, Op::Step { name: b, .. }) => a == b,
        (Op::Call { function: a, .. }, Op::Call { function: b, .. }) => a == b,
        (
            Op::Child {
                workflow: a,
                instance: i,
                ..
            },
            Op::Child {
                workflow: b,
                instance: j,
                ..
            },
        ) => a == b && i == j,
        (Op::CallAsync { function: a, .. }, Op::CallAsync { function: b, .. }) => a == b,
        (Op::Timer { .. }, Op::Timer { .. }) => true,
        (Op::Signal { name: a, .. }, Op::Signal { name: b, .. }) => a == b,
        (
            Op::Read {
                table: a, key: k, ..
            },
            Op::Read {
                table: b, key: l, ..
            },
        ) => a == b && k == l,
        (Op::Write { table: a, key: k }, Op::Write { table: b, key: l }) => a == b && k == l,
        (Op::Value { name: a, .. }, Op::Value { name: b, .. }) => a == b,
        (Op::Version { change: a, .. }, Op::Version { change: b, .. }) => a == b,
        (Op::Flush, Op::Flush) => true,
        (Op::Cancelled, Op::Cancelled) => true,
        (Op::End { .. }, Op::End { .. }) => true,
        _ => false,
    }
}

/// Whether a replayed record carries the writes the code made before it (same keys, in the
/// same order).
fn same_writes(history: &[Write], code: &[Write]) -> bool {
    history.len() == code.len()
        && history
            .iter()
            .zip(code)
            .all(|(a, b)| a.table == b.table && a.key == b.key)
}

/// A compensation that calls `function` with `input` (JSON), or why it cannot.
fn compensation_call(
    function: &str,
    input: &(impl Serialize + ?Sized),
) -> Result<(String, Value), Error> {
    let input = serde_json::to_value(input)?;
    Ok((function.to_string(), input))
}

/// A callee that could not run stops the execution (it is driven again later); any other
/// failure is the call's outcome.
fn stop_or_fail(e: tally_sdk::FunctionError) -> Error {
    if e.unavailable {
        Error::Log(LogError::Unavailable(e.message))
    } else {
        Error::terminal(e.message)
    }
}

async fn wait_until(deadline_ms: u64) {
    let now = now_ms();
    if deadline_ms > now {
        tokio::time::sleep(Duration::from_millis(deadline_ms - now)).await;
    }
}

/// A random number from the OS's hash seeds and the clock: good enough for ids, never for
/// keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn uuid_of(hi: u64, lo: u64) -> String {
    let hi = (hi & !0xf000) | 0x4000; // version 4
    let lo = (lo & !(0xc << 60)) | (0x8 << 60); // variant 1
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// A JSON value from a function's output: its JSON, or the bytes as a string.
fn value_of_output(output: &[u8]) -> Value {
    serde_json::from_slice(output)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into_owned()))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

/// A step being set up: `.retry(..)` and `.compensate_with_call(..)`, then `.await`.
#[must_use = "a step runs when awaited"]
pub struct Step<T, F> {
    flow: Flow,
    name: String,
    f: F,
    retry: RetryPolicy,
    internal: bool,
    compensation: Option<Result<(String, Value), Error>>,
    _out: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> Step<T, F> {
    /// How often this step is tried.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Marks the step as one whose effects stay inside Tally (its log, its tables, calls to
    /// its functions): it runs at once, without waiting for the instance's earlier records
    /// to reach the log. A step is external by default: before it runs, every earlier record
    /// is in the log, so whatever it shows the outside world survives a crash.
    pub fn internal(mut self) -> Self {
        self.internal = true;
        self
    }

    /// If the workflow fails after this step succeeded, call `function` with `input` to undo
    /// it (a saga's compensation; compensations run newest first, each once).
    pub fn compensate_with_call(
        mut self,
        function: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Self {
        self.compensation = Some(compensation_call(function, input));
        self
    }
}

/// What a step runs: a closure `|| async { .. }` (`Flow::step`), or one that takes the step's
/// key, `|key| async { .. }` (`Flow::step_with_key`).
pub trait StepBody<T>: Send + 'static {
    type Fut: Future<Output = Result<T, Error>> + Send + 'static;
    /// Starts one try of the step.
    fn start(&mut self, key: &str) -> Self::Fut;
}

impl<T, F, Fut> StepBody<T> for F
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
{
    type Fut = Fut;
    fn start(&mut self, _key: &str) -> Fut {
        self()
    }
}

/// A step's closure that takes the step's key (`Flow::step_with_key`).
pub struct WithKey<F>(F);

impl<T, F, Fut> StepBody<T> for WithKey<F>
where
    F: FnMut(String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
{
    type Fut = Fut;
    fn start(&mut self, key: &str) -> Fut {
        (self.0)(key.to_string())
    }
}

impl<T, F> IntoFuture for Step<T, F>
where
    F: StepBody<T>,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    type Output = Result<T, Error>;
    type IntoFuture = BoxFuture<T>;

    fn into_future(self) -> BoxFuture<T> {
        let Step {
            flow,
            name,
            mut f,
            retry,
            internal,
            compensation,
            ..
        } = self;
        let span = tracing::info_span!(target: "tally::trace", "step", otel.name = format!("step {name}"), step = %name);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let mut slot = flow.slot();
                let pos = slot.pos;
                let compensation = compensation.transpose()?;
                let probe = Op::Step {
                    name: name.clone(),
                    outcome: Outcome::Ok(Value::Null),
                    attempts: 0,
                };
                let outcome = match slot.replayed(&probe)? {
                    Some((_, entry)) => entry.op.into_outcome(),
                    None => {
                        if !internal {
                            flow.barrier().await?;
                        }
                        let key = flow.step_key(pos);
                        let mut attempts = 0;
                        let outcome = loop {
                            attempts += 1;
                            match f.start(&key).await {
                                Ok(value) => break Outcome::Ok(serde_json::to_value(&value)?),
                                Err(e) if e.stops_execution() => return Err(e),
                                Err(Error::Failed { message, retryable }) => {
                                    if !retryable || attempts >= retry.max_attempts.max(1) {
                                        break Outcome::Err(message);
                                    }
                                    tracing::debug!(step = %name, attempts, %message, "step failed; retrying");
                                    tokio::time::sleep(retry.backoff(attempts)).await;
                                }
                                Err(e) => break Outcome::Err(e.to_string()),
                            }
                        };
                        slot.commit(Op::Step {
                            name: name.clone(),
                            outcome: outcome.clone(),
                            attempts,
                        })
                        .await?;
                        outcome
                    }
                };
                flow.settle(pos, outcome, compensation)
            },
            span,
        ))
    }
}

/// A child call being set up: `.compensate_with_call(..)`, then `.await`.
#[must_use = "a call runs when awaited"]
pub struct CallBuilder<T> {
    flow: Flow,
    /// A child workflow (`Flow::child`) rather than a function.
    child: bool,
    function: String,
    input: Result<Value, Error>,
    compensation: Option<Result<(String, Value), Error>>,
    _out: std::marker::PhantomData<fn() -> T>,
}

impl<T> CallBuilder<T> {
    /// If the workflow fails after this call succeeded, call `function` with `input` to undo
    /// it (a saga's compensation; compensations run newest first, each once).
    pub fn compensate_with_call(
        mut self,
        function: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Self {
        self.compensation = Some(compensation_call(function, input));
        self
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for CallBuilder<T> {
    type Output = Result<T, Error>;
    type IntoFuture = BoxFuture<T>;

    fn into_future(self) -> BoxFuture<T> {
        let CallBuilder {
            flow,
            child,
            function,
            input,
            compensation,
            ..
        } = self;
        let span = tracing::info_span!(target: "tally::trace", "call", otel.name = format!("call {function}"), function = %function, child);
        Box::pin(tracing::Instrument::instrument(
            async move {
                if child {
                    let input = input?;
                    let compensation = compensation.transpose()?;
                    let (pos, outcome) = flow.run_child(&function, input).await?;
                    return flow.settle(pos, outcome, compensation);
                }
                let mut slot = flow.slot();
                let pos = slot.pos;
                let input = input?;
                let compensation = compensation.transpose()?;
                let probe = Op::Call {
                    function: function.clone(),
                    outcome: Outcome::Ok(Value::Null),
                };
                let outcome = match slot.replayed(&probe)? {
                    Some((_, entry)) => entry.op.into_outcome(),
                    None => {
                        // The child is seen outside the instance: what it depends on must be in
                        // the log.
                        flow.barrier().await?;
                        let key = flow.child_key(pos);
                        let input = serde_json::to_vec(&input)?;
                        let outcome = match flow.ctx().invoke_keyed(&function, &key, input).await {
                            Ok(output) => Outcome::Ok(value_of_output(&output)),
                            Err(e) => match stop_or_fail(e) {
                                Error::Failed { message, .. } => Outcome::Err(message),
                                stop => return Err(slot.give_up(stop)),
                            },
                        };
                        slot.commit(Op::Call {
                            function: function.clone(),
                            outcome: outcome.clone(),
                        })
                        .await?;
                        outcome
                    }
                };
                flow.settle(pos, outcome, compensation)
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_is_version_4_variant_1() {
        let id = uuid_of(u64::MAX, u64::MAX);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(350));
    }
}
