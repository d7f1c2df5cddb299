//! Workflows with real processes: `steps` instances started over HTTP on `tally up`, which is
//! SIGKILLed while they run and started again; every instance ends with `{"count": N}` (its
//! counter incremented once per step, however often it was replayed), the same id again is
//! the same instance, another input under it is refused, and signals reach instances.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tally_tests::client;
use tally_tests::{run_tally, segments, wait_until, Tally};

const INSTANCES: usize = 40;
const STEPS: u64 = 50;

/// GET `url` and its JSON answer.
fn get_json(http: &Client, url: String) -> Value {
    http.get(url).send().unwrap().json().unwrap()
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
    // And an instance whose children are `steps` instances.
    let children = 4;
    let fanout = json!({ "children": children, "steps": STEPS });
    start(&http, &tally, "fanout", "f", fanout);
    // Kill it once some instance has logged a few steps while others still run (both seen in
    // the same look over the instances, right before the kill).
    let mut running_at_kill = 0;
    let mut fanout_running = false;
    wait_until(Duration::from_secs(30), || {
        let views: Vec<Option<Value>> = (0..INSTANCES)
            .map(|i| instance(&http, &tally, &format!("s{i}")))
            .collect();
        let started = views
            .iter()
            .flatten()
            .any(|v| v["steps"].as_array().is_some_and(|s| s.len() >= 6));
        running_at_kill = views
            .iter()
            .filter(|v| v.as_ref().is_none_or(|v| v["status"] == "running"))
            .count();
        fanout_running = instance(&http, &tally, "f").is_none_or(|v| v["status"] == "running");
        started
    })
    .unwrap();
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
    // The parent's output sums its children's; each child ran its steps once, and its last
    // record is the parent's record of it.
    let f = wait_end(&http, &tally, "f", Duration::from_secs(60));
    assert_eq!(
        f["output"],
        json!({ "count": children * STEPS, "children": children })
    );
    let calls: Vec<&Value> = f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["op"] == "child")
        .collect();
    assert_eq!(calls.len() as u64, children, "{f}");
    for (n, call) in calls.iter().enumerate() {
        let id = format!("f:{}", n + 1);
        assert_eq!(call["name"], format!("steps {id}"));
        let child = instance(&http, &tally, &id).unwrap();
        assert_eq!(child["status"], "succeeded", "{id}: {child}");
        assert_eq!(child["parent"], "f");
        assert_eq!(child["output"], json!({ "count": STEPS }), "{id}");
        let steps = child["steps"].as_array().unwrap();
        assert_eq!(steps.len() as u64, 2 * STEPS + 1, "{id}");
        let end = steps.last().unwrap();
        assert_eq!(
            (&end["op"], &end["seqnum"]),
            (&json!("end"), &call["seqnum"]),
            "{id}"
        );
    }
    println!("{running_at_kill} of {INSTANCES} instances were running at the kill");
    assert!(
        running_at_kill > 0,
        "the kill came after every instance ended"
    );
    assert!(fanout_running, "the kill came after the fanout ended");

    // A query answers from the instance and its table, and changes nothing.
    let before = instance(&http, &tally, "s0").unwrap();
    let progress: Value = get_json(&http, tally.url("/workflows/s0/queries/progress"));
    assert_eq!(progress, json!({ "count": STEPS, "status": "succeeded" }));
    assert_eq!(instance(&http, &tally, "s0").unwrap(), before);
    let unknown = http
        .get(tally.url("/workflows/s0/queries/nosuch"))
        .send()
        .unwrap();
    assert_eq!(unknown.status(), 404);

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

/// `name`'s gauge for `function` on `tally`'s `/metrics`.
fn gauge(http: &Client, tally: &Tally, name: &str, function: &str) -> Option<f64> {
    let text = http.get(tally.url("/metrics")).send().ok()?.text().ok()?;
    let prefix = format!("{name}{{function=\"{function}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn start(http: &Client, tally: &Tally, workflow: &str, id: &str, input: Value) {
    let response = http
        .post(tally.url(&format!("/workflows/{workflow}/{id}")))
        .json(&input)
        .send()
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().unwrap());
}

fn wait_end(http: &Client, tally: &Tally, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = instance(http, tally, id);
        if let Some(v) = &v {
            if v["status"] != "running" {
                return v.clone();
            }
        }
        assert!(Instant::now() < deadline, "{id} did not end: {v:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until instance `id` logged its timer and no call of `workflow` runs or queues.
fn wait_suspended(http: &Client, tally: &Tally, workflow: &str, id: &str) {
    wait_until(Duration::from_secs(30), || {
        let timer = instance(http, tally, id).is_some_and(|v| {
            v["steps"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["op"] == "timer"))
        });
        let running = gauge(http, tally, "tally_function_running", workflow);
        let queued = gauge(http, tally, "tally_function_queued", workflow);
        timer && running == Some(0.0) && queued == Some(0.0)
    })
    .unwrap();
}

#[test]
fn a_waiting_approval_holds_no_task_and_a_signal_or_its_timer_across_a_restart_ends_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = client();
    let tally = Tally::up(&data, &[]).unwrap();

    // Approved by a signal: while it waits, no call of `approval` runs.
    start(&http, &tally, "approval", "a1", json!({ "timeout_s": 600 }));
    wait_suspended(&http, &tally, "approval", "a1");
    let waiting: Value = get_json(&http, tally.url("/workflows/a1/queries/waiting"));
    assert_eq!(waiting, json!({ "waiting": true }));
    let signal = http
        .post(tally.url("/workflows/a1/signals/approve"))
        .header("Idempotency-Key", "ops-1")
        .json(&json!("ops"))
        .send()
        .unwrap();
    assert_eq!(signal.status(), 202);
    let ended = wait_end(&http, &tally, "a1", Duration::from_secs(30));
    assert_eq!(ended["output"], json!({ "approved": true, "by": "ops" }));
    // The same signal again (same key) is delivered once.
    let again = http
        .post(tally.url("/workflows/a1/signals/approve"))
        .header("Idempotency-Key", "ops-1")
        .json(&json!("ops"))
        .send()
        .unwrap();
    assert_eq!(again.status(), 202);

    // Timed out, across a SIGKILL while it waits: the restarted process ends it, once.
    start(&http, &tally, "approval", "a2", json!({ "timeout_s": 3 }));
    wait_suspended(&http, &tally, "approval", "a2");
    tally.kill9().unwrap();
    let tally = Tally::up(&data, &[]).unwrap();
    let ended = wait_end(&http, &tally, "a2", Duration::from_secs(60));
    assert_eq!(ended["output"], json!({ "approved": false }));
    let ops: Vec<&str> = ended["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["timer", "signal", "end"]);

    // Cancelled while it waits: it ends `cancelled`; the lists and the CLI show it.
    start(&http, &tally, "approval", "a3", json!({ "timeout_s": 600 }));
    wait_suspended(&http, &tally, "approval", "a3");
    let addr = tally.addr.as_str();
    run_tally(&["workflow", "cancel", "a3", "--addr", addr]).unwrap();
    let ended = wait_end(&http, &tally, "a3", Duration::from_secs(30));
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let listed = run_tally(&["workflow", "list", "--status", "cancelled", "--addr", addr]).unwrap();
    assert_eq!(listed.trim(), "a3\tapproval\tcancelled");
    let all: Value = get_json(&http, tally.url("/workflows?limit=10"));
    let ids: Vec<&str> = all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a3", "a2", "a1"], "newest first");
    let bad = http
        .get(tally.url("/workflows?status=lost"))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    tally.stop().unwrap();
}

#[test]
fn a_failed_car_reservation_cancels_the_flight_and_the_hotel_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let tally = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let ok: Value = http
        .post(tally.url("/workflows/travel/t1?wait_ms=30000"))
        .json(&json!({ "trip": "lisbon" }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_eq!(
        ok["output"]["reservations"]["hotel"]["hotel"],
        "Harbour View"
    );
    for fail in ["flight", "hotel", "car"] {
        let id = format!("t-{fail}");
        let ended: Value = http
            .post(tally.url(&format!("/workflows/travel/{id}?wait_ms=30000")))
            .json(&json!({ "trip": id, "fail": fail }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(ended["status"], "compensated", "{ended}");
        let calls: Vec<(String, String)> = ended["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["op"] == "call")
            .map(|s| {
                let name = s["name"].as_str().unwrap().to_string();
                (name, s["status"].as_str().unwrap().to_string())
            })
            .collect();
        let mut expected = vec![("search".to_string(), "ok".to_string())];
        for kind in ["flight", "hotel", "car"] {
            let status = if kind == fail { "failed" } else { "ok" };
            expected.push((format!("reserve_{kind}"), status.to_string()));
        }
        for kind in ["car", "hotel", "flight"] {
            if kind != fail {
                expected.push((format!("cancel_{kind}"), "ok".to_string()));
            }
        }
        assert_eq!(calls, expected, "{fail}");
    }

    // The CLI: start and wait, show, signal; bad JSON is refused before anything is sent.
    let addr = tally.addr.as_str();
    let started = run_tally(&[
        "workflow",
        "start",
        "steps",
        "cli-1",
        r#"{"steps": 2}"#,
        "--wait-ms",
        "10000",
        "--addr",
        addr,
    ])
    .unwrap();
    let started: Value = serde_json::from_str(&started).unwrap();
    assert_eq!(started["output"], json!({ "count": 2 }));
    let shown: Value =
        serde_json::from_str(&run_tally(&["workflow", "show", "cli-1", "--addr", addr]).unwrap())
            .unwrap();
    assert_eq!(shown["status"], "succeeded");
    let signalled = run_tally(&["workflow", "signal", "cli-1", "go", "1", "--addr", addr]).unwrap();
    assert!(signalled.contains("\"signal\""), "{signalled}");
    let bad = run_tally(&["workflow", "start", "steps", "cli-2", "{", "--addr", addr]);
    assert!(bad.unwrap_err().to_string().contains("must be JSON"));
    let unknown = run_tally(&["workflow", "show", "nobody", "--addr", addr]);
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown_instance"));
    tally.stop().unwrap();
}

/// A counter or gauge of `tally`'s `/metrics`, 0 if absent.
fn metric(http: &Client, tally: &Tally, name: &str) -> f64 {
    tally_tests::metric(http, &tally.url(""), name)
}

/// The log's segment files under `data`: name and bytes, oldest first.
#[test]
fn a_thousand_ended_instances_are_collected_after_their_retention() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Their invocations' records are kept as long as their idempotency keys: 1 s here too.
    let args = [
        "--workflow-retention-s",
        "1",
        "--idempotency-retention-s",
        "1",
        "--segment-mib",
        "1",
    ];
    let tally = Tally::up(&data, &args).unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Records each instance's step stream holds at its end, from the answers.
    let records_each = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let http = client();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n >= N {
                        return;
                    }
                    let ended: Value = http
                        .post(tally.url(&format!("/workflows/writes/g{n}?wait_ms=30000")))
                        .json(&json!({ "steps": 2 }))
                        .send()
                        .unwrap()
                        .json()
                        .unwrap();
                    assert_eq!(ended["status"], "succeeded", "{ended}");
                    let records = ended["log_records"].as_u64().unwrap();
                    records_each.store(records, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    // The segments sealed by now (all but the newest) hold ended instances only.
    let mut sealed = segments(&data.join("log"));
    sealed.pop();
    assert!(!sealed.is_empty(), "no segment was sealed: {sealed:?}");
    let http = client();
    let listed = |http: &Client, tally: &Tally| -> usize {
        let v: Value = get_json(http, tally.url("/workflows?limit=1000"));
        v["instances"].as_array().map_or(0, Vec::len)
    };
    let records_each = records_each.into_inner();
    wait_until(Duration::from_secs(60), || {
        metric(&http, &tally, "tally_workflows_collected_total") >= N as f64
    })
    .unwrap();
    assert_eq!(
        listed(&http, &tally),
        0,
        "every instance is out of the list"
    );
    for n in [0, 499, 999] {
        assert!(
            instance(&http, &tally, &format!("g{n}")).is_none(),
            "g{n} is gone"
        );
    }
    let records = metric(&http, &tally, "tally_workflow_records_collected_total");
    println!(
        "{N} instances of {records_each} records each collected: {records} records trimmed, {} kept",
        metric(&http, &tally, "tally_workflows_kept")
    );
    assert!(records >= (N as u64 * records_each) as f64);
    // The space of what was trimmed comes back: each sealed segment loses the payloads of
    // the records no stream shows any more (the instances' starts and ends, their
    // invocations' records; their table writes stay, the newest versions of their keys).
    let now = |name: &str| {
        segments(&data.join("log"))
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, bytes)| bytes)
    };
    let came_back = wait_until(Duration::from_secs(30), || {
        sealed
            .iter()
            .all(|(name, bytes)| now(name) < bytes * 9 / 10)
    });
    let before: u64 = sealed.iter().map(|(_, bytes)| bytes).sum();
    let after: u64 = sealed.iter().map(|(name, _)| now(name)).sum();
    println!(
        "{} sealed segments: {before} bytes when the last instance ended, {after} after collection",
        sealed.len()
    );
    assert!(came_back.is_ok(), "no space came back: {sealed:?}");
    wait_until(Duration::from_secs(30), || {
        metric(&http, &tally, "tally_invocations_collected_total") >= N as f64
    })
    .expect("the instances' invocations are collected");
    // A collected id starts nothing again, also after a restart over the compacted segments
    // (a stream keeps its length when its records' payloads are gone).
    let again = |tally: &Tally| {
        http.post(tally.url("/workflows/writes/g0?wait_ms=5000"))
            .json(&json!({ "steps": 2 }))
            .send()
            .unwrap()
    };
    let refused = again(&tally);
    assert_eq!(refused.status(), 410, "{}", refused.text().unwrap());
    tally.stop().unwrap();
    let tally = Tally::up(&data, &args).unwrap();
    let refused = again(&tally);
    assert_eq!(refused.status(), 410, "{}", refused.text().unwrap());
    assert_eq!(listed(&http, &tally), 0);
    tally.stop().unwrap();
}

#[test]
fn a_schedule_starts_its_workflow_once_a_tick_across_a_restart_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = client();
    let tally = Tally::up(&data, &[]).unwrap();
    let schedule =
        json!({ "name": "tick", "workflow": "steps", "input": { "steps": 1 }, "every_s": 1 });
    let created = http
        .post(tally.url("/schedules"))
        .json(&schedule)
        .send()
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().unwrap());
    let again = http
        .post(tally.url("/schedules"))
        .json(&schedule)
        .send()
        .unwrap();
    assert_eq!(again.status(), 409);
    for (body, status) in [
        (
            json!({ "name": "x", "workflow": "nosuch", "every_s": 1 }),
            404,
        ),
        (
            json!({ "name": "x", "workflow": "steps", "every_s": 0 }),
            400,
        ),
        (
            json!({ "name": "a.b", "workflow": "steps", "every_s": 1 }),
            400,
        ),
    ] {
        let r = http
            .post(tally.url("/schedules"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
    }
    let ended = wait_end(&http, &tally, "tick.1", Duration::from_secs(30));
    assert_eq!(ended["output"], json!({ "count": 1 }));
    let listed: Value = get_json(&http, tally.url("/schedules"));
    assert_eq!(listed["schedules"][0]["name"], "tick", "{listed}");

    // The gateway dies; the restarted one goes on ticking.
    tally.kill9().unwrap();
    let tally = Tally::up(&data, &[]).unwrap();
    let ended = wait_end(&http, &tally, "tick.3", Duration::from_secs(60));
    assert_eq!(ended["status"], "succeeded");
    for tick in 0..=3 {
        let v = instance(&http, &tally, &format!("tick.{tick}")).unwrap();
        assert_eq!(
            v["steps"].as_array().unwrap().len(),
            3,
            "tick {tick} ran once: {v}"
        );
    }

    // Deleted: no schedule is listed at once, and every link of the chain ends, the last one
    // cancelled or stopped before it started its tick.
    let deleted = http.delete(tally.url("/schedules/tick")).send().unwrap();
    assert_eq!(deleted.status(), 202);
    let v: Value = get_json(&http, tally.url("/schedules"));
    assert_eq!(v["schedules"], json!([]), "{v}");
    let links = |http: &Client| -> Vec<Value> {
        let v: Value = get_json(http, tally.url("/workflows?limit=1000"));
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["workflow"] == "libflow.schedule")
            .cloned()
            .collect()
    };
    wait_until(Duration::from_secs(30), || {
        links(&http).iter().all(|l| l["status"] != "running")
    })
    .unwrap();
    let newest = &links(&http)[0];
    let id = newest["id"].as_str().unwrap();
    let last = instance(&http, &tally, id).unwrap();
    assert!(
        last["status"] == "cancelled" || last["output"] == json!({ "stopped": true }),
        "{last}"
    );
    let missing = http.delete(tally.url("/schedules/tick")).send().unwrap();
    assert_eq!(missing.status(), 404);
    tally.stop().unwrap();
}
