//! The HTTP gateway of a real `tally up`: the built-in functions, the log endpoints, the CLI
//! clients, and clear errors for bad input.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use tally_tests::client;
use tally_tests::{run_tally, Tally};

#[test]
fn echo_answers_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let response = client()
        .post(tally.url("/function/echo"))
        .body("hi")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "hi");
    assert_eq!(
        run_tally(&["invoke", "echo", "hello", "--addr", &tally.addr]).unwrap(),
        "hello\n"
    );
}

#[test]
fn welcome_calls_greet_and_signs_the_guestbook_and_the_cli_lists_functions() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let welcomed: Value = client()
        .post(tally.url("/function/welcome"))
        .body(r#"{"name":"ana"}"#)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(welcomed["greeting"], "hello, ana");
    let signing = welcomed["signing"].as_str().unwrap();
    let done = tally_tests::wait_until(std::time::Duration::from_secs(10), || {
        let status: Value = client()
            .get(tally.url(&format!("/invocations/{signing}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        status["status"] == "succeeded"
    });
    assert!(done.is_ok(), "the background guestbook call finished");
    let listed = run_tally(&[
        "invoke",
        "guestbook",
        r#"{"action":"list","room":"welcome"}"#,
        "--addr",
        &tally.addr,
    ])
    .unwrap();
    assert!(listed.contains("hello, ana"), "{listed}");

    let functions = run_tally(&["functions", "--addr", &tally.addr]).unwrap();
    let names: Vec<&str> = functions
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    // The examples' functions, the example classes' methods and the runtime's own.
    assert_eq!(
        names,
        [
            "account.balance",
            "account.deposit",
            "account.pay",
            "account.withdraw",
            "append3",
            "approval",
            "bank",
            "cancel_car",
            "cancel_flight",
            "cancel_hotel",
            "counter.add",
            "counter.get",
            "counter.reset",
            "echo",
            "editor.retitle",
            "fanout",
            "greet",
            "group.describe",
            "guestbook",
            "libflow.schedule",
            "libobject.call",
            "libobject.dataflow",
            "libobject.delete",
            "libobject.link",
            "libobject.saga",
            "noop",
            "premium_video.watch",
            "reserve_car",
            "reserve_flight",
            "reserve_hotel",
            "retwis",
            "search",
            "seats.list",
            "seats.release",
            "seats.reserve",
            "sleep",
            "steps",
            "travel",
            "user.describe",
            "user.rename",
            "video.describe",
            "video.retitle",
            "video.watch",
            "welcome",
            "writes",
        ]
    );
}

#[test]
fn function_limits_come_from_a_file_and_a_bad_one_stops_tally_up() {
    let dir = tempfile::tempdir().unwrap();
    let limits = dir.path().join("functions.toml");
    std::fs::write(
        &limits,
        "[functions.greet]\ntimeout_ms = 5000\nmax_concurrency = 2\n",
    )
    .unwrap();
    let tally = Tally::up(
        &dir.path().join("data"),
        &["--functions", limits.to_str().unwrap()],
    )
    .unwrap();
    let greeted = client()
        .post(tally.url("/function/greet"))
        .body(r#"{"name":"ana"}"#)
        .send()
        .unwrap();
    assert_eq!(greeted.status(), 200);
    let listed: Value = client()
        .get(tally.url("/functions"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        listed["limits"]["greet"],
        json!({"max_concurrency": 2, "timeout_ms": 5000, "retries": 0, "backoff_ms": 100})
    );
    assert_eq!(
        listed["limits"]["echo"]["max_concurrency"], 1024,
        "the default"
    );
    tally.stop().unwrap();

    std::fs::write(&limits, "[functions.nobody]\nretries = 1\n").unwrap();
    let refused = run_tally(&[
        "up",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--worker-addr",
        "127.0.0.1:0",
        "--functions",
        limits.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(
        format!("{refused:#}").contains("no function named \"nobody\""),
        "{refused:#}"
    );
}

#[test]
fn guestbook_appends_tagged_records_and_reads_them_back_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let http = client();
    let call = |body: Value| -> Value {
        let r = http
            .post(tally.url("/function/guestbook"))
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    };
    let mut seqnums = Vec::new();
    for (room, name) in [
        ("lobby", "ana"),
        ("attic", "bo"),
        ("lobby", "cy"),
        ("lobby", "di"),
    ] {
        let out = call(
            json!({"action": "sign", "room": room, "name": name, "message": format!("hi from {name}")}),
        );
        seqnums.push((room, out["seqnum"].as_u64().unwrap()));
    }
    let lobby = call(json!({"action": "list", "room": "lobby"}));
    let names: Vec<&str> = lobby["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ana", "cy", "di"],
        "the lobby's stream holds exactly its entries, in order"
    );
    let lobby_seqnums: Vec<u64> = lobby["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seqnum"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = seqnums
        .iter()
        .filter(|(r, _)| *r == "lobby")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(lobby_seqnums, expected);
    // The same records through the raw log API, filtered by the room's tag.
    let tag = lobby["tag"].as_u64().unwrap().to_string();
    let out = run_tally(&["log", "read", "--addr", &tally.addr, "--tag", &tag]).unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn log_cli_appends_and_reads_by_tag_and_book() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let a = &tally.addr;
    let s1: u64 = run_tally(&[
        "log", "append", "--addr", a, "--book", "3", "--tag", "7", "first",
    ])
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let s2: u64 = run_tally(&[
        "log", "append", "--addr", a, "--book", "3", "--tag", "8", "second",
    ])
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let s3: u64 = run_tally(&[
        "log", "append", "--addr", a, "--book", "3", "--tag", "7", "--tag", "8", "third",
    ])
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert!(s1 < s2 && s2 < s3);
    let tag7 = run_tally(&["log", "read", "--addr", a, "--book", "3", "--tag", "7"]).unwrap();
    let lines: Vec<&str> = tag7.lines().collect();
    assert_eq!(lines.len(), 2, "{tag7}");
    assert!(
        lines[0].starts_with(&s1.to_string()) && lines[0].ends_with("first"),
        "{tag7}"
    );
    assert!(
        lines[1].starts_with(&s3.to_string()) && lines[1].ends_with("third"),
        "{tag7}"
    );
    assert_eq!(
        run_tally(&["log", "read", "--addr", a, "--book", "4"]).unwrap(),
        "",
        "books are isolated"
    );
    let from = run_tally(&[
        "log",
        "read",
        "--addr",
        a,
        "--book",
        "3",
        "--from",
        &s2.to_string(),
    ])
    .unwrap();
    assert_eq!(from.lines().count(), 2, "{from}");
}

#[test]
fn bad_input_gets_clear_json_errors_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    // A server may close a connection after refusing an oversized body unread; fresh
    // connections keep one refusal from failing the next request.
    let http = Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let expect = |response: reqwest::blocking::Response, status: u16, code: &str| {
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().expect("errors are JSON");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    };
    expect(
        http.post(tally.url("/function/nope"))
            .body("x")
            .send()
            .unwrap(),
        404,
        "unknown_function",
    );
    let huge = vec![b'x'; 3 * 1024 * 1024];
    expect(
        http.post(tally.url("/function/echo"))
            .body(huge.clone())
            .send()
            .unwrap(),
        413,
        "too_large",
    );
    expect(
        http.post(tally.url("/log/0/append?tag=1"))
            .body(vec![b'x'; logbook_record_max() + 1])
            .send()
            .unwrap(),
        413,
        "too_large",
    );
    expect(
        http.post(tally.url("/function/guestbook"))
            .body("{not json")
            .send()
            .unwrap(),
        400,
        "bad_input",
    );
    expect(
        http.post(tally.url("/function/echo"))
            .header("X-Tally-Book", "minus one")
            .body("x")
            .send()
            .unwrap(),
        400,
        "bad_request",
    );
    expect(
        http.post(tally.url("/log/0/append?tag=0"))
            .body("x")
            .send()
            .unwrap(),
        400,
        "bad_argument",
    );
    expect(
        http.post(tally.url("/log/0/append?tag=abc"))
            .body("x")
            .send()
            .unwrap(),
        400,
        "bad_request",
    );
    expect(
        http.post(tally.url("/log/0/append"))
            .body("")
            .send()
            .unwrap(),
        400,
        "bad_argument",
    );
    expect(
        http.get(tally.url("/log/zero/records")).send().unwrap(),
        400,
        "bad_request",
    );
    expect(
        http.get(tally.url("/invocations/unknown")).send().unwrap(),
        404,
        "unknown_invocation",
    );
    // Nothing else was disturbed.
    let ok = http
        .post(tally.url("/function/echo"))
        .body("still here")
        .send()
        .unwrap();
    assert_eq!(ok.text().unwrap(), "still here");
    let metrics = http
        .get(tally.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("tally_invocations_total"), "{metrics}");
}

fn logbook_record_max() -> usize {
    1024 * 1024
}

#[test]
fn async_invocations_and_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let http = client();
    let r = http
        .post(tally.url("/asyncFunction/echo"))
        .body("later")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut status = Value::Null;
    tally_tests::wait_until(std::time::Duration::from_secs(10), || {
        status = http
            .get(tally.url(&format!("/invocations/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        status["status"] == "succeeded"
    })
    .unwrap();
    assert_eq!(status["output"], "later");
    assert!(
        status["finished_at_ms"].as_u64().unwrap() >= status["created_at_ms"].as_u64().unwrap()
    );

    let sign = json!({"action": "sign", "room": "once", "name": "ana", "message": "m"}).to_string();
    let call = || {
        http.post(tally.url("/function/guestbook"))
            .header("Idempotency-Key", "k1")
            .body(sign.clone())
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let first = call();
    assert_eq!(call(), first, "the same key returns the same result");
    let reused = http
        .post(tally.url("/function/guestbook"))
        .header("Idempotency-Key", "k1")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(
        reused.status(),
        422,
        "a key reused with another input is refused"
    );
    let list = http
        .post(tally.url("/function/guestbook"))
        .body(json!({"action": "list", "room": "once"}).to_string())
        .send()
        .unwrap();
    assert_eq!(
        list.json::<Value>().unwrap()["entries"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the function ran once"
    );
}
