//! A world for libflow's tests: the in-memory log as the durable state, a process that can
//! crash at a chosen append (every log call and child call after it fails, as if the process
//! died) and whose appends reach the log after a random delay of up to `APPEND_DELAY` (so an
//! instance that runs ahead of the log has records on their way, landing out of order), child
//! functions whose runs are counted, and a driver that runs an instance the way
//! a gateway does (through the workflow's function handler).

#![allow(dead_code)]

use async_trait::async_trait;
use bytes::Bytes;
use libflow::{Ended, Workflows};
use logbook::crashing::{CrashPlan, CrashingLog};
use logbook::memory::MemoryLogBook;
use logbook::BookId;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::{Call, Ctx, FunctionError, FunctionResult, Invoker};

pub const BOOK: BookId = BookId(1);

/// The longest time a process's append takes to reach the log.
pub const APPEND_DELAY: Duration = Duration::from_micros(700);

pub use logbook::crashing::CrashAt as Crash;

/// One process's view of the shared log: its appends counted, dying where its plan says.
pub struct Process {
    plan: Arc<CrashPlan>,
    log: Arc<CrashingLog>,
}

impl Process {
    pub fn new(log: Arc<MemoryLogBook>, crash: Option<Crash>) -> Arc<Process> {
        let seed = match crash {
            Some(Crash::Before(n)) => 2 * n + 3,
            Some(Crash::After(n)) => 2 * n + 4,
            None => 1,
        };
        let plan = CrashPlan::with_delays(crash, APPEND_DELAY, seed);
        let log = Arc::new(CrashingLog::new(log, plan.clone()));
        Arc::new(Process { plan, log })
    }

    pub fn appends(&self) -> u64 {
        self.plan.appends()
    }

    pub fn most_appends_on_their_way(&self) -> u64 {
        self.plan.most_on_their_way()
    }

    pub fn is_dead(&self) -> bool {
        self.plan.is_dead()
    }
}

type Child = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Child functions, with the durable invocations of keyed calls: a key runs its function
/// once and keeps the result, as the gateway's durable invocations do. Kept across crashes.
#[derive(Default, Clone)]
pub struct Children {
    functions: Arc<Mutex<BTreeMap<String, Child>>>,
    results: Arc<Mutex<BTreeMap<String, FunctionResult>>>,
    /// Runs of each function, in order, with their input.
    pub runs: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Children {
    pub fn add(
        &self,
        name: &str,
        f: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) {
        self.functions
            .lock()
            .unwrap()
            .insert(name.to_string(), Arc::new(f));
    }

    pub fn runs_of(&self, name: &str) -> usize {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }

    fn run(&self, function: &str, input: &Bytes) -> FunctionResult {
        let f = self
            .functions
            .lock()
            .unwrap()
            .get(function)
            .cloned()
            .ok_or_else(|| FunctionError::new(format!("no function {function}")))?;
        let input: Value = serde_json::from_slice(input).unwrap_or(Value::Null);
        self.runs
            .lock()
            .unwrap()
            .push((function.to_string(), input.clone()));
        match f(input) {
            Ok(v) => Ok(Bytes::from(serde_json::to_vec(&v).unwrap())),
            Err(e) => Err(FunctionError::new(e)),
        }
    }
}

/// A process's invoker: dead once its process crashed. An asynchronous call of a workflow
/// (an instance's timer) runs it in a process of its own once due, as a gateway would; a
/// synchronous one (a child instance) runs it in this process.
#[derive(Clone)]
struct ProcessInvoker {
    process: Arc<Process>,
    children: Children,
    workflows: Workflows,
    log: Arc<MemoryLogBook>,
}

#[async_trait]
impl Invoker for ProcessInvoker {
    async fn invoke(&self, call: Call<'_>) -> FunctionResult {
        if self.process.is_dead() {
            return Err(FunctionError::unavailable("the process crashed"));
        }
        let Some(key) = call.key else {
            if let Some(handler) = self.workflows.handler(call.function) {
                let invoker = Arc::new(self.clone());
                let log = self.process.log.clone();
                let ctx = Ctx::with_invoker(log, BOOK, "child".into(), invoker, call.depth);
                return handler(ctx, call.input.clone()).await;
            }
            return self.children.run(call.function, &call.input);
        };
        // One run per key, even for calls at once (the results stay locked through the run).
        let key = format!("{}/{key}", call.function);
        let mut results = self.children.results.lock().unwrap();
        if let Some(result) = results.get(&key) {
            return result.clone();
        }
        let result = self.children.run(call.function, &call.input);
        results.insert(key, result.clone());
        result
    }

    async fn invoke_async(&self, call: Call<'_>) -> Result<String, FunctionError> {
        let id = format!("async-{}", call.key.unwrap_or("none"));
        if self.workflows.handler(call.function).is_none() {
            return self.invoke(call).await.map(|_| id);
        }
        if self.process.is_dead() {
            return Err(FunctionError::unavailable("the process crashed"));
        }
        let key = format!("{}/{}", call.function, call.key.unwrap_or(""));
        let first = self
            .children
            .results
            .lock()
            .unwrap()
            .insert(key, Ok(Bytes::new()))
            .is_none();
        if first {
            let (workflows, log, children) = (
                self.workflows.clone(),
                self.log.clone(),
                self.children.clone(),
            );
            let (function, input, due) = (
                call.function.to_string(),
                call.input.clone(),
                call.not_before_ms,
            );
            tokio::spawn(async move {
                if let Some(due) = due {
                    let now = now_ms();
                    if due > now {
                        tokio::time::sleep(Duration::from_millis(due - now)).await;
                    }
                }
                run_input(&workflows, &log, &children, None, &function, input).await;
            });
        }
        Ok(id)
    }
}

/// Runs instance `id` of `workflow` in a process (crashing as `crash` says) as a gateway
/// would: through the workflow's function. `None` when the process died first; a suspended
/// instance answers `running`.
pub async fn run_in(
    workflows: &Workflows,
    log: &Arc<MemoryLogBook>,
    children: &Children,
    crash: Option<Crash>,
    workflow: &str,
    id: &str,
    input: Value,
) -> (Option<Ended>, Arc<Process>) {
    let input = libflow::start_input(id, input);
    run_input(workflows, log, children, crash, workflow, input).await
}

/// Runs a workflow's function with `input` (a start, a resume or a signal's delivery) in a
/// process that crashes as `crash` says.
pub async fn run_input(
    workflows: &Workflows,
    log: &Arc<MemoryLogBook>,
    children: &Children,
    crash: Option<Crash>,
    workflow: &str,
    input: Bytes,
) -> (Option<Ended>, Arc<Process>) {
    let process = Process::new(log.clone(), crash);
    let invoker = Arc::new(ProcessInvoker {
        process: process.clone(),
        children: children.clone(),
        workflows: workflows.clone(),
        log: log.clone(),
    });
    let ctx = Ctx::with_invoker(process.log.clone(), BOOK, "inv".into(), invoker, 0);
    let handler = workflows
        .handler(workflow)
        .expect("the workflow is registered");
    let result = handler(ctx, input).await;
    let ended = match result {
        Ok(output) => Some(serde_json::from_slice(&output).expect("an Ended")),
        Err(e) => {
            assert!(
                process.is_dead(),
                "only a crashed process fails an instance's function: {e}"
            );
            None
        }
    };
    (ended, process)
}

/// Runs instance `id`, crashing as `crash` says, then drives it again without a crash; waits
/// until it ended and returns how, and how many appends the first run made.
pub async fn crash_and_redrive(
    workflows: &Workflows,
    log: &Arc<MemoryLogBook>,
    children: &Children,
    crash: Option<Crash>,
    workflow: &str,
    id: &str,
    input: Value,
) -> (Ended, u64) {
    let (ended, process) =
        run_in(workflows, log, children, crash, workflow, id, input.clone()).await;
    let appends = process.appends();
    if ended.is_none() {
        run_in(workflows, log, children, None, workflow, id, input).await;
    }
    (wait_ended(log, id).await, appends)
}

/// Waits until instance `id` has ended (a suspended one is driven on by its timer or a
/// signal), and returns how.
pub async fn wait_ended(log: &Arc<MemoryLogBook>, id: &str) -> Ended {
    let ctx = outside(log);
    let deadline = now_ms() + 20_000;
    loop {
        if let Some(instance) = libflow::describe(&ctx, id).await.unwrap() {
            if instance.status != libflow::Status::Running {
                return Ended {
                    status: instance.status,
                    output: instance.output,
                    error: instance.error,
                };
            }
        }
        assert!(now_ms() < deadline, "instance {id} did not end");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends signal `name` to instance `id` of `workflow` as the gateway does: an invocation that
/// delivers it and drives the instance on. Waits until the instance has started.
pub async fn send_signal(
    workflows: &Workflows,
    log: &Arc<MemoryLogBook>,
    children: &Children,
    workflow: &str,
    id: &str,
    name: &str,
    payload: Value,
) {
    let ctx = outside(log);
    let input = loop {
        if let Some(instance) = libflow::describe(&ctx, id).await.unwrap() {
            break instance.input;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let signal_id = format!("{name}-{}", now_ms());
    let delivery = libflow::signal_input(id, input, &signal_id, name, payload);
    run_input(workflows, log, children, None, workflow, delivery).await;
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A `Ctx` with no crash plan, for reading and signalling from outside.
pub fn outside(log: &Arc<MemoryLogBook>) -> Ctx {
    Ctx::new(log.clone(), BOOK, "outside".into())
}
