//! The workflows a process serves, the driver that runs an instance from its history, and
//! what the outside sees of instances: their state (`describe`) and signals (`signal`).
//!
//! An instance runs as a function invocation: `Workflows::handler` is an ordinary function
//! handler whose input is `{"instance": id, "input": ...}` (`start_input`). The gateway starts
//! it as a durable invocation under an idempotency key made from the instance id, so one id is
//! one instance however often it is started, and an unfinished one is driven again after a
//! crash, on any gateway that serves the workflow.

use crate::entry::{
    instances_tag, key_tag, now_ms, signal_tag, signals_tag, steps_tag, waits_tag, Entry, Op,
    Outcome, SignalRecord, Status, WaitRecord, CANCEL_SIGNAL,
};
use crate::flow::{Flow, RetryPolicy, Setup};
use crate::table::Protocol;
use crate::Error;
use bytes::Bytes;
use logbook::{ReadRange, Record, Seqnum};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tally_sdk::{Ctx, FunctionError, Handler};

/// Longest an instance id may be, in bytes.
pub const INSTANCE_ID_BYTES_MAX: usize = 256;
/// How long an execution that lost its instance to another waits for the other's end before
/// it gives up (the instance is then driven again).
const SUPERSEDED_WAIT: Duration = Duration::from_secs(60);
/// An execution that lost its instance to another drives the instance again itself once the
/// other has written nothing for this long: the other may have died (a crashed process's last
/// records can land after a new execution read the history, and win its positions).
const SUPERSEDED_QUIET: Duration = Duration::from_secs(10);
/// How often one invocation drives its instance again after losing it to a quiet execution.
const REDRIVES_MAX: u32 = 5;

type WorkflowFn = Arc<
    dyn Fn(Flow, Value) -> Pin<Box<dyn Future<Output = Result<Value, Error>> + Send>> + Send + Sync,
>;

struct Definition {
    run: WorkflowFn,
    retry: RetryPolicy,
}

/// The workflows a process serves, and the protocol of each table.
///
/// ```no_run
/// use libflow::{Flow, Error, Protocol, Workflows};
///
/// async fn greet(flow: Flow, name: String) -> Result<String, Error> {
///     let greeting: String = flow.call("greet", &serde_json::json!({ "name": name })).await?;
///     flow.table("greeted").update(&name, |n: Option<u64>| n.unwrap_or(0) + 1).await?;
///     Ok(greeting)
/// }
///
/// let mut workflows = Workflows::new();
/// workflows.register("greeter", greet);
/// workflows.set_protocol("greeted", Protocol::ReadLog);
/// ```
#[derive(Clone)]
pub struct Workflows {
    definitions: Arc<RwLock<BTreeMap<String, Arc<Definition>>>>,
    protocols: Arc<RwLock<BTreeMap<String, Protocol>>>,
    default_protocol: Protocol,
    suspend_after: Arc<RwLock<Duration>>,
    pub(crate) queries: Arc<RwLock<BTreeMap<(String, String), crate::query::QueryFn>>>,
}

/// How the gateway runs a workflow's function served by a worker (`Workflows::serve_in`).
pub const WORKFLOW_LIMITS: tally_sdk::Limits = tally_sdk::Limits {
    max_concurrency: 4096,
    timeout: Duration::from_secs(24 * 3600),
    retries: 10,
    backoff: Duration::from_millis(100),
};

/// A wait longer than this gives up the instance's task, by default.
pub const SUSPEND_AFTER_DEFAULT: Duration = Duration::from_secs(1);

impl Default for Workflows {
    fn default() -> Workflows {
        Workflows {
            definitions: Arc::default(),
            protocols: Arc::default(),
            default_protocol: Protocol::default(),
            suspend_after: Arc::new(RwLock::new(SUSPEND_AFTER_DEFAULT)),
            queries: Arc::default(),
        }
    }
}

impl Workflows {
    pub fn new() -> Workflows {
        Workflows::default()
    }

    /// How long a wait (a timer, or a signal not sent yet) may be before the instance gives
    /// up its task: it holds no task and no memory while it waits, and an invocation in the
    /// log (the timer's, at its deadline, or the signal's) drives it on from its history.
    pub fn set_suspend_after(&self, wait: Duration) {
        *self
            .suspend_after
            .write()
            .expect("no panics under the settings lock") = wait;
    }

    /// Serves `workflow` as `name`: an `async fn(Flow, In) -> Result<Out, Error>` over JSON
    /// input and output.
    pub fn register<In, Out, F, Fut>(&mut self, name: &str, workflow: F) -> &mut Workflows
    where
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        F: Fn(Flow, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, Error>> + Send + 'static,
    {
        self.register_with(name, RetryPolicy::default(), workflow)
    }

    /// `register`, with the retry policy of the workflow's steps.
    pub fn register_with<In, Out, F, Fut>(
        &mut self,
        name: &str,
        retry: RetryPolicy,
        workflow: F,
    ) -> &mut Workflows
    where
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        F: Fn(Flow, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, Error>> + Send + 'static,
    {
        let workflow = Arc::new(workflow);
        let run: WorkflowFn = Arc::new(move |flow, input| {
            let workflow = workflow.clone();
            Box::pin(async move {
                let input: In = serde_json::from_value(input)
                    .map_err(|e| Error::terminal(format!("input: {e}")))?;
                let output = workflow(flow, input).await?;
                Ok(serde_json::to_value(output)?)
            })
        });
        self.definitions
            .write()
            .expect("no panics under the workflows lock")
            .insert(name.to_string(), Arc::new(Definition { run, retry }));
        self
    }

    /// The names of the workflows served, in order.
    pub fn names(&self) -> Vec<String> {
        self.definitions
            .read()
            .expect("no panics under the workflows lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Sets `table`'s protocol for instances that start from now on; running instances keep
    /// the one they started with, so the switch needs no pause and keeps them exactly once.
    pub fn set_protocol(&self, table: &str, protocol: Protocol) {
        self.protocols
            .write()
            .expect("no panics under the protocols lock")
            .insert(table.to_string(), protocol);
    }

    /// The protocol new instances use for `table`.
    pub fn protocol(&self, table: &str) -> Protocol {
        self.protocols
            .read()
            .expect("no panics under the protocols lock")
            .get(table)
            .copied()
            .unwrap_or(self.default_protocol)
    }

    /// The function handler that runs instances of workflow `name` (input: `start_input`).
    /// It answers the instance's end as JSON (`Ended`) once the instance has ended, however
    /// it ended; it fails only when the execution stopped before the end (a log error), so the
    /// invocation is driven again.
    pub fn handler(&self, name: &str) -> Option<Handler> {
        let definition = self
            .definitions
            .read()
            .expect("no panics under the workflows lock")
            .get(name)
            .cloned()?;
        let workflows = self.clone();
        let name = name.to_string();
        Some(Arc::new(move |ctx: Ctx, input: Bytes| {
            let definition = definition.clone();
            let workflows = workflows.clone();
            let name = name.clone();
            Box::pin(async move {
                let start: StartInput = tally_sdk::json::input(&input)?;
                if let Some(signal) = &start.signal {
                    deliver(&ctx, &start.instance, signal).await?;
                }
                let ended = workflows.drive(&definition, &name, ctx, &start).await?;
                tally_sdk::json::output(&ended)
            }) as tally_sdk::BoxFuture
        }))
    }

    /// Registers every workflow with `worker`, as the gateway registers in-process ones: many
    /// at once, a day each at most, and an execution that stopped before the end (its
    /// worker or the log failed) driven again with backoff.
    /// Its queries too (`serve_queries_in`).
    pub fn serve_in(&self, worker: &mut tally_sdk::Worker) {
        for name in self.names() {
            let handler = self.handler(&name).expect("a registered workflow");
            worker.register_limited(&name, WORKFLOW_LIMITS, move |ctx, input| {
                handler(ctx, input)
            });
        }
        self.serve_queries_in(worker);
    }

    /// Runs instance `id` of workflow `name` to its end, from its history, again (from the
    /// newer history) when it lost the instance to an execution that went quiet.
    async fn drive(
        &self,
        definition: &Definition,
        name: &str,
        ctx: Ctx,
        start: &StartInput,
    ) -> Result<Ended, FunctionError> {
        let id = &start.instance;
        check_instance_id(id).map_err(FunctionError::bad_input)?;
        for _ in 0..=REDRIVES_MAX {
            let driven = self
                .drive_once(definition, name, ctx.clone(), start)
                .await?;
            if let Some(ended) = driven {
                return Ok(ended);
            }
        }
        Err(FunctionError::new(format!(
            "instance {id} is run by other executions, which went quiet without ending it"
        )))
    }

    /// One execution of instance `id` from its history: how the instance ended, or `None` if
    /// another execution won it and went quiet (it is to be driven again).
    async fn drive_once(
        &self,
        definition: &Definition,
        name: &str,
        ctx: Ctx,
        start: &StartInput,
    ) -> Result<Option<Ended>, FunctionError> {
        let (id, input, parent) = (&start.instance, start.input.clone(), start.parent.clone());
        let history = read_history(&ctx, id).await.map_err(stopped)?;
        if let Some(ended) = ended(&history, id) {
            return Ok(Some(ended));
        }
        let protocols = match history.first() {
            Some((_, entry)) => match &entry.op {
                Op::Start {
                    workflow,
                    input: first,
                    protocols,
                    parent: first_parent,
                    ..
                } => {
                    if first_parent.is_some() && parent.is_none() {
                        // A signal's delivery to a child: its parent's execution drives it.
                        return Ok(Some(Ended {
                            status: Status::Running,
                            output: None,
                            error: Some("driven by its parent".to_string()),
                        }));
                    }
                    if *first_parent != parent {
                        return Err(FunctionError::bad_input(format!(
                            "instance {id} is not a child of {}",
                            parent.as_deref().unwrap_or("nothing")
                        )));
                    }
                    if workflow != name {
                        return Err(FunctionError::bad_input(format!(
                            "instance {id} is an instance of workflow {workflow}, not {name}"
                        )));
                    }
                    if *first != input {
                        return Err(FunctionError::bad_input(format!(
                            "instance {id} was started with another input"
                        )));
                    }
                    protocols.clone()
                }
                other => {
                    return Err(FunctionError::new(format!(
                        "instance {id}'s step stream starts with {}",
                        other.describe()
                    )))
                }
            },
            None => self
                .protocols
                .read()
                .expect("no panics under the protocols lock")
                .clone(),
        };
        let setup = Setup {
            workflow: name.to_string(),
            input: input.clone(),
            protocols: protocols.clone(),
            default_protocol: self.default_protocol,
            retry: definition.retry,
            suspend_after: *self
                .suspend_after
                .read()
                .expect("no panics under the settings lock"),
            parent: parent.clone(),
        };
        if history.is_empty() {
            // Position 0 is the start: an execution that loses it lost the instance.
            let flow = Flow::new(ctx.clone(), id, Vec::new(), setup);
            let entry = Entry {
                op: Op::Start {
                    instance: id.to_string(),
                    workflow: name.to_string(),
                    input: input.clone(),
                    protocols,
                    parent,
                },
                writes: Vec::new(),
                at_ms: now_ms(),
            };
            // The execution that writes the start runs on from it (without waiting for it:
            // its later records land only after it).
            if let Err(e) = flow.write_start(entry).await {
                return self.after_stop(&ctx, id, e).await;
            }
            return self.run(definition, &ctx, id, flow, input).await;
        }
        let flow = Flow::new(ctx.clone(), id, history, setup);
        self.run(definition, &ctx, id, flow, input).await
    }

    /// Whether someone asked to cancel instance `id`.
    async fn cancel_requested(ctx: &Ctx, id: &str) -> Result<bool, FunctionError> {
        let tag = signal_tag(id, CANCEL_SIGNAL);
        let first = ctx
            .read_next(tag, Seqnum(0))
            .await
            .map_err(|e| stopped(Error::Log(e)))?;
        Ok(first.is_some())
    }

    async fn run(
        &self,
        definition: &Definition,
        ctx: &Ctx,
        id: &str,
        flow: Flow,
        input: Value,
    ) -> Result<Option<Ended>, FunctionError> {
        if Workflows::cancel_requested(ctx, id).await? {
            flow.request_cancel();
        }
        let result = (definition.run)(flow.clone(), input).await;
        let end = match result {
            Ok(output) => Op::End {
                status: Status::Succeeded,
                output: Some(output),
                error: None,
            },
            Err(e) if e.stops_execution() => return self.after_stop(ctx, id, e).await,
            Err(Error::Cancelled) => {
                if let Err(stop) = flow.compensate().await {
                    if stop.stops_execution() {
                        return self.after_stop(ctx, id, stop).await;
                    }
                    tracing::warn!(instance = id, error = %stop, "a compensation failed");
                }
                Op::End {
                    status: Status::Cancelled,
                    output: None,
                    error: Some("cancelled".to_string()),
                }
            }
            Err(e @ Error::NonDeterminism { .. }) => Op::End {
                status: Status::Failed,
                output: None,
                error: Some(e.to_string()),
            },
            Err(e) => {
                let compensated = match flow.compensate().await {
                    Ok(n) => n,
                    Err(stop) if stop.stops_execution() => {
                        return self.after_stop(ctx, id, stop).await
                    }
                    Err(other) => {
                        tracing::warn!(instance = id, error = %other, "a compensation failed");
                        0
                    }
                };
                Op::End {
                    status: if compensated > 0 {
                        Status::Compensated
                    } else {
                        Status::Failed
                    },
                    output: None,
                    error: Some(e.to_string()),
                }
            }
        };
        if flow.parent().is_some() {
            // A child's end is its parent's record of the call, which lands after the child's
            // records: they must be in the log before the parent has the outcome.
            if let Err(e) = flow.barrier().await {
                return self.after_stop(ctx, id, e).await;
            }
            return Ok(end_of_op(&end, id));
        }
        match flow.end(end).await {
            Ok(entry) => end_of(&entry, id)
                .map(Some)
                .ok_or_else(|| FunctionError::new("the instance's end is not in its stream")),
            Err(e) => self.after_stop(ctx, id, e).await,
        }
    }

    /// An execution stopped before the end: a suspended instance answers `running` (its
    /// timer's or signal's invocation drives it on); one superseded waits for the execution
    /// that owns the instance to end it; any other stop fails the invocation so it is driven
    /// again.
    async fn after_stop(
        &self,
        ctx: &Ctx,
        id: &str,
        e: Error,
    ) -> Result<Option<Ended>, FunctionError> {
        if let Error::Suspended(until) = &e {
            return Ok(Some(Ended {
                status: Status::Running,
                output: None,
                error: Some(format!("suspended until {until}")),
            }));
        }
        if !matches!(e, Error::Superseded { .. }) {
            return Err(stopped(e));
        }
        // Position 0 taken but nothing there: the instance ended and was collected.
        let collected = e == (Error::Superseded { position: 0 })
            && read_history(ctx, id).await.is_ok_and(|h| h.is_empty());
        if collected {
            return Err(FunctionError::bad_input(format!(
                "instance {id} ended and was collected; start it under another id"
            )));
        }
        let deadline = now_ms() + SUPERSEDED_WAIT.as_millis() as u64;
        let tag = steps_tag(id);
        let mut from = Seqnum(0);
        while now_ms() < deadline {
            let quiet = SUPERSEDED_QUIET.as_millis() as u64;
            let wait = Duration::from_millis((deadline - now_ms()).min(quiet));
            match ctx.read_next_blocking(tag, from, wait).await {
                Ok(Some(record)) => {
                    from = Seqnum(record.seqnum.0 + 1);
                    if let Some(ended) = entry_of(&record).and_then(|e| end_of(&e, id)) {
                        return Ok(Some(ended));
                    }
                }
                // Nothing written for a while: the winner may be dead. Driving the instance
                // again is safe (its records are conditional), at worst a second execution.
                Ok(None) if wait.as_millis() as u64 == quiet => {
                    tracing::debug!(
                        instance = id,
                        "the winning execution went quiet; driving again"
                    );
                    return Ok(None);
                }
                Ok(None) => {}
                Err(e) => return Err(stopped(Error::Log(e))),
            }
        }
        Err(FunctionError::new(format!(
            "instance {id} is run by another execution, which has not ended it"
        )))
    }
}

impl Flow {
    /// Writes an instance's `Start` at position 0.
    async fn write_start(&self, entry: Entry) -> Result<(), Error> {
        let mut slot = self.slot_at_start();
        if slot.replayed(&entry.op)?.is_some() {
            return Ok(());
        }
        slot.commit(entry.op).await?;
        Ok(())
    }
}

/// A log error stops an execution without ending the instance: the invocation fails as
/// unavailable, and is driven again (a parent whose child stopped stops too, rather than
/// take it for the child's failure).
fn stopped(e: impl Into<Error>) -> FunctionError {
    FunctionError::unavailable(format!("the instance stopped before its end: {}", e.into()))
}

/// An instance id: 1 to `INSTANCE_ID_BYTES_MAX` bytes of letters, digits and `-_.:`.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > INSTANCE_ID_BYTES_MAX {
        return Err(format!(
            "an instance id has 1 to {INSTANCE_ID_BYTES_MAX} bytes, got {}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "an instance id holds letters, digits and -_.: only, not {c:?}"
        ));
    }
    Ok(())
}

/// The input of a workflow's function: the instance and the workflow's own input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartInput {
    pub instance: String,
    #[serde(default)]
    pub input: Value,
    /// The parent of a child instance (`Flow::child`), which drives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A signal this invocation delivers before it drives the instance on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Delivery>,
}

/// A signal on its way to an instance, in the input of the invocation that delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The signal's id: delivered twice (the invocation ran again), it counts once.
    pub id: String,
    pub name: String,
    pub payload: Value,
}

/// Appends a delivered signal's record.
async fn deliver(ctx: &Ctx, id: &str, signal: &Delivery) -> Result<(), FunctionError> {
    if signal.name != CANCEL_SIGNAL {
        check_signal_name(&signal.name).map_err(FunctionError::bad_input)?;
    }
    let record = SignalRecord {
        instance: id.to_string(),
        name: signal.name.clone(),
        payload: signal.payload.clone(),
        id: Some(signal.id.clone()),
    };
    let data = serde_json::to_vec(&record).expect("JSON values serialize");
    ctx.append(&[signal_tag(id, &signal.name), signals_tag(id)], data)
        .await
        .map_err(|e| stopped(Error::Log(e)))?;
    Ok(())
}

/// The input of the invocation that delivers signal `name` (id `signal_id`) to instance `id`
/// of a workflow started with `input`, then drives it on: started under the idempotency key
/// `signal_key(id, signal_id)`, a signal is delivered once even if sent again.
pub fn signal_input(id: &str, input: Value, signal_id: &str, name: &str, payload: Value) -> Bytes {
    StartInput {
        instance: id.to_string(),
        input,
        parent: None,
        signal: Some(Delivery {
            id: signal_id.to_string(),
            name: name.to_string(),
            payload,
        }),
    }
    .to_bytes()
}

/// The idempotency key of the invocation that delivers signal `signal_id` to instance `id`.
pub fn signal_key(id: &str, signal_id: &str) -> String {
    format!("libflow-signal:{id}:{signal_id}")
}

/// A signal's name: 1 to 128 bytes, not starting with `libflow.` (libflow's own signals).
pub fn check_signal_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("a signal's name has 1 to 128 bytes".into());
    }
    if name.starts_with("libflow.") {
        return Err(format!(
            "signal names starting with libflow. are libflow's: {name:?}"
        ));
    }
    Ok(())
}

/// The input of the invocation that cancels instance `id` (started with `input`): it delivers
/// the cancel signal and drives the instance to its compensations and its end. Started under
/// `signal_key(id, "cancel")`, so cancelling twice is cancelling once.
pub fn cancel_input(id: &str, input: Value) -> Bytes {
    signal_input(id, input, "cancel", CANCEL_SIGNAL, Value::Null)
}

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    /// Ended instances past their retention whose records were trimmed.
    pub instances: u64,
    /// Records of theirs no longer in any stream: their histories, and table versions no
    /// live instance can read.
    pub records: u64,
    /// Instances left (running, or ended within the retention).
    pub kept: u64,
}

/// Trims one collection pass has under way at once.
const TRIMS_AT_ONCE: usize = 64;

/// Trims the book's ended instances whose end is older than `retention`: their step
/// streams, signals, their place in the list of instances, and the versions of the keys they
/// wrote that no instance can read any more (every version of a key before its newest one at
/// the start of the oldest running instance). An instance collected is gone: its id starts
/// nothing again (its step stream keeps its length, so a late execution loses position 0 and
/// stops), and `GET /workflows/{id}` no longer finds it.
pub async fn collect(ctx: &Ctx, retention: Duration) -> Result<Collected, Error> {
    use futures::StreamExt;
    let now = now_ms();
    let starts = read_stream(ctx, instances_tag()).await?;
    let mut collected = Collected::default();
    // The start of the oldest running instance: what any live instance may still read from.
    let mut low_water: Option<Seqnum> = None;
    // The first instance kept: the list is trimmed below it.
    let mut first_kept: Option<Seqnum> = None;
    let mut dead = Vec::new();
    let mut trims: Vec<(logbook::Tag, Seqnum)> = Vec::new();
    for start in &starts {
        let Some(Entry {
            op: Op::Start { instance, .. },
            ..
        }) = entry_of(start)
        else {
            continue;
        };
        let Some(last) = ctx.check_tail(steps_tag(&instance)).await? else {
            // Collected before.
            continue;
        };
        let end = entry_of(&last).filter(|e| end_of(e, &instance).is_some());
        match end {
            Some(end) if end.at_ms.saturating_add(retention.as_millis() as u64) <= now => {
                dead.push(instance);
            }
            Some(_) => {
                first_kept.get_or_insert(start.seqnum);
                collected.kept += 1;
            }
            None => {
                low_water.get_or_insert(start.seqnum);
                first_kept.get_or_insert(start.seqnum);
                collected.kept += 1;
            }
        }
    }
    for id in dead {
        let history = read_history(ctx, &id).await?;
        collected.records += history.len() as u64;
        let mut keys: Vec<(String, String)> = history
            .iter()
            .flat_map(|(_, e)| e.writes.iter().map(|w| (w.table.clone(), w.key.clone())))
            .collect();
        keys.sort();
        keys.dedup();
        for (table, key) in keys {
            let tag = key_tag(&table, &key);
            let newest = ctx.read_prev(tag, low_water.unwrap_or(Seqnum::MAX)).await?;
            if let Some(newest) = newest {
                let below = ctx
                    .read_range(
                        tag,
                        ReadRange {
                            from: Seqnum(0),
                            to: newest.seqnum,
                            limit: logbook::READ_RANGE_RECORDS_MAX,
                        },
                    )
                    .await?;
                collected.records += below.len() as u64;
                trims.push((tag, newest.seqnum));
            }
        }
        for tag in [steps_tag(&id), signals_tag(&id), waits_tag(&id)] {
            trims.push((tag, Seqnum::MAX));
        }
        collected.instances += 1;
    }
    // Each trim is an append: many at once share the log's syncs.
    let mut trimming = futures::stream::iter(trims)
        .map(|(tag, below)| ctx.trim(tag, below))
        .buffer_unordered(TRIMS_AT_ONCE);
    while let Some(trimmed) = trimming.next().await {
        trimmed?;
    }
    drop(trimming);
    // Below the first instance kept, or past the last one (never MAX: instances started
    // later must be listed).
    let past_last = starts.last().map_or(Seqnum(0), |s| Seqnum(s.seqnum.0 + 1));
    let list_below = first_kept.unwrap_or(past_last);
    ctx.trim(instances_tag(), list_below).await?;
    Ok(collected)
}

/// One instance in a list of instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: String,
    pub workflow: String,
    pub status: Status,
    pub started_at_ms: u64,
    /// The seqnum of its start: the position in the list (`before` of the next page).
    pub seqnum: u64,
}

/// The instances of the book, newest first: at most `limit` of those with `status` (any, if
/// `None`) started before seqnum `before`.
pub async fn list(
    ctx: &Ctx,
    status: Option<Status>,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Summary>, Error> {
    let mut found = Vec::new();
    let mut at = Seqnum(before.map_or(u64::MAX, |b| b.saturating_sub(1)));
    while found.len() < limit {
        let Some(record) = ctx.read_prev(instances_tag(), at).await? else {
            break;
        };
        if let Some(Entry {
            op: Op::Start {
                instance, workflow, ..
            },
            at_ms,
            ..
        }) = entry_of(&record)
        {
            // An instance with nothing in its stream was collected: it is not listed.
            let last = ctx.check_tail(steps_tag(&instance)).await?;
            let now = last.as_ref().map(|last| {
                entry_of(last)
                    .and_then(|e| end_of(&e, &instance))
                    .map_or(Status::Running, |e| e.status)
            });
            if let Some(now) = now.filter(|now| status.is_none_or(|s| s == *now)) {
                found.push(Summary {
                    id: instance,
                    workflow,
                    status: now,
                    started_at_ms: at_ms,
                    seqnum: record.seqnum.0,
                });
            }
        }
        if record.seqnum.0 == 0 {
            break;
        }
        at = Seqnum(record.seqnum.0 - 1);
    }
    Ok(found)
}

/// The input that starts instance `id` with `input`.
pub fn start_input(id: &str, input: Value) -> Bytes {
    StartInput {
        instance: id.to_string(),
        input,
        parent: None,
        signal: None,
    }
    .to_bytes()
}

/// The input that runs instance `id` with `input` as a child of `parent`.
pub(crate) fn child_input(id: &str, input: Value, parent: &str) -> Bytes {
    StartInput {
        instance: id.to_string(),
        input,
        parent: Some(parent.to_string()),
        signal: None,
    }
    .to_bytes()
}

impl StartInput {
    /// The JSON a workflow's function takes.
    fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("JSON values serialize"))
    }
}

/// How an instance ended: what its function answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How instance `id` ended, if `entry` of its stream is its end: an `End`, or its parent's
/// record of it (a child's).
fn end_of(entry: &Entry, id: &str) -> Option<Ended> {
    end_of_op(&entry.op, id)
}

fn end_of_op(op: &Op, id: &str) -> Option<Ended> {
    match op {
        Op::End {
            status,
            output,
            error,
        } => Some(Ended {
            status: *status,
            output: output.clone(),
            error: error.clone(),
        }),
        Op::Child {
            instance,
            status,
            output,
            error,
            refused: false,
            ..
        } if instance == id => Some(Ended {
            status: *status,
            output: output.clone(),
            error: error.clone(),
        }),
        _ => None,
    }
}

fn ended(history: &[(Seqnum, Entry)], id: &str) -> Option<Ended> {
    history.last().and_then(|(_, e)| end_of(e, id))
}

fn entry_of(record: &Record) -> Option<Entry> {
    serde_json::from_slice(&record.data).ok()
}

/// Every record of `tag`'s stream, in order.
async fn read_stream(ctx: &Ctx, tag: logbook::Tag) -> Result<Vec<Record>, logbook::LogError> {
    let mut records = Vec::new();
    let mut from = Seqnum(0);
    loop {
        let range = ReadRange {
            from,
            to: Seqnum::MAX,
            limit: logbook::READ_RANGE_RECORDS_MAX,
        };
        let batch = ctx.read_range(tag, range).await?;
        let Some(last) = batch.last() else {
            return Ok(records);
        };
        from = Seqnum(last.seqnum.0 + 1);
        records.extend(batch);
    }
}

/// Every record of instance `id`'s step stream, by position.
pub(crate) async fn read_history(ctx: &Ctx, id: &str) -> Result<Vec<(Seqnum, Entry)>, Error> {
    read_stream(ctx, steps_tag(id))
        .await?
        .into_iter()
        .map(|record| match entry_of(&record) {
            Some(entry) => Ok((record.seqnum, entry)),
            None => Err(Error::terminal(format!(
                "record {} of instance {id}'s step stream is not a libflow record",
                record.seqnum
            ))),
        })
        .collect()
}

/// One record of an instance's history, as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub position: u64,
    pub seqnum: u64,
    /// The operation: `step`, `call`, `timer`, `signal`, `read`, `write`, ...
    pub op: String,
    /// Its name: the step's, the function's, the signal's, `table/key`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ok` or `failed`, for operations with an outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    pub at_ms: u64,
    /// Bytes of the record's JSON.
    pub bytes: usize,
    /// Table writes the record carries.
    pub writes: usize,
}

/// An instance as `GET /workflows/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub workflow: String,
    pub status: Status,
    pub input: Value,
    /// The instance whose child this one is (`Flow::child`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a running instance waits for: a timer its history holds, or a signal it gave up
    /// its task for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    pub started_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    pub steps: Vec<StepView>,
    /// Records and bytes the instance's step stream holds.
    pub log_records: usize,
    pub log_bytes: usize,
}

/// Instance `id` as its step stream shows it; `None` if it never started.
pub async fn describe(ctx: &Ctx, id: &str) -> Result<Option<Instance>, Error> {
    check_instance_id(id).map_err(Error::terminal)?;
    let records = read_stream(ctx, steps_tag(id)).await?;
    let Some(first) = records.first().and_then(entry_of) else {
        return Ok(None);
    };
    let Op::Start {
        workflow,
        input,
        parent,
        ..
    } = first.op
    else {
        return Ok(None);
    };
    let mut instance = Instance {
        id: id.to_string(),
        workflow,
        status: Status::Running,
        input,
        parent,
        output: None,
        error: None,
        waiting: None,
        started_at_ms: first.at_ms,
        ended_at_ms: None,
        steps: Vec::new(),
        log_records: records.len(),
        log_bytes: records.iter().map(|r| r.data.len()).sum(),
    };
    for (position, record) in records.iter().enumerate().skip(1) {
        let Some(entry) = entry_of(record) else {
            continue;
        };
        // The instance's end: its `End`, or as a child its parent's record of it.
        let (op, name, status, attempts) = if let Some(end) = end_of(&entry, id) {
            instance.status = end.status;
            instance.output = end.output;
            instance.error = end.error;
            instance.ended_at_ms = Some(entry.at_ms);
            ("end", None, None, None)
        } else {
            match &entry.op {
                Op::Step {
                    name,
                    outcome,
                    attempts,
                } => (
                    "step",
                    Some(name.clone()),
                    Some(outcome_status(outcome).to_string()),
                    Some(*attempts),
                ),
                Op::Call { function, outcome } => (
                    "call",
                    Some(function.clone()),
                    Some(outcome_status(outcome).to_string()),
                    None,
                ),
                Op::CallAsync { function, .. } => {
                    ("call_async", Some(function.clone()), None, None)
                }
                Op::Child {
                    instance: child,
                    workflow,
                    status,
                    ..
                } => {
                    let status = if *status == Status::Succeeded {
                        "ok"
                    } else {
                        "failed"
                    };
                    (
                        "child",
                        Some(format!("{workflow} {child}")),
                        Some(status.to_string()),
                        None,
                    )
                }
                Op::Timer { deadline_ms } => {
                    instance.waiting = (*deadline_ms > now_ms())
                        .then(|| format!("a timer until {deadline_ms} ms since the epoch"));
                    ("timer", None, None, None)
                }
                Op::Signal { name, payload } => (
                    "signal",
                    Some(name.clone()),
                    Some(if payload.is_some() { "ok" } else { "timed_out" }.to_string()),
                    None,
                ),
                Op::Read { table, key, .. } => ("read", Some(format!("{table}/{key}")), None, None),
                Op::Write { table, key } => ("write", Some(format!("{table}/{key}")), None, None),
                Op::Value { name, .. } => ("value", Some(name.clone()), None, None),
                Op::Version { change, .. } => ("version", Some(change.clone()), None, None),
                Op::Flush => ("flush", None, None, None),
                Op::Abandoned => ("abandoned", None, None, None),
                Op::Cancelled => ("cancelled", None, None, None),
                Op::Start { .. } => ("start", None, None, None),
                Op::End { .. } => unreachable!("an end is the instance's end, taken above"),
            }
        };
        if !matches!(entry.op, Op::Timer { .. }) {
            // Only a timer that is the newest record is being waited for.
            instance.waiting = None;
        }
        instance.steps.push(StepView {
            position: position as u64,
            seqnum: record.seqnum.0,
            op: op.to_string(),
            name,
            status,
            attempts,
            at_ms: entry.at_ms,
            bytes: record.data.len(),
            writes: entry.writes.len(),
        });
    }
    if instance.status == Status::Running {
        if let Some(wait) = ctx.check_tail(waits_tag(id)).await? {
            let note = serde_json::from_slice::<WaitRecord>(&wait.data).ok();
            if let Some(note) = note.filter(|n| n.position == records.len() as u64) {
                instance.waiting = Some(match note.deadline_ms {
                    Some(d) => format!(
                        "signal {:?} or a timer until {d} ms since the epoch",
                        note.signal
                    ),
                    None => format!("signal {:?}", note.signal),
                });
            }
        }
    }
    Ok(Some(instance))
}

/// Instance `id` once it has ended, waiting for that up to `timeout`; `None` if it never
/// started, else the instance as it is at the end or when the time is up.
pub async fn wait_ended(ctx: &Ctx, id: &str, timeout: Duration) -> Result<Option<Instance>, Error> {
    let deadline = now_ms().saturating_add(timeout.as_millis() as u64);
    loop {
        // The stream's newest record before `describe` reads it: a record after it is news.
        // (Not the newest step: an instance without steps yet, or with records that are not
        // steps after its last, would find that record at once, again and again.)
        let newest = ctx.check_tail(steps_tag(id)).await?.map(|r| r.seqnum.0);
        let Some(instance) = describe(ctx, id).await? else {
            return Ok(None);
        };
        let now = now_ms();
        if instance.status != Status::Running || now >= deadline {
            return Ok(Some(instance));
        }
        let after = newest.map_or(0, |s| s + 1);
        let wait =
            Duration::from_millis((deadline - now).min(logbook::READ_BLOCKING_TIMEOUT_MS_MAX));
        ctx.read_next_blocking(steps_tag(id), Seqnum(after), wait)
            .await?;
    }
}

fn outcome_status(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok(_) => "ok",
        Outcome::Err(_) => "failed",
    }
}

/// Appends signal `name` with `payload` for instance `id`; a wait for `name` takes it (now, or
/// later if none waits yet). Fails if the instance never started. This only appends: an
/// instance that gave up its task waiting for the signal is driven on by an invocation that
/// delivers the signal (`signal_input`), which is how the gateway sends signals.
pub async fn signal(
    ctx: &Ctx,
    id: &str,
    name: &str,
    payload: Value,
) -> Result<Seqnum, SignalError> {
    check_instance_id(id).map_err(SignalError::BadArgument)?;
    check_signal_name(name).map_err(SignalError::BadArgument)?;
    if ctx.read_next(steps_tag(id), Seqnum(0)).await?.is_none() {
        return Err(SignalError::NoInstance(id.to_string()));
    }
    let record = SignalRecord {
        instance: id.to_string(),
        name: name.to_string(),
        payload,
        id: None,
    };
    let data = serde_json::to_vec(&record).expect("JSON values serialize");
    Ok(ctx
        .append(&[signal_tag(id, name), signals_tag(id)], data)
        .await?)
}

/// Why a signal was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{0}")]
    BadArgument(String),
    #[error("no workflow instance {0:?}")]
    NoInstance(String),
    #[error("log: {0}")]
    Log(#[from] logbook::LogError),
}
