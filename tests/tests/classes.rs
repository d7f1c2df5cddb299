//! Classes and objects with real processes: 10,000 calls to one counter from 32 clients run
//! one at a time in log order (checked from the object's history), and calls under
//! idempotency keys, retried by their clients through SIGKILLs of `tally up`, each take
//! effect once and answer alike.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_tests::objects::{check_serial_counter, history};
use tally_tests::{client, send, wait_until, Tally};

#[test]
fn ten_thousand_calls_to_one_counter_from_32_clients_run_one_at_a_time_in_log_order() {
    const CLIENTS: usize = 32;
    const CALLS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let url = tally.url("/objects/counter/hot/add");
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let http = client();
                (0..CALLS / CLIENTS + usize::from(c < CALLS % CLIENTS))
                    .map(|_| {
                        let (status, body) = send(http.post(&url).json(&json!({"by": 1})));
                        assert_eq!(status, 200, "{body}");
                        body["value"].as_i64().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answers: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    println!(
        "{CALLS} calls to one object from {CLIENTS} clients in {:.2} s: {:.0} calls/s",
        elapsed.as_secs_f64(),
        CALLS as f64 / elapsed.as_secs_f64()
    );
    answers.sort();
    assert_eq!(answers, (1..=CALLS as i64).collect::<Vec<_>>());
    let http = client();
    let calls = history(&http, &tally.url(""), "counter", "hot");
    assert_eq!(calls.len(), CALLS);
    assert_eq!(check_serial_counter(&calls), Ok((CALLS as i64, CALLS)));
    let (_, view) = send(http.get(tally.url("/objects/counter/hot")));
    assert_eq!(
        (view["state"].clone(), view["calls"].clone()),
        (json!({"value": CALLS}), json!(CALLS))
    );
}

#[test]
fn keyed_calls_retried_through_sigkills_take_effect_once() {
    const CLIENTS: usize = 8;
    const KEYS: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tally = Tally::up(&data, &[]).unwrap();
    let base = Arc::new(Mutex::new(tally.url("")));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (base, done) = (base.clone(), done.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut answers = Vec::new();
                for k in 0..KEYS {
                    let key = format!("c{c}-{k}");
                    // Retried until answered: through a dead gateway, a restart, a 503.
                    let answer = loop {
                        let url = format!("{}/objects/counter/paid/add", base.lock().unwrap());
                        let sent = http
                            .post(url)
                            .header("Idempotency-Key", &key)
                            .json(&json!({"by": 1}))
                            .send();
                        match sent {
                            Ok(r) if r.status() == 200 => break r.json::<Value>().unwrap(),
                            _ => std::thread::sleep(Duration::from_millis(20)),
                        }
                    };
                    // The same key again answers the same.
                    let url = format!("{}/objects/counter/paid/add", base.lock().unwrap());
                    if let Ok(r) = http
                        .post(url)
                        .header("Idempotency-Key", &key)
                        .json(&json!({"by": 1}))
                        .send()
                    {
                        if r.status() == 200 {
                            assert_eq!(r.json::<Value>().unwrap(), answer, "{key}");
                        }
                    }
                    answers.push(answer["value"].as_i64().unwrap());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                answers
            })
        })
        .collect();
    let total = CLIENTS * KEYS;
    let mut tally = Some(tally);
    for kill_at in [total / 4, total / 2, 3 * total / 4] {
        wait_until(Duration::from_secs(120), || {
            done.load(Ordering::Relaxed) >= kill_at
        })
        .unwrap();
        tally.take().unwrap().kill9().unwrap();
        let restarted = Tally::up(&data, &[]).unwrap();
        *base.lock().unwrap() = restarted.url("");
        tally = Some(restarted);
    }
    let mut answers: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        (1..=total as i64).collect::<Vec<_>>(),
        "each key took effect once"
    );
    let tally = tally.unwrap();
    let calls = history(&client(), &tally.url(""), "counter", "paid");
    let (value, applied) = check_serial_counter(&calls).unwrap();
    assert_eq!((value, applied), (total as i64, total));
    let mut keys: Vec<&str> = calls
        .iter()
        .filter(|c| c["duplicate_of"].is_null() && c["error"].is_null())
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "every applied call carries its own key");
}
