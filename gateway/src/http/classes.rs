//! The class routes: calls of objects' methods (`POST /objects/{class}/{key}/{method}`, and
//! `.../send`), an object's state and queue (`GET /objects/{class}/{key}`) and history
//! (`.../history`), and packages (`PUT /packages/{name}`, `GET /packages`). A collection name
//! that is a class's is the class's: its objects change only through their methods.
//!
//! Refusals: an unknown class or method 404, a call an access rule refuses 403 (nothing is
//! logged), a malformed input or a state that does not fit the class 400, the method's own
//! failure 422 `method_failed`, a synchronous call cycle 409 `reentrant`, a method whose
//! function cannot run 503.

use super::{book_of, catch_up, idempotency_key, seen_of, with_seen, ApiError, AppState};
use crate::functions::Dispatcher;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use libobject::{CallRequest, ObjectRef, Package, CALL_FUNCTION};
use logbook::BookId;
use serde_json::{json, Value};
use std::sync::Arc;

/// A libobject error as the gateway's JSON error.
pub(super) fn object_error(e: libobject::Error) -> ApiError {
    use libobject::Error as E;
    let (status, code) = match &e {
        E::NoClass(_) => (StatusCode::NOT_FOUND, "unknown_class"),
        E::NoMethod { .. } => (StatusCode::NOT_FOUND, "unknown_method"),
        E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        E::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        E::Failed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "method_failed"),
        E::Reentrant(_) => (StatusCode::CONFLICT, "reentrant"),
        E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        E::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
        E::Log(e) => return e.clone().into(),
    };
    ApiError::new(status, code, e.to_string())
}

/// Whether `name` is an installed class's (then `/objects/{name}/...` is about its objects).
pub(super) fn is_class(state: &AppState, name: &str) -> bool {
    state.classes.class(name).is_ok()
}

/// The refusal of a direct write to an object of a class.
pub(super) fn methods_only(class: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "methods_only",
        format!("objects of class {class} change only through their methods: POST /objects/{class}/KEY/METHOD"),
    )
}

/// The call a request makes, admitted (its class and method exist, its caller may call it),
/// looking for packages other gateways installed once if the class is not known here.
async fn admitted(state: &AppState, request: &CallRequest) -> Result<(), ApiError> {
    match state.classes.admit(request) {
        Err(libobject::Error::NoClass(_)) => {
            state.packages.refresh(&*state.log, &state.classes).await?;
            state
                .classes
                .admit(request)
                .map(|_| ())
                .map_err(object_error)
        }
        admitted => admitted.map(|_| ()).map_err(object_error),
    }
}

/// The call a request makes and its book, once this gateway caught up with what the caller
/// has seen and the call is admitted.
async fn request_of(
    state: &AppState,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(CallRequest, BookId), ApiError> {
    let Path((class, key, method)) = path?;
    let input = super::json_body(body)?;
    let request = CallRequest::new(&class, &key, &method, input);
    let book = book_of(headers)?;
    catch_up(state, seen_of(headers)?).await?;
    admitted(state, &request).await?;
    Ok((request, book))
}

/// `POST /objects/{class}/{key}/{method}`: calls the method and answers its output. Queued
/// behind the object's earlier calls (a shared method runs at once). With an
/// `Idempotency-Key`, the call runs once however often it is sent, as a durable invocation.
pub(super) async fn call(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (mut request, book) = request_of(&state, path, &headers, body).await?;
    let key = idempotency_key(&headers)?;
    let output = match key {
        None => {
            let ctx = call_ctx(&state, book);
            state
                .classes
                .call(&ctx, request)
                .await
                .map_err(object_error)?
        }
        Some(key) => {
            request.call_key = Some(format!("idempotency:{key}"));
            let input = Bytes::from(serde_json::to_vec(&request).expect("requests serialize"));
            let rx = state
                .dispatcher
                .start(CALL_FUNCTION, book, input, Some(&key))
                .await
                .map_err(super::invoke_error)?;
            let invocation = Dispatcher::wait(rx).await;
            match invocation.output {
                Some(Ok(raw)) => serde_json::from_slice(&raw).unwrap_or(Value::Null),
                Some(Err(e)) => return Err(object_error(libobject::Error::from(e))),
                None => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "lost",
                        "the invocation's result was evicted",
                    ))
                }
            }
        }
    };
    Ok(with_seen(state.applied(), output))
}

/// `POST /objects/{class}/{key}/{method}/send`: the call as a message, run later: 202 with its
/// invocation id once it is in the log (`GET /invocations/{id}` shows its answer). Run by
/// another gateway if this one dies; with an `Idempotency-Key`, sent once.
pub(super) async fn send(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (mut request, book) = request_of(&state, path, &headers, body).await?;
    let key = match idempotency_key(&headers)? {
        Some(key) => key,
        None => state.dispatcher.fresh_id().await?,
    };
    request.call_key = Some(format!("send:{key}"));
    let input = Bytes::from(serde_json::to_vec(&request).expect("requests serialize"));
    let rx = state
        .dispatcher
        .start_async(CALL_FUNCTION, book, input, Some(&key))
        .await
        .map_err(super::invoke_error)?;
    let (id, accepted_at) = {
        let inv = rx.borrow();
        (inv.id.clone(), inv.accepted_at)
    };
    let mut response = with_seen(seen_of(&headers)?.max(accepted_at), json!({ "id": id }));
    *response.status_mut() = StatusCode::ACCEPTED;
    if let Ok(location) = HeaderValue::from_str(&format!("/invocations/{id}")) {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

/// A context whose calls go to this gateway's dispatcher: what an object call from outside
/// runs its methods with.
fn call_ctx(state: &AppState, book: BookId) -> crate::Ctx {
    crate::Ctx::with_invoker(
        state.log.clone(),
        book,
        String::new(),
        state.dispatcher.clone(),
        0,
    )
}

/// `GET /objects/{class}/{key}` of a class: the object's state, how many calls it ran, its
/// version (the seqnum of its newest done record) and the calls queued on it now.
pub(super) async fn inspect(
    state: &AppState,
    class: String,
    key: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let book = book_of(headers)?;
    catch_up(state, seen_of(headers)?).await?;
    let ctx = call_ctx(state, book);
    let view = state
        .classes
        .inspect(&ctx, &ObjectRef::new(class, key))
        .await
        .map_err(object_error)?;
    Ok(with_seen(state.applied(), json!(view)))
}

/// `GET /objects/{class}/{key}/history?after=SEQNUM&limit=N` of a class: the calls the object
/// ran, in order, each with its input, caller, output or error and the state after it.
pub(super) async fn history(
    state: &AppState,
    class: String,
    key: String,
    query: super::objects::HistoryQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let book = book_of(headers)?;
    catch_up(state, seen_of(headers)?).await?;
    let ctx = call_ctx(state, book);
    let limit = query.limit.unwrap_or(super::HISTORY_LIMIT_DEFAULT);
    let page = state
        .classes
        .history(
            &ctx,
            &ObjectRef::new(class, key),
            query.after.unwrap_or(0),
            limit,
        )
        .await
        .map_err(object_error)?;
    Ok(with_seen(state.applied(), json!(page)))
}

/// `PUT /packages/{name}`: installs a package (its TOML file, or the same as JSON; `name` may
/// be left out), on this gateway at once and on the others within
/// `PACKAGES_REFRESH_EVERY`; it replaces an installed package of the same name.
pub(super) async fn put_package(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let body = body?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("a package is UTF-8 text (TOML or JSON)"))?;
    let mut value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("package: {e}")))?
    } else {
        toml::from_str(text).map_err(|e| ApiError::bad_request(format!("package: {e}")))?
    };
    match value.get("name") {
        None => {
            if let Some(members) = value.as_object_mut() {
                members.insert("name".into(), json!(name));
            }
        }
        Some(n) if n != &json!(name) => {
            return Err(ApiError::bad_request(format!(
                "the package is named {n}, the path {name:?}"
            )))
        }
        Some(_) => {}
    }
    let package: Package = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("package: {e}")))?;
    // Checked against what is installed before it goes into the log.
    state.packages.refresh(&*state.log, &state.classes).await?;
    state
        .classes
        .classes()
        .install(package.clone())
        .map_err(object_error)?;
    let record = serde_json::to_vec(&package).expect("packages serialize");
    state
        .log
        .append(BookId(0), &[libobject::packages_tag()], Bytes::from(record))
        .await?;
    state.packages.refresh(&*state.log, &state.classes).await?;
    Ok(Json(describe(&state, &package)).into_response())
}

/// `GET /packages`: every installed package and its classes.
pub(super) async fn list_packages(
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    state.packages.refresh(&*state.log, &state.classes).await?;
    let classes = state.classes.classes();
    let packages: Vec<Value> = classes.packages().map(|p| describe(&state, p)).collect();
    Ok(Json(json!({ "packages": packages })).into_response())
}

/// `GET /packages/{name}`: the package as declared, and each class resolved (inherited
/// fields and methods included).
pub(super) async fn get_package(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    state.packages.refresh(&*state.log, &state.classes).await?;
    let classes = state.classes.classes();
    let package = classes.package(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_package",
            format!("no package {name:?}"),
        )
    })?;
    Ok(Json(describe(&state, package)).into_response())
}

fn describe(state: &AppState, package: &Package) -> Value {
    let resolved: Vec<Value> = package
        .classes
        .keys()
        .filter_map(|c| state.classes.class(c).ok())
        .map(|c| json!(*c))
        .collect();
    json!({ "name": package.name, "declared": package, "classes": resolved })
}

/// How long a request for a saga waits for it to end before answering `running`.
const SAGA_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Style {
    #[default]
    Serializable,
    Saga,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    style: Style,
    #[serde(default)]
    calls: Option<Value>,
    /// One call whose method's calls of other objects join the transaction (an open one).
    #[serde(default)]
    call: Option<Value>,
}

/// `POST /transactions/{id}`: a transaction across objects, `{"calls": [...]}`, serializable
/// (the default) or a saga (`"style": "saga"`, each call with its `compensate`), or
/// `{"call": {...}}`, serializable, whose participants are the objects its method reaches.
/// Answers its outcome: `success` (200), `failure` (422), `retryable` (503), or for a saga
/// still running after a minute `running` (202). The same id again answers the same outcome.
pub(super) async fn transact(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let body: TxnBody = serde_json::from_value(super::json_body(body)?)
        .map_err(|e| ApiError::bad_request(format!("a transaction: {e}")))?;
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let ctx = call_ctx(&state, book);
    match (body.style, body.calls, body.call) {
        (Style::Serializable, Some(calls), None) => {
            let calls: Vec<libobject::TxnCall> = serde_json::from_value(calls)
                .map_err(|e| ApiError::bad_request(format!("calls: {e}")))?;
            let outcome = state.classes.transact(&ctx, &id, calls, None).await;
            serializable(&state, outcome)
        }
        (Style::Serializable, None, Some(call)) => {
            let call: libobject::TxnCall = serde_json::from_value(call)
                .map_err(|e| ApiError::bad_request(format!("call: {e}")))?;
            let outcome = state.classes.transact_open(&ctx, &id, call, None).await;
            serializable(&state, outcome)
        }
        (Style::Saga, Some(calls), None) => {
            let saga: libobject::Saga = serde_json::from_value(json!({ "calls": calls }))
                .map_err(|e| ApiError::bad_request(format!("calls: {e}")))?;
            state.classes.admit_saga(&saga).map_err(object_error)?;
            let instance = libobject::saga_instance(&id);
            libflow::check_instance_id(&instance).map_err(ApiError::bad_request)?;
            state.workflows_in(book);
            let key = format!("workflow:{instance}");
            let input = libflow::start_input(&instance, json!(saga));
            let rx = state
                .dispatcher
                .start_async(libobject::SAGA_WORKFLOW, book, input, Some(&key))
                .await
                .map_err(super::invoke_error)?;
            let _ = tokio::time::timeout(SAGA_WAIT, Dispatcher::wait(rx)).await;
            saga_outcome(&state, book, &id, SAGA_WAIT).await
        }
        (Style::Saga, _, _) => Err(ApiError::bad_request(
            "a saga takes \"calls\", each with its \"compensate\"",
        )),
        (Style::Serializable, _, _) => Err(ApiError::bad_request(
            "a transaction takes \"calls\" (its participants' calls) or \"call\" (one call, whose method's calls of other objects join it)",
        )),
    }
}

/// A serializable transaction's outcome as the transaction routes answer it.
fn serializable(
    state: &AppState,
    outcome: Result<libobject::TxnOutcome, libobject::Error>,
) -> Result<Response, ApiError> {
    let outcome = outcome.map_err(object_error)?;
    let status = match outcome.outcome {
        libobject::TxnStatus::Success => StatusCode::OK,
        libobject::TxnStatus::Failure => StatusCode::UNPROCESSABLE_ENTITY,
        libobject::TxnStatus::Retryable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut body = json!(outcome);
    body["style"] = json!("serializable");
    let mut response = with_seen(state.applied(), body);
    *response.status_mut() = status;
    Ok(response)
}

/// A saga's outcome as the transaction routes answer it, once it ended (or `running`).
async fn saga_outcome(
    state: &AppState,
    book: BookId,
    id: &str,
    wait: std::time::Duration,
) -> Result<Response, ApiError> {
    let ctx = call_ctx(state, book);
    let instance = libflow::wait_ended(&ctx, &libobject::saga_instance(id), wait)
        .await
        .map_err(super::workflow_error)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_transaction",
                format!("no transaction {id:?}"),
            )
        })?;
    use libflow::Status as S;
    let (status, mut body) = match instance.status {
        S::Running => (StatusCode::ACCEPTED, json!({ "outcome": "running" })),
        S::Succeeded => (
            StatusCode::OK,
            json!({ "outcome": "success", "results": instance.output.unwrap_or_default()["results"] }),
        ),
        S::Failed | S::Compensated | S::Cancelled => {
            let message = instance.error.unwrap_or_default();
            let e = libobject::Error::from(tally_sdk::FunctionError::new(message));
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "outcome": "failure",
                    "compensated": instance.status == S::Compensated,
                    "error": { "kind": e.kind(), "message": e.to_string() },
                }),
            )
        }
    };
    body["id"] = json!(id);
    body["style"] = json!("saga");
    let mut response = with_seen(state.applied(), body);
    *response.status_mut() = status;
    Ok(response)
}

/// `GET /transactions/{id}`: a transaction's outcome, 200 whatever it is (202 for a saga still
/// running; a serializable one is finished first if its coordinator died), or 404.
pub(super) async fn transaction(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut response = transaction_outcome(state, id, headers).await?;
    let status = response.status();
    if status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::SERVICE_UNAVAILABLE {
        *response.status_mut() = StatusCode::OK;
    }
    Ok(response)
}

async fn transaction_outcome(
    state: Arc<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    if id.is_empty() || id.len() > libobject::TXN_ID_BYTES_MAX {
        return Err(ApiError::bad_request("no such transaction id"));
    }
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let ctx = call_ctx(&state, book);
    if let Some(outcome) = state
        .classes
        .transaction(&ctx, &id)
        .await
        .map_err(object_error)?
    {
        return serializable(&state, Ok(outcome));
    }
    if libflow::check_instance_id(&libobject::saga_instance(&id)).is_err() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_transaction",
            format!("no transaction {id:?}"),
        ));
    }
    saga_outcome(&state, book, &id, std::time::Duration::ZERO).await
}

/// The id of a link's or a delete's transaction: `{what}:{Idempotency-Key}`, so the same
/// request again is the same transaction, or a fresh one.
async fn runtime_txn_id(
    state: &AppState,
    what: &str,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    Ok(match idempotency_key(headers)? {
        Some(key) => format!("{what}:{key}"),
        None => format!("{what}:{}", state.dispatcher.fresh_id().await?),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// `POST /objects/{class}/{key}/links/{field}` with `{"add": [keys]}` or `{"remove": [keys]}`:
/// links (or unlinks) the object's reference field and each key's inverse field, both sides
/// in one transaction; its outcome (200 success, 422 failure).
pub(super) async fn link(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((class, key, field)) = path?;
    let body: LinkBody = serde_json::from_value(super::json_body(body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "{{\"add\": [keys]}} or {{\"remove\": [keys]}}: {e}"
        ))
    })?;
    let (keys, add) = match (body.add.is_empty(), body.remove.is_empty()) {
        (false, true) => (body.add, true),
        (true, false) => (body.remove, false),
        _ => {
            return Err(ApiError::bad_request(
                "give either add or remove, with keys",
            ))
        }
    };
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    if !is_class(&state, &class) {
        return Err(object_error(libobject::Error::NoClass(class)));
    }
    let id = runtime_txn_id(&state, "link", &headers).await?;
    let ctx = call_ctx(&state, book);
    let outcome = state
        .classes
        .link(&ctx, &id, &ObjectRef::new(class, key), &field, &keys, add)
        .await
        .map_err(object_error)?;
    let status = match outcome.outcome {
        libobject::TxnStatus::Success => StatusCode::OK,
        libobject::TxnStatus::Failure => StatusCode::UNPROCESSABLE_ENTITY,
        libobject::TxnStatus::Retryable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = with_seen(state.applied(), json!(outcome));
    *response.status_mut() = status;
    Ok(response)
}

/// `DELETE /objects/{class}/{key}` of a class: unlinks the object from every object that
/// refers to it and empties it; `{"deleted": true, "unlinked": N}`.
pub(super) async fn delete(
    state: &AppState,
    class: String,
    key: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let book = book_of(headers)?;
    catch_up(state, seen_of(headers)?).await?;
    let id = runtime_txn_id(state, "delete", headers).await?;
    let ctx = call_ctx(state, book);
    let deleted = state
        .classes
        .delete(&ctx, &id, &ObjectRef::new(class, key))
        .await
        .map_err(object_error)?;
    Ok(with_seen(state.applied(), deleted))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysQuery {
    keys: String,
}

/// `GET /objects/{class}?keys=k1,k2`: the states of many objects, `{"objects": {key: state}}`.
pub(super) async fn read_many(
    State(state): State<Arc<AppState>>,
    class: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(class) = class?;
    // A collection of libstore's has no listing: only classes are read so.
    state.classes.class(&class).map_err(object_error)?;
    let axum::extract::Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let keys: Vec<String> = query.keys.split(',').map(str::to_string).collect();
    let book = book_of(&headers)?;
    catch_up(&state, seen_of(&headers)?).await?;
    let ctx = call_ctx(&state, book);
    let objects = state
        .classes
        .read_many(&ctx, &class, &keys)
        .await
        .map_err(object_error)?;
    Ok(with_seen(state.applied(), json!({ "objects": objects })))
}
