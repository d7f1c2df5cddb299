//! The log client protocol's server (`proto/log.proto`, service `Log`): pipelined appends and
//! tailing reads over gRPC streams, for producers and consumers outside functions. It serves
//! any `LogBook`: `tally up`'s and a cluster gateway's, beside the worker protocol.

use crate::auth::{Grant, Need, Refusal, Tokens};
use crate::runtime::GatewayLog;
use futures::StreamExt as _;
use logbook::rpc::log_pb::log_server::{Log, LogServer};
use logbook::rpc::log_pb::{AppendReply, AppendRequest, ReadRecord, ReadReply, ReadRequest};
use logbook::{AppendRequest as Append, BookId, LogBook, LogError, ReadRange, Seqnum, Tag};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// Replies an append stream may hold unsent before its appends wait for the client to read.
const REPLIES_BUFFERED: usize = 1024;
/// Appends one stream may have in flight; past it the stream reads no more requests until one
/// completes, so a client that sends faster than the log appends is slowed, not buffered.
pub const IN_FLIGHT_MAX: usize = 4096;
/// Records one read reply carries, at most.
const READ_BATCH: usize = 256;
/// How long a following read waits for a record before it looks again.
const FOLLOW_WAIT: Duration = Duration::from_secs(5);

/// The `Log` service over a log.
pub struct LogService {
    log: Arc<dyn LogBook>,
    /// The gateway's log, whose coverage reads with `seen_end` wait for; none for a log that
    /// is always up to date with itself.
    engine: Option<Arc<GatewayLog>>,
    tokens: Arc<crate::auth::Tokens>,
}

impl LogService {
    /// Once tokens are asked for, a stream needs one (`authorization` metadata): reads need
    /// `read` on their book, each append `append` on its own.
    pub fn new(
        log: Arc<dyn LogBook>,
        engine: Option<Arc<GatewayLog>>,
        tokens: Arc<crate::auth::Tokens>,
    ) -> LogServer<LogService> {
        LogServer::new(LogService {
            log,
            engine,
            tokens,
        })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }
}

/// A book a client may use: not the one invocations are kept in.
fn user_book(book: u32) -> Result<BookId, LogError> {
    crate::invocations::user_book(BookId(book)).map_err(LogError::BadArgument)
}

/// Appends one request's records (one record alone, several as a batch), if `grant` covers
/// the book.
async fn append(
    log: &dyn LogBook,
    tokens: &Tokens,
    grant: &Option<Grant>,
    request: AppendRequest,
) -> Result<Vec<u64>, LogError> {
    let book = user_book(request.book)?;
    tokens
        .permit(grant, &Need::Append(book))
        .map_err(|refusal| {
            let retryable = matches!(refusal, Refusal::RateLimited { .. });
            let message = refusal.into_status().message().to_string();
            // Past its rate an append may succeed later; out of its scopes, never.
            if retryable {
                LogError::Unavailable(message)
            } else {
                LogError::BadArgument(message)
            }
        })?;
    let mut records: Vec<Append> = request
        .records
        .into_iter()
        .map(|r| Append::new(r.tags.into_iter().map(Tag).collect::<Vec<_>>(), r.data))
        .collect();
    let seqnums = match records.len() {
        0 => return Err(LogError::BadArgument("an append of no records".into())),
        1 => {
            let record = records.pop().expect("one record");
            vec![log.append(book, &record.tags, record.data).await?]
        }
        _ => log.append_batch(book, records).await?,
    };
    Ok(seqnums.into_iter().map(|s| s.0).collect())
}

type ReplyStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Log for LogService {
    type AppendStream = ReplyStream<AppendReply>;
    type ReadStream = ReplyStream<ReadReply>;

    async fn append(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStream>, Status> {
        let grant = self
            .tokens
            .check_grpc(request.metadata(), &Need::AnyToken)
            .await?;
        let grant = Arc::new(grant);
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(REPLIES_BUFFERED);
        let log = self.log.clone();
        let tokens = self.tokens.clone();
        tokio::spawn(async move {
            // Every request is appended at once, so many are in flight; each answers when done.
            let mut running = futures::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    next = requests.next(), if running.len() < IN_FLIGHT_MAX => match next {
                        Some(Ok(request)) => {
                            let log = log.clone();
                            let grant = grant.clone();
                            let tokens = tokens.clone();
                            running.push(async move {
                                let id = request.id;
                                match append(&*log, &tokens, &grant, request).await {
                                    Ok(seqnums) => AppendReply { id, seqnums, ..Default::default() },
                                    Err(e) => AppendReply {
                                        id,
                                        seqnums: Vec::new(),
                                        error: e.to_string(),
                                        retryable: e.is_retryable(),
                                    },
                                }
                            });
                        }
                        // The client closed its side or broke: finish what runs, then end.
                        _ => break,
                    },
                    Some(reply) = running.next(), if !running.is_empty() => {
                        if tx.send(Ok(reply)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            while let Some(reply) = running.next().await {
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let book = user_book(request.get_ref().book)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.tokens
            .check_grpc(request.metadata(), &Need::Read(book))
            .await?;
        let request = request.into_inner();
        let seen = request.seen_end.checked_sub(1).map(Seqnum);
        crate::runtime::catch_up(self.engine.as_deref(), seen)
            .await
            .map_err(status_of)?;
        let tag = Tag(request.tag);
        let (tx, rx) = mpsc::channel(4);
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut from = Seqnum(request.from);
            loop {
                let range = ReadRange {
                    from,
                    to: Seqnum::MAX,
                    limit: READ_BATCH,
                };
                let records = match log.read_range(book, tag, range).await {
                    Ok(records) if records.is_empty() && request.follow => {
                        match log.read_next_blocking(book, tag, from, FOLLOW_WAIT).await {
                            Ok(Some(record)) => vec![record],
                            Ok(None) if tx.is_closed() => return,
                            Ok(None) => continue,
                            Err(e) => {
                                let _ = tx.send(Err(status_of(e))).await;
                                return;
                            }
                        }
                    }
                    Ok(records) if records.is_empty() => return,
                    Ok(records) => records,
                    Err(e) => {
                        let _ = tx.send(Err(status_of(e))).await;
                        return;
                    }
                };
                from = Seqnum(records.last().expect("not empty").seqnum.0 + 1);
                let reply = ReadReply {
                    records: records
                        .into_iter()
                        .map(|r| ReadRecord {
                            seqnum: r.seqnum.0,
                            tags: r.tags.into_iter().map(|t| t.0).collect(),
                            data: r.data,
                        })
                        .collect(),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A read's failure as a gRPC status: retryable ones as UNAVAILABLE.
fn status_of(e: LogError) -> Status {
    if e.is_retryable() {
        Status::unavailable(e.to_string())
    } else {
        Status::invalid_argument(e.to_string())
    }
}
