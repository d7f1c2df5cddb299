//! The web console (`/console`: one page and its script, built into the binary) and the
//! routes only it needed: `GET /cluster`, `GET /invocations` and `GET /queues`.

use super::{book_of, invocation_json, ApiError, AppState};
use crate::functions::Status;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

/// What a gateway can say of the cluster beyond itself (its sequencers' and storage nodes'
/// statuses): `GET /cluster` merges it into its own. `tally up` has none.
pub type ClusterStatus = Arc<dyn Fn() -> BoxFuture<'static, Value> + Send + Sync>;

/// Invocations `GET /invocations` lists at most.
pub const INVOCATION_LIST_MAX: usize = 1000;

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// `GET /console`: the page. It reads everything it shows through the API, with the token
/// the user gives it.
pub(super) async fn page() -> Response {
    asset("index.html")
}

/// `GET /console/{file}`: the page's script and style sheet.
pub(super) async fn file(file: Result<Path<String>, PathRejection>) -> Response {
    match file {
        Ok(Path(file)) => asset(&file),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn asset(file: &str) -> Response {
    let (body, kind) = match file {
        "index.html" => (PAGE, "text/html; charset=utf-8"),
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such console file")
                .into_response()
        }
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            // It changes with the binary: a restarted gateway may serve another.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /cluster`: this gateway (its view, how far its index is applied, the gateways it
/// sees alive) and, in a cluster, every sequencer's and storage node's status as they answer
/// it, with the leader.
pub(super) async fn cluster(State(state): State<Arc<AppState>>) -> Json<Value> {
    let peers = state.dispatcher.peers().borrow().clone();
    let mut gateway = json!({
        "name": peers.me,
        "peers": peers.live,
        "applied": state.applied().map(|s| s.0),
    });
    if let Some(engine) = &state.engine {
        let e = engine.engine_stats();
        gateway["view"] = json!(engine.view().0);
        gateway["metalog_position"] = json!(engine.metalog_position());
        gateway["pending_appends"] = json!(e.pending_records);
        gateway["index_records"] = json!(e.index_records);
    }
    let mut answer = json!({ "gateway": gateway });
    match &state.cluster {
        Some(status) => {
            answer["mode"] = json!("cluster");
            if let Value::Object(more) = status().await {
                answer.as_object_mut().expect("an object").extend(more);
            }
        }
        None => answer["mode"] = json!("single"),
    }
    Json(answer)
}

#[derive(serde::Deserialize)]
pub(super) struct InvocationsQuery {
    function: Option<String>,
    status: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

/// `GET /invocations?function=F&status=S&before=ID&limit=N`: the invocations this gateway
/// keeps in memory (those it ran or is running, since it started), newest first.
pub(super) async fn list_invocations(
    State(state): State<Arc<AppState>>,
    query: Result<Query<InvocationsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(serde_json::from_value::<Status>(json!(s)).map_err(|_| {
            ApiError::bad_request(format!(
                "status is pending, running, succeeded or failed, not {s:?}"
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > INVOCATION_LIST_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={INVOCATION_LIST_MAX}"
        )));
    }
    let function = query.function.as_deref().filter(|f| !f.is_empty());
    let found = state
        .dispatcher
        .recent(function, status, query.before.as_deref(), limit);
    let invocations: Vec<Value> = found
        .iter()
        .map(|inv| {
            let mut v = invocation_json(inv);
            match std::str::from_utf8(&inv.input) {
                Ok(text) => v["input"] = json!(text),
                Err(_) => {
                    v["input_base64"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(&inv.input))
                }
            }
            v
        })
        .collect();
    Ok(Json(json!({ "invocations": invocations })))
}

/// The engine whose index `GET /log` and `GET /log/{book}/tags` list; 501 for a gateway over
/// another `LogBook`.
fn index_of(state: &AppState) -> Result<&crate::runtime::GatewayLog, ApiError> {
    state.engine.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "this gateway serves a log without an index to list",
        )
    })
}

/// Tags `GET /log/{book}/tags` lists at most.
pub const TAG_LIST_MAX: usize = 1000;

/// `GET /log`: every book of the log (the reserved book aside), with how many records it and
/// its tags have held and where the whole book is trimmed.
pub(super) async fn list_books(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, ApiError> {
    let engine = index_of(&state)?;
    let books: Vec<Value> = engine
        .books()
        .into_iter()
        .filter(|b| b.book != crate::invocations::INVOCATIONS_BOOK)
        .map(|b| {
            json!({
                "book": b.book.0,
                "records": b.records,
                "tags": b.tags,
                "trimmed_below": b.trimmed_below.0,
            })
        })
        .collect();
    Ok(Json(json!({ "books": books })))
}

#[derive(serde::Deserialize)]
pub(super) struct TagsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /log/{book}/tags?after=T&limit=N`: the book's tags in order, each with how many
/// records its stream has held; `next` continues.
pub(super) async fn list_tags(
    State(state): State<Arc<AppState>>,
    book: Result<Path<String>, PathRejection>,
    query: Result<Query<TagsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(book) = book?;
    let book = super::user_book(super::parse_book(&book)?)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > TAG_LIST_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={TAG_LIST_MAX}"
        )));
    }
    let engine = index_of(&state)?;
    let tags = engine.tags(book, query.after.map(logbook::Tag), limit);
    let next = (tags.len() == limit)
        .then(|| tags.last().map(|(t, _)| t.0))
        .flatten();
    let tags: Vec<Value> = tags
        .into_iter()
        .map(|(tag, records)| json!({"tag": tag.0, "records": records}))
        .collect();
    Ok(Json(json!({ "tags": tags, "next": next })))
}

/// `GET /queues`: the queues of the book this gateway has opened since it started (pushed
/// to, popped from, created, or read; and those of its queue triggers).
pub(super) async fn list_queues(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let book = book_of(&headers)?;
    Ok(Json(json!({ "queues": state.queues.names(book) })))
}
