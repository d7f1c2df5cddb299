//! The functions `tally up` ships: `echo`; `guestbook`, which appends tagged records and
//! reads them back by tag; `greet`, which greets by name; `welcome`, which calls `greet` and
//! waits for it, then signs the guestbook in the background (a nested sync and async call);
//! `sleep`, which takes as long as it is asked to (a stand-in for slow work); and the two that
//! `bench/compare-restate.sh` measures: `noop`, which answers its input without touching the
//! log, and `append3`, which appends three records one after the other. And the example
//! workflows (`workflows`): `steps`, which counts N steps in a table and appends a record in
//! each; `fanout`, which runs N `steps` instances at once as its children; `approval`, which
//! waits for a signal or a timeout; `travel`, a saga over `search`
//! and the `reserve_KIND`/`cancel_KIND` functions; and `writes`, N table writes in a chosen
//! protocol. And two over libstore's objects: `bank` (accounts and transfers, `bank.rs`) and
//! `retwis` (users, followers, posts and timelines, `retwis.rs`).

pub mod bank;
pub mod objects;
pub mod retwis;

use crate::functions::{Ctx, FunctionError, FunctionResult, Registry};
use bytes::Bytes;
use logbook::{ReadRange, Seqnum, Tag};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Registers every example function and workflow; returns the workflows (for their queries).
/// `bank` and `retwis` take each call's store from `stores`.
pub fn register(registry: &mut Registry, stores: &libstore::Stores) -> libflow::Workflows {
    registry.register("echo", |_ctx, input| async move { Ok(input) });
    registry.register("guestbook", guestbook);
    registry.register("greet", greet);
    registry.register("welcome", welcome);
    registry.register("sleep", sleep);
    registry.register("noop", noop);
    registry.register("append3", append3);
    registry.register("search", search);
    // Each call reads the views earlier calls (and the object routes) cached.
    let bank_stores = stores.clone();
    let stores = stores.clone();
    registry.register("bank", move |ctx, input| {
        bank::bank(bank_stores.of(ctx), input)
    });
    registry.register("retwis", move |ctx, input| {
        retwis::retwis(stores.of(ctx), input)
    });
    for kind in TRAVEL_RESOURCES {
        registry.register(&format!("reserve_{kind}"), move |ctx, input| {
            reserve(kind, ctx, input)
        });
        registry.register(&format!("cancel_{kind}"), move |ctx, input| {
            cancel(kind, ctx, input)
        });
    }
    let workflows = workflows();
    for name in workflows.names() {
        let handler = workflows.handler(&name).expect("a registered workflow");
        registry.register_with(&name, WORKFLOW_CONFIG, move |ctx, input| {
            handler(ctx, input)
        });
    }
    workflows
}

/// How a workflow's function runs: an instance may wait long (timers, signals), and an
/// execution that stopped on a log error is driven again: `libflow::WORKFLOW_LIMITS`, as a
/// worker gets them too.
pub const WORKFLOW_CONFIG: crate::functions::FunctionConfig = crate::functions::FunctionConfig {
    max_concurrency: libflow::WORKFLOW_LIMITS.max_concurrency as usize,
    timeout: libflow::WORKFLOW_LIMITS.timeout,
    retries: libflow::WORKFLOW_LIMITS.retries,
    backoff: libflow::WORKFLOW_LIMITS.backoff,
};

/// The example workflows `tally up` serves.
pub fn workflows() -> libflow::Workflows {
    let mut workflows = libflow::Workflows::new();
    workflows.register("steps", steps);
    workflows.register("fanout", fanout);
    workflows.register("approval", approval);
    workflows.register("travel", travel);
    workflows.register("writes", writes);
    workflows.with_schedules();
    libobject::register_sagas(&mut workflows);
    libobject::register_dataflows(&mut workflows);
    // How far a `steps` instance is: its counter as of its newest record.
    workflows.query("steps", "progress", |q: libflow::Query| async move {
        let count: Option<u64> = q.get("steps", &q.instance().id).await?;
        Ok(json!({ "count": count.unwrap_or(0), "status": q.instance().status }))
    });
    // Whether an `approval` still waits.
    workflows.query("approval", "waiting", |q: libflow::Query| async move {
        let waiting = q.instance().status == libflow::Status::Running;
        Ok(json!({ "waiting": waiting }))
    });
    for protocol in [
        libflow::Protocol::Symmetric,
        libflow::Protocol::WriteLog,
        libflow::Protocol::ReadLog,
    ] {
        workflows.set_protocol(&format!("writes-{}", protocol.name()), protocol);
        workflows.set_protocol(&format!("trips-{}", protocol.name()), protocol);
    }
    workflows
}

/// `{"steps": N, "protocol": "write-log"}` in: N steps, each one small durable write (a put of
/// its own key) to the table `writes-PROTOCOL`, which uses that protocol (`symmetric`,
/// `write-log` or `read-log`); `{"written": N}` out. What the workflow comparison measures in
/// each protocol.
async fn writes(
    flow: libflow::Flow,
    input: serde_json::Value,
) -> Result<serde_json::Value, libflow::Error> {
    let n = steps_of(&input)?;
    let protocol: libflow::Protocol = input["protocol"]
        .as_str()
        .unwrap_or("write-log")
        .parse()
        .map_err(libflow::Error::terminal)?;
    let table = flow.table(&format!("writes-{}", protocol.name()));
    let id = flow.id().to_string();
    for i in 0..n {
        table.put(&format!("{id}/{i}"), &i).await?;
    }
    Ok(json!({ "written": n }))
}

/// `{"timeout_s": N}` in: waits for the signal `approve` or N seconds, whichever comes first;
/// `{"approved": true, "by": <the signal's payload>}` or `{"approved": false}` out. While it
/// waits, the instance holds no task.
async fn approval(
    flow: libflow::Flow,
    input: serde_json::Value,
) -> Result<serde_json::Value, libflow::Error> {
    let timeout_s = input["timeout_s"]
        .as_u64()
        .filter(|s| *s <= 30 * 24 * 3600)
        .ok_or_else(|| libflow::Error::terminal("input: {\"timeout_s\": N}, at most 30 days"))?;
    let timeout = std::time::Duration::from_secs(timeout_s);
    let by: Option<serde_json::Value> = flow.wait_signal_timeout("approve", timeout).await?;
    Ok(match by {
        Some(by) => json!({ "approved": true, "by": by }),
        None => json!({ "approved": false }),
    })
}

/// The tag of resource `kind`'s reservation records (`travel`'s "tables").
pub fn reservations_tag(kind: &str) -> Tag {
    Tag(0x7472_6176_0000_0000 | u64::from(stable_tag_suffix(kind)))
}

fn stable_tag_suffix(kind: &str) -> u32 {
    kind.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

/// The resources `travel` reserves, in order.
pub const TRAVEL_RESOURCES: [&str; 3] = ["flight", "hotel", "car"];

/// `{"trip": T, "fail": "car", "traveller": X, "protocol": P, "search": F}` in (all
/// optional): reads the traveller's profile from the table `trips-P` (in protocol P, default
/// write-log), searches (calls F, default `search`: `search-worker` is served by the
/// `hello-worker` example),
/// then reserves a flight, a hotel and a car at once, each a call of `reserve_KIND` (which
/// keeps its reservations in its own stream of the log) undone by `cancel_KIND` if the trip
/// fails: a failed reservation
/// (`"fail": KIND`) cancels the others, once each, and the instance ends `compensated`; else
/// it writes the trip and the traveller's count of trips to the table.
async fn travel(
    flow: libflow::Flow,
    input: serde_json::Value,
) -> Result<serde_json::Value, libflow::Error> {
    let trip = input["trip"].as_str().unwrap_or(flow.id()).to_string();
    let fail = input["fail"].as_str().unwrap_or("").to_string();
    let traveller = input["traveller"].as_str().unwrap_or("anyone").to_string();
    let protocol: libflow::Protocol = input["protocol"]
        .as_str()
        .unwrap_or("write-log")
        .parse()
        .map_err(libflow::Error::terminal)?;
    // The trips table, in the protocol asked for: the traveller's profile is read, the trip
    // and the traveller's count of trips written.
    let trips = flow.table(&format!("trips-{}", protocol.name()));
    let profile: Option<serde_json::Value> = trips.get(&format!("profile:{traveller}")).await?;
    let search = input["search"].as_str().unwrap_or("search");
    let options: serde_json::Value = flow
        .call(search, &json!({ "trip": trip, "profile": profile }))
        .await?;
    let reserve = |kind: &str| {
        let request = json!({ "trip": trip, "fail": fail == kind, "option": options[kind] });
        flow.call::<serde_json::Value>(&format!("reserve_{kind}"), &request)
            .compensate_with_call(&format!("cancel_{kind}"), &json!({ "trip": trip }))
    };
    let booked = flow.join_all(TRAVEL_RESOURCES.map(reserve)).await;
    let mut reservations = serde_json::Map::new();
    for (kind, booking) in TRAVEL_RESOURCES.iter().zip(booked) {
        reservations.insert(kind.to_string(), booking?);
    }
    trips.put(&trip, &reservations).await?;
    let count = trips
        .update(&format!("count:{traveller}"), |n: Option<u64>| {
            n.unwrap_or(0) + 1
        })
        .await?;
    Ok(json!({ "trip": trip, "reservations": reservations, "trips": count }))
}

/// `search`: the options for a trip (a stand-in for a search service). The `hello-worker`
/// example serves it as `search-worker` too.
pub async fn search(_ctx: Ctx, input: Bytes) -> FunctionResult {
    let trip: serde_json::Value = tally_sdk::json::input(&input)?;
    tally_sdk::json::output(&json!({
        "trip": trip["trip"],
        "flight": "TY-101", "hotel": "Harbour View", "car": "compact",
    }))
}

/// `reserve_KIND`: appends a reservation to the resource's stream and answers its number;
/// `{"fail": true}` fails as if none were left.
async fn reserve(kind: &'static str, ctx: Ctx, input: Bytes) -> FunctionResult {
    let request: serde_json::Value = tally_sdk::json::input(&input)?;
    if request["fail"] == true {
        return Err(FunctionError::new(format!("no {kind} left")));
    }
    let record = json!({ "op": "reserve", "trip": request["trip"], "option": request["option"] });
    let seqnum = ctx
        .append(&[reservations_tag(kind)], record.to_string())
        .await?;
    tally_sdk::json::output(&json!({ kind: request["option"], "reservation": seqnum.0 }))
}

/// `cancel_KIND`: appends a cancellation of the trip's reservation to the resource's stream.
async fn cancel(kind: &'static str, ctx: Ctx, input: Bytes) -> FunctionResult {
    let request: serde_json::Value = tally_sdk::json::input(&input)?;
    let record = json!({ "op": "cancel", "trip": request["trip"] });
    ctx.append(&[reservations_tag(kind)], record.to_string())
        .await?;
    tally_sdk::json::output(&json!({ "cancelled": kind }))
}

/// The `"steps"` of a workflow's input: 0 to `STEPS_MAX`.
fn steps_of(input: &serde_json::Value) -> Result<u64, libflow::Error> {
    input["steps"]
        .as_u64()
        .filter(|n| *n <= STEPS_MAX)
        .ok_or_else(|| {
            libflow::Error::terminal(format!(
                "input: {{\"steps\": N}} with N at most {STEPS_MAX}"
            ))
        })
}

/// The tag of the records `steps` appends: one per step.
pub const STEPS_TAG: Tag = Tag(4);
/// Most steps one `steps` instance takes.
pub const STEPS_MAX: u64 = 1000;

/// `{"steps": N}` in: N steps, each incrementing the instance's counter in the `steps` table
/// and appending one record (tag 4); `{"count": N}` out, read back from the table.
async fn steps(
    flow: libflow::Flow,
    input: serde_json::Value,
) -> Result<serde_json::Value, libflow::Error> {
    let n = steps_of(&input)?;
    let counters = flow.table("steps");
    let id = flow.id().to_string();
    for i in 0..n {
        counters
            .update(&id, |c: Option<u64>| c.unwrap_or(0) + 1)
            .await?;
        let ctx = flow.ctx().clone();
        let record = format!("{id} step {i}");
        // Its effect is a record in Tally's own log: it need not wait for the instance's
        // earlier records to reach the log.
        flow.step(&format!("append-{i}"), move || {
            let (ctx, record) = (ctx.clone(), record.clone());
            async move { Ok(ctx.append(&[STEPS_TAG], record).await?.0) }
        })
        .internal()
        .await?;
    }
    let count: u64 = counters.get(&id).await?.unwrap_or(0);
    Ok(json!({ "count": count }))
}

/// Most children one `fanout` instance runs.
pub const FANOUT_MAX: u64 = 100;

/// `{"children": C, "steps": N}` in: C child instances of `steps` (`{"steps": N}` each, ids
/// `ID:1` to `ID:C`) run at once; `{"count": C×N, "children": C}` out, the sum of their
/// counts. Each child costs the parent's log two records: its start, and its end, which is
/// also the parent's record of the call.
async fn fanout(
    flow: libflow::Flow,
    input: serde_json::Value,
) -> Result<serde_json::Value, libflow::Error> {
    let n = steps_of(&input)?;
    let children = input["children"]
        .as_u64()
        .filter(|c| (1..=FANOUT_MAX).contains(c))
        .ok_or_else(|| {
            libflow::Error::terminal(format!(
                "input: {{\"children\": C, \"steps\": N}} with C from 1 to {FANOUT_MAX}"
            ))
        })?;
    let runs =
        (0..children).map(|_| flow.child::<serde_json::Value>("steps", &json!({ "steps": n })));
    let mut count = 0;
    for ended in flow.join_all(runs).await {
        count += ended?["count"].as_u64().unwrap_or(0);
    }
    Ok(json!({ "count": count, "children": children }))
}

/// `{"ms": N}` in: waits N milliseconds (the function's timeout still applies), then
/// `{"slept_ms": N}` out.
async fn sleep(_ctx: Ctx, input: Bytes) -> FunctionResult {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nap {
        ms: u64,
    }
    let nap: Nap = serde_json::from_slice(&input)
        .map_err(|e| FunctionError::bad_input(format!("expected {{\"ms\": N}}: {e}")))?;
    tokio::time::sleep(std::time::Duration::from_millis(nap.ms)).await;
    Ok(serde_json::to_vec(&json!({ "slept_ms": nap.ms }))?.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Person {
    name: String,
}

fn person(input: &[u8]) -> Result<Person, FunctionError> {
    serde_json::from_slice(input)
        .map_err(|e| FunctionError::bad_input(format!("expected {{\"name\": \"...\"}}: {e}")))
}

/// `{"name": "x"}` in, `{"greeting": "hello, x"}` out.
async fn greet(_ctx: Ctx, input: Bytes) -> FunctionResult {
    let person = person(&input)?;
    let greeting = format!("hello, {}", person.name);
    Ok(serde_json::to_vec(&json!({ "greeting": greeting }))?.into())
}

/// `{"name": "x"}` in: calls `greet` and waits for its greeting, then starts `guestbook` to
/// sign the "welcome" room with it without waiting. Out: the greeting and the id of the
/// guestbook call.
pub async fn welcome(ctx: Ctx, input: Bytes) -> FunctionResult {
    let person = person(&input)?;
    let greeted: serde_json::Value = serde_json::from_slice(&ctx.invoke("greet", input).await?)?;
    let greeting = greeted["greeting"].as_str().unwrap_or_default().to_string();
    let sign = json!({
        "action": "sign",
        "room": "welcome",
        "name": person.name,
        "message": greeting,
    });
    let signing = ctx
        .invoke_async("guestbook", serde_json::to_vec(&sign)?)
        .await?;
    Ok(serde_json::to_vec(&json!({ "greeting": greeting, "signing": signing }))?.into())
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum GuestbookRequest {
    /// Appends an entry to the room's stream.
    Sign {
        room: String,
        name: String,
        message: String,
    },
    /// Reads the room's entries back, oldest first.
    List { room: String },
}

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    message: String,
}

/// A room's tag: FNV-1a of its name, never zero or reserved.
pub fn room_tag(room: &str) -> Tag {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in room.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Tag(hash.clamp(1, u64::MAX - 1))
}

/// `{"action":"sign","room":"lobby","name":"ana","message":"hi"}` appends an entry tagged with
/// the room; `{"action":"list","room":"lobby"}` reads the room's entries back by tag.
async fn guestbook(ctx: Ctx, input: Bytes) -> FunctionResult {
    let request: GuestbookRequest = serde_json::from_slice(&input).map_err(|e| {
        FunctionError::bad_input(format!(
            "expected {{\"action\":\"sign\"|\"list\",\"room\":...}}: {e}"
        ))
    })?;
    match request {
        GuestbookRequest::Sign {
            room,
            name,
            message,
        } => {
            let tag = room_tag(&room);
            let entry = serde_json::to_vec(&Entry { name, message })?;
            let seqnum = ctx.append(&[tag], entry).await?;
            Ok(Bytes::from(
                json!({"seqnum": seqnum.0, "room": room, "tag": tag.0}).to_string(),
            ))
        }
        GuestbookRequest::List { room } => {
            let tag = room_tag(&room);
            let range = ReadRange {
                from: Seqnum::ZERO,
                to: Seqnum::MAX,
                limit: logbook::READ_RANGE_RECORDS_MAX,
            };
            let mut entries = Vec::new();
            for record in ctx.read_range(tag, range).await? {
                let entry: Entry = serde_json::from_slice(&record.data)?;
                entries.push(json!({"seqnum": record.seqnum.0, "name": entry.name, "message": entry.message}));
            }
            Ok(Bytes::from(
                json!({"room": room, "tag": tag.0, "entries": entries}).to_string(),
            ))
        }
    }
}

/// The tag of `append3`'s records.
pub const APPEND3_TAG: Tag = Tag(3);

/// Answers its input (`{}` for an empty one) without touching the log: what a call costs
/// with no work in it.
pub async fn noop(_ctx: Ctx, input: Bytes) -> FunctionResult {
    if input.is_empty() {
        return Ok(Bytes::from_static(b"{}"));
    }
    Ok(input)
}

/// Appends three small records (`{"step":1}` to `{"step":3}`, tag `APPEND3_TAG`) to the call's
/// book, each once the one before is acknowledged, and answers their seqnums:
/// `{"seqnums":[a,b,c]}`. The input is not read. Three durable steps in a row, what a Restate
/// handler with three `ctx.run` steps journals.
pub async fn append3(ctx: Ctx, _input: Bytes) -> FunctionResult {
    let mut seqnums = Vec::with_capacity(3);
    for step in 1..=3u32 {
        let record = serde_json::to_vec(&json!({ "step": step }))?;
        seqnums.push(ctx.append(&[APPEND3_TAG], record).await?.0);
    }
    Ok(serde_json::to_vec(&json!({ "seqnums": seqnums }))?.into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use logbook::memory::MemoryLogBook;
    use logbook::{BookId, LogBook};

    use super::*;

    fn ctx(log: &Arc<MemoryLogBook>) -> Ctx {
        Ctx::new(
            Arc::clone(log) as Arc<dyn LogBook>,
            BookId(4),
            "test".into(),
        )
    }

    #[tokio::test]
    async fn noop_answers_its_input_or_an_empty_object_and_never_appends() {
        let log = Arc::new(MemoryLogBook::new());
        let check = |input: &'static [u8], expect: &'static [u8]| {
            let ctx = ctx(&log);
            async move {
                let output = noop(ctx, Bytes::from_static(input)).await.unwrap();
                assert_eq!(output, Bytes::from_static(expect));
            }
        };
        check(b"", b"{}").await;
        check(br#"{"n":1}"#, br#"{"n":1}"#).await;
        let range = ReadRange {
            from: Seqnum::ZERO,
            to: Seqnum::MAX,
            limit: 10,
        };
        let records = log.read_range(BookId(4), Tag::ANY, range).await.unwrap();
        assert!(records.is_empty(), "{records:?}");
    }

    #[tokio::test]
    async fn append3_appends_three_records_in_order_and_answers_their_seqnums() {
        let log = Arc::new(MemoryLogBook::new());
        let output = append3(ctx(&log), Bytes::from_static(b"{}")).await.unwrap();
        let output: serde_json::Value = serde_json::from_slice(&output).unwrap();
        let seqnums: Vec<u64> = serde_json::from_value(output["seqnums"].clone()).unwrap();
        let range = ReadRange {
            from: Seqnum::ZERO,
            to: Seqnum::MAX,
            limit: 10,
        };
        let records = log.read_range(BookId(4), APPEND3_TAG, range).await.unwrap();
        let got: Vec<(u64, &[u8])> = records.iter().map(|r| (r.seqnum.0, &r.data[..])).collect();
        let expect: Vec<(u64, &[u8])> = vec![
            (seqnums[0], br#"{"step":1}"#),
            (seqnums[1], br#"{"step":2}"#),
            (seqnums[2], br#"{"step":3}"#),
        ];
        assert_eq!(got, expect);
        assert!(seqnums.windows(2).all(|w| w[0] < w[1]), "{seqnums:?}");
    }
}
