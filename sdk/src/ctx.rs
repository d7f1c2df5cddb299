//! `Ctx`: what one invocation sees of the log and of other functions. Every LogBook call,
//! bound to the invocation's book, and nested calls (`invoke`, `invoke_async`, and their keyed
//! forms) through an `Invoker`, which the gateway (in-process) or a worker's connection
//! provides. The context itself does no IO of its own.

use crate::{FunctionError, FunctionResult};
use bytes::Bytes;
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A handler's future.
pub type BoxFuture = Pin<Box<dyn Future<Output = FunctionResult> + Send>>;
/// A function's handler as a registry keeps it.
pub type Handler = Arc<dyn Fn(Ctx, Bytes) -> BoxFuture + Send + Sync>;

/// How deep calls may nest (a function calling a function calling ...), at most.
pub const CALL_DEPTH_MAX: u32 = 32;

/// A nested call, as an `Invoker` takes it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub function: &'a str,
    /// The caller's book, which the callee inherits.
    pub book: BookId,
    pub input: Bytes,
    /// How many calls the callee is nested in.
    pub depth: u32,
    /// An idempotency key: every call under one key (per function and book) is one
    /// invocation, run once, whose result every such call gets.
    pub key: Option<&'a str>,
    /// An asynchronous call starts no earlier than this (ms since the Unix epoch): a durable
    /// timer. Ignored by synchronous calls.
    pub not_before_ms: Option<u64>,
}

/// Where a `Ctx`'s nested calls go.
#[async_trait::async_trait]
pub trait Invoker: Send + Sync {
    /// Runs `call` and waits for its output.
    async fn invoke(&self, call: Call<'_>) -> FunctionResult;
    /// Starts `call` without waiting (retried as its function's config says); returns the
    /// invocation id.
    async fn invoke_async(&self, call: Call<'_>) -> Result<String, FunctionError>;
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

    /// This context with its log wrapped by `wrap` (a `LogBook` that counts, traces or
    /// checks the calls and passes them on); nested calls are unchanged.
    pub fn wrap_log(&self, wrap: impl FnOnce(Arc<dyn LogBook>) -> Arc<dyn LogBook>) -> Ctx {
        Ctx {
            log: wrap(self.log.clone()),
            ..self.clone()
        }
    }

    /// How many calls this one is nested in (0 for a call from outside).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Calls `function` with `input` in this call's book and waits for its output. A failed
    /// callee fails this call with its message (the caller may catch it).
    ///
    /// ```no_run
    /// # async fn f(ctx: tally_sdk::Ctx) -> tally_sdk::FunctionResult {
    /// let greeting = ctx.invoke("greet", r#"{"name":"Ada"}"#).await?;
    /// # Ok(greeting) }
    /// ```
    pub async fn invoke(&self, function: &str, input: impl Into<Bytes>) -> FunctionResult {
        self.invoke_inner(function, input.into(), None).await
    }

    /// Like `invoke`, but every call under `key` (for this function and book) is one durable
    /// invocation: it runs once, however often it is called, even across gateways and
    /// restarts, and every call gets its result. The same key with another input fails.
    pub async fn invoke_keyed(
        &self,
        function: &str,
        key: &str,
        input: impl Into<Bytes>,
    ) -> FunctionResult {
        self.invoke_inner(function, input.into(), Some(key)).await
    }

    async fn invoke_inner(
        &self,
        function: &str,
        input: Bytes,
        key: Option<&str>,
    ) -> FunctionResult {
        // The callee's bad input is this function's fault, not its caller's.
        self.call(function, input, key)
            .await
            .map_err(|e| FunctionError {
                message: format!("{function}: {}", e.message),
                bad_input: false,
                unavailable: e.unavailable,
            })
    }

    /// `invoke` with the callee's failure as it is: what a worker's nested call is answered
    /// with (the worker's own `Ctx::invoke` then names the callee).
    #[doc(hidden)]
    pub async fn call(&self, function: &str, input: Bytes, key: Option<&str>) -> FunctionResult {
        let invoker = self.invoker(function)?;
        invoker.invoke(self.call_of(function, input, key)).await
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
            .invoke_async(self.call_of(function, input.into(), None))
            .await
    }

    /// Like `invoke_async`, but under an idempotency key: the same key starts one invocation
    /// and answers its id every time.
    pub async fn invoke_async_keyed(
        &self,
        function: &str,
        key: &str,
        input: impl Into<Bytes>,
    ) -> Result<String, FunctionError> {
        let invoker = self.invoker(function)?;
        invoker
            .invoke_async(self.call_of(function, input.into(), Some(key)))
            .await
    }

    /// Like `invoke_async_keyed`, but the invocation starts no earlier than `not_before_ms`
    /// (ms since the Unix epoch). It is in the log at once, so it starts even if this gateway
    /// dies before then; nothing runs or waits in memory for it but a timer.
    pub async fn invoke_async_keyed_at(
        &self,
        function: &str,
        key: &str,
        input: impl Into<Bytes>,
        not_before_ms: u64,
    ) -> Result<String, FunctionError> {
        let invoker = self.invoker(function)?;
        let call = Call {
            not_before_ms: Some(not_before_ms),
            ..self.call_of(function, input.into(), Some(key))
        };
        invoker.invoke_async(call).await
    }

    fn call_of<'a>(&self, function: &'a str, input: Bytes, key: Option<&'a str>) -> Call<'a> {
        Call {
            function,
            book: self.book,
            input,
            depth: self.depth + 1,
            key,
            not_before_ms: None,
        }
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
