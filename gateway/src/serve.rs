//! Serving the HTTP API with limits against slow and greedy clients: a bound on open
//! connections (past it a connection is answered 503 and closed), a time to send a request's
//! headers (hyper's header read timeout: the connection is closed), a time to send its body
//! (408), and a time a connection may sit idle between requests (closed). Every answer is the
//! API's JSON error shape.

use crate::http::{ApiError, REQUEST_BODY_BYTES_MAX};
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to send a request's headers, by default.
pub const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body, by default.
pub const BODY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long a connection may sit idle between requests, by default.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Connections a gateway keeps open at once, by default.
pub const CONNECTIONS_MAX_DEFAULT: usize = 8192;

/// The limits a gateway serves its HTTP API with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub connections_max: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_timeout: HEADER_TIMEOUT_DEFAULT,
            body_timeout: BODY_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

impl HttpLimits {
    /// Refuses zero timeouts and a zero connection bound.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in [
            ("header timeout", self.header_timeout),
            ("body timeout", self.body_timeout),
            ("idle timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("the {name} must be above 0"));
            }
        }
        if self.connections_max == 0 {
            return Err("the connection limit must be at least 1".into());
        }
        Ok(())
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves; then stops accepting
/// and lets each open connection finish the request it is on.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(limits, read_body));
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors or the like: wait a moment rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, limits.connections_max));
            continue;
        };
        let app = app.clone();
        let closing = closing.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(stream, app, limits, closing).await,
                Some(tls) => {
                    // The handshake within the header timeout, as a request's headers.
                    let handshake = tokio::time::timeout(limits.header_timeout, tls.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => connection(stream, app, limits, closing).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "a TLS handshake failed"),
                        Err(_) => tracing::debug!("a TLS handshake timed out"),
                    }
                }
            }
        });
    }
    let _ = closing_tx.send(true);
    // Wait for the connections to finish what they are on, each holding a slot.
    let _ = slots.acquire_many(limits.connections_max as u32).await;
    Ok(())
}

/// Serves one connection's requests until it ends, or ends it gracefully once `closing`.
async fn connection<S>(
    stream: S,
    app: Router,
    limits: HttpLimits,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let busy = Arc::new(AtomicUsize::new(0));
    let io = TokioIo::new(IdleStream::new(stream, limits.idle_timeout, busy.clone()));
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let guard = Busy::new(busy.clone());
        let app = app.clone();
        async move {
            let response = tower::ServiceExt::oneshot(app, request.map(Body::new)).await;
            drop(guard);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let closed = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    tokio::select! {
        _ = connection.as_mut() => {}
        () = closed => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The TLS side of a gateway's HTTPS: its certificate chain and private key, PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    let config = tls_server_config(cert, key, None, &[b"http/1.1"])?;
    Ok(TlsAcceptor::from(config))
}

/// A TLS server's settings from PEM files: its certificate chain and private key, and with
/// `client_ca`, a certificate asked of every client and checked against that CA (mutual TLS).
/// `alpn`: the protocols it speaks (`h2` for gRPC).
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use anyhow::Context as _;
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let chain = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let private = rustls_pemfile::private_key(&mut &read(key)?[..])
        .with_context(|| format!("{}: not a PEM private key", key.display()))?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for root in rustls_pemfile::certs(&mut &read(ca)?[..]) {
                let root =
                    root.with_context(|| format!("{}: not PEM certificates", ca.display()))?;
                roots
                    .add(root)
                    .with_context(|| format!("{}: not a CA certificate", ca.display()))?;
            }
            anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", ca.display());
            let verifier =
                tokio_rustls::rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .with_context(|| format!("checking clients against {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, private).with_context(|| {
        format!(
            "{} and {} do not make a certificate and its key",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Answers a connection past the limit with a 503 in the API's JSON shape and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": format!("this gateway keeps {max} connections open at most; try again"),
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Reads a request's body within the body timeout (408 past it) before the handler sees it.
async fn read_body(
    axum::extract::State(limits): axum::extract::State<HttpLimits>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // One byte past the limit, so the handler's own check still answers a body too large.
    let read = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX + 1);
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let too_large = e
                .into_inner()
                .downcast::<http_body_util::LengthLimitError>()
                .is_ok();
            return if too_large {
                let message = format!("request body exceeds {REQUEST_BODY_BYTES_MAX} bytes");
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body broke off",
                )
            }
            .into_response();
        }
        Err(_) => {
            let message = format!(
                "the request body did not arrive within {} ms",
                limits.body_timeout.as_millis()
            );
            let mut response =
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
                    .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Counts a request under way on its connection while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(count)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection that fails its reads once it has had no request under way and received
/// nothing for `idle`: hyper then closes it.
struct IdleStream<S> {
    inner: S,
    idle: Duration,
    busy: Arc<AtomicUsize>,
    timer: Pin<Box<Sleep>>,
}

impl<S> IdleStream<S> {
    fn new(inner: S, idle: Duration, busy: Arc<AtomicUsize>) -> IdleStream<S> {
        IdleStream {
            inner,
            idle,
            busy,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn rearm(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle;
        self.timer.as_mut().reset(deadline);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.rearm();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if self.busy.load(Ordering::SeqCst) > 0 {
                    // A request is under way: the idle time starts after it.
                    self.rearm();
                    return Poll::Pending;
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the connection was idle too long",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
