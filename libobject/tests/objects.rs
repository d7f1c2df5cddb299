//! libobject's runtime over the in-memory log: gateways (each its own `Objects` and caches, a
//! log that can crash at a chosen append) calling objects of one package, one at a time per
//! object in log order, exactly once across crashes, races between gateways and retries.

mod common;

use common::*;
use libobject::{CallRequest, Error, HistoryEntry, ObjectRef, CALL_FUNCTION};
use logbook::crashing::CrashAt;
use logbook::{BookId, LogBook, LogError, Record, Seqnum, Tag};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
/// Checks that a counter's history is serial: calls in log order, each applied once on the
/// state the one before left (an `add` of `by` moves the value from v to v + by and answers
/// it). Returns the final value.
fn check_serial(history: &[HistoryEntry]) -> Result<i64, String> {
    let mut value = 0;
    let mut last_call = 0;
    for h in history {
        if h.call <= last_call {
            return Err(format!("call {} ran after call {last_call}", h.call));
        }
        last_call = h.call;
        if h.duplicate_of.is_some() || h.error.is_some() {
            if h.state.is_some() {
                return Err(format!("call {} changed the state without effect", h.call));
            }
            continue;
        }
        if h.method != "add" {
            if let Some(s) = &h.state {
                value = s["value"].as_i64().ok_or("a state without a value")?;
            }
            continue;
        }
        let by = h.input["by"].as_i64().ok_or("an add without by")?;
        let state = h
            .state
            .as_ref()
            .ok_or_else(|| format!("add {} left no state", h.call))?;
        let after = state["value"].as_i64().ok_or("a state without a value")?;
        if after != value + by || h.output.as_ref().map(|o| &o["value"]) != Some(&json!(after)) {
            return Err(format!(
                "call {}: add {by} on {value} left {after} and answered {:?}",
                h.call, h.output
            ));
        }
        value = after;
    }
    Ok(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_takes_calls_one_at_a_time_in_log_order() {
    let w = world();
    let (a, b) = (slow_gateway(&w, 1), slow_gateway(&w, 2));
    let mut tasks = Vec::new();
    // 32 callers over two gateways: both drive the object; only one done record lands at
    // each position.
    for client in 0..32 {
        let g = if client % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..12 {
                let out = g
                    .call("counter", "hot", "add", json!({"by": 1}))
                    .await
                    .unwrap();
                answers.push(out["value"].as_i64().unwrap());
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    answers.sort();
    assert_eq!(
        answers,
        (1..=384).collect::<Vec<_>>(),
        "each call saw its own value"
    );
    let h = history(&a, "counter", "hot").await;
    assert_eq!(h.len(), 384);
    assert_eq!(check_serial(&h), Ok(384));
    let got = b.call("counter", "hot", "get", Value::Null).await.unwrap();
    assert_eq!(got, json!({"value": 384}));
    let view = a
        .objects
        .inspect(&a.ctx(0), &ObjectRef::new("counter", "hot"))
        .await
        .unwrap();
    assert_eq!((view.calls, view.queued_total), (384, 0));
    assert_eq!(view.state, json!({"value": 384}));
    // One done record per position, whoever won it; calls queued while a done record was on
    // its way shared the next one.
    let range = logbook::ReadRange {
        from: Seqnum::ZERO,
        to: Seqnum::MAX,
        limit: 10_000,
    };
    let dones = w
        .log
        .read_range(BOOK, libobject::done_tag("counter", "hot"), range)
        .await
        .unwrap();
    let indexes: Vec<u64> = dones
        .iter()
        .map(|r| {
            let v = serde_json::from_slice::<Value>(&r.data).unwrap();
            // A done record's, or a fast record's done part's.
            v.get("done")
                .map_or(&v["index"], |d| &d["index"])
                .clone()
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(indexes, (0..dones.len() as u64).collect::<Vec<_>>());
    assert!(
        dones.len() < 384,
        "{} done records for 384 calls",
        dones.len()
    );
}

#[test]
fn the_serial_checker_catches_what_it_is_for() {
    let entry = |call: u64, by: i64, after: i64| HistoryEntry {
        call,
        method: "add".into(),
        input: json!({ "by": by }),
        caller: None,
        key: None,
        at_ms: 0,
        done: call + 100,
        done_at_ms: 0,
        output: Some(json!({ "value": after })),
        error: None,
        state: Some(json!({ "value": after })),
        duplicate_of: None,
        transaction: None,
    };
    let good = vec![entry(1, 1, 1), entry(2, 2, 3), entry(5, 1, 4)];
    assert_eq!(check_serial(&good), Ok(4));
    // A call applied twice, calls out of log order, a lost update, a duplicate with effect.
    let mut twice = good.clone();
    twice.insert(1, entry(1, 1, 1));
    let mut swapped = good.clone();
    swapped.swap(0, 1);
    let mut lost = good.clone();
    lost[1] = entry(2, 2, 2);
    let mut dup = good.clone();
    dup[1].duplicate_of = Some(1);
    for bad in [twice, swapped, lost, dup] {
        assert!(check_serial(&bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn a_gateway_that_dies_around_a_done_record_loses_nothing_and_applies_nothing_twice() {
    // A keyed call is logged first (append 0), then answered (append 1, its done record); a
    // call without a key on an idle object is one fast record (append 0).
    let cases = [
        (Some("k"), CrashAt::Before(1), 6),
        (Some("k"), CrashAt::After(1), 6),
        (Some("k"), CrashAt::After(0), 6),
        (None, CrashAt::After(0), 6),
        (None, CrashAt::Before(0), 1),
    ];
    for (key, crash, value) in cases {
        let w = world();
        let dying = gateway(&w, Some(crash));
        let request = CallRequest {
            call_key: key.map(str::to_string),
            ..CallRequest::new("counter", "c", "add", json!({"by": 5}))
        };
        assert!(dying.objects.call(&dying.ctx(0), request).await.is_err());
        let b = gateway(&w, None);
        let out = b
            .call("counter", "c", "add", json!({"by": 1}))
            .await
            .unwrap();
        assert_eq!(out, json!({ "value": value }), "{crash:?}");
        let h = history(&b, "counter", "c").await;
        assert_eq!(check_serial(&h), Ok(value), "{crash:?}");
        assert_eq!(h.len(), if value == 1 { 1 } else { 2 });
    }
}

#[tokio::test]
async fn keys_make_calls_once_and_duplicates_answer_the_first_outcome() {
    let w = world();
    let g = w.survivor();
    let keyed = |k: &str| CallRequest {
        call_key: Some(k.to_string()),
        ..CallRequest::new("counter", "k", "add", json!({"by": 3}))
    };
    let first = g.objects.call(&g.ctx(0), keyed("pay-1")).await.unwrap();
    let again = g.objects.call(&g.ctx(0), keyed("pay-1")).await.unwrap();
    // A fresh gateway (no cache) reads the first outcome from the log.
    let fresh = gateway(&w, None);
    let third = fresh
        .objects
        .call(&fresh.ctx(0), keyed("pay-1"))
        .await
        .unwrap();
    assert_eq!(
        (first.clone(), again, third),
        (
            json!({"value": 3}),
            json!({"value": 3}),
            json!({"value": 3})
        )
    );
    let other = g.objects.call(&g.ctx(0), keyed("pay-2")).await.unwrap();
    assert_eq!(other, json!({"value": 6}));
    let h = history(&g, "counter", "k").await;
    assert_eq!(h.len(), 4);
    assert_eq!(h[1].duplicate_of, Some(h[0].call));
    assert_eq!(h[2].duplicate_of, Some(h[0].call));
    assert_eq!(check_serial(&h), Ok(6));
    assert_eq!(w.runs("counter.add"), 2, "duplicates run nothing");
}

#[tokio::test]
async fn a_method_run_again_makes_its_calls_once() {
    let w = world();
    // Appends of the dying gateway: 0 f's call record, 1 t's call record, 2 t's done record,
    // 3 f's done record: it dies before f's done record, after t took the call.
    let dying = gateway(&w, Some(CrashAt::Before(3)));
    assert!(dying
        .call("counter", "f", "forward", json!({"key": "t"}))
        .await
        .is_err());
    let b = gateway(&w, None);
    // The next call of f runs the one left queued first, then its own.
    let out = b
        .call("counter", "f", "forward", json!({"key": "t"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"there": 2, "here": 2}));
    let t = history(&b, "counter", "t").await;
    assert_eq!(t.len(), 3, "{t:#?}");
    assert_eq!(
        t[1].duplicate_of,
        Some(t[0].call),
        "the re-run's call is a duplicate"
    );
    assert_eq!(check_serial(&t), Ok(2));
    assert_eq!(t[0].caller, Some(ObjectRef::new("counter", "f")));
    let f = history(&b, "counter", "f").await;
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].output, Some(json!({"there": 1, "here": 1})));
}

#[tokio::test]
async fn access_rules_refuse_calls_before_anything_is_logged() {
    let w = world();
    let g = w.survivor();
    g.call("counter", "a", "add", json!({"by": 7}))
        .await
        .unwrap();
    let tail = w.tail().await;
    for (m, caller) in [
        ("reset", None),
        ("reset", Some(ObjectRef::new("counter", "b"))),
        ("secret", None),
        ("secret", Some(ObjectRef::new("stranger", "s"))),
    ] {
        let request = CallRequest {
            caller,
            ..CallRequest::new("counter", "a", m, Value::Null)
        };
        let refused = g.objects.call(&g.ctx(0), request).await;
        assert!(
            matches!(refused, Err(Error::Forbidden(_))),
            "{m}: {refused:?}"
        );
    }
    assert_eq!(w.tail().await, tail, "refused calls appended something");
    // Internal: an object of the same package may call it; one of another package may not.
    let peeked = g
        .call("auditor", "x", "peek", json!({"key": "a"}))
        .await
        .unwrap();
    assert_eq!(peeked, json!({"value": 7}));
    let refused = g.call("stranger", "s", "peek", json!({"key": "a"})).await;
    assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    // Private: the object itself may, inside its own call.
    let cleared = g.call("counter", "a", "clear", Value::Null).await.unwrap();
    assert_eq!(cleared, json!({"before": 7, "after": 0}));
    let got = g.call("counter", "a", "get", Value::Null).await.unwrap();
    assert_eq!(got, json!({"value": 0}));
}

#[tokio::test]
async fn bad_states_shared_writes_and_call_cycles_fail_and_change_nothing() {
    let w = world();
    let g = w.survivor();
    g.call("counter", "s", "add", json!({"by": 2}))
        .await
        .unwrap();
    let corrupt = g.call("counter", "s", "corrupt", Value::Null).await;
    assert!(
        matches!(corrupt, Err(Error::Invalid(ref m)) if m.contains("not a integer") || m.contains("integer")),
        "{corrupt:?}"
    );
    let tail = w.tail().await;
    let sneak = g.call("counter", "s", "sneak", Value::Null).await;
    assert!(matches!(sneak, Err(Error::Invalid(_))), "{sneak:?}");
    assert_eq!(w.tail().await, tail, "a shared call appended something");
    // s.forward calls t.add; t.bounce calls its caller back: a cycle.
    let request = CallRequest::new("counter", "s", "bounce", Value::Null);
    let cycle = g
        .objects
        .call(
            &g.ctx(0),
            CallRequest {
                caller: Some(ObjectRef::new("counter", "s")),
                chain: vec![ObjectRef::new("counter", "s")],
                ..CallRequest::new("counter", "t", "bounce", Value::Null)
            },
        )
        .await;
    assert!(matches!(cycle, Err(Error::Reentrant(_))), "{cycle:?}");
    drop(request);
    let got = g.call("counter", "s", "get", Value::Null).await.unwrap();
    assert_eq!(got, json!({"value": 2}));
    let missing = g.call("counter", "s", "fly", Value::Null).await;
    assert!(
        matches!(missing, Err(Error::NoMethod { .. })),
        "{missing:?}"
    );
    let no_class = g.call("ghost", "s", "fly", Value::Null).await;
    assert!(matches!(no_class, Err(Error::NoClass(_))), "{no_class:?}");
    let h = history(&g, "counter", "s").await;
    assert_eq!(check_serial(&h), Ok(2));
}

#[tokio::test]
async fn messages_arrive_once_with_their_caller_and_delayed_ones_wait() {
    let w = world();
    let g = w.survivor();
    g.call("counter", "n", "notify", json!({"key": "m"}))
        .await
        .unwrap();
    let h = wait_for_calls(&g, "m", 1).await;
    assert_eq!(h[0].output, Some(json!({"caller": "counter/n"})));
    assert_eq!(h[0].caller, Some(ObjectRef::new("counter", "n")));
    let started = std::time::Instant::now();
    g.call("counter", "n", "later", json!({"key": "d"}))
        .await
        .unwrap();
    let h = wait_for_calls(&g, "d", 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h[0].state, Some(json!({"value": 10})));
    assert_eq!(w.runs(CALL_FUNCTION), 2, "each message ran once");
}

async fn wait_for_calls(g: &Gateway, key: &str, n: usize) -> Vec<HistoryEntry> {
    for _ in 0..500 {
        let h = history(g, "counter", key).await;
        if h.len() >= n {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{key} never got {n} calls");
}

#[tokio::test]
async fn a_cold_gateway_reads_an_object_from_its_newest_done_record() {
    let w = world();
    let g = w.survivor();
    for _ in 0..50 {
        g.call("counter", "cold", "add", json!({"by": 2}))
            .await
            .unwrap();
    }
    let fresh = gateway(&w, None);
    let out = fresh
        .call("counter", "cold", "add", json!({"by": 1}))
        .await
        .unwrap();
    assert_eq!(out, json!({"value": 101}));
    let seq = w.tail().await.unwrap();
    assert!(seq > Seqnum::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataflow_method_runs_its_steps_once_each_in_the_order_their_inputs_need() {
    let w = world();
    let g = w.survivor();
    g.call("account", "x", "deposit", json!({"amount": 10}))
        .await
        .unwrap();
    let request = |key: &str| CallRequest {
        call_key: Some(key.to_string()),
        ..CallRequest::new(
            "agent",
            "a1",
            "move",
            json!({"from": "x", "to": "y", "amount": 3}),
        )
    };
    let out = g.objects.call(&g.ctx(0), request("m1")).await.unwrap();
    assert_eq!(out, json!({"from": 7, "to": 3, "moved": 3, "audited": 7}));
    // The same key again: the same run, its steps not made again.
    let again = g.objects.call(&g.ctx(0), request("m1")).await.unwrap();
    assert_eq!(again, out);
    let balance = g
        .call("account", "x", "balance", Value::Null)
        .await
        .unwrap();
    assert_eq!(balance, json!({"balance": 7}));
    // `audit` used `out`'s output, so it ran after it; `out`, `in` and `count` ran at once.
    let audit = history(&g, "counter", "audit").await;
    let out_call = history(&g, "account", "x").await[1].call;
    assert!(audit[0].call > out_call);
    // A failing step ends the dataflow with its error.
    let broke = CallRequest::new(
        "agent",
        "a1",
        "move",
        json!({"from": "x", "to": "y", "amount": 100}),
    );
    let failed = g.objects.call(&g.ctx(0), broke).await;
    assert!(
        matches!(&failed, Err(Error::Failed(m)) if m.contains("step out") && m.contains("insufficient funds")),
        "{failed:?}"
    );
}

/// A log that, at its first conditional append, first appends another record: a call another
/// gateway logged just before.
struct Sneak {
    inner: Arc<dyn LogBook>,
    record: std::sync::Mutex<Option<(Vec<Tag>, bytes::Bytes)>>,
}

#[async_trait::async_trait]
impl LogBook for Sneak {
    async fn append(&self, b: BookId, t: &[Tag], d: bytes::Bytes) -> Result<Seqnum, LogError> {
        self.inner.append(b, t, d).await
    }
    async fn cond_append(
        &self,
        b: BookId,
        t: &[Tag],
        d: bytes::Bytes,
        c: logbook::Cond,
    ) -> Result<Seqnum, LogError> {
        let sneak = self.record.lock().unwrap().take();
        if let Some((tags, data)) = sneak {
            self.inner.append(b, &tags, data).await?;
        }
        self.inner.cond_append(b, t, d, c).await
    }
    async fn append_batch(
        &self,
        b: BookId,
        r: Vec<logbook::AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        self.inner.append_batch(b, r).await
    }
    async fn read_next(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        self.inner.read_next(b, t, s).await
    }
    async fn read_prev(&self, b: BookId, t: Tag, s: Seqnum) -> Result<Option<Record>, LogError> {
        self.inner.read_prev(b, t, s).await
    }
    async fn read_next_blocking(
        &self,
        b: BookId,
        t: Tag,
        s: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        self.inner.read_next_blocking(b, t, s, timeout).await
    }
    async fn set_aux_data(&self, b: BookId, s: Seqnum, aux: bytes::Bytes) -> Result<(), LogError> {
        self.inner.set_aux_data(b, s, aux).await
    }
    async fn trim(&self, b: BookId, t: Tag, below: Seqnum) -> Result<(), LogError> {
        self.inner.trim(b, t, below).await
    }
    async fn read_range(
        &self,
        b: BookId,
        t: Tag,
        r: logbook::ReadRange,
    ) -> Result<Vec<Record>, LogError> {
        self.inner.read_range(b, t, r).await
    }
}

#[tokio::test]
async fn a_call_on_an_idle_object_is_one_record_and_one_overtaken_waits_its_turn() {
    let w = world();
    let g = w.survivor();
    g.call("counter", "f", "add", json!({"by": 1}))
        .await
        .unwrap();
    let before = w.tail().await.unwrap();
    g.call("counter", "f", "add", json!({"by": 1}))
        .await
        .unwrap();
    let after = w.tail().await.unwrap();
    assert_eq!(
        after.0 - before.0,
        1,
        "one record for a call on an idle object"
    );

    // Another gateway's call record lands between what this gateway read and its fast
    // record: the fast record does not count as run; it waits behind that call.
    let call = json!({"kind": "call", "method": "add", "input": {"by": 1}, "at_ms": 0});
    let sneak = Arc::new(Sneak {
        inner: w.log.clone(),
        record: std::sync::Mutex::new(Some((
            vec![libobject::object_tag("counter", "o")],
            bytes::Bytes::from(call.to_string()),
        ))),
    });
    let plan = logbook::crashing::CrashPlan::new(None);
    let g2 = gateway_over(&w, plan, sneak);
    let out = g2
        .call("counter", "o", "add", json!({"by": 5}))
        .await
        .unwrap();
    assert_eq!(out, json!({"value": 6}), "the sneaked call ran first");
    let fresh = gateway(&w, None);
    let h = history(&fresh, "counter", "o").await;
    assert_eq!(check_serial(&h), Ok(6));
    let inputs: Vec<_> = h.iter().map(|c| c.input["by"].clone()).collect();
    assert_eq!(inputs, [json!(1), json!(5)]);
    let got = fresh
        .call("counter", "o", "get", Value::Null)
        .await
        .unwrap();
    assert_eq!(got, json!({"value": 6}));
}
