//! The class routes (`/objects/{class}/{key}/{method}`, `/send`, the state, history and
//! packages) and the example classes, requests straight into the router over an in-memory
//! log: what each answers, the status of every refusal, and that a refused call changes
//! nothing.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use common::app;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Body::from(body.to_string()))
        .expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn post(app: &Router, uri: &str, body: &str) -> (StatusCode, Value) {
    send(app, Method::POST, uri, &[], body).await
}

async fn get(app: &Router, uri: &str) -> Value {
    let (status, body) = send(app, Method::GET, uri, &[], "").await;
    assert_eq!(status, StatusCode::OK, "GET {uri}: {body}");
    body
}

#[tokio::test]
async fn counter_calls_answer_and_refusals_change_nothing() {
    let app = app();
    assert_eq!(
        post(&app, "/objects/counter/c/add", r#"{"by": 2}"#).await,
        (StatusCode::OK, json!({"value": 2}))
    );
    assert_eq!(
        post(&app, "/objects/counter/c/get", "").await,
        (StatusCode::OK, json!({"value": 2}))
    );
    // (uri, body, status, code): each refused, none changing the counter.
    let refusals = [
        (
            "/objects/counter/c/reset",
            "",
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "/objects/counter/c/add",
            r#"{"by": "x"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/objects/counter/c/add",
            "{",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/objects/counter/c/fly",
            "",
            StatusCode::NOT_FOUND,
            "unknown_method",
        ),
        (
            "/objects/ghost/c/add",
            "",
            StatusCode::NOT_FOUND,
            "unknown_class",
        ),
        (
            "/objects/counter/c/add",
            r#"{"by": 9223372036854775807}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "method_failed",
        ),
    ];
    for (uri, body, status, code) in refusals {
        let (got, error) = post(&app, uri, body).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{uri} {body}: {error}"
        );
    }
    let view = get(&app, "/objects/counter/c").await;
    assert_eq!(view["state"], json!({"value": 2}));
    assert_eq!(view["queued_total"], json!(0));
    // The failed add is a call that ran (its error is in the history); refusals are not.
    let history = get(&app, "/objects/counter/c/history").await;
    let calls = history["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3, "{history}");
    assert_eq!(calls[2]["error"]["kind"], json!("failed"));
    // Direct writes to a class's objects are refused (a DELETE deletes it; see below).
    for method in [Method::PUT, Method::PATCH] {
        let (status, body) = send(&app, method.clone(), "/objects/counter/c", &[], "[]").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}: {body}");
        assert_eq!(body["error"]["code"], json!("methods_only"));
    }
}

#[tokio::test]
async fn idempotency_keys_and_messages_run_a_call_once() {
    let app = app();
    let key = [("idempotency-key", "order-7")];
    for _ in 0..3 {
        let (status, body) = send(
            &app,
            Method::POST,
            "/objects/counter/k/add",
            &key,
            r#"{"by": 5}"#,
        )
        .await;
        assert_eq!((status, body), (StatusCode::OK, json!({"value": 5})));
    }
    let (status, sent) = post(&app, "/objects/counter/k/add/send", r#"{"by": 1}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let id = sent["id"].as_str().unwrap().to_string();
    for _ in 0..500 {
        let invocation = get(&app, &format!("/invocations/{id}")).await;
        if invocation["status"] == json!("succeeded") {
            // An invocation's output is the function's bytes, here JSON text.
            let output: Value =
                serde_json::from_str(invocation["output"].as_str().unwrap()).unwrap();
            assert_eq!(output, json!({"value": 6}));
            let history = get(&app, "/objects/counter/k/history").await;
            let calls = history["calls"].as_array().unwrap();
            // The keyed call's invocation answered the repeats: one call record for three.
            assert_eq!(calls.len(), 2, "{history}");
            assert_eq!(calls[0]["key"], json!("idempotency:order-7"));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the message never ran");
}

#[tokio::test]
async fn seats_go_in_arrival_order_and_inheritance_overrides_watch() {
    let app = app();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &app,
                "/objects/seats/show/reserve",
                &format!(r#"{{"seat": "A{}", "by": "p{i}"}}"#, i % 10),
            )
            .await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => won.push(body["order"].as_i64().unwrap()),
            StatusCode::UNPROCESSABLE_ENTITY => {}
            other => panic!("{other}: {body}"),
        }
    }
    won.sort();
    assert_eq!(
        won,
        (1..=10).collect::<Vec<_>>(),
        "each seat went once, in order"
    );
    // The first call record of each seat won it.
    let history = get(&app, "/objects/seats/show/history").await;
    let mut seen = std::collections::HashSet::new();
    for call in history["calls"].as_array().unwrap() {
        let first = seen.insert(call["input"]["seat"].as_str().unwrap().to_string());
        assert_eq!(call["error"].is_null(), first, "{call}");
    }

    let (status, body) = post(&app, "/objects/premium_video/v/watch", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let watched = post(&app, "/objects/premium_video/v/watch", r#"{"paid": true}"#).await;
    assert_eq!(
        watched,
        (StatusCode::OK, json!({"views": 1, "paid_views": 1}))
    );
    let plain = post(&app, "/objects/video/v/watch", "").await;
    assert_eq!(plain, (StatusCode::OK, json!({"views": 1})));
    let described = post(&app, "/objects/premium_video/v/describe", "").await.1;
    assert_eq!(described["class"], json!("premium_video"));
    // `retitle` is internal: an editor (same package) may, a call from outside may not.
    let (status, _) = post(&app, "/objects/video/v/retitle", r#"{"title": "x"}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let retitled = post(
        &app,
        "/objects/editor/e/retitle",
        r#"{"class": "video", "key": "v", "title": "Lisbon"}"#,
    )
    .await;
    assert_eq!(
        retitled,
        (StatusCode::OK, json!({"title": "Lisbon", "by": "editor/e"}))
    );
}

#[tokio::test]
async fn packages_install_over_http_and_bad_ones_are_refused() {
    let app = app();
    let shop = "[classes.tally]\nfields = { value = \"integer\" }\nmethods = { add = { function = \"counter.add\" } }\n";
    let (status, body) = send(&app, Method::PUT, "/packages/shop", &[], shop).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["classes"][0]["fields"]["value"],
        json!({"type": "integer", "default": 0})
    );
    assert_eq!(
        post(&app, "/objects/tally/t/add", r#"{"by": 4}"#).await,
        (StatusCode::OK, json!({"value": 4}))
    );
    let listed = get(&app, "/packages").await;
    let names: Vec<&str> = listed["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["examples", "shop"]);
    for (uri, body) in [
        ("/packages/shop", "name = \"other\""),
        ("/packages/thief", "[classes.counter]"),
        ("/packages/bad", "[classes.a]\nextends = \"b\""),
        ("/packages/bad", "not toml ["),
    ] {
        let (status, error) = send(&app, Method::PUT, uri, &[], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {error}");
    }
    // The examples' counter is still the examples'.
    assert_eq!(
        get(&app, "/packages/examples").await["name"],
        json!("examples")
    );
}

fn transfer(from: &str, to: &str, amount: i64) -> Value {
    json!({"calls": [
        {"class": "account", "key": from, "method": "withdraw", "input": {"amount": amount}},
        {"class": "account", "key": to, "method": "deposit", "input": {"amount": amount}},
    ]})
}

async fn balance(app: &Router, key: &str) -> i64 {
    let (_, body) = post(app, &format!("/objects/account/{key}/balance"), "").await;
    body["balance"].as_i64().unwrap()
}

#[tokio::test]
async fn serializable_transfers_answer_one_outcome_per_id() {
    let app = app();
    post(&app, "/objects/account/a/deposit", r#"{"amount": 10}"#).await;
    let body = transfer("a", "b", 4).to_string();
    let (status, first) = post(&app, "/transactions/t1", &body).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["outcome"], json!("success"));
    assert_eq!(first["results"], json!([{"balance": 6}, {"balance": 4}]));
    assert_eq!(
        post(&app, "/transactions/t1", &body).await,
        (StatusCode::OK, first.clone())
    );
    assert_eq!(get(&app, "/transactions/t1").await, first);
    let (status, failed) = post(&app, "/transactions/t2", &transfer("a", "b", 7).to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{failed}");
    assert_eq!(
        (failed["outcome"].clone(), failed["participant"].clone()),
        (json!("failure"), json!(0))
    );
    assert_eq!((balance(&app, "a").await, balance(&app, "b").await), (6, 4));
    for (uri, body) in [
        ("/transactions/t3", json!({"calls": []})),
        (
            "/transactions/t3",
            json!({"calls": [{"class": "account", "key": "a", "method": "balance"}]}),
        ),
        (
            "/transactions/t3",
            json!({"calls": [{"class": "account", "key": "a", "method": "fly"}]}),
        ),
        (
            "/transactions/t3",
            json!({"calls": [{"class": "account", "key": "a", "method": "deposit", "extra": 1}]}),
        ),
        ("/transactions/t3", json!({"style": "both", "calls": []})),
    ] {
        let (status, error) = post(&app, uri, &body.to_string()).await;
        assert!(status.is_client_error(), "{body}: {status} {error}");
    }
    let (status, _) = send(&app, Method::GET, "/transactions/nothing", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_open_transaction_commits_every_account_its_method_reaches() {
    let app = app();
    post(&app, "/objects/account/a/deposit", r#"{"amount": 10}"#).await;
    let pay = |from: &str, to: &str, amount: i64| {
        json!({"call": {"class": "account", "key": from, "method": "pay", "input": {"to": to, "amount": amount}}})
            .to_string()
    };
    let (status, first) = post(&app, "/transactions/o1", &pay("a", "b", 4)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["outcome"], json!("success"));
    assert_eq!(first["results"], json!([{"balance": 6, "to": 4}]));
    assert_eq!(first["style"], json!("serializable"));
    assert_eq!(
        post(&app, "/transactions/o1", &pay("a", "b", 4)).await,
        (StatusCode::OK, first.clone())
    );
    assert_eq!(get(&app, "/transactions/o1").await, first);
    // b pays a back more than it has: b's own withdrawal fails, nothing changes.
    let (status, failed) = post(&app, "/transactions/o2", &pay("b", "a", 5)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{failed}");
    assert_eq!(failed["outcome"], json!("failure"));
    assert_eq!((balance(&app, "a").await, balance(&app, "b").await), (6, 4));
    // The same id with another call, both forms at once, or neither: refused.
    for body in [
        pay("a", "b", 1),
        json!({"calls": [], "call": {}}).to_string(),
        json!({"style": "saga"}).to_string(),
        json!({}).to_string(),
    ] {
        let (status, error) = post(&app, "/transactions/o1", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
    }
}

/// SG-1: a saga of three deposits whose step k fails (a withdrawal too large, for every k):
/// each step before it is compensated once, none after it runs, and the balances end as
/// they began.
#[tokio::test]
async fn sg_1_a_saga_compensates_what_succeeded_once_for_every_failing_step() {
    let app = app();
    for k in 0..3 {
        let keys = [format!("s{k}-0"), format!("s{k}-1"), format!("s{k}-2")];
        for key in &keys {
            post(
                &app,
                &format!("/objects/account/{key}/deposit"),
                r#"{"amount": 5}"#,
            )
            .await;
        }
        let calls: Vec<Value> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let (method, amount) = if i == k { ("withdraw", 100) } else { ("deposit", 1) };
                json!({"class": "account", "key": key, "method": method, "input": {"amount": amount},
                       "compensate": {"method": "withdraw", "input": {"amount": 1}}})
            })
            .collect();
        let body = json!({"style": "saga", "calls": calls}).to_string();
        let (status, outcome) = post(&app, &format!("/transactions/saga-{k}"), &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{outcome}");
        assert_eq!(
            (outcome["outcome"].clone(), outcome["compensated"].clone()),
            // Nothing to compensate when the first step fails.
            (json!("failure"), json!(k > 0))
        );
        assert!(
            outcome["error"]["message"]
                .as_str()
                .unwrap()
                .contains("insufficient funds"),
            "{outcome}"
        );
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(balance(&app, key).await, 5, "step {i} of saga {k}");
            let history = get(&app, &format!("/objects/account/{key}/history")).await;
            let methods: Vec<&str> = history["calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["method"].as_str().unwrap())
                .collect();
            let expected: &[&str] = match i.cmp(&k) {
                std::cmp::Ordering::Less => &["deposit", "deposit", "withdraw"],
                std::cmp::Ordering::Equal => &["deposit", "withdraw"],
                std::cmp::Ordering::Greater => &["deposit"],
            };
            assert_eq!(methods, expected, "account {i} of saga {k}");
        }
        // The same id answers the same outcome, and runs nothing again.
        assert_eq!(
            post(&app, &format!("/transactions/saga-{k}"), &body)
                .await
                .1["outcome"],
            json!("failure")
        );
        assert_eq!(
            get(&app, &format!("/transactions/saga-{k}")).await["outcome"],
            json!("failure")
        );
    }
    let ok = json!({"style": "saga", "calls": [
        {"class": "account", "key": "s0-0", "method": "withdraw", "input": {"amount": 2}},
        {"class": "account", "key": "s0-1", "method": "deposit", "input": {"amount": 2}},
    ]});
    let (status, outcome) = post(&app, "/transactions/saga-ok", &ok.to_string()).await;
    assert_eq!(
        (status, outcome["results"].clone()),
        (StatusCode::OK, json!([{"balance": 3}, {"balance": 7}]))
    );
}

#[tokio::test]
async fn users_and_groups_link_both_sides_and_deletes_unlink_every_referrer() {
    let app = app();
    let (status, linked) = post(
        &app,
        "/objects/user/ana/links/groups",
        r#"{"add": ["dev", "ops"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    post(&app, "/objects/user/bo/links/groups", r#"{"add": ["dev"]}"#).await;
    let groups = get(&app, "/objects/group?keys=dev,ops").await;
    assert_eq!(groups["objects"]["dev"]["members"], json!(["ana", "bo"]));
    assert_eq!(groups["objects"]["ops"]["members"], json!(["ana"]));
    let (status, refused) = post(&app, "/objects/user/ana/links/name", r#"{"add": ["x"]}"#).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid"))
    );
    let (status, _) = post(
        &app,
        "/objects/user/ana/links/groups",
        r#"{"add": ["a"], "remove": ["b"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = send(&app, Method::DELETE, "/objects/group/dev", &[], "").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"deleted": true, "unlinked": 2}))
    );
    let users = get(&app, "/objects/user?keys=ana,bo").await;
    assert_eq!(users["objects"]["ana"]["groups"], json!(["ops"]));
    assert_eq!(users["objects"]["bo"]["groups"], json!([]));
    let (status, _) = post(
        &app,
        "/objects/user/ana/libobject.link",
        r#"{"field": "groups", "keys": ["x"], "add": true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let renamed = post(&app, "/objects/user/ana/rename", r#"{"name": "Ana"}"#).await;
    assert_eq!(renamed, (StatusCode::OK, json!({"name": "Ana"})));
}

#[tokio::test]
async fn a_box_office_sells_a_seat_with_a_dataflow_method() {
    let app = app();
    post(&app, "/objects/account/ana/deposit", r#"{"amount": 50}"#).await;
    let sale = r#"{"show": "gala", "seat": "B7", "buyer": "ana", "price": 20}"#;
    let key = [("idempotency-key", "sale-1")];
    let (status, sold) = send(
        &app,
        Method::POST,
        "/objects/box_office/main/sell",
        &key,
        sale,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sold}");
    assert_eq!(
        sold,
        json!({"seat": "B7", "order": 1, "balance": 30, "sold": 1})
    );
    let (_, again) = send(
        &app,
        Method::POST,
        "/objects/box_office/main/sell",
        &key,
        sale,
    )
    .await;
    assert_eq!(again, sold, "one sale per key");
    let (status, failed) = post(&app, "/objects/box_office/main/sell", sale).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("step seat"),
        "{failed}"
    );
    assert_eq!(balance(&app, "ana").await, 30);
}
