//! HTTPS with real processes: `tally cert` makes a CA and a node certificate, `tally up`
//! serves its API over TLS with them, and the CLI reaches it only when it trusts that CA.

use std::path::Path;
use std::process::{Child, Command, Output};
use tally_tests::tally_bin;

fn run(args: &[&str]) -> Output {
    Command::new(tally_bin())
        .args(args)
        .env_remove("TALLY_CA")
        .env_remove("TALLY_TOKEN")
        .output()
        .expect("tally runs")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "tally {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `tally up` over TLS; the child and the URL it printed.
fn up_tls(data: &Path, certs: &Path) -> (Child, String) {
    let cert = certs.join("gw.pem");
    let key = certs.join("gw-key.pem");
    let args = [
        "--http-addr",
        "127.0.0.1:0",
        "--worker-addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    tally_tests::start_up(data, &args).unwrap_or_else(|e| panic!("tally up: {e}"))
}

#[test]
fn the_api_is_served_over_https_to_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    ok(&["cert", "ca", "--dir", certs_arg]);
    ok(&[
        "cert",
        "node",
        "gw",
        "--dir",
        certs_arg,
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
    ]);
    // A second CA that signed nothing of this gateway's.
    let other = dir.path().join("other");
    ok(&["cert", "ca", "--dir", other.to_str().unwrap()]);

    let (mut child, url) = up_tls(&dir.path().join("data"), &certs);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let seqnum = ok(&[
        "log", "append", "--addr", &url, "--ca", ca, "--book", "1", "over tls",
    ]);
    let read = ok(&["log", "read", "--addr", &url, "--ca", ca, "--book", "1"]);
    assert!(
        read.contains(&seqnum) && read.contains("over tls"),
        "{read}"
    );

    // Not trusted: no CA, or another one; nor plain HTTP on the TLS port.
    let wrong_ca = other.join("ca.pem");
    for args in [
        vec!["log", "read", "--addr", &url, "--book", "1"],
        vec![
            "log",
            "read",
            "--addr",
            &url,
            "--ca",
            wrong_ca.to_str().unwrap(),
            "--book",
            "1",
        ],
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} reached the gateway");
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            error.contains("certificate") || error.contains("cannot connect"),
            "{error}"
        );
    }
    let plain = url.replace("https://", "http://");
    let out = run(&["log", "read", "--addr", &plain, "--book", "1"]);
    assert!(!out.status.success(), "plain HTTP got an answer over TLS");

    // A key that is not the certificate's is refused at start, saying so.
    ok(&[
        "cert",
        "node",
        "gw2",
        "--dir",
        certs_arg,
        "--host",
        "localhost",
    ]);
    let out = Command::new(tally_bin())
        .args(["up", "--data-dir"])
        .arg(dir.path().join("data2"))
        .args(["--http-addr", "127.0.0.1:0", "--worker-addr", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(certs.join("gw.pem"))
        .arg("--tls-key")
        .arg(certs.join("gw2-key.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("do not make a certificate and its key"),
        "{error}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
