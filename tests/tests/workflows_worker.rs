//! EO-1 with a worker process: the `flow-worker` example hosts a workflow that mixes table
//! reads and writes, a sync and an async call, a timer and a signal; the worker is killed
//! (abort) at every append it makes, just before and just after the log takes it, and
//! started again. Every instance then ends with the failure-free run's output, each child
//! call's effect (three records of `append3` in the instance's own book) happened once, and
//! its history has the failure-free run's shape.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tally_tests::{example_bin, Tally};

const WAIT: Duration = Duration::from_secs(90);

/// Starts the worker (crashing at `crash`, if given) and waits until it registered.
fn start_worker(gateway: &str, crash: Option<(u64, &str)>) -> Child {
    let mut command = Command::new(example_bin("flow-worker"));
    command.args(["--gateway", gateway]).env("RUST_LOG", "info");
    if let Some((at, when)) = crash {
        command.args(["--crash-at", &at.to_string(), "--crash-when", when]);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flow-worker");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("registered with the gateway") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("the worker registers");
    child
}

fn instance(http: &Client, tally: &Tally, id: &str, book: u32) -> Option<Value> {
    let response = http
        .get(tally.url(&format!("/workflows/{id}")))
        .header("X-Tally-Book", book)
        .send()
        .ok()?;
    (response.status() == 200).then(|| response.json().ok())?
}

fn tag3_records(http: &Client, tally: &Tally, book: u32) -> usize {
    let v: Value = http
        .get(tally.url(&format!("/log/{book}/records?tag=3")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["records"].as_array().map_or(0, Vec::len)
}

/// Runs instance `id` in `book` with a worker crashing at `crash`, then without; returns the
/// instance at its end, and whether the crash happened.
fn run(
    http: &Client,
    tally: &Tally,
    id: &str,
    book: u32,
    crash: Option<(u64, &str)>,
) -> (Value, bool) {
    let workers = tally.workers_addr();
    let mut worker = start_worker(&workers, crash);
    let started = http
        .post(tally.url(&format!("/workflows/mixed-worker/{id}")))
        .header("X-Tally-Book", book)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(started.status(), 202, "{}", started.text().unwrap());
    // The signal goes once the instance exists (a worker crashing at once may not have
    // written its start: the next one does).
    let deadline = Instant::now() + WAIT;
    let mut signalled = false;
    let mut crashed = false;
    let mut restarted = false;
    loop {
        if !crashed && worker.try_wait().unwrap().is_some() {
            crashed = true;
        }
        if crashed && !restarted {
            worker = start_worker(&workers, None);
            restarted = true;
        }
        if !signalled && instance(http, tally, id, book).is_some() {
            let sent = http
                .post(tally.url(&format!("/workflows/{id}/signals/approve")))
                .header("X-Tally-Book", book)
                .header("Idempotency-Key", "approve-1")
                .json(&json!("ok"))
                .send()
                .unwrap();
            assert_eq!(sent.status(), 202);
            signalled = true;
        }
        if let Some(v) = instance(http, tally, id, book) {
            if v["status"] != "running" {
                let _ = worker.kill();
                let _ = worker.wait();
                return (v, crashed);
            }
        }
        assert!(Instant::now() < deadline, "{id} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (op, name) per position, with the instance's id in names (its counter's key) as `ID`.
fn shape(v: &Value) -> Vec<(String, Option<String>)> {
    let id = v["id"].as_str().unwrap();
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = s["name"].as_str().map(|n| n.replace(id, "ID"));
            (s["op"].as_str().unwrap().to_string(), name)
        })
        .collect()
}

#[test]
fn a_worker_killed_at_every_append_of_a_workflow_changes_nothing_of_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (clean, crashed) = run(&http, &tally, "clean", 100, None);
    assert!(!crashed);
    assert_eq!(clean["status"], "succeeded", "{clean}");
    let mut expected = clean["output"].clone();
    expected["lucky"] = Value::Null;
    let clean_shape = shape(&clean);
    // A query of a workflow that runs in a worker is answered by that worker.
    let mut worker = start_worker(&tally.workers_addr(), None);
    let query = |name: &str| {
        http.get(tally.url(&format!("/workflows/clean/queries/{name}")))
            .header("X-Tally-Book", 100)
            .send()
            .unwrap()
    };
    let deadline = Instant::now() + WAIT;
    let answer = loop {
        let got = query("count");
        if got.status() == 200 {
            break got.json::<Value>().unwrap();
        }
        // The worker may not have attached yet.
        assert!(
            Instant::now() < deadline,
            "no answer: {}",
            got.text().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(answer, json!({ "count": 2, "status": "succeeded" }));
    let unknown = query("colour");
    assert_eq!(unknown.status(), 404, "{}", unknown.text().unwrap());
    let _ = worker.kill();
    let _ = worker.wait();
    let mut book = 101;
    let mut boundaries = 0;
    'boundaries: for n in 0.. {
        for when in ["before", "after"] {
            let id = format!("eo-{n}-{when}");
            let (ended, crashed) = run(&http, &tally, &id, book, Some((n, when)));
            if !crashed {
                // Past the workflow's last append: every boundary was tried.
                break 'boundaries;
            }
            boundaries += 1;
            assert_eq!(ended["status"], "succeeded", "{id}: {ended}");
            let mut got = ended["output"].clone();
            got["lucky"] = Value::Null;
            assert_eq!(got, expected, "{id}");
            assert_eq!(shape(&ended), clean_shape, "{id}");
            // The sync call's three records, and the async call's, each once.
            let deadline = Instant::now() + WAIT;
            while tag3_records(&http, &tally, book) < 6 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(tag3_records(&http, &tally, book), 6, "{id}");
            book += 1;
        }
    }
    println!("{boundaries} crash points, each with a restarted worker");
    assert!(boundaries >= 16, "only {boundaries} crash points");
    tally.stop().unwrap();
}
