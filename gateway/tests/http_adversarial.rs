//! The HTTP API against malformed, oversized and adversarial requests: every refusal is a JSON
//! error (`{"error": {"code", "message"}}`) with a 4xx status that says whose fault it is, no
//! request makes the gateway fail with a 5xx it does not document, and the gateway keeps
//! serving afterwards. Requests go straight into the router (`oneshot`) over an in-memory log,
//! except for the few that only a real connection can carry.

mod common;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::Router;
use common::app;
use gateway::http::REQUEST_BODY_BYTES_MAX;
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt;

/// One request: method, URI, headers (raw value bytes), body.
struct Req {
    method: Method,
    uri: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn req(method: Method, uri: impl Into<String>) -> Req {
    Req {
        method,
        uri: uri.into(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn get(uri: impl Into<String>) -> Req {
    req(Method::GET, uri)
}

fn post(uri: impl Into<String>, body: impl Into<Vec<u8>>) -> Req {
    Req {
        body: body.into(),
        ..req(Method::POST, uri)
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Req {
        self.headers.push((name, value.into()));
        self
    }

    fn build(self) -> Request<Body> {
        let mut builder = Request::builder().method(self.method).uri(&self.uri);
        for (name, value) in self.headers {
            let value = HeaderValue::from_bytes(&value).expect("a header value the client sends");
            builder = builder.header(name, value);
        }
        builder
            .body(Body::from(self.body))
            .expect("a valid request")
    }
}

/// Sends `r` and returns the status and the body.
async fn send(app: &Router, r: Req) -> (StatusCode, Vec<u8>) {
    let response = app.clone().oneshot(r.build()).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    (status, body.to_vec())
}

/// The code of a JSON error body; panics (naming `what`) if the body is not one.
fn error_code(what: &str, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: the error is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let code = v["error"]["code"].as_str();
    let message = v["error"]["message"].as_str();
    match (code, message) {
        (Some(code), Some(message)) if !code.is_empty() && !message.is_empty() => code.to_string(),
        _ => panic!("{what}: not an error of the documented shape: {v}"),
    }
}

/// Sends `r` and checks that it is refused with `status` and the JSON error `code`.
async fn check(app: &Router, r: Req, status: StatusCode, code: &str) {
    let what = format!("{} {}", r.method, r.uri);
    let (got, body) = send(app, r).await;
    assert_eq!(got, status, "{what}: {:?}", String::from_utf8_lossy(&body));
    assert_eq!(error_code(&what, &body), code, "{what}");
}

/// What any gateway must still do after a bad request: append, read back, run a function.
async fn still_serves(app: &Router) {
    let (status, body) = send(app, post("/log/3/append?tag=9", "alive")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    let (status, body) = send(app, get("/log/3/records?tag=9")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("json");
    let records = v["records"].as_array().expect("records");
    assert_eq!(records.last().expect("one")["data"], "YWxpdmU=");
    let (status, body) = send(app, post("/function/echo", "hi")).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"hi"[..]));
}

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;

#[tokio::test]
async fn bad_books_are_refused_as_bad_requests() {
    let app = app();
    for book in [
        "abc",
        "-1",
        "4294967296",
        "1.5",
        "%20",
        "0x10",
        "99999999999999999999",
    ] {
        check(
            &app,
            post(format!("/log/{book}/append"), "x"),
            BAD,
            "bad_request",
        )
        .await;
        check(
            &app,
            get(format!("/log/{book}/records")),
            BAD,
            "bad_request",
        )
        .await;
        check(&app, get(format!("/log/{book}/next")), BAD, "bad_request").await;
    }
    // The reserved book of invocations, through every door.
    check(
        &app,
        post("/log/4294967295/append", "x"),
        BAD,
        "bad_request",
    )
    .await;
    check(&app, get("/log/4294967295/records"), BAD, "bad_request").await;
    check(&app, get("/log/4294967295/next"), BAD, "bad_request").await;
    for book in [&b"4294967295"[..], b"abc", b"-1", b"", b"\xff\xfe"] {
        let call = post("/function/echo", "x").header("x-tally-book", book);
        check(&app, call, BAD, "bad_request").await;
        let call = post("/asyncFunction/echo", "x").header("x-tally-book", book);
        check(&app, call, BAD, "bad_request").await;
    }
    still_serves(&app).await;
}

#[tokio::test]
async fn bad_tags_and_query_strings_are_refused_as_bad_requests() {
    let app = app();
    let cases = [
        ("/log/0/append?tag=abc", "bad_request"),
        ("/log/0/append?tag=-1", "bad_request"),
        ("/log/0/append?tag=18446744073709551616", "bad_request"),
        ("/log/0/append?tag=%31", "bad_request"),
        ("/log/0/append?tag", "bad_request"),
        ("/log/0/append?tag=1&unknown=2", "bad_request"),
        ("/log/0/append?=&&=", "bad_request"),
        // Tag 0 means "the whole book" and u64::MAX is reserved: neither tags a record.
        ("/log/0/append?tag=0", "bad_argument"),
        ("/log/0/append?tag=18446744073709551615", "bad_argument"),
        ("/log/0/records?tag=1&tag=2", "bad_request"),
        ("/log/0/records?from=x", "bad_request"),
        ("/log/0/records?limit=0", "bad_argument"),
        ("/log/0/records?limit=10001", "bad_argument"),
        ("/log/0/records?limit=18446744073709551615", "bad_argument"),
        ("/log/0/records?limit=99999999999999999999", "bad_request"),
        ("/log/0/next?timeout_ms=60001", "bad_argument"),
        (
            "/log/0/next?timeout_ms=18446744073709551615",
            "bad_argument",
        ),
        ("/log/0/next?timeout_ms=-5", "bad_request"),
        ("/log/0/next?tag=1&tag=1", "bad_request"),
    ];
    for (uri, code) in cases {
        let r = if uri.contains("/append") {
            post(uri, "x")
        } else {
            get(uri)
        };
        check(&app, r, BAD, code).await;
    }
    let seventeen: Vec<String> = (1..=17).map(|t| format!("tag={t}")).collect();
    let uri = format!("/log/0/append?{}", seventeen.join("&"));
    check(&app, post(uri, "x"), BAD, "bad_argument").await;
    // Repeats are one tag: a long query of them is a record with two tags.
    let many = "tag=1&".repeat(5_000);
    let (status, _) = send(&app, post(format!("/log/0/append?{many}tag=2"), "x")).await;
    assert_eq!(status, StatusCode::OK);
    check(&app, post("/log/0/append", ""), BAD, "bad_argument").await;
    still_serves(&app).await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_as_too_large() {
    let app = app();
    let over = vec![b'x'; REQUEST_BODY_BYTES_MAX + 1];
    for uri in [
        "/log/0/append?tag=1",
        "/function/echo",
        "/asyncFunction/echo",
    ] {
        check(
            &app,
            post(uri, over.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        )
        .await;
    }
    // Within the request limit but over a record's: the log refuses it.
    let record_over = vec![b'x'; logbook::RECORD_BYTES_MAX + 1];
    check(
        &app,
        post("/log/0/append?tag=1", record_over),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    still_serves(&app).await;
}

#[tokio::test]
async fn bad_headers_are_refused_as_bad_requests() {
    let app = app();
    let long_key = vec![b'k'; gateway::http::IDEMPOTENCY_KEY_BYTES_MAX + 1];
    for key in [&b""[..], &long_key, b"caf\xc3\xa9", b"\xff"] {
        let call = post("/function/echo", "x").header("idempotency-key", key);
        check(&app, call, BAD, "bad_request").await;
    }
    for seen in [
        &b"abc"[..],
        b"-1",
        b"",
        b"18446744073709551616",
        b"1 2",
        b"\xff",
    ] {
        for r in [
            get("/log/0/records"),
            get("/log/0/next"),
            post("/log/0/append?tag=1", "x"),
            post("/function/echo", "x"),
            post("/asyncFunction/echo", "x"),
            get("/invocations/0000000000000000"),
        ] {
            check(&app, r.header("x-tally-seen", seen), BAD, "bad_request").await;
        }
    }
    for depth in [&b"abc"[..], b"-1", b"33", b"4294967296", b"", b"\xff"] {
        let call = post("/function/echo", "x").header("x-tally-depth", depth);
        check(&app, call, BAD, "bad_request").await;
    }
    still_serves(&app).await;
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_bad_paths_are_json_errors() {
    let app = app();
    let deep = format!("/{}", "a/".repeat(2_000));
    for uri in [
        "/",
        "/nope",
        "/logs",
        "/log/0",
        "/log/0/append/extra",
        "/function/",
        &deep,
    ] {
        check(&app, get(uri), NOT_FOUND, "not_found").await;
        check(&app, post(uri, "x"), NOT_FOUND, "not_found").await;
    }
    let wrong = StatusCode::METHOD_NOT_ALLOWED;
    check(&app, get("/function/echo"), wrong, "method_not_allowed").await;
    check(&app, get("/log/0/append"), wrong, "method_not_allowed").await;
    check(
        &app,
        post("/log/0/records", "x"),
        wrong,
        "method_not_allowed",
    )
    .await;
    check(&app, post("/health", "x"), wrong, "method_not_allowed").await;
    check(
        &app,
        req(Method::DELETE, "/invocations/0000000000000000"),
        wrong,
        "method_not_allowed",
    )
    .await;
    // Path segments that are not UTF-8 once percent-decoded.
    for uri in [
        "/function/%FF",
        "/asyncFunction/%C3%28",
        "/invocations/%80",
        "/log/%FF/append",
    ] {
        let r = if uri.starts_with("/invocations") {
            get(uri)
        } else {
            post(uri, "x")
        };
        check(&app, r, BAD, "bad_request").await;
    }
    check(
        &app,
        post("/function/nope", "x"),
        NOT_FOUND,
        "unknown_function",
    )
    .await;
    let long_name = format!("/function/{}", "f".repeat(10_000));
    check(&app, post(long_name, "x"), NOT_FOUND, "unknown_function").await;
    for id in [
        "nope",
        "0000000000000000",
        "ffffffffffffffff",
        "%00",
        "0000000000000000000",
    ] {
        check(
            &app,
            get(format!("/invocations/{id}")),
            NOT_FOUND,
            "unknown_invocation",
        )
        .await;
    }
    still_serves(&app).await;
}

#[tokio::test]
async fn invalid_json_to_functions_is_bad_input() {
    let app = app();
    for function in ["greet", "guestbook", "welcome", "sleep"] {
        for input in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"\xff\xfe",
            b"{\"name\": 5}",
            b"{\"ms\": -1}",
            b"{\"action\": \"burn\"}",
            b"{\"name\": \"x\", \"extra\": 1}",
        ] {
            check(
                &app,
                post(format!("/function/{function}"), input),
                BAD,
                "bad_input",
            )
            .await;
        }
    }
    still_serves(&app).await;
}

/// Sends raw bytes on a new connection and returns the status and body of the answer (the
/// connection is closed after it), or None when the server closed it without one.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> Option<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and hang up before it reads everything: the answer is what counts.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    // The server may keep a connection with a declared body open: what came is enough.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let at = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((status, answer[at..].to_vec()))
}

#[tokio::test]
async fn malformed_http_on_a_real_connection_leaves_the_gateway_serving() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = app();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A body above the limit is refused as JSON once the limit is passed.
    let mut declared = format!(
        "POST /log/0/append?tag=1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n",
        REQUEST_BODY_BYTES_MAX + 1
    )
    .into_bytes();
    declared.resize(declared.len() + REQUEST_BODY_BYTES_MAX + 1, b'x');
    let (status, body) = raw(addr, &declared).await.expect("an answer");
    assert_eq!(status, 413);
    assert_eq!(error_code("declared length", &body), "too_large");
    // A header value that is not UTF-8 reaches the handler, which refuses it as JSON.
    let (status, body) = raw(
        addr,
        b"POST /function/echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
          x-tally-book: \xff\xfe\r\ncontent-length: 1\r\n\r\nx",
    )
    .await
    .expect("an answer");
    assert_eq!(status, 400);
    assert_eq!(error_code("non-UTF-8 header", &body), "bad_request");
    // What is not HTTP never reaches the router: the HTTP layer refuses it (or hangs up).
    let not_http: [&[u8]; 4] = [
        b"\x00\x01\x02 garbage\r\n\r\n",
        b"GET /function/\xff HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /log/0/append HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
    ];
    for request in not_http {
        if let Some((status, _)) = raw(addr, request).await {
            assert!((400..500).contains(&status), "{status}");
        }
    }
    let huge_header = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    if let Some((status, _)) = raw(addr, huge_header.as_bytes()).await {
        assert!((400..500).contains(&status), "{status}");
    }

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let append = client
        .post(format!("{base}/log/0/append?tag=4"))
        .body("after")
        .send()
        .await
        .expect("append");
    assert_eq!(append.status(), 200);
}

/// A status and error code the API documents for a request a client got wrong, or for a
/// failure of the function or the log.
fn documented(status: StatusCode, code: &str) -> bool {
    match status.as_u16() {
        400 | 404 | 405 | 409 | 410 | 413 | 422 => true,
        500 => code == "function_failed",
        503 => matches!(code, "unavailable" | "discarded" | "function_unavailable"),
        _ => false,
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("4294967295".to_string()),
        Just("echo".to_string()),
        Just("greet".to_string()),
        Just("guestbook".to_string()),
        "[0-9]{1,22}",
        "[A-Za-z0-9._~-]{0,24}",
        // Any bytes, percent-encoded.
        prop::collection::vec(any::<u8>(), 0..12)
            .prop_map(|b| b.iter().map(|b| format!("%{b:02X}")).collect()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let seg = segment;
    prop_oneof![
        seg().prop_map(|s| format!("/function/{s}")),
        seg().prop_map(|s| format!("/asyncFunction/{s}")),
        seg().prop_map(|s| format!("/invocations/{s}")),
        seg().prop_map(|s| format!("/log/{s}/append")),
        seg().prop_map(|s| format!("/log/{s}/records")),
        seg().prop_map(|s| format!("/log/{s}/next")),
        prop::collection::vec(seg(), 0..6).prop_map(|s| format!("/{}", s.join("/"))),
        Just("/health".to_string()),
        Just("/metrics".to_string()),
        Just("/functions".to_string()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("tag"),
        Just("from"),
        Just("limit"),
        Just("timeout_ms"),
        Just(""),
        Just("x")
    ];
    let value = prop_oneof![
        // Never a blocking read longer than 50 ms: the test waits for every answer.
        (0u64..50).prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("60001".to_string()),
        "[A-Za-z0-9%-]{0,8}",
    ];
    prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
        let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    })
}

/// Header values a client can send: visible ASCII, spaces, tabs and bytes above 0x7f.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[0-9]{0,21}".prop_map(String::into_bytes),
        Just(b"4294967295".to_vec()),
        prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..40),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let name = prop_oneof![
        Just("x-tally-book"),
        Just("x-tally-seen"),
        Just("idempotency-key"),
        Just("x-tally-depth"),
        Just("x-tally-forwarded"),
        Just("content-type"),
        Just("x-unrelated"),
    ];
    prop::collection::vec((name, header_value()), 0..4)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"{\"name\": \"ana\"}".to_vec()),
        Just(b"{\"action\": \"list\", \"room\": \"lobby\"}".to_vec()),
        Just(
            b"{\"action\": \"sign\", \"room\": \"r\", \"name\": \"a\", \"message\": \"m\"}"
                .to_vec()
        ),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_get_documented_answers_and_json_errors(
        requests in prop::collection::vec((method(), path(), query(), headers(), body()), 1..8)
    ) {
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        rt.block_on(async {
            let app = app();
            for (method, path, query, headers, body) in requests {
                let r = Req { method, uri: format!("{path}{query}"), headers, body };
                let what = format!("{} {}", r.method, r.uri);
                let (status, body) = send(&app, r).await;
                if status.is_success() {
                    continue;
                }
                let code = error_code(&what, &body);
                assert!(documented(status, &code), "{what}: {status} {code}");
            }
            still_serves(&app).await;
        });
    }
}

/// Serves the example app under `limits` on a loopback port; its address.
async fn serve_limited(limits: gateway::serve::HttpLimits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway::serve::serve(
        listener,
        app(),
        limits,
        None,
        std::future::pending(),
    ));
    addr
}

/// `GET /health` on a connection of its own: the status and body.
async fn health(addr: std::net::SocketAddr) -> (u16, Vec<u8>) {
    let request = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    raw(addr, request).await.expect("an answer")
}

/// Reads what the server sends until it closes the connection, if it does before `deadline`.
async fn until_closed(
    stream: &mut tokio::net::TcpStream,
    deadline: tokio::time::Instant,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    match tokio::time::timeout_at(deadline, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(answer),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_within_their_timeouts_while_normal_calls_go_on() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let timeout = Duration::from_millis(1000);
    let addr = serve_limited(gateway::serve::HttpLimits {
        header_timeout: timeout,
        body_timeout: timeout,
        idle_timeout: timeout,
        connections_max: 4000,
    })
    .await;
    // Thousands of slow clients: a third send half their headers, a third their headers and
    // half the body they declare, a third nothing at all.
    const SLOW: usize = 2400;
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let sent: &[u8] = match i % 3 {
            0 => b"POST /function/echo HTTP/1.1\r\nhost: x\r\ncontent-le",
            1 => b"POST /function/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhalf",
            _ => b"",
        };
        stream.write_all(sent).await.expect("send");
        slow.push((i % 3, stream));
    }
    let opened = tokio::time::Instant::now();
    // Calls from well-behaved clients are answered meanwhile.
    for _ in 0..20 {
        let (status, body) = raw(
            addr,
            b"POST /function/echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
              content-length: 2\r\n\r\nhi",
        )
        .await
        .expect("an answer");
        assert_eq!((status, body.as_slice()), (200, b"hi".as_slice()));
    }
    // Every slow connection is closed by the gateway within its timeout, plus slack for a
    // loaded machine; one that sent part of a body is told 408 in the API's JSON shape.
    let deadline = opened + timeout + Duration::from_secs(5);
    let mut body_timeouts = 0;
    for (kind, stream) in &mut slow {
        let answer = until_closed(stream, deadline)
            .await
            .unwrap_or_else(|| panic!("a slow connection (kind {kind}) still open"));
        if *kind == 1 {
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            let at = answer
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a head")
                + 4;
            assert_eq!(error_code("a late body", &answer[at..]), "request_timeout");
            body_timeouts += 1;
        }
    }
    assert_eq!(body_timeouts, SLOW / 3);
    println!(
        "{SLOW} slow connections closed {:?} after they were opened",
        opened.elapsed()
    );
    // And the gateway still serves.
    assert_eq!(health(addr).await.0, 200);
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_with_503_until_one_closes() {
    use std::time::Duration;
    let addr = serve_limited(gateway::serve::HttpLimits {
        idle_timeout: Duration::from_millis(500),
        connections_max: 10,
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // The gateway takes connections in the order they were made: the ten hold its slots.
    let (status, body) = health(addr).await;
    assert_eq!(status, 503);
    assert_eq!(error_code("past the limit", &body), "too_many_connections");
    // The idle ones are closed after their idle timeout, and a new one is served.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for stream in &mut held {
        until_closed(stream, deadline)
            .await
            .expect("closed when idle");
    }
    assert_eq!(health(addr).await.0, 200);
}
