//! Classes and objects with real processes: 10,000 calls to one counter from 32 clients run
//! one at a time in log order (checked from the object's history); calls under idempotency
//! keys, retried by their clients through SIGKILLs of `tally up`, each take effect once and
//! answer alike; and transfers between accounts, serializable and sagas, retried through
//! SIGKILLs, each take effect once (or, compensated, not at all).

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
    // Per class: the calls answered, and fewer done records than calls (they batch).
    let metrics = http
        .get(tally.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let counted = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let calls = counted("tally_object_calls_total{class=\"counter\",outcome=\"ok\"}");
    let dones = counted("tally_object_done_records_total{class=\"counter\"}");
    assert_eq!(calls, CALLS as f64, "{metrics}");
    assert!(dones > 0.0 && dones < calls, "{dones} done records");
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

/// 2PC-7, SG-2 and MSG-1 with real processes: transfers between accounts, serializable, sagas
/// and open transactions (`pay`, whose call of the other account joins it) in turn, each
/// under its own id, retried by their clients through SIGKILLs of `tally up` until they get
/// an outcome (an open one may be a deadlock's victim: `retryable`, which is an outcome too).
/// Every id's outcome is the same whenever it is asked, and every balance is its opening
/// balance plus the transfers in, minus those out, of the ids whose outcome is success: each
/// took effect once, and a compensated saga or an aborted transaction not at all.
#[test]
fn transfers_in_every_form_retried_through_sigkills_take_effect_once_each() {
    const ACCOUNTS: usize = 6;
    const CLIENTS: usize = 6;
    const TRANSFERS: usize = 30;
    const OPENING: i64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tally = Tally::up(&data, &[]).unwrap();
    let http = client();
    for a in 0..ACCOUNTS {
        let url = tally.url(&format!("/objects/account/a{a}/deposit"));
        let (status, body) = send(http.post(url).json(&json!({ "amount": OPENING })));
        assert_eq!(status, 200, "{body}");
    }
    let base = Arc::new(Mutex::new(tally.url("")));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (base, done) = (base.clone(), done.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let mut outcomes = Vec::new();
                for i in 0..TRANSFERS {
                    let (from, to) = ((c + i) % ACCOUNTS, (c + 2 * i + 1) % ACCOUNTS);
                    let to = if to == from { (to + 1) % ACCOUNTS } else { to };
                    let amount = 1 + (i % 5) as i64;
                    let id = format!("c{c}-t{i}");
                    let body = transfer_body(from, to, amount, i % 3);
                    let outcome = loop {
                        let url = format!("{}/transactions/{id}", base.lock().unwrap());
                        let answer = http.post(url).json(&body).send().ok().and_then(|r| {
                            let status = r.status().as_u16();
                            Some((status, r.json::<Value>().ok()?["outcome"].clone()))
                        });
                        match answer {
                            Some((200 | 422, outcome)) => break outcome,
                            Some((503, outcome)) if outcome == "retryable" => break outcome,
                            _ => std::thread::sleep(Duration::from_millis(50)),
                        }
                    };
                    outcomes.push((id, from, to, amount, i % 3, outcome));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                outcomes
            })
        })
        .collect();
    let total = CLIENTS * TRANSFERS;
    let mut tally = Some(tally);
    for kill_at in [total / 4, total / 2, 3 * total / 4] {
        wait_until(Duration::from_secs(300), || {
            done.load(Ordering::Relaxed) >= kill_at
        })
        .unwrap();
        tally.take().unwrap().kill9().unwrap();
        let restarted = Tally::up(&data, &[]).unwrap();
        *base.lock().unwrap() = restarted.url("");
        tally = Some(restarted);
    }
    let outcomes: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let tally = tally.unwrap();
    let mut expected = vec![OPENING; ACCOUNTS];
    let mut succeeded = 0;
    // Successes per style: serializable, saga, open.
    let mut by_style = [0; 3];
    for (id, from, to, amount, style, outcome) in &outcomes {
        let (status, asked) = send(http.get(tally.url(&format!("/transactions/{id}"))));
        assert_eq!((status, &asked["outcome"]), (200, outcome), "{id}: {asked}");
        if outcome == "success" {
            expected[*from] -= amount;
            expected[*to] += amount;
            succeeded += 1;
            by_style[*style] += 1;
        }
    }
    println!("successes by style (serializable, saga, open): {by_style:?} of {total}");
    assert!(succeeded > total / 2, "{succeeded} of {total} succeeded");
    assert!(by_style.iter().all(|&n| n > 0), "{by_style:?}");
    let keys: Vec<String> = (0..ACCOUNTS).map(|a| format!("a{a}")).collect();
    let (status, read) =
        send(http.get(tally.url(&format!("/objects/account?keys={}", keys.join(",")))));
    assert_eq!(status, 200, "{read}");
    let balances: Vec<i64> = keys
        .iter()
        .map(|k| read["objects"][k]["balance"].as_i64().unwrap())
        .collect();
    if balances != expected {
        // What to look at when it fails: the calls that failed or were duplicates.
        for k in &keys {
            for c in history(&http, &tally.url(""), "account", k) {
                if !c["error"].is_null() || !c["duplicate_of"].is_null() {
                    eprintln!("{k}: {c}");
                }
            }
        }
    }
    assert_eq!(balances, expected);
    assert_eq!(balances.iter().sum::<i64>(), OPENING * ACCOUNTS as i64);
}

/// A transfer's body in `style`: 0 serializable, 1 a saga, 2 an open transaction.
fn transfer_body(from: usize, to: usize, amount: i64, style: usize) -> Value {
    if style == 2 {
        return json!({"call": {"class": "account", "key": format!("a{from}"), "method": "pay",
                               "input": {"to": format!("a{to}"), "amount": amount}}});
    }
    let saga = style == 1;
    let call = |key: usize, method: &str, undo: &str| {
        let mut call = json!({"class": "account", "key": format!("a{key}"), "method": method,
                              "input": {"amount": amount}});
        if saga {
            call["compensate"] = json!({"method": undo, "input": {"amount": amount}});
        }
        call
    };
    let calls = json!([
        call(from, "withdraw", "deposit"),
        call(to, "deposit", "withdraw")
    ]);
    match saga {
        true => json!({"style": "saga", "calls": calls}),
        false => json!({"calls": calls}),
    }
}
