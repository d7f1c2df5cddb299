//! In-process connections between roles that share a process (`tally node`). A role's gRPC
//! server takes connections from its TCP listener and, when its address was hosted here
//! (`host`), from the other roles of the process, which reach it through an in-memory pipe
//! instead of the kernel's loopback: the same gRPC calls, without a socket, a syscall or a
//! context switch per message. Roles in other processes dial the TCP address as before.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

/// Bytes one direction of an in-process connection buffers before the writer waits.
const PIPE_BYTES: usize = 1 << 20;

/// The servers of this process: by every name they are dialled under, where their
/// connections go; by their listen address, until the server takes it, where they arrive.
#[derive(Default)]
struct Hosted {
    dial: HashMap<String, mpsc::UnboundedSender<DuplexStream>>,
    accept: HashMap<String, mpsc::UnboundedReceiver<DuplexStream>>,
}

fn hosted() -> std::sync::MutexGuard<'static, Hosted> {
    static HOSTED: OnceLock<Mutex<Hosted>> = OnceLock::new();
    HOSTED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The form addresses are compared in: without a scheme, and a socket address in its
/// canonical form (`127.0.0.1:7000`), so `http://127.0.0.1:7000` names the same server.
fn key(addr: &str) -> String {
    let bare = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr)
        .trim_end_matches('/');
    match bare.parse::<std::net::SocketAddr>() {
        Ok(socket) => socket.to_string(),
        Err(_) => bare.to_string(),
    }
}

/// Makes the server that will listen at `listen` one of this process: connections from this
/// process to `listen` or to any of `names` (the addresses the cluster dials it at) go through
/// memory once it runs (`incoming`); until then they wait. Called before any role of the
/// process dials, so no role caches a TCP channel to a neighbour.
pub fn host(listen: &str, names: &[String]) {
    let (connect, accept) = mpsc::unbounded_channel();
    let mut hosted = hosted();
    for name in names.iter().map(String::as_str).chain([listen]) {
        hosted.dial.insert(key(name), connect.clone());
    }
    hosted.accept.insert(key(listen), accept);
}

/// Whether `addr` is served in this process.
pub fn is_hosted(addr: &str) -> bool {
    hosted().dial.contains_key(&key(addr))
}

/// A connector for `addr` when it is served in this process; `None` otherwise.
pub fn connector(addr: &str) -> Option<Connector> {
    let hosted = hosted();
    hosted
        .dial
        .get(&key(addr))
        .map(|to| Connector { to: to.clone() })
}

/// Dials a server of this process: each call is a new in-memory connection.
#[derive(Clone)]
pub struct Connector {
    to: mpsc::UnboundedSender<DuplexStream>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<DuplexStream>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (client, server) = tokio::io::duplex(PIPE_BYTES);
        std::future::ready(match self.to.send(server) {
            Ok(()) => Ok(hyper_util::rt::TokioIo::new(client)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the in-process server stopped",
            )),
        })
    }
}

/// One connection a role's server accepted: over TCP, or from a role of this process.
pub enum Conn {
    Tcp(tokio::net::TcpStream),
    /// Over TCP with mutual TLS (`super::tls`): the client showed a certificate of the CA.
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
    Local(DuplexStream),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Local(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Local(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Local(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Local(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Local(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
            Conn::Local(s) => s.is_write_vectored(),
        }
    }
}

/// The connections a role's server at `listen` accepts: from `listener` (Nagle off; with this
/// process's TLS installed, only those whose TLS handshake shows a certificate of the CA), and
/// from this process when `listen` was hosted here (in memory, without TLS).
pub fn incoming(
    listener: tokio::net::TcpListener,
    listen: &str,
) -> impl futures::Stream<Item = std::io::Result<Conn>> + Send + 'static {
    use futures::StreamExt as _;
    let tcp = match super::tls::installed() {
        Some(tls) => tls_incoming(listener, tls.acceptor()).boxed(),
        None => super::incoming(listener)
            .map(|conn| conn.map(Conn::Tcp))
            .boxed(),
    };
    let local = hosted().accept.remove(&key(listen));
    let local = match local {
        Some(accept) => tokio_stream::wrappers::UnboundedReceiverStream::new(accept)
            .map(|pipe| Ok(Conn::Local(pipe)))
            .boxed(),
        None => futures::stream::empty().boxed(),
    };
    futures::stream::select(tcp, local)
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The TCP connections of `listener` whose TLS handshake succeeds, each handshake on its own
/// task (a slow one holds up no other). A refused one is said in the log, with why.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl futures::Stream<Item = std::io::Result<Conn>> + Send + 'static {
    use futures::StreamExt as _;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut tcp = super::incoming(listener);
        while let Some(conn) = tcp.next().await {
            let stream = match conn {
                Ok(stream) => stream,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(e)) => refused(peer, &e.to_string()),
                    Err(_) => refused(peer, "no TLS handshake within 10 s"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Says in the log that a connection was refused, at most once every few seconds (with how
/// many were refused since), so that a stranger's retries do not flood it.
fn refused(peer: Option<std::net::SocketAddr>, why: &str) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    static LAST: Mutex<Option<(std::time::Instant, u64)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match &mut *last {
        Some((at, quiet)) if at.elapsed() < EVERY => *quiet += 1,
        _ => {
            let quiet = match last.as_ref().map_or(0, |(_, quiet)| *quiet) {
                0 => String::new(),
                n => format!("; {n} more refused since the last such line"),
            };
            let peer = peer.map_or("?".to_string(), |p| p.to_string());
            tracing::warn!(
                %peer,
                "refused a connection: {why} (the cluster's roles take clients with a certificate of its CA only{quiet})"
            );
            *last = Some((std::time::Instant::now(), 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_without_scheme_and_in_canonical_form() {
        assert_eq!(key("http://127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(key("127.0.0.1:7000/"), "127.0.0.1:7000");
        assert_eq!(key("https://[::1]:7000"), "[::1]:7000");
        assert_eq!(key("node-1:7000"), "node-1:7000");
    }

    /// A gRPC server hosted in this process answers a client of this process that dials its
    /// address, although nothing listens on that address over TCP.
    #[tokio::test]
    async fn a_hosted_server_answers_through_memory_without_tcp() {
        use logbook::rpc::pb;
        use logbook::rpc::pb::storage_server::{Storage, StorageServer};

        struct Answers;
        #[tonic::async_trait]
        impl Storage for Answers {
            type ReplicateStream =
                futures::stream::BoxStream<'static, Result<pb::ReplicateAck, tonic::Status>>;
            async fn replicate(
                &self,
                _: tonic::Request<tonic::Streaming<pb::ReplicateBatch>>,
            ) -> Result<tonic::Response<Self::ReplicateStream>, tonic::Status> {
                Err(tonic::Status::unimplemented("replicate"))
            }
            async fn fetch(
                &self,
                _: tonic::Request<pb::FetchRequest>,
            ) -> Result<tonic::Response<pb::FetchReply>, tonic::Status> {
                Err(tonic::Status::unimplemented("fetch"))
            }
            async fn fetch_index(
                &self,
                _: tonic::Request<pb::FetchIndexRequest>,
            ) -> Result<tonic::Response<pb::FetchIndexReply>, tonic::Status> {
                Err(tonic::Status::unimplemented("fetch_index"))
            }
            async fn status(
                &self,
                _: tonic::Request<pb::StatusRequest>,
            ) -> Result<tonic::Response<pb::StatusReply>, tonic::Status> {
                Ok(tonic::Response::new(pb::StatusReply {
                    json: "\"in memory\"".into(),
                }))
            }
            async fn sealed_segments(
                &self,
                _: tonic::Request<pb::SealedSegmentsRequest>,
            ) -> Result<tonic::Response<pb::SealedSegmentsReply>, tonic::Status> {
                Err(tonic::Status::unimplemented("sealed_segments"))
            }
            async fn segment_payloads(
                &self,
                _: tonic::Request<pb::SegmentPayloadsRequest>,
            ) -> Result<tonic::Response<pb::SegmentPayloadsReply>, tonic::Status> {
                Err(tonic::Status::unimplemented("segment_payloads"))
            }
            async fn compact(
                &self,
                _: tonic::Request<pb::CompactRequest>,
            ) -> Result<tonic::Response<pb::CompactReply>, tonic::Status> {
                Err(tonic::Status::unimplemented("compact"))
            }
        }

        // A TCP listener for the server, and a name for it in-process that nothing serves
        // over TCP (port 1 on loopback refuses connections).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap().to_string();
        let addr = "127.0.0.1:1".to_string();
        host(&listen, std::slice::from_ref(&addr));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(StorageServer::new(Answers))
                .serve_with_incoming(incoming(listener, &listen)),
        );
        let mut client =
            pb::storage_client::StorageClient::new(super::super::channel(&addr).unwrap());
        let reply = client.status(pb::StatusRequest {}).await.unwrap();
        assert_eq!(reply.into_inner().json, "\"in memory\"");
    }
}
