//! Q-1 with real processes: producers pushing over HTTP under idempotency keys, consumer
//! processes (`queue_consumer`) in two groups that are SIGKILLed and started again, and the
//! checker of what they printed: in each group every message acked exactly once (no ack of
//! a message counted twice, none missing, nothing left), and first deliveries in push order
//! per shard.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub producers: usize,
    /// Messages each producer pushes.
    pub per_producer: usize,
    /// Consumers of each of the two groups.
    pub consumers_per_group: usize,
    pub shards: u32,
}

impl Scale {
    /// The size with `TALLY_SLOW_TESTS=1` (8 producers of 12,500 messages: 100,000;
    /// 8 consumers in two groups), else one that runs in seconds.
    pub fn from_env() -> Scale {
        let slow = std::env::var("TALLY_SLOW_TESTS").is_ok_and(|v| v == "1");
        Scale {
            producers: 8,
            per_producer: if slow { 12_500 } else { 400 },
            consumers_per_group: 4,
            shards: 4,
        }
    }

    pub fn messages(&self) -> usize {
        self.producers * self.per_producer
    }
}

pub const QUEUE: &str = "q1";
pub const GROUPS: [&str; 2] = ["alpha", "beta"];
/// Not acked within this, a delivery is handed out again.
pub const VISIBILITY_MS: u64 = 2000;

/// The gateways' URLs, in a file the consumers read before each request.
pub struct Urls {
    path: PathBuf,
    urls: Mutex<Vec<Option<String>>>,
}

impl Urls {
    pub fn new(dir: &Path, urls: Vec<String>) -> Arc<Urls> {
        let this = Arc::new(Urls {
            path: dir.join("urls"),
            urls: Mutex::new(urls.into_iter().map(Some).collect()),
        });
        this.write();
        this
    }

    /// Marks gateway `i` down (`None`) or up at `url`.
    pub fn set(&self, i: usize, url: Option<String>) {
        self.urls.lock().unwrap()[i] = url;
        self.write();
    }

    /// The gateways up now.
    pub fn up(&self) -> Vec<String> {
        self.urls
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn write(&self) {
        let text: String = self.up().iter().map(|u| format!("{u}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

/// The data of message `n` of producer `p`.
pub fn message(p: usize, n: usize) -> String {
    format!("p{p}-{n}")
}

/// Makes the queue (with `scale.shards` shards) and both groups, before anything is pushed.
pub fn create(url: &str, scale: Scale) {
    let http = reqwest::blocking::Client::new();
    let unknown = http.get(format!("{url}/queues/{QUEUE}")).send().unwrap();
    assert_eq!(unknown.status(), 404, "the queue is new");
    let made = http
        .put(format!("{url}/queues/{QUEUE}?shards={}", scale.shards))
        .send()
        .unwrap();
    assert_eq!(made.status(), 200, "{}", made.text().unwrap());
    for group in GROUPS {
        let joined = http
            .put(format!("{url}/queues/{QUEUE}/groups/{group}"))
            .send()
            .unwrap();
        assert_eq!(joined.status(), 200, "{}", joined.text().unwrap());
    }
}

/// Producers: each pushes its messages in order under keys (a push whose answer was lost is
/// sent again under the same key: the same message id back). Returns each message's id.
pub fn produce(urls: &Urls, scale: Scale, pushed: &AtomicU64) -> BTreeMap<String, String> {
    let ids = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for p in 0..scale.producers {
            let ids = &ids;
            s.spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .connect_timeout(Duration::from_secs(1))
                    .build()
                    .unwrap();
                let mut turn = p;
                for n in 0..scale.per_producer {
                    let data = message(p, n);
                    let id = loop {
                        let up = urls.up();
                        if up.is_empty() {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        let url = &up[turn % up.len()];
                        let answer = http
                            .post(format!("{url}/queues/{QUEUE}/push?shards={}", scale.shards))
                            .header("Idempotency-Key", &data)
                            .body(data.clone())
                            .send();
                        match answer {
                            Ok(r) if r.status() == 200 => {
                                let v: serde_json::Value = r.json().unwrap();
                                break v["id"].as_str().unwrap().to_string();
                            }
                            Ok(r) if r.status().is_client_error() => {
                                panic!("push {data}: {} {}", r.status(), r.text().unwrap())
                            }
                            _ => {
                                turn += 1;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    };
                    pushed.fetch_add(1, Ordering::SeqCst);
                    ids.lock().unwrap().insert(data, id);
                }
            });
        }
    });
    ids.into_inner().unwrap()
}

/// A consumer process and what it printed so far.
pub struct Consumer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    pub fn start(urls: &Urls, group: &str, index: usize) -> Consumer {
        // Built by cargo for this package's tests, next to them.
        let mut child = Command::new(crate::profile_dir().join("queue_consumer"))
            .arg(&urls.path)
            .args([QUEUE, group, &index.to_string(), &VISIBILITY_MS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start queue_consumer");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Consumer {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// SIGKILLs it; what it printed.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    pub fn acks(&self) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.starts_with("ACK ")).count()
    }
}

/// The consumers of both groups, killed and restarted at random by `chaos`.
pub struct Consumers {
    pub running: Vec<(String, usize, Consumer)>,
    /// Lines of consumers that were killed, by group.
    pub done: BTreeMap<String, Vec<String>>,
    pub kills: usize,
}

impl Consumers {
    pub fn start(urls: &Urls, scale: Scale) -> Consumers {
        let mut running = Vec::new();
        for group in GROUPS {
            for i in 0..scale.consumers_per_group {
                running.push((group.to_string(), i, Consumer::start(urls, group, i)));
            }
        }
        Consumers {
            running,
            done: BTreeMap::new(),
            kills: 0,
        }
    }

    /// SIGKILLs consumer `k` (of `running`) and starts it again.
    pub fn kill_and_restart(&mut self, urls: &Urls, k: usize) {
        let (group, i, consumer) = self.running.remove(k);
        let lines = consumer.kill();
        self.done.entry(group.clone()).or_default().extend(lines);
        self.kills += 1;
        let again = Consumer::start(urls, &group, i);
        self.running.insert(k, (group, i, again));
    }

    pub fn acks(&self) -> usize {
        self.running.iter().map(|(_, _, c)| c.acks()).sum::<usize>()
            + self
                .done
                .values()
                .flatten()
                .filter(|l| l.starts_with("ACK "))
                .count()
    }

    /// Kills every consumer; every line printed, by group.
    pub fn stop(mut self) -> BTreeMap<String, Vec<String>> {
        for (group, _, consumer) in self.running.drain(..) {
            let lines = consumer.kill();
            self.done.entry(group).or_default().extend(lines);
        }
        self.done
    }
}

/// A group's stats as `GET /queues/{name}` shows them.
pub fn group_stats(url: &str, group: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{url}/queues/{QUEUE}"))
        .send()
        .ok()?
        .json()
        .ok()?;
    v["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)
        .cloned()
}

/// Waits until both groups acked `n` messages with nothing left, or `timeout` passes.
pub fn wait_drained(urls: &Urls, n: usize, timeout: Duration, stop: &AtomicBool) -> bool {
    crate::wait_until(timeout, || {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let Some(url) = urls.up().first().cloned() else {
            return false;
        };
        GROUPS.iter().all(|g| {
            group_stats(&url, g).is_some_and(|s| {
                s["acked"].as_u64() == Some(n as u64) && s["lag"].as_u64() == Some(0)
            })
        })
    })
    .is_ok()
}

/// What the checker found in one group.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupReport {
    pub acked: usize,
    pub pops: usize,
    pub redeliveries: usize,
    pub stale_acks: usize,
    pub first_deliveries: usize,
}

/// Checks one group's consumer lines against the pushed messages (`ids`: data to id):
/// no message acked twice, no ack of a message never pushed, at most `unsure` messages
/// without an ACK line (a consumer killed after its ack counted and before it printed, or an
/// ack whose answer was lost: the queue's own count says they were acked), and first
/// deliveries of each shard in push order. Errs with the first violation.
pub fn check_group(
    lines: &[String],
    ids: &BTreeMap<String, String>,
    unsure: usize,
) -> Result<GroupReport, String> {
    let mut report = GroupReport::default();
    let mut acked: BTreeSet<&str> = BTreeSet::new();
    // shard -> (receipt, seqnum) of first deliveries.
    let mut firsts: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["POP", id, deliveries, receipt, data] => {
                report.pops += 1;
                if ids.get(*data).map(String::as_str) != Some(*id) {
                    return Err(format!(
                        "popped {data} as {id}, pushed as {:?}",
                        ids.get(*data)
                    ));
                }
                let deliveries: u32 = deliveries.parse().map_err(|_| line.clone())?;
                if deliveries == 1 {
                    let (shard, seqnum) = id.split_once(':').ok_or_else(|| line.clone())?;
                    let receipt: u64 = receipt.parse().map_err(|_| line.clone())?;
                    firsts
                        .entry(shard.parse().map_err(|_| line.clone())?)
                        .or_default()
                        .push((receipt, seqnum.parse().map_err(|_| line.clone())?));
                } else {
                    report.redeliveries += 1;
                }
            }
            ["ACK", _, _, data] => {
                if !ids.contains_key(*data) {
                    return Err(format!("acked {data}, which was never pushed"));
                }
                if !acked.insert(data) {
                    return Err(format!("{data} was acked twice"));
                }
            }
            ["STALE", _, _] => report.stale_acks += 1,
            _ => return Err(format!("a line no consumer prints: {line:?}")),
        }
    }
    report.acked = acked.len();
    let missing = ids.len() - acked.len();
    if missing > unsure {
        let first = ids.keys().find(|d| !acked.contains(d.as_str()));
        return Err(format!(
            "{missing} messages never acked (at most {unsure} may lack their line), {first:?} first"
        ));
    }
    for (shard, mut deliveries) in firsts {
        report.first_deliveries += deliveries.len();
        deliveries.sort();
        if let Some(w) = deliveries.windows(2).find(|w| w[0].1 > w[1].1) {
            return Err(format!(
                "shard {shard}: message {} was first delivered (pop {}) after message {} (pop {})",
                w[1].1, w[1].0, w[0].1, w[0].0
            ));
        }
    }
    Ok(report)
}
