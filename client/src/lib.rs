//! A client of Tally's log protocol (`logbook/proto/log.proto`): appends and tailing reads
//! over gRPC, for producers and consumers outside functions. One connection carries every
//! append in flight, each answered as soon as it is durable and ordered; a read streams the
//! records of one stream of a book and, when asked, follows it as records are appended.
//!
//! `tally up` serves the protocol on the address it prints as "the log protocol at" (its
//! `--worker-addr`, 127.0.0.1:8081 by default); a cluster gateway on its `workers` address.
//!
//! ```no_run
//! # async fn f() -> Result<(), tally_client::Error> {
//! use futures::StreamExt as _;
//! use logbook::{BookId, Tag};
//! use tally_client::LogClient;
//!
//! let log = LogClient::connect("127.0.0.1:8081").await?;
//! let first = log.append(BookId(1), &[Tag(7)], "hello").await?;
//! // Appends from many tasks share the connection; each waits only for its own answer.
//! let (a, b) = tokio::join!(
//!     log.append(BookId(1), &[Tag(7)], "a"),
//!     log.append_batch(BookId(1), vec![(vec![Tag(7)], "b".into()), (vec![Tag(7)], "c".into())]),
//! );
//! let mut records = log.read(BookId(1), Tag(7)).from(first).await?;
//! while let Some(record) = records.next().await {
//!     let record = record?;
//!     println!("{} {:?}", record.seqnum.0, record.data);
//! }
//! // Every record of the book from here on, waiting at the tail for new ones.
//! let mut tail = log.read(BookId(1), Tag::ANY).from(first).follow().await?;
//! # let _ = (a, b, tail.next().await); Ok(()) }
//! ```
//!
//! A gateway that asks for API tokens takes one with `LogClient::connect_with_token` (scopes
//! `read` and `append` on the books used; `tally token create`).
//!
//! A client's reads see its own appends at any gateway of a cluster: a read starts once the
//! gateway's log covers the newest seqnum this client has seen. To see another client's
//! appends, pass its `seen()` to `Read::seen`.

use bytes::Bytes;
use futures::StreamExt as _;
use logbook::rpc::log_pb::log_client::LogClient as Grpc;
use logbook::rpc::log_pb::{AppendRecord, AppendReply, AppendRequest, ReadRequest};
use logbook::{BookId, Seqnum, Tag};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

/// Appends a connection queues before `append` waits for room.
const QUEUED_MAX: usize = 4096;
/// How long `connect` tries to reach the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest message either side sends (a batch of records, a read reply).
const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// What can go wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// The log refused or failed the append; none of its records is in the log.
    #[error("append failed: {message}")]
    Append { message: String, retryable: bool },
    /// The connection ended while appends were in flight: each may or may not be in the log.
    #[error("the connection to {addr} ended: {message}")]
    Disconnected { addr: String, message: String },
    /// A read failed (a bad book, or the log is not serving).
    #[error("read failed: {message}")]
    Read { message: String, retryable: bool },
}

impl Error {
    /// Whether the same call may succeed when made again (on this client, or for
    /// `Disconnected`, on a new one; an append whose connection ended may then be in the log
    /// twice).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Disconnected { .. } => true,
            Error::Append { retryable, .. } | Error::Read { retryable, .. } => *retryable,
        }
    }
}

/// A record as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seqnum: Seqnum,
    pub tags: Vec<Tag>,
    pub data: Bytes,
}

/// Appends waiting for their answer, by request id; once the connection ended, why.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Vec<Seqnum>, Error>>>,
    ended: Option<String>,
}

/// A connection to a Tally log. Cheap to share (`Arc`) between tasks: appends from all of them
/// go out on the one append stream and are answered independently.
pub struct LogClient {
    addr: String,
    grpc: Grpc<Channel>,
    appends: mpsc::Sender<AppendRequest>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    /// One past the newest seqnum this client has seen (appended or read); 0: none.
    seen_end: Arc<AtomicU64>,
    /// `Bearer <token>`, sent with every call, if a token was given.
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl LogClient {
    /// Connects to the log protocol at `addr` (`host:port` or `http://host:port`).
    pub async fn connect(addr: &str) -> Result<LogClient, Error> {
        LogClient::connect_with_token(addr, None).await
    }

    /// Connects as `connect` does, sending `token` (an API token, `tly_...`) with every call
    /// when given.
    pub async fn connect_with_token(addr: &str, token: Option<&str>) -> Result<LogClient, Error> {
        LogClient::connect_with(addr, token, None).await
    }

    /// Connects as `connect_with_token` does, over mutual TLS when `tls` is given (showing its
    /// certificate, trusting its CA alone): what a gateway whose node has a `[tls]` section
    /// asks of log clients.
    pub async fn connect_with(
        addr: &str,
        token: Option<&str>,
        tls: Option<&logbook::rpc::ClientTls>,
    ) -> Result<LogClient, Error> {
        let uri = logbook::rpc::grpc_uri(addr, tls.is_some());
        let connect_error = |message: String| Error::Connect {
            addr: addr.to_string(),
            message,
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| connect_error(root_cause(&e)))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_error(root_cause(&e)))?;
        let mut grpc = Grpc::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let authorization = match token {
            None => None,
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse::<tonic::metadata::AsciiMetadataValue>()
                    .map_err(|_| {
                        connect_error(
                            "the token holds characters gRPC metadata cannot carry".into(),
                        )
                    })?,
            ),
        };
        let (appends, requests) = mpsc::channel(QUEUED_MAX);
        let mut stream = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
        authorize(&mut stream, &authorization);
        let replies = grpc
            .append(stream)
            .await
            .map_err(|e| connect_error(e.message().to_string()))?
            .into_inner();
        let pending = Arc::new(Mutex::new(Pending::default()));
        tokio::spawn(answer(replies, pending.clone()));
        Ok(LogClient {
            addr: addr.to_string(),
            grpc,
            appends,
            pending,
            next_id: AtomicU64::new(0),
            seen_end: Arc::new(AtomicU64::new(0)),
            authorization,
        })
    }

    /// Appends one record to `book` under `tags`; returns its seqnum once it is durable and
    /// ordered.
    pub async fn append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: impl Into<Bytes>,
    ) -> Result<Seqnum, Error> {
        let seqnums = self.send(book, vec![(tags.to_vec(), data.into())]).await?;
        Ok(seqnums[0])
    }

    /// Appends several records as one batch, in order, all or none; returns their seqnums.
    pub async fn append_batch(
        &self,
        book: BookId,
        records: Vec<(Vec<Tag>, Bytes)>,
    ) -> Result<Vec<Seqnum>, Error> {
        self.send(book, records).await
    }

    async fn send(
        &self,
        book: BookId,
        records: Vec<(Vec<Tag>, Bytes)>,
    ) -> Result<Vec<Seqnum>, Error> {
        let count = records.len();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if let Some(message) = &pending.ended {
                return Err(self.disconnected(message.clone()));
            }
            pending.waiting.insert(id, done);
        }
        let request = AppendRequest {
            id,
            book: book.0,
            records: records
                .into_iter()
                .map(|(tags, data)| AppendRecord {
                    tags: tags.into_iter().map(|t| t.0).collect(),
                    data,
                })
                .collect(),
        };
        if self.appends.send(request).await.is_err() {
            self.pending
                .lock()
                .expect("pending lock")
                .waiting
                .remove(&id);
            return Err(self.disconnected("the append stream is closed".into()));
        }
        let seqnums = match answer.await {
            Ok(answer) => answer?,
            Err(_) => {
                let ended = self.pending.lock().expect("pending lock").ended.clone();
                return Err(self.disconnected(ended.unwrap_or_else(|| "no answer came".into())));
            }
        };
        if seqnums.len() != count {
            return Err(Error::Append {
                message: format!("{} seqnums for {count} records", seqnums.len()),
                retryable: false,
            });
        }
        if let Some(last) = seqnums.iter().max() {
            self.seen_end.fetch_max(last.0 + 1, Ordering::Relaxed);
        }
        Ok(seqnums)
    }

    /// A read of `tag`'s stream of `book` (`Tag::ANY`: every record of the book): from its
    /// start, to its tail, unless the returned `Read` says otherwise; awaiting it opens the
    /// stream of records, in order.
    pub fn read(&self, book: BookId, tag: Tag) -> Read<'_> {
        Read {
            client: self,
            request: ReadRequest {
                book: book.0,
                tag: tag.0,
                from: 0,
                follow: false,
                seen_end: 0,
            },
        }
    }

    /// The newest seqnum this client has seen, appended or read: pass it to another client's
    /// `Read::seen` so that its read sees everything this one did.
    pub fn seen(&self) -> Option<Seqnum> {
        self.seen_end
            .load(Ordering::Relaxed)
            .checked_sub(1)
            .map(Seqnum)
    }

    fn disconnected(&self, message: String) -> Error {
        Error::Disconnected {
            addr: self.addr.clone(),
            message,
        }
    }
}

/// A read being set up (`LogClient::read`); awaiting it opens the stream of records.
#[must_use = "a read starts when awaited"]
pub struct Read<'a> {
    client: &'a LogClient,
    request: ReadRequest,
}

impl Read<'_> {
    /// Starts at the first record at or after `seqnum` (by default the stream's first).
    pub fn from(mut self, seqnum: Seqnum) -> Self {
        self.request.from = seqnum.0;
        self
    }

    /// Waits at the tail for records appended later: the stream never ends by itself.
    pub fn follow(mut self) -> Self {
        self.request.follow = true;
        self
    }

    /// Starts only once the gateway's log covers `seqnum` (another client's `seen()`), as well
    /// as everything this client has seen.
    pub fn seen(mut self, seqnum: Seqnum) -> Self {
        self.request.seen_end = self.request.seen_end.max(seqnum.0 + 1);
        self
    }
}

impl<'a> std::future::IntoFuture for Read<'a> {
    type Output = Result<futures::stream::BoxStream<'static, Result<Record, Error>>, Error>;
    type IntoFuture = futures::future::BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Read {
                client,
                mut request,
            } = self;
            let seen = client.seen_end.clone();
            request.seen_end = request.seen_end.max(seen.load(Ordering::Relaxed));
            let mut request = tonic::Request::new(request);
            authorize(&mut request, &client.authorization);
            let replies = client
                .grpc
                .clone()
                .read(request)
                .await
                .map_err(read_error)?
                .into_inner();
            Ok(replies
                .flat_map(move |reply| {
                    let records: Vec<Result<Record, Error>> = match reply {
                        Ok(reply) => reply
                            .records
                            .into_iter()
                            .map(|r| {
                                seen.fetch_max(r.seqnum + 1, Ordering::Relaxed);
                                Ok(Record {
                                    seqnum: Seqnum(r.seqnum),
                                    tags: r.tags.into_iter().map(Tag).collect(),
                                    data: r.data,
                                })
                            })
                            .collect(),
                        Err(status) => vec![Err(read_error(status))],
                    };
                    futures::stream::iter(records)
                })
                .boxed())
        })
    }
}

/// Hands each reply to the append waiting for it; when the stream ends, fails every append
/// still waiting and every later one.
async fn answer(mut replies: tonic::Streaming<AppendReply>, pending: Arc<Mutex<Pending>>) {
    let ended = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let waiting = pending
                    .lock()
                    .expect("pending lock")
                    .waiting
                    .remove(&reply.id);
                let Some(waiting) = waiting else { continue };
                let answer = if reply.error.is_empty() {
                    Ok(reply.seqnums.into_iter().map(Seqnum).collect())
                } else {
                    Err(Error::Append {
                        message: reply.error,
                        retryable: reply.retryable,
                    })
                };
                let _ = waiting.send(answer);
            }
            Ok(None) => break "the server ended the append stream".to_string(),
            Err(status) => break status.message().to_string(),
        }
    };
    let mut pending = pending.lock().expect("pending lock");
    pending.ended = Some(ended);
    // Dropping the senders fails their appends with `Disconnected`.
    pending.waiting.clear();
}

fn read_error(status: tonic::Status) -> Error {
    Error::Read {
        message: status.message().to_string(),
        retryable: status.code() == tonic::Code::Unavailable,
    }
}

/// The innermost cause of a connection error ("Connection refused"), which says the most.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Puts `authorization` into `request`'s metadata, if there is one.
fn authorize<T>(
    request: &mut tonic::Request<T>,
    authorization: &Option<tonic::metadata::AsciiMetadataValue>,
) {
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
}
