//! Functions: the registry of in-process handlers, the `Ctx` each invocation gets (the LogBook
//! calls bound to the request's book), and the dispatcher that runs calls.
//!
//! A synchronous call without an idempotency key lives in memory only (bounded by
//! `INVOCATIONS_MAX`). Asynchronous calls and keyed ones are durable: their invocation is in the
//! log (`crate::invocations`) before they run, their result goes there too, and a gateway takes
//! over the unfinished invocations of one that died.

use bytes::Bytes;
use logbook::{BookId, LogBook, LogError, Seqnum};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::invocations::{
    key_scope, now_ms, payload_bytes_max, stable_hash, Finished, History, Journal, KeyRef,
    KeyState, Peers, KEY_RETENTION_DEFAULT,
};

/// Finished invocations kept for `GET /invocations/{id}` and idempotency keys, at most.
pub const INVOCATIONS_MAX: usize = 100_000;
/// Bytes of input and output the kept invocations may hold, at most.
pub const INVOCATION_OUTPUT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Longest a function name may be, in bytes.
pub const FUNCTION_NAME_BYTES_MAX: usize = 128;

pub use tally_sdk::{
    BoxFuture, Call, Ctx, FunctionError, FunctionResult, Handler, Invoker, CALL_DEPTH_MAX,
};

/// How a function runs: how many calls at once, how long one may take, and how often an
/// asynchronous call that fails is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionConfig {
    /// Calls running at once, at most; later ones wait their turn (`Pending`).
    pub max_concurrency: usize,
    /// A call running longer fails with "timed out".
    pub timeout: Duration,
    /// An asynchronous call (`/asyncFunction`, `ctx.invoke_async`) that fails is tried again
    /// this many times (a bad-input failure never is). Synchronous calls are tried once: the
    /// caller sees the failure and decides.
    pub retries: u32,
    /// The wait before the first retry; it doubles with every retry, up to `RETRY_BACKOFF_MAX`.
    pub backoff: Duration,
}

/// The longest wait between two tries of an asynchronous call.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Default for FunctionConfig {
    fn default() -> FunctionConfig {
        FunctionConfig {
            max_concurrency: 1024,
            timeout: Duration::from_secs(60),
            retries: 0,
            backoff: Duration::from_millis(100),
        }
    }
}

impl FunctionConfig {
    /// The wait before try `attempt + 1`, after `attempt` failed tries.
    fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(RETRY_BACKOFF_MAX)
    }
}

/// A registered function: its handler, its config, and the slots of its concurrency limit.
#[derive(Clone)]
struct Function {
    handler: Handler,
    config: FunctionConfig,
    slots: Arc<tokio::sync::Semaphore>,
    /// The worker serving it, for a function a worker registered.
    worker: Option<String>,
}

/// A handler that fails every call: the function's worker is gone.
fn gone(name: &str) -> Handler {
    let message = format!("function {name} is unavailable: its worker is not connected");
    Arc::new(move |_ctx, _input| {
        let message = message.clone();
        Box::pin(async move { Err(FunctionError::unavailable(message)) })
    })
}

/// One try of a call: the handler in its own task (a panic fails the call, not the
/// gateway), stopped at the function's timeout.
async fn run_once(target: &Function, function: &str, ctx: Ctx, input: Bytes) -> FunctionResult {
    let timeout = target.config.timeout;
    let call = tokio::spawn((target.handler)(ctx, input).in_current_span());
    let abort = call.abort_handle();
    match tokio::time::timeout(timeout, call).await {
        Ok(joined) => {
            joined.unwrap_or_else(|e| Err(FunctionError::new(format!("function panicked: {e}"))))
        }
        Err(_) => {
            abort.abort();
            Err(FunctionError::new(format!(
                "{function} timed out after {} ms",
                timeout.as_millis()
            )))
        }
    }
}

/// The functions a gateway serves: registered in-process at start-up, or by workers while it
/// runs. Clones share the same functions.
#[derive(Default, Clone)]
pub struct Registry {
    functions: Arc<std::sync::RwLock<BTreeMap<String, Function>>>,
    /// Woken when a worker registers a function: invocations left waiting for it may run now.
    registered: Arc<tokio::sync::Notify>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `handler` under `name` with the default `FunctionConfig`. Panics on a
    /// duplicate or malformed name: that is a programming error in the binary that wires the
    /// functions.
    pub fn register<F, Fut>(&mut self, name: &str, handler: F) -> &mut Registry
    where
        F: Fn(Ctx, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = FunctionResult> + Send + 'static,
    {
        self.register_with(name, FunctionConfig::default(), handler)
    }

    /// Registers `handler` under `name` with its own limits. Panics like `register`, and on a
    /// zero concurrency limit or timeout.
    pub fn register_with<F, Fut>(
        &mut self,
        name: &str,
        config: FunctionConfig,
        handler: F,
    ) -> &mut Registry
    where
        F: Fn(Ctx, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = FunctionResult> + Send + 'static,
    {
        assert!(valid_function_name(name), "invalid function name {name:?}");
        assert!(
            config.max_concurrency > 0 && !config.timeout.is_zero(),
            "function {name}: concurrency and timeout must be above zero"
        );
        let handler: Handler = Arc::new(move |ctx, input| Box::pin(handler(ctx, input)));
        let function = Function {
            handler,
            config,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrency)),
            worker: None,
        };
        assert!(
            self.write().insert(name.to_string(), function).is_none(),
            "function {name} registered twice"
        );
        self
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Function>> {
        self.functions
            .write()
            .expect("no panics under the registry lock")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Function>> {
        self.functions
            .read()
            .expect("no panics under the registry lock")
    }

    /// A worker serves `name` from now on (replacing the worker that served it before).
    /// Errs when the name is malformed or an in-process function has it.
    pub fn set_remote(
        &self,
        name: &str,
        worker: &str,
        config: FunctionConfig,
        handler: Handler,
    ) -> Result<(), String> {
        if !valid_function_name(name) {
            return Err(format!("invalid function name {name:?}"));
        }
        if config.max_concurrency == 0 || config.timeout.is_zero() {
            return Err(format!(
                "function {name}: concurrency and timeout must be above zero"
            ));
        }
        let mut functions = self.write();
        if functions.get(name).is_some_and(|f| f.worker.is_none()) {
            return Err(format!(
                "function {name} is served in-process by the gateway"
            ));
        }
        let function = Function {
            handler,
            config,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrency)),
            worker: Some(worker.to_string()),
        };
        functions.insert(name.to_string(), function);
        self.registered.notify_one();
        Ok(())
    }

    /// `worker` disconnected: its functions stay listed, and their calls fail at once as
    /// unavailable until a worker registers them again. Functions another worker took over
    /// since are left alone.
    pub fn worker_gone(&self, worker: &str, names: &[String]) {
        let mut functions = self.write();
        for name in names {
            if let Some(f) = functions.get_mut(name) {
                if f.worker.as_deref() == Some(worker) {
                    f.handler = gone(name);
                }
            }
        }
    }

    /// Changes a registered function's limits (from a config file, say). Errs on an unknown
    /// name or a zero concurrency limit or timeout.
    pub fn configure(&mut self, name: &str, config: FunctionConfig) -> Result<(), String> {
        let mut functions = self.write();
        let Some(function) = functions.get_mut(name) else {
            return Err(format!("no function named {name:?} is registered"));
        };
        if config.max_concurrency == 0 || config.timeout.is_zero() {
            return Err(format!(
                "function {name}: concurrency and timeout must be above zero"
            ));
        }
        function.config = config;
        function.slots = Arc::new(tokio::sync::Semaphore::new(config.max_concurrency));
        Ok(())
    }

    /// A registered function's limits.
    pub fn config(&self, name: &str) -> Option<FunctionConfig> {
        self.read().get(name).map(|f| f.config)
    }

    /// The worker serving a function, if a worker does.
    pub fn worker_of(&self, name: &str) -> Option<String> {
        self.read().get(name).and_then(|f| f.worker.clone())
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Option<Function> {
        self.read().get(name).cloned()
    }
}

/// Names are 1 to 128 bytes of ASCII letters, digits, `-`, `_` and `.`.
pub fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= FUNCTION_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// One invocation, as `GET /invocations/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Invocation {
    pub id: String,
    pub function: String,
    pub book: u32,
    pub status: Status,
    #[serde(skip)]
    pub output: Option<FunctionResult>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Tries so far (more than one when an asynchronous call was retried).
    pub attempts: u32,
    /// In the log: it survives this gateway, and any gateway can show it.
    pub durable: bool,
    /// What it was called with (empty for a call forwarded to a peer, which keeps it).
    #[serde(skip)]
    pub input: Bytes,
    /// The seqnum of its `Accepted` record, for a durable one: a reader at another gateway
    /// passes it as `X-Tally-Seen` to be sure to find it.
    #[serde(skip)]
    pub accepted_at: Option<Seqnum>,
}

impl Invocation {
    fn new(id: String, function: &str, book: BookId, durable: bool, input: Bytes) -> Invocation {
        Invocation {
            id,
            function: function.to_string(),
            book: book.0,
            status: Status::Pending,
            output: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            attempts: 0,
            durable,
            input,
            accepted_at: None,
        }
    }

    /// An invocation as its log records tell it: pending until a `Finished` record says more.
    pub fn from_history(h: &History) -> Invocation {
        let mut inv = Invocation {
            created_at_ms: h.created_at_ms,
            accepted_at: Some(h.accepted_at),
            ..Invocation::new(
                h.id.clone(),
                &h.function,
                BookId(h.book),
                true,
                h.input.clone(),
            )
        };
        if let Some(f) = &h.finished {
            inv.status = if f.ok {
                Status::Succeeded
            } else {
                Status::Failed
            };
            inv.attempts = f.attempts;
            inv.started_at_ms = f.started_at_ms;
            inv.finished_at_ms = Some(f.finished_at_ms);
            inv.output = Some(if f.ok {
                Ok(f.payload.clone())
            } else {
                Err(FunctionError {
                    message: String::from_utf8_lossy(&f.payload).into_owned(),
                    bad_input: f.bad_input,
                    unavailable: f.unavailable,
                })
            });
        }
        inv
    }
}

#[derive(Default)]
struct Table {
    invocations: HashMap<String, watch::Sender<Invocation>>,
    /// Idempotency key scope to (invocation id, hash of the input it was called with).
    by_key: HashMap<String, (String, u64)>,
    /// The idempotency key scope each keyed invocation was started with.
    key_of: HashMap<String, String>,
    /// Ids in creation order, for evicting the oldest finished invocations.
    order: VecDeque<String>,
    /// Input and output bytes the kept invocations hold (`held_len`).
    held_bytes: usize,
    next_id: u64,
}

fn output_len(inv: &Invocation) -> usize {
    match &inv.output {
        Some(Ok(output)) => output.len(),
        Some(Err(e)) => e.message.len(),
        None => 0,
    }
}

/// Bytes an invocation holds in the table: its input and output.
fn held_len(inv: &Invocation) -> usize {
    inv.input.len() + output_len(inv)
}

/// Puts `inv` in place of what `tx` holds, keeping `held` (the table's bytes) in step.
fn replace(held: &mut usize, tx: &watch::Sender<Invocation>, inv: Invocation) {
    let bytes = held_len(&inv);
    let was = held_len(&tx.send_replace(inv));
    *held = *held - was.min(*held) + bytes;
}

/// Why an invocation could not start.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("no function named {0:?}")]
    UnknownFunction(String),
    #[error("idempotency key {0:?} was used with another input")]
    KeyReused(String),
    /// The log refused the invocation's record (too large, or unavailable).
    #[error("{0}")]
    Log(#[from] LogError),
}

#[async_trait::async_trait]
impl Invoker for Dispatcher {
    async fn invoke(&self, call: Call<'_>) -> FunctionResult {
        let function = call.function;
        let request = Request {
            depth: call.depth,
            idempotency_key: call.key,
            ..Request::new(function, call.book, call.input)
        };
        let rx = self
            .call(request)
            .await
            .map_err(|e| FunctionError::new(e.to_string()))?;
        match Dispatcher::wait(rx).await.output {
            Some(result) => result,
            // Not a failure of the function: its result is not known here (yet).
            None => Err(FunctionError::unavailable(format!(
                "{function} did not finish here"
            ))),
        }
    }

    async fn invoke_async(&self, call: Call<'_>) -> Result<String, FunctionError> {
        let request = Request {
            depth: call.depth,
            idempotency_key: call.key,
            not_before_ms: call.not_before_ms,
            asynchronous: true,
            ..Request::new(call.function, call.book, call.input)
        };
        let rx = self
            .call(request)
            .await
            .map_err(|e| FunctionError::new(e.to_string()))?;
        let id = rx.borrow().id.clone();
        Ok(id)
    }
}

/// A call as the dispatcher takes it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub function: &'a str,
    pub book: BookId,
    pub input: Bytes,
    pub idempotency_key: Option<&'a str>,
    /// How many calls this one is nested in.
    pub depth: u32,
    /// In the log before it runs, retried on failure, answered at once (`/asyncFunction`,
    /// `invoke_async`).
    pub asynchronous: bool,
    /// Sent to a peer gateway when this one does not serve the function (a forwarded call
    /// never is again).
    pub forwardable: bool,
    /// An asynchronous call starts no earlier than this (ms since the Unix epoch); it waits
    /// as `pending`, in the log, holding no slot of its function.
    pub not_before_ms: Option<u64>,
}

impl<'a> Request<'a> {
    /// A call from outside (depth 0, forwardable).
    pub fn new(function: &'a str, book: BookId, input: Bytes) -> Request<'a> {
        Request {
            function,
            book,
            input,
            idempotency_key: None,
            depth: 0,
            asynchronous: false,
            forwardable: true,
            not_before_ms: None,
        }
    }

    fn mode(&self) -> Mode {
        Mode {
            durable: self.asynchronous || self.idempotency_key.is_some(),
            retried: self.asynchronous,
        }
    }
}

/// How a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Its invocation goes in the log before it runs (asynchronous and keyed calls).
    durable: bool,
    /// A failure is tried again as the function's config says (asynchronous calls).
    retried: bool,
}

/// How often a gateway looks for invocations of dead gateways when it has no reason to
/// (no peer changed, nothing left over); and when it has (some were left or just claimed).
const RECOVERY_IDLE: Duration = Duration::from_secs(30);
const RECOVERY_DUE: Duration = Duration::from_secs(1);
/// Tries at writing an invocation's result to the log before giving up on it (the
/// invocation then runs again if this gateway dies).
const FINISH_TRIES: u32 = 8;

/// Runs functions and keeps their invocations: in memory for this gateway's calls, in the log
/// for durable ones.
pub struct Dispatcher {
    registry: Registry,
    log: Arc<dyn LogBook>,
    metrics: Arc<crate::metrics::Metrics>,
    journal: Journal,
    table: Mutex<Table>,
    /// Calls under one key take turns between looking the key up and taking it.
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where calls of functions this gateway does not serve go, if anywhere.
    forwarder: std::sync::OnceLock<crate::forward::Forwarder>,
    node_tag: u64,
    /// This dispatcher, for the calls it starts (their contexts call back into it).
    me: std::sync::Weak<Dispatcher>,
}

impl Dispatcher {
    /// A dispatcher of `registry`'s functions over `log`, alone (no peers).
    pub fn new(
        registry: Registry,
        log: Arc<dyn LogBook>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Dispatcher> {
        let name = format!("solo.{:016x}", now_ms());
        let (_, peers) = watch::channel(Peers::alone(name));
        Dispatcher::with_peers(registry, log, metrics, peers, KEY_RETENTION_DEFAULT)
    }

    /// A dispatcher among `peers`: it takes over the durable invocations of gateways that
    /// leave them. Idempotency keys name their invocation for `key_retention`.
    pub fn with_peers(
        registry: Registry,
        log: Arc<dyn LogBook>,
        metrics: Arc<crate::metrics::Metrics>,
        peers: watch::Receiver<Peers>,
        key_retention: Duration,
    ) -> Arc<Dispatcher> {
        // Ids differ across restarts of the same node so an old id never names a new call.
        let node_tag = now_ms() & 0xffff_ffff;
        let mut journal = Journal::new(log.clone(), peers);
        journal.key_retention = key_retention;
        let dispatcher = Arc::new_cyclic(|me| Dispatcher {
            registry,
            log,
            metrics,
            journal,
            table: Mutex::new(Table::default()),
            key_locks: Mutex::new(HashMap::new()),
            forwarder: std::sync::OnceLock::new(),
            node_tag,
            me: me.clone(),
        });
        tokio::spawn(recover(Arc::downgrade(&dispatcher)));
        tokio::spawn(collect(Arc::downgrade(&dispatcher)));
        dispatcher
    }

    fn me(&self) -> Arc<Dispatcher> {
        self.me.upgrade().expect("a dispatcher in use is alive")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The gateways this one knows alive.
    pub fn peers(&self) -> watch::Receiver<Peers> {
        self.journal.peers()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .expect("no panics while holding the invocation table")
    }

    /// Starts a synchronous call (in the log first when it has an idempotency key, else only
    /// in memory), or finds the one its key already started; returns a receiver that sees its
    /// status change.
    pub async fn start(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<watch::Receiver<Invocation>, InvokeError> {
        self.call(Request {
            idempotency_key,
            ..Request::new(function, book, input)
        })
        .await
    }

    /// Starts an asynchronous call: in the log before this returns, retried on failure as the
    /// function's config says, and run by another gateway if this one dies.
    pub async fn start_async(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<watch::Receiver<Invocation>, InvokeError> {
        self.call(Request {
            idempotency_key,
            asynchronous: true,
            ..Request::new(function, book, input)
        })
        .await
    }

    /// Starts a call here, or at a peer that serves the function when this gateway does not.
    pub async fn call(
        &self,
        request: Request<'_>,
    ) -> Result<watch::Receiver<Invocation>, InvokeError> {
        let Some(target) = self.registry.get(request.function) else {
            return self.forward(&request).await;
        };
        let mode = request.mode();
        let Request {
            function,
            book,
            input,
            idempotency_key,
            depth,
            not_before_ms: request_not_before,
            ..
        } = request;
        if !mode.durable {
            let id = {
                let mut table = self.table();
                table.next_id += 1;
                format!("s{:08x}{:08x}", self.node_tag, table.next_id)
            };
            let inv = Invocation::new(id.clone(), function, book, false, input.clone());
            let rx = self.insert(inv, None);
            self.spawn_run(target, id, book, input, depth, mode.retried, None, None);
            return Ok(rx);
        }
        let scope = idempotency_key.map(|k| key_scope(function, book, k));
        let max = payload_bytes_max(function, scope.as_deref());
        if input.len() > max {
            return Err(LogError::TooLarge {
                what: "an invocation's input",
                bytes: input.len(),
                max,
            }
            .into());
        }
        let hash = stable_hash(&input);
        let key_lock = scope.as_ref().map(|s| self.key_lock(s));
        let _turn = match &key_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let reused = || InvokeError::KeyReused(idempotency_key.unwrap_or_default().to_string());
        // The key's stream is this long at least: a collection may have trimmed all of it.
        let mut generations = 0;
        loop {
            let mut key = None;
            if let Some(scope) = &scope {
                if let Some((rx, known_hash)) = self.local_key(scope) {
                    return if known_hash == hash {
                        Ok(rx)
                    } else {
                        Err(reused())
                    };
                }
                match self.journal.key_state(scope).await? {
                    KeyState::Taken(history) if history.input_hash != hash => return Err(reused()),
                    KeyState::Taken(history) => return Ok(self.follow(&history, scope)),
                    KeyState::Free(generation) => {
                        key = Some(KeyRef {
                            scope: scope.clone(),
                            generation: generation.max(generations),
                        })
                    }
                }
            }
            let id = self.journal.next_id().await?;
            let accepted = self
                .journal
                .accept(
                    &id,
                    function,
                    book,
                    &input,
                    key,
                    mode.retried,
                    depth,
                    request_not_before,
                )
                .await;
            match accepted {
                Ok(accepted) => {
                    let inv = Invocation {
                        accepted_at: Some(accepted.seqnum),
                        ..Invocation::new(id.clone(), function, book, true, input.clone())
                    };
                    let rx = self.insert(inv, scope.as_ref().map(|s| (s.clone(), hash)));
                    self.spawn_run(
                        target,
                        id,
                        book,
                        input,
                        depth,
                        mode.retried,
                        Some(1),
                        request_not_before,
                    );
                    return Ok(rx);
                }
                // Another gateway took the key's generation first, or its stream was
                // collected: look again, past what the stream holds.
                Err(LogError::CondFailed { stream_len, .. }) if scope.is_some() => {
                    generations = generations.max(stream_len);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Has a peer that serves `request`'s function run it. The invocation is the peer's: the
    /// receiver shows its answer (a finished call, or an accepted asynchronous one), and this
    /// gateway keeps nothing of it.
    async fn forward(
        &self,
        request: &Request<'_>,
    ) -> Result<watch::Receiver<Invocation>, InvokeError> {
        let unknown = || InvokeError::UnknownFunction(request.function.into());
        let Some(forwarder) = self.forwarder.get().filter(|_| request.forwardable) else {
            return Err(unknown());
        };
        let call = crate::forward::Call {
            function: request.function,
            book: request.book,
            input: request.input.clone(),
            key: request.idempotency_key,
            depth: request.depth,
            asynchronous: request.asynchronous,
        };
        let answer = match forwarder.call(call).await {
            None => return Err(unknown()),
            Some(Err(e)) => return Err(LogError::Unavailable(e).into()),
            Some(Ok(answer)) => answer,
        };
        let mode = request.mode();
        // The peer keeps the input.
        let mut inv = Invocation::new(
            answer.id.clone().unwrap_or_default(),
            request.function,
            request.book,
            mode.durable,
            Bytes::new(),
        );
        inv.accepted_at = answer.seen;
        let failed = |message: &str| {
            LogError::Unavailable(format!(
                "{} at a peer gateway: {} {message}",
                request.function, answer.status
            ))
        };
        let output = match (answer.status, answer.error()) {
            (202, _) if request.asynchronous => None,
            (200, _) => Some(Ok(answer.body.clone())),
            (422, _) => {
                let key = request.idempotency_key.unwrap_or_default();
                return Err(InvokeError::KeyReused(key.to_string()));
            }
            (_, Some((code, message))) => match code.as_str() {
                "bad_input" => Some(Err(FunctionError::bad_input(message))),
                "function_unavailable" => Some(Err(FunctionError::unavailable(message))),
                "function_failed" => Some(Err(FunctionError::new(message))),
                _ => return Err(failed(&message).into()),
            },
            _ => return Err(failed("without an error").into()),
        };
        if let Some(output) = output {
            inv.status = if output.is_ok() {
                Status::Succeeded
            } else {
                Status::Failed
            };
            inv.finished_at_ms = Some(now_ms());
            inv.output = Some(output);
        }
        let (_peer_keeps_it, rx) = watch::channel(inv);
        Ok(rx)
    }

    /// An id no other invocation, here or at any gateway, has or will have (for things that
    /// need a unique name, such as a signal sent without an idempotency key).
    pub async fn fresh_id(&self) -> Result<String, LogError> {
        self.journal.next_id().await
    }

    /// Calls of functions this gateway does not serve go to its peers through `forwarder`.
    pub fn set_forwarder(&self, forwarder: crate::forward::Forwarder) {
        if self.forwarder.set(forwarder).is_err() {
            tracing::warn!("a dispatcher's forwarder is set once; the second is ignored");
        }
    }

    /// The lock calls under key `scope` take turns on (dropped from the map once unused).
    fn key_lock(&self, scope: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .key_locks
            .lock()
            .expect("no panics under the key locks");
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(scope.to_string()).or_default().clone()
    }

    /// The invocation this gateway knows under key `scope`, with its input's hash, unless it
    /// failed or outlived the key's retention.
    fn local_key(&self, scope: &str) -> Option<(watch::Receiver<Invocation>, u64)> {
        let table = self.table();
        let (id, hash) = table.by_key.get(scope)?;
        let tx = table.invocations.get(id)?;
        let inv = tx.borrow();
        let retention = self.journal.key_retention.as_millis() as u64;
        if inv.status == Status::Failed || inv.created_at_ms + retention < now_ms() {
            return None;
        }
        drop(inv);
        Some((tx.subscribe(), *hash))
    }

    /// Keeps `inv` in the table (under its key scope and input hash, if keyed).
    fn insert(&self, inv: Invocation, key: Option<(String, u64)>) -> watch::Receiver<Invocation> {
        let id = inv.id.clone();
        let mut table = self.table();
        // Kept already (followed, then claimed from a dead gateway): the same channel, so
        // whoever waits on it sees how it ends.
        let table = &mut *table;
        if let Some(tx) = table.invocations.get(&id) {
            replace(&mut table.held_bytes, tx, inv);
            let rx = tx.subscribe();
            if let Some((scope, hash)) = key {
                table.by_key.insert(scope.clone(), (id.clone(), hash));
                table.key_of.insert(id, scope);
            }
            return rx;
        }
        table.held_bytes += held_len(&inv);
        let (tx, rx) = watch::channel(inv);
        table.invocations.insert(id.clone(), tx);
        if let Some((scope, hash)) = key {
            if let Some((replaced, _)) = table.by_key.insert(scope.clone(), (id.clone(), hash)) {
                table.key_of.remove(&replaced);
            }
            table.key_of.insert(id.clone(), scope);
        }
        table.order.push_back(id);
        self.evict(table);
        rx
    }

    /// A local copy of another gateway's invocation (or one from before a restart), finished
    /// when its `Finished` record comes.
    fn follow(&self, history: &History, scope: &str) -> watch::Receiver<Invocation> {
        if let Some(tx) = self.table().invocations.get(&history.id) {
            return tx.subscribe();
        }
        let inv = Invocation::from_history(history);
        let finished = inv.finished_at_ms.is_some();
        let rx = self.insert(inv, Some((scope.to_string(), history.input_hash)));
        if !finished {
            self.spawn_follow(history.id.clone());
        }
        rx
    }

    /// Fills in invocation `id` from the log once another gateway finishes it.
    fn spawn_follow(&self, id: String) {
        let dispatcher = self.me();
        tokio::spawn(async move {
            loop {
                match dispatcher.journal.wait_finished(&id).await {
                    Ok(history) => {
                        dispatcher.finished(&id, Invocation::from_history(&history));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(id, error = %e, "following an invocation in the log");
                        tokio::time::sleep(RECOVERY_DUE).await;
                    }
                }
            }
        });
    }

    /// Runs invocation `id` (already in the table) to its end, retried if `retried`; a
    /// durable one's result goes to the log at `position` of its stream before anyone sees it.
    #[allow(clippy::too_many_arguments)]
    fn spawn_run(
        &self,
        target: Function,
        id: String,
        book: BookId,
        input: Bytes,
        depth: u32,
        retried: bool,
        position: Option<u64>,
        not_before_ms: Option<u64>,
    ) {
        let ctx = Ctx::with_invoker(self.log.clone(), book, id.clone(), self.me(), depth);
        let dispatcher = self.me();
        let function = self.get(&id).map(|inv| inv.function).unwrap_or_default();
        // A child of what called it: an HTTP request, or the function that made the call.
        let span = tracing::info_span!(
            target: "tally::trace",
            parent: tracing::Span::current(),
            "invoke",
            otel.name = format!("invoke {function}"),
            function = %function,
            invocation = %id,
            book = book.0,
        );
        let run = async move {
            // A timer: nothing of the call runs or holds a slot until it is due.
            if let Some(due) = not_before_ms {
                let now = now_ms();
                if due > now {
                    tokio::time::sleep(Duration::from_millis(due - now)).await;
                }
            }
            let started = std::time::Instant::now();
            let (queued, running) = dispatcher.metrics.function_gauges(&function);
            // Wait for a slot under the function's concurrency limit (still `Pending`).
            queued.inc();
            let slot = target.slots.clone().acquire_owned().await;
            queued.dec();
            let _slot = slot.expect("a function's slots are never closed");
            running.inc();
            let started_at_ms = now_ms();
            dispatcher.update(&id, |inv| {
                inv.status = Status::Running;
                inv.started_at_ms = Some(started_at_ms);
            });
            let config = target.config;
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                dispatcher.update(&id, |inv| inv.attempts = attempt);
                // A retry runs the function as the registry has it now: a worker that died
                // and registered again serves it anew.
                let now = match attempt {
                    1 => None,
                    _ => dispatcher.registry.get(&function),
                };
                let runs = now.as_ref().unwrap_or(&target);
                let result = run_once(runs, &function, ctx.clone(), input.clone()).await;
                match result {
                    Err(e) if retried && !e.bad_input && attempt <= config.retries => {
                        tokio::time::sleep(config.backoff_after(attempt)).await;
                    }
                    result => break result,
                }
            };
            running.dec();
            dispatcher
                .metrics
                .observe_invocation(&function, result.is_ok(), started.elapsed());
            let mut done = Invocation {
                status: if result.is_ok() {
                    Status::Succeeded
                } else {
                    Status::Failed
                },
                attempts: attempt,
                started_at_ms: Some(started_at_ms),
                finished_at_ms: Some(now_ms()),
                output: Some(result),
                ..dispatcher.get(&id).unwrap_or_else(|| {
                    Invocation::new(
                        id.clone(),
                        &function,
                        book,
                        position.is_some(),
                        Bytes::new(),
                    )
                })
            };
            if let Some(position) = position {
                match dispatcher.log_result(&id, position, &mut done).await {
                    Some(true) => {}
                    // Another gateway claimed it meanwhile: its result is the one.
                    Some(false) => return dispatcher.spawn_follow(id),
                    // The log would not take it: this gateway's answer stands, but the
                    // invocation runs again if this gateway dies.
                    None => {}
                }
            }
            dispatcher.finished(&id, done);
        };
        tokio::spawn(run.instrument(span));
    }

    /// Writes `done`'s result at `position` of invocation `id`'s stream. An output too large
    /// for a record becomes a failure saying so. `Some(false)`: another gateway claimed the
    /// invocation; `None`: the log kept refusing.
    async fn log_result(&self, id: &str, position: u64, done: &mut Invocation) -> Option<bool> {
        let owner = self.journal.owner().await.ok()?;
        let max = payload_bytes_max(&done.function, None);
        if output_len(done) > max {
            let message = format!(
                "{} returned {} bytes, more than the {max} a durable invocation keeps",
                done.function,
                output_len(done)
            );
            done.status = Status::Failed;
            done.output = Some(Err(FunctionError::new(message)));
        }
        let (ok, bad_input, unavailable, payload) = match done.output.as_ref()? {
            Ok(output) => (true, false, false, output.clone()),
            Err(e) => (
                false,
                e.bad_input,
                e.unavailable,
                Bytes::from(e.message.clone()),
            ),
        };
        let finished = Finished {
            owner,
            ok,
            bad_input,
            unavailable,
            attempts: done.attempts,
            started_at_ms: done.started_at_ms,
            finished_at_ms: done.finished_at_ms.unwrap_or_else(now_ms),
            payload,
        };
        let mut backoff = Duration::from_millis(50);
        for _ in 0..FINISH_TRIES {
            match self.journal.finish(id, position, &finished).await {
                Ok(won) => return Some(won),
                Err(e) => {
                    tracing::warn!(id, error = %e, "writing an invocation's result");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
        None
    }

    /// Invocation `id` ended as `done` says.
    fn finished(&self, id: &str, done: Invocation) {
        let mut table = self.table();
        let table = &mut *table;
        let Some(tx) = table.invocations.get(id) else {
            return;
        };
        replace(&mut table.held_bytes, tx, done);
        self.evict(table);
    }

    /// Claims and runs the durable invocations of dead gateways this gateway can run.
    /// Returns how many it claimed, and whether another pass is due (some were found).
    async fn recover_once(&self) -> Result<(usize, bool), LogError> {
        let registry = self.registry.clone();
        let (orphans, due) = self
            .journal
            .orphans(|function| registry.get(function).is_some())
            .await?;
        let mut claimed = 0;
        for history in orphans {
            let Some(target) = self.registry.get(&history.function) else {
                continue;
            };
            let Some(position) = self.journal.claim(&history).await? else {
                continue;
            };
            tracing::info!(id = history.id, function = history.function, "re-driving");
            self.metrics.redriven.inc();
            claimed += 1;
            let scope = history
                .key
                .as_ref()
                .map(|k| (k.scope.clone(), history.input_hash));
            let inv = Invocation {
                created_at_ms: history.created_at_ms,
                accepted_at: Some(history.accepted_at),
                ..Invocation::new(
                    history.id.clone(),
                    &history.function,
                    BookId(history.book),
                    true,
                    history.input.clone(),
                )
            };
            self.insert(inv, scope);
            self.spawn_run(
                target,
                history.id.clone(),
                BookId(history.book),
                history.input.clone(),
                history.depth,
                history.retried,
                Some(position),
                history.not_before_ms,
            );
        }
        Ok((claimed, due))
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Invocation)) {
        if let Some(tx) = self.table().invocations.get(id) {
            tx.send_modify(change);
        }
    }

    /// Drops the oldest finished invocations while the table is over its count or byte
    /// limit. Running ones stay, wherever they are in the order. (Durable ones stay in the
    /// log.)
    fn evict(&self, table: &mut Table) {
        let mut running = Vec::new();
        while table.order.len() > INVOCATIONS_MAX || table.held_bytes > INVOCATION_OUTPUT_BYTES_MAX
        {
            let Some(oldest) = table.order.pop_front() else {
                break;
            };
            let Some(tx) = table.invocations.get(&oldest) else {
                continue;
            };
            if tx.borrow().finished_at_ms.is_none() {
                running.push(oldest);
                continue;
            }
            table.held_bytes -= held_len(&tx.borrow()).min(table.held_bytes);
            table.invocations.remove(&oldest);
            if let Some(key) = table.key_of.remove(&oldest) {
                if table.by_key.get(&key).is_some_and(|(id, _)| *id == oldest) {
                    table.by_key.remove(&key);
                }
            }
        }
        for id in running.into_iter().rev() {
            table.order.push_front(id);
        }
    }

    /// The invocations this gateway keeps in memory, newest first: at most `limit` of those
    /// of `function` and in `status` (any, for `None`), created before id `before` (the
    /// last id of the previous page).
    pub fn recent(
        &self,
        function: Option<&str>,
        status: Option<Status>,
        before: Option<&str>,
        limit: usize,
    ) -> Vec<Invocation> {
        let table = self.table();
        let newest = table.order.iter().rev();
        let start = match before {
            // One no longer kept: nothing older is either.
            Some(before) => match table.order.iter().position(|id| id == before) {
                Some(at) => table.order.len() - at,
                None => table.order.len(),
            },
            None => 0,
        };
        newest
            .skip(start)
            .filter_map(|id| table.invocations.get(id).map(|tx| tx.borrow().clone()))
            .filter(|inv| function.is_none_or(|f| inv.function == f))
            .filter(|inv| status.is_none_or(|s| inv.status == s))
            .take(limit)
            .collect()
    }

    /// The invocation with this id, if this gateway still keeps it in memory.
    pub fn get(&self, id: &str) -> Option<Invocation> {
        self.table()
            .invocations
            .get(id)
            .map(|tx| tx.borrow().clone())
    }

    /// The invocation with this id: from memory, else from the log (a durable one this
    /// gateway did not run, or ran before a restart).
    pub async fn find(&self, id: &str) -> Result<Option<Invocation>, LogError> {
        if let Some(inv) = self.get(id) {
            return Ok(Some(inv));
        }
        Ok(self
            .journal
            .history(id)
            .await?
            .map(|h| Invocation::from_history(&h)))
    }

    /// Waits until the invocation finishes and returns it.
    pub async fn wait(mut rx: watch::Receiver<Invocation>) -> Invocation {
        if let Ok(inv) = rx.wait_for(|inv| inv.finished_at_ms.is_some()).await {
            return inv.clone();
        }
        // The sender is gone only if the invocation was evicted once finished.
        let last = rx.borrow().clone();
        last
    }
}

/// Trims the durable invocations that ended longer than the key retention ago, every half
/// retention (1 s to a minute), until the dispatcher is dropped.
async fn collect(dispatcher: std::sync::Weak<Dispatcher>) {
    loop {
        let Some(every) = dispatcher.upgrade().map(|d| {
            (d.journal.key_retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
        }) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(d) = dispatcher.upgrade() else {
            return;
        };
        match d.journal.collect().await {
            Ok(done) => {
                d.metrics.invocations_collected.inc_by(done.invocations);
            }
            Err(e) => tracing::warn!(error = %e, "collecting ended invocations"),
        }
    }
}

/// The recovery loop of a dispatcher: a pass at start, on every change of peers or worker
/// registration, and now and then: soon after a pass that claimed something (to retire what it finished), less and less
/// often while what is left is nothing this gateway can run. It ends with the dispatcher.
async fn recover(dispatcher: std::sync::Weak<Dispatcher>) {
    let Some((mut peers, registered)) = dispatcher
        .upgrade()
        .map(|d| (d.journal.peers(), d.registry.registered.clone()))
    else {
        return;
    };
    let mut wait = RECOVERY_DUE;
    loop {
        let Some(d) = dispatcher.upgrade() else {
            return;
        };
        wait = match d.recover_once().await {
            Ok((0, true)) => (wait * 2).min(RECOVERY_IDLE),
            Ok((_, true)) => RECOVERY_DUE,
            Ok((_, false)) => RECOVERY_IDLE,
            Err(e) => {
                tracing::warn!(error = %e, "looking for invocations of dead gateways");
                RECOVERY_DUE
            }
        };
        drop(d);
        tokio::select! {
            changed = peers.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(wait).await;
                }
                wait = RECOVERY_DUE;
            }
            _ = registered.notified() => wait = RECOVERY_DUE,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn dispatcher(registry: Registry) -> Arc<Dispatcher> {
        let log: Arc<dyn LogBook> = Arc::new(logbook::memory::MemoryLogBook::new());
        Dispatcher::new(registry, log, crate::metrics::Metrics::new())
    }

    #[tokio::test]
    async fn a_function_calls_one_function_and_starts_another() {
        let mut registry = Registry::new();
        crate::examples::register(&mut registry, &libstore::Stores::new());
        let d = dispatcher(registry);
        let input = Bytes::from_static(br#"{"name":"ana"}"#);
        let done =
            Dispatcher::wait(d.start("welcome", BookId(3), input, None).await.unwrap()).await;
        assert_eq!(done.status, Status::Succeeded, "{:?}", done.output);
        let output: serde_json::Value =
            serde_json::from_slice(done.output.unwrap().as_ref().unwrap()).unwrap();
        assert_eq!(output["greeting"], "hello, ana");
        // The background call runs in the caller's book and signs the guestbook.
        let signing = output["signing"].as_str().unwrap().to_string();
        let receiver = d.table().invocations[&signing].subscribe();
        let signed = Dispatcher::wait(receiver).await;
        assert_eq!(signed.status, Status::Succeeded, "{:?}", signed.output);
        assert_eq!(signed.book, 3);
        let list = br#"{"action":"list","room":"welcome"}"#;
        let listed = Dispatcher::wait(
            d.start("guestbook", BookId(3), Bytes::from_static(list), None)
                .await
                .unwrap(),
        )
        .await;
        let entries: serde_json::Value =
            serde_json::from_slice(listed.output.unwrap().as_ref().unwrap()).unwrap();
        assert_eq!(entries["entries"][0]["message"], "hello, ana");
    }

    #[tokio::test]
    async fn nested_calls_fail_cleanly_past_the_depth_limit_or_an_unknown_callee() {
        let mut registry = Registry::new();
        registry.register("forever", |ctx: Ctx, input: Bytes| async move {
            ctx.invoke("forever", input).await
        });
        registry.register("lost", |ctx: Ctx, input: Bytes| async move {
            ctx.invoke("nobody", input).await
        });
        let d = dispatcher(registry);
        let deep = Dispatcher::wait(
            d.start("forever", BookId(0), Bytes::new(), None)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(deep.status, Status::Failed);
        let message = deep.output.unwrap().unwrap_err().message;
        assert!(message.contains("deeper than 32"), "{message}");
        let lost = Dispatcher::wait(
            d.start("lost", BookId(0), Bytes::new(), None)
                .await
                .unwrap(),
        )
        .await;
        let message = lost.output.unwrap().unwrap_err().message;
        assert!(
            message.contains("no function named \"nobody\""),
            "{message}"
        );
    }

    #[tokio::test]
    async fn calls_past_the_concurrency_limit_wait_and_slow_ones_time_out() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut registry = Registry::new();
        let waiting = gate.clone();
        let two = FunctionConfig {
            max_concurrency: 2,
            ..FunctionConfig::default()
        };
        registry.register_with("gated", two, move |_ctx, input| {
            let gate = waiting.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok(input)
            }
        });
        let brief = FunctionConfig {
            timeout: Duration::from_millis(50),
            ..FunctionConfig::default()
        };
        registry.register_with("sleepy", brief, |_ctx, _input| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Bytes::new())
        });
        let d = dispatcher(registry);
        let mut calls = Vec::new();
        for _ in 0..3 {
            calls.push(
                d.start("gated", BookId(0), Bytes::new(), None)
                    .await
                    .unwrap(),
            );
        }
        let statuses = || calls.iter().map(|c| c.borrow().status).collect::<Vec<_>>();
        for _ in 0..100 {
            if statuses().iter().filter(|s| **s == Status::Running).count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut now = statuses();
        now.sort_by_key(|s| *s != Status::Running);
        assert_eq!(now, [Status::Running, Status::Running, Status::Pending]);
        let (queued, running) = d.metrics.function_gauges("gated");
        assert_eq!((queued.get(), running.get()), (1, 2));
        gate.add_permits(3);
        for call in calls {
            assert_eq!(Dispatcher::wait(call).await.status, Status::Succeeded);
        }
        assert_eq!((queued.get(), running.get()), (0, 0));

        let slow = Dispatcher::wait(
            d.start("sleepy", BookId(0), Bytes::new(), None)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(slow.status, Status::Failed);
        assert_eq!(
            slow.output.unwrap().unwrap_err().message,
            "sleepy timed out after 50 ms"
        );
    }

    #[tokio::test]
    async fn asynchronous_calls_are_retried_with_backoff_up_to_their_limit() {
        // Fails its first two tries; a bad input never succeeds.
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let config = |retries| FunctionConfig {
            retries,
            backoff: Duration::from_millis(1),
            ..FunctionConfig::default()
        };
        let mut registry = Registry::new();
        for (name, retries) in [("patient", 3), ("impatient", 1)] {
            let counted = counted.clone();
            registry.register_with(name, config(retries), move |_ctx, input: Bytes| {
                let attempt = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if input.as_ref() == b"bad" {
                        return Err(FunctionError::bad_input("bad"));
                    }
                    match attempt % 3 {
                        2 => Ok(input),
                        _ => Err(FunctionError::new("not yet")),
                    }
                }
            });
        }
        let d = dispatcher(registry);
        let run = |name, input: &'static [u8], asynchronous: bool| {
            let d = d.clone();
            async move {
                let input = Bytes::from_static(input);
                if asynchronous {
                    d.start_async(name, BookId(0), input, None).await.unwrap()
                } else {
                    d.start(name, BookId(0), input, None).await.unwrap()
                }
            }
        };
        let done = Dispatcher::wait(run("patient", b"x", true).await).await;
        assert_eq!((done.status, done.attempts), (Status::Succeeded, 3));
        tries.store(0, Ordering::SeqCst);
        let done = Dispatcher::wait(run("impatient", b"x", true).await).await;
        assert_eq!(
            (done.status, done.attempts),
            (Status::Failed, 2),
            "one retry"
        );
        tries.store(0, Ordering::SeqCst);
        let done = Dispatcher::wait(run("patient", b"x", false).await).await;
        assert_eq!(
            (done.status, done.attempts),
            (Status::Failed, 1),
            "sync: tried once"
        );
        let done = Dispatcher::wait(run("patient", b"bad", true).await).await;
        assert_eq!(
            (done.status, done.attempts),
            (Status::Failed, 1),
            "bad input: not retried"
        );
        let backoff = config(5);
        assert_eq!(backoff.backoff_after(1), Duration::from_millis(1));
        assert_eq!(backoff.backoff_after(4), Duration::from_millis(8));
        assert_eq!(backoff.backoff_after(40), RETRY_BACKOFF_MAX);
    }

    #[tokio::test]
    async fn a_failed_keyed_call_runs_again_when_retried() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut registry = Registry::new();
        let counter = calls.clone();
        registry.register("flaky", move |_ctx, input| {
            let attempt = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match attempt {
                    0 => Err(FunctionError::new("first attempt fails")),
                    _ => Ok(input),
                }
            }
        });
        let d = dispatcher(registry);
        let call = || d.start("flaky", BookId(0), Bytes::from_static(b"x"), Some("k"));
        let first = Dispatcher::wait(call().await.unwrap()).await;
        assert_eq!(first.status, Status::Failed);
        let second = Dispatcher::wait(call().await.unwrap()).await;
        assert_eq!(second.status, Status::Succeeded);
        let third = Dispatcher::wait(call().await.unwrap()).await;
        assert_eq!(third.id, second.id, "a success is answered again");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_key_reused_with_another_input_is_refused() {
        let mut registry = Registry::new();
        registry.register("echo", |_ctx, input| async move { Ok(input) });
        let d = dispatcher(registry);
        let first = d
            .start("echo", BookId(0), Bytes::from_static(b"a"), Some("k"))
            .await
            .unwrap();
        Dispatcher::wait(first).await;
        let other = d
            .start("echo", BookId(0), Bytes::from_static(b"b"), Some("k"))
            .await;
        assert!(matches!(other, Err(InvokeError::KeyReused(_))));
        let other_book = d
            .start("echo", BookId(1), Bytes::from_static(b"b"), Some("k"))
            .await;
        assert!(other_book.is_ok(), "keys are scoped by book");
    }

    fn peers(me: &str, live: &[&str]) -> Peers {
        Peers {
            me: me.into(),
            live: live
                .iter()
                .map(|n| (n.to_string(), String::new()))
                .collect(),
        }
    }

    /// A gateway over `log` whose `work` function counts its runs and returns its input,
    /// once `gate` lets it.
    fn gateway(
        log: &Arc<dyn LogBook>,
        peers: watch::Receiver<Peers>,
        runs: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> Arc<Dispatcher> {
        let mut registry = Registry::new();
        registry.register("work", move |_ctx, input| {
            let (runs, gate) = (runs.clone(), gate.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                Ok(input)
            }
        });
        Dispatcher::with_peers(
            registry,
            log.clone(),
            crate::metrics::Metrics::new(),
            peers,
            KEY_RETENTION_DEFAULT,
        )
    }

    #[tokio::test]
    async fn a_dead_gateways_invocation_is_run_by_another_and_its_late_result_refused() {
        let log: Arc<dyn LogBook> = Arc::new(logbook::memory::MemoryLogBook::new());
        let (a_runs, b_runs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stuck = Arc::new(tokio::sync::Semaphore::new(0));
        let (_a_peers, a_rx) = watch::channel(peers("a", &["a", "b"]));
        let (b_peers, b_rx) = watch::channel(peers("b", &["a", "b"]));
        let a = gateway(&log, a_rx, a_runs.clone(), stuck.clone());
        let b = gateway(
            &log,
            b_rx,
            b_runs.clone(),
            Arc::new(tokio::sync::Semaphore::new(9)),
        );
        let rx = a
            .start_async("work", BookId(4), Bytes::from_static(b"job"), None)
            .await
            .unwrap();
        let id = rx.borrow().id.clone();
        // B reads it from the log while A runs it.
        let seen = b.find(&id).await.unwrap().expect("in the log");
        assert_eq!((seen.status, seen.durable), (Status::Pending, true));
        while a_runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // A leaves B's peers: B takes its invocation over and runs it.
        b_peers.send_replace(peers("b", &["b"]));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let done = loop {
            let inv = b.find(&id).await.unwrap().unwrap();
            if inv.finished_at_ms.is_some() {
                break inv;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not re-driven: {inv:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(done.status, Status::Succeeded);
        assert_eq!(done.output.unwrap().unwrap().as_ref(), b"job");
        assert_eq!(b_runs.load(Ordering::SeqCst), 1);
        assert_eq!(b.metrics.redriven.get(), 1);
        // A's run ends late: its result is refused, and A shows B's.
        stuck.add_permits(1);
        let at_a = Dispatcher::wait(rx).await;
        assert_eq!(at_a.status, Status::Succeeded);
        let history = b.journal.history(&id).await.unwrap().unwrap();
        assert_eq!(history.len, 3, "accepted, claimed, one finished");
        assert_eq!(history.finished.unwrap().owner, history.owner);
    }

    #[tokio::test]
    async fn one_key_runs_once_across_gateways_and_restarts() {
        let log: Arc<dyn LogBook> = Arc::new(logbook::memory::MemoryLogBook::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let open = || Arc::new(tokio::sync::Semaphore::new(1000));
        let both = |me| watch::channel(peers(me, &["a", "b"])).1;
        let a = gateway(&log, both("a"), runs.clone(), open());
        let b = gateway(&log, both("b"), runs.clone(), open());
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..10 {
            let d = if i % 2 == 0 { a.clone() } else { b.clone() };
            calls.spawn(async move {
                let input = Bytes::from_static(b"once");
                Dispatcher::wait(d.start("work", BookId(0), input, Some("k1")).await.unwrap()).await
            });
        }
        let mut ids = BTreeSet::new();
        while let Some(done) = calls.join_next().await {
            let done = done.unwrap();
            assert_eq!(done.status, Status::Succeeded);
            assert_eq!(done.output.unwrap().unwrap().as_ref(), b"once");
            ids.insert(done.id);
        }
        assert_eq!(ids.len(), 1, "one invocation: {ids:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A gateway started afresh on the same log answers from it.
        let c = gateway(&log, both("c"), runs.clone(), open());
        let again = c
            .start("work", BookId(0), Bytes::from_static(b"once"), Some("k1"))
            .await
            .unwrap();
        let again = Dispatcher::wait(again).await;
        assert_eq!(Some(&again.id), ids.first());
        assert_eq!(again.output.unwrap().unwrap().as_ref(), b"once");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let other = c
            .start("work", BookId(0), Bytes::from_static(b"else"), Some("k1"))
            .await;
        assert!(matches!(other, Err(InvokeError::KeyReused(_))));
    }
}
