//! TX-1 over HTTP against the `bank` example: clients move money between accounts (some of
//! them hot) with one-shot and interactive transfers, each carrying a unique id, while the
//! caller kills and restarts gateways; then the invariant is checked from the log's answers
//! alone: the total never changed (every audit during the run, and at the end), no balance
//! is negative, every transfer answered committed is in the ledger and every one answered
//! aborted is not, and each account's balance is its opening balance plus the ledger's
//! transfers in minus its transfers out. A transfer whose answer was lost to a kill is
//! unknown; the ledger says whether it took effect.

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub accounts: usize,
    /// The first `hot` accounts take half of all transfer ends.
    pub hot: usize,
    pub clients: usize,
    pub duration: Duration,
    /// Every account's opening balance.
    pub opening: u64,
    /// Transfers move 1 to `amount_max`.
    pub amount_max: u64,
}

impl Scale {
    /// The size with `TALLY_SLOW_TESTS=1` (1,000 accounts, 100 hot, 32 clients, 60 s),
    /// else one that runs in seconds.
    pub fn from_env() -> Scale {
        if std::env::var("TALLY_SLOW_TESTS").is_ok_and(|v| v == "1") {
            Scale {
                accounts: 1000,
                hot: 100,
                clients: 32,
                duration: Duration::from_secs(60),
                opening: 100,
                amount_max: 40,
            }
        } else {
            Scale {
                accounts: 100,
                hot: 10,
                clients: 8,
                duration: Duration::from_secs(12),
                opening: 100,
                amount_max: 40,
            }
        }
    }
}

/// How a transfer's request ended, as its client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Committed,
    Aborted(String),
    /// No answer (the gateway died), or an error: it may or may not have taken effect.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub from: usize,
    pub to: usize,
    pub amount: u64,
    pub mode: &'static str,
    pub answer: Answer,
}

/// The gateways clients may use now: `None` for one that is down.
pub struct Targets {
    urls: Mutex<Vec<Option<String>>>,
    changed: Condvar,
}

impl Targets {
    pub fn new(urls: Vec<String>) -> Targets {
        Targets {
            urls: Mutex::new(urls.into_iter().map(Some).collect()),
            changed: Condvar::new(),
        }
    }

    /// Marks gateway `i` down (`None`) or up at `url`.
    pub fn set(&self, i: usize, url: Option<String>) {
        self.urls.lock().unwrap()[i] = url;
        self.changed.notify_all();
    }

    /// Gateway `preferred` if it is up, else another one that is; waits while none is, until
    /// `stop`.
    fn pick(&self, preferred: usize, stop: &AtomicBool) -> Option<String> {
        let mut urls = self.urls.lock().unwrap();
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            let n = urls.len();
            if let Some(url) = (0..n).find_map(|k| urls[(preferred + k) % n].clone()) {
                return Some(url);
            }
            urls = self
                .changed
                .wait_timeout(urls, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }
}

/// What a run saw, for the final checks and the report.
pub struct Run {
    pub sent: Vec<Sent>,
    pub audits: usize,
}

pub fn account(i: usize) -> String {
    format!("a{i}")
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

fn bank(http: &Client, url: &str, request: &Value) -> Result<Value, String> {
    let response = http
        .post(format!("{url}/function/bank"))
        .json(request)
        .send()
        .map_err(|e| format!("{e:#}"))?;
    let status = response.status();
    let body = response.text().map_err(|e| format!("{e:#}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// Opens every account (in parallel) at `url`.
pub fn open(url: &str, scale: Scale) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let http = http();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= scale.accounts {
                        return;
                    }
                    let open =
                        json!({"action": "open", "account": account(i), "balance": scale.opening});
                    let answer = bank(&http, url, &open).expect("open an account");
                    assert_eq!(answer, json!({"committed": true}), "open a{i}");
                }
            });
        }
    });
}

/// A small seeded generator (xorshift64*), so a run's choices can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Runs `scale.clients` clients for `scale.duration` and an auditor, while `faults` (given
/// the targets and the count of answered transfers) kills and restarts gateways; returns
/// once the clients stopped and `faults` returned.
pub fn run(
    targets: &Targets,
    scale: Scale,
    seed: u64,
    faults: impl FnOnce(&Targets, &AtomicUsize) + Send,
) -> Run {
    let stop = AtomicBool::new(false);
    let answered = AtomicUsize::new(0);
    let sent: Mutex<Vec<Sent>> = Mutex::new(Vec::new());
    let audits = AtomicUsize::new(0);
    let audit_failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let total = scale.accounts as u64 * scale.opening;
    let seq = AtomicU64::new(0);
    std::thread::scope(|s| {
        for client in 0..scale.clients {
            let (stop, answered, sent, seq) = (&stop, &answered, &sent, &seq);
            s.spawn(move || {
                let http = http();
                let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let pick = |rng: &mut Rng| {
                    if rng.below(2) == 0 {
                        rng.below(scale.hot as u64) as usize
                    } else {
                        rng.below(scale.accounts as u64) as usize
                    }
                };
                while let Some(url) = targets.pick(client, stop) {
                    let from = pick(&mut rng);
                    let to = pick(&mut rng);
                    if from == to {
                        continue;
                    }
                    let amount = 1 + rng.below(scale.amount_max);
                    let mode = if rng.below(2) == 0 {
                        "oneshot"
                    } else {
                        "interactive"
                    };
                    let id = format!("t{}-c{client}", seq.fetch_add(1, Ordering::SeqCst));
                    let request = json!({
                        "action": "transfer", "from": account(from), "to": account(to),
                        "amount": amount, "mode": mode, "id": id,
                    });
                    let answer = match http
                        .post(format!("{url}/function/bank"))
                        .json(&request)
                        .send()
                    {
                        // Never reached the gateway: not sent.
                        Err(e) if e.is_connect() => continue,
                        Err(e) => Answer::Unknown(format!("{e:#}")),
                        Ok(response) => {
                            let status = response.status();
                            let body: Value = response.json().unwrap_or(Value::Null);
                            match (status.as_u16(), &body["committed"]) {
                                (200, Value::Bool(true)) => Answer::Committed,
                                (200, Value::Bool(false)) => Answer::Aborted(
                                    body["reason"].as_str().unwrap_or_default().to_string(),
                                ),
                                (400, _) => panic!("{request} is refused: {body}"),
                                _ => Answer::Unknown(format!("{status}: {body}")),
                            }
                        }
                    };
                    answered.fetch_add(1, Ordering::SeqCst);
                    sent.lock().unwrap().push(Sent {
                        id,
                        from,
                        to,
                        amount,
                        mode,
                        answer,
                    });
                }
            });
        }
        // The auditor: every audit reads one snapshot, so its total is always the same.
        let (stop_ref, audits_ref, failures) = (&stop, &audits, &audit_failures);
        s.spawn(move || {
            let http = http();
            while let Some(url) = targets.pick(0, stop_ref) {
                match bank(&http, &url, &json!({"action": "audit"})) {
                    Ok(audit) => {
                        audits_ref.fetch_add(1, Ordering::SeqCst);
                        if audit != json!({"accounts": scale.accounts, "total": total}) {
                            failures.lock().unwrap().push(audit.to_string());
                        }
                    }
                    // The gateway died under the audit.
                    Err(_) => continue,
                }
            }
        });
        let started = Instant::now();
        // Stops the clients even if `faults` panics, so the test ends with its message.
        struct StopOnDrop<'a>(&'a AtomicBool, &'a Targets);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
                self.1.changed.notify_all();
            }
        }
        let _stop = StopOnDrop(&stop, targets);
        faults(targets, &answered);
        let left = scale.duration.saturating_sub(started.elapsed());
        crate::wait_until(left + Duration::from_secs(1), || {
            started.elapsed() >= scale.duration
        })
        .expect("the run's time passes");
    });
    let failures = audit_failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "audits saw another total: {failures:?}"
    );
    Run {
        sent: sent.into_inner().unwrap(),
        audits: audits.into_inner(),
    }
}

/// What the final check found.
#[derive(Debug)]
pub struct Report {
    pub sent: usize,
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    /// Transfers the ledger holds (committed ones and unknown ones that took effect).
    pub applied: usize,
    pub unknown_applied: usize,
    pub oneshot_committed: usize,
    pub interactive_committed: usize,
    pub audits: usize,
    pub reasons: BTreeMap<String, usize>,
}

/// Checks the bank at `url` (reads carry `seen` as `X-Tally-Seen`) against what `run` sent.
pub fn check(url: &str, seen: Option<u64>, scale: Scale, run: &Run) -> Report {
    let http = http();
    let get = |path: &str| -> Option<Value> {
        let mut request = http.get(format!("{url}{path}"));
        if let Some(seen) = seen {
            request = request.header("x-tally-seen", seen);
        }
        let response = request.send().expect("the gateway answers");
        match response.status().as_u16() {
            200 => Some(response.json().expect("JSON")),
            404 => None,
            other => panic!(
                "GET {path}: {other}: {}",
                response.text().unwrap_or_default()
            ),
        }
    };
    // The ledger: which transfers took effect.
    let mut expected: Vec<i64> = vec![scale.opening as i64; scale.accounts];
    let mut report = Report {
        sent: run.sent.len(),
        committed: 0,
        aborted: 0,
        unknown: 0,
        applied: 0,
        unknown_applied: 0,
        oneshot_committed: 0,
        interactive_committed: 0,
        audits: run.audits,
        reasons: BTreeMap::new(),
    };
    for t in &run.sent {
        let entry = get(&format!("/objects/transfers/{}", t.id));
        if let Some(entry) = &entry {
            assert_eq!(
                entry,
                &json!({"from": account(t.from), "to": account(t.to), "amount": t.amount, "mode": t.mode}),
                "{t:?}"
            );
            expected[t.from] -= t.amount as i64;
            expected[t.to] += t.amount as i64;
            report.applied += 1;
        }
        match &t.answer {
            Answer::Committed => {
                assert!(
                    entry.is_some(),
                    "{t:?} answered committed, but the ledger lacks it"
                );
                report.committed += 1;
                match t.mode {
                    "oneshot" => report.oneshot_committed += 1,
                    _ => report.interactive_committed += 1,
                }
            }
            Answer::Aborted(reason) => {
                assert!(
                    entry.is_none(),
                    "{t:?} answered aborted, but the ledger has it"
                );
                report.aborted += 1;
                let kind = reason.split(';').next().unwrap_or_default().to_string();
                *report.reasons.entry(kind).or_default() += 1;
            }
            Answer::Unknown(_) => {
                report.unknown += 1;
                report.unknown_applied += usize::from(entry.is_some());
            }
        }
    }
    let mut total = 0;
    for (i, want) in expected.iter().enumerate() {
        let balance = get(&format!("/objects/accounts/{}?path=/balance", account(i)))
            .and_then(|b| b.as_i64())
            .expect("every account has a balance");
        assert!(balance >= 0, "a{i} is negative: {balance}");
        assert_eq!(balance, *want, "a{i}: the balance is not the ledger's");
        total += balance;
    }
    let all = scale.accounts as i64 * scale.opening as i64;
    assert_eq!(total, all, "the total changed");
    let audit = bank(&http, url, &json!({"action": "audit"})).expect("an audit");
    assert_eq!(audit, json!({"accounts": scale.accounts, "total": all}));
    report
}
