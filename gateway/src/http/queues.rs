//! The queue routes: libqueue's queues over HTTP for producers and consumers outside
//! functions, in the request's book (`X-Tally-Book`). A gateway keeps each queue's and
//! group's handle while it runs (`Queues`), so a pop replays one or two records, not the
//! group's stream.
//!
//! - `PUT /queues/{name}?shards=N`: creates the queue with N shards (default 1), or checks
//!   that it has them; `{"name", "shards"}`. `PUT /queues/{name}/groups/{group}` creates a
//!   consumer group, which sees the messages pushed after it: create groups before producing.
//! - `POST /queues/{name}/push`: the body is one message; `{"id": "SHARD:SEQNUM"}`. With an
//!   `Idempotency-Key`, the same key pushes once (the same id again). A push creates the
//!   queue if it is new (`?shards=N` as for `PUT`).
//! - `POST /queues/{name}/push-batch`: `{"messages": ["<base64>", ...]}`, all in one append;
//!   `{"ids": [...]}`.
//! - `POST /queues/{name}/pop?group=G&wait_ms=N`: `{"id", "data": "<base64>", "deliveries",
//!   "receipt"}`, or 204 when nothing came in time. `visibility_timeout_ms` and
//!   `max_deliveries` set the group's rules for this pop. With an `Idempotency-Key` the same
//!   key answers the same delivery.
//! - `POST /queues/{name}/ack?group=G&id=ID&receipt=R`: `{"acked": true}`; 409
//!   `not_in_flight` if that delivery is not the message's current one (acked already, or
//!   taken again after its visibility timeout): the work must not count as done.
//! - `GET /queues/{name}`: shards, length, and per group its lag, in flight, dead letters,
//!   acked, deliveries and the age of its oldest message not acked.
//! - `GET /queues/{name}/groups/{group}/dead-letters`, and `POST .../requeue?id=ID` and
//!   `.../discard?id=ID`.
//!
//! Every route but `PUT` and push answers 404 `unknown_queue` for a queue no one created; a
//! pop creates its group if it is new.
//!
//! Refusals are the gateway's JSON errors: a bad name, id, shard count or message 400, an ack
//! of a delivery that is not current or a requeue of a message that is not a dead letter
//! 409, records trimmed under a key 410, the log's failures as elsewhere.

use super::{book_of, idempotency_key, ApiError, AppState};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use libqueue::{Group, MessageId, Options, Queue, Settings};
use logbook::{BookId, Seqnum};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most handles (queues and groups) a gateway keeps; past it the lowest are dropped (only a
/// cache: a handle opened again reads the same from the log).
pub const QUEUE_HANDLES_MAX: usize = 1024;
/// Longest a pop waits for a message (`wait_ms`).
pub const POP_WAIT_MS_MAX: u64 = 60_000;

type GroupKey = (BookId, String, String, u64, u32);

/// How often a gateway trims the queues it used (`Queues::trim_active`).
pub const QUEUE_TRIM_EVERY: Duration = Duration::from_secs(5);
/// Trim rounds a queue gets after it was last used: a trim cuts one round behind.
const TRIM_ROUNDS: u8 = 2;

/// The queue and group handles of a gateway.
#[derive(Default)]
pub struct Queues {
    queues: Mutex<BTreeMap<(BookId, String), Queue>>,
    groups: Mutex<BTreeMap<GroupKey, Group>>,
    /// Queues used lately, with the trim rounds they still get.
    active: Mutex<BTreeMap<(BookId, String), u8>>,
}

impl Queues {
    /// The names of the queues of `book` this gateway has opened.
    pub fn names(&self, book: BookId) -> Vec<String> {
        let queues = self.queues.lock().expect("queues lock");
        queues
            .keys()
            .filter(|(b, _)| *b == book)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Notes that queue `name` was pushed to or popped from: the next trims look at it.
    pub fn touch(&self, book: BookId, name: &str) {
        self.active
            .lock()
            .expect("active lock")
            .insert((book, name.to_string()), TRIM_ROUNDS);
    }

    /// Trims each queue used since its last trim rounds (`Queue::trim`): what every group is
    /// done with goes. Returns the group streams cut and the trims made.
    pub async fn trim_active(&self, state: &AppState) -> (u64, u64) {
        let due: Vec<(BookId, String)> = {
            let mut active = self.active.lock().expect("active lock");
            let due = active.keys().cloned().collect();
            active.retain(|_, rounds| {
                *rounds -= 1;
                *rounds > 0
            });
            due
        };
        let (mut cut, mut trims) = (0, 0);
        for (book, name) in due {
            let trimmed = match self.queue(state, book, &name, None, false).await {
                Ok(queue) => queue.trim().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.message().to_string()),
            };
            match trimmed {
                Ok(report) => {
                    cut += report.group_streams_cut as u64;
                    trims += 1;
                }
                Err(e) => {
                    tracing::warn!(book = book.0, queue = %name, error = %e, "trimming a queue")
                }
            }
        }
        (cut, trims)
    }

    /// The handle of queue `name` in `book`, opened (with `shards`, if given) on first use;
    /// without `create`, 404 for a queue no one created.
    pub async fn queue(
        &self,
        state: &AppState,
        book: BookId,
        name: &str,
        shards: Option<u32>,
        create: bool,
    ) -> Result<Queue, ApiError> {
        let key = (book, name.to_string());
        let kept = self.queues.lock().expect("queues lock").get(&key).cloned();
        if let Some(queue) = kept {
            if let Some(shards) = shards.filter(|s| *s != queue.shards()) {
                return Err(queue_error(libqueue::Error::Invalid(format!(
                    "queue {name} has {} shards, not {shards}",
                    queue.shards()
                ))));
            }
            return Ok(queue);
        }
        let options = Options {
            shards,
            ..Options::default()
        };
        let ctx = super::outside_ctx(state, book);
        let found = if create {
            Queue::open_with(ctx, name, options).await.map(Some)
        } else {
            Queue::find(ctx, name, options).await
        };
        let queue = found.map_err(queue_error)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_queue",
                format!(
                    "no queue {name} in book {}: create it (PUT /queues/{name}) or push to it",
                    book.0
                ),
            )
        })?;
        let mut queues = self.queues.lock().expect("queues lock");
        if queues.len() >= QUEUE_HANDLES_MAX {
            queues.pop_first();
        }
        Ok(queues.entry(key).or_insert(queue).clone())
    }

    /// The handle of `group` of a queue, with `settings`, joined on first use.
    pub async fn group(
        &self,
        state: &AppState,
        book: BookId,
        queue: &str,
        group: &str,
        settings: Settings,
    ) -> Result<Group, ApiError> {
        let key: GroupKey = (
            book,
            queue.to_string(),
            group.to_string(),
            settings.visibility_timeout.as_millis() as u64,
            settings.max_deliveries,
        );
        let kept = self.groups.lock().expect("groups lock").get(&key).cloned();
        if let Some(group) = kept {
            return Ok(group);
        }
        let handle = self
            .queue(state, book, queue, None, false)
            .await?
            .group_with(group, settings)
            .await
            .map_err(queue_error)?;
        let mut groups = self.groups.lock().expect("groups lock");
        if groups.len() >= QUEUE_HANDLES_MAX {
            groups.pop_first();
        }
        Ok(groups.entry(key).or_insert(handle).clone())
    }
}

/// A libqueue error as the gateway's JSON error.
pub(super) fn queue_error(e: libqueue::Error) -> ApiError {
    use libqueue::Error as E;
    let (status, code) = match &e {
        E::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        E::NotInFlight { .. } => (StatusCode::CONFLICT, "not_in_flight"),
        E::NotDeadLetter { .. } => (StatusCode::CONFLICT, "not_dead_letter"),
        E::Trimmed(_) => (StatusCode::GONE, "trimmed"),
        E::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
        E::Log(e) => return e.clone().into(),
    };
    ApiError::new(status, code, e.to_string())
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PushQuery {
    shards: Option<u32>,
}

/// `PUT /queues/{name}?shards=N`: creates the queue, or checks its shard count.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<PushQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let q = query(q)?;
    let book = book_of(&headers)?;
    let queue = state
        .queues
        .queue(&state, book, &name, q.shards, true)
        .await?;
    Ok(Json(json!({ "name": name, "shards": queue.shards() })).into_response())
}

/// `PUT /queues/{name}/groups/{group}`: creates the group (it sees what is pushed after).
pub(super) async fn create_group(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((name, group)) = path?;
    let book = book_of(&headers)?;
    state
        .queues
        .group(&state, book, &name, &group, Settings::default())
        .await?;
    Ok(Json(json!({ "queue": name, "group": group })).into_response())
}

/// `POST /queues/{name}/push`: the body is the message; `{"id": ...}`.
pub(super) async fn push(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<PushQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let q = query(q)?;
    let body = body?;
    let book = book_of(&headers)?;
    let key = idempotency_key(&headers)?;
    let queue = state
        .queues
        .queue(&state, book, &name, q.shards, true)
        .await?;
    let id = match key {
        Some(key) => queue.push_keyed(&key, body).await,
        None => queue.push(body).await,
    }
    .map_err(queue_error)?;
    state.queues.touch(book, &name);
    Ok(Json(json!({ "id": id })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Batch {
    messages: Vec<String>,
}

/// `POST /queues/{name}/push-batch`: `{"messages": ["<base64>", ...]}` in one append;
/// `{"ids": [...]}`.
pub(super) async fn push_batch(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<PushQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let q = query(q)?;
    let batch: Batch = serde_json::from_slice(&body?).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"messages\": [\"<base64>\", ...]}}: {e}"
        ))
    })?;
    let messages = batch
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            base64::engine::general_purpose::STANDARD
                .decode(m)
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("message {i} is not base64: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if messages.is_empty() {
        return Err(ApiError::bad_request("a batch holds at least one message"));
    }
    let book = book_of(&headers)?;
    let queue = state
        .queues
        .queue(&state, book, &name, q.shards, true)
        .await?;
    let ids = queue.push_batch(messages).await.map_err(queue_error)?;
    state.queues.touch(book, &name);
    Ok(Json(json!({ "ids": ids })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PopQuery {
    group: String,
    #[serde(default)]
    wait_ms: u64,
    visibility_timeout_ms: Option<u64>,
    max_deliveries: Option<u32>,
}

impl PopQuery {
    fn settings(&self) -> Settings {
        let defaults = Settings::default();
        Settings {
            visibility_timeout: self
                .visibility_timeout_ms
                .map_or(defaults.visibility_timeout, Duration::from_millis),
            max_deliveries: self.max_deliveries.unwrap_or(defaults.max_deliveries),
            ..defaults
        }
    }
}

/// `POST /queues/{name}/pop?group=G&wait_ms=N`: the delivery, or 204.
pub(super) async fn pop(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<PopQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let q = query(q)?;
    if q.wait_ms > POP_WAIT_MS_MAX {
        return Err(ApiError::bad_request(format!(
            "wait_ms is at most {POP_WAIT_MS_MAX}"
        )));
    }
    let book = book_of(&headers)?;
    let key = idempotency_key(&headers)?;
    let group = state
        .queues
        .group(&state, book, &name, &q.group, q.settings())
        .await?;
    let wait = Duration::from_millis(q.wait_ms);
    state.queues.touch(book, &name);
    let delivery = match key {
        Some(key) => group.pop_keyed(&key, wait).await,
        None if wait.is_zero() => group.pop().await,
        None => group.pop_wait(wait).await,
    }
    .map_err(queue_error)?;
    Ok(match delivery {
        Some(d) => Json(json!({
            "id": d.id,
            "data": b64(&d.data),
            "deliveries": d.deliveries,
            "receipt": d.receipt.0,
        }))
        .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckQuery {
    group: String,
    id: String,
    receipt: u64,
}

/// `POST /queues/{name}/ack?group=G&id=ID&receipt=R`: `{"acked": true}`, or 409.
pub(super) async fn ack(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<AckQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let q = query(q)?;
    let id: MessageId = q.id.parse().map_err(queue_error)?;
    let book = book_of(&headers)?;
    let group = state
        .queues
        .group(&state, book, &name, &q.group, Settings::default())
        .await?;
    group
        .ack_id(id, Seqnum(q.receipt))
        .await
        .map_err(queue_error)?;
    Ok(Json(json!({ "acked": true })).into_response())
}

/// `GET /queues/{name}`: the queue's shards, length and groups.
pub(super) async fn stat(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(name) = path?;
    let book = book_of(&headers)?;
    let queue = state.queues.queue(&state, book, &name, None, false).await?;
    let mut groups = Vec::new();
    for group in queue.groups().await.map_err(queue_error)? {
        let handle = state
            .queues
            .group(&state, book, &name, &group, Settings::default())
            .await?;
        let s = handle.stats().await.map_err(queue_error)?;
        groups.push(json!({
            "name": group,
            "lag": s.lag,
            "pending": s.pending,
            "in_flight": s.in_flight,
            "dead_letters": s.dead_letters,
            "acked": s.acked,
            "delivered": s.delivered,
            "oldest_age_ms": s.oldest_ms.map(|t| now_ms().saturating_sub(t)),
        }));
    }
    let length = queue.len().await.map_err(queue_error)?;
    Ok(Json(json!({
        "name": name,
        "shards": queue.shards(),
        "length": length,
        "groups": groups,
    }))
    .into_response())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /queues/{name}/groups/{group}/dead-letters`: `{"dead_letters": [{"id", "data",
/// "deliveries"}, ...]}`.
pub(super) async fn dead_letters(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((name, group)) = path?;
    let book = book_of(&headers)?;
    let group = state
        .queues
        .group(&state, book, &name, &group, Settings::default())
        .await?;
    let dead: Vec<Value> = group
        .dead_letters()
        .await
        .map_err(queue_error)?
        .into_iter()
        .map(|m| json!({ "id": m.id, "data": b64(&m.data), "deliveries": m.deliveries }))
        .collect();
    Ok(Json(json!({ "dead_letters": dead })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdQuery {
    id: String,
}

/// `POST /queues/{name}/groups/{group}/requeue?id=ID` and `.../discard?id=ID`.
pub(super) async fn requeue_or_discard(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<IdQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((name, group, action)) = path?;
    let q = query(q)?;
    let id: MessageId = q.id.parse().map_err(queue_error)?;
    let book = book_of(&headers)?;
    let group = state
        .queues
        .group(&state, book, &name, &group, Settings::default())
        .await?;
    match action.as_str() {
        "requeue" => group.requeue(id).await,
        "discard" => group.discard(id).await,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no action {action:?}: requeue or discard"),
            ))
        }
    }
    .map_err(queue_error)?;
    let mut done = serde_json::Map::new();
    done.insert(action, Value::Bool(true));
    Ok(Json(Value::Object(done)).into_response())
}
