//! CPU time used by a system under test: a process and every process below it, read from
//! `/proc` (Linux). A server's CPU seconds over a measured window tell how much of the machine
//! its throughput took: committed operations per CPU second compare systems that do not use
//! the same number of cores.

use std::collections::BTreeMap;
use std::fs;

/// Ticks of `utime`/`stime` in `/proc/PID/stat` per second (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds (user and system) used so far by `roots` and every process below them, with
/// what their exited and waited-for children used. Processes that cannot be read (gone, or not
/// Linux) count nothing.
pub fn tree_cpu_s(roots: &[u32]) -> f64 {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut ticks: BTreeMap<u32, u64> = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, used)) = stat(pid) {
            children.entry(ppid).or_default().push(pid);
            ticks.insert(pid, used);
        }
    }
    let mut total = 0;
    let mut stack: Vec<u32> = roots.to_vec();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        total += ticks.get(&pid).copied().unwrap_or(0);
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    total as f64 / TICKS_PER_S
}

/// The CPU seconds `pids` (with their descendants) use between `start` and `end`, measured by
/// a task that samples at both instants; `None` when there are no pids.
pub fn window(
    pids: &[u32],
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> Option<tokio::task::JoinHandle<f64>> {
    let pids = pids.to_vec();
    (!pids.is_empty()).then(|| {
        tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let first = tree_cpu_s(&pids);
            tokio::time::sleep_until(end).await;
            tree_cpu_s(&pids) - first
        })
    })
}

/// A process's parent and its CPU ticks, its waited-for children's included.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the fields follow the last ')'.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let ppid = fields.get(1)?.parse().ok()?;
    let used = fields[11..=14]
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Some((ppid, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_counts_toward_its_parent_and_an_idle_one_hardly() {
        let me = std::process::id();
        let before = tree_cpu_s(&[me]);
        // Busy for about 0.3 s of CPU in this process.
        let began = std::time::Instant::now();
        let mut x = 0u64;
        while began.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = tree_cpu_s(&[me]);
        assert!(after - before >= 0.15, "{before} -> {after}");
        // A sleeping child uses next to nothing.
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let with_child = tree_cpu_s(&[child.id()]);
        child.wait().unwrap();
        assert!(with_child < 0.1, "{with_child}");
    }
}
