//! Functions: the registry of in-process handlers, the `Ctx` each invocation gets (the LogBook
//! calls bound to the request's book), and the invocation table behind async calls and
//! idempotency keys.
//!
//! Invocations are kept in memory, bounded by `INVOCATIONS_MAX`; they do not survive a restart.

use bytes::Bytes;
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Finished invocations kept for `GET /invocations/{id}` and idempotency keys, at most.
pub const INVOCATIONS_MAX: usize = 100_000;
/// Bytes of output the kept invocations may hold, at most.
pub const INVOCATION_OUTPUT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Longest a function name may be, in bytes.
pub const FUNCTION_NAME_BYTES_MAX: usize = 128;

/// A function's failure: the caller gets its message, with 400 for bad input and 500 else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FunctionError {
    pub message: String,
    /// The input was malformed: the caller's fault, not the function's.
    pub bad_input: bool,
    /// The function could not run (its worker is gone): HTTP 503, worth retrying later.
    pub unavailable: bool,
}

impl FunctionError {
    pub fn new(message: impl Into<String>) -> FunctionError {
        FunctionError {
            message: message.into(),
            bad_input: false,
            unavailable: false,
        }
    }

    pub fn bad_input(message: impl Into<String>) -> FunctionError {
        FunctionError {
            bad_input: true,
            ..FunctionError::new(message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> FunctionError {
        FunctionError {
            unavailable: true,
            ..FunctionError::new(message)
        }
    }
}

impl From<LogError> for FunctionError {
    fn from(e: LogError) -> FunctionError {
        FunctionError::new(format!("log: {e}"))
    }
}

impl From<serde_json::Error> for FunctionError {
    fn from(e: serde_json::Error) -> FunctionError {
        FunctionError::new(format!("json: {e}"))
    }
}

/// What a function returns.
pub type FunctionResult = Result<Bytes, FunctionError>;
/// A handler's future.
pub type BoxFuture = Pin<Box<dyn Future<Output = FunctionResult> + Send>>;
/// A function's handler as the registry keeps it.
pub type Handler = Arc<dyn Fn(Ctx, Bytes) -> BoxFuture + Send + Sync>;

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

/// How deep calls may nest (a function calling a function calling ...), at most.
pub const CALL_DEPTH_MAX: u32 = 32;

/// Where a `Ctx`'s nested calls go.
#[async_trait::async_trait]
pub trait Invoker: Send + Sync {
    /// Runs `function` with `input` in `book`, `depth` calls deep, and waits for its output.
    async fn invoke(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        depth: u32,
    ) -> FunctionResult;
    /// Starts it without waiting (retried as its config says); returns the invocation id.
    async fn invoke_async(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        depth: u32,
    ) -> Result<String, FunctionError>;
}

/// An invocation's view of the log and of other functions: every LogBook call, bound to the
/// invocation's book, and nested calls (`invoke`, `invoke_async`) that inherit the book.
#[derive(Clone)]
pub struct Ctx {
    log: Arc<dyn LogBook>,
    book: BookId,
    invocation_id: String,
    /// Where nested calls go: the gateway's dispatcher (in-process), or the gateway over a
    /// worker's connection; none for a context made outside either.
    invoker: Option<Arc<dyn Invoker>>,
    /// How many calls this one is nested in (0 for a call from outside).
    depth: u32,
}

impl Ctx {
    /// A context whose nested calls fail (there is no dispatcher to run them).
    pub fn new(log: Arc<dyn LogBook>, book: BookId, invocation_id: String) -> Ctx {
        Ctx {
            log,
            book,
            invocation_id,
            invoker: None,
            depth: 0,
        }
    }

    /// A context whose nested calls go to `invoker`; `depth` is how many calls this one is
    /// nested in. Worker runtimes make their calls' contexts with it.
    pub fn with_invoker(
        log: Arc<dyn LogBook>,
        book: BookId,
        invocation_id: String,
        invoker: Arc<dyn Invoker>,
        depth: u32,
    ) -> Ctx {
        Ctx {
            log,
            book,
            invocation_id,
            invoker: Some(invoker),
            depth,
        }
    }

    /// How many calls this one is nested in (0 for a call from outside).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Calls `function` with `input` in this call's book and waits for its output. A failed
    /// callee fails this call with its message (the caller may catch it).
    pub async fn invoke(&self, function: &str, input: impl Into<Bytes>) -> FunctionResult {
        // The callee's bad input is this function's fault, not its caller's.
        self.call(function, input.into())
            .await
            .map_err(|e| FunctionError {
                message: format!("{function}: {}", e.message),
                bad_input: false,
                unavailable: e.unavailable,
            })
    }

    /// `invoke` with the callee's failure as it is: what a worker's nested call is answered
    /// with (the worker's own `Ctx::invoke` then names the callee).
    pub(crate) async fn call(&self, function: &str, input: Bytes) -> FunctionResult {
        let invoker = self.invoker(function)?;
        invoker
            .invoke(function, self.book, input, self.depth + 1)
            .await
    }

    /// Starts `function` with `input` in this call's book without waiting; returns the
    /// invocation id (`GET /invocations/{id}` shows its status).
    pub async fn invoke_async(
        &self,
        function: &str,
        input: impl Into<Bytes>,
    ) -> Result<String, FunctionError> {
        let invoker = self.invoker(function)?;
        invoker
            .invoke_async(function, self.book, input.into(), self.depth + 1)
            .await
    }

    fn invoker(&self, function: &str) -> Result<&Arc<dyn Invoker>, FunctionError> {
        let invoker = self
            .invoker
            .as_ref()
            .ok_or_else(|| FunctionError::new("nested calls need a dispatcher"))?;
        if self.depth >= CALL_DEPTH_MAX {
            return Err(FunctionError::new(format!(
                "calls nest deeper than {CALL_DEPTH_MAX}: {function} not called"
            )));
        }
        Ok(invoker)
    }

    pub fn book(&self) -> BookId {
        self.book
    }

    pub fn invocation_id(&self) -> &str {
        &self.invocation_id
    }

    pub async fn append(&self, tags: &[Tag], data: impl Into<Bytes>) -> Result<Seqnum, LogError> {
        self.log.append(self.book, tags, data.into()).await
    }

    pub async fn cond_append(
        &self,
        tags: &[Tag],
        data: impl Into<Bytes>,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        self.log
            .cond_append(self.book, tags, data.into(), cond)
            .await
    }

    pub async fn append_batch(&self, records: Vec<AppendRequest>) -> Result<Vec<Seqnum>, LogError> {
        self.log.append_batch(self.book, records).await
    }

    pub async fn read_next(
        &self,
        tag: Tag,
        min_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        self.log.read_next(self.book, tag, min_seqnum).await
    }

    pub async fn read_prev(
        &self,
        tag: Tag,
        max_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        self.log.read_prev(self.book, tag, max_seqnum).await
    }

    pub async fn read_next_blocking(
        &self,
        tag: Tag,
        min_seqnum: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        self.log
            .read_next_blocking(self.book, tag, min_seqnum, timeout)
            .await
    }

    pub async fn check_tail(&self, tag: Tag) -> Result<Option<Record>, LogError> {
        self.log.check_tail(self.book, tag).await
    }

    pub async fn set_aux_data(
        &self,
        seqnum: Seqnum,
        aux: impl Into<Bytes>,
    ) -> Result<(), LogError> {
        self.log.set_aux_data(self.book, seqnum, aux.into()).await
    }

    pub async fn trim(&self, tag: Tag, below: Seqnum) -> Result<(), LogError> {
        self.log.trim(self.book, tag, below).await
    }

    pub async fn read_range(&self, tag: Tag, range: ReadRange) -> Result<Vec<Record>, LogError> {
        self.log.read_range(self.book, tag, range).await
    }
}

/// One try of a call: the handler in its own task (a panic fails the call, not the
/// gateway), stopped at the function's timeout.
async fn run_once(target: &Function, function: &str, ctx: Ctx, input: Bytes) -> FunctionResult {
    let timeout = target.config.timeout;
    let call = tokio::spawn((target.handler)(ctx, input));
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Table {
    invocations: HashMap<String, watch::Sender<Invocation>>,
    /// Idempotency key to (invocation id, hash of the input it was called with).
    by_key: HashMap<String, (String, u64)>,
    /// The idempotency key each keyed invocation was started with.
    key_of: HashMap<String, String>,
    /// Ids in creation order, for evicting the oldest finished invocations.
    order: VecDeque<String>,
    /// Output bytes held by finished invocations.
    output_bytes: usize,
    next_id: u64,
}

fn output_len(inv: &Invocation) -> usize {
    match &inv.output {
        Some(Ok(output)) => output.len(),
        Some(Err(e)) => e.message.len(),
        None => 0,
    }
}

fn input_hash(input: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut hasher);
    hasher.finish()
}

/// Why an invocation could not start.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("no function named {0:?}")]
    UnknownFunction(String),
    #[error("idempotency key {0:?} was used with another input")]
    KeyReused(String),
}

#[async_trait::async_trait]
impl Invoker for Dispatcher {
    async fn invoke(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        depth: u32,
    ) -> FunctionResult {
        let rx = self.start_nested(function, book, input, depth, false)?;
        match Dispatcher::wait(rx).await.output {
            Some(result) => result,
            None => Err(FunctionError::new(format!("{function} did not finish"))),
        }
    }

    async fn invoke_async(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        depth: u32,
    ) -> Result<String, FunctionError> {
        let rx = self.start_nested(function, book, input, depth, true)?;
        let id = rx.borrow().id.clone();
        Ok(id)
    }
}

/// Runs functions and keeps their invocations.
pub struct Dispatcher {
    registry: Registry,
    log: Arc<dyn LogBook>,
    metrics: Arc<crate::metrics::Metrics>,
    table: Mutex<Table>,
    node_tag: u64,
    /// This dispatcher, for the calls it starts (their contexts call back into it).
    me: std::sync::Weak<Dispatcher>,
}

impl Dispatcher {
    pub fn new(
        registry: Registry,
        log: Arc<dyn LogBook>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Dispatcher> {
        // Ids differ across restarts of the same node so an old id never names a new call.
        let node_tag = now_ms() & 0xffff_ffff;
        Arc::new_cyclic(|me| Dispatcher {
            registry,
            log,
            metrics,
            table: Mutex::new(Table::default()),
            node_tag,
            me: me.clone(),
        })
    }

    /// A call another function makes (no idempotency key; its failure is the caller's).
    fn start_nested(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        depth: u32,
        retried: bool,
    ) -> Result<watch::Receiver<Invocation>, FunctionError> {
        self.start_at_depth(function, book, input, None, depth, retried)
            .map_err(|e| FunctionError::new(e.to_string()))
    }

    fn me(&self) -> Arc<Dispatcher> {
        self.me.upgrade().expect("a dispatcher in use is alive")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .expect("no panics while holding the invocation table")
    }

    /// Starts an invocation (or finds the one its idempotency key already started) and
    /// returns a receiver that sees its status change.
    pub fn start(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<watch::Receiver<Invocation>, InvokeError> {
        self.start_at_depth(function, book, input, idempotency_key, 0, false)
    }

    /// Like `start`, for a call nobody waits on: a failure is retried as the function's
    /// config says.
    pub fn start_async(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<watch::Receiver<Invocation>, InvokeError> {
        self.start_at_depth(function, book, input, idempotency_key, 0, true)
    }

    fn start_at_depth(
        &self,
        function: &str,
        book: BookId,
        input: Bytes,
        idempotency_key: Option<&str>,
        depth: u32,
        retried: bool,
    ) -> Result<watch::Receiver<Invocation>, InvokeError> {
        let target = self
            .registry
            .get(function)
            .ok_or_else(|| InvokeError::UnknownFunction(function.into()))?;
        let mut table = self.table();
        let scoped_key = idempotency_key.map(|k| format!("{function}\u{0}{}\u{0}{k}", book.0));
        let hash = input_hash(&input);
        if let Some(key) = &scoped_key {
            if let Some((id, known_hash)) = table.by_key.get(key) {
                if *known_hash != hash {
                    return Err(InvokeError::KeyReused(
                        idempotency_key.unwrap_or_default().to_string(),
                    ));
                }
                let existing = table
                    .invocations
                    .get(id)
                    .expect("keyed invocations are kept");
                // A failed call may be retried under its key; any other is answered again.
                if existing.borrow().status != Status::Failed {
                    return Ok(existing.subscribe());
                }
            }
        }
        table.next_id += 1;
        let id = format!("{:08x}{:08x}", self.node_tag, table.next_id);
        let invocation = Invocation {
            id: id.clone(),
            function: function.to_string(),
            book: book.0,
            status: Status::Pending,
            output: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            attempts: 0,
        };
        let (tx, rx) = watch::channel(invocation);
        table.invocations.insert(id.clone(), tx);
        if let Some(key) = scoped_key {
            if let Some((replaced, _)) = table.by_key.insert(key.clone(), (id.clone(), hash)) {
                table.key_of.remove(&replaced);
            }
            table.key_of.insert(id.clone(), key);
        }
        table.order.push_back(id.clone());
        self.evict(&mut table);
        drop(table);

        let ctx = Ctx {
            log: self.log.clone(),
            book,
            invocation_id: id.clone(),
            invoker: Some(self.me()),
            depth,
        };
        let dispatcher = self.me();
        let function = function.to_string();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (queued, running) = dispatcher.metrics.function_gauges(&function);
            // Wait for a slot under the function's concurrency limit (still `Pending`).
            queued.inc();
            let slot = target.slots.clone().acquire_owned().await;
            queued.dec();
            let _slot = slot.expect("a function's slots are never closed");
            running.inc();
            dispatcher.update(&id, |inv| {
                inv.status = Status::Running;
                inv.started_at_ms = Some(now_ms());
            });
            let config = target.config;
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                dispatcher.update(&id, |inv| inv.attempts = attempt);
                let result = run_once(&target, &function, ctx.clone(), input.clone()).await;
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
            let mut table = dispatcher.table();
            let finished = table.invocations.get(&id).map(|tx| {
                tx.send_modify(|inv| {
                    inv.status = if result.is_ok() {
                        Status::Succeeded
                    } else {
                        Status::Failed
                    };
                    inv.finished_at_ms = Some(now_ms());
                    inv.output = Some(result);
                });
                let bytes = output_len(&tx.borrow());
                bytes
            });
            if let Some(bytes) = finished {
                table.output_bytes += bytes;
                dispatcher.evict(&mut table);
            }
        });
        Ok(rx)
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Invocation)) {
        if let Some(tx) = self.table().invocations.get(id) {
            tx.send_modify(change);
        }
    }

    /// Drops the oldest finished invocations while the table is over its count or byte
    /// limit. Running ones stay, wherever they are in the order.
    fn evict(&self, table: &mut Table) {
        let mut running = Vec::new();
        while table.order.len() > INVOCATIONS_MAX
            || table.output_bytes > INVOCATION_OUTPUT_BYTES_MAX
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
            table.output_bytes -= output_len(&tx.borrow());
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

    /// The invocation with this id, if it is still kept.
    pub fn get(&self, id: &str) -> Option<Invocation> {
        self.table()
            .invocations
            .get(id)
            .map(|tx| tx.borrow().clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn dispatcher(registry: Registry) -> Arc<Dispatcher> {
        let log: Arc<dyn LogBook> = Arc::new(logbook::memory::MemoryLogBook::new());
        Dispatcher::new(registry, log, crate::metrics::Metrics::new())
    }

    #[tokio::test]
    async fn a_function_calls_one_function_and_starts_another() {
        let mut registry = Registry::new();
        crate::examples::register(&mut registry);
        let d = dispatcher(registry);
        let input = Bytes::from_static(br#"{"name":"ana"}"#);
        let done = Dispatcher::wait(d.start("welcome", BookId(3), input, None).unwrap()).await;
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
        let deep =
            Dispatcher::wait(d.start("forever", BookId(0), Bytes::new(), None).unwrap()).await;
        assert_eq!(deep.status, Status::Failed);
        let message = deep.output.unwrap().unwrap_err().message;
        assert!(message.contains("deeper than 32"), "{message}");
        let lost = Dispatcher::wait(d.start("lost", BookId(0), Bytes::new(), None).unwrap()).await;
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
        let calls: Vec<_> = (0..3)
            .map(|_| d.start("gated", BookId(0), Bytes::new(), None).unwrap())
            .collect();
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

        let slow =
            Dispatcher::wait(d.start("sleepy", BookId(0), Bytes::new(), None).unwrap()).await;
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
            let input = Bytes::from_static(input);
            if asynchronous {
                d.start_async(name, BookId(0), input, None).unwrap()
            } else {
                d.start(name, BookId(0), input, None).unwrap()
            }
        };
        let done = Dispatcher::wait(run("patient", b"x", true)).await;
        assert_eq!((done.status, done.attempts), (Status::Succeeded, 3));
        tries.store(0, Ordering::SeqCst);
        let done = Dispatcher::wait(run("impatient", b"x", true)).await;
        assert_eq!(
            (done.status, done.attempts),
            (Status::Failed, 2),
            "one retry"
        );
        tries.store(0, Ordering::SeqCst);
        let done = Dispatcher::wait(run("patient", b"x", false)).await;
        assert_eq!(
            (done.status, done.attempts),
            (Status::Failed, 1),
            "sync: tried once"
        );
        let done = Dispatcher::wait(run("patient", b"bad", true)).await;
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
        let first = Dispatcher::wait(call().unwrap()).await;
        assert_eq!(first.status, Status::Failed);
        let second = Dispatcher::wait(call().unwrap()).await;
        assert_eq!(second.status, Status::Succeeded);
        let third = Dispatcher::wait(call().unwrap()).await;
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
            .unwrap();
        Dispatcher::wait(first).await;
        let other = d.start("echo", BookId(0), Bytes::from_static(b"b"), Some("k"));
        assert!(matches!(other, Err(InvokeError::KeyReused(_))));
        let other_book = d.start("echo", BookId(1), Bytes::from_static(b"b"), Some("k"));
        assert!(other_book.is_ok(), "keys are scoped by book");
    }
}
