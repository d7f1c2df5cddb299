//! Exactly-once workflows against the in-memory log: a crash at every append (before and
//! after the log takes it) in each protocol (EO-1, EO-4, EO-5, EO-6), concurrent duplicate
//! executions (EO-2), re-drive and resubmission (EO-3), sagas with crashes during the
//! compensation (SG-1, SG-2), the appends each table operation costs, non-determinism and
//! `version`, and a protocol switch under load.

mod common;

use common::{crash_and_redrive, outside, run_in, send_signal, wait_ended, Children, Crash};
use libflow::{Error, Flow, Protocol, Status, Workflows};
use logbook::memory::MemoryLogBook;
use logbook::LogBook as _;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A workflow that mixes table reads and writes, a sync and an async call, a child workflow,
/// a timer, a signal, a step and a random number.
async fn mixed(flow: Flow, _input: Value) -> Result<Value, Error> {
    let accounts = flow.table("accounts");
    let before: u64 = accounts.get("a").await?.unwrap_or(0);
    accounts.put("a", &(before + 10)).await?;
    let charged: Value = flow.call("charge", &json!({ "amount": 10 })).await?;
    let job = flow.call_async("notify", &json!({ "to": "a" })).await?;
    let settled: Value = flow.child("settle", &json!({ "amount": 5 })).await?;
    flow.sleep(Duration::from_millis(5)).await?;
    let approval: Value = flow.wait_signal("approve").await?;
    let doubled = accounts
        .update("a", |v: Option<u64>| v.unwrap_or(0) * 2)
        .await?;
    let stamp: u64 = flow.step("stamp", || async { Ok(7u64) }).await?;
    accounts.put("b", &1).await?;
    accounts.put("b", &2).await?;
    accounts.delete("gone").await?;
    let b: Option<u64> = accounts.get("b").await?;
    let lucky = flow.random().await?;
    Ok(json!({
        "before": before, "charged": charged, "job": job, "approval": approval,
        "doubled": doubled, "stamp": stamp, "b": b, "lucky": lucky, "settled": settled,
    }))
}

/// `mixed`'s child: a table write and a call of its own.
async fn settle(flow: Flow, input: Value) -> Result<Value, Error> {
    let amount = input["amount"].as_u64().unwrap_or(0);
    let accounts = flow.table("accounts");
    let c = accounts
        .update("c", |v: Option<u64>| v.unwrap_or(0) + amount)
        .await?;
    let charged: Value = flow.call("charge", &json!({ "amount": amount })).await?;
    Ok(json!({ "c": c, "charged": charged }))
}

/// Reads the table's keys (a new instance after the others).
async fn peek(flow: Flow, _input: Value) -> Result<Value, Error> {
    let accounts = flow.table("accounts");
    Ok(json!({
        "a": accounts.get::<u64>("a").await?,
        "b": accounts.get::<u64>("b").await?,
        "c": accounts.get::<u64>("c").await?,
    }))
}

fn workflows(protocol: Protocol) -> Workflows {
    let mut w = Workflows::new();
    w.register("mixed", mixed)
        .register("peek", peek)
        .register("settle", settle);
    w.set_protocol("accounts", protocol);
    w
}

fn children() -> Children {
    let c = Children::default();
    c.add("charge", |input| Ok(json!({ "charged": input["amount"] })));
    c.add("notify", |_| Ok(json!("sent")));
    c
}

/// Sends `approve` to instance `id` of `mixed` once it has started, as the gateway does.
fn approve_when_started(
    w: &Workflows,
    log: &Arc<MemoryLogBook>,
    kids: &Children,
    id: &str,
) -> tokio::task::JoinHandle<()> {
    let (w, log, kids, id) = (w.clone(), log.clone(), kids.clone(), id.to_string());
    tokio::spawn(async move {
        let payload = json!({ "by": "ops" });
        send_signal(&w, &log, &kids, "mixed", &id, "approve", payload).await
    })
}

/// The shape of an instance's history: (op, name) per position.
async fn shape(log: &Arc<MemoryLogBook>, id: &str) -> Vec<(u64, String, Option<String>)> {
    let instance = libflow::describe(&outside(log), id).await.unwrap().unwrap();
    instance
        .steps
        .into_iter()
        .map(|s| (s.position, s.op, s.name))
        .collect()
}

/// The id of instance `id`'s child, from the parent's history.
async fn child_of(log: &Arc<MemoryLogBook>, id: &str) -> String {
    let instance = libflow::describe(&outside(log), id).await.unwrap().unwrap();
    let step = instance.steps.iter().find(|s| s.op == "child").unwrap();
    let name = step.name.as_deref().unwrap();
    let (_, child) = name.split_once(' ').unwrap();
    let child_instance = libflow::describe(&outside(log), child)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child_instance.parent.as_deref(), Some(id));
    assert_eq!(child_instance.status, Status::Succeeded);
    child.to_string()
}

async fn check_mixed(protocol: Protocol) {
    let w = workflows(protocol);
    // The failure-free run, and how many appends it makes.
    let log = Arc::new(MemoryLogBook::new());
    let kids = children();
    let signal = approve_when_started(&w, &log, &kids, "m");
    let (clean, appends) = crash_and_redrive(&w, &log, &kids, None, "mixed", "m", json!({})).await;
    signal.await.unwrap();
    assert_eq!(clean.status, Status::Succeeded, "{clean:?}");
    let clean_shape = shape(&log, "m").await;
    let child = child_of(&log, "m").await;
    let clean_child_shape = shape(&log, &child).await;
    assert_eq!(
        clean_child_shape.last().map(|s| s.1.as_str()),
        Some("end"),
        "the parent's record of the child ends the child's stream: {clean_child_shape:?}"
    );
    let output = clean.output.clone().unwrap();
    assert_eq!(output["doubled"], 20);
    assert_eq!(output["b"], 2);
    assert!(appends >= 4, "{protocol:?}: {appends} appends");
    let mut points = 0;
    for n in 0..appends {
        for crash in [Crash::Before(n), Crash::After(n)] {
            let log = Arc::new(MemoryLogBook::new());
            let kids = children();
            let signal = approve_when_started(&w, &log, &kids, "m");
            let (ended, _) =
                crash_and_redrive(&w, &log, &kids, Some(crash), "mixed", "m", json!({})).await;
            signal.await.unwrap();
            let mut got = ended.output.clone().unwrap_or_default();
            // The random number is the one the crashed run drew, or a new one if it died
            // before logging it: anything, as long as a replay keeps it (checked below).
            got["lucky"] = output["lucky"].clone();
            assert_eq!(
                ended.status,
                Status::Succeeded,
                "{protocol:?} {crash:?}: {ended:?}"
            );
            assert_eq!(got, output, "{protocol:?} {crash:?}");
            // Once by the instance, once by its child.
            assert_eq!(
                kids.runs_of("charge"),
                2,
                "{protocol:?} {crash:?}: charge ran"
            );
            assert_eq!(
                kids.runs_of("notify"),
                1,
                "{protocol:?} {crash:?}: notify ran"
            );
            assert_eq!(
                shape(&log, "m").await,
                clean_shape,
                "{protocol:?} {crash:?}"
            );
            assert_eq!(
                shape(&log, &child).await,
                clean_child_shape,
                "{protocol:?} {crash:?}: the child's history"
            );
            // Every table write took effect once.
            let (peeked, _) = run_in(&w, &log, &kids, None, "peek", "p", json!({})).await;
            assert_eq!(
                peeked.unwrap().output.unwrap(),
                json!({ "a": 20, "b": 2, "c": 5 })
            );
            // Resubmitting the finished instance answers its result and runs nothing (EO-3).
            let (again, _) = run_in(&w, &log, &kids, None, "mixed", "m", json!({})).await;
            assert_eq!(again.unwrap(), ended);
            assert_eq!(kids.runs_of("charge"), 2);
            points += 1;
        }
    }
    assert_eq!(points, 2 * appends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_append_changes_nothing_in_the_symmetric_protocol() {
    check_mixed(Protocol::Symmetric).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_append_changes_nothing_in_the_write_log_protocol() {
    check_mixed(Protocol::WriteLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_append_changes_nothing_in_the_read_log_protocol() {
    check_mixed(Protocol::ReadLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_executions_of_one_instance_give_one_result_and_one_set_of_effects() {
    for protocol in [Protocol::Symmetric, Protocol::WriteLog, Protocol::ReadLog] {
        let w = workflows(protocol);
        let log = Arc::new(MemoryLogBook::new());
        let kids = children();
        let signal = approve_when_started(&w, &log, &kids, "d");
        let runs = (0..3).map(|_| run_in(&w, &log, &kids, None, "mixed", "d", json!({})));
        let results = futures::future::join_all(runs).await;
        signal.await.unwrap();
        let first = results[0].0.clone().unwrap();
        assert_eq!(first.status, Status::Succeeded, "{protocol:?}: {first:?}");
        for (ended, _) in &results {
            assert_eq!(ended.as_ref(), Some(&first), "{protocol:?}");
        }
        assert_eq!(kids.runs_of("charge"), 2, "{protocol:?}");
        let (peeked, _) = run_in(&w, &log, &kids, None, "peek", "p", json!({})).await;
        assert_eq!(
            peeked.unwrap().output.unwrap(),
            json!({ "a": 20, "b": 2, "c": 5 })
        );
    }
}

/// A workflow of `reads` reads or `writes` writes of one key.
async fn table_ops(flow: Flow, input: Value) -> Result<u64, Error> {
    let t = flow.table("t");
    for i in 0..input["writes"].as_u64().unwrap() {
        t.put("k", &i).await?;
    }
    for _ in 0..input["reads"].as_u64().unwrap() {
        t.get::<u64>("k").await?;
    }
    Ok(0)
}

#[tokio::test]
async fn each_protocol_logs_what_its_table_says() {
    // Appends per operation: (protocol, per read, per write).
    let expected = [
        (Protocol::Symmetric, 1, 1),
        (Protocol::WriteLog, 0, 1),
        (Protocol::ReadLog, 1, 0),
    ];
    for (protocol, per_read, per_write) in expected {
        let mut w = Workflows::new();
        w.register("ops", table_ops);
        w.set_protocol("t", protocol);
        let kids = Children::default();
        let appends = |reads: u64, writes: u64| {
            let w = w.clone();
            let kids = kids.clone();
            async move {
                let log = Arc::new(MemoryLogBook::new());
                let input = json!({ "reads": reads, "writes": writes });
                let (ended, _) = run_in(&w, &log, &kids, None, "ops", "i", input).await;
                assert_eq!(ended.unwrap().status, Status::Succeeded);
                // The records that landed (an append that overtook the one before it and was
                // tried again counts once).
                let all = logbook::ReadRange {
                    from: logbook::Seqnum(0),
                    to: logbook::Seqnum::MAX,
                    limit: 10_000,
                };
                log.read_range(common::BOOK, logbook::Tag::ANY, all)
                    .await
                    .unwrap()
                    .len() as u64
            }
        };
        let base = appends(0, 0).await;
        assert_eq!(base, 2, "start and end");
        let reads = appends(0, 0).await.abs_diff(appends(10, 0).await) / 10;
        let writes = appends(0, 0).await.abs_diff(appends(0, 10).await) / 10;
        println!("{:>9}: read {reads}, write {writes}", protocol.name());
        assert_eq!((reads, writes), (per_read, per_write), "{protocol:?}");
    }
}

/// Calls `children` child instances of `empty`, one after the other.
async fn parent(flow: Flow, input: Value) -> Result<u64, Error> {
    let mut sum = 0;
    for i in 0..input["children"].as_u64().unwrap() {
        sum += flow.child::<u64>("empty", &json!({ "n": i })).await?;
    }
    Ok(sum)
}

async fn empty(_flow: Flow, input: Value) -> Result<u64, Error> {
    Ok(input["n"].as_u64().unwrap())
}

#[tokio::test]
async fn a_child_workflow_costs_its_start_and_one_record_of_its_end_in_both_streams() {
    let mut w = Workflows::new();
    w.register("parent", parent).register("empty", empty);
    let kids = Children::default();
    let records = |children: u64| {
        let (w, kids) = (w.clone(), kids.clone());
        async move {
            let log = Arc::new(MemoryLogBook::new());
            let input = json!({ "children": children });
            let (ended, _) = run_in(&w, &log, &kids, None, "parent", "p", input).await;
            let ended = ended.unwrap();
            assert_eq!(ended.status, Status::Succeeded);
            assert_eq!(ended.output.unwrap(), json!((0..children).sum::<u64>()));
            let all = logbook::ReadRange {
                from: logbook::Seqnum(0),
                to: logbook::Seqnum::MAX,
                limit: 10_000,
            };
            let n = log
                .read_range(common::BOOK, logbook::Tag::ANY, all)
                .await
                .unwrap()
                .len() as u64;
            (n, log)
        }
    };
    let (base, _) = records(0).await;
    assert_eq!(base, 2, "the parent's start and end");
    let (with, log) = records(10).await;
    assert_eq!(
        (with - base) / 10,
        2,
        "per child: its start, and its end in the parent's slot"
    );
    // The parent's record of a child is the child's last record: one record, in both streams.
    let ctx = outside(&log);
    let p = libflow::describe(&ctx, "p").await.unwrap().unwrap();
    let calls: Vec<_> = p.steps.iter().filter(|s| s.op == "child").collect();
    assert_eq!(calls.len(), 10);
    for call in calls {
        let id = call.name.as_deref().unwrap().split_once(' ').unwrap().1;
        let child = libflow::describe(&ctx, id).await.unwrap().unwrap();
        assert_eq!(child.status, Status::Succeeded);
        assert_eq!(child.parent.as_deref(), Some("p"));
        let end = child.steps.last().unwrap();
        assert_eq!((end.op.as_str(), end.seqnum), ("end", call.seqnum), "{id}");
    }
    // A call of something that is not a workflow fails the call, not the child's stream.
    async fn bad(flow: Flow, _input: Value) -> Result<Value, Error> {
        flow.child::<Value>("charge", &json!({})).await
    }
    w.register("bad", bad);
    let kids = children();
    let log = Arc::new(MemoryLogBook::new());
    let (ended, _) = run_in(&w, &log, &kids, None, "bad", "b", json!({})).await;
    let ended = ended.unwrap();
    assert_eq!(ended.status, Status::Failed);
    assert!(ended.error.unwrap().contains("not a workflow"));
    assert!(libflow::describe(&outside(&log), "b:1")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_waits_for_its_signal_in_its_parents_execution() {
    async fn outer(flow: Flow, _input: Value) -> Result<Value, Error> {
        flow.child::<Value>("inner", &json!({})).await
    }
    async fn inner(flow: Flow, _input: Value) -> Result<Value, Error> {
        flow.wait_signal("go").await
    }
    let mut w = Workflows::new();
    w.register("outer", outer).register("inner", inner);
    // Even a wait this short would give up a root instance's task.
    w.set_suspend_after(Duration::from_millis(1));
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    let run = {
        let (w, log, kids) = (w.clone(), log.clone(), kids.clone());
        tokio::spawn(async move {
            run_in(&w, &log, &kids, None, "outer", "o", json!({}))
                .await
                .0
        })
    };
    // Delivered as the gateway delivers any signal: the delivery drives nothing, the
    // parent's execution takes it.
    send_signal(&w, &log, &kids, "inner", "o:1", "go", json!("went")).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the parent ends")
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, Status::Succeeded, "{ended:?}");
    assert_eq!(ended.output.unwrap(), json!("went"));
}

async fn v1(flow: Flow, _input: Value) -> Result<&'static str, Error> {
    flow.step("a", || async { Ok(1) }).await?;
    flow.step("b", || async { Ok(2) }).await?;
    Ok("v1")
}

async fn v2_diverges(flow: Flow, _input: Value) -> Result<&'static str, Error> {
    flow.step("a", || async { Ok(1) }).await?;
    flow.step("c", || async { Ok(3) }).await?;
    Ok("v2")
}

async fn v2_versioned(flow: Flow, _input: Value) -> Result<String, Error> {
    flow.step("a", || async { Ok(1) }).await?;
    let version = flow.version("add-c", 1).await?;
    if version >= 1 {
        flow.step("c", || async { Ok(3) }).await?;
    }
    flow.step("b", || async { Ok(2) }).await?;
    Ok(format!("v2 at version {version}"))
}

#[tokio::test]
async fn changed_code_that_diverges_from_the_history_fails_with_a_non_determinism_error() {
    let kids = Children::default();
    let log = Arc::new(MemoryLogBook::new());
    let mut old = Workflows::new();
    old.register("w", v1);
    // The old code logs its start and steps a and b, then the process dies.
    let (ended, _) = run_in(
        &old,
        &log,
        &kids,
        Some(Crash::After(2)),
        "w",
        "x",
        json!({}),
    )
    .await;
    assert!(ended.is_none());
    let mut new = Workflows::new();
    new.register("w", v2_diverges);
    let (ended, _) = run_in(&new, &log, &kids, None, "w", "x", json!({})).await;
    let ended = ended.unwrap();
    assert_eq!(ended.status, Status::Failed);
    let error = ended.error.unwrap();
    assert!(
        error.contains("non-determinism")
            && error.contains("step \"b\"")
            && error.contains("step \"c\""),
        "{error}"
    );

    // With `version`, the new code finishes the old instance the old way, and runs new ones
    // the new way.
    let log = Arc::new(MemoryLogBook::new());
    let (ended, _) = run_in(
        &old,
        &log,
        &kids,
        Some(Crash::After(2)),
        "w",
        "y",
        json!({}),
    )
    .await;
    assert!(ended.is_none());
    let mut versioned = Workflows::new();
    versioned.register("w", v2_versioned);
    let (old_one, _) = run_in(&versioned, &log, &kids, None, "w", "y", json!({})).await;
    assert_eq!(old_one.unwrap().output.unwrap(), "v2 at version 0");
    let (new_one, _) = run_in(&versioned, &log, &kids, None, "w", "z", json!({})).await;
    assert_eq!(new_one.unwrap().output.unwrap(), "v2 at version 1");
    let (again, _) = run_in(&versioned, &log, &kids, None, "w", "z", json!({})).await;
    assert_eq!(again.unwrap().output.unwrap(), "v2 at version 1");
}

/// A trip: reserve a flight, a hotel and a car in parallel, each undone by a cancel if the
/// trip fails.
async fn trip(flow: Flow, input: Value) -> Result<Value, Error> {
    let fail = input["fail"].as_str().unwrap_or("").to_string();
    let reserve = |what: &str| {
        let request = json!({ "what": what, "fail": fail == what });
        flow.call::<Value>(&format!("reserve_{what}"), &request)
            .compensate_with_call(&format!("cancel_{what}"), &json!({ "what": what }))
    };
    let results = flow
        .join_all([reserve("flight"), reserve("hotel"), reserve("car")])
        .await;
    let mut booked: Vec<Value> = Vec::new();
    for r in results {
        booked.push(r?);
    }
    Ok(json!(booked))
}

fn travel_children() -> Children {
    let c = Children::default();
    for what in ["flight", "hotel", "car"] {
        c.add(&format!("reserve_{what}"), |input| {
            if input["fail"] == true {
                Err(format!("no {} left", input["what"].as_str().unwrap()))
            } else {
                Ok(json!({ "booked": input["what"] }))
            }
        });
        c.add(&format!("cancel_{what}"), |input| {
            Ok(json!({ "cancelled": input["what"] }))
        });
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reservation_compensates_exactly_the_ones_that_succeeded_even_across_crashes() {
    let mut w = Workflows::new();
    w.register("trip", trip);
    let all = ["flight", "hotel", "car"];
    for fail in all {
        let input = json!({ "fail": fail });
        // A failure-free run gives the number of appends to crash at.
        let log = Arc::new(MemoryLogBook::new());
        let (clean, appends) = crash_and_redrive(
            &w,
            &log,
            &travel_children(),
            None,
            "trip",
            "t",
            input.clone(),
        )
        .await;
        assert_eq!(clean.status, Status::Compensated, "{clean:?}");
        for crash in (0..appends).flat_map(|n| [Some(Crash::Before(n)), Some(Crash::After(n))]) {
            let log = Arc::new(MemoryLogBook::new());
            let kids = travel_children();
            let (ended, _) =
                crash_and_redrive(&w, &log, &kids, crash, "trip", "t", input.clone()).await;
            assert_eq!(ended.status, Status::Compensated, "{fail} {crash:?}");
            assert!(ended.error.unwrap().contains(&format!("no {fail} left")));
            for what in all {
                let cancels = kids.runs_of(&format!("cancel_{what}"));
                let expected = usize::from(what != fail);
                assert_eq!(cancels, expected, "fail {fail}, {crash:?}: cancel_{what}");
                assert_eq!(kids.runs_of(&format!("reserve_{what}")), 1);
            }
            // Newest first: the compensations run in the reverse order of the reservations.
            let runs = kids.runs.lock().unwrap().clone();
            let cancels: Vec<&str> = runs
                .iter()
                .filter(|(n, _)| n.starts_with("cancel_"))
                .map(|(_, i)| i["what"].as_str().unwrap())
                .collect();
            let mut expected: Vec<&str> = all.iter().copied().filter(|w| *w != fail).collect();
            expected.reverse();
            assert_eq!(cancels, expected, "fail {fail}, {crash:?}");
        }
    }
    // Nothing fails: nothing is compensated.
    let log = Arc::new(MemoryLogBook::new());
    let kids = travel_children();
    let (ended, _) = run_in(&w, &log, &kids, None, "trip", "ok", json!({})).await;
    assert_eq!(ended.unwrap().status, Status::Succeeded);
    assert!(kids
        .runs
        .lock()
        .unwrap()
        .iter()
        .all(|(n, _)| n.starts_with("reserve_")));
}

/// `steps` as `tally up` serves it: N increments of a per-instance counter.
async fn counter(flow: Flow, input: Value) -> Result<u64, Error> {
    let counters = flow.table("counters");
    let id = flow.id().to_string();
    for _ in 0..input["steps"].as_u64().unwrap() {
        counters
            .update(&id, |n: Option<u64>| n.unwrap_or(0) + 1)
            .await?;
    }
    Ok(counters.get(&id).await?.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_tables_protocol_under_load_keeps_every_instance_exactly_once() {
    let mut w = Workflows::new();
    w.register("counter", counter);
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    let switcher = {
        let w = w.clone();
        tokio::spawn(async move {
            let protocols = [Protocol::ReadLog, Protocol::Symmetric, Protocol::WriteLog];
            for i in 0..200 {
                w.set_protocol("counters", protocols[i % 3]);
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        })
    };
    let instances = (0..60u64).map(|i| {
        let (w, log, kids) = (w.clone(), log.clone(), kids.clone());
        tokio::spawn(async move {
            // Some crash part way; all are driven to the end.
            let crash = (i % 3 == 0).then_some(Crash::After(3 + i % 7));
            let id = format!("c{i}");
            let input = json!({ "steps": 8 });
            crash_and_redrive(&w, &log, &kids, crash, "counter", &id, input).await
        })
    });
    for instance in futures::future::join_all(instances).await {
        let (ended, _) = instance.unwrap();
        assert_eq!(ended.status, Status::Succeeded);
        assert_eq!(ended.output.unwrap(), 8);
    }
    switcher.await.unwrap();
}

#[tokio::test]
async fn a_signal_sent_before_the_wait_is_kept_for_it_and_each_is_taken_once() {
    async fn two(flow: Flow, _input: Value) -> Result<Vec<u64>, Error> {
        flow.sleep(Duration::from_millis(20)).await?;
        let a: u64 = flow.wait_signal("n").await?;
        let b: Option<u64> = flow
            .wait_signal_timeout("n", Duration::from_secs(5))
            .await?;
        let c: Option<u64> = flow
            .wait_signal_timeout("n", Duration::from_millis(10))
            .await?;
        Ok(vec![a, b.unwrap_or(0), c.unwrap_or(0)])
    }
    let mut w = Workflows::new();
    w.register("two", two);
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    let run = {
        let (w, log, kids) = (w.clone(), log.clone(), kids.clone());
        tokio::spawn(async move { run_in(&w, &log, &kids, None, "two", "s", json!({})).await.0 })
    };
    // Both signals go out while the instance sleeps, before either wait.
    let ctx = outside(&log);
    loop {
        match libflow::signal(&ctx, "s", "n", json!(1)).await {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    libflow::signal(&ctx, "s", "n", json!(2)).await.unwrap();
    let ended = run.await.unwrap().unwrap();
    assert_eq!(ended.output.unwrap(), json!([1, 2, 0]));
    // A signal to an instance that never started is refused.
    assert!(matches!(
        libflow::signal(&ctx, "nobody", "n", json!(1)).await,
        Err(libflow::SignalError::NoInstance(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_instance_gives_up_its_task_and_its_timer_or_signal_drives_it_on() {
    async fn waits(flow: Flow, _input: Value) -> Result<String, Error> {
        flow.sleep(Duration::from_millis(300)).await?;
        let word: String = flow.wait_signal("word").await?;
        let late: Option<String> = flow
            .wait_signal_timeout("late", Duration::from_millis(300))
            .await?;
        Ok(format!(
            "{word} {}",
            late.unwrap_or_else(|| "timed out".into())
        ))
    }
    let mut w = Workflows::new();
    w.register("waits", waits);
    w.set_suspend_after(Duration::from_millis(50));
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    // The first execution returns as soon as the timer is logged: the instance is suspended.
    let (first, _) = run_in(&w, &log, &kids, None, "waits", "w", json!({})).await;
    let first = first.unwrap();
    assert_eq!(first.status, Status::Running, "{first:?}");
    assert!(first.error.unwrap().contains("suspended"));
    // The signal is delivered while the instance sleeps (its invocation finds the timer not
    // due and gives up too); the timer's invocation drives the instance past the signal to
    // the wait that times out, where it suspends again until its own timer's invocation ends
    // it.
    send_signal(&w, &log, &kids, "waits", "w", "word", json!("hello")).await;
    let ended = wait_ended(&log, "w").await;
    assert_eq!(ended.output.unwrap(), "hello timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_gave_up_its_task_for_a_signal_shows_what_it_waits_for() {
    async fn go(flow: Flow, _input: Value) -> Result<String, Error> {
        let first: String = flow.wait_signal("go").await?;
        let second: Option<String> = flow
            .wait_signal_timeout("again", Duration::from_secs(3600))
            .await?;
        Ok(format!("{first} {second:?}"))
    }
    let mut w = Workflows::new();
    w.register("go", go);
    w.set_suspend_after(Duration::from_millis(50));
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    let waiting = |log: Arc<MemoryLogBook>| async move {
        libflow::describe(&outside(&log), "g")
            .await
            .unwrap()
            .unwrap()
            .waiting
    };
    let (first, _) = run_in(&w, &log, &kids, None, "go", "g", json!({})).await;
    assert_eq!(first.unwrap().status, Status::Running);
    assert_eq!(waiting(log.clone()).await.as_deref(), Some("signal \"go\""));
    send_signal(&w, &log, &kids, "go", "g", "go", json!("now")).await;
    // Driven on by the signal, it suspends again at the next wait, which has a timer too.
    let shown = waiting(log.clone()).await.unwrap_or_default();
    assert!(
        shown.starts_with("signal \"again\" or a timer until"),
        "{shown}"
    );
    send_signal(&w, &log, &kids, "go", "g", "again", json!("later")).await;
    let ended = wait_ended(&log, "g").await;
    assert_eq!(ended.output.unwrap(), "now Some(\"later\")");
    assert_eq!(
        waiting(log.clone()).await,
        None,
        "an ended instance waits for nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_instance_compensates_what_succeeded_once_and_ends_cancelled() {
    async fn order(flow: Flow, _input: Value) -> Result<Value, Error> {
        flow.call::<Value>("reserve_flight", &json!({ "what": "flight" }))
            .compensate_with_call("cancel_flight", &json!({ "what": "flight" }))
            .await?;
        flow.call::<Value>("reserve_hotel", &json!({ "what": "hotel" }))
            .compensate_with_call("cancel_hotel", &json!({ "what": "hotel" }))
            .await?;
        let _: Value = flow.wait_signal("pay").await?;
        flow.call::<Value>("reserve_car", &json!({ "what": "car" }))
            .await?;
        Ok(json!("done"))
    }
    let mut w = Workflows::new();
    w.register("order", order);
    let log = Arc::new(MemoryLogBook::new());
    let kids = travel_children();
    let (first, _) = run_in(&w, &log, &kids, None, "order", "o", json!({})).await;
    assert_eq!(
        first.unwrap().status,
        Status::Running,
        "suspended at the signal"
    );
    let cancel = libflow::cancel_input("o", json!({}));
    let (ended, _) = common::run_input(&w, &log, &kids, None, "order", cancel.clone()).await;
    let ended = ended.unwrap();
    assert_eq!(ended.status, Status::Cancelled, "{ended:?}");
    let runs: Vec<String> = kids
        .runs
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        runs,
        [
            "reserve_flight",
            "reserve_hotel",
            "cancel_hotel",
            "cancel_flight"
        ]
    );
    // Cancelling again, or a late signal, changes nothing.
    common::run_input(&w, &log, &kids, None, "order", cancel).await;
    send_signal(&w, &log, &kids, "order", "o", "pay", json!(1)).await;
    assert_eq!(wait_ended(&log, "o").await.status, Status::Cancelled);
    assert_eq!(kids.runs.lock().unwrap().len(), 4);
    // The list of instances shows it.
    let listed = libflow::list(&outside(&log), Some(Status::Cancelled), None, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].workflow.as_str()),
        ("o", "order")
    );
    assert!(
        libflow::list(&outside(&log), Some(Status::Succeeded), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_trims_ended_instances_and_the_versions_no_live_instance_reads() {
    async fn bump(flow: Flow, input: Value) -> Result<u64, Error> {
        let t = flow.table("t");
        if input["wait"] == true {
            let _: Value = flow.wait_signal("go").await?;
        }
        t.put(flow.id(), &1).await?;
        t.update("shared", |n: Option<u64>| n.unwrap_or(0) + 1)
            .await
    }
    let mut w = Workflows::new();
    w.register("bump", bump);
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    let ctx = outside(&log);
    for i in 0..20 {
        let (ended, _) = run_in(&w, &log, &kids, None, "bump", &format!("b{i}"), json!({})).await;
        assert_eq!(ended.unwrap().output.unwrap(), i + 1);
    }
    // One instance waits, started after b19: it may still read what was there at its start.
    let (waiting, _) = run_in(
        &w,
        &log,
        &kids,
        None,
        "bump",
        "waiter",
        json!({ "wait": true }),
    )
    .await;
    assert_eq!(waiting.unwrap().status, Status::Running);
    for i in 20..30 {
        run_in(&w, &log, &kids, None, "bump", &format!("b{i}"), json!({})).await;
    }
    let shared = |log: Arc<MemoryLogBook>| async move {
        let range = logbook::ReadRange {
            from: logbook::Seqnum(0),
            to: logbook::Seqnum::MAX,
            limit: 1000,
        };
        let tag = libflow::key_tag("t", "shared");
        log.read_range(common::BOOK, tag, range)
            .await
            .unwrap()
            .len()
    };
    assert_eq!(shared(log.clone()).await, 30);

    let first = libflow::collect(&ctx, Duration::ZERO).await.unwrap();
    assert_eq!((first.instances, first.kept), (30, 1), "{first:?}");
    assert!(libflow::describe(&ctx, "b3").await.unwrap().is_none());
    // The versions after the waiting instance's start stay, and the one it would read.
    assert_eq!(shared(log.clone()).await, 11);
    let listed = libflow::list(&ctx, None, None, 100).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "waiter");

    send_signal(&w, &log, &kids, "bump", "waiter", "go", json!(1)).await;
    assert_eq!(wait_ended(&log, "waiter").await.output.unwrap(), 31);
    let second = libflow::collect(&ctx, Duration::ZERO).await.unwrap();
    assert_eq!((second.instances, second.kept), (1, 0), "{second:?}");
    assert_eq!(
        shared(log.clone()).await,
        1,
        "only the newest version is left"
    );
    assert!(libflow::list(&ctx, None, None, 100)
        .await
        .unwrap()
        .is_empty());
    // Collecting again finds nothing; a collected id starts nothing again.
    assert_eq!(
        libflow::collect(&ctx, Duration::ZERO).await.unwrap(),
        Default::default()
    );
    let handler = w.handler("bump").unwrap();
    let again = handler(ctx.clone(), libflow::start_input("b3", json!({}))).await;
    assert!(again.unwrap_err().message.contains("collected"));
    assert_eq!(shared(log.clone()).await, 1);
    // A retention not yet over keeps what ended.
    run_in(&w, &log, &kids, None, "bump", "late", json!({})).await;
    let kept = libflow::collect(&ctx, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((kept.instances, kept.kept), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_suspends_while_a_branch_still_runs_ends_its_execution_at_once() {
    async fn branches(flow: Flow, _input: Value) -> Result<Value, Error> {
        let signal = async { flow.wait_signal::<Value>("go").await };
        let later = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flow.step("later", || async { Ok(2) }).await
        };
        let (signal, later) = futures::join!(signal, later);
        Ok(json!([signal?, later?]))
    }
    let mut w = Workflows::new();
    w.register("branches", branches);
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    // Without a signal the first execution suspends; the branch still running must not hold
    // it (it would wait for ever for the signal's position).
    let run = run_in(&w, &log, &kids, None, "branches", "j", json!({}));
    let (first, _) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the suspended execution ends");
    assert_eq!(first.unwrap().status, Status::Running);
    send_signal(&w, &log, &kids, "branches", "j", "go", json!(1)).await;
    assert_eq!(wait_ended(&log, "j").await.output.unwrap(), json!([1, 2]));
}
