//! Workflows with real processes: `steps` instances started over HTTP on `tally up`, which is
//! SIGKILLed while they run and started again; every instance ends with `{"count": N}` (its
//! counter incremented once per step, however often it was replayed), the same id again is
//! the same instance, another input under it is refused, and signals reach instances.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tally_tests::{wait_until, Tally};

const INSTANCES: usize = 40;
const STEPS: u64 = 20;

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn instance(http: &Client, tally: &Tally, id: &str) -> Option<Value> {
    let response = http
        .get(tally.url(&format!("/workflows/{id}")))
        .send()
        .ok()?;
    (response.status() == 200).then(|| response.json().ok())?
}

#[test]
fn steps_instances_survive_a_sigkill_of_tally_up_and_each_counts_exactly_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = client();
    let tally = Tally::up(&data, &[]).unwrap();
    for i in 0..INSTANCES {
        let response = http
            .post(tally.url(&format!("/workflows/steps/s{i}")))
            .json(&json!({ "steps": STEPS }))
            .send()
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().unwrap());
    }
    // Kill it once some instance has logged a few steps, while most are still running.
    wait_until(Duration::from_secs(30), || {
        (0..INSTANCES).any(|i| {
            instance(&http, &tally, &format!("s{i}"))
                .is_some_and(|v| v["steps"].as_array().is_some_and(|s| s.len() >= 6))
        })
    })
    .unwrap();
    let running_at_kill = (0..INSTANCES)
        .filter(|i| {
            instance(&http, &tally, &format!("s{i}")).is_none_or(|v| v["status"] == "running")
        })
        .count();
    tally.kill9().unwrap();
    let tally = Tally::up(&data, &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..INSTANCES {
        let id = format!("s{i}");
        let ended = loop {
            let v = instance(&http, &tally, &id);
            if let Some(v) = &v {
                if v["status"] != "running" {
                    break v.clone();
                }
            }
            assert!(Instant::now() < deadline, "{id} did not end: {v:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(ended["status"], "succeeded", "{id}: {ended}");
        assert_eq!(ended["output"], json!({ "count": STEPS }), "{id}");
        // One record per position: start, a write and a step per step, the end.
        let steps = ended["steps"].as_array().unwrap();
        assert_eq!(steps.len() as u64, 2 * STEPS + 1, "{id}");
        for (n, step) in steps.iter().enumerate() {
            assert_eq!(step["position"], n as u64 + 1, "{id}");
        }
    }
    println!("{running_at_kill} of {INSTANCES} instances were running at the kill");
    assert!(
        running_at_kill > 0,
        "the kill came after every instance ended"
    );

    // The same id again is the same instance, at once; another input is refused.
    let again: Value = http
        .post(tally.url("/workflows/steps/s0?wait_ms=5000"))
        .json(&json!({ "steps": STEPS }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again["output"], json!({ "count": STEPS }));
    let other = http
        .post(tally.url("/workflows/steps/s0"))
        .json(&json!({ "steps": 3 }))
        .send()
        .unwrap();
    assert_eq!(other.status(), 422);

    // Bad input: a bad id, bad JSON, an unknown workflow, an unknown instance.
    for (path, body, status) in [
        ("/workflows/steps/bad%20id", "{}", 400),
        ("/workflows/steps/x1", "{", 400),
        ("/workflows/nosuch/x2", "{}", 404),
        ("/workflows/nobody/signals/go", "{}", 404),
    ] {
        let response = http.post(tally.url(path)).body(body).send().unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    tally.stop().unwrap();
}
