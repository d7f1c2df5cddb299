//! Access control: API tokens and what they may do.
//!
//! A token is `tly_<id>_<secret>`: a 12-hex-digit id, public (listing and revoking name it),
//! and 32 random bytes. The log keeps only its SHA-256, with its name and scopes, in the
//! reserved book's `TOKENS_TAG` stream, so every gateway of a cluster knows every token: a
//! gateway reads the stream again when it meets an id it does not know, and every
//! `REFRESH_EVERY` for revocations. Each write is a conditional append at the stream's next
//! position, so a check made against the stream (the last admin token is never revoked) holds
//! when the write lands.
//!
//! Until the first token is made, a gateway asks for none (`tally` refuses to start one
//! reachable beyond loopback in that state unless told `--insecure`); from then on every
//! request but `GET /health` needs a token whose scopes cover the route (`Need`).
//!
//! A gateway forwarding a call to a peer authenticates with a token of its own (scope `peer`),
//! made when it first forwards and valid only while that gateway is among the live ones.

use crate::invocations::{now_ms, Peers, INVOCATIONS_BOOK};
use base64::Engine as _;
use bytes::Bytes;
use logbook::{BookId, Cond, LogBook, LogError, Seqnum, Tag};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// The stream of token records in `INVOCATIONS_BOOK`.
pub(crate) const TOKENS_TAG: Tag = Tag(3);
/// How often a gateway reads the token stream for changes made elsewhere.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// What every token starts with.
const PREFIX: &str = "tly_";
/// Scopes one token may carry, at most.
pub const SCOPES_MAX: usize = 32;
/// Bytes of a token's name, at most.
pub const NAME_BYTES_MAX: usize = 100;
/// Conditional appends tried before a write gives up on a busy stream.
const WRITE_TRIES: usize = 16;
/// Requests a second one token may make at one gateway, unless the token or the gateway's
/// setting says otherwise: far above what a healthy client of one gateway sends, it stops a
/// runaway one.
pub const RATE_PER_TOKEN_DEFAULT: u32 = 10_000;
/// The highest request rate a token may be given, a second.
pub const RATE_PER_TOKEN_MAX: u32 = 1_000_000;

/// One thing a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything, tokens and packages included.
    Admin,
    /// Calling functions and workflows: every one (`None`, which also reads invocations and
    /// workflows by id, signals, cancels, queries and schedules), or the named ones.
    Invoke(Option<BTreeSet<String>>),
    /// Reading books: every one, or the listed ones.
    Read(Option<BTreeSet<u32>>),
    /// Appending to books: every one, or the listed ones.
    Append(Option<BTreeSet<u32>>),
    /// `GET /metrics`.
    Metrics,
    /// Attaching a worker process.
    Worker,
    /// A gateway forwarding calls to its peers: calls every function. Never made by users.
    Peer,
}

impl Scope {
    /// Parses `admin`, `invoke`, `invoke:f,g`, `read`, `read:1,2`, `append`, `append:1,2`,
    /// `metrics` or `worker`.
    pub fn parse(text: &str) -> Result<Scope, String> {
        let (kind, list) = match text.split_once(':') {
            Some((kind, list)) => (kind, Some(list)),
            None => (text, None),
        };
        let books = |list: Option<&str>| -> Result<Option<BTreeSet<u32>>, String> {
            let Some(list) = list else { return Ok(None) };
            let books = list
                .split(',')
                .map(|b| {
                    b.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|b| *b != INVOCATIONS_BOOK.0)
                        .ok_or_else(|| {
                            format!("scope '{text}': '{b}' is not a book (0 to 4294967294)")
                        })
                })
                .collect::<Result<BTreeSet<u32>, String>>()?;
            Ok(Some(books))
        };
        let bare = |scope: Scope| match list {
            None => Ok(scope),
            Some(_) => Err(format!("scope '{kind}' takes no list")),
        };
        match kind {
            "admin" => bare(Scope::Admin),
            "metrics" => bare(Scope::Metrics),
            "worker" => bare(Scope::Worker),
            "invoke" => match list {
                None => Ok(Scope::Invoke(None)),
                Some(list) => {
                    let names: BTreeSet<String> =
                        list.split(',').map(|n| n.trim().to_string()).collect();
                    if names.iter().any(|n| n.is_empty()) {
                        return Err(format!("scope '{text}' names an empty function"));
                    }
                    Ok(Scope::Invoke(Some(names)))
                }
            },
            "read" => Ok(Scope::Read(books(list)?)),
            "append" => Ok(Scope::Append(books(list)?)),
            _ => Err(format!(
                "unknown scope '{text}': admin, invoke[:f,g], read[:books], append[:books], metrics or worker"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(
            f: &mut fmt::Formatter<'_>,
            kind: &str,
            items: &Option<BTreeSet<T>>,
        ) -> fmt::Result {
            match items {
                None => write!(f, "{kind}"),
                Some(items) => {
                    let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
                    write!(f, "{kind}:{}", items.join(","))
                }
            }
        }
        match self {
            Scope::Admin => write!(f, "admin"),
            Scope::Metrics => write!(f, "metrics"),
            Scope::Worker => write!(f, "worker"),
            Scope::Peer => write!(f, "peer"),
            Scope::Invoke(names) => list(f, "invoke", names),
            Scope::Read(books) => list(f, "read", books),
            Scope::Append(books) => list(f, "append", books),
        }
    }
}

/// What a request needs its token to allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing: no token is asked for.
    Nothing,
    /// Any valid token.
    AnyToken,
    Admin,
    Metrics,
    Worker,
    /// Calling this function or workflow.
    Invoke(String),
    /// Every function: what reads or drives invocations and workflows by id.
    InvokeAny,
    Read(BookId),
    Append(BookId),
    /// Reading and appending: a route that changes a book and answers with what it holds.
    ReadAppend(BookId),
}

impl Need {
    /// The scopes that would allow it, for a refusal's message.
    fn wanted(&self) -> String {
        match self {
            Need::Nothing | Need::AnyToken => "any token".into(),
            Need::Admin => "admin".into(),
            Need::Metrics => "metrics (or admin)".into(),
            Need::Worker => "worker (or admin)".into(),
            Need::Invoke(name) => format!("invoke:{name} (or invoke, admin)"),
            Need::InvokeAny => "invoke (or admin)".into(),
            Need::Read(b) => format!("read:{} (or read, admin)", b.0),
            Need::Append(b) => format!("append:{} (or append, admin)", b.0),
            Need::ReadAppend(b) => {
                format!("read:{0} and append:{0} (or read and append, admin)", b.0)
            }
        }
    }
}

/// The scopes of an authenticated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub scopes: Vec<Scope>,
    /// The token's own request rate a second, if it was made with one.
    pub rate_per_s: Option<u32>,
}

impl Grant {
    /// Whether the scopes cover `need`.
    pub fn allows(&self, need: &Need) -> bool {
        let has = |want: &dyn Fn(&Scope) -> bool| {
            self.scopes.iter().any(|s| *s == Scope::Admin || want(s))
        };
        let reads = |book: BookId| {
            has(
                &|s| matches!(s, Scope::Read(books) if books.as_ref().is_none_or(|b| b.contains(&book.0))),
            )
        };
        let appends = |book: BookId| {
            has(
                &|s| matches!(s, Scope::Append(books) if books.as_ref().is_none_or(|b| b.contains(&book.0))),
            )
        };
        match need {
            Need::Nothing | Need::AnyToken => true,
            Need::Admin => has(&|_| false),
            Need::Metrics => has(&|s| *s == Scope::Metrics),
            Need::Worker => has(&|s| *s == Scope::Worker),
            Need::Invoke(name) => has(&|s| match s {
                Scope::Peer | Scope::Invoke(None) => true,
                Scope::Invoke(Some(names)) => names.contains(name),
                _ => false,
            }),
            Need::InvokeAny => has(&|s| matches!(s, Scope::Peer | Scope::Invoke(None))),
            Need::Read(book) => reads(*book),
            Need::Append(book) => appends(*book),
            Need::ReadAppend(book) => reads(*book) && appends(*book),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one no gateway knows (or revoked): 401.
    Unauthenticated(String),
    /// A valid token without the scope: 403.
    Forbidden(String),
    /// The token stream could not be read: 503.
    Unavailable(String),
    /// The token made more requests than its rate allows: 429, try again after this long.
    RateLimited { id: String, retry_after: Duration },
}

impl Refusal {
    /// The refusal as a gRPC status.
    pub fn into_status(self) -> tonic::Status {
        match self {
            Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Refusal::Forbidden(m) => tonic::Status::permission_denied(m),
            Refusal::Unavailable(m) => tonic::Status::unavailable(m),
            Refusal::RateLimited { id, retry_after } => tonic::Status::resource_exhausted(format!(
                "token {id} made more requests than its rate; try again in {retry_after:?}"
            )),
        }
    }

    fn forbidden(grant: &Grant, need: &Need) -> Refusal {
        Refusal::Forbidden(format!(
            "token {} lacks the scope this needs: {}",
            grant.id,
            need.wanted()
        ))
    }
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_ms: u64,
    /// The gateway a `peer` token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Requests a second the token may make at each gateway (else the gateway's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<u32>,
}

/// A record of the token stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Created {
        #[serde(flatten)]
        info: TokenInfo,
        /// SHA-256 of the whole token, hex.
        sha256: String,
    },
    Revoked {
        id: String,
        at_ms: u64,
    },
}

struct Known {
    info: TokenInfo,
    scopes: Vec<Scope>,
    /// SHA-256 of the token, hex, as the record holds it.
    sha256: String,
}

#[derive(Default)]
struct Table {
    /// Live tokens by id.
    live: BTreeMap<String, Known>,
    /// Records of the stream read so far: the position of the next.
    records: u64,
    /// Where to read on from.
    next: Seqnum,
    /// Whether any token was ever made: then every request needs one.
    enforcing: bool,
}

/// Why revoking failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("no live token has id '{0}'")]
    Unknown(String),
    #[error("token {0} is the last admin token; make another admin token first")]
    LastAdmin(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// The tokens a gateway knows, read from the log.
pub struct Tokens {
    log: Arc<dyn LogBook>,
    table: Mutex<Table>,
    /// One reader of the stream at a time.
    reading: tokio::sync::Mutex<()>,
    /// The gateways alive, for `peer` tokens; a lone gateway has no peers to call.
    peers: Option<watch::Receiver<Peers>>,
    /// This gateway's own `peer` token, once made.
    peer_token: tokio::sync::OnceCell<String>,
    /// Requests a second for tokens made without a rate of their own (0: no limit).
    rate_default: AtomicU32,
    /// Each token's rate limiter here, by id.
    limiters: Mutex<HashMap<String, Arc<governor::DefaultDirectRateLimiter>>>,
}

impl Tokens {
    /// Reads every token in `log`: what a gateway about to serve calls.
    pub async fn load(
        log: Arc<dyn LogBook>,
        peers: Option<watch::Receiver<Peers>>,
    ) -> Result<Arc<Tokens>, LogError> {
        let tokens = Tokens::unread(log, peers);
        tokens.refresh().await?;
        Ok(tokens)
    }

    /// The tokens of `log`, none read yet: until a `refresh`, it asks for no token.
    pub fn unread(log: Arc<dyn LogBook>, peers: Option<watch::Receiver<Peers>>) -> Arc<Tokens> {
        Arc::new(Tokens {
            log,
            table: Mutex::new(Table::default()),
            reading: tokio::sync::Mutex::new(()),
            peers,
            peer_token: tokio::sync::OnceCell::new(),
            rate_default: AtomicU32::new(RATE_PER_TOKEN_DEFAULT),
            limiters: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `grant` (`None`: no token is asked for) covers `need`, counting the request
    /// against its token's rate: what a stream checks for each request after its first.
    pub fn permit(&self, grant: &Option<Grant>, need: &Need) -> Result<(), Refusal> {
        let Some(grant) = grant else { return Ok(()) };
        if !grant.allows(need) {
            return Err(Refusal::forbidden(grant, need));
        }
        self.admit(grant)
    }

    /// Sets the request rate a second of tokens made without one (0: no limit).
    pub fn set_rate_default(&self, per_s: u32) {
        self.rate_default.store(per_s, Ordering::Relaxed);
    }

    /// Counts one request of `grant`'s token against its rate; refused past it. Peers (a
    /// gateway forwarding calls) are not limited: their callers were.
    fn admit(&self, grant: &Grant) -> Result<(), Refusal> {
        if grant.scopes.contains(&Scope::Peer) {
            return Ok(());
        }
        let rate = grant
            .rate_per_s
            .unwrap_or_else(|| self.rate_default.load(Ordering::Relaxed));
        let Some(rate) = NonZeroU32::new(rate) else {
            return Ok(());
        };
        let limiter = self
            .limiters
            .lock()
            .expect("no panics under the limiters lock")
            .entry(grant.id.clone())
            .or_insert_with(|| {
                Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                    rate,
                )))
            })
            .clone();
        limiter.check().map_err(|until| {
            use governor::clock::Clock as _;
            Refusal::RateLimited {
                id: grant.id.clone(),
                retry_after: until.wait_time_from(governor::clock::DefaultClock::default().now()),
            }
        })
    }

    /// Keeps reading the stream every `REFRESH_EVERY` until `tokens` is dropped.
    pub async fn follow(tokens: std::sync::Weak<Tokens>) {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            let Some(t) = tokens.upgrade() else { return };
            if let Err(e) = t.refresh().await {
                tracing::debug!(error = %e, "reading tokens");
            }
        }
    }

    /// Whether any token was ever made: then every request (but `/health`) needs one.
    pub fn enforcing(&self) -> bool {
        self.lock().enforcing
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("no panics under the tokens lock")
    }

    /// Reads the records appended to the stream since the last read.
    pub async fn refresh(&self) -> Result<(), LogError> {
        let _reading = self.reading.lock().await;
        let mut next = self.lock().next;
        while let Some(record) = self
            .log
            .read_next(INVOCATIONS_BOOK, TOKENS_TAG, next)
            .await?
        {
            next = record.seqnum.next();
            let event: Result<Event, _> = serde_json::from_slice(&record.data);
            let mut table = self.lock();
            table.records += 1;
            table.next = next;
            match event {
                Ok(Event::Created { info, sha256 }) => {
                    let scopes = info
                        .scopes
                        .iter()
                        .map(|s| {
                            if s == "peer" {
                                Ok(Scope::Peer)
                            } else {
                                Scope::parse(s)
                            }
                        })
                        .collect::<Result<Vec<_>, _>>();
                    match scopes {
                        Ok(scopes) => {
                            table.enforcing = true;
                            table.live.insert(
                                info.id.clone(),
                                Known {
                                    info,
                                    scopes,
                                    sha256,
                                },
                            );
                        }
                        Err(e) => tracing::warn!(
                            seqnum = record.seqnum.0,
                            error = %e,
                            "a token record that does not parse; skipped"
                        ),
                    }
                }
                Ok(Event::Revoked { id, .. }) => {
                    table.live.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(seqnum = record.seqnum.0, error = %e, "a token record that does not parse; skipped")
                }
            }
        }
        Ok(())
    }

    /// What `authorization` (the header's value) may do, or why it is refused for `need`.
    /// `Ok(None)`: no token is asked for (none was ever made).
    pub async fn check(
        &self,
        authorization: Option<&str>,
        need: &Need,
    ) -> Result<Option<Grant>, Refusal> {
        if *need == Need::Nothing {
            return Ok(None);
        }
        // A caller with a token expects tokens: a gateway that has not read the first one yet
        // (it reads every `REFRESH_EVERY`) reads the stream now rather than let it through.
        if !self.enforcing() && authorization.is_some() {
            self.refresh()
                .await
                .map_err(|e| Refusal::Unavailable(format!("reading tokens: {e}")))?;
        }
        if !self.enforcing() {
            return Ok(None);
        }
        let Some(value) = authorization else {
            return Err(Refusal::Unauthenticated(
                "this gateway needs a token: send 'Authorization: Bearer <token>'".into(),
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or(value)
            .trim();
        let grant = Some(self.authenticate(token).await?);
        self.permit(&grant, need)?;
        Ok(grant)
    }

    /// `check` for a gRPC call: the `authorization` metadata of `metadata`, and the refusal as
    /// a status (unauthenticated, permission denied, unavailable).
    pub async fn check_grpc(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        need: &Need,
    ) -> Result<Option<Grant>, tonic::Status> {
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.check(authorization, need)
            .await
            .map_err(Refusal::into_status)
    }

    /// The scopes of `token`, reading the stream again if its id is new here.
    pub async fn authenticate(&self, token: &str) -> Result<Grant, Refusal> {
        let Some((id, _)) = split(token) else {
            return Err(Refusal::Unauthenticated(format!(
                "not a token: tokens look like {PREFIX}<id>_<secret>"
            )));
        };
        if !self.lock().live.contains_key(id) {
            self.refresh()
                .await
                .map_err(|e| Refusal::Unavailable(format!("reading tokens: {e}")))?;
        }
        let digest = hex(&Sha256::digest(token.as_bytes()));
        let table = self.lock();
        let unknown = || Refusal::Unauthenticated(format!("token {id} is unknown or revoked"));
        let known = table.live.get(id).ok_or_else(unknown)?;
        if !bool::from(known.sha256.as_bytes().ct_eq(digest.as_bytes())) {
            return Err(unknown());
        }
        if let Some(gateway) = &known.info.gateway {
            let live = self
                .peers
                .as_ref()
                .is_some_and(|p| p.borrow().live.contains_key(gateway));
            if !live {
                return Err(Refusal::Unauthenticated(format!(
                    "token {id} belongs to gateway {gateway}, which is not live"
                )));
            }
        }
        Ok(Grant {
            id: id.to_string(),
            scopes: known.scopes.clone(),
            rate_per_s: known.info.rate_per_s,
        })
    }

    /// Every live token, peers' included.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.lock().live.values().map(|k| k.info.clone()).collect()
    }

    /// Makes a token with `scopes`; returns it (the only time its secret is seen) and its
    /// listing.
    pub async fn create(
        &self,
        name: &str,
        scopes: &[Scope],
    ) -> Result<(String, TokenInfo), LogError> {
        self.make(name, scopes, None, None).await
    }

    /// `create`, for a token limited to `rate_per_s` requests a second at each gateway.
    pub async fn create_limited(
        &self,
        name: &str,
        scopes: &[Scope],
        rate_per_s: u32,
    ) -> Result<(String, TokenInfo), LogError> {
        self.make(name, scopes, None, Some(rate_per_s)).await
    }

    async fn make(
        &self,
        name: &str,
        scopes: &[Scope],
        gateway: Option<String>,
        rate_per_s: Option<u32>,
    ) -> Result<(String, TokenInfo), LogError> {
        let (token, id) = generate();
        let info = TokenInfo {
            id,
            name: name.to_string(),
            scopes: scopes.iter().map(Scope::to_string).collect(),
            created_ms: now_ms(),
            gateway,
            rate_per_s,
        };
        let sha256 = hex(&Sha256::digest(token.as_bytes()));
        let event = Event::Created {
            info: info.clone(),
            sha256,
        };
        self.write(&event, |_| Ok(())).await.map_err(|e| match e {
            RevokeError::Log(e) => e,
            other => LogError::Io(other.to_string()),
        })?;
        Ok((token, info))
    }

    /// Revokes the token with `id`. The last live admin token is kept.
    pub async fn revoke(&self, id: &str) -> Result<(), RevokeError> {
        let event = Event::Revoked {
            id: id.to_string(),
            at_ms: now_ms(),
        };
        self.write(&event, |table| {
            let known = table
                .live
                .get(id)
                .ok_or_else(|| RevokeError::Unknown(id.to_string()))?;
            let admins = table
                .live
                .values()
                .filter(|k| k.scopes.contains(&Scope::Admin))
                .count();
            if known.scopes.contains(&Scope::Admin) && admins == 1 {
                return Err(RevokeError::LastAdmin(id.to_string()));
            }
            Ok(())
        })
        .await
    }

    /// Appends `event` at the stream's next position once `check` passes on the stream as
    /// read; reads on and checks again if another write landed there first.
    async fn write(
        &self,
        event: &Event,
        check: impl Fn(&Table) -> Result<(), RevokeError>,
    ) -> Result<(), RevokeError> {
        let data = Bytes::from(serde_json::to_vec(event).expect("a token event serializes"));
        for _ in 0..WRITE_TRIES {
            self.refresh().await?;
            let position = {
                let table = self.lock();
                check(&table)?;
                table.records
            };
            let cond = Cond::at(TOKENS_TAG, position);
            match self
                .log
                .cond_append(INVOCATIONS_BOOK, &[TOKENS_TAG], data.clone(), cond)
                .await
            {
                Ok(_) => {
                    self.refresh().await?;
                    return Ok(());
                }
                Err(LogError::CondFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LogError::Unavailable("the token stream stayed busy; try again".into()).into())
    }

    /// This gateway's token for calls it forwards to peers, made on first use. `None` while no
    /// token is asked for.
    pub async fn peer_token(&self) -> Result<Option<String>, LogError> {
        if !self.enforcing() {
            // The peer may have read a first token this gateway has not yet.
            self.refresh().await?;
        }
        if !self.enforcing() {
            return Ok(None);
        }
        let Some(peers) = &self.peers else {
            return Ok(None);
        };
        let me = peers.borrow().me.clone();
        let token = self
            .peer_token
            .get_or_try_init(|| async {
                let (token, _) = self
                    .make(
                        &format!("gateway {me}"),
                        &[Scope::Peer],
                        Some(me.clone()),
                        None,
                    )
                    .await?;
                self.retire_predecessors(&me).await;
                Ok::<_, LogError>(token)
            })
            .await?;
        Ok(Some(token.clone()))
    }

    /// Revokes the peer tokens of this gateway's earlier processes (the same node, another
    /// incarnation: `g20.xxxx` for `g20.yyyy`), so a node's restarts leave one live peer
    /// token, not one each. Best effort: one left behind is refused anyway, its gateway gone.
    async fn retire_predecessors(&self, me: &str) {
        let node = |name: &str| name.split('.').next().unwrap_or_default().to_string();
        let mine = node(me);
        let old: Vec<String> = self
            .lock()
            .live
            .values()
            .filter(|k| {
                k.info
                    .gateway
                    .as_deref()
                    .is_some_and(|g| g != me && node(g) == mine)
            })
            .map(|k| k.info.id.clone())
            .collect();
        for id in old {
            if let Err(e) = self.revoke(&id).await {
                tracing::debug!(token = %id, error = %e, "revoking an earlier process's peer token");
            }
        }
    }
}

/// The id and secret of a token, if it has a token's shape.
fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

/// A new token and its id.
fn generate() -> (String, String) {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::fill(&mut id);
    rand::fill(&mut secret);
    let id = hex(&id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    (format!("{PREFIX}{id}_{secret}"), id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use logbook::memory::MemoryLogBook;

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    #[test]
    fn scopes_parse_and_print_alike() {
        for text in [
            "admin",
            "invoke",
            "invoke:a,b",
            "read",
            "read:0,7",
            "append:3",
            "metrics",
            "worker",
        ] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "",
            "root",
            "admin:x",
            "read:x",
            "read:4294967295",
            "invoke:",
            "invoke:a,,b",
            "peer",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_cover_what_their_scopes_say() {
        let g = |list: &[&str]| Grant {
            id: "x".into(),
            scopes: scopes(list),
            rate_per_s: None,
        };
        let (b0, b1) = (BookId(0), BookId(1));
        assert!(g(&["admin"]).allows(&Need::Admin));
        assert!(!g(&["invoke", "read", "append", "metrics", "worker"]).allows(&Need::Admin));
        assert!(g(&["invoke:f"]).allows(&Need::Invoke("f".into())));
        assert!(!g(&["invoke:f"]).allows(&Need::Invoke("g".into())));
        assert!(!g(&["invoke:f"]).allows(&Need::InvokeAny));
        assert!(g(&["invoke"]).allows(&Need::InvokeAny));
        assert!(g(&["read:1"]).allows(&Need::Read(b1)));
        assert!(!g(&["read:1"]).allows(&Need::Read(b0)));
        assert!(!g(&["read:1"]).allows(&Need::Append(b1)));
        assert!(!g(&["read"]).allows(&Need::ReadAppend(b1)));
        assert!(g(&["read", "append:1"]).allows(&Need::ReadAppend(b1)));
        assert!(!g(&["read", "append:1"]).allows(&Need::ReadAppend(b0)));
        assert!(g(&["metrics"]).allows(&Need::Metrics) && !g(&["read"]).allows(&Need::Metrics));
        assert!(g(&["worker"]).allows(&Need::Worker) && !g(&["invoke"]).allows(&Need::Worker));
        let peer = Grant {
            id: "p".into(),
            scopes: vec![Scope::Peer],
            rate_per_s: None,
        };
        assert!(peer.allows(&Need::Invoke("f".into())) && !peer.allows(&Need::Read(b0)));
    }

    #[tokio::test]
    async fn tokens_are_known_everywhere_hashed_and_revocable() {
        let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
        let here = Tokens::load(log.clone(), None).await.unwrap();
        let there = Tokens::load(log.clone(), None).await.unwrap();
        assert!(!here.enforcing());
        assert_eq!(here.check(None, &Need::Admin).await, Ok(None));

        let (admin, _) = here.create("ops", &scopes(&["admin"])).await.unwrap();
        let (reader, info) = here.create("app", &scopes(&["read:1"])).await.unwrap();
        assert!(here.enforcing());
        // The other gateway learns of them when it meets them.
        let grant = there.authenticate(&reader).await.unwrap();
        assert_eq!(grant.scopes, scopes(&["read:1"]));
        assert!(there
            .check(Some(&format!("Bearer {reader}")), &Need::Read(BookId(1)))
            .await
            .is_ok());
        assert!(matches!(
            there
                .check(Some(&format!("Bearer {reader}")), &Need::Read(BookId(2)))
                .await,
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            there.check(None, &Need::AnyToken).await,
            Err(Refusal::Unauthenticated(_))
        ));
        assert_eq!(there.check(None, &Need::Nothing).await, Ok(None));

        // The log holds no secret, and a wrong secret with a known id is refused.
        let records = log
            .read_range(
                INVOCATIONS_BOOK,
                TOKENS_TAG,
                logbook::ReadRange {
                    from: Seqnum(0),
                    to: Seqnum::MAX,
                    limit: 100,
                },
            )
            .await
            .unwrap();
        let secret = split(&reader).unwrap().1;
        assert!(records
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.data).contains(secret)));
        let forged = format!("{PREFIX}{}_{}", info.id, "A".repeat(43));
        assert!(matches!(
            there.authenticate(&forged).await,
            Err(Refusal::Unauthenticated(_))
        ));

        // Revoked at one gateway, refused at the other once it reads the stream.
        here.revoke(&info.id).await.unwrap();
        there.refresh().await.unwrap();
        assert!(matches!(
            there.authenticate(&reader).await,
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            here.revoke(&info.id).await,
            Err(RevokeError::Unknown(_))
        ));
        // The last admin token stays.
        let admin_id = split(&admin).unwrap().0.to_string();
        assert!(matches!(
            here.revoke(&admin_id).await,
            Err(RevokeError::LastAdmin(_))
        ));
        assert!(there.authenticate(&admin).await.is_ok());
        assert!(
            here.enforcing(),
            "revoking tokens never opens the gateway again"
        );
    }

    #[tokio::test]
    async fn a_peer_token_is_valid_while_its_gateway_is_live() {
        let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
        let (peers_tx, peers) = watch::channel(Peers::alone("g1.first"));
        let tokens = Tokens::load(log.clone(), Some(peers)).await.unwrap();
        assert_eq!(
            tokens.peer_token().await.unwrap(),
            None,
            "nothing to prove yet"
        );
        tokens.create("ops", &scopes(&["admin"])).await.unwrap();
        let token = tokens.peer_token().await.unwrap().unwrap();
        assert_eq!(
            tokens.peer_token().await.unwrap(),
            Some(token.clone()),
            "made once"
        );
        let grant = tokens.authenticate(&token).await.unwrap();
        assert!(grant.allows(&Need::Invoke("any".into())));
        peers_tx.send_modify(|p| {
            p.live.clear();
        });
        assert!(matches!(
            tokens.authenticate(&token).await,
            Err(Refusal::Unauthenticated(_))
        ));
        // The same node started again: its new process's peer token retires the old one.
        let peer_tokens = |t: &Tokens| t.list().into_iter().filter(|i| i.gateway.is_some()).count();
        assert_eq!(peer_tokens(&tokens), 1);
        let (_, again) = watch::channel(Peers::alone("g1.second"));
        let restarted = Tokens::load(log.clone(), Some(again)).await.unwrap();
        restarted.peer_token().await.unwrap().unwrap();
        tokens.refresh().await.unwrap();
        assert_eq!(peer_tokens(&restarted), 1, "{:?}", restarted.list());
        assert_eq!(peer_tokens(&tokens), 1);
        // Another node's is its own.
        let (_, other) = watch::channel(Peers::alone("g2.first"));
        let other = Tokens::load(log.clone(), Some(other)).await.unwrap();
        other.peer_token().await.unwrap().unwrap();
        assert_eq!(peer_tokens(&other), 2);
    }

    #[tokio::test]
    async fn a_token_past_its_rate_is_refused_until_its_cells_come_back() {
        let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
        let tokens = Tokens::load(log.clone(), None).await.unwrap();
        tokens.set_rate_default(0);
        let (slow, _) = tokens
            .create_limited("slow", &scopes(&["read"]), 1)
            .await
            .unwrap();
        let (free, _) = tokens.create("free", &scopes(&["read"])).await.unwrap();
        let need = Need::Read(BookId(0));
        let mut limited = None;
        // One request a second: of several at once, all but the first are refused (unless
        // the machine stalls a second between each, when none would be).
        for _ in 0..5 {
            if let Err(refusal) = tokens.check(Some(&slow), &need).await {
                limited = Some(refusal);
            }
        }
        match limited {
            Some(Refusal::RateLimited { retry_after, .. }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("not limited: {other:?}"),
        }
        // Another token is not held back, and with no default rate nothing limits it.
        for _ in 0..1000 {
            tokens.check(Some(&free), &need).await.unwrap();
        }
        // The gateway's default applies to tokens made without a rate.
        tokens.set_rate_default(1);
        let (default, _) = tokens.create("default", &scopes(&["read"])).await.unwrap();
        let refused = (0..5)
            .filter(|_| {
                matches!(
                    tokens.permit(&Some(tokens_grant(&tokens, &default)), &need),
                    Err(Refusal::RateLimited { .. })
                )
            })
            .count();
        assert!(refused > 0);
    }

    /// The grant of a token already known.
    fn tokens_grant(tokens: &Tokens, token: &str) -> Grant {
        let (id, _) = split(token).unwrap();
        let table = tokens.lock();
        let known = &table.live[id];
        Grant {
            id: id.to_string(),
            scopes: known.scopes.clone(),
            rate_per_s: known.info.rate_per_s,
        }
    }
}
