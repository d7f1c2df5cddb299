//! `tally cluster` and the role commands where they fail before any node runs: their errors
//! name what to fix, and they leave nothing behind.

use tally_tests::run_tally;

fn error_of(args: &[&str]) -> String {
    let e = run_tally(args).expect_err("the command must fail");
    format!("{e:#}")
}

#[test]
fn status_of_a_dir_without_a_cluster_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["cluster", "status", "--dir", d],
        vec!["cluster", "down", "--dir", d],
        vec!["cluster", "kill", "--dir", d, "--node", "0"],
        vec!["cluster", "start", "--dir", d, "--node", "0"],
    ] {
        let e = error_of(&args);
        assert!(
            e.contains("no cluster in") && e.contains("tally cluster up"),
            "{e}"
        );
    }
    assert!(!dir.path().join("cluster.lock").exists());
}

#[test]
fn up_refuses_a_replication_above_the_storage_nodes_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("c");
    let d = d.to_str().unwrap();
    let e = error_of(&[
        "cluster",
        "up",
        "--dir",
        d,
        "--storage",
        "2",
        "--replication",
        "3",
    ]);
    assert!(e.contains("--replication is 3; it must be 1..=2"), "{e}");
    assert!(!dir.path().join("c").exists());
}

#[test]
fn a_role_without_its_identity_names_the_missing_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("seq.toml");
    std::fs::write(
        &config,
        "role = \"sequencer\"\ndata_dir = \"/tmp/x\"\n[cluster]\nsequencers = { 0 = \"127.0.0.1:7000\" }\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let e = error_of(&["sequencer", "--config", c]);
    assert!(e.contains(&format!("{c}: missing `id`")), "{e}");
    let e = error_of(&["storage", "--config", c]);
    assert!(e.contains("says role = \"sequencer\""), "{e}");
    let e = error_of(&["sequencer", "--config", c, "--id", "0"]);
    assert!(e.contains("missing `storage`"), "{e}");
}
