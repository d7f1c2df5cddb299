//! Helpers for integration tests that start real `tally` processes: find the binary, start
//! `tally up` on an ephemeral loopback port in a temp dir, wait for it to be ready, kill it.
//! Tests wait on conditions with deadlines, never on fixed sleeps.

pub mod history;

use anyhow::{bail, Context as _};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `tally` binary: `$TALLY_BIN`, else the one cargo built next to this test.
pub fn tally_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TALLY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>/tally
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .join("tally");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tally-cli` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A running `tally up`.
pub struct Tally {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub stdout_lines: Vec<String>,
}

impl Tally {
    /// Starts `tally up` on `data_dir` with a free loopback port and waits until it answers.
    pub fn up(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Tally> {
        let mut child = Command::new(tally_bin())
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning tally up")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix("listening on http://") {
                        break rest.trim().to_string();
                    }
                }
                _ => {
                    let status = child.wait().ok();
                    bail!("tally up exited before listening ({status:?}); it printed {seen:?}");
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let tally = Tally {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            stdout_lines: seen,
        };
        wait_until(Duration::from_secs(30), || healthy(&tally.addr))
            .context("waiting for /health")?;
        Ok(tally)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping")?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        anyhow::ensure!(rc == 0, "SIGTERM failed");
        let status = self.child.wait().context("waiting for tally up to stop")?;
        anyhow::ensure!(status.success(), "tally up exited with {status}");
        Ok(())
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(addr: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    use std::io::{Read as _, Write as _};
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    bail!("condition not met within {timeout:?}")
}

/// Runs `tally` with `args` and returns its stdout; fails with its stderr on a non-zero exit.
pub fn run_tally(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tally_bin())
        .args(args)
        .output()
        .context("running tally")?;
    if !out.status.success() {
        bail!(
            "tally {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
