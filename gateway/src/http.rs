//! The gateway's HTTP API (axum): function calls, invocations, workflows, libstore's objects
//! (`objects`), classes' objects and packages (`classes`), queues (`queues`), the log, health and metrics. Every error is JSON: `{"error": {"code": "...", "message":
//! "..."}}`.

mod access;
mod classes;
mod console;
mod objects;
mod queues;
pub use console::{ClusterStatus, INVOCATION_LIST_MAX, TAG_LIST_MAX};
pub use objects::{HISTORY_LIMIT_DEFAULT, VERSION_HEADER};
pub use queues::{Queues, POP_WAIT_MS_MAX, QUEUE_HANDLES_MAX, QUEUE_TRIM_EVERY};

use crate::functions::{Dispatcher, Invocation, InvokeError, Request, Status, CALL_DEPTH_MAX};
use crate::metrics::Metrics;
use crate::runtime::GatewayLog;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use logbook::{BookId, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body, in bytes: a record at its limit plus room for framing.
pub const REQUEST_BODY_BYTES_MAX: usize = logbook::RECORD_BYTES_MAX + 64 * 1024;
/// Records a `GET /log/{book}/records` returns when no limit is given.
pub const READ_LIMIT_DEFAULT: usize = 1000;
/// Header naming the LogBook of a call.
pub const BOOK_HEADER: &str = "x-tally-book";
/// The highest seqnum a client has seen (appended or read, at any gateway). A read carrying
/// it waits until this gateway's index covers it; every log reply carries the highest seqnum
/// the client has now seen. Threading it through gives read-your-writes and monotonic reads
/// across gateways.
pub const SEEN_HEADER: &str = "x-tally-seen";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// What the HTTP handlers share.
pub struct AppState {
    pub dispatcher: Arc<Dispatcher>,
    pub log: Arc<dyn LogBook>,
    pub metrics: Arc<Metrics>,
    /// The engine behind the log, for gauges; absent when serving another `LogBook`.
    pub engine: Option<Arc<GatewayLog>>,
    /// The books workflows were started in since this gateway started (and book 0): where
    /// garbage collection looks.
    pub workflow_books: std::sync::Mutex<std::collections::BTreeSet<BookId>>,
    /// The in-process workflows, for their queries.
    pub workflows: libflow::Workflows,
    /// The object stores of the books objects were used in.
    pub objects: libstore::Stores,
    /// The queue and group handles the queue routes opened.
    pub queues: Queues,
    /// The installed classes, and the objects this gateway drives.
    pub classes: libobject::Objects,
    /// How far this gateway read the packages installed over HTTP.
    pub packages: crate::classes::Packages,
    /// The API tokens, and whether any is asked for.
    pub tokens: Arc<crate::auth::Tokens>,
    /// The rest of the cluster, as `GET /cluster` shows it (none for `tally up`).
    pub cluster: Option<ClusterStatus>,
}

/// An error response.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// What went wrong, as the error's JSON says it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> ApiError {
        let status = match &e {
            LogError::BadArgument(_) => StatusCode::BAD_REQUEST,
            LogError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            LogError::Discarded | LogError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            LogError::CondFailed { .. } => StatusCode::CONFLICT,
            LogError::Trimmed(_) => StatusCode::GONE,
            LogError::Corrupt { .. } | LogError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body exceeds {REQUEST_BODY_BYTES_MAX} bytes")
        } else {
            r.body_text()
        };
        ApiError::new(status, code, message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::new(r.status(), "bad_request", r.body_text())
    }
}

/// The state of one gateway serving `log` with the built-in example functions (limited as
/// `setup.functions` says, by name), its calls timed in `metrics`: what `tally up` and `tally
/// gateway` serve (`router(state)`; workers attach to `state.dispatcher`). Errs when
/// `functions` names a function that is not there.
pub fn default_state(
    log: Arc<GatewayLog>,
    metrics: Arc<Metrics>,
    setup: Setup,
) -> Result<Arc<AppState>, String> {
    let metered: Arc<dyn LogBook> = Arc::new(crate::metrics::MeteredLog::new(
        log.clone(),
        metrics.clone(),
    ));
    let mut registry = crate::Registry::new();
    // A retention shorter than the default transaction lifetime shortens it too: an interactive
    // transaction older than the retention may then find its snapshot collected.
    let defaults = libstore::Settings::default();
    let objects = libstore::Stores::with_settings(libstore::Settings {
        transaction_lifetime: defaults.transaction_lifetime.min(setup.object_retention),
        ..defaults
    })
    .map_err(|e| format!("object settings: {e}"))?;
    let workflows = crate::examples::register(&mut registry, &objects);
    let classes = crate::classes::objects(&mut registry, &setup.packages)?;
    let observed = metrics.clone();
    classes.set_observer(Arc::new(move |o| observed.observe_object(o)));
    for (name, config) in &setup.functions {
        registry.configure(name, *config)?;
    }
    let dispatcher = Dispatcher::with_peers(
        registry,
        metered.clone(),
        metrics.clone(),
        setup.peers.clone(),
        setup.key_retention,
    );
    let engine = log.clone();
    let progress = Arc::new(move || engine.applied_end().0.checked_sub(1).map(Seqnum));
    dispatcher.set_forwarder(crate::forward::Forwarder::new(
        setup.peers,
        progress,
        setup.tokens.clone(),
        setup.peer_ca,
    ));
    let state = Arc::new(AppState {
        dispatcher,
        log: metered,
        metrics,
        engine: Some(log),
        workflow_books: std::sync::Mutex::new([BookId(0)].into()),
        workflows,
        objects,
        queues: Queues::default(),
        classes,
        packages: Default::default(),
        tokens: setup.tokens,
        cluster: setup.cluster,
    });
    tokio::spawn(crate::classes::refresh_packages(Arc::downgrade(&state)));
    tokio::spawn(crate::auth::Tokens::follow(Arc::downgrade(&state.tokens)));
    tokio::spawn(collect_workflows(
        Arc::downgrade(&state),
        setup.workflow_retention,
    ));
    tokio::spawn(collect_objects(
        Arc::downgrade(&state),
        setup.object_retention,
    ));
    tokio::spawn(trim_queues(Arc::downgrade(&state)));
    Ok(state)
}

impl AppState {
    /// The newest seqnum this gateway applied: what a caller has seen once answered.
    pub(crate) fn applied(&self) -> Option<Seqnum> {
        self.engine
            .as_ref()
            .and_then(|e| e.applied_end().0.checked_sub(1).map(Seqnum))
    }

    /// Notes that workflows run in `book` (garbage collection looks there).
    pub(crate) fn workflows_in(&self, book: BookId) {
        self.workflow_books
            .lock()
            .expect("no panics under the books lock")
            .insert(book);
    }
}

/// How often a collection runs for `retention`: every `retention / 2`, 1 s to a minute.
fn collection_period(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Collects ended workflow instances past `retention`, in every book workflows were started
/// in, every `collection_period`, until the state is dropped.
async fn collect_workflows(state: std::sync::Weak<AppState>, retention: Duration) {
    let every = collection_period(retention);
    loop {
        tokio::time::sleep(every).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let books: Vec<BookId> = state
            .workflow_books
            .lock()
            .expect("no panics under the books lock")
            .iter()
            .copied()
            .collect();
        let mut kept = 0;
        for book in books {
            match libflow::collect(&outside_ctx(&state, book), retention).await {
                Ok(done) => {
                    state.metrics.workflows_collected.inc_by(done.instances);
                    state
                        .metrics
                        .workflow_records_collected
                        .inc_by(done.records);
                    kept += done.kept;
                }
                Err(e) => tracing::warn!(book = book.0, error = %e, "collecting workflows"),
            }
        }
        state.metrics.workflows_kept.set(kept as i64);
    }
}

/// Trims object versions older than `retention` (`libstore::Store::collect`) in every book
/// this gateway's object routes and example functions used objects in, every
/// `collection_period`, until the state is dropped.
async fn collect_objects(state: std::sync::Weak<AppState>, retention: Duration) {
    let every = collection_period(retention);
    loop {
        tokio::time::sleep(every).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        for book in state.objects.books() {
            let store = state.objects.of(outside_ctx(&state, book));
            match store.collect(retention).await {
                Ok(done) => {
                    state.metrics.objects_collected.inc_by(done.objects);
                    state.metrics.object_records_collected.inc_by(done.records);
                }
                Err(e) => tracing::warn!(book = book.0, error = %e, "collecting objects"),
            }
        }
    }
}

/// Trims the queues this gateway's routes and triggers used, every `QUEUE_TRIM_EVERY`, until
/// the state is dropped.
async fn trim_queues(state: std::sync::Weak<AppState>) {
    loop {
        tokio::time::sleep(QUEUE_TRIM_EVERY).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let (cut, trims) = state.queues.trim_active(&state).await;
        state.metrics.queue_trims.inc_by(trims);
        state.metrics.queue_streams_cut.inc_by(cut);
    }
}

/// How a gateway's functions are set up.
pub struct Setup {
    /// Limits of functions, by name.
    pub functions: std::collections::BTreeMap<String, crate::functions::FunctionConfig>,
    /// The gateways alive, this one among them, kept up to date.
    pub peers: tokio::sync::watch::Receiver<crate::invocations::Peers>,
    /// How long an idempotency key names its invocation.
    pub key_retention: Duration,
    /// How long an ended workflow instance is kept before it is collected.
    pub workflow_retention: Duration,
    /// How long an object's versions are kept (its history, and what transactions may read)
    /// before they are collected. Below `libstore::Settings::default().transaction_lifetime`
    /// (a minute), it is also how long an interactive transaction surely reads its snapshot.
    pub object_retention: Duration,
    /// Packages of classes to install after the example package (a later one replaces an
    /// earlier one of the same name).
    pub packages: Vec<libobject::Package>,
    /// The API tokens (`auth::Tokens::load`, over the same log).
    pub tokens: Arc<crate::auth::Tokens>,
    /// The statuses of the cluster's other roles, for `GET /cluster` (none for `tally up`).
    pub cluster: Option<ClusterStatus>,
    /// The CA of the peers' HTTPS certificates, when the gateways serve HTTPS.
    pub peer_ca: Option<reqwest::Certificate>,
}

/// How long an ended workflow instance is kept, by default: a week.
pub const WORKFLOW_RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an object's versions are kept, by default: a day.
pub const OBJECT_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// The router of a gateway.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/function/{name}", post(call_function))
        .route("/asyncFunction/{name}", post(call_function_async))
        .route("/invocations", get(console::list_invocations))
        .route("/invocations/{id}", get(get_invocation))
        .route("/functions", get(list_functions))
        .route("/workflows/{name}/{id}", post(start_workflow))
        .route("/workflows/{id}", get(get_workflow))
        .route("/workflows/{id}/signals/{name}", post(signal_workflow))
        .route("/workflows/{id}/cancel", post(cancel_workflow))
        .route("/workflows/{id}/queries/{name}", get(query_workflow))
        .route("/workflows", get(list_workflows))
        .route("/schedules", post(create_schedule).get(list_schedules))
        .route("/schedules/{name}", axum::routing::delete(delete_schedule))
        .route(
            "/objects/{collection}/{key}",
            get(objects::get_object)
                .put(objects::put_object)
                .patch(objects::patch_object)
                .delete(objects::delete_object),
        )
        .route(
            "/objects/{collection}/{key}/history",
            get(objects::object_history),
        )
        .route("/objects/{class}", get(classes::read_many))
        .route("/objects/{class}/{key}/{method}", post(classes::call))
        .route("/objects/{class}/{key}/links/{field}", post(classes::link))
        .route("/objects/{class}/{key}/{method}/send", post(classes::send))
        .route("/packages", get(classes::list_packages))
        .route(
            "/packages/{name}",
            get(classes::get_package).put(classes::put_package),
        )
        .route("/transactions", post(objects::run_transaction))
        .route(
            "/transactions/{id}",
            get(classes::transaction).post(classes::transact),
        )
        .route("/queues", get(console::list_queues))
        .route("/queues/{name}", get(queues::stat).put(queues::create))
        .route(
            "/queues/{name}/groups/{group}",
            axum::routing::put(queues::create_group),
        )
        .route("/queues/{name}/push", post(queues::push))
        .route("/queues/{name}/push-batch", post(queues::push_batch))
        .route("/queues/{name}/pop", post(queues::pop))
        .route("/queues/{name}/ack", post(queues::ack))
        .route(
            "/queues/{name}/groups/{group}/dead-letters",
            get(queues::dead_letters),
        )
        .route(
            "/queues/{name}/groups/{group}/{action}",
            post(queues::requeue_or_discard),
        )
        .route("/log", get(console::list_books))
        .route("/log/{book}/tags", get(console::list_tags))
        .route("/log/{book}/append", post(log_append))
        .route("/log/{book}/records", get(log_records))
        .route("/log/{book}/next", get(log_next))
        .route("/health", get(health))
        .route("/cluster", get(console::cluster))
        .route("/console", get(console::page))
        .route("/console/{file}", get(console::file))
        .route("/metrics", get(metrics))
        .route(
            "/tokens",
            post(access::create_token).get(access::list_tokens),
        )
        .route("/tokens/{id}", axum::routing::delete(access::revoke_token))
        // After the routes: it applies to those already added, not to the fallbacks.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        // After the routes: it applies to those already added.
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the route does not take this method",
            )
        })
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

fn book_of(headers: &HeaderMap) -> Result<BookId, ApiError> {
    match headers.get(BOOK_HEADER) {
        None => Ok(BookId(0)),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .map(BookId)
            .ok_or_else(|| ApiError::bad_request("X-Tally-Book must be a u32"))
            .and_then(user_book),
    }
}

/// The call depth a forwarded call carries (0 for a call from outside).
fn depth_of(headers: &HeaderMap) -> Result<u32, ApiError> {
    let Some(v) = headers.get(crate::forward::DEPTH_HEADER) else {
        return Ok(0);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|d| *d <= CALL_DEPTH_MAX)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} must be a call depth, 0..={CALL_DEPTH_MAX}",
                crate::forward::DEPTH_HEADER
            ))
        })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(Some(key.to_string()))
}

/// Starts a call; an asynchronous one (`asynchronous`) is in the log before this returns, and
/// retried on failure as its function's config says.
async fn start(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    asynchronous: bool,
) -> Result<tokio::sync::watch::Receiver<Invocation>, ApiError> {
    let input = body?;
    let book = book_of(headers)?;
    let key = idempotency_key(headers)?;
    // A call forwarded by a peer runs here at its depth, once this gateway has seen what the
    // caller's gateway had.
    let forwarded = headers.contains_key(crate::forward::FORWARDED_HEADER);
    let depth = depth_of(headers)?;
    catch_up(state, seen_of(headers)?).await?;
    let request = Request {
        idempotency_key: key.as_deref(),
        depth,
        asynchronous,
        forwardable: !forwarded,
        ..Request::new(name, book, input)
    };
    let started = state.dispatcher.call(request).await;
    started.map_err(invoke_error)
}

/// A call the dispatcher did not start, as the gateway's JSON error.
fn invoke_error(e: InvokeError) -> ApiError {
    match e {
        InvokeError::KeyReused(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            e.to_string(),
        ),
        InvokeError::UnknownFunction(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_function", e.to_string())
        }
        InvokeError::Log(e) => e.into(),
    }
}

async fn call_function(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let rx = start(&state, &name, &headers, body, false).await?;
    let invocation = Dispatcher::wait(rx).await;
    let mut response = match invocation.output {
        Some(Ok(output)) => (StatusCode::OK, output).into_response(),
        Some(Err(e)) if e.bad_input => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_input", e.message).into_response()
        }
        Some(Err(e)) if e.unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "function_unavailable",
            e.message,
        )
        .into_response(),
        Some(Err(e)) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_failed",
            e.message,
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "lost",
            "the invocation's result was evicted",
        )
        .into_response(),
    };
    if let Ok(id) = HeaderValue::from_str(&invocation.id) {
        response.headers_mut().insert("x-tally-invocation", id);
    }
    Ok(response)
}

async fn call_function_async(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let rx = start(&state, &name, &headers, body, true).await?;
    let (id, accepted_at) = {
        let inv = rx.borrow();
        (inv.id.clone(), inv.accepted_at)
    };
    // The seqnum of the invocation's record, so a client reading it at another gateway can
    // pass it on as `X-Tally-Seen`.
    let seen = seen_of(&headers)?.max(accepted_at);
    let mut response = with_seen(seen, json!({"id": id}));
    *response.status_mut() = StatusCode::ACCEPTED;
    if let Ok(location) = HeaderValue::from_str(&format!("/invocations/{id}")) {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

fn invocation_json(inv: &Invocation) -> Value {
    let mut v = serde_json::to_value(inv).expect("an invocation serializes");
    match &inv.output {
        Some(Ok(output)) => match std::str::from_utf8(output) {
            Ok(text) => v["output"] = json!(text),
            Err(_) => {
                v["output_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(output))
            }
        },
        Some(Err(e)) => v["error"] = json!(e.message),
        None => {}
    }
    v
}

async fn get_invocation(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id?;
    catch_up(&state, seen_of(&headers)?).await?;
    let inv = state.dispatcher.find(&id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_invocation",
            format!("no invocation {id:?}"),
        )
    })?;
    debug_assert!(inv.status != Status::Succeeded || inv.output.is_some());
    Ok(Json(invocation_json(&inv)))
}

/// Longest `wait_ms` a workflow start may wait for the instance's end.
pub const WORKFLOW_WAIT_MS_MAX: u64 = 300_000;

#[derive(serde::Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

/// A request body as JSON; an empty one is `null`.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// A `Ctx` for reading and signalling instances in `book` from outside them.
fn outside_ctx(state: &AppState, book: BookId) -> crate::Ctx {
    crate::Ctx::new(state.log.clone(), book, String::new())
}

fn instance_id(id: &str) -> Result<(), ApiError> {
    libflow::check_instance_id(id).map_err(ApiError::bad_request)
}

/// `POST /workflows/{name}/{id}`: starts instance `id` of workflow `name` (the same id again
/// is the same instance; another input under it is 422). 202 at once, or with `wait_ms` the
/// instance once it ended (200), if it did in time.
async fn start_workflow(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((name, id)) = path?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    instance_id(&id)?;
    let input = json_body(body)?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let ctx = outside_ctx(&state, book);
    if let Some(existing) = libflow::describe(&ctx, &id).await.map_err(workflow_error)? {
        if existing.workflow != name {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "instance_exists",
                format!(
                    "instance {id} is an instance of workflow {}",
                    existing.workflow
                ),
            ));
        }
        if existing.input != input {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!("instance {id} was started with another input"),
            ));
        }
    }
    state.workflows_in(book);
    let key = format!("workflow:{id}");
    let request = Request {
        idempotency_key: Some(&key),
        depth: depth_of(&headers)?,
        asynchronous: true,
        forwardable: !headers.contains_key(crate::forward::FORWARDED_HEADER),
        ..Request::new(&name, book, libflow::start_input(&id, input))
    };
    let rx = state.dispatcher.call(request).await.map_err(|e| match e {
        InvokeError::KeyReused(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!("instance {id} was started with another input"),
        ),
        InvokeError::UnknownFunction(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_workflow",
            format!("no workflow named {name:?}"),
        ),
        InvokeError::Log(e) => e.into(),
    })?;
    let accepted_at = rx.borrow().accepted_at;
    if let Some(wait_ms) = query.wait_ms {
        // The start's invocation ends with the instance, or when the instance gives up its
        // task to wait; then its stream tells when it ends.
        let wait = Duration::from_millis(wait_ms.min(WORKFLOW_WAIT_MS_MAX));
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(wait, Dispatcher::wait(rx))
            .await
            .is_ok()
        {
            let left = wait.saturating_sub(started.elapsed());
            let instance = libflow::wait_ended(&ctx, &id, left)
                .await
                .map_err(workflow_error)?;
            let Some(instance) = instance else {
                // Its invocation ended, and its history is gone: it was collected.
                return Err(ApiError::new(
                    StatusCode::GONE,
                    "instance_collected",
                    format!("instance {id} ended and was collected; start it under another id"),
                ));
            };
            if instance.status != libflow::Status::Running {
                return Ok(with_seen(
                    accepted_at,
                    serde_json::to_value(instance).expect("an instance serializes"),
                ));
            }
        }
    }
    let mut response = with_seen(accepted_at, json!({ "id": id, "status": "running" }));
    *response.status_mut() = StatusCode::ACCEPTED;
    if let Ok(location) = HeaderValue::from_str(&format!("/workflows/{id}")) {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

/// Instance `id` of `book`, or 404.
async fn find_instance(
    state: &AppState,
    book: BookId,
    id: &str,
) -> Result<libflow::Instance, ApiError> {
    libflow::describe(&outside_ctx(state, book), id)
        .await
        .map_err(workflow_error)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_instance",
                format!("no workflow instance {id:?}"),
            )
        })
}

pub(super) fn workflow_error(e: libflow::Error) -> ApiError {
    match e {
        libflow::Error::Log(e) => e.into(),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "workflow",
            other.to_string(),
        ),
    }
}

/// `GET /workflows/{id}`: the instance, its status, output and every step.
async fn get_workflow(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id?;
    instance_id(&id)?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let instance = find_instance(&state, book, &id).await?;
    Ok(Json(
        serde_json::to_value(instance).expect("an instance serializes"),
    ))
}

/// `POST /workflows/{id}/signals/{name}`: sends a signal (the body, JSON) to an instance.
async fn signal_workflow(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((id, name)) = path?;
    instance_id(&id)?;
    libflow::check_signal_name(&name).map_err(ApiError::bad_request)?;
    let payload = json_body(body)?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let instance = find_instance(&state, book, &id).await?;
    // The signal goes in the log through an invocation of the instance's workflow that
    // delivers it and drives the instance on (one waiting for it holds no task), once per
    // signal id: the Idempotency-Key, or a new one.
    let signal_id = match idempotency_key(&headers)? {
        Some(key) => key,
        None => state.dispatcher.fresh_id().await?,
    };
    let key = libflow::signal_key(&id, &signal_id);
    let input = libflow::signal_input(&id, instance.input, &signal_id, &name, payload);
    let request = Request {
        idempotency_key: Some(&key),
        asynchronous: true,
        ..Request::new(&instance.workflow, book, input)
    };
    let rx = state.dispatcher.call(request).await.map_err(|e| match e {
        InvokeError::KeyReused(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!("signal {signal_id} was sent with another payload"),
        ),
        InvokeError::UnknownFunction(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "workflow_unavailable",
            format!("no gateway serves workflow {:?}", instance.workflow),
        ),
        InvokeError::Log(e) => e.into(),
    })?;
    let accepted_at = rx.borrow().accepted_at;
    let mut response = with_seen(accepted_at, json!({ "id": id, "signal": signal_id }));
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

/// `POST /workflows/{id}/cancel`: cancels an instance: the operation it runs or waits in
/// fails, the compensations of what succeeded run, and it ends `cancelled`. Cancelling twice,
/// or an instance that has ended, changes nothing.
async fn cancel_workflow(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    instance_id(&id)?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let instance = find_instance(&state, book, &id).await?;
    let key = libflow::signal_key(&id, "cancel");
    let request = Request {
        idempotency_key: Some(&key),
        asynchronous: true,
        ..Request::new(
            &instance.workflow,
            book,
            libflow::cancel_input(&id, instance.input),
        )
    };
    let rx = state.dispatcher.call(request).await.map_err(|e| match e {
        InvokeError::UnknownFunction(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "workflow_unavailable",
            format!("no gateway serves workflow {:?}", instance.workflow),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cancel",
            other.to_string(),
        ),
    })?;
    let accepted_at = rx.borrow().accepted_at;
    let mut response = with_seen(accepted_at, json!({ "id": id, "cancelling": true }));
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleRequest {
    name: String,
    workflow: String,
    #[serde(default)]
    input: Value,
    every_s: u64,
}

/// `POST /schedules`: starts workflow `workflow` with `input` every `every_s` seconds, the
/// first time one interval from now, once per tick (instances `NAME.0`, `NAME.1`, ...). A
/// name already scheduled is 409.
async fn create_schedule(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ScheduleRequest = serde_json::from_value(json_body(body)?)
        .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let every_ms = request.every_s.saturating_mul(1000);
    let schedule = libflow::Schedule {
        name: request.name,
        workflow: request.workflow,
        input: request.input,
        every_ms,
        first_ms: crate::invocations::now_ms().saturating_add(every_ms),
        tick: 0,
    };
    schedule.check().map_err(ApiError::bad_request)?;
    if state
        .dispatcher
        .registry()
        .config(&schedule.workflow)
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_workflow",
            format!("no workflow named {:?} here", schedule.workflow),
        ));
    }
    let book = book_of(&headers)?;
    let (id, input) = schedule.start();
    state.workflows_in(book);
    let key = format!("workflow:{id}");
    let request = Request {
        idempotency_key: Some(&key),
        asynchronous: true,
        ..Request::new(libflow::SCHEDULE_WORKFLOW, book, input)
    };
    let rx = state.dispatcher.call(request).await.map_err(|e| match e {
        InvokeError::KeyReused(_) => ApiError::new(
            StatusCode::CONFLICT,
            "schedule_exists",
            format!("a schedule named {:?} exists", schedule.name),
        ),
        InvokeError::UnknownFunction(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "schedules_unavailable",
            "this gateway runs no schedules",
        ),
        InvokeError::Log(e) => e.into(),
    })?;
    let accepted_at = rx.borrow().accepted_at;
    let mut response = with_seen(
        accepted_at,
        json!({ "name": schedule.name, "first_ms": schedule.first_ms, "every_ms": every_ms }),
    );
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// The running links of schedule chains in `book`: one per schedule.
async fn running_schedules(
    state: &AppState,
    book: BookId,
) -> Result<Vec<(libflow::Summary, libflow::Schedule)>, ApiError> {
    let ctx = outside_ctx(state, book);
    let running = libflow::list(
        &ctx,
        Some(libflow::Status::Running),
        None,
        WORKFLOW_LIST_MAX,
    )
    .await
    .map_err(workflow_error)?;
    let mut schedules = Vec::new();
    for summary in running {
        if summary.workflow != libflow::SCHEDULE_WORKFLOW {
            continue;
        }
        let instance = find_instance(state, book, &summary.id).await?;
        let Ok(schedule) = serde_json::from_value::<libflow::Schedule>(instance.input) else {
            continue;
        };
        let stopped = libflow::schedules::stopped(&ctx, &schedule.name)
            .await
            .map_err(workflow_error)?;
        if !stopped {
            schedules.push((summary, schedule));
        }
    }
    Ok(schedules)
}

/// `GET /schedules`: the book's schedules, with the tick each waits for.
async fn list_schedules(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let schedules: Vec<Value> = running_schedules(&state, book)
        .await?
        .into_iter()
        .map(|(_, s)| {
            json!({
                "name": s.name, "workflow": s.workflow, "input": s.input,
                "every_ms": s.every_ms, "next_tick": s.tick,
                "next_at_ms": s.first_ms.saturating_add(s.tick.saturating_mul(s.every_ms)),
            })
        })
        .collect();
    Ok(Json(json!({ "schedules": schedules })))
}

/// `DELETE /schedules/{name}`: stops the schedule: no tick starts after this answers (a link
/// on its way finds the stop and ends), and the waiting link is cancelled; ticks already
/// started go on.
async fn delete_schedule(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let links: Vec<_> = running_schedules(&state, book)
        .await?
        .into_iter()
        .filter(|(_, s)| s.name == name)
        .collect();
    if links.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_schedule",
            format!("no schedule named {name:?}"),
        ));
    }
    libflow::schedules::stop(&outside_ctx(&state, book), &name)
        .await
        .map_err(workflow_error)?;
    for (summary, schedule) in links {
        let key = libflow::signal_key(&summary.id, "cancel");
        let input = libflow::cancel_input(
            &summary.id,
            serde_json::to_value(&schedule).expect("serializes"),
        );
        let request = Request {
            idempotency_key: Some(&key),
            asynchronous: true,
            ..Request::new(libflow::SCHEDULE_WORKFLOW, book, input)
        };
        state.dispatcher.call(request).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cancel", e.to_string())
        })?;
    }
    let mut response = Json(json!({ "name": name, "deleted": true })).into_response();
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

/// `GET /workflows/{id}/queries/{name}?ARG=V...`: a read-only query of an instance, answered
/// from its history and its tables; it changes nothing.
async fn query_workflow(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<std::collections::BTreeMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Path((id, name)) = path?;
    instance_id(&id)?;
    let Query(args) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let answer = state
        .workflows
        .ask(&outside_ctx(&state, book), &id, &name, json!(args))
        .await;
    match answer {
        Ok(answer) => Ok(Json(answer)),
        Err(e @ libflow::QueryError::NoInstance(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            e.to_string(),
        )),
        // Not in-process: a worker that runs the workflow may answer it.
        Err(e @ libflow::QueryError::NoQuery { .. }) => {
            let libflow::QueryError::NoQuery { workflow, .. } = &e else {
                unreachable!("matched above")
            };
            let function = libflow::query_function(workflow, &name);
            let input = libflow::query_input(&id, json!(args));
            let request = Request::new(&function, book, input);
            let rx = state
                .dispatcher
                .call(request)
                .await
                .map_err(|call| match call {
                    InvokeError::UnknownFunction(_) => {
                        ApiError::new(StatusCode::NOT_FOUND, "unknown_query", e.to_string())
                    }
                    InvokeError::Log(e) => e.into(),
                    other => ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "query_failed",
                        other.to_string(),
                    ),
                })?;
            match Dispatcher::wait(rx).await.output {
                Some(Ok(output)) => {
                    let answer = serde_json::from_slice(&output).map_err(|e| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "query_failed",
                            format!("the query's answer is not JSON: {e}"),
                        )
                    })?;
                    Ok(Json(answer))
                }
                Some(Err(e)) if e.bad_input => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "query_failed",
                    e.message,
                )),
                Some(Err(e)) if e.unavailable => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "function_unavailable",
                    e.message,
                )),
                Some(Err(e)) => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "query_failed",
                    e.message,
                )),
                None => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "lost",
                    "the query's answer was evicted",
                )),
            }
        }
        Err(libflow::QueryError::Failed(e)) => Err(workflow_error(e)),
    }
}

/// Most instances one list answers.
pub const WORKFLOW_LIST_MAX: usize = 1000;

#[derive(serde::Deserialize)]
struct ListQuery {
    status: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /workflows?status=S&limit=N&before=SEQNUM`: instances of the book, newest first.
async fn list_workflows(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<libflow::Status>(json!(s)).map_err(|_| {
                ApiError::bad_request(format!(
                    "status is running, succeeded, failed, compensated or cancelled, not {s:?}"
                ))
            })?,
        ),
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > WORKFLOW_LIST_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={WORKFLOW_LIST_MAX}"
        )));
    }
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let instances = libflow::list(&outside_ctx(&state, book), status, query.before, limit)
        .await
        .map_err(workflow_error)?;
    Ok(Json(json!({ "instances": instances })))
}

async fn list_functions(State(state): State<Arc<AppState>>) -> Json<Value> {
    let registry = state.dispatcher.registry();
    let names = registry.names();
    let limits: serde_json::Map<String, Value> = names
        .iter()
        .filter_map(|name| {
            let c = registry.config(name)?;
            let mut limits = json!({
                "max_concurrency": c.max_concurrency,
                "timeout_ms": c.timeout.as_millis() as u64,
                "retries": c.retries,
                "backoff_ms": c.backoff.as_millis() as u64,
            });
            if let Some(worker) = registry.worker_of(name) {
                limits["worker"] = json!(worker);
            }
            Some((name.clone(), limits))
        })
        .collect();
    Json(json!({"functions": names, "limits": limits}))
}

/// Query parameters of the log endpoints. `tag` may repeat.
#[derive(Default)]
struct LogQuery {
    tags: Vec<u64>,
    from: Option<u64>,
    limit: Option<usize>,
    timeout_ms: Option<u64>,
}

fn parse_query(raw: Option<String>) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery::default();
    let raw = raw.unwrap_or_default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{key} must be an unsigned integer, got {value:?}"))
            })
        };
        match key {
            "tag" => q.tags.push(number()?),
            "from" => q.from = Some(number()?),
            "limit" => q.limit = Some(number()? as usize),
            "timeout_ms" => q.timeout_ms = Some(number()?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    Ok(q)
}

fn parse_book(raw: &str) -> Result<BookId, ApiError> {
    raw.parse::<u32>()
        .map(BookId)
        .map_err(|_| ApiError::bad_request(format!("book must be a u32, got {raw:?}")))
        .and_then(user_book)
}

/// Refuses the book Tally keeps its invocations in.
fn user_book(book: BookId) -> Result<BookId, ApiError> {
    crate::invocations::user_book(book).map_err(ApiError::bad_request)
}

fn single_tag(q: &LogQuery) -> Result<Tag, ApiError> {
    match q.tags.as_slice() {
        [] => Ok(Tag::ANY),
        [t] => Ok(Tag(*t)),
        _ => Err(ApiError::bad_request("reads take one tag")),
    }
}

fn record_json(r: &Record) -> Value {
    json!({
        "seqnum": r.seqnum.0,
        "tags": r.tags.iter().map(|t| t.0).collect::<Vec<_>>(),
        "data": base64::engine::general_purpose::STANDARD.encode(&r.data),
    })
}

/// The `SEEN_HEADER` of a request, if any.
fn seen_of(headers: &HeaderMap) -> Result<Option<Seqnum>, ApiError> {
    let Some(value) = headers.get(SEEN_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|v| Some(Seqnum(v)))
        .ok_or_else(|| ApiError::bad_request(format!("{SEEN_HEADER} must be a seqnum (u64)")))
}

/// Waits until this gateway covers what the caller has seen.
async fn catch_up(state: &AppState, seen: Option<Seqnum>) -> Result<(), ApiError> {
    Ok(crate::runtime::catch_up(state.engine.as_deref(), seen).await?)
}

/// A JSON reply carrying the highest seqnum the caller has seen.
fn with_seen(seen: Option<Seqnum>, body: Value) -> Response {
    let mut response = Json(body).into_response();
    if let Some(seen) = seen {
        response
            .headers_mut()
            .insert(SEEN_HEADER, axum::http::HeaderValue::from(seen.0));
    }
    response
}

async fn log_append(
    State(state): State<Arc<AppState>>,
    book: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(book) = book?;
    let data = body?;
    let book = parse_book(&book)?;
    let q = parse_query(raw)?;
    let seen = seen_of(&headers)?;
    let tags: Vec<Tag> = q.tags.into_iter().map(Tag).collect();
    let seqnum = state.log.append(book, &tags, data).await?;
    Ok(with_seen(
        Some(seen.map_or(seqnum, |s| s.max(seqnum))),
        json!({"seqnum": seqnum.0}),
    ))
}

async fn log_records(
    State(state): State<Arc<AppState>>,
    book: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(book) = book?;
    let book = parse_book(&book)?;
    let q = parse_query(raw)?;
    let seen = seen_of(&headers)?;
    catch_up(&state, seen).await?;
    let tag = single_tag(&q)?;
    let limit = q.limit.unwrap_or(READ_LIMIT_DEFAULT);
    let range = ReadRange {
        from: Seqnum(q.from.unwrap_or(0)),
        to: Seqnum::MAX,
        limit,
    };
    let records = state.log.read_range(book, tag, range).await?;
    let next = records.last().map(|r| r.seqnum.0 + 1);
    // Full by count, or possibly cut by the byte budget: there may be more.
    let bytes: usize = records.iter().map(|r| r.data.len()).sum();
    let more =
        records.len() == limit || bytes + logbook::RECORD_BYTES_MAX > logbook::READ_RANGE_BYTES_MAX;
    let last = records.last().map(|r| r.seqnum);
    Ok(with_seen(
        seen.max(last),
        json!({
            "records": records.iter().map(record_json).collect::<Vec<_>>(),
            "next": if more { next } else { None },
        }),
    ))
}

async fn log_next(
    State(state): State<Arc<AppState>>,
    book: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(book) = book?;
    let book = parse_book(&book)?;
    let q = parse_query(raw)?;
    let seen = seen_of(&headers)?;
    catch_up(&state, seen).await?;
    let tag = single_tag(&q)?;
    let from = Seqnum(q.from.unwrap_or(0));
    let record = match q.timeout_ms {
        Some(ms) => {
            state
                .log
                .read_next_blocking(book, tag, from, Duration::from_millis(ms))
                .await?
        }
        None => state.log.read_next(book, tag, from).await?,
    };
    Ok(with_seen(
        seen.max(record.as_ref().map(|r| r.seqnum)),
        json!({"record": record.as_ref().map(record_json)}),
    ))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(engine) = &state.engine {
        let e = engine.engine_stats();
        let r = engine.runtime_stats();
        let m = &state.metrics;
        m.pending_appends.set(e.pending_records as i64);
        m.cache_bytes.set(e.cache_bytes as i64);
        m.cache_hits.set(e.cache_hits as i64);
        m.cache_misses.set(e.cache_misses as i64);
        m.index_records.set(e.index_records as i64);
        m.metalog_position.set(e.metalog_position as i64);
        m.storage_reads.set(r.storage_reads as i64);
        m.replicate_calls.set(r.replicate_calls as i64);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.encode(),
    )
        .into_response()
}
