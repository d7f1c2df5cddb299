//! The object routes (`/objects`, `/transactions`) and the `bank` and `retwis` examples,
//! requests straight into the router over an in-memory log: what each route answers, and
//! that every refusal is a JSON error with the documented 4xx status that leaves the
//! document as it was.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use common::app;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Sends a request; the status, the body as JSON (`null` if it is not JSON) and the
/// `X-Tally-Version` header.
async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, Value, Option<u64>) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body.into()).expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let version = response
        .headers()
        .get("x-tally-version")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json, version)
}

async fn call(app: &Router, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let (status, json, _) = send(app, method, uri, &[], body.to_string()).await;
    (status, json)
}

async fn ok(app: &Router, method: Method, uri: &str, body: &str) -> Value {
    let (status, json) = call(app, method.clone(), uri, body).await;
    assert_eq!(status, StatusCode::OK, "{method} {uri} {body}: {json}");
    json
}

/// The document and version of `uri` (an object), or the 404's code.
async fn state_of(app: &Router, uri: &str) -> (StatusCode, Value, Option<u64>) {
    send(app, Method::GET, uri, &[], Body::empty()).await
}

/// Sends a request that must be refused with `status` and `code`, and checks that the object
/// at `object` is the same before and after it.
async fn refused(
    app: &Router,
    object: &str,
    (method, uri, body): (Method, &str, &str),
    status: StatusCode,
    code: &str,
) {
    let before = state_of(app, object).await;
    let (got, json) = call(app, method.clone(), uri, body).await;
    assert_eq!(got, status, "{method} {uri} {body}: {json}");
    assert_eq!(json["error"]["code"], code, "{method} {uri} {body}: {json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert_eq!(state_of(app, object).await, before, "{method} {uri} {body}");
}

const CART: &str = "/objects/carts/u1";

#[tokio::test]
async fn objects_are_put_patched_read_deleted_and_their_history_shown() {
    let app = app();
    let (status, json, _) = state_of(&app, CART).await;
    assert_eq!(
        (status, json["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("unknown_object"))
    );
    let put = ok(&app, Method::PUT, CART, r#"{"items": [], "n": 1}"#).await;
    assert_eq!(put, json!({ "old": null }));
    let patch = r#"[{"op": "add", "path": "/n", "delta": 2},
                   {"op": "push", "path": "/items", "value": "tea", "limit": 2},
                   {"op": "compare_and_set", "path": "/owner", "expected": null, "value": "u1"}]"#;
    let results = ok(&app, Method::PATCH, CART, patch).await;
    assert_eq!(results, json!({ "results": [1, 1, true] }));
    let (status, doc, version) = state_of(&app, CART).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc, json!({"items": ["tea"], "n": 3, "owner": "u1"}));
    assert!(version.is_some_and(|v| v > 0));
    let part = ok(&app, Method::GET, &format!("{CART}?path=/items/0"), "").await;
    assert_eq!(part, json!("tea"));
    let (status, json) = call(&app, Method::GET, &format!("{CART}?path=/nope"), "").await;
    assert_eq!(
        (status, json["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("no_such_path"))
    );
    // Another book holds other objects.
    let (status, _, _) = send(&app, Method::GET, CART, &[("x-tally-book", "5")], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let history = ok(&app, Method::GET, &format!("{CART}/history"), "").await;
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{history}");
    assert_eq!(changes[1]["kind"], "write");
    assert_eq!(changes[1]["applied"], true);
    assert_eq!(changes[1]["doc"], doc);
    assert_eq!(
        changes[1]["ops"][0],
        json!({"op": "add", "path": "/n", "delta": 2})
    );
    assert_eq!(history["next"], Value::Null);
    let first = ok(&app, Method::GET, &format!("{CART}/history?limit=1"), "").await;
    assert_eq!(first["changes"].as_array().unwrap().len(), 1);
    let after = first["next"].as_u64().expect("a next page");
    let rest = ok(
        &app,
        Method::GET,
        &format!("{CART}/history?after={after}"),
        "",
    )
    .await;
    assert_eq!(rest["changes"], json!([changes[1]]));

    let deleted = ok(&app, Method::DELETE, CART, "").await;
    assert_eq!(deleted["old"], doc);
    assert_eq!(state_of(&app, CART).await.0, StatusCode::NOT_FOUND);
    let again = ok(&app, Method::DELETE, CART, "").await;
    assert_eq!(again, json!({ "old": null }));
}

#[tokio::test]
async fn bad_object_requests_are_4xx_json_errors_that_change_nothing() {
    let app = app();
    ok(&app, Method::PUT, CART, r#"{"s": "text", "n": 1, "l": []}"#).await;
    let history = |app: &Router| {
        let app = app.clone();
        async move { ok(&app, Method::GET, &format!("{CART}/history"), "").await }
    };
    let before = history(&app).await;
    let (bad, missing, conflict, large, unprocessable) = (
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
        StatusCode::CONFLICT,
        StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    let big = format!(r#"{{"s": "{}"}}"#, "x".repeat(70 * 1024));
    let big_value = format!(
        r#"[{{"op": "set", "path": "/s", "value": "{}"}}]"#,
        "x".repeat(70 * 1024)
    );
    let long_key = format!("/objects/carts/{}", "k".repeat(300));
    // Refused before anything is logged: the history stays as it was.
    let unlogged: Vec<((Method, &str, &str), StatusCode, &str)> = vec![
        ((Method::PATCH, CART, "{not json"), bad, "bad_request"),
        ((Method::PATCH, CART, ""), bad, "bad_request"),
        (
            (Method::PATCH, CART, r#"{"op": "add"}"#),
            bad,
            "bad_request",
        ),
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "frobnicate", "path": "/n"}]"#,
            ),
            bad,
            "unknown_op",
        ),
        (
            (Method::PATCH, CART, r#"[{"op": "add", "path": "/n"}]"#),
            bad,
            "bad_op",
        ),
        ((Method::PATCH, CART, r#"[{"path": "/n"}]"#), bad, "bad_op"),
        ((Method::PATCH, CART, "[]"), bad, "invalid"),
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "push", "path": "/l", "value": 1, "limit": 0}]"#,
            ),
            bad,
            "invalid",
        ),
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "add", "path": "n", "delta": 1}]"#,
            ),
            unprocessable,
            "bad_path",
        ),
        ((Method::PUT, CART, ""), bad, "bad_request"),
        ((Method::PUT, CART, "{]"), bad, "bad_request"),
        ((Method::PUT, CART, &big), large, "too_large"),
        ((Method::PATCH, CART, &big_value), large, "too_large"),
        (
            (Method::GET, "/objects/carts/u1?path=nope", ""),
            unprocessable,
            "bad_path",
        ),
        (
            (Method::GET, "/objects/carts/u1?path=/s/x", ""),
            unprocessable,
            "bad_path",
        ),
        (
            (Method::GET, "/objects/carts/u1?paht=/s", ""),
            bad,
            "bad_request",
        ),
        (
            (Method::GET, "/objects/carts/u1/history?limit=0", ""),
            bad,
            "bad_request",
        ),
        (
            (Method::GET, "/objects/carts/u1/history?limit=1001", ""),
            bad,
            "bad_request",
        ),
        (
            (Method::GET, "/objects/carts/u1/history?after=x", ""),
            bad,
            "bad_request",
        ),
        ((Method::PUT, &long_key, "{}"), bad, "invalid"),
        (
            (Method::POST, "/objects/carts/u1", "{}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            (Method::GET, "/objects/carts", ""),
            missing,
            "unknown_class",
        ),
    ];
    for (request, status, code) in unlogged {
        refused(&app, CART, request, status, code).await;
    }
    assert_eq!(history(&app).await, before);
    // Refused by the document at the write's position: the record is in the history, not
    // applied, and the document is as it was.
    let unapplied: Vec<((Method, &str, &str), StatusCode, &str)> = vec![
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "add", "path": "/s", "delta": 1}]"#,
            ),
            conflict,
            "type_mismatch",
        ),
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "push", "path": "/n", "value": 1}]"#,
            ),
            conflict,
            "type_mismatch",
        ),
        // All or none: the add before the failing push does not happen either.
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "add", "path": "/n", "delta": 1}, {"op": "push", "path": "/s", "value": 1}]"#,
            ),
            conflict,
            "type_mismatch",
        ),
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "set", "path": "/s/x", "value": 1}]"#,
            ),
            unprocessable,
            "bad_path",
        ),
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "set", "path": "/l/5", "value": 1}]"#,
            ),
            unprocessable,
            "bad_path",
        ),
        (
            (
                Method::PATCH,
                CART,
                r#"[{"op": "add", "path": "/n", "delta": 9223372036854775807}, {"op": "add", "path": "/n", "delta": 9223372036854775807}, {"op": "add", "path": "/n", "delta": 9223372036854775807}]"#,
            ),
            unprocessable,
            "overflow",
        ),
    ];
    let tried = unapplied.len();
    for (request, status, code) in unapplied {
        refused(&app, CART, request, status, code).await;
    }
    let after = history(&app).await;
    let changes = after["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1 + tried, "{after}");
    for change in &changes[1..] {
        assert_eq!(change["applied"], false, "{change}");
        assert!(change["reason"].as_str().is_some(), "{change}");
        assert_eq!(change["doc"], json!({"s": "text", "n": 1, "l": []}));
    }
    for book in ["abc", "4294967295"] {
        let (status, json, _) = send(&app, Method::GET, CART, &[("x-tally-book", book)], "").await;
        assert_eq!(status, bad, "{json}");
    }
}

#[tokio::test]
async fn one_shot_transactions_commit_or_abort_and_bad_ones_are_refused() {
    let app = app();
    ok(
        &app,
        Method::PUT,
        "/objects/accounts/a1",
        r#"{"balance": 10}"#,
    )
    .await;
    ok(
        &app,
        Method::PUT,
        "/objects/accounts/a2",
        r#"{"balance": 0}"#,
    )
    .await;
    let transfer = |amount: i64| {
        json!({
            "reads": [{"collection": "accounts", "key": "a1", "path": "/balance"}],
            "conditions": [{"collection": "accounts", "key": "a1", "path": "/balance",
                            "ge": amount, "message": "insufficient funds"}],
            "writes": [
                {"collection": "accounts", "key": "a1", "op": "add", "path": "/balance", "delta": -amount},
                {"collection": "accounts", "key": "a2", "op": "add", "path": "/balance", "delta": amount}]
        })
        .to_string()
    };
    let done = ok(&app, Method::POST, "/transactions", &transfer(4)).await;
    assert_eq!(done["committed"], true, "{done}");
    assert_eq!(done["reads"], json!([10]));
    assert!(done["seqnum"].as_u64().is_some());
    let refused_by_logic = ok(&app, Method::POST, "/transactions", &transfer(7)).await;
    assert_eq!(refused_by_logic["committed"], false);
    assert_eq!(refused_by_logic["reason"], "insufficient funds");
    let balance = |key: &str| {
        let app = app.clone();
        let uri = format!("/objects/accounts/{key}?path=/balance");
        async move { ok(&app, Method::GET, &uri, "").await }
    };
    assert_eq!(
        (balance("a1").await, balance("a2").await),
        (json!(6), json!(4))
    );
    let history = ok(&app, Method::GET, "/objects/accounts/a2/history", "").await;
    let kinds: Vec<(Value, Value)> = history["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].clone(), c["applied"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (json!("write"), json!(true)),
            (json!("oneshot"), json!(true)),
            (json!("oneshot"), json!(false))
        ]
    );

    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(&str, StatusCode, &str)> = vec![
        ("{oops", bad, "bad_request"),
        ("", bad, "bad_request"),
        ("[]", bad, "bad_request"),
        (r#"{"write": []}"#, bad, "bad_request"),
        (r#"{"writes": "all"}"#, bad, "bad_transaction"),
        (
            r#"{"writes": [{"collection": "accounts", "key": "a1", "op": "frob", "path": ""}]}"#,
            bad,
            "bad_transaction",
        ),
        (
            r#"{"reads": [{"collection": "accounts", "key": "a1", "path": ""}]}"#,
            bad,
            "invalid",
        ),
        (
            r#"{"writes": [{"collection": "accounts", "key": "a1", "op": "add", "path": "x", "delta": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_path",
        ),
    ];
    for (body, status, code) in cases {
        refused(
            &app,
            "/objects/accounts/a1",
            (Method::POST, "/transactions", body),
            status,
            code,
        )
        .await;
    }
    assert_eq!(
        (balance("a1").await, balance("a2").await),
        (json!(6), json!(4))
    );
}

async fn function(app: &Router, name: &str, input: Value) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        &format!("/function/{name}"),
        &input.to_string(),
    )
    .await
}

#[tokio::test]
async fn bank_opens_transfers_both_ways_refuses_overdrafts_and_duplicates_and_audits() {
    let app = app();
    for (account, balance) in [("a1", 100), ("a2", 0), ("a3", 5)] {
        let open = json!({"action": "open", "account": account, "balance": balance});
        assert_eq!(
            function(&app, "bank", open).await,
            (StatusCode::OK, json!({"committed": true}))
        );
    }
    let again = function(
        &app,
        "bank",
        json!({"action": "open", "account": "a1", "balance": 1}),
    )
    .await;
    assert_eq!(
        again.1,
        json!({"committed": false, "reason": "account a1 exists"})
    );
    let transfer = |from: &str, to: &str, amount: u64, mode: &str, id: Option<&str>| {
        let mut t =
            json!({"action": "transfer", "from": from, "to": to, "amount": amount, "mode": mode});
        if let Some(id) = id {
            t["id"] = json!(id);
        }
        t
    };
    for mode in ["oneshot", "interactive"] {
        let done = function(&app, "bank", transfer("a1", "a2", 10, mode, None)).await;
        assert_eq!(done, (StatusCode::OK, json!({"committed": true})), "{mode}");
        let overdraft = function(&app, "bank", transfer("a3", "a2", 100, mode, None)).await;
        assert_eq!(
            overdraft.1,
            json!({"committed": false, "reason": "insufficient funds"})
        );
        let nobody = function(&app, "bank", transfer("a1", "zz", 1, mode, None)).await;
        assert_eq!(
            nobody.1,
            json!({"committed": false, "reason": "no account zz"})
        );
        // A transfer with an id applies once, however often it is sent.
        let id = format!("t-{mode}");
        let first = function(&app, "bank", transfer("a1", "a3", 1, mode, Some(&id))).await;
        assert_eq!(first.1, json!({"committed": true}));
        let second = function(&app, "bank", transfer("a1", "a3", 1, mode, Some(&id))).await;
        assert_eq!(second.1, json!({"committed": true, "duplicate": true}));
        let ledger = ok(&app, Method::GET, &format!("/objects/transfers/{id}"), "").await;
        assert_eq!(
            ledger,
            json!({"from": "a1", "to": "a3", "amount": 1, "mode": mode})
        );
    }
    let balance = |account: &str| json!({"action": "balance", "account": account});
    assert_eq!(
        function(&app, "bank", balance("a1")).await.1,
        json!({"balance": 78})
    );
    assert_eq!(
        function(&app, "bank", balance("a2")).await.1,
        json!({"balance": 20})
    );
    assert_eq!(
        function(&app, "bank", balance("a3")).await.1,
        json!({"balance": 7})
    );
    let audit = function(&app, "bank", json!({"action": "audit"})).await;
    assert_eq!(
        audit,
        (StatusCode::OK, json!({"accounts": 3, "total": 105}))
    );
    for bad in [
        json!({"action": "transfer", "from": "a1", "to": "a1", "amount": 1}),
        json!({"action": "transfer", "from": "a1", "to": "a2", "amount": 0}),
        json!({"action": "transfer", "from": "a1", "to": "a2", "amount": -1}),
        json!({"action": "transfer", "from": "a1", "to": "a2", "amount": 1, "mode": "later"}),
        json!({"action": "balance", "account": "zz"}),
        json!({"action": "rob"}),
    ] {
        assert_eq!(
            function(&app, "bank", bad.clone()).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn retwis_registers_follows_posts_and_shows_timelines_newest_first() {
    let app = app();
    for user in ["ana", "ben", "cy"] {
        let register = json!({"action": "register", "user": user, "name": user.to_uppercase(), "password": "pw"});
        assert_eq!(
            function(&app, "retwis", register).await.1,
            json!({"committed": true})
        );
    }
    let again = function(&app, "retwis", json!({"action": "register", "user": "ana"})).await;
    assert_eq!(
        again.1,
        json!({"committed": false, "reason": "user ana exists"})
    );
    let login = |password: &str| json!({"action": "login", "user": "ana", "password": password});
    assert_eq!(
        function(&app, "retwis", login("pw")).await.1,
        json!({"ok": true})
    );
    assert_eq!(
        function(&app, "retwis", login("no")).await.1,
        json!({"ok": false})
    );
    for (user, follows) in [("ben", "ana"), ("cy", "ana"), ("cy", "ben")] {
        let follow = json!({"action": "follow", "user": user, "follows": follows});
        assert_eq!(
            function(&app, "retwis", follow).await.1,
            json!({"committed": true})
        );
    }
    let post = |user: &str, text: &str| json!({"action": "post", "user": user, "text": text});
    assert_eq!(
        function(&app, "retwis", post("ana", "one")).await.1,
        json!({"committed": true, "timelines": 3})
    );
    function(&app, "retwis", post("ben", "two")).await;
    function(&app, "retwis", post("ana", "three")).await;
    let texts = |v: &Value| -> Vec<String> {
        v["posts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["text"].as_str().unwrap().to_string())
            .collect()
    };
    let timeline = |user: &str| json!({"action": "timeline", "user": user});
    assert_eq!(
        texts(&function(&app, "retwis", timeline("cy")).await.1),
        ["three", "two", "one"]
    );
    assert_eq!(
        texts(&function(&app, "retwis", timeline("ben")).await.1),
        ["three", "two", "one"]
    );
    assert_eq!(
        texts(&function(&app, "retwis", timeline("ana")).await.1),
        ["three", "one"]
    );
    let posts = json!({"action": "posts", "user": "ana", "limit": 1});
    assert_eq!(texts(&function(&app, "retwis", posts).await.1), ["three"]);
    let profile = function(&app, "retwis", json!({"action": "profile", "user": "ana"}))
        .await
        .1;
    assert_eq!(
        profile,
        json!({"user": "ana", "name": "ANA", "posts": 2, "followers": 2, "following": 0})
    );
    for bad in [
        json!({"action": "follow", "user": "ana", "follows": "ana"}),
        json!({"action": "post", "user": "zed", "text": "x"}),
        json!({"action": "profile", "user": "zed"}),
        json!({"action": "timeline", "user": "ana", "limit": 0}),
        json!({"action": "shout"}),
    ] {
        assert_eq!(
            function(&app, "retwis", bad.clone()).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let ghost = function(
        &app,
        "retwis",
        json!({"action": "follow", "user": "ana", "follows": "zed"}),
    )
    .await;
    assert_eq!(
        ghost.1,
        json!({"committed": false, "reason": "no user zed"})
    );
}
