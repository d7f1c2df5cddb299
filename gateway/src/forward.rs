//! Calls of functions this gateway does not serve, sent to a peer gateway that does (a worker
//! attached elsewhere, say). The peer gets the call over its HTTP API with the caller's book,
//! idempotency key, call depth and this gateway's log progress (`X-Tally-Seen`), so the callee
//! sees every record the caller could; it never forwards the call again. Once tokens are asked
//! for, the call carries this gateway's own `peer` token (`auth::Tokens::peer_token`): the
//! caller's token, if any, was checked here.

use crate::invocations::Peers;
use bytes::Bytes;
use logbook::{BookId, Seqnum};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Marks a forwarded call: the receiving gateway runs it or answers 404, never forwards it.
pub const FORWARDED_HEADER: &str = "x-tally-forwarded";
/// How many calls a forwarded call is nested in.
pub const DEPTH_HEADER: &str = "x-tally-depth";
/// How long connecting to a peer may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A peer's answer to a forwarded call.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// `X-Tally-Invocation` (synchronous) or the `id` of the 202 (asynchronous).
    pub id: Option<String>,
    pub seen: Option<Seqnum>,
}

impl Answer {
    /// The `{"error": {"code", "message"}}` of a failed call, if it has that shape.
    pub fn error(&self) -> Option<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        let e = &v["error"];
        Some((
            e["code"].as_str()?.to_string(),
            e["message"].as_str()?.to_string(),
        ))
    }
}

/// One call to forward.
pub struct Call<'a> {
    pub function: &'a str,
    pub book: BookId,
    pub input: Bytes,
    pub key: Option<&'a str>,
    pub depth: u32,
    pub asynchronous: bool,
}

/// Sends calls to peers; remembers which peer served a function last.
pub struct Forwarder {
    http: reqwest::Client,
    peers: watch::Receiver<Peers>,
    /// The highest seqnum this gateway has applied, if any: what the callee must see.
    progress: Arc<dyn Fn() -> Option<Seqnum> + Send + Sync>,
    /// Function name to the base URL of the peer that served it last.
    known: Mutex<HashMap<String, String>>,
    tokens: Arc<crate::auth::Tokens>,
}

impl Forwarder {
    pub fn new(
        peers: watch::Receiver<Peers>,
        progress: Arc<dyn Fn() -> Option<Seqnum> + Send + Sync>,
        tokens: Arc<crate::auth::Tokens>,
        peer_ca: Option<reqwest::Certificate>,
    ) -> Forwarder {
        let mut http = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        // Peers that serve HTTPS have certificates of the cluster's CA, trusted alone.
        if let Some(ca) = peer_ca {
            http = http
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
        }
        let http = http
            .build()
            .expect("an HTTP client of these settings builds");
        Forwarder {
            http,
            peers,
            progress,
            known: Mutex::new(HashMap::new()),
            tokens,
        }
    }

    /// Sends `call` to the peers in turn, the one that served the function last first, until
    /// one serves it. `None`: no peer does (or there is none); `Some(Err)`: the peers that might
    /// could not be reached.
    pub async fn call(&self, call: Call<'_>) -> Option<Result<Answer, String>> {
        let mut peers: Vec<String> = {
            let p = self.peers.borrow();
            p.live
                .iter()
                .filter(|(name, addr)| **name != p.me && !addr.is_empty())
                .map(|(_, addr)| addr.trim_end_matches('/').to_string())
                .collect()
        };
        let known = self.known().get(call.function).cloned();
        if let Some(known) = known {
            if let Some(at) = peers.iter().position(|p| *p == known) {
                let first = peers.remove(at);
                peers.insert(0, first);
            }
        }
        let mut unreachable = None;
        for peer in peers {
            match self.send(&peer, &call).await {
                Ok(answer) if answer.status == 404 => {
                    // Not served there (or gone since): try the next.
                    if answer
                        .error()
                        .is_some_and(|(code, _)| code == "unknown_function")
                    {
                        continue;
                    }
                    return Some(Ok(answer));
                }
                Ok(answer) => {
                    self.known().insert(call.function.to_string(), peer.clone());
                    return Some(Ok(answer));
                }
                Err(e) => unreachable = Some(format!("gateway {peer}: {e}")),
            }
        }
        unreachable.map(Err)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.known
            .lock()
            .expect("no panics under the forwarder's map")
    }

    async fn send(&self, peer: &str, call: &Call<'_>) -> Result<Answer, String> {
        let path = if call.asynchronous {
            "asyncFunction"
        } else {
            "function"
        };
        let mut request = self
            .http
            .post(format!("{peer}/{path}/{}", call.function))
            .header(FORWARDED_HEADER, "1")
            .header(DEPTH_HEADER, call.depth)
            .header(crate::http::BOOK_HEADER, call.book.0)
            .body(call.input.clone());
        if let Some(key) = call.key {
            request = request.header(crate::http::IDEMPOTENCY_HEADER, key);
        }
        // The token first: the progress sent covers it, so the peer knows it.
        let token = (self.tokens.peer_token().await)
            .map_err(|e| format!("making this gateway's peer token: {e}"))?;
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(seen) = (self.progress)() {
            request = request.header(crate::http::SEEN_HEADER, seen.0);
        }
        // The call goes on in the caller's trace.
        if let Some(traceparent) = tally_sdk::trace::current_traceparent() {
            request = request.header(tally_sdk::trace::TRACEPARENT, traceparent);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let seen = header(crate::http::SEEN_HEADER)
            .and_then(|s| s.parse().ok())
            .map(Seqnum);
        let mut id = header("x-tally-invocation");
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if call.asynchronous && status == 202 {
            id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| Some(v["id"].as_str()?.to_string()));
        }
        Ok(Answer {
            status,
            body,
            id,
            seen,
        })
    }
}
