//! Mutual TLS in a real cluster (`tally cluster up --tls`: a CA of its own, a certificate per
//! process). The cluster tests' load (`tally bench append` over both gateways, now HTTPS) runs
//! while a storage node is SIGKILLed and started again, and every acknowledged append is read
//! back at both gateways. A worker attaches with a certificate of the CA and serves calls; one
//! without TLS is refused. A gateway showing a certificate of another CA never joins: the
//! sequencers refuse its connections and say why. A gRPC client without a certificate is
//! refused, and plain HTTP gets no answer from a gateway.

use logbook::rpc::pb;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tally_tests::history::{check_acks, check_no_duplicates, read_tag_with};
use tally_tests::{example_bin, tally_bin, wait_until, Cluster};

/// A client of the cluster's HTTPS gateways, trusting its CA alone.
fn https_client(ca: &Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).expect("the CA file");
    reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTPS client")
}

fn tally(args: &[&str]) -> String {
    let out = Command::new(tally_bin())
        .args(args)
        .output()
        .expect("tally runs");
    assert!(
        out.status.success(),
        "tally {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_cluster_with_mutual_tls_takes_load_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cdir = dir.path().join("cluster");
    let mut cluster = Cluster::up_with(&cdir, 3, 3, 2, &["--tls"]).expect("cluster up --tls");
    let certs = cdir.join("certs");
    let ca = certs.join("ca.pem");
    let http = https_client(&ca);
    let gateways = cluster.gateways();
    assert!(
        gateways.iter().all(|g| g.starts_with("https://")),
        "{gateways:?}"
    );

    // The gateways' own mTLS calls to every sequencer and storage node answer.
    let status: Value = http
        .get(format!("{}/cluster", gateways[0]))
        .send()
        .and_then(|r| r.json())
        .expect("GET /cluster over HTTPS");
    for role in ["sequencers", "storage"] {
        let nodes = status[role].as_object().expect("statuses");
        assert_eq!(nodes.len(), 3, "{status}");
        assert!(
            nodes.values().all(|s| s.get("error").is_none()),
            "{role}: {status}"
        );
    }
    // Plain HTTP gets no answer.
    let plain = gateways[0].replacen("https://", "http://", 1);
    assert!(tally_tests::client()
        .get(format!("{plain}/health"))
        .send()
        .is_err());

    // The load, over HTTPS, with a storage node killed and started again meanwhile.
    let acks_path = dir.path().join("acks");
    let mut bench = Command::new(tally_bin());
    bench
        .args(["bench", "append", "--clients", "4", "--record-bytes", "200"])
        .args(["--tags", "4", "--duration", "3600", "--ack-log"])
        .arg(&acks_path)
        .env("TALLY_CA", &ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for g in &gateways {
        bench.args(["--addr", g]);
    }
    let bench = Killed(bench.spawn().expect("the bench starts"));
    let acks = || tally_tests::history::ack_lines(&acks_path);
    let grow = |by: usize| {
        let target = acks() + by;
        wait_until(Duration::from_secs(90), || acks() >= target)
            .unwrap_or_else(|_| panic!("appends stopped at {} (wanted {target})", acks()));
    };
    grow(300);
    let storage = cluster.ids("storage")[0];
    cluster.kill(storage).expect("kill a storage node");
    grow(300);
    cluster.start(storage).expect("start it again");
    let target = cluster.leader_status();
    wait_until(Duration::from_secs(60), || {
        cluster.storage_caught_up(storage, &target)
    })
    .expect("the restarted storage node catches up");
    grow(300);
    drop(bench);
    let acks = bench::read_ack_log(&acks_path).expect("the ack log");
    let last = acks.iter().map(|a| a.seqnum).max().expect("acks");
    for g in &gateways {
        let records = read_tag_with(&http, g, 0, Some(last));
        check_acks(&records, &acks);
        check_no_duplicates(&records);
    }

    // A worker with a certificate of the CA attaches and serves; one without TLS cannot.
    tally(&[
        "cert",
        "node",
        "worker",
        "--dir",
        &certs.to_string_lossy(),
        "--host",
        "127.0.0.1",
    ]);
    let workers = cluster
        .node(20)
        .and_then(|n| n.workers.clone())
        .expect("gateway 20's worker address");
    let _worker = Killed(
        Command::new(example_bin("hello-worker"))
            .args(["--gateway", &workers, "--name", "tls-worker"])
            .arg("--ca")
            .arg(&ca)
            .arg("--cert")
            .arg(certs.join("worker.pem"))
            .arg("--key")
            .arg(certs.join("worker-key.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker starts"),
    );
    let mut greeting = Value::Null;
    wait_until(Duration::from_secs(30), || {
        greeting = http
            .post(format!("{}/function/hello", gateways[0]))
            .body(r#"{"name":"tls"}"#)
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.json().ok())
            .unwrap_or(Value::Null);
        greeting.is_object()
    })
    .expect("the worker serves hello");
    assert_eq!(greeting["greeting"], "hello, tls");
    let plain_worker = Command::new(example_bin("hello-worker"))
        .args(["--gateway", &workers, "--name", "plain-worker"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts");
    let mut plain_worker = Killed(plain_worker);
    let mut exit = None;
    wait_until(Duration::from_secs(30), || {
        exit = plain_worker.0.try_wait().expect("waiting");
        exit.is_some()
    })
    .expect("a worker without TLS is turned away");
    assert!(!exit.expect("exited").success());

    // A gateway showing a certificate of another CA: the sequencers refuse it, and say why.
    let rogue = dir.path().join("rogue");
    let rogue_dir = rogue.to_string_lossy().into_owned();
    tally(&["cert", "ca", "--dir", &rogue_dir]);
    tally(&[
        "cert",
        "node",
        "gateway-29",
        "--dir",
        &rogue_dir,
        "--host",
        "127.0.0.1",
    ]);
    let own = std::fs::read_to_string(cdir.join("gateway-21.toml")).expect("a gateway file");
    let file: String = own
        .lines()
        .map(|line| match line.split(" = ").next() {
            Some("id") => "id = 29".to_string(),
            Some("http") => "http = \"127.0.0.1:0\"".to_string(),
            Some("workers") => "workers = \"127.0.0.1:0\"".to_string(),
            Some("cert") => format!("cert = \"{rogue_dir}/gateway-29.pem\""),
            Some("key") => format!("key = \"{rogue_dir}/gateway-29-key.pem\""),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = rogue.join("gateway-29.toml");
    std::fs::write(&config, file).expect("the rogue's file");
    let rogue_log = rogue.join("gateway-29.log");
    let _rogue = Killed(
        Command::new(tally_bin())
            .args(["gateway", "--config"])
            .arg(&config)
            .stdout(std::fs::File::create(&rogue_log).expect("a log file"))
            .stderr(std::fs::File::create(rogue.join("gateway-29.err")).expect("a log file"))
            .spawn()
            .expect("the rogue gateway starts"),
    );
    let sequencer_logs: Vec<_> = cluster
        .ids("sequencer")
        .into_iter()
        .filter_map(|id| cluster.node(id).map(|n| n.log.clone()))
        .collect();
    wait_until(Duration::from_secs(30), || {
        sequencer_logs.iter().any(|log| {
            read_log(log).contains("refused a connection: invalid peer certificate: UnknownIssuer")
        }) && read_log(&rogue.join("gateway-29.err")).contains("no sequencer takes a subscription")
    })
    .expect("the sequencers refuse the stranger's certificate, and both ends say so");
    assert!(
        !read_log(&rogue_log).contains("ready"),
        "the rogue gateway joined"
    );
    let view = cluster.leader_status()["view"].clone();
    assert!(view["gateways"].get("29").is_none(), "{view}");

    // A gRPC client without a certificate is refused; with the CLI's it is answered.
    let sequencer = cluster
        .node(cluster.ids("sequencer")[0])
        .and_then(|n| n.rpc.clone())
        .expect("a sequencer's address");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let status = |tls: Option<tonic::transport::ClientTlsConfig>| {
            let sequencer = sequencer.clone();
            async move {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let mut endpoint =
                    tonic::transport::Endpoint::from_shared(format!("{scheme}://{sequencer}"))
                        .expect("an endpoint")
                        .timeout(Duration::from_secs(5));
                if let Some(tls) = tls {
                    endpoint = endpoint.tls_config(tls).expect("TLS settings");
                }
                let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
                pb::sequencer_client::SequencerClient::new(channel)
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let ca_pem = std::fs::read_to_string(&ca).expect("the CA");
        let trust_only = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem));
        assert!(status(None).await.is_err(), "plain gRPC was answered");
        assert!(
            status(Some(trust_only)).await.is_err(),
            "a client without a certificate was answered"
        );
        let cli = logbook::rpc::ClientTls::from_files(
            &ca,
            &certs.join("cli.pem"),
            &certs.join("cli-key.pem"),
        )
        .expect("the CLI's certificate");
        assert!(status(Some(cli.config())).await.is_ok());
    });
    cluster.down().expect("cluster down");
}
