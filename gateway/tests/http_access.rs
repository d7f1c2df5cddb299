//! Access control over the router: every route against tokens of every scope, allowed and
//! refused, from one table that says by name which tokens each route lets through. A refused
//! request is a JSON 401 or 403 and leaves the log as it was.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use gateway::auth::{Scope, Tokens};
use gateway::invocations::INVOCATIONS_BOOK;
use logbook::memory::MemoryLogBook;
use logbook::{BookId, LogBook, ReadRange, Seqnum, Tag};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

/// The tokens every route is tried with, by name: each name's scopes.
const TOKENS: &[(&str, &[&str])] = &[
    ("admin", &["admin"]),
    ("invoke", &["invoke"]),
    ("invoke:hello", &["invoke:hello"]),
    ("invoke:other", &["invoke:other"]),
    ("read", &["read"]),
    ("read:1", &["read:1"]),
    ("read:2", &["read:2"]),
    ("append", &["append"]),
    ("append:1", &["append:1"]),
    ("read+append:1", &["read:1", "append:1"]),
    ("metrics", &["metrics"]),
    ("worker", &["worker"]),
];

const ADMIN: &[&str] = &["admin"];
const INVOKE_ANY: &[&str] = &["admin", "invoke"];
const INVOKE_HELLO: &[&str] = &["admin", "invoke", "invoke:hello"];
const READ_1: &[&str] = &["admin", "read", "read:1", "read+append:1"];
const APPEND_1: &[&str] = &["admin", "append", "append:1", "read+append:1"];
const READ_APPEND_1: &[&str] = &["admin", "read+append:1"];
const METRICS: &[&str] = &["admin", "metrics"];
/// Every token.
const ANY: &[&str] = &[
    "admin",
    "invoke",
    "invoke:hello",
    "invoke:other",
    "read",
    "read:1",
    "read:2",
    "append",
    "append:1",
    "read+append:1",
    "metrics",
    "worker",
];

/// Every route of the router (one row per method), in book 1 (`X-Tally-Book: 1` goes with
/// every request), and the tokens it lets through.
const ROUTES: &[(&str, &str, &str, &[&str])] = &[
    ("POST", "/function/hello", "hi", INVOKE_HELLO),
    ("POST", "/asyncFunction/hello", "hi", INVOKE_HELLO),
    ("GET", "/invocations", "", INVOKE_ANY),
    ("GET", "/invocations/0000000000000001", "", INVOKE_ANY),
    ("GET", "/functions", "", ANY),
    ("POST", "/workflows/travel/t1", "{}", INVOKE_ANY),
    ("GET", "/workflows/t1", "", INVOKE_ANY),
    ("POST", "/workflows/t1/signals/go", "{}", INVOKE_ANY),
    ("POST", "/workflows/t1/cancel", "", INVOKE_ANY),
    ("GET", "/workflows/t1/queries/status", "", INVOKE_ANY),
    ("GET", "/workflows", "", INVOKE_ANY),
    ("POST", "/schedules", "{}", INVOKE_ANY),
    ("GET", "/schedules", "", INVOKE_ANY),
    ("DELETE", "/schedules/s1", "", INVOKE_ANY),
    ("GET", "/objects/carts/c1", "", READ_1),
    ("PUT", "/objects/carts/c1", "{\"n\":1}", READ_APPEND_1),
    ("PATCH", "/objects/carts/c1", "[]", READ_APPEND_1),
    ("DELETE", "/objects/carts/c1", "", READ_APPEND_1),
    ("GET", "/objects/carts/c1/history", "", READ_1),
    ("GET", "/objects/Counter?keys=a", "", READ_1),
    ("POST", "/objects/Counter/a/add", "{}", READ_APPEND_1),
    (
        "POST",
        "/objects/Counter/a/links/friends",
        "{}",
        READ_APPEND_1,
    ),
    ("POST", "/objects/Counter/a/add/send", "{}", READ_APPEND_1),
    ("GET", "/packages", "", ANY),
    ("GET", "/packages/examples", "", ANY),
    ("PUT", "/packages/p1", "name = 'p1'", ADMIN),
    ("POST", "/transactions", "{}", READ_APPEND_1),
    ("GET", "/transactions/x1", "", READ_1),
    ("POST", "/transactions/x1", "{}", READ_APPEND_1),
    ("GET", "/queues", "", READ_1),
    ("GET", "/queues/q1", "", READ_1),
    ("PUT", "/queues/q1", "", APPEND_1),
    ("PUT", "/queues/q1/groups/g1", "", APPEND_1),
    ("POST", "/queues/q1/push", "m", APPEND_1),
    (
        "POST",
        "/queues/q1/push-batch",
        "{\"messages\":[]}",
        APPEND_1,
    ),
    (
        "POST",
        "/queues/q1/pop?group=g1&wait_ms=0",
        "",
        READ_APPEND_1,
    ),
    (
        "POST",
        "/queues/q1/ack?group=g1&id=1:1&receipt=1",
        "",
        APPEND_1,
    ),
    ("GET", "/queues/q1/groups/g1/dead-letters", "", READ_1),
    ("POST", "/queues/q1/groups/g1/requeue?id=1:1", "", APPEND_1),
    ("POST", "/log/1/append?tag=5", "r", APPEND_1),
    ("GET", "/log/1/records", "", READ_1),
    ("GET", "/log/1/tags", "", READ_1),
    ("GET", "/log", "", METRICS),
    ("GET", "/log/1/next?timeout_ms=0", "", READ_1),
    ("GET", "/metrics", "", METRICS),
    ("GET", "/cluster", "", METRICS),
    ("POST", "/tokens", "{\"scopes\":[\"read\"]}", ADMIN),
    ("GET", "/tokens", "", ADMIN),
    ("DELETE", "/tokens/000000000000", "", ADMIN),
];

/// The routes that need no token.
const OPEN: &[&str] = &["/health", "/console", "/console/console.js"];

/// Sends a request with `token` (if any) in book 1; its status and JSON body.
async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    body: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri)
        .header("x-tally-book", "1");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Body::from(body.to_string())).unwrap();
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Every record of the books a request could change, by seqnum.
async fn everything(log: &dyn LogBook) -> Vec<(u32, u64)> {
    let mut all = Vec::new();
    for book in [BookId(0), BookId(1), INVOCATIONS_BOOK] {
        let range = ReadRange {
            from: Seqnum(0),
            to: Seqnum::MAX,
            limit: 10_000,
        };
        for record in log.read_range(book, Tag::ANY, range).await.unwrap() {
            all.push((book.0, record.seqnum.0));
        }
    }
    all
}

async fn make_tokens(tokens: &Tokens) -> BTreeMap<&'static str, String> {
    let mut made = BTreeMap::new();
    for (name, scopes) in TOKENS {
        let scopes: Vec<Scope> = scopes.iter().map(|s| Scope::parse(s).unwrap()).collect();
        let (token, _) = tokens.create(name, &scopes).await.unwrap();
        made.insert(*name, token);
    }
    made
}

#[tokio::test]
async fn every_route_lets_through_the_tokens_its_scopes_name_and_only_those() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let (app, tokens) = common::app_over(log.clone());
    // No token made yet: nothing is asked for.
    let (status, _) = send(&app, "POST", "/log/1/append?tag=5", "open", None).await;
    assert_eq!(status, StatusCode::OK);
    let made = make_tokens(&tokens).await;

    for (method, uri, body, allowed) in ROUTES {
        for (name, token) in &made {
            let before = everything(&*log).await;
            let (status, json) = send(&app, method, uri, body, Some(token)).await;
            if allowed.contains(name) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {uri} with {name}: refused, {status} {json}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} with {name}: {json}"
                );
                assert_eq!(
                    json["error"]["code"], "forbidden",
                    "{method} {uri} with {name}"
                );
                assert_eq!(
                    everything(&*log).await,
                    before,
                    "{method} {uri} with {name} changed the log"
                );
            }
        }
        // Without a token, or with one no gateway made: 401.
        for token in [None, Some("tly_0123456789ab_forged"), Some("not-a-token")] {
            let before = everything(&*log).await;
            let (status, json) = send(&app, method, uri, body, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}: {json}"
            );
            assert_eq!(json["error"]["code"], "unauthorized");
            assert_eq!(
                everything(&*log).await,
                before,
                "{method} {uri} with {token:?} changed the log"
            );
        }
    }
    // Health is for load balancers, and the console's page and script read nothing: no
    // token.
    for uri in OPEN {
        assert_eq!(
            send(&app, "GET", uri, "", None).await.0,
            StatusCode::OK,
            "{uri}"
        );
    }
}

#[test]
fn the_table_names_every_route_of_the_router() {
    // Each route pattern of the router, as the access layer matches them, must have a row:
    // a route added without one would go untested.
    let source = include_str!("../src/http.rs");
    let mut patterns: Vec<&str> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".route(\""))
        .chain(source.lines().filter_map(|l| {
            let l = l.trim();
            (l.starts_with('"') && l.ends_with("\",") && l.contains('/'))
                .then(|| &l[1..l.len() - 2])
        }))
        .map(|l| l.split('"').next().unwrap())
        .collect();
    patterns.sort();
    patterns.dedup();
    assert!(patterns.len() > 30, "found {patterns:?}");
    let matches = |pattern: &str, uri: &str| {
        let uri = uri.split('?').next().unwrap();
        let (p, u): (Vec<&str>, Vec<&str>) =
            (pattern.split('/').collect(), uri.split('/').collect());
        p.len() == u.len() && p.iter().zip(&u).all(|(p, u)| p.starts_with('{') || p == u)
    };
    // The routes that ask for no token: the test above tries them without one.
    for pattern in patterns {
        assert!(
            ROUTES.iter().any(|(_, uri, _, _)| matches(pattern, uri))
                || OPEN.iter().any(|uri| matches(pattern, uri)),
            "route {pattern} has no row in ROUTES"
        );
    }
}

#[tokio::test]
async fn tokens_are_made_listed_and_revoked_over_http() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let (app, _) = common::app_over(log.clone());
    // The first token needs none.
    let (status, made) = send(
        &app,
        "POST",
        "/tokens",
        r#"{"name":"ops","scopes":["admin"]}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let admin = made["token"].as_str().unwrap().to_string();
    assert!(admin.starts_with("tly_"));
    // From then on one is asked for.
    let (status, _) = send(&app, "POST", "/tokens", r#"{"scopes":["admin"]}"#, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, reader) = send(
        &app,
        "POST",
        "/tokens",
        r#"{"name":"app","scopes":["read:1"]}"#,
        Some(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let reader_token = reader["token"].as_str().unwrap().to_string();
    let (_, listed) = send(&app, "GET", "/tokens", "", Some(&admin)).await;
    let listed = listed["tokens"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|t| t.get("token").is_none()),
        "no secret is listed: {listed:?}"
    );
    assert_eq!(
        send(&app, "GET", "/log/1/records", "", Some(&reader_token))
            .await
            .0,
        StatusCode::OK
    );

    // Bad requests are 400s that make nothing.
    for body in [
        r#"{"scopes":[]}"#,
        r#"{"scopes":["root"]}"#,
        r#"{"scopes":["read:x"]}"#,
        "{",
        r#"{"scopes":["peer"]}"#,
    ] {
        let (status, json) = send(&app, "POST", "/tokens", body, Some(&admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
    }

    let id = reader["id"].as_str().unwrap();
    let (status, _) = send(&app, "DELETE", &format!("/tokens/{id}"), "", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        send(&app, "GET", "/log/1/records", "", Some(&reader_token))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, json) = send(&app, "DELETE", &format!("/tokens/{id}"), "", Some(&admin)).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_token"))
    );
    let admin_id = made["id"].as_str().unwrap();
    let (status, json) = send(
        &app,
        "DELETE",
        &format!("/tokens/{admin_id}"),
        "",
        Some(&admin),
    )
    .await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_admin"))
    );
}

#[tokio::test]
async fn a_token_past_its_rate_is_answered_429_with_retry_after() {
    let log: Arc<dyn LogBook> = Arc::new(MemoryLogBook::new());
    let (app, tokens) = common::app_over(log.clone());
    let (status, made) = send(
        &app,
        "POST",
        "/tokens",
        r#"{"name":"slow","scopes":["read"],"rate_per_s":1}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["rate_per_s"], 1);
    let slow = made["token"].as_str().unwrap().to_string();
    let mut limited = None;
    for _ in 0..5 {
        let request = Request::builder()
            .uri("/log/1/records")
            .header("authorization", format!("Bearer {slow}"))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .to_string();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let json: Value = serde_json::from_slice(&body).unwrap();
            limited = Some((retry_after, json));
        }
    }
    let (retry_after, json) = limited.expect("one request a second: some of 5 at once refused");
    assert_eq!(retry_after, "1");
    assert_eq!(json["error"]["code"], "rate_limited");
    // A rate out of bounds is a 400.
    let admin = tokens.create("ops", &[Scope::Admin]).await.unwrap().0;
    for rate in ["0", "1000001", "-1"] {
        let body = format!(r#"{{"scopes":["read"],"rate_per_s":{rate}}}"#);
        let (status, json) = send(&app, "POST", "/tokens", &body, Some(&admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rate}: {json}");
    }
}
