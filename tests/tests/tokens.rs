//! API tokens with real processes: the first token made through the CLI on a loopback `tally
//! up`, then every request refused without one; scopes over the CLI; a gateway on 0.0.0.0
//! refusing to start until a token exists (or `--insecure`); workers attaching only with a
//! `worker` token; and in a cluster, a call forwarded to the gateway a worker is attached to,
//! which the forwarding gateway authenticates with its own peer token.

use serde_json::Value;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tally_tests::{client, example_bin, send, tally_bin, wait_until, Tally};

/// Runs `tally args` against `addr` with `token` (if any) in `TALLY_TOKEN`.
fn tally(addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(tally_bin());
    command
        .args(args)
        .args(["--addr", addr])
        .env_remove("TALLY_TOKEN");
    if let Some(token) = token {
        command.env("TALLY_TOKEN", token);
    }
    command.output().expect("tally runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Makes a token through the CLI; the token printed.
fn create(addr: &str, token: Option<&str>, scopes: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", "test"];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let out = tally(addr, token, &args);
    assert!(
        out.status.success(),
        "token create {scopes:?}: {}",
        stderr(&out)
    );
    let made = stdout(&out);
    assert!(made.starts_with("tly_"), "{made}");
    made
}

#[test]
fn the_first_token_closes_the_gateway_and_scopes_hold_over_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let tally_up = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let addr = tally_up.addr.clone();

    // Open until the first token: the CLI works without one.
    let out = tally(&addr, None, &["log", "append", "--book", "1", "before"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let admin = create(&addr, None, &["admin"]);

    // Now every request needs one.
    let out = tally(&addr, None, &["log", "append", "--book", "1", "after"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let http = client();
    let (status, body) = send(http.post(tally_up.url("/function/echo")).body("x"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        send(http.get(tally_up.url("/health"))).0,
        200,
        "health needs none"
    );

    // A reader of book 1 reads it, and is refused appends and other books.
    let reader = create(&addr, Some(&admin), &["read:1"]);
    let out = tally(&addr, Some(&reader), &["log", "read", "--book", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("before"), "{}", stdout(&out));
    for args in [
        &["log", "append", "--book", "1", "no"][..],
        &["log", "read", "--book", "2"][..],
        &["token", "list"][..],
    ] {
        let out = tally(&addr, Some(&reader), args);
        assert!(!out.status.success(), "{args:?} with read:1");
        assert!(
            stderr(&out).contains("forbidden"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let caller = create(&addr, Some(&admin), &["invoke:echo"]);
    let (status, body) = send(
        http.post(tally_up.url("/function/echo"))
            .bearer_auth(&caller)
            .body("hi"),
    );
    assert_eq!(status, 200, "{body}");

    // Listed without secrets; revoked, refused.
    let out = tally(&addr, Some(&admin), &["token", "list"]);
    let listed = stdout(&out);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(
        !listed.contains(reader.split('_').nth(2).unwrap()),
        "{listed}"
    );
    let reader_id = reader.split('_').nth(1).unwrap();
    let out = tally(&addr, Some(&admin), &["token", "revoke", reader_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tally(&addr, Some(&reader), &["log", "read", "--book", "1"]);
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let admin_id = admin.split('_').nth(1).unwrap();
    let out = tally(&addr, Some(&admin), &["token", "revoke", admin_id]);
    assert!(stderr(&out).contains("last_admin"), "{}", stderr(&out));

    // A token made with a rate of its own: past it, 429 (the CLI says rate_limited).
    let out = tally(
        &addr,
        Some(&admin),
        &["token", "create", "--scope", "read:1", "--rate", "1"],
    );
    let slow = stdout(&out);
    let limited = (0..5)
        .map(|_| tally(&addr, Some(&slow), &["log", "read", "--book", "1"]))
        .filter(|out| stderr(out).contains("rate_limited"))
        .count();
    assert!(
        limited > 0,
        "one request a second: some of 5 at once are refused"
    );

    // Tokens outlive a restart: they are in the log.
    tally_up.stop().unwrap();
    let tally_up = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let out = tally(&tally_up.addr, None, &["log", "read", "--book", "1"]);
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = tally(
        &tally_up.addr,
        Some(&admin),
        &["log", "read", "--book", "1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    tally_up.stop().unwrap();
}

/// Starts `tally up` on `data` listening on every interface; its child and port, or why it
/// did not start.
fn up_everywhere(data: &std::path::Path, extra: &[&str]) -> Result<(Child, u16), String> {
    let mut args = vec!["--http-addr", "0.0.0.0:0", "--worker-addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (child, url) = tally_tests::start_up(data, &args)?;
    let port = url.rsplit(':').next().and_then(|p| p.parse().ok());
    Ok((child, port.ok_or_else(|| format!("no port in {url}"))?))
}

#[test]
fn a_gateway_on_every_interface_refuses_to_start_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let error = up_everywhere(&data, &[]).expect_err("refused without tokens");
    assert!(
        error.contains("without API tokens") && error.contains("--insecure"),
        "{error}"
    );

    // --insecure: it serves, and the first token can be made there.
    let (mut child, port) = up_everywhere(&data, &["--insecure"]).expect("starts with --insecure");
    let addr = format!("127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), || {
        tally(&addr, None, &["log", "read", "--book", "1"])
            .status
            .success()
    })
    .unwrap();
    let admin = create(&addr, None, &["admin"]);
    child.kill().unwrap();
    child.wait().unwrap();

    // With a token in the log it starts without being told, and asks for tokens.
    let (mut child, port) = up_everywhere(&data, &[]).expect("starts once a token exists");
    let addr = format!("127.0.0.1:{port}");
    let out = tally(&addr, None, &["log", "read", "--book", "1"]);
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = tally(&addr, Some(&admin), &["log", "read", "--book", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn start_worker(gateway: &str, token: Option<&str>) -> Child {
    let mut command = Command::new(example_bin("hello-worker"));
    command
        .args(["--gateway", gateway])
        .env_remove("TALLY_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("TALLY_TOKEN", token);
    }
    command.spawn().expect("start hello-worker")
}

#[test]
fn workers_attach_with_a_worker_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let tally_up = Tally::up(&dir.path().join("data"), &[]).unwrap();
    let admin = create(&tally_up.addr, None, &["admin"]);
    let workers = tally_up.workers_addr();
    for token in [
        None,
        Some(admin.replace(|c: char| c.is_ascii_digit(), "0")),
        Some(create(&tally_up.addr, Some(&admin), &["invoke"])),
    ] {
        let worker = start_worker(&workers, token.as_deref());
        let out = worker.wait_with_output().unwrap();
        assert!(!out.status.success(), "attached with {token:?}");
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(error.contains("refused the worker"), "{error}");
    }
    let worker_token = create(&tally_up.addr, Some(&admin), &["worker"]);
    let mut worker = start_worker(&workers, Some(&worker_token));
    let http = client();
    wait_until(Duration::from_secs(30), || {
        send(
            http.post(tally_up.url("/function/hello"))
                .bearer_auth(&admin)
                .body(r#"{"name":"w"}"#),
        )
        .0 == 200
    })
    .expect("the worker with a worker token serves hello");
    worker.kill().unwrap();
    worker.wait().unwrap();
}

#[test]
fn a_forwarded_call_carries_the_forwarding_gateway_s_own_token() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tally_tests::Cluster::up(&dir.path().join("cluster"), 1, 1, 2).unwrap();
    let gateways = cluster.gateways();
    let first = gateways[0].trim_start_matches("http://").to_string();
    let admin = create(&first, None, &["admin"]);
    // Made at one gateway, known at the other at once.
    let caller = create(&first, Some(&admin), &["invoke:hello"]);
    let worker_token = create(&first, Some(&admin), &["worker"]);
    let attached = cluster
        .nodes
        .iter()
        .find(|n| n.http.as_deref() == Some(gateways[0].as_str()))
        .unwrap();
    let mut worker = start_worker(attached.workers.as_ref().unwrap(), Some(&worker_token));
    let http = client();
    let call = |gateway: &str, token: &str| -> (u16, Value) {
        send(
            http.post(format!("{gateway}/function/hello"))
                .bearer_auth(token)
                .body(r#"{"name":"f"}"#),
        )
    };
    wait_until(Duration::from_secs(30), || {
        call(&gateways[0], &caller).0 == 200
    })
    .expect("the worker serves hello where it is attached");
    // The other gateway forwards the call: the caller's token is checked there, and the
    // gateway that runs it takes the forwarding gateway's peer token.
    let (status, body) = call(&gateways[1], &caller);
    assert_eq!(status, 200, "{body}");
    let (_, listed) = send(
        http.get(format!("{}/tokens", gateways[0]))
            .bearer_auth(&admin),
    );
    let peers: Vec<&Value> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["scopes"] == serde_json::json!(["peer"]))
        .collect();
    // Gateway 21 forwarded (gateway 20 may have too, before the worker attached).
    assert!(
        peers
            .iter()
            .any(|p| p["gateway"].as_str().unwrap().starts_with("g21.")),
        "the forwarding gateway's peer token: {listed}"
    );
    // A call the caller's token does not cover is refused before any forwarding.
    let (status, _) = send(
        http.post(format!("{}/function/visit", gateways[1]))
            .bearer_auth(&caller)
            .body("x"),
    );
    assert_eq!(status, 403);
    worker.kill().unwrap();
    worker.wait().unwrap();
}
