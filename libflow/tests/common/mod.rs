//! A world for libflow's tests: the in-memory log as the durable state, a process that can
//! crash at a chosen append (every log call and child call after it fails, as if the process
//! died), child functions whose runs are counted, and a driver that runs an instance the way
//! a gateway does (through the workflow's function handler).

#![allow(dead_code)]

use async_trait::async_trait;
use bytes::Bytes;
use libflow::{Ended, Workflows};
use logbook::memory::MemoryLogBook;
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::{Call, Ctx, FunctionError, FunctionResult, Invoker};

pub const BOOK: BookId = BookId(1);

/// Where a process dies: at its `n`th append (from 0), before or after the log takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    Before(u64),
    After(u64),
}

/// One process's view of the shared log: counts its appends and dies where told.
pub struct Process {
    log: Arc<MemoryLogBook>,
    crash: Option<Crash>,
    appends: AtomicU64,
    dead: AtomicBool,
}

impl Process {
    pub fn new(log: Arc<MemoryLogBook>, crash: Option<Crash>) -> Arc<Process> {
        Arc::new(Process {
            log,
            crash,
            appends: AtomicU64::new(0),
            dead: AtomicBool::new(false),
        })
    }

    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn alive(&self) -> Result<(), LogError> {
        if self.is_dead() {
            Err(LogError::Io("the process crashed".into()))
        } else {
            Ok(())
        }
    }

    /// Runs one append under the crash plan.
    async fn appending<T>(
        &self,
        append: impl std::future::Future<Output = Result<T, LogError>>,
    ) -> Result<T, LogError> {
        self.alive()?;
        let n = self.appends.fetch_add(1, Ordering::SeqCst);
        if self.crash == Some(Crash::Before(n)) {
            self.dead.store(true, Ordering::SeqCst);
            return Err(LogError::Io("the process crashed".into()));
        }
        let result = append.await;
        if self.crash == Some(Crash::After(n)) {
            self.dead.store(true, Ordering::SeqCst);
            return Err(LogError::Io("the process crashed".into()));
        }
        result
    }
}

#[async_trait]
impl LogBook for Process {
    async fn append(&self, book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError> {
        self.appending(self.log.append(book, tags, data)).await
    }
    async fn cond_append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        self.appending(self.log.cond_append(book, tags, data, cond))
            .await
    }
    async fn append_batch(
        &self,
        book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        self.appending(self.log.append_batch(book, records)).await
    }
    async fn read_next(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        self.alive()?;
        self.log.read_next(b, t, s).await
    }
    async fn read_prev(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        self.alive()?;
        self.log.read_prev(b, t, s).await
    }
    async fn read_next_blocking(
        &self,
        b: BookId,
        t: Tag,
        s: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        self.alive()?;
        self.log.read_next_blocking(b, t, s, timeout).await
    }
    async fn set_aux_data(&self, b: BookId, s: Seqnum, aux: Bytes) -> Result<(), LogError> {
        self.alive()?;
        self.log.set_aux_data(b, s, aux).await
    }
    async fn trim(&self, b: BookId, t: Tag, below: Seqnum) -> Result<(), LogError> {
        self.alive()?;
        self.log.trim(b, t, below).await
    }
    async fn read_range(&self, b: BookId, t: Tag, r: ReadRange) -> Result<Vec<Record>, LogError> {
        self.alive()?;
        self.log.read_range(b, t, r).await
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

/// A process's invoker: dead once its process crashed.
struct ProcessInvoker {
    process: Arc<Process>,
    children: Children,
}

#[async_trait]
impl Invoker for ProcessInvoker {
    async fn invoke(&self, call: Call<'_>) -> FunctionResult {
        if self.process.is_dead() {
            return Err(FunctionError::unavailable("the process crashed"));
        }
        let Some(key) = call.key else {
            return self.children.run(call.function, &call.input);
        };
        let key = format!("{}/{key}", call.function);
        if let Some(result) = self.children.results.lock().unwrap().get(&key) {
            return result.clone();
        }
        let result = self.children.run(call.function, &call.input);
        self.children
            .results
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(result)
            .clone()
    }

    async fn invoke_async(&self, call: Call<'_>) -> Result<String, FunctionError> {
        let id = format!("async-{}", call.key.unwrap_or("none"));
        self.invoke(call).await.map(|_| id)
    }
}

/// Runs instance `id` of `workflow` in a process (crashing as `crash` says) as a gateway
/// would: through the workflow's function. `None` when the process died first.
pub async fn run_in(
    workflows: &Workflows,
    log: &Arc<MemoryLogBook>,
    children: &Children,
    crash: Option<Crash>,
    workflow: &str,
    id: &str,
    input: Value,
) -> (Option<Ended>, Arc<Process>) {
    let process = Process::new(log.clone(), crash);
    let invoker = Arc::new(ProcessInvoker {
        process: process.clone(),
        children: children.clone(),
    });
    let ctx = Ctx::with_invoker(process.clone(), BOOK, format!("inv-{id}"), invoker, 0);
    let handler = workflows
        .handler(workflow)
        .expect("the workflow is registered");
    let result = handler(ctx, libflow::start_input(id, input)).await;
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

/// Runs instance `id`, crashing as `crash` says, then drives it again without a crash until
/// it ends; returns how it ended and how many appends the crashed run made.
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
    if let Some(ended) = ended {
        return (ended, appends);
    }
    let (ended, _) = run_in(workflows, log, children, None, workflow, id, input).await;
    (
        ended.expect("a run without a crash ends the instance"),
        appends,
    )
}

/// A `Ctx` with no crash plan, for reading and signalling from outside.
pub fn outside(log: &Arc<MemoryLogBook>) -> Ctx {
    Ctx::new(log.clone(), BOOK, "outside".into())
}
