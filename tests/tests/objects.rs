//! Objects with real processes: the object routes and their refusals over HTTP and through
//! the CLI on `tally up`, surviving a SIGKILL; and TX-1 against the `bank` example: clients
//! mixing one-shot and interactive transfers over HTTP while `tally up` is SIGKILLed and
//! started again on the same data dir (`TALLY_SLOW_TESTS=1` for the issue's full size).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tally_tests::bank::{self, Scale, Targets};
use tally_tests::{client, send};
use tally_tests::{run_tally, wait_until, Tally};

#[test]
fn object_routes_and_the_cli_answer_refuse_with_4xx_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = client();
    let tally = Tally::up(&data, &[]).unwrap();
    let cart = tally.url("/objects/carts/u1");
    let (status, put) = send(http.put(&cart).body(r#"{"items": [], "total": 0}"#));
    assert_eq!((status, put), (200, json!({"old": null})));
    let ops = r#"[{"op": "push", "path": "/items", "value": "tea", "limit": 2},
                  {"op": "add", "path": "/total", "delta": 4}]"#;
    assert_eq!(
        send(http.patch(&cart).body(ops)),
        (200, json!({"results": [1, 0]}))
    );
    let doc = json!({"items": ["tea"], "total": 4});
    assert_eq!(send(http.get(&cart)), (200, doc.clone()));
    assert_eq!(
        send(http.get(format!("{cart}?path=/total"))),
        (200, json!(4))
    );

    // Each refusal: its status and code, and the document as it was.
    let big = format!(r#"{{"s": "{}"}}"#, "x".repeat(70 * 1024));
    let refusals = [
        (http.patch(&cart).body("{nope"), 400, "bad_request"),
        (
            http.patch(&cart)
                .body(r#"[{"op": "frobnicate", "path": "/a"}]"#),
            400,
            "unknown_op",
        ),
        (http.get(format!("{cart}?path=/nope")), 404, "no_such_path"),
        (
            http.get(tally.url("/objects/carts/nobody")),
            404,
            "unknown_object",
        ),
        (
            http.patch(&cart)
                .body(r#"[{"op": "add", "path": "/items", "delta": 1}]"#),
            409,
            "type_mismatch",
        ),
        (http.put(&cart).body(big), 413, "too_large"),
        (
            http.patch(&cart)
                .body(r#"[{"op": "set", "path": "/total/x", "value": 1}]"#),
            422,
            "bad_path",
        ),
        (
            http.post(tally.url("/transactions"))
                .body(r#"{"writes": 1}"#),
            400,
            "bad_transaction",
        ),
    ];
    for (request, status, code) in refusals {
        let (got, body) = send(request);
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert_eq!(send(http.get(&cart)).1, doc);
    }

    // The CLI, over the same routes.
    let addr = tally.addr.clone();
    let cli = |args: &[&str]| -> String {
        let mut all = vec!["object"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--addr", &addr]);
        run_tally(&all).unwrap()
    };
    let parse = |text: String| -> Value { serde_json::from_str(&text).unwrap() };
    assert_eq!(
        parse(cli(&["set", "accounts", "a1", r#"{"balance": 10}"#])),
        json!({"old": null})
    );
    assert_eq!(
        parse(cli(&["get", "accounts", "a1", "--path", "/balance"])),
        json!(10)
    );
    let tx = dir.path().join("tx.json");
    std::fs::write(
        &tx,
        r#"{"conditions": [{"collection": "accounts", "key": "a1", "path": "/balance", "ge": 4}],
            "writes": [{"collection": "accounts", "key": "a1", "op": "add", "path": "/balance", "delta": -4},
                       {"collection": "accounts", "key": "a2", "op": "add", "path": "/balance", "delta": 4}]}"#,
    )
    .unwrap();
    let outcome = parse(cli(&["tx", tx.to_str().unwrap()]));
    assert_eq!(outcome["committed"], true, "{outcome}");
    let patched = parse(cli(&[
        "patch",
        "accounts",
        "a2",
        r#"[{"op": "add", "path": "/balance", "delta": 1}]"#,
    ]));
    assert_eq!(patched, json!({"results": [4]}));
    let lines = cli(&["history", "accounts", "a1"]);
    let kinds: Vec<&str> = lines
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    assert_eq!(kinds, ["write", "oneshot"], "{lines}");
    assert_eq!(
        parse(cli(&["delete", "accounts", "a2"])),
        json!({"old": {"balance": 5}})
    );
    let missing = run_tally(&["object", "get", "accounts", "a2", "--addr", &addr]).unwrap_err();
    assert!(
        format!("{missing:#}").contains("unknown_object"),
        "{missing:#}"
    );

    // What was acknowledged outlives a SIGKILL, history and all.
    let history = send(http.get(format!("{cart}/history"))).1;
    assert_eq!(history["changes"].as_array().unwrap().len(), 4, "{history}");
    tally.kill9().unwrap();
    let tally = Tally::up(&data, &[]).unwrap();
    let cart = tally.url("/objects/carts/u1");
    assert_eq!(send(http.get(&cart)), (200, doc));
    assert_eq!(send(http.get(format!("{cart}/history"))).1, history);
    assert_eq!(
        send(http.get(tally.url("/objects/accounts/a1?path=/balance"))).1,
        json!(6)
    );
}

#[test]
fn old_versions_are_collected_on_a_timer_and_every_answer_stays_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(&dir.path().join("data"), &["--object-retention-s", "1"]).unwrap();
    let http = client();
    let counter = tally.url("/objects/counters/c1");
    assert_eq!(send(http.put(&counter).body(r#"{"n": 0}"#)).0, 200);
    for _ in 0..100 {
        let (status, body) = send(
            http.patch(&counter)
                .body(r#"[{"op": "add", "path": "/n", "delta": 1}]"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    // The `bank` function's objects too, in another book.
    let bank = |body: Value| {
        send(
            http.post(tally.url("/function/bank"))
                .header("X-Tally-Book", "3")
                .json(&body),
        )
    };
    for account in ["a1", "a2"] {
        let (status, body) = bank(json!({"action": "open", "account": account, "balance": 100}));
        assert_eq!(status, 200, "{body}");
    }
    for _ in 0..50 {
        let transfer = json!({"action": "transfer", "from": "a1", "to": "a2", "amount": 1,
                              "mode": "oneshot"});
        assert_eq!(bank(transfer), (200, json!({"committed": true})));
    }
    let base = tally.url("");
    // A collection marks the log; the next one past the retention trims below that mark.
    wait_until(Duration::from_secs(30), || {
        tally_tests::metric(&http, &base, "tally_object_records_collected_total") >= 150.0
    })
    .expect("both books' old versions are trimmed");
    assert!(tally_tests::metric(&http, &base, "tally_objects_collected_total") >= 3.0);
    assert_eq!(send(http.get(&counter)), (200, json!({"n": 100})));
    let (_, history) = send(http.get(format!("{counter}/history")));
    let changes = history["changes"].as_array().unwrap();
    assert!(
        changes.len() < 101,
        "{} changes still listed",
        changes.len()
    );
    assert_eq!(
        bank(json!({"action": "balance", "account": "a2"})),
        (200, json!({"balance": 150}))
    );
    assert_eq!(
        bank(json!({"action": "audit"})),
        (200, json!({"accounts": 2, "total": 200}))
    );
    tally.stop().unwrap();
}

#[test]
fn bank_keeps_its_invariant_under_concurrent_transfers_while_tally_up_is_sigkilled() {
    let scale = Scale::from_env();
    let kills = 3;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tally = Tally::up(&data, &[]).unwrap();
    bank::open(&tally.url(""), scale);
    let targets = Targets::new(vec![tally.url("")]);
    let tally = Mutex::new(Some(tally));
    let killed = AtomicUsize::new(0);
    let run = bank::run(&targets, scale, 0x7a11, |targets, answered| {
        // Kills spread over the run, each once some transfers were answered since the last
        // start: the kill lands among transfers in flight.
        let started = std::time::Instant::now();
        for k in 1..=kills {
            let at = scale.duration * k / (kills + 1);
            let floor = answered.load(Ordering::SeqCst) + 20;
            let progress = wait_until(scale.duration * 2, || {
                started.elapsed() >= at && answered.load(Ordering::SeqCst) >= floor
            });
            let answered = answered.load(Ordering::SeqCst);
            progress
                .unwrap_or_else(|e| panic!("kill {k}: {e}; {answered} answered, {floor} wanted"));
            let victim = tally.lock().unwrap().take().expect("running");
            targets.set(0, None);
            victim.kill9().unwrap();
            let again = Tally::up(&data, &[]).expect("tally up again on the same data");
            targets.set(0, Some(again.url("")));
            *tally.lock().unwrap() = Some(again);
            killed.fetch_add(1, Ordering::SeqCst);
        }
    });
    let tally = tally.into_inner().unwrap().expect("running");
    let report = bank::check(&tally.url(""), None, scale, &run);
    println!(
        "{} accounts ({} hot), {} clients, {:?}, {} SIGKILLs of tally up: {report:?}",
        scale.accounts,
        scale.hot,
        scale.clients,
        scale.duration,
        killed.load(Ordering::SeqCst)
    );
    assert_eq!(killed.into_inner(), kills as usize);
    assert!(
        report.oneshot_committed > 0 && report.interactive_committed > 0,
        "{report:?}"
    );
    assert!(report.audits > 0);
}
