//! A worker process (the `hello-worker` example, built apart from `tally`) serving functions
//! for a real `tally up`: its functions answer over HTTP, use the log and call other
//! functions; when it dies their calls fail at once with 503, and work again once it is back.

use reqwest::blocking::Client;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_tests::{example_bin, wait_until, Tally};

fn start_worker(gateway: &str) -> Child {
    Command::new(example_bin("hello-worker"))
        .args(["--gateway", gateway])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hello-worker")
}

fn post(http: &Client, url: &str, body: &'static str) -> (u16, String) {
    let response = http
        .post(url)
        .body(body)
        .send()
        .expect("the gateway answers");
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

#[test]
fn a_worker_serves_functions_and_its_death_fails_calls_fast_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let workers = tally.workers_addr();
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let hello = tally.url("/function/hello");

    let mut worker = start_worker(&workers);
    wait_until(Duration::from_secs(30), || {
        post(&http, &hello, r#"{"name":"x"}"#).0 == 200
    })
    .expect("the worker's hello answers");
    let (_, body) = post(&http, &hello, r#"{"name":"x"}"#);
    let greeting: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(greeting["greeting"], "hello, x");
    assert_eq!(
        post(&http, &hello, "not json").0,
        400,
        "a worker's bad input is the caller's"
    );

    // Log calls from the worker, in the caller's book.
    let visited: Value = http
        .post(tally.url("/function/visit"))
        .header("X-Tally-Book", "5")
        .body("v1")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(visited["book"], 5);
    assert_eq!(visited["tail"], visited["appended"]);
    let page: Value = http
        .get(tally.url("/log/5/records?tag=7"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["records"][0]["seqnum"], visited["appended"]);

    // The in-process `welcome`, unchanged, in the worker: a sync and an async nested call.
    let (status, body) = post(
        &http,
        &tally.url("/function/welcome-worker"),
        r#"{"name":"bo"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let welcomed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(welcomed["greeting"], "hello, bo");
    let signing = welcomed["signing"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), || {
        let status: Value = http
            .get(tally.url(&format!("/invocations/{signing}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        status["status"] == "succeeded"
    })
    .expect("the background guestbook call finishes");

    // The worker dies: calls fail at once with a clear 503.
    worker.kill().unwrap();
    worker.wait().unwrap();
    wait_until(Duration::from_secs(10), || {
        post(&http, &hello, r#"{"name":"x"}"#).0 == 503
    })
    .expect("calls fail with 503 once the worker is gone");
    let started = Instant::now();
    let (status, body) = post(&http, &hello, r#"{"name":"x"}"#);
    assert_eq!(status, 503);
    assert!(body.contains("function_unavailable"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");

    // Back again: calls work.
    let mut worker = start_worker(&workers);
    wait_until(Duration::from_secs(30), || {
        post(&http, &hello, r#"{"name":"x"}"#).0 == 200
    })
    .expect("a restarted worker serves again");
    worker.kill().unwrap();
    worker.wait().unwrap();
}

#[test]
fn a_worker_cannot_take_an_in_process_functions_name() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let workers = tally.workers_addr();
    // `echo` is served in-process; a worker registering it is refused and exits.
    let out = Command::new(example_bin("hello-worker"))
        .args(["--gateway", &workers, "--also-echo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("served in-process"), "{stderr}");
}

#[test]
fn a_worker_attached_to_one_gateway_of_a_cluster_serves_calls_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tally_tests::Cluster::up(&dir.path().join("cluster"), 3, 3, 2).unwrap();
    let gateway = cluster
        .nodes
        .iter()
        .find(|n| n.http.as_deref() == Some(cluster.gateways()[0].as_str()))
        .unwrap();
    let workers = gateway.workers.clone().expect("a gateway takes workers");
    let http = Client::new();
    let hello = format!("{}/function/hello", cluster.gateways()[0]);
    let mut worker = start_worker(&workers);
    wait_until(Duration::from_secs(30), || {
        post(&http, &hello, r#"{"name":"c"}"#).0 == 200
    })
    .expect("the worker's hello answers through its gateway");
    // Its log calls go to the replicated log.
    let visit = format!("{}/function/visit", cluster.gateways()[0]);
    let (status, body) = post(&http, &visit, "in a cluster");
    assert_eq!(status, 200, "{body}");
    // The other gateway forwards its calls to the gateway the worker is attached to.
    let elsewhere = &cluster.gateways()[1];
    let (status, body) = post(
        &http,
        &format!("{elsewhere}/function/hello"),
        r#"{"name":"d"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello, d"), "{body}");
    let (status, body) = post(&http, &format!("{elsewhere}/function/hello"), "not json");
    assert_eq!(status, 400, "a bad input stays a bad input: {body}");
    let (status, body) = post(&http, &format!("{elsewhere}/function/nobody"), "x");
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        &http,
        &format!("{elsewhere}/asyncFunction/hello"),
        r#"{"name":"e"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut inv = Value::Null;
    wait_until(Duration::from_secs(30), || {
        let url = format!("{elsewhere}/invocations/{id}");
        inv = http.get(url).send().unwrap().json().unwrap_or(Value::Null);
        inv["status"] == "succeeded"
    })
    .unwrap_or_else(|_| panic!("the forwarded asynchronous call finished: {inv}"));
    assert!(
        inv["output"].as_str().unwrap().contains("hello, e"),
        "{inv}"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
}

/// Methods of a class served by a worker process: a package installed with `tally package
/// put`, its methods in `hello-worker` (written with `libobject::method`); while the worker is
/// gone a call fails with 503 and changes nothing; back, the object goes on from its state.
#[test]
fn a_class_s_methods_run_in_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let package = dir.path().join("wallet.toml");
    std::fs::write(
        &package,
        "name = \"wallets\"\n[classes.wallet]\nfields = { coins = \"integer\" }\n\
         methods = { add = { function = \"wallet.add\" }, coins = { function = \"wallet.coins\", shared = true } }\n",
    )
    .unwrap();
    let put = tally_tests::run_tally(&[
        "package",
        "put",
        package.to_str().unwrap(),
        "--addr",
        &tally.addr,
    ])
    .unwrap();
    assert!(put.contains("installed wallets: wallet"), "{put}");
    let mut worker = start_worker(&tally.workers_addr());
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let add = tally.url("/objects/wallet/w1/add");
    wait_until(Duration::from_secs(30), || {
        post(&http, &add, r#"{"by": 3}"#).0 == 200
    })
    .unwrap();
    let (status, body) = post(&http, &add, r#"{"by": 4}"#);
    assert_eq!(status, 200, "{body}");
    let coins: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(coins["coins"], 7, "{body}");
    assert_eq!(coins["from"], "hello-worker");
    worker.kill().unwrap();
    worker.wait().unwrap();
    wait_until(Duration::from_secs(30), || {
        post(&http, &add, r#"{"by": 100}"#).0 == 503
    })
    .unwrap();
    let (status, body) = post(&http, &tally.url("/objects/wallet/w1/coins"), "");
    assert_eq!(
        status, 503,
        "no worker for the shared method either: {body}"
    );
    let mut worker = start_worker(&tally.workers_addr());
    let coins = tally.url("/objects/wallet/w1/coins");
    let served = wait_until(Duration::from_secs(30), || post(&http, &coins, "").0 == 200);
    let body = post(&http, &coins, "").1;
    // The worker goes with the test, whatever it found.
    worker.kill().unwrap();
    worker.wait().unwrap();
    served.unwrap();
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        seen["coins"], 7,
        "the calls without a worker changed nothing: {body}"
    );
}
