//! Who may use which route: what each route needs of a token (`need_of`), the layer that
//! checks it before the route runs (`authorize`), and the token routes themselves.

use super::{book_of, catch_up, parse_book, seen_of, ApiError, AppState};
use crate::auth::{
    Need, Refusal, RevokeError, Scope, NAME_BYTES_MAX, RATE_PER_TOKEN_MAX, SCOPES_MAX,
};
use axum::extract::{MatchedPath, Path, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tracing::Instrument as _;

/// What a request needs its token to allow: a function of its route, method, path parameters
/// and book (`X-Tally-Book`, for the routes over objects, transactions and queues).
pub(crate) fn need_of(
    method: &Method,
    route: &str,
    param: &dyn Fn(&str) -> Option<String>,
    headers: &HeaderMap,
) -> Result<Need, ApiError> {
    let reads = method == Method::GET;
    let book = || book_of(headers);
    let path_book = || parse_book(&param("book").unwrap_or_default());
    let function = || param("name").unwrap_or_default();
    Ok(match route {
        // The console's page and script: what it shows, it reads with the user's token.
        "/health" | "/console" | "/console/{file}" => Need::Nothing,
        "/metrics" | "/cluster" | "/log" => Need::Metrics,
        "/tokens" | "/tokens/{id}" => Need::Admin,
        "/functions" | "/packages" => Need::AnyToken,
        "/packages/{name}" if reads => Need::AnyToken,
        "/packages/{name}" => Need::Admin,
        "/function/{name}" | "/asyncFunction/{name}" | "/workflows/{name}/{id}" => {
            Need::Invoke(function())
        }
        "/invocations"
        | "/invocations/{id}"
        | "/workflows"
        | "/workflows/{id}"
        | "/workflows/{id}/signals/{name}"
        | "/workflows/{id}/cancel"
        | "/workflows/{id}/queries/{name}"
        | "/schedules"
        | "/schedules/{name}" => Need::InvokeAny,
        "/log/{book}/append" => Need::Append(path_book()?),
        "/log/{book}/records" | "/log/{book}/next" | "/log/{book}/tags" => Need::Read(path_book()?),
        // Reading objects, their history, queue stats and dead letters, a transaction's outcome.
        "/objects/{collection}/{key}"
        | "/objects/{collection}/{key}/history"
        | "/objects/{class}"
        | "/transactions/{id}"
        | "/queues"
        | "/queues/{name}"
        | "/queues/{name}/groups/{group}/dead-letters"
            if reads =>
        {
            Need::Read(book()?)
        }
        // Appending what answers with nothing it read.
        "/queues/{name}"
        | "/queues/{name}/groups/{group}"
        | "/queues/{name}/push"
        | "/queues/{name}/push-batch"
        | "/queues/{name}/ack"
        | "/queues/{name}/groups/{group}/{action}" => Need::Append(book()?),
        // Changes that answer with what they read: writes of objects (the old document),
        // transactions, methods of objects, pops.
        "/objects/{collection}/{key}"
        | "/objects/{class}/{key}/{method}"
        | "/objects/{class}/{key}/links/{field}"
        | "/objects/{class}/{key}/{method}/send"
        | "/transactions"
        | "/transactions/{id}"
        | "/queues/{name}/pop" => Need::ReadAppend(book()?),
        // A route added without saying what it needs is for admins only, until it says.
        _ => Need::Admin,
    })
}

/// The layer before every route: a span for the request (in the trace its `traceparent`
/// names, if any), then 401 or 403 unless the request's token (if tokens are asked for) covers
/// what its route needs.
pub(crate) async fn authorize(
    state: State<Arc<AppState>>,
    route: MatchedPath,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let span = tracing::info_span!(
        target: "tally::trace",
        "http",
        otel.name = format!("{} {}", request.method(), route.as_str()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get(tally_sdk::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    tally_sdk::trace::set_remote_parent(&span, traceparent);
    let response = authorize_in(state, route, params, request, next)
        .instrument(span.clone())
        .await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn authorize_in(
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let params = match params {
        Ok(params) => params,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    };
    let need = match need_of(request.method(), route.as_str(), &param, request.headers()) {
        Ok(need) => need,
        Err(e) => return e.into_response(),
    };
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // A token from a caller that has seen a seqnum (a forwarding peer, whose token may be that
    // new) is checked against a log that covers it.
    if authorization.is_some() {
        let seen = match seen_of(request.headers()) {
            Ok(seen) => seen,
            Err(e) => return e.into_response(),
        };
        if let Err(e) = catch_up(&state, seen).await {
            return e.into_response();
        }
    }
    match state.tokens.check(authorization, &need).await {
        Ok(_) => next.run(request).await,
        Err(refusal) => refused(refusal),
    }
}

/// A refusal as the API's JSON error.
pub(crate) fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Unauthenticated(message) => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            response
        }
        Refusal::Forbidden(message) => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
        }
        Refusal::Unavailable(message) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).into_response()
        }
        Refusal::RateLimited { id, retry_after } => {
            let message = format!(
                "token {id} made more requests than its rate allows; try again in {} ms",
                retry_after.as_millis().max(1)
            );
            let mut response =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .into_response();
            // Whole seconds, rounded up.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(seconds.max(1)),
            );
            response
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    #[serde(default)]
    name: String,
    scopes: Vec<String>,
    /// Requests a second at each gateway; the gateway's setting if absent.
    rate_per_s: Option<u32>,
}

/// `POST /tokens`: `{"name": ..., "scopes": [...]}`; answers 201 with the token, once.
pub(crate) async fn create_token(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: CreateToken = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "a token request is {{\"name\": \"...\", \"scopes\": [\"...\"]}}: {e}"
        ))
    })?;
    if request.scopes.is_empty() || request.scopes.len() > SCOPES_MAX {
        return Err(ApiError::bad_request(format!(
            "a token takes 1 to {SCOPES_MAX} scopes"
        )));
    }
    if request.name.len() > NAME_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "a token's name is at most {NAME_BYTES_MAX} bytes"
        )));
    }
    let scopes = request
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::bad_request)?;
    let (token, info) = match request.rate_per_s {
        None => state.tokens.create(&request.name, &scopes).await?,
        Some(rate) if (1..=RATE_PER_TOKEN_MAX).contains(&rate) => {
            state
                .tokens
                .create_limited(&request.name, &scopes, rate)
                .await?
        }
        Some(rate) => {
            return Err(ApiError::bad_request(format!(
                "rate_per_s is {rate}; it must be 1..={RATE_PER_TOKEN_MAX}"
            )))
        }
    };
    let mut body = serde_json::to_value(&info).expect("a token's listing serializes");
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /tokens`: every live token, without secrets.
pub(crate) async fn list_tokens(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    state.tokens.refresh().await?;
    Ok(Json(json!({ "tokens": state.tokens.list() })).into_response())
}

/// `DELETE /tokens/{id}`.
pub(crate) async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.tokens.revoke(&id).await {
        Ok(()) => Ok(Json(json!({ "revoked": id })).into_response()),
        Err(e @ RevokeError::Unknown(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            e.to_string(),
        )),
        Err(e @ RevokeError::LastAdmin(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin",
            e.to_string(),
        )),
        Err(RevokeError::Log(e)) => Err(e.into()),
    }
}
