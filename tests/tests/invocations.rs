//! Durable invocations with real processes: asynchronous calls accepted by a gateway that is
//! then SIGKILLed finish anyway, run by the other gateway; an idempotency key runs its
//! function once, whatever gateway and however often it is sent, before and after a restart.

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_tests::client;
use tally_tests::{wait_until, Cluster, Tally};

const WAIT: Duration = Duration::from_secs(90);
const SEEN: &str = "x-tally-seen";

/// Sends `request`; the status, the body as JSON (null if it is not), and `X-Tally-Seen`.
fn send(request: RequestBuilder) -> Option<(u16, Value, Option<u64>)> {
    let response = request.send().ok()?;
    let status = response.status().as_u16();
    let seen = response
        .headers()
        .get(SEEN)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = response.text().ok()?;
    Some((
        status,
        serde_json::from_str(&body).unwrap_or(Value::Null),
        seen,
    ))
}

/// The invocation `id` as `gateway` shows it, once final (or the last answer at the deadline).
fn final_status(http: &Client, gateway: &str, id: &str, seen: Option<u64>) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut request = http.get(format!("{gateway}/invocations/{id}"));
        if let Some(seen) = seen {
            request = request.header(SEEN, seen);
        }
        let answer = send(request);
        if let Some((200, inv, _)) = &answer {
            if inv["status"] == "succeeded" || inv["status"] == "failed" {
                return inv.clone();
            }
        }
        if Instant::now() > deadline {
            return answer.map_or(Value::Null, |(_, v, _)| v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a keyed synchronous call 10 times at once, spread over `gateways`; every answer must
/// be the same success. Returns it.
fn ten_at_once(gateways: &[String], function: &str, key: &str, body: &str) -> (Value, String) {
    let answers = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for i in 0..10 {
            let url = format!("{}/function/{function}", gateways[i % gateways.len()]);
            let answers = answers.clone();
            s.spawn(move || {
                let response = client()
                    .post(url)
                    .header("idempotency-key", key)
                    .body(body.to_string())
                    .send()
                    .expect("the gateway answers");
                let status = response.status().as_u16();
                let id = response
                    .headers()
                    .get("x-tally-invocation")
                    .map(|v| v.to_str().unwrap().to_string());
                let text = response.text().unwrap();
                answers.lock().unwrap().push((status, text, id));
            });
        }
    });
    let answers = answers.lock().unwrap().clone();
    let (status, first, id) = answers[0].clone();
    assert_eq!(status, 200, "{answers:?}");
    for answer in &answers {
        assert_eq!(answer, &answers[0], "every answer the same");
    }
    (serde_json::from_str(&first).unwrap(), id.unwrap())
}

/// The entries of a guestbook room, read through `gateway`.
fn room(http: &Client, gateway: &str, room: &str) -> Vec<Value> {
    let body = format!(r#"{{"action":"list","room":"{room}"}}"#);
    let (status, list, _) = send(
        http.post(format!("{gateway}/function/guestbook"))
            .body(body),
    )
    .expect("the gateway answers");
    assert_eq!(status, 200, "{list}");
    list["entries"].as_array().cloned().unwrap_or_default()
}

const SIGN: &str = r#"{"action":"sign","room":"keyed","name":"ana","message":"once"}"#;

#[test]
fn async_invocations_accepted_by_a_killed_gateway_all_finish_at_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    let http = client();

    // One key, sent to both gateways at once: one run, one answer.
    let (signed, _) = ten_at_once(&gateways, "guestbook", "sign-1", SIGN);
    assert_eq!(room(&http, &gateways[0], "keyed").len(), 1);
    assert_eq!(room(&http, &gateways[1], "keyed").len(), 1, "{signed}");

    // 1,000 asynchronous calls of a slow function, half to each gateway, by 16 clients; the
    // second gateway is killed once 500 are accepted.
    const CALLS: usize = 1000;
    let next = AtomicUsize::new(0);
    let accepted: Mutex<Vec<(String, usize, Option<u64>)>> = Mutex::new(Vec::new());
    let victim = cluster.ids("gateway")[1];
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let http = client();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= CALLS {
                        return;
                    }
                    let at = n % 2;
                    let url = format!("{}/asyncFunction/sleep", gateways[at]);
                    // The dead gateway refuses connections: that call was never accepted.
                    if let Some((202, body, seen)) = send(http.post(url).body(r#"{"ms":400}"#)) {
                        let id = body["id"].as_str().unwrap().to_string();
                        accepted.lock().unwrap().push((id, at, seen));
                    }
                }
            });
        }
        wait_until(WAIT, || accepted.lock().unwrap().len() >= CALLS / 2).unwrap();
        cluster.kill(victim).unwrap();
    });
    let accepted = accepted.into_inner().unwrap();
    let by_victim = accepted.iter().filter(|(_, at, _)| *at == 1).count();
    assert!(
        accepted.len() >= CALLS / 2 && by_victim > 0,
        "{}",
        accepted.len()
    );

    // Every accepted invocation, whichever gateway took it, ends at the survivor.
    let mut statuses = BTreeMap::new();
    for (id, at, seen) in &accepted {
        let inv = final_status(&http, &gateways[0], id, *seen);
        assert_eq!(
            inv["status"], "succeeded",
            "invocation {id} from gateway {at}: {inv}"
        );
        assert_eq!(inv["output"], r#"{"slept_ms":400}"#);
        *statuses.entry(*at).or_insert(0) += 1;
    }
    // Some of the dead gateway's were still running when it died: the survivor ran them.
    let redriven = tally_tests::metric(&http, &gateways[0], "tally_invocations_redriven_total");
    assert!(
        redriven >= 1.0,
        "no invocation was taken over ({statuses:?}); {}",
        cluster.log(victim)
    );
    // The key answers the same at the survivor, still without running again.
    let (again, _) = ten_at_once(&gateways[..1], "guestbook", "sign-1", SIGN);
    assert_eq!(again, signed);
    assert_eq!(room(&http, &gateways[0], "keyed").len(), 1);
}

#[test]
fn one_idempotency_key_runs_once_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(dir.path(), &[]).unwrap();
    let http = client();
    let base = vec![format!("http://{}", tally.addr)];
    let (signed, id) = ten_at_once(&base, "guestbook", "k-1", SIGN);
    assert!(signed["seqnum"].is_u64(), "{signed}");
    assert_eq!(room(&http, &base[0], "keyed").len(), 1);
    // The same key with another input is refused.
    let other = send(
        http.post(tally.url("/function/guestbook"))
            .header("idempotency-key", "k-1")
            .body(SIGN.replace("once", "twice")),
    )
    .unwrap();
    assert_eq!(other.0, 422, "{:?}", other.1);
    // An asynchronous call still running when the process dies.
    let (status, slow, _) = send(
        http.post(tally.url("/asyncFunction/sleep"))
            .body(r#"{"ms":1500}"#),
    )
    .unwrap();
    assert_eq!(status, 202);
    let slow = slow["id"].as_str().unwrap().to_string();
    tally.kill9().unwrap();

    let tally = Tally::up(dir.path(), &[]).unwrap();
    let base = vec![format!("http://{}", tally.addr)];
    let (again, again_id) = ten_at_once(&base, "guestbook", "k-1", SIGN);
    assert_eq!((again, again_id), (signed, id.clone()));
    assert_eq!(room(&http, &base[0], "keyed").len(), 1, "ran once");
    let inv = final_status(&http, &base[0], &id, None);
    assert_eq!(inv["status"], "succeeded", "{inv}");
    // The restarted process ran the call the old one left unfinished.
    let inv = final_status(&http, &base[0], &slow, None);
    assert_eq!(inv["status"], "succeeded", "{inv}");
    assert_eq!(inv["output"], r#"{"slept_ms":1500}"#);
}
