//! Functions in worker processes (`logbook/proto/worker.proto`).
//!
//! The gateway side, `WorkerService`, serves `Workers.Attach`: a worker registers functions,
//! which become the registry's remote functions; each call of one is sent to the worker, and
//! the worker's requests on the call's behalf (LogBook operations, nested calls) are served
//! with the call's own `Ctx`. When the worker's stream ends, its running calls and every later
//! call of its functions fail as unavailable (HTTP 503) until a worker registers them again.
//!
//! The worker side, `Worker`, is in the SDK (`tally_sdk::Worker`).

use crate::functions::{Ctx, Dispatcher, FunctionConfig, FunctionError, FunctionResult, Handler};
use bytes::Bytes;
use logbook::rpc::worker_pb::workers_server::{Workers, WorkersServer};
use logbook::rpc::worker_pb::{
    self as wpb, from_worker, reply, request, to_worker, FromWorker, ToWorker,
};
use logbook::{AppendRequest, Cond, LogError, ReadRange, Record, Seqnum, Tag};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::wire::{call_result, failure, log_failure, record_pb, tags};
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
    tokens: Arc<crate::auth::Tokens>,
}

impl WorkerService {
    /// Workers attach with a token of scope `worker` once tokens are asked for.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        tokens: Arc<crate::auth::Tokens>,
    ) -> WorkersServer<WorkerService> {
        WorkersServer::new(WorkerService { dispatcher, tokens })
    }
}

/// One attached worker as the gateway sees it.
struct Attached {
    tx: mpsc::Sender<Result<ToWorker, Status>>,
    next_call: AtomicU64,
    /// Running calls: where their result goes, and their context (for requests). `None` once
    /// the worker is gone, so a call that picked this worker just before it went fails at once
    /// instead of waiting for an answer that cannot come.
    calls: Mutex<Option<Running>>,
}

/// A worker's running calls, by call number: where each result goes, the call's context, and
/// its span (what the worker's requests for it are traced under).
type Running = HashMap<u64, (oneshot::Sender<FunctionResult>, Ctx, tracing::Span)>;

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
            traceparent: tally_sdk::trace::current_traceparent().unwrap_or_default(),
        };
        let gone = || FunctionError::unavailable(format!("the worker serving {function} is gone"));
        match self.calls.lock().expect("calls lock").as_mut() {
            Some(calls) => calls.insert(id, (done, ctx, tracing::Span::current())),
            None => return Err(gone()),
        };
        // However this ends (answered, refused, or dropped at the function's timeout), the
        // call is forgotten: a late answer finds nothing.
        let _forget = Forget { attached: self, id };
        let message = ToWorker {
            kind: Some(to_worker::Kind::Call(call)),
        };
        if self.tx.send(Ok(message)).await.is_err() {
            return Err(gone());
        }
        result.await.unwrap_or_else(|_| Err(gone()))
    }

    fn ctx_of(&self, call: u64) -> Option<(Ctx, tracing::Span)> {
        self.calls
            .lock()
            .expect("calls lock")
            .as_ref()?
            .get(&call)
            .map(|(_, ctx, span)| (ctx.clone(), span.clone()))
    }
}

/// Removes a running call from its worker's table when dropped.
struct Forget<'a> {
    attached: &'a Attached,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(calls) = self.attached.calls.lock().expect("calls lock").as_mut() {
            calls.remove(&self.id);
        }
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
        self.tokens
            .check_grpc(request.metadata(), &crate::auth::Need::Worker)
            .await?;
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
            calls: Mutex::new(Some(HashMap::new())),
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
                retries: spec.retries,
                backoff: match spec.backoff_ms {
                    0 => defaults.backoff,
                    ms => Duration::from_millis(ms),
                },
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
                            .as_mut()
                            .and_then(|calls| calls.remove(&done.call));
                        if let Some((result, _, _)) = waiting {
                            let _ = result.send(call_result(done.result));
                        }
                    }
                    Some(from_worker::Kind::Request(req)) => {
                        let Some((ctx, span)) = attached.ctx_of(req.call) else {
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
                        let serving = async move {
                            let reply = wpb::Reply {
                                request: req.request,
                                result: Some(serve(&ctx, req.op).await),
                            };
                            let _ = tx.send(Ok(to_worker_reply(reply))).await;
                        };
                        tokio::spawn(tracing::Instrument::instrument(serving, span));
                    }
                    Some(from_worker::Kind::Register(_)) | None => {}
                }
            }
            // The worker is gone: its running calls fail, its functions fail fast.
            registry.worker_gone(&worker, &names);
            let running = attached
                .calls
                .lock()
                .expect("calls lock")
                .take()
                .unwrap_or_default();
            for (_, (result, _, _)) in running {
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
            let cond = Cond::chained(Tag(cond.tag), cond.position, cond.token, cond.after);
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
        request::Op::Invoke(i) => {
            let key = i.idempotency_key.as_deref();
            match ctx.call(&i.function, i.input, key).await {
                Ok(output) => R::Output(output),
                Err(e) => R::Failure(failure(&e)),
            }
        }
        request::Op::InvokeAsync(i) => {
            let started = match (&i.idempotency_key, i.not_before_ms) {
                (Some(key), Some(at)) => {
                    ctx.invoke_async_keyed_at(&i.function, key, i.input, at)
                        .await
                }
                (Some(key), None) => ctx.invoke_async_keyed(&i.function, key, i.input).await,
                (None, _) => ctx.invoke_async(&i.function, i.input).await,
            };
            match started {
                Ok(id) => R::InvocationId(id),
                Err(e) => R::Failure(failure(&e)),
            }
        }
    }
}
