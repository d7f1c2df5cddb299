//! Functions in worker processes (`logbook/proto/worker.proto`).
//!
//! The gateway side, `WorkerService`, serves `Workers.Attach`: a worker registers functions,
//! which become the registry's remote functions; each call of one is sent to the worker, and
//! the worker's requests on the call's behalf (LogBook operations, nested calls) are served
//! with the call's own `Ctx`. When the worker's stream ends, its running calls and every later
//! call of its functions fail as unavailable (HTTP 503) until a worker registers them again.
//!
//! The worker side, `Worker`, is the Rust SDK: `Worker::new(name).register(name, handler)`,
//! then `serve(gateway_addr)`. Its handlers get the same `Ctx` as in-process functions, over a
//! `LogBook` and an `Invoker` that send requests to the gateway, so a function moves between
//! the two without edits.

use crate::functions::{
    Ctx, Dispatcher, FunctionConfig, FunctionError, FunctionResult, Handler, Invoker,
};
use async_trait::async_trait;
use bytes::Bytes;
use logbook::rpc::worker_pb::workers_client::WorkersClient;
use logbook::rpc::worker_pb::workers_server::{Workers, WorkersServer};
use logbook::rpc::worker_pb::{
    self as wpb, from_worker, reply, request, to_worker, FromWorker, ToWorker,
};
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Messages queued for one worker, at most.
const WORKER_QUEUE: usize = 4096;

// ---------------------------------------------------------------------------------------
// Gateway side

/// The gateway's `Workers` service.
pub struct WorkerService {
    dispatcher: Arc<Dispatcher>,
}

impl WorkerService {
    pub fn new(dispatcher: Arc<Dispatcher>) -> WorkersServer<WorkerService> {
        WorkersServer::new(WorkerService { dispatcher })
    }
}

/// One attached worker as the gateway sees it.
struct Attached {
    tx: mpsc::Sender<Result<ToWorker, Status>>,
    next_call: AtomicU64,
    /// Running calls: where their result goes, and their context (for requests).
    calls: Mutex<HashMap<u64, (oneshot::Sender<FunctionResult>, Ctx)>>,
}

impl Attached {
    /// Sends a call to the worker and waits for its result.
    async fn call(&self, function: &str, ctx: Ctx, input: Bytes) -> FunctionResult {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed) + 1;
        let (done, result) = oneshot::channel();
        let call = wpb::Call {
            call: id,
            function: function.to_string(),
            book: ctx.book().0,
            input,
            invocation_id: ctx.invocation_id().to_string(),
        };
        self.calls
            .lock()
            .expect("calls lock")
            .insert(id, (done, ctx));
        // However this ends (answered, refused, or dropped at the function's timeout), the
        // call is forgotten: a late answer finds nothing.
        let _forget = Forget { attached: self, id };
        let message = ToWorker {
            kind: Some(to_worker::Kind::Call(call)),
        };
        let gone = || FunctionError::unavailable(format!("the worker serving {function} is gone"));
        if self.tx.send(Ok(message)).await.is_err() {
            return Err(gone());
        }
        result.await.unwrap_or_else(|_| Err(gone()))
    }

    fn ctx_of(&self, call: u64) -> Option<Ctx> {
        self.calls
            .lock()
            .expect("calls lock")
            .get(&call)
            .map(|(_, ctx)| ctx.clone())
    }
}

/// Removes a running call from its worker's table when dropped.
struct Forget<'a> {
    attached: &'a Attached,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.attached
            .calls
            .lock()
            .expect("calls lock")
            .remove(&self.id);
    }
}

type ToWorkerStream = Pin<Box<dyn Stream<Item = Result<ToWorker, Status>> + Send>>;

#[tonic::async_trait]
impl Workers for WorkerService {
    type AttachStream = ToWorkerStream;

    async fn attach(
        &self,
        request: Request<Streaming<FromWorker>>,
    ) -> Result<Response<ToWorkerStream>, Status> {
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(FromWorker {
                kind: Some(from_worker::Kind::Register(register)),
            }) => register,
            _ => return Err(Status::invalid_argument("a worker first sends Register")),
        };
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        let attached = Arc::new(Attached {
            tx: tx.clone(),
            next_call: AtomicU64::new(0),
            calls: Mutex::new(HashMap::new()),
        });
        // A unique name per connection, so a late disconnect of an old connection never
        // marks the functions a newer one registered as gone.
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let worker = format!(
            "{}#{}",
            register.worker,
            CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1
        );
        let registry = self.dispatcher.registry().clone();
        let mut names = Vec::new();
        for spec in &register.functions {
            let defaults = FunctionConfig::default();
            let config = FunctionConfig {
                max_concurrency: match spec.max_concurrency {
                    0 => defaults.max_concurrency,
                    n => n as usize,
                },
                timeout: match spec.timeout_ms {
                    0 => defaults.timeout,
                    ms => Duration::from_millis(ms),
                },
                ..defaults
            };
            let target = attached.clone();
            let name = spec.name.clone();
            let handler: Handler = Arc::new(move |ctx, input| {
                let target = target.clone();
                let name = name.clone();
                Box::pin(async move { target.call(&name, ctx, input).await })
            });
            if let Err(e) = registry.set_remote(&spec.name, &worker, config, handler) {
                registry.worker_gone(&worker, &names);
                return Err(Status::invalid_argument(e));
            }
            names.push(spec.name.clone());
        }
        tracing::info!(%worker, functions = ?names, "worker attached");
        let registered = ToWorker {
            kind: Some(to_worker::Kind::Registered(wpb::Registered {
                functions: names.clone(),
            })),
        };
        let _ = tx.send(Ok(registered)).await;
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => break,
                };
                match message.kind {
                    Some(from_worker::Kind::Done(done)) => {
                        let waiting = attached
                            .calls
                            .lock()
                            .expect("calls lock")
                            .remove(&done.call);
                        if let Some((result, _)) = waiting {
                            let _ = result.send(call_result(done.result));
                        }
                    }
                    Some(from_worker::Kind::Request(req)) => {
                        let Some(ctx) = attached.ctx_of(req.call) else {
                            let failure = log_failure(&LogError::BadArgument(format!(
                                "call {} is not running",
                                req.call
                            )));
                            let reply = wpb::Reply {
                                request: req.request,
                                result: Some(failure),
                            };
                            let _ = tx.send(Ok(to_worker_reply(reply))).await;
                            continue;
                        };
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let reply = wpb::Reply {
                                request: req.request,
                                result: Some(serve(&ctx, req.op).await),
                            };
                            let _ = tx.send(Ok(to_worker_reply(reply))).await;
                        });
                    }
                    Some(from_worker::Kind::Register(_)) | None => {}
                }
            }
            // The worker is gone: its running calls fail, its functions fail fast.
            registry.worker_gone(&worker, &names);
            let running: Vec<_> = attached.calls.lock().expect("calls lock").drain().collect();
            for (_, (result, _)) in running {
                let _ = result.send(Err(FunctionError::unavailable(format!(
                    "worker {worker} disconnected during the call"
                ))));
            }
            tracing::warn!(%worker, "worker detached");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn to_worker_reply(reply: wpb::Reply) -> ToWorker {
    ToWorker {
        kind: Some(to_worker::Kind::Reply(reply)),
    }
}

fn call_result(result: Option<wpb::call_done::Result>) -> FunctionResult {
    match result {
        Some(wpb::call_done::Result::Output(output)) => Ok(output),
        Some(wpb::call_done::Result::Failure(f)) => Err(failure_of(f)),
        None => Err(FunctionError::new("the worker sent no result")),
    }
}

fn failure_of(f: wpb::Failure) -> FunctionError {
    FunctionError {
        message: f.message,
        bad_input: f.bad_input,
        unavailable: false,
    }
}

fn failure(e: &FunctionError) -> wpb::Failure {
    wpb::Failure {
        message: e.message.clone(),
        bad_input: e.bad_input,
    }
}

fn tags(tags: &[u64]) -> Vec<Tag> {
    tags.iter().map(|t| Tag(*t)).collect()
}

fn record_pb(r: Record) -> wpb::Record {
    wpb::Record {
        seqnum: r.seqnum.0,
        tags: r.tags.iter().map(|t| t.0).collect(),
        data: r.data,
        aux: r.aux,
    }
}

fn record_of(r: wpb::Record, book: BookId) -> Record {
    Record {
        seqnum: Seqnum(r.seqnum),
        book,
        tags: tags(&r.tags),
        data: r.data,
        aux: r.aux,
    }
}

fn log_failure(e: &LogError) -> reply::Result {
    let (seqnum, stream_len) = match e {
        LogError::CondFailed { seqnum, stream_len } => (seqnum.0, *stream_len),
        LogError::Trimmed(seqnum) => (seqnum.0, 0),
        _ => (0, 0),
    };
    reply::Result::LogFailure(wpb::LogFailure {
        code: e.code().to_string(),
        message: e.to_string(),
        seqnum,
        stream_len,
    })
}

/// A LogBook error from its wire form; codes without their own fields keep the message.
fn log_error_of(f: wpb::LogFailure) -> LogError {
    match f.code.as_str() {
        "cond_failed" => LogError::CondFailed {
            seqnum: Seqnum(f.seqnum),
            stream_len: f.stream_len,
        },
        "trimmed" => LogError::Trimmed(Seqnum(f.seqnum)),
        "discarded" => LogError::Discarded,
        "bad_argument" | "too_large" => LogError::BadArgument(f.message),
        "unavailable" => LogError::Unavailable(f.message),
        _ => LogError::Io(f.message),
    }
}

/// Serves one request of a running call with its context.
async fn serve(ctx: &Ctx, op: Option<request::Op>) -> reply::Result {
    use reply::Result as R;
    let seqnums = |r: Result<Vec<Seqnum>, LogError>| match r {
        Ok(s) => R::Seqnums(wpb::Seqnums {
            seqnums: s.into_iter().map(|s| s.0).collect(),
        }),
        Err(e) => log_failure(&e),
    };
    let one = |r: Result<Option<Record>, LogError>| match r {
        Ok(record) => R::Record(wpb::MaybeRecord {
            record: record.map(record_pb),
        }),
        Err(e) => log_failure(&e),
    };
    let done = |r: Result<(), LogError>| match r {
        Ok(()) => R::Done(true),
        Err(e) => log_failure(&e),
    };
    let Some(op) = op else {
        return log_failure(&LogError::BadArgument(
            "a request without an operation".into(),
        ));
    };
    match op {
        request::Op::Append(r) => {
            seqnums(ctx.append(&tags(&r.tags), r.data).await.map(|s| vec![s]))
        }
        request::Op::CondAppend(c) => {
            let (Some(r), Some(cond)) = (c.record, c.cond) else {
                return log_failure(&LogError::BadArgument(
                    "cond_append needs a record and a cond".into(),
                ));
            };
            let cond = Cond {
                tag: Tag(cond.tag),
                position: cond.position,
            };
            seqnums(
                ctx.cond_append(&tags(&r.tags), r.data, cond)
                    .await
                    .map(|s| vec![s]),
            )
        }
        request::Op::AppendBatch(b) => {
            let records = b
                .records
                .into_iter()
                .map(|r| AppendRequest {
                    tags: tags(&r.tags),
                    data: r.data,
                })
                .collect();
            seqnums(ctx.append_batch(records).await)
        }
        request::Op::ReadNext(t) => one(ctx.read_next(Tag(t.tag), Seqnum(t.seqnum)).await),
        request::Op::ReadPrev(t) => one(ctx.read_prev(Tag(t.tag), Seqnum(t.seqnum)).await),
        request::Op::ReadNextBlocking(b) => one(ctx
            .read_next_blocking(
                Tag(b.tag),
                Seqnum(b.seqnum),
                Duration::from_millis(b.timeout_ms),
            )
            .await),
        request::Op::CheckTail(tag) => one(ctx.check_tail(Tag(tag)).await),
        request::Op::SetAuxData(a) => done(ctx.set_aux_data(Seqnum(a.seqnum), a.aux).await),
        request::Op::Trim(t) => done(ctx.trim(Tag(t.tag), Seqnum(t.seqnum)).await),
        request::Op::ReadRange(r) => {
            let range = ReadRange {
                from: Seqnum(r.from),
                to: Seqnum(r.to),
                limit: r.limit as usize,
            };
            match ctx.read_range(Tag(r.tag), range).await {
                Ok(records) => R::Records(wpb::Records {
                    records: records.into_iter().map(record_pb).collect(),
                }),
                Err(e) => log_failure(&e),
            }
        }
        request::Op::Invoke(i) => match ctx.call(&i.function, i.input).await {
            Ok(output) => R::Output(output),
            Err(e) => R::Failure(failure(&e)),
        },
        request::Op::InvokeAsync(i) => match ctx.invoke_async(&i.function, i.input).await {
            Ok(id) => R::InvocationId(id),
            Err(e) => R::Failure(failure(&e)),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Worker side (the Rust SDK)

/// A worker process's functions, served for a gateway.
pub struct Worker {
    name: String,
    functions: BTreeMap<String, (wpb::FunctionSpec, Handler)>,
}

impl Worker {
    /// A worker; `name` identifies it to operators (`GET /functions`).
    pub fn new(name: &str) -> Worker {
        Worker {
            name: name.to_string(),
            functions: BTreeMap::new(),
        }
    }

    /// Serves `handler` as `name`, with the gateway's default limits.
    pub fn register<F, Fut>(&mut self, name: &str, handler: F) -> &mut Worker
    where
        F: Fn(Ctx, Bytes) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = FunctionResult> + Send + 'static,
    {
        self.register_with(name, 0, Duration::ZERO, handler)
    }

    /// Serves `handler` as `name`, at most `max_concurrency` calls at once, each at most
    /// `timeout` (0 and zero: the gateway's defaults).
    pub fn register_with<F, Fut>(
        &mut self,
        name: &str,
        max_concurrency: u32,
        timeout: Duration,
        handler: F,
    ) -> &mut Worker
    where
        F: Fn(Ctx, Bytes) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = FunctionResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx, input| Box::pin(handler(ctx, input)));
        let spec = wpb::FunctionSpec {
            name: name.to_string(),
            max_concurrency,
            timeout_ms: timeout.as_millis() as u64,
        };
        self.functions.insert(name.to_string(), (spec, handler));
        self
    }

    /// Attaches to the gateway at `gateway` (`host:port` or `http://host:port`), registers
    /// the functions and serves calls until the connection ends. Returns an error when the
    /// gateway cannot be reached or refuses the functions; returns `Ok` when the gateway
    /// closes the stream.
    pub async fn serve(&self, gateway: &str) -> anyhow::Result<()> {
        let uri = if gateway.starts_with("http://") {
            gateway.to_string()
        } else {
            format!("http://{gateway}")
        };
        let mut client = WorkersClient::connect(uri.clone())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the gateway at {uri}: {e}"))?;
        let (tx, rx) = mpsc::channel::<FromWorker>(WORKER_QUEUE);
        let register = wpb::Register {
            worker: self.name.clone(),
            functions: self
                .functions
                .values()
                .map(|(spec, _)| spec.clone())
                .collect(),
        };
        tx.send(FromWorker {
            kind: Some(from_worker::Kind::Register(register)),
        })
        .await
        .map_err(|_| anyhow::anyhow!("the worker's stream closed"))?;
        let mut inbound = client
            .attach(ReceiverStream::new(rx))
            .await
            .map_err(|e| anyhow::anyhow!("the gateway refused the worker: {}", e.message()))?
            .into_inner();
        let link = Arc::new(Link {
            tx,
            next_request: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
        });
        while let Some(message) = inbound
            .message()
            .await
            .map_err(|e| anyhow::anyhow!("the gateway ended the stream: {}", e.message()))?
        {
            match message.kind {
                Some(to_worker::Kind::Registered(r)) => {
                    tracing::info!(functions = ?r.functions, "registered with the gateway");
                }
                Some(to_worker::Kind::Call(call)) => {
                    let Some((_, handler)) = self.functions.get(&call.function) else {
                        continue;
                    };
                    let handler = handler.clone();
                    let link = link.clone();
                    tokio::spawn(async move {
                        let remote = Arc::new(Remote {
                            link: link.clone(),
                            call: call.call,
                        });
                        let ctx = Ctx::with_invoker(
                            remote.clone(),
                            BookId(call.book),
                            call.invocation_id,
                            remote,
                            0,
                        );
                        let result = match tokio::spawn(handler(ctx, call.input)).await {
                            Ok(Ok(output)) => wpb::call_done::Result::Output(output),
                            Ok(Err(e)) => wpb::call_done::Result::Failure(failure(&e)),
                            Err(e) => wpb::call_done::Result::Failure(wpb::Failure {
                                message: format!("function panicked: {e}"),
                                bad_input: false,
                            }),
                        };
                        let done = wpb::CallDone {
                            call: call.call,
                            result: Some(result),
                        };
                        let _ = link
                            .tx
                            .send(FromWorker {
                                kind: Some(from_worker::Kind::Done(done)),
                            })
                            .await;
                    });
                }
                Some(to_worker::Kind::Reply(reply)) => {
                    let waiting = link
                        .pending
                        .lock()
                        .expect("pending lock")
                        .remove(&reply.request);
                    if let Some(waiter) = waiting {
                        let _ = waiter.send(reply.result);
                    }
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// A worker's connection, as its calls' contexts use it.
struct Link {
    tx: mpsc::Sender<FromWorker>,
    next_request: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Option<reply::Result>>>>,
}

/// One call's LogBook and invoker: requests to the gateway on the call's behalf.
struct Remote {
    link: Arc<Link>,
    call: u64,
}

impl Remote {
    async fn ask(&self, op: request::Op) -> Result<reply::Result, LogError> {
        let id = self.link.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        let (waiter, answer) = oneshot::channel();
        self.link
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, waiter);
        let request = wpb::Request {
            request: id,
            call: self.call,
            op: Some(op),
        };
        let gone = || LogError::Unavailable("the gateway connection is gone".into());
        self.link
            .tx
            .send(FromWorker {
                kind: Some(from_worker::Kind::Request(request)),
            })
            .await
            .map_err(|_| gone())?;
        let reply = answer.await.map_err(|_| gone())?;
        match reply {
            Some(reply::Result::LogFailure(f)) => Err(log_error_of(f)),
            Some(result) => Ok(result),
            None => Err(LogError::Io("an empty reply from the gateway".into())),
        }
    }

    async fn seqnums(&self, op: request::Op) -> Result<Vec<Seqnum>, LogError> {
        match self.ask(op).await? {
            reply::Result::Seqnums(s) => Ok(s.seqnums.into_iter().map(Seqnum).collect()),
            other => Err(unexpected(other)),
        }
    }

    async fn record(&self, book: BookId, op: request::Op) -> Result<Option<Record>, LogError> {
        match self.ask(op).await? {
            reply::Result::Record(r) => Ok(r.record.map(|r| record_of(r, book))),
            other => Err(unexpected(other)),
        }
    }

    async fn done(&self, op: request::Op) -> Result<(), LogError> {
        match self.ask(op).await? {
            reply::Result::Done(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: reply::Result) -> LogError {
    LogError::Io(format!("an unexpected reply from the gateway: {reply:?}"))
}

fn append_record(tags: &[Tag], data: Bytes) -> wpb::AppendRecord {
    wpb::AppendRecord {
        tags: tags.iter().map(|t| t.0).collect(),
        data,
    }
}

fn tag_seqnum(tag: Tag, seqnum: Seqnum) -> wpb::TagSeqnum {
    wpb::TagSeqnum {
        tag: tag.0,
        seqnum: seqnum.0,
    }
}

/// The call's LogBook: every operation goes to the gateway, which runs it in the call's
/// book (the `book` arguments are the call's own, as `Ctx` passes them).
#[async_trait]
impl LogBook for Remote {
    async fn append(&self, _book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError> {
        let op = request::Op::Append(append_record(tags, data));
        Ok(self.seqnums(op).await?[0])
    }

    async fn cond_append(
        &self,
        _book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        let op = request::Op::CondAppend(wpb::CondAppend {
            record: Some(append_record(tags, data)),
            cond: Some(wpb::Cond {
                tag: cond.tag.0,
                position: cond.position,
            }),
        });
        Ok(self.seqnums(op).await?[0])
    }

    async fn append_batch(
        &self,
        _book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        let records = records
            .into_iter()
            .map(|r| append_record(&r.tags, r.data))
            .collect();
        self.seqnums(request::Op::AppendBatch(wpb::AppendBatch { records }))
            .await
    }

    async fn read_next(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        self.record(book, request::Op::ReadNext(tag_seqnum(tag, min_seqnum)))
            .await
    }

    async fn read_prev(
        &self,
        book: BookId,
        tag: Tag,
        max_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        self.record(book, request::Op::ReadPrev(tag_seqnum(tag, max_seqnum)))
            .await
    }

    async fn read_next_blocking(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        let op = request::Op::ReadNextBlocking(wpb::ReadBlocking {
            tag: tag.0,
            seqnum: min_seqnum.0,
            timeout_ms: timeout.as_millis() as u64,
        });
        self.record(book, op).await
    }

    async fn check_tail(&self, book: BookId, tag: Tag) -> Result<Option<Record>, LogError> {
        self.record(book, request::Op::CheckTail(tag.0)).await
    }

    async fn set_aux_data(
        &self,
        _book: BookId,
        seqnum: Seqnum,
        aux: Bytes,
    ) -> Result<(), LogError> {
        let op = request::Op::SetAuxData(wpb::SetAux {
            seqnum: seqnum.0,
            aux,
        });
        self.done(op).await
    }

    async fn trim(&self, _book: BookId, tag: Tag, below: Seqnum) -> Result<(), LogError> {
        self.done(request::Op::Trim(tag_seqnum(tag, below))).await
    }

    async fn read_range(
        &self,
        book: BookId,
        tag: Tag,
        range: ReadRange,
    ) -> Result<Vec<Record>, LogError> {
        let op = request::Op::ReadRange(wpb::ReadRange {
            tag: tag.0,
            from: range.from.0,
            to: range.to.0,
            limit: range.limit.min(u32::MAX as usize) as u32,
        });
        match self.ask(op).await? {
            reply::Result::Records(r) => {
                Ok(r.records.into_iter().map(|r| record_of(r, book)).collect())
            }
            other => Err(unexpected(other)),
        }
    }
}

/// Nested calls from a worker's function go to the gateway, which runs them (locally or in
/// their own workers) as the calling function's children.
#[async_trait]
impl Invoker for Remote {
    async fn invoke(
        &self,
        function: &str,
        _book: BookId,
        input: Bytes,
        _depth: u32,
    ) -> FunctionResult {
        let op = request::Op::Invoke(wpb::Invoke {
            function: function.to_string(),
            input,
        });
        match self.ask(op).await.map_err(FunctionError::from)? {
            reply::Result::Output(output) => Ok(output),
            reply::Result::Failure(f) => Err(failure_of(f)),
            other => Err(FunctionError::new(unexpected(other).to_string())),
        }
    }

    async fn invoke_async(
        &self,
        function: &str,
        _book: BookId,
        input: Bytes,
        _depth: u32,
    ) -> Result<String, FunctionError> {
        let op = request::Op::InvokeAsync(wpb::Invoke {
            function: function.to_string(),
            input,
        });
        match self.ask(op).await.map_err(FunctionError::from)? {
            reply::Result::InvocationId(id) => Ok(id),
            reply::Result::Failure(f) => Err(failure_of(f)),
            other => Err(FunctionError::new(unexpected(other).to_string())),
        }
    }
}
