//! `--log-format json` (or `TALLY_LOG_FORMAT=json`): every log line on stderr is one JSON
//! object with a timestamp, a level, a target, the message and the event's fields.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs `tally storage` on a fresh data dir (its sequencer is nowhere: it never gets a
/// view) with `format` given as `how`, until it logs that its store recovered; that line.
fn store_recovered_line(how: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("storage.toml");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listen.local_addr().unwrap();
    drop(listen);
    let text = format!(
        "role = \"storage\"\nid = 10\ndata_dir = {:?}\n\n[cluster]\nsequencers = {{ 0 = \"127.0.0.1:1\" }}\nstorage = {{ 10 = \"{addr}\" }}\nreplication = 1\n",
        dir.path().join("data")
    );
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command.args(["storage", "--config"]).arg(&config);
    for (key, value) in how {
        match *key {
            "flag" => {
                command.args(["--log-format", value]);
            }
            env => {
                command.env(env, value);
            }
        }
    }
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let line = stderr
        .lines()
        .map_while(Result::ok)
        .find(|line| line.contains("store recovered"));
    child.kill().unwrap();
    child.wait().unwrap();
    line.expect("the storage node logged that its store recovered")
}

#[test]
fn json_logs_are_one_object_a_line_with_the_event_fields() {
    for how in [[("flag", "json")], [("TALLY_LOG_FORMAT", "json")]] {
        let line = store_recovered_line(&how);
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert_eq!(event["level"], "INFO", "{line}");
        assert_eq!(event["message"], "store recovered", "{line}");
        assert_eq!(event["records"], 0, "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(
            event["target"].as_str().unwrap().starts_with("tally"),
            "{line}"
        );
    }
    // The default is text for people, without colours when stderr is not a terminal (a
    // node's log file).
    let line = store_recovered_line(&[]);
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "{line}"
    );
    assert!(
        line.contains(" INFO ") && line.contains("records=0"),
        "{line}"
    );
    assert!(!line.contains('\x1b'), "no escape codes: {line:?}");
}
