//! Running ahead of the log: an instance hands its records to the log without waiting for
//! each answer, but nothing that leaves the instance (an external step, a child call, the
//! reply) happens before every earlier record is in the log. The test world's appends reach
//! the log after a random delay, so records are on their way while the instance runs on.

mod common;

use common::{run_in, Children, BOOK};
use futures::executor::block_on;
use libflow::{steps_tag, Error, Flow, Protocol, Status, Workflows};
use logbook::memory::MemoryLogBook;
use logbook::{LogBook, ReadRange, Seqnum};
use serde_json::{json, Value};
use std::sync::Arc;

/// The records of instance `id`'s step stream that are in the log.
async fn in_log(log: &dyn LogBook, id: &str) -> u64 {
    let all = ReadRange {
        from: Seqnum(0),
        to: Seqnum::MAX,
        limit: 10_000,
    };
    log.read_range(BOOK, steps_tag(id), all)
        .await
        .unwrap()
        .len() as u64
}

/// Table writes and a random number (no waiting), then an external step and a child call,
/// each of which reports how many of the instance's records were in the log when it ran.
async fn ahead(flow: Flow, input: Value) -> Result<Value, Error> {
    let t = flow.table("t");
    let id = flow.id().to_string();
    t.put("a", &1).await?; // 1
    t.put("b", &2).await?; // 2
    let lucky = flow.random().await?; // 3
    let ctx = flow.ctx().clone();
    let step_saw: u64 = flow // 4
        .step("look", move || {
            let (ctx, id) = (ctx.clone(), id.clone());
            async move {
                let all = ReadRange {
                    from: Seqnum(0),
                    to: Seqnum::MAX,
                    limit: 10_000,
                };
                Ok(ctx.read_range(steps_tag(&id), all).await?.len() as u64)
            }
        })
        .await?;
    for i in 0..input["writes"].as_u64().unwrap_or(0) {
        t.put("c", &i).await?; // 5 ..
    }
    let child_saw: Value = flow.call("look", &json!({ "id": flow.id() })).await?;
    Ok(json!({ "step": step_saw, "child": child_saw, "lucky": lucky }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_leaves_an_instance_waits_for_every_record_before_it_and_the_rest_runs_ahead() {
    let log = Arc::new(MemoryLogBook::new());
    let kids = Children::default();
    {
        let log = log.clone();
        kids.add("look", move |input| {
            let id = input["id"].as_str().unwrap().to_string();
            Ok(json!(block_on(in_log(&*log, &id))))
        });
    }
    for protocol in [Protocol::Symmetric, Protocol::WriteLog, Protocol::ReadLog] {
        let mut w = Workflows::new();
        w.register("ahead", ahead);
        w.set_protocol("t", protocol);
        let writes = 20u64;
        let mut most_on_their_way = 0;
        for i in 0..10 {
            let id = format!("{}-{i}", protocol.name());
            let input = json!({ "writes": writes });
            let (ended, process) = run_in(&w, &log, &kids, None, "ahead", &id, input).await;
            let ended = ended.unwrap();
            assert_eq!(ended.status, Status::Succeeded, "{ended:?}");
            let output = ended.output.unwrap();
            // Start, two writes (or, in read-log, none: they ride on the next record) and
            // the random number are in the log before the step runs.
            let before_step = if protocol == Protocol::ReadLog { 2 } else { 4 };
            assert_eq!(output["step"], before_step, "{id}: {output}");
            // Then the step's record and, but in read-log, the writes' records.
            let before_child = before_step
                + 1
                + if protocol == Protocol::ReadLog {
                    0
                } else {
                    writes
                };
            assert_eq!(output["child"], before_child, "{id}: {output}");
            most_on_their_way = most_on_their_way.max(process.most_appends_on_their_way());
        }
        // The writes went to the log without waiting for each other (read-log's ride on
        // one record, so only the two protocols that log writes run ahead here).
        if protocol != Protocol::ReadLog {
            assert!(
                most_on_their_way > 1,
                "{protocol:?}: at most {most_on_their_way} append on its way at once"
            );
        }
    }
}
