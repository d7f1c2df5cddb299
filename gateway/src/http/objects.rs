//! The object routes: libstore's JSON objects and one-shot transactions over HTTP, in the
//! request's book (`X-Tally-Book`). One `libstore::Stores` serves every request, so the views
//! and decisions cached for a book serve every later request in that book.
//!
//! Refusals are the gateway's JSON errors: a malformed body or an unknown operation 400, a
//! missing object or path 404, an operation that does not fit the value it meets (`add` on a
//! string) 409, a document or value over the limit 413, a path that does not fit the
//! document 422. A refused write leaves the document as it was.

use super::classes::is_class;
use super::{book_of, catch_up, seen_of, with_seen, ApiError, AppState};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use libstore::{Object, OneShot, Op};
use logbook::Seqnum;
use serde_json::{json, Value};
use std::sync::Arc;
/// Changes a history page holds when the request names no limit.
pub const HISTORY_LIMIT_DEFAULT: usize = 100;
/// The header carrying an object's version: the seqnum of the record that last changed it.
pub const VERSION_HEADER: &str = "x-tally-version";

/// A libstore error as the gateway's JSON error.
pub(super) fn store_error(e: libstore::Error) -> ApiError {
    use libstore::Error as E;
    let (status, code) = match &e {
        E::BadPath { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "bad_path"),
        E::TypeMismatch { .. } => (StatusCode::CONFLICT, "type_mismatch"),
        E::Overflow { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "overflow"),
        E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        E::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        E::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
        E::KeyReused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "key_reused"),
        E::SnapshotCollected { .. } => (StatusCode::GONE, "snapshot_collected"),
        E::Log(e) => return e.clone().into(),
    };
    ApiError::new(status, code, e.to_string())
}

/// The object a request names, in the request's book, once this gateway has caught up with
/// what the caller has seen.
async fn object(
    state: &AppState,
    (collection, key): (String, String),
    headers: &HeaderMap,
) -> Result<Object, ApiError> {
    let book = book_of(headers)?;
    catch_up(state, seen_of(headers)?).await?;
    Ok(state
        .objects
        .of(super::outside_ctx(state, book))
        .collection(&collection)
        .object(&key))
}

/// The (collection, key) of a write; refused for a class's objects, which change only through
/// their methods.
fn store_path(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path((collection, key)) = path?;
    if is_class(state, &collection) {
        return Err(super::classes::methods_only(&collection));
    }
    Ok((collection, key))
}

/// A JSON reply carrying what the caller has now seen: everything this gateway applied.
fn reply(state: &AppState, headers: &HeaderMap, body: Value) -> Result<Response, ApiError> {
    Ok(with_seen(seen_of(headers)?.max(state.applied()), body))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetQuery {
    path: Option<String>,
}

/// `GET /objects/{collection}/{key}?path=/a/b`: the document, or the part at `path`; 404 if
/// there is none. `X-Tally-Version` is the seqnum of the record that last changed it.
pub(super) async fn get_object(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<GetQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Path((collection, key)) = path?;
    if is_class(&state, &collection) {
        if query.path.is_some() {
            return Err(ApiError::bad_request(
                "an object of a class is shown whole: no ?path=",
            ));
        }
        return super::classes::inspect(&state, collection, key, &headers).await;
    }
    let object = object(&state, (collection, key), &headers).await?;
    let view = object.view().await.map_err(store_error)?;
    if view.doc.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_object",
            format!("no object {}", object.id()),
        ));
    }
    let path = query.path.as_deref().unwrap_or("");
    let part = view.get(path).map_err(store_error)?.cloned();
    let part = part.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_path",
            format!("{} has nothing at {path:?}", object.id()),
        )
    })?;
    let mut response = reply(&state, &headers, part)?;
    response
        .headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from(view.version.0));
    Ok(response)
}

/// A JSON request body; an empty one is refused.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    match super::json_body(body)? {
        Value::Null => Err(ApiError::bad_request("the body must be JSON")),
        value => Ok(value),
    }
}

/// `PUT /objects/{collection}/{key}`: the body becomes the whole document;
/// `{"old": the document before, or null}`.
pub(super) async fn put_object(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let doc = json_body(body)?;
    let object = object(&state, store_path(&state, path)?, &headers).await?;
    let old = object.set("", doc).await.map_err(store_error)?;
    reply(&state, &headers, json!({ "old": old }))
}

/// `PATCH /objects/{collection}/{key}`: the body is a list of path operations
/// (`[{"op": "add", "path": "/n", "delta": 1}, ...]`), applied together as one record, all
/// or none; `{"results": [each one's result]}`.
pub(super) async fn patch_object(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ops = parse_ops(json_body(body)?)?;
    let object = object(&state, store_path(&state, path)?, &headers).await?;
    let results = object.apply(ops).await.map_err(store_error)?;
    reply(&state, &headers, json!({ "results": results }))
}

/// The operation names libstore knows, for errors.
const OP_NAMES: &str = "set, delete, make_object, make_array, add, push, pop, compare_and_set";

fn parse_ops(body: Value) -> Result<Vec<Op>, ApiError> {
    let Value::Array(items) = body else {
        return Err(ApiError::bad_request(
            "the body must be a JSON list of operations, [{\"op\": \"set\", \"path\": ..., ...}]",
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let name = item.get("op").and_then(Value::as_str).map(str::to_string);
            serde_json::from_value::<Op>(item).map_err(|e| match name {
                Some(name) if !OP_NAMES.split(", ").any(|n| n == name) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_op",
                    format!("operation {i}: unknown op {name:?}; the ops are {OP_NAMES}"),
                ),
                _ => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_op",
                    format!("operation {i}: {e}"),
                ),
            })
        })
        .collect()
}

/// `DELETE /objects/{collection}/{key}`: removes the document; `{"old": the document, or
/// null if there was none}`. An object of a class is deleted as `classes::delete` says.
pub(super) async fn delete_object(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((collection, key)) = path?;
    if is_class(&state, &collection) {
        return super::classes::delete(&state, collection, key, &headers).await;
    }
    let object = object(&state, (collection, key), &headers).await?;
    let old = object.delete("").await.map_err(store_error)?;
    reply(&state, &headers, json!({ "old": old }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    pub(super) after: Option<u64>,
    pub(super) limit: Option<usize>,
}

/// `GET /objects/{collection}/{key}/history?after=SEQNUM&limit=N`: the object's changes after
/// `after`, oldest first, each with its seqnum, kind, operations, whether it took effect and
/// the document after it; `next` is the `after` of the next page, if there may be one.
pub(super) async fn object_history(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Path((collection, key)) = path?;
    if is_class(&state, &collection) {
        return super::classes::history(&state, collection, key, query, &headers).await;
    }
    let limit = query.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
    if limit == 0 || limit > libstore::HISTORY_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={}",
            libstore::HISTORY_LIMIT_MAX
        )));
    }
    let object = object(&state, (collection, key), &headers).await?;
    let after = Seqnum(query.after.unwrap_or(0));
    let history = object.history(after, limit).await.map_err(store_error)?;
    let body = serde_json::to_value(history).expect("a history serializes");
    reply(&state, &headers, body)
}

/// The fields of a one-shot transaction's JSON.
const ONESHOT_FIELDS: [&str; 3] = ["reads", "conditions", "writes"];

/// `POST /transactions`: a one-shot transaction (`{"reads": [...], "conditions": [...],
/// "writes": [...]}`), applied at its position in the log; `{"committed": true, "seqnum": ..,
/// "reads": [...]}` or `{"committed": false, "seqnum": .., "reason": ".."}`, both 200.
pub(super) async fn run_transaction(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let Some(fields) = body.as_object() else {
        return Err(ApiError::bad_request(
            "a transaction is a JSON object: {\"reads\": [...], \"conditions\": [...], \"writes\": [...]}",
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !ONESHOT_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown field {unknown:?}; a transaction has reads, conditions and writes"
        )));
    }
    let transaction: OneShot = serde_json::from_value(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_transaction", e.to_string()))?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let store = state.objects.of(super::outside_ctx(&state, book));
    let outcome = store.run(&transaction).await.map_err(store_error)?;
    let body = serde_json::to_value(outcome).expect("an outcome serializes");
    reply(&state, &headers, body)
}
