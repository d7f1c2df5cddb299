//! Queues with real processes: the queue routes and their refusals over HTTP and through the
//! CLI; visibility timeout, redelivery and dead letters over HTTP; a function triggered by a
//! queue; and Q-1 (8 producers, consumer processes in two groups that are SIGKILLed and
//! started again, while `tally up`, or in a second test a cluster gateway, is SIGKILLed too).
//! `TALLY_SLOW_TESTS=1` runs Q-1 at the size (100,000 messages).

use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tally_tests::queue::{self, Consumers, Scale, Urls, GROUPS};
use tally_tests::{client, send};
use tally_tests::{run_tally, wait_until, Cluster, Tally};

fn decode(data: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn queue_routes_and_the_cli_push_pop_ack_redeliver_and_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let http = client();
    let q = |path: &str| tally.url(&format!("/queues/jobs{path}"));

    assert_eq!(send(http.get(q(""))).0, 404, "no queue yet");
    assert_eq!(
        send(http.put(q("?shards=2"))),
        (200, json!({"name": "jobs", "shards": 2}))
    );
    let (status, err) = send(http.put(q("?shards=3")));
    assert_eq!((status, &err["error"]["code"]), (400, &json!("invalid")));
    assert_eq!(send(http.put(q("/groups/workers"))).0, 200);

    // Pushes: one, keyed (twice: the same id), and a batch.
    let (status, one) = send(http.post(q("/push")).body("m1"));
    assert_eq!(status, 200, "{one}");
    let keyed = || {
        send(
            http.post(q("/push"))
                .header("Idempotency-Key", "k")
                .body("m2"),
        )
    };
    let (first, again) = (keyed(), keyed());
    assert_eq!(first, again);
    let batch = json!({ "messages": ["bTM=", "bTQ="] }); // m3, m4
    let (status, ids) = send(http.post(q("/push-batch")).json(&batch));
    assert_eq!(status, 200, "{ids}");
    assert_eq!(ids["ids"].as_array().unwrap().len(), 2);
    assert_eq!(send(http.post(q("/push-batch")).body("[1]")).0, 400);

    // Pops: four messages, each once, then nothing (204) after waiting.
    let pop = |extra: &str| {
        let response = http
            .post(q(&format!("/pop?group=workers{extra}")))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().unwrap_or(Value::Null))
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        // Long enough that none comes back before the 204 below, however slow this runs.
        let (status, delivery) = pop("&wait_ms=200&visibility_timeout_ms=2000");
        assert_eq!(status, 200, "{delivery}");
        assert_eq!(delivery["deliveries"], 1);
        got.push(delivery);
    }
    let mut datas: Vec<String> = got.iter().map(|d| decode(&d["data"])).collect();
    datas.sort();
    assert_eq!(datas, ["m1", "m2", "m3", "m4"]);
    let started = Instant::now();
    assert_eq!(pop("&wait_ms=200").0, 204);
    assert!(started.elapsed() >= Duration::from_millis(150), "it waited");

    // Ack two; the other two come back after their visibility timeout, delivered again.
    let ack = |d: &Value| {
        send(http.post(q(&format!(
            "/ack?group=workers&id={}&receipt={}",
            d["id"].as_str().unwrap(),
            d["receipt"]
        ))))
    };
    assert_eq!(ack(&got[0]), (200, json!({"acked": true})));
    assert_eq!(ack(&got[1]).0, 200);
    let (status, stale) = ack(&got[0]);
    assert_eq!(
        (status, &stale["error"]["code"]),
        (409, &json!("not_in_flight"))
    );
    let (status, again) = pop("&wait_ms=3000&visibility_timeout_ms=300&max_deliveries=2");
    assert_eq!(status, 200);
    assert_eq!(again["deliveries"], 2, "{again}");
    assert!(got[2..].iter().any(|d| d["id"] == again["id"]));
    // The first delivery's receipt no longer acks it.
    let first = got.iter().find(|d| d["id"] == again["id"]).unwrap();
    assert_eq!(ack(first).0, 409);

    // Not acked again, each of the two reaches max_deliveries (2) and becomes a dead letter.
    wait_until(Duration::from_secs(20), || {
        let _ = pop("&wait_ms=200&visibility_timeout_ms=300&max_deliveries=2");
        let (_, dead) = send(http.get(q("/groups/workers/dead-letters")));
        dead["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 2)
    })
    .expect("two dead letters");
    let (_, dead) = send(http.get(q("/groups/workers/dead-letters")));
    let dead_id = dead["dead_letters"][0]["id"].as_str().unwrap().to_string();
    let (_, stat) = send(http.get(q("")));
    assert_eq!(stat["shards"], 2);
    let group = &stat["groups"][0];
    assert_eq!(group["name"], "workers");
    assert_eq!(group["dead_letters"], 2, "{stat}");
    assert_eq!(group["acked"], 2, "{stat}");
    assert_eq!(group["lag"], 0, "{stat}");
    // Requeued, a dead letter is delivered again (its deliveries counted from 0).
    assert_eq!(
        send(http.post(q(&format!("/groups/workers/requeue?id={dead_id}")))).0,
        200
    );
    let (_, requeued) = pop("&wait_ms=200");
    assert_eq!(requeued["id"], dead_id.as_str());
    assert_eq!(requeued["deliveries"], 1);
    assert_eq!(ack(&requeued).0, 200);
    let (status, err) = send(http.post(q(&format!("/groups/workers/discard?id={dead_id}"))));
    assert_eq!(
        (status, &err["error"]["code"]),
        (409, &json!("not_dead_letter"))
    );

    // Refusals.
    for (request, code) in [
        (
            http.post(q("/pop?group=workers&wait_ms=999999")),
            "bad_request",
        ),
        (http.post(q("/pop")), "bad_request"),
        (
            http.post(q("/ack?group=workers&id=nope&receipt=1")),
            "invalid",
        ),
        (
            http.post(tally.url("/queues/nope/pop?group=g")),
            "unknown_queue",
        ),
    ] {
        let (status, err) = send(request);
        assert!(status == 400 || status == 404, "{status} {err}");
        assert_eq!(err["error"]["code"], code, "{err}");
    }
    let big = vec![b'x'; 2 * 1024 * 1024];
    assert_eq!(send(http.post(q("/push")).body(big)).0, 413);

    // The gateway trims what every group is done with, one round behind, and answers alike.
    let base = tally.url("");
    wait_until(Duration::from_secs(30), || {
        tally_tests::metric(&http, &base, "tally_queue_streams_cut_total") >= 1.0
    })
    .expect("a trim cuts the group's stream");
    let (_, after) = send(http.get(q("")));
    assert_eq!(after["groups"][0]["acked"], 3, "{after}");
    assert_eq!(after["groups"][0]["dead_letters"], 1, "{after}");
    let (_, dead) = send(http.get(q("/groups/workers/dead-letters")));
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 1, "{dead}");

    // The CLI.
    let addr = tally.url("");
    let cli = |args: &[&str]| {
        let mut all = vec!["queue"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--addr", &addr]);
        run_tally(&all)
    };
    cli(&["create", "cli", "--shards", "1", "--group", "g"]).unwrap();
    let plain = cli(&["push", "cli", "hello"]).unwrap();
    assert!(plain.trim().starts_with("0:"), "{plain}");
    let keyed = cli(&["push", "cli", "again", "--key", "x"]).unwrap();
    assert_eq!(cli(&["push", "cli", "again", "--key", "x"]).unwrap(), keyed);
    let popped = cli(&["pop", "cli", "--group", "g", "--wait-ms", "1000", "--ack"]).unwrap();
    assert_eq!(popped.trim(), "hello");
    let stat: Value = serde_json::from_str(&cli(&["stat", "cli"]).unwrap()).unwrap();
    assert_eq!(stat["groups"][0]["acked"], 1, "{stat}");
    assert_eq!(stat["groups"][0]["lag"], 1, "{stat}");
    assert_eq!(
        cli(&["pop", "cli", "--group", "g", "--ack"])
            .unwrap()
            .trim(),
        "again"
    );
    let empty = cli(&["pop", "cli", "--group", "g", "--wait-ms", "100"]).unwrap_err();
    assert!(format!("{empty:#}").contains("nothing in cli"), "{empty:#}");
    tally.stop().unwrap();
}

#[test]
fn a_function_triggered_by_a_queue_runs_once_per_message_and_failures_become_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let functions = dir.path().join("functions.toml");
    std::fs::write(
        &functions,
        "[functions.bank]\nqueue = \"bank-requests\"\ntimeout_ms = 1000\nretries = 0\nbackoff_ms = 100\n",
    )
    .unwrap();
    let tally = Tally::up(
        &dir.path().join("data"),
        &["--functions", functions.to_str().unwrap()],
    )
    .unwrap();
    let http = client();
    let q = |path: &str| tally.url(&format!("/queues/bank-requests{path}"));
    // Each message opens an account; one is not a bank request at all.
    for n in 0..20 {
        let open = json!({"action": "open", "account": format!("t{n}"), "balance": n});
        assert_eq!(send(http.post(q("/push")).json(&open)).0, 200);
    }
    assert_eq!(send(http.post(q("/push")).body("not json")).0, 200);
    let group = |stat: &Value| {
        stat["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["name"] == "function.bank").cloned())
            .unwrap_or(Value::Null)
    };
    wait_until(Duration::from_secs(60), || {
        let g = group(&send(http.get(q(""))).1);
        g["acked"] == 20 && g["dead_letters"] == 1
    })
    .unwrap_or_else(|e| panic!("{e}: {}", send(http.get(q(""))).1));
    for n in [0, 7, 19] {
        let (status, balance) = send(
            http.post(tally.url("/function/bank"))
                .json(&json!({"action": "balance", "account": format!("t{n}")})),
        );
        assert_eq!((status, balance), (200, json!({"balance": n})));
    }
    let (_, dead) = send(http.get(q("/groups/function.bank/dead-letters")));
    assert_eq!(decode(&dead["dead_letters"][0]["data"]), "not json");
    let (_, audit) = send(
        http.post(tally.url("/function/bank"))
            .json(&json!({"action": "audit"})),
    );
    assert_eq!(
        audit["accounts"], 20,
        "each message opened its account once"
    );
    tally.stop().unwrap();
}

/// Runs Q-1 against `urls` while `chaos` kills things; checks and reports.
fn q1(urls: &Urls, scale: Scale, chaos: impl FnOnce(&AtomicU64, &Mutex<Consumers>) + Send) {
    let began = Instant::now();
    queue::create(&urls.up()[0], scale);
    let consumers = Mutex::new(Consumers::start(urls, scale));
    let pushed = AtomicU64::new(0);
    let ids = std::thread::scope(|s| {
        let producing = s.spawn(|| queue::produce(urls, scale, &pushed));
        chaos(&pushed, &consumers);
        producing.join().unwrap()
    });
    assert_eq!(ids.len(), scale.messages());
    println!("produced in {:?}", began.elapsed());
    let stop = AtomicBool::new(false);
    let drained = queue::wait_drained(urls, scale.messages(), Duration::from_secs(300), &stop);
    println!("drained after {:?}", began.elapsed());
    let url = urls.up()[0].clone();
    let stats: Vec<Value> = GROUPS
        .iter()
        .map(|g| queue::group_stats(&url, g).unwrap_or(Value::Null))
        .collect();
    let consumers = consumers.into_inner().unwrap();
    let kills = consumers.kills;
    let lines = consumers.stop();
    assert!(drained, "both groups ack every message: {stats:?}");
    for (group, stat) in GROUPS.iter().zip(&stats) {
        let lines = lines.get(*group).map(Vec::as_slice).unwrap_or_default();
        // Lines may be missing for acks whose answer was lost (tally up killed) or whose
        // consumer was killed before printing: stale acks and kills bound them.
        let stale = lines.iter().filter(|l| l.starts_with("STALE")).count();
        let report = queue::check_group(lines, &ids, kills + stale)
            .unwrap_or_else(|e| panic!("{group}: {e}"));
        assert_eq!(stat["acked"], scale.messages() as u64, "{group}: {stat}");
        assert_eq!(stat["dead_letters"], 0, "{group}: {stat}");
        println!("{group}: {report:?}; the queue says {stat}");
    }
    println!("{} messages, {} consumer SIGKILLs", scale.messages(), kills);
}

#[test]
fn q1_every_message_once_per_group_in_order_while_consumers_and_tally_up_are_sigkilled() {
    let scale = Scale::from_env();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tally = Tally::up(&data, &[]).unwrap();
    let urls = Urls::new(dir.path(), vec![tally.url("")]);
    let tally = Mutex::new(Some(tally));
    q1(&urls, scale, |pushed, consumers| {
        let total = scale.messages() as u64;
        for k in 1..=4u64 {
            // A consumer of each group killed at each quarter; tally up at the second and
            // the fourth.
            wait_until(Duration::from_secs(300), || {
                pushed.load(Ordering::SeqCst) >= total * k / 5
            })
            .expect("producers go on");
            {
                let mut c = consumers.lock().unwrap();
                let n = c.running.len();
                c.kill_and_restart(&urls, (k as usize) % n);
                c.kill_and_restart(&urls, (k as usize + n / 2) % n);
            }
            if k % 2 == 0 {
                let victim = tally.lock().unwrap().take().expect("running");
                urls.set(0, None);
                victim.kill9().unwrap();
                let again = Tally::up(&data, &[]).expect("tally up again on the same data");
                urls.set(0, Some(again.url("")));
                *tally.lock().unwrap() = Some(again);
            }
        }
    });
    tally.into_inner().unwrap().unwrap().stop().unwrap();
}

#[test]
fn q1_every_message_once_per_group_in_order_while_a_cluster_gateway_is_sigkilled() {
    let scale = Scale::from_env();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let gateways = cluster.gateways();
    let victim = cluster.ids("gateway")[1];
    let urls = Urls::new(dir.path(), gateways.clone());
    q1(&urls, scale, |pushed, consumers| {
        let total = scale.messages() as u64;
        wait_until(Duration::from_secs(300), || {
            pushed.load(Ordering::SeqCst) >= total / 3
        })
        .expect("producers go on");
        urls.set(1, None);
        cluster.kill(victim).unwrap();
        {
            let mut c = consumers.lock().unwrap();
            c.kill_and_restart(&urls, 0);
            let n = c.running.len();
            c.kill_and_restart(&urls, n - 1);
        }
        wait_until(Duration::from_secs(300), || {
            pushed.load(Ordering::SeqCst) >= total * 2 / 3
        })
        .expect("producers go on at the survivor");
        cluster.start(victim).unwrap();
        urls.set(1, Some(gateways[1].clone()));
    });
}

#[test]
fn the_q1_checker_catches_a_double_ack_a_lost_message_and_a_fifo_break() {
    let ids: BTreeMap<String, String> = [("a", "0:10"), ("b", "0:20"), ("c", "1:15")]
        .into_iter()
        .map(|(d, i)| (d.to_string(), i.to_string()))
        .collect();
    let lines =
        |text: &str| -> Vec<String> { text.lines().map(|l| l.trim().to_string()).collect() };
    let good = lines(
        "POP 0:10 1 100 a\nACK 0:10 100 a\nPOP 0:20 1 101 b\nPOP 1:15 1 102 c\nACK 1:15 102 c\nPOP 0:20 2 200 b\nACK 0:20 200 b",
    );
    let report = queue::check_group(&good, &ids, 0).unwrap();
    assert_eq!((report.acked, report.redeliveries), (3, 1));
    let twice = lines("POP 0:10 1 100 a\nACK 0:10 100 a\nPOP 0:10 2 150 a\nACK 0:10 150 a");
    assert!(queue::check_group(&twice, &ids, 5)
        .unwrap_err()
        .contains("acked twice"));
    let lost = lines("POP 0:10 1 100 a\nACK 0:10 100 a");
    assert!(queue::check_group(&lost, &ids, 1)
        .unwrap_err()
        .contains("never acked"));
    assert!(
        queue::check_group(&lost, &ids, 2).is_ok(),
        "two lines may be missing"
    );
    let reordered = lines("POP 0:20 1 100 b\nPOP 0:10 1 101 a");
    assert!(queue::check_group(&reordered, &ids, 3)
        .unwrap_err()
        .contains("first delivered"));
    let wrong_id = lines("POP 0:11 1 100 a");
    assert!(queue::check_group(&wrong_id, &ids, 3).is_err());
}
