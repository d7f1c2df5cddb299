//! Q-1 in memory: producers push under keys and crash at appends; two groups of consumers
//! pop, process and ack, some as plain consumers (a crash forgets the message in hand, which
//! comes back after its visibility timeout), some as workflow steps (keyed pops and acks, a
//! crash-restart re-runs the same step). A checker then asks, for each group: was every
//! message processed (acked) exactly once; was no message delivered again before its previous
//! delivery timed out, or after it was acked; did first deliveries follow FIFO order per
//! shard. A deliberately wrong pop shows the checker catches what it claims to.

mod common;

use common::*;
use libqueue::{Delivery, Error, Group, Options, Queue, Settings, SystemClock};
use logbook::crashing::{CrashAt, CrashPlan, CrashingLog};
use logbook::memory::MemoryLogBook;
use logbook::LogBook;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GROUPS: [&str; 2] = ["billing", "shipping"];
const SHARDS: u32 = 4;

#[derive(Clone, Copy)]
struct Config {
    messages: u64,
    producers: u64,
    consumers_per_group: u64,
    visibility_ms: u64,
    crashes: bool,
    fault: bool,
    seed: u64,
}

/// One delivery as a consumer saw it: wall-clock ms before the pop call and after it.
#[derive(Debug, Clone)]
struct Seen {
    delivery: Delivery,
    started_ms: u64,
    returned_ms: u64,
}

#[derive(Default)]
struct History {
    /// Per group: every delivery seen.
    seen: BTreeMap<&'static str, Vec<Seen>>,
    /// Per group: the messages processed (acked), by data, with when the ack returned.
    processed: BTreeMap<&'static str, Vec<(String, u64)>>,
}

fn now_ms() -> u64 {
    libqueue::Clock::now_ms(&SystemClock)
}

fn crashing(log: &Arc<MemoryLogBook>, plan: Arc<CrashPlan>) -> Arc<dyn LogBook> {
    Arc::new(CrashingLog::new(log.clone(), plan))
}

/// A crash plan: with crashes on, dies at a random append among the next `within`.
fn plan(rng: &mut Rng, crashes: bool, within: u64) -> Arc<CrashPlan> {
    if !crashes {
        return CrashPlan::new(None);
    }
    let n = rng.below(within);
    let at = if rng.below(2) == 0 {
        CrashAt::Before(n)
    } else {
        CrashAt::After(n)
    };
    CrashPlan::new(Some(at))
}

async fn open_as(log: Arc<dyn LogBook>, id: &str) -> Result<Queue, Error> {
    let options = Options {
        shards: Some(SHARDS),
        clock: Arc::new(SystemClock),
    };
    Queue::open_with(ctx(log, id), "orders", options).await
}

async fn group_of(queue: &Queue, name: &str, config: Config) -> Result<Group, Error> {
    let settings = Settings {
        visibility_timeout: Duration::from_millis(config.visibility_ms),
        max_deliveries: 1_000,
        fault_pop_takes_in_flight: config.fault,
        ..Settings::default()
    };
    queue.group_with(name, settings).await
}

/// A producer: pushes its messages under keys, restarting after each crash; the keys make a
/// re-run push the same message.
async fn produce(log: Arc<MemoryLogBook>, config: Config, p: u64) {
    let mut rng = Rng::new(config.seed ^ ((p + 1) * 7919));
    let mine: Vec<u64> = (0..config.messages)
        .filter(|i| i % config.producers == p)
        .collect();
    let mut next = 0;
    let mut life = 0;
    while next < mine.len() {
        life += 1;
        let process = crashing(&log, plan(&mut rng, config.crashes, 300));
        let Ok(queue) = open_as(process, &format!("producer-{p}-{life}")).await else {
            continue;
        };
        while next < mine.len() {
            let key = format!("m{:05}", mine[next]);
            if queue.push_keyed(&key, key.clone()).await.is_err() {
                break; // crashed: restart and push the same message again
            }
            next += 1;
        }
    }
}

/// A consumer of `group`. A plain one forgets the message in hand when it crashes (and
/// sometimes drops one on purpose); a step one re-runs the same step, with keyed pops and
/// acks.
async fn consume(
    log: Arc<MemoryLogBook>,
    config: Config,
    group: &'static str,
    c: u64,
    history: Arc<Mutex<History>>,
    done: Arc<AtomicU64>,
) {
    let step = c % 2 == 1;
    let mut rng = Rng::new(config.seed ^ ((c + 11) * 104_729) ^ group.len() as u64);
    let mut iteration = 0u64; // a step consumer's durable position
                              // A delivery whose ack was on its way when the process crashed: the next life retries
                              // the ack under the same key, so it learns whether the first one counted.
    let mut unsure: Option<Delivery> = None;
    let mut life = 0;
    'lives: while done.load(Ordering::SeqCst) < config.messages {
        life += 1;
        let process = if !config.crashes {
            crashing(
                &log,
                CrashPlan::with_delays(None, Duration::from_millis(1), rng.next()),
            )
        } else {
            crashing(&log, plan(&mut rng, config.crashes, 200))
        };
        let name = format!("{group}-{c}-{life}");
        let Ok(queue) = open_as(process, &name).await else {
            continue;
        };
        let Ok(consumer) = group_of(&queue, group, config).await else {
            continue;
        };
        if let Some(delivery) = unsure.take() {
            match consumer.ack_keyed(&ack_key(&delivery), &delivery).await {
                Ok(()) => processed(&history, group, &delivery, &done),
                Err(Error::NotInFlight { .. }) => {}
                Err(_) => {
                    unsure = Some(delivery);
                    continue;
                }
            }
            iteration += 1;
        }
        while done.load(Ordering::SeqCst) < config.messages {
            let started_ms = now_ms();
            let wait = Duration::from_millis(50);
            let popped = if step {
                consumer
                    .pop_keyed(&format!("{group}-{c}-pop-{iteration}"), wait)
                    .await
            } else {
                consumer.pop_wait(wait).await
            };
            let delivery = match popped {
                Ok(Some(d)) => d,
                Ok(None) => {
                    iteration += 1;
                    continue;
                }
                Err(_) => continue 'lives,
            };
            history
                .lock()
                .unwrap()
                .seen
                .entry(group)
                .or_default()
                .push(Seen {
                    delivery: delivery.clone(),
                    started_ms,
                    returned_ms: now_ms(),
                });
            if !step && config.crashes && rng.below(400) == 0 {
                continue 'lives; // dies mid-message
            }
            match consumer.ack_keyed(&ack_key(&delivery), &delivery).await {
                Ok(()) => {
                    processed(&history, group, &delivery, &done);
                    iteration += 1;
                }
                // Taken by another pop after its timeout: the work does not count.
                Err(Error::NotInFlight { .. }) => iteration += 1,
                Err(_) => {
                    unsure = Some(delivery);
                    continue 'lives;
                }
            }
        }
    }
}

fn ack_key(delivery: &Delivery) -> String {
    format!("ack-{}", delivery.receipt.0)
}

/// The work of a delivery counts: its ack was applied.
fn processed(history: &Mutex<History>, group: &'static str, delivery: &Delivery, done: &AtomicU64) {
    let data = String::from_utf8(delivery.data.to_vec()).unwrap();
    let mut h = history.lock().unwrap();
    h.processed.entry(group).or_default().push((data, now_ms()));
    done.fetch_add(1, Ordering::SeqCst);
}

async fn run(config: Config) -> History {
    let log = Arc::new(MemoryLogBook::new());
    // Create the queue and its groups before producing.
    let queue = open_as(log.clone(), "setup").await.unwrap();
    for group in GROUPS {
        group_of(&queue, group, config).await.unwrap();
    }
    let history = Arc::new(Mutex::new(History::default()));
    let mut dones = Vec::new();
    let mut tasks = Vec::new();
    for p in 0..config.producers {
        tasks.push(tokio::spawn(produce(log.clone(), config, p)));
    }
    for group in GROUPS {
        let done = Arc::new(AtomicU64::new(0));
        dones.push(done.clone());
        for c in 0..config.consumers_per_group {
            tasks.push(tokio::spawn(consume(
                log.clone(),
                config,
                group,
                c,
                history.clone(),
                done.clone(),
            )));
        }
    }
    let started = std::time::Instant::now();
    // A trimmer runs all along, reclaiming what both groups acked.
    let trimmer = {
        let (log, dones) = (log.clone(), dones.clone());
        tokio::spawn(async move {
            let queue = open_as(log, "trimmer").await.unwrap();
            let mut every = tokio::time::interval(Duration::from_millis(50));
            let mut rounds = 0u64;
            while dones
                .iter()
                .any(|d| d.load(Ordering::SeqCst) < config.messages)
            {
                every.tick().await;
                queue.trim().await.unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    // A lost message would keep its group's consumers waiting: give up after a while and
    // say how far each group got.
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .is_err()
    {
        let done: Vec<u64> = dones.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        panic!("consumers still waiting after 120 s; processed per group: {done:?}");
    }
    let rounds = trimmer.await.unwrap();
    let left: u64 = {
        let queue = open_as(log.clone(), "audit").await.unwrap();
        queue.trim().await.unwrap();
        queue.trim().await.unwrap();
        queue.len().await.unwrap()
    };
    println!("{rounds} trims; {left} messages left after two more");
    assert_eq!(left, 0);
    println!("ran in {:?}", started.elapsed());
    Arc::try_unwrap(history).ok().unwrap().into_inner().unwrap()
}

/// What the history breaks of Q-1's claims, in words (empty: nothing).
fn check(history: &History, config: Config) -> Vec<String> {
    let mut broken = Vec::new();
    let expected: BTreeSet<String> = (0..config.messages).map(|i| format!("m{i:05}")).collect();
    for group in GROUPS {
        // Exactly once: each message processed once, none unknown, none missing.
        let processed = history.processed.get(group).cloned().unwrap_or_default();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (data, _) in &processed {
            *counts.entry(data).or_default() += 1;
        }
        for (data, n) in &counts {
            if *n > 1 {
                broken.push(format!("{group}: {data} processed {n} times"));
            }
            if !expected.contains(*data) {
                broken.push(format!("{group}: {data} was never pushed"));
            }
        }
        let missing = expected
            .iter()
            .filter(|d| !counts.contains_key(d.as_str()))
            .count();
        if missing > 0 {
            broken.push(format!("{group}: {missing} messages never processed"));
        }
        // One delivery at a time: a message's next delivery (by receipt) returns no earlier
        // than the previous one's pop began plus the timeout; none begins after its ack.
        let acked_ms: BTreeMap<&str, u64> =
            processed.iter().map(|(d, ms)| (d.as_str(), *ms)).collect();
        let mut by_message: BTreeMap<_, BTreeMap<_, &Seen>> = BTreeMap::new();
        for seen in history.seen.get(group).into_iter().flatten() {
            by_message
                .entry(seen.delivery.id)
                .or_default()
                .insert(seen.delivery.receipt, seen);
        }
        for deliveries in by_message.values() {
            let list: Vec<&&Seen> = deliveries.values().collect();
            for pair in list.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if b.returned_ms < a.started_ms + config.visibility_ms {
                    broken.push(format!(
                        "{group}: {} delivered again {} ms after a delivery began, before its timeout",
                        b.delivery.id,
                        b.returned_ms.saturating_sub(a.started_ms)
                    ));
                }
            }
            for seen in &list {
                let data = std::str::from_utf8(&seen.delivery.data).unwrap();
                if acked_ms.get(data).is_some_and(|ms| seen.started_ms > *ms) {
                    broken.push(format!(
                        "{group}: {} delivered after it was acked",
                        seen.delivery.id
                    ));
                }
            }
        }
        // FIFO per shard: first deliveries, in receipt order, follow the pushes' order.
        let mut firsts: BTreeMap<u32, BTreeMap<_, _>> = BTreeMap::new();
        for seen in history.seen.get(group).into_iter().flatten() {
            if seen.delivery.deliveries == 1 {
                firsts
                    .entry(seen.delivery.id.shard)
                    .or_default()
                    .insert(seen.delivery.receipt, seen.delivery.id.seqnum);
            }
        }
        for (shard, list) in firsts {
            let order: Vec<_> = list.values().collect();
            if order.windows(2).any(|w| w[0] >= w[1]) {
                broken.push(format!(
                    "{group}: shard {shard} first deliveries out of FIFO order"
                ));
            }
        }
    }
    broken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q1_every_message_is_processed_once_per_group_despite_crashes() {
    let config = Config {
        messages: std::env::var("Q1_MESSAGES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000),
        producers: 8,
        consumers_per_group: 4,
        visibility_ms: 300,
        crashes: true,
        fault: false,
        seed: seed(14),
    };
    let history = run(config).await;
    let redelivered = history
        .seen
        .values()
        .flatten()
        .filter(|s| s.delivery.deliveries > 1)
        .count();
    println!("redeliveries: {redelivered}");
    let broken = check(&history, config);
    assert!(broken.is_empty(), "{:#?}", &broken[..broken.len().min(20)]);
    assert!(redelivered > 0, "crashes mid-message made redeliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_pop_that_takes_a_message_still_in_flight() {
    let config = Config {
        messages: 500,
        producers: 2,
        consumers_per_group: 4,
        visibility_ms: 300,
        crashes: false,
        fault: true,
        seed: seed(14),
    };
    // The checker has nothing to say about the right pop in the same world (appends delayed
    // at random, so pops overlap in flight) ...
    let right = Config {
        fault: false,
        ..config
    };
    let broken = check(&run(right).await, right);
    assert!(broken.is_empty(), "{broken:?}");
    // ... and catches the wrong one.
    let history = run(config).await;
    let broken = check(&history, config);
    assert!(
        broken.iter().any(|b| b.contains("before its timeout")),
        "the wrong pop went unnoticed: {broken:?}"
    );
}
