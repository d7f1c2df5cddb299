//! Workflows on a cluster: 200 `steps` instances of 20 steps, started through both gateways
//! of a `tally cluster`, one gateway SIGKILLed midway; the survivor drives the dead one's
//! instances on from their history, and every instance ends with `{"count": 20}`.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_tests::client;
use tally_tests::{wait_until, Cluster};

const INSTANCES: usize = 200;
const STEPS: u64 = 20;
const SEEN: &str = "x-tally-seen";

#[test]
fn steps_instances_on_two_gateways_all_count_their_steps_when_one_gateway_is_killed_midway() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    let victim = cluster.ids("gateway")[1];
    let next = AtomicUsize::new(0);
    // (instance, the X-Tally-Seen of its start's answer)
    let started: Mutex<Vec<(String, Option<u64>)>> = Mutex::new(Vec::new());
    let killed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let http = client();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= INSTANCES {
                        return;
                    }
                    let id = format!("c{n}");
                    // Half go to each gateway; once the second is dead, all to the first.
                    let mut at = n % 2;
                    loop {
                        if killed.load(Ordering::SeqCst) {
                            at = 0;
                        }
                        let url = format!("{}/workflows/steps/{id}", gateways[at]);
                        let sent = http.post(url).json(&json!({ "steps": STEPS })).send();
                        match sent {
                            Ok(r) if r.status() == 202 => {
                                let seen = r
                                    .headers()
                                    .get(SEEN)
                                    .and_then(|v| v.to_str().ok()?.parse().ok());
                                started.lock().unwrap().push((id.clone(), seen));
                                break;
                            }
                            // The dead gateway: the start may or may not have been taken; the
                            // same id at the other gateway is the same instance either way.
                            _ => at = 0,
                        }
                    }
                }
            });
        }
        wait_until(Duration::from_secs(60), || {
            started.lock().unwrap().len() >= INSTANCES / 2
        })
        .unwrap();
        cluster.kill(victim).unwrap();
        killed.store(true, Ordering::SeqCst);
    });
    let started = started.into_inner().unwrap();
    assert_eq!(started.len(), INSTANCES);

    let http = client();
    let deadline = Instant::now() + Duration::from_secs(180);
    for (id, seen) in &started {
        let ended = loop {
            let mut request = http.get(format!("{}/workflows/{id}", gateways[0]));
            if let Some(seen) = seen {
                request = request.header(SEEN, *seen);
            }
            let v: Option<Value> = request
                .send()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|r| r.json().ok());
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
        assert_eq!(
            ended["steps"].as_array().unwrap().len() as u64,
            2 * STEPS + 1
        );
    }
    // The kill caught instances running: the survivor took them over.
    let metrics = http
        .get(format!("{}/metrics", gateways[0]))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let redriven: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_invocations_redriven_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    println!("the survivor drove on {redriven} invocations of the dead gateway");
    assert!(redriven > 0.0, "the kill came after every instance ended");
}
