//! The worker side of functions in worker processes (`logbook/proto/worker.proto`): `Worker`
//! registers handlers with a gateway over gRPC and serves their calls. Each call's handler gets
//! the same `Ctx` as an in-process function, over a `LogBook` and an `Invoker` that send
//! requests to the gateway, so a function moves between the two without edits.

use crate::wire::{failure, failure_of, log_error_of, record_of};
use crate::{Call, Ctx, FunctionError, FunctionResult, Handler, Invoker};
use async_trait::async_trait;
use bytes::Bytes;
use logbook::rpc::worker_pb::workers_client::WorkersClient;
use logbook::rpc::worker_pb::{self as wpb, from_worker, reply, request, to_worker, FromWorker};
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

/// Messages queued for the gateway, at most.
const WORKER_QUEUE: usize = 4096;

// ---------------------------------------------------------------------------------------
// Worker side (the Rust SDK)

/// How a worker's function runs at the gateway; zeros take the gateway's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Calls at once, at most (0: 1,024).
    pub max_concurrency: u32,
    /// Longest a call may take (zero: 60 s).
    pub timeout: Duration,
    /// Tries again of an asynchronous call that failed (0: none).
    pub retries: u32,
    /// The wait before the first retry, doubling with each (zero: 100 ms).
    pub backoff: Duration,
}

/// A worker process's functions, served for a gateway.
pub struct Worker {
    name: String,
    functions: BTreeMap<String, (wpb::FunctionSpec, Handler)>,
    token: Option<String>,
    tls: Option<logbook::rpc::ClientTls>,
}

impl Worker {
    /// A worker; `name` identifies it to operators (`GET /functions`).
    pub fn new(name: &str) -> Worker {
        Worker {
            name: name.to_string(),
            functions: BTreeMap::new(),
            token: None,
            tls: None,
        }
    }

    /// Attaches over mutual TLS, showing `tls`'s certificate and trusting its CA alone: what a
    /// gateway whose node has a `[tls]` section asks of its workers.
    pub fn tls(&mut self, tls: logbook::rpc::ClientTls) -> &mut Worker {
        self.tls = Some(tls);
        self
    }

    /// Attaches with `token` (an API token of scope `worker`), which a gateway asks for once
    /// any token exists.
    pub fn token(&mut self, token: &str) -> &mut Worker {
        self.token = Some(token.trim().to_string());
        self
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
        let limits = Limits {
            max_concurrency,
            timeout,
            ..Limits::default()
        };
        self.register_limited(name, limits, handler)
    }

    /// Serves `handler` as `name` with `limits`: how many calls at once, how long each, and
    /// how often a failed asynchronous call is tried again.
    pub fn register_limited<F, Fut>(
        &mut self,
        name: &str,
        limits: Limits,
        handler: F,
    ) -> &mut Worker
    where
        F: Fn(Ctx, Bytes) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = FunctionResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx, input| Box::pin(handler(ctx, input)));
        let spec = wpb::FunctionSpec {
            name: name.to_string(),
            max_concurrency: limits.max_concurrency,
            timeout_ms: limits.timeout.as_millis() as u64,
            retries: limits.retries,
            backoff_ms: limits.backoff.as_millis() as u64,
        };
        self.functions.insert(name.to_string(), (spec, handler));
        self
    }

    /// Attaches to the gateway at `gateway` (`host:port` or `http://host:port`), registers
    /// the functions and serves calls until the connection ends. Returns an error when the
    /// gateway cannot be reached or refuses the functions; returns `Ok` when the gateway
    /// closes the stream.
    pub async fn serve(&self, gateway: &str) -> anyhow::Result<()> {
        let uri = logbook::rpc::grpc_uri(gateway, self.tls.is_some());
        let connect = async {
            let mut endpoint = tonic::transport::Endpoint::from_shared(uri.clone())?;
            if let Some(tls) = &self.tls {
                endpoint = endpoint.tls_config(tls.config())?;
            }
            endpoint.connect().await
        };
        let mut client = WorkersClient::new(connect.await.map_err(|e| {
            anyhow::anyhow!(
                "connecting to the gateway at {uri}: {}",
                logbook::rpc::causes(e.to_string(), std::error::Error::source(&e))
            )
        })?);
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
        let mut attach = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                anyhow::anyhow!("the token holds characters gRPC metadata cannot carry")
            })?;
            attach.metadata_mut().insert("authorization", value);
        }
        let mut inbound = client
            .attach(attach)
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
                    // The worker's span for the call, in the trace of the gateway's.
                    let span = tracing::info_span!(
                        target: "tally::trace",
                        parent: None,
                        "worker call",
                        otel.name = format!("worker {}", call.function),
                        function = %call.function,
                        invocation = %call.invocation_id,
                    );
                    crate::trace::set_remote_parent(&span, Some(&call.traceparent));
                    let serve_call = async move {
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
                        let running =
                            tracing::Instrument::in_current_span(handler(ctx, call.input));
                        let result = match tokio::spawn(running).await {
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
                    };
                    tokio::spawn(tracing::Instrument::instrument(serve_call, span));
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
                token: cond.token,
                after: cond.after,
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
    async fn invoke(&self, call: Call<'_>) -> FunctionResult {
        let op = request::Op::Invoke(invoke_pb(call));
        match self.ask(op).await.map_err(FunctionError::from)? {
            reply::Result::Output(output) => Ok(output),
            reply::Result::Failure(f) => Err(failure_of(f)),
            other => Err(FunctionError::new(unexpected(other).to_string())),
        }
    }

    async fn invoke_async(&self, call: Call<'_>) -> Result<String, FunctionError> {
        let op = request::Op::InvokeAsync(invoke_pb(call));
        match self.ask(op).await.map_err(FunctionError::from)? {
            reply::Result::InvocationId(id) => Ok(id),
            reply::Result::Failure(f) => Err(failure_of(f)),
            other => Err(FunctionError::new(unexpected(other).to_string())),
        }
    }
}

/// A nested call on the wire; the gateway fills in the book and depth from the calling
/// invocation.
fn invoke_pb(call: Call<'_>) -> wpb::Invoke {
    wpb::Invoke {
        function: call.function.to_string(),
        input: call.input,
        idempotency_key: call.key.map(str::to_string),
        not_before_ms: call.not_before_ms,
    }
}
