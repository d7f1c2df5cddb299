//! What libobject's tests share: a world over the in-memory log, gateways (each its own
//! `Objects` and caches, a log that can crash at a chosen append) that serve one package's
//! methods, and the history of an object.

#![allow(dead_code)]

use async_trait::async_trait;
use bytes::Bytes;
use libobject::{
    method, CallRequest, Error, HistoryEntry, ObjectRef, Objects, Package, This, CALL_FUNCTION,
};
use logbook::crashing::{CrashAt, CrashPlan, CrashingLog};
use logbook::memory::MemoryLogBook;
use logbook::{BookId, LogBook};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::{Call, Ctx, FunctionError, FunctionResult, Handler, Invoker};

pub const BOOK: BookId = BookId(3);

pub const PACKAGE: &str = r#"
name = "test"

[classes.counter]
fields = { value = { type = "integer", default = 0 } }

[classes.counter.methods]
add = { function = "counter.add" }
get = { function = "counter.get", shared = true }
reset = { function = "counter.reset", access = "private" }
clear = { function = "counter.clear" }
secret = { function = "counter.get", access = "internal", shared = true }
corrupt = { function = "counter.corrupt" }
sneak = { function = "counter.sneak", shared = true }
forward = { function = "counter.forward" }
bounce = { function = "counter.bounce" }
notify = { function = "counter.notify" }
later = { function = "counter.later" }
whoami = { function = "counter.whoami" }

[classes.account]
fields = { balance = "integer" }

[classes.account.methods]
deposit = { function = "account.deposit" }
withdraw = { function = "account.withdraw" }
balance = { function = "account.balance", shared = true }
gated_deposit = { function = "account.gated_deposit" }
call_out = { function = "account.call_out" }
pay = { function = "account.pay" }

[classes.user]
fields = { name = "string", groups = { type = "refs", class = "group", inverse = "members" }, team = { type = "ref", class = "team", inverse = "users" } }
methods = { rename = { function = "user.rename" }, steal = { function = "user.steal" } }

[classes.group]
fields = { members = { type = "refs", class = "user", inverse = "groups" } }

[classes.team]
fields = { users = { type = "refs", class = "user", inverse = "team" } }

[classes.agent.methods.move]
dataflow = [
    { step = "out", class = "account", key = "$input.from", method = "withdraw", input = { amount = "$input.amount" } },
    { step = "in", class = "account", key = "$input.to", method = "deposit", input = { amount = "$input.amount" } },
    { step = "count", class = "counter", key = "$key", method = "add", input = { by = "$input.amount" } },
    { step = "audit", class = "counter", key = "audit", method = "add", input = { by = "$out.balance" } },
]
output = { from = "$out.balance", to = "$in.balance", moved = "$count.value", audited = "$audit.value" }

[classes.auditor]
methods = { peek = { function = "auditor.peek" } }
"#;

pub const STRANGER: &str = r#"
name = "elsewhere"
[classes.stranger]
methods = { peek = { function = "auditor.peek" } }
"#;

#[derive(Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[derive(Deserialize)]
pub struct Add {
    by: i64,
}

#[derive(Deserialize)]
pub struct Target {
    key: String,
}

pub async fn add(this: This, add: Add) -> Result<Value, Error> {
    let mut c: Counter = this.state()?;
    c.value += add.by;
    this.set_state(&c)?;
    Ok(json!({ "value": c.value }))
}

pub async fn get(this: This, _: Value) -> Result<Value, Error> {
    Ok(json!({ "value": this.state::<Counter>()?.value }))
}

pub async fn reset(this: This, _: Value) -> Result<Value, Error> {
    this.set_state(&Counter { value: 0 })?;
    Ok(json!({ "value": 0 }))
}

pub async fn clear(this: This, _: Value) -> Result<Value, Error> {
    let before = this.state::<Counter>()?.value;
    let after: Value = this.call_self("reset", &json!({})).await?;
    Ok(json!({ "before": before, "after": after["value"] }))
}

pub async fn corrupt(this: This, _: Value) -> Result<Value, Error> {
    this.set_state(&json!({ "value": "many" }))?;
    Ok(Value::Null)
}

pub async fn sneak(this: This, _: Value) -> Result<Value, Error> {
    this.set_state(&Counter { value: 99 })?;
    Ok(Value::Null)
}

/// Adds 1 to counter `key`, then 1 to itself.
pub async fn forward(this: This, t: Target) -> Result<Value, Error> {
    let there: Value = this
        .call("counter", &t.key, "add", &json!({"by": 1}))
        .await?;
    let mut c: Counter = this.state()?;
    c.value += 1;
    this.set_state(&c)?;
    Ok(json!({ "there": there["value"], "here": c.value }))
}

/// Calls its caller back, synchronously: a cycle.
pub async fn bounce(this: This, _: Value) -> Result<Value, Error> {
    let caller = this
        .caller()
        .cloned()
        .expect("bounce is called by an object");
    this.call::<Value>(&caller.class, &caller.key, "add", &json!({"by": 1}))
        .await
}

pub async fn notify(this: This, t: Target) -> Result<Value, Error> {
    let id = this.send("counter", &t.key, "whoami", &json!({})).await?;
    Ok(json!({ "sent": id }))
}

pub async fn later(this: This, t: Target) -> Result<Value, Error> {
    this.send_after(
        Duration::from_millis(300),
        "counter",
        &t.key,
        "add",
        &json!({"by": 10}),
    )
    .await?;
    Ok(Value::Null)
}

/// Records who called it in its state (as the value: 1 if an object did).
pub async fn whoami(this: This, _: Value) -> Result<Value, Error> {
    let caller = this.caller().map(|c| c.to_string());
    this.set_state(&Counter {
        value: caller.is_some() as i64,
    })?;
    Ok(json!({ "caller": caller }))
}

#[derive(Deserialize)]
struct Amount {
    amount: i64,
    /// A counter to send `add` to, held until the transaction commits.
    #[serde(default)]
    notify: Option<String>,
    /// Which of `GATES` a `gated_deposit` waits at.
    #[serde(default)]
    gate: usize,
}

async fn deposit(this: This, a: Amount) -> Result<Value, Error> {
    let mut balance = this.state_value()["balance"].as_i64().unwrap_or(0);
    balance += a.amount;
    this.set_state(&json!({ "balance": balance }))?;
    if let Some(key) = a.notify {
        this.send("counter", &key, "add", &json!({"by": 1})).await?;
    }
    Ok(json!({ "balance": balance }))
}

async fn withdraw(this: This, a: Amount) -> Result<Value, Error> {
    let balance = this.state_value()["balance"].as_i64().unwrap_or(0);
    if balance < a.amount {
        return Err(Error::failed(format!(
            "insufficient funds: {balance} < {}",
            a.amount
        )));
    }
    this.set_state(&json!({ "balance": balance - a.amount }))?;
    if let Some(key) = a.notify {
        this.send("counter", &key, "add", &json!({"by": 1})).await?;
    }
    Ok(json!({ "balance": balance - a.amount }))
}

async fn balance(this: This, _: Value) -> Result<Value, Error> {
    Ok(json!({ "balance": this.state_value()["balance"] }))
}

/// Permits for `gated_deposit`: a test holds a participant's call back with them (one gate
/// per test, as tests run at once).
pub static GATES: [tokio::sync::Semaphore; 2] = [
    tokio::sync::Semaphore::const_new(0),
    tokio::sync::Semaphore::const_new(0),
];

async fn gated_deposit(this: This, a: Amount) -> Result<Value, Error> {
    GATES[a.gate]
        .acquire()
        .await
        .expect("the gate stays open")
        .forget();
    deposit(this, a).await
}

/// Waits (up to 5 s) until `parties` calls met at `name`: calls, not runs, so a call that
/// two drivers run at once arrives once.
pub async fn meet(name: &str, parties: usize, call: &str) {
    static MET: Mutex<BTreeMap<String, HashSet<String>>> = Mutex::new(BTreeMap::new());
    MET.lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .insert(call.to_string());
    for _ in 0..5_000 {
        if MET.lock().unwrap()[name].len() >= parties {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[derive(Deserialize)]
struct Pay {
    to: String,
    amount: i64,
    /// Meets others (`meet`: name, parties) after its withdrawal, before the call to `to`.
    #[serde(default)]
    before: Option<(String, usize)>,
    /// Waits for a permit of `GATES[0]` after `to` answered.
    #[serde(default)]
    hold: bool,
    /// A counter that `to` sends `add` to (held until the transaction commits).
    #[serde(default)]
    notify: Option<String>,
    /// Withdraws from `to` instead of depositing there.
    #[serde(default)]
    take: bool,
    /// Answers even if the call to `to` failed.
    #[serde(default)]
    swallow: bool,
}

/// Withdraws `amount` from itself and deposits it on account `to` (a call: in an open
/// transaction, `to` joins it).
async fn pay(this: This, p: Pay) -> Result<Value, Error> {
    let balance = this.state_value()["balance"].as_i64().unwrap_or(0);
    let sign = if p.take { -1 } else { 1 };
    if balance < sign * p.amount {
        return Err(Error::failed(format!(
            "insufficient funds: {balance} < {}",
            p.amount
        )));
    }
    this.set_state(&json!({ "balance": balance - sign * p.amount }))?;
    if let Some((name, parties)) = &p.before {
        meet(name, *parties, this.call_id()).await;
    }
    let method = if p.take { "withdraw" } else { "deposit" };
    let there = this
        .call::<Value>(
            "account",
            &p.to,
            method,
            &json!({"amount": p.amount, "notify": p.notify}),
        )
        .await;
    let there = match there {
        Err(_) if p.swallow => Value::Null,
        there => there?,
    };
    if p.hold {
        GATES[0]
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
    }
    Ok(json!({ "balance": balance - sign * p.amount, "there": there }))
}

/// Calls another object: refused inside a transaction.
async fn call_out(this: This, _: Value) -> Result<Value, Error> {
    this.call::<Value>("counter", "elsewhere", "add", &json!({"by": 1}))
        .await
}

async fn rename(this: This, name: String) -> Result<Value, Error> {
    let mut user = this.state_value();
    user["name"] = json!(name);
    this.set_state(&user)?;
    Ok(user)
}

/// Changes a reference field itself: refused.
async fn steal(this: This, group: String) -> Result<Value, Error> {
    let mut user = this.state_value();
    user["groups"] = json!([group]);
    this.set_state(&user)?;
    Ok(user)
}

async fn peek(this: This, t: Target) -> Result<Value, Error> {
    this.call::<Value>("counter", &t.key, "secret", &json!({}))
        .await
}

/// The shared log, the functions every gateway serves, and what ran.
pub struct World {
    pub log: Arc<MemoryLogBook>,
    functions: BTreeMap<String, Handler>,
    runs: Mutex<BTreeMap<String, usize>>,
    /// Keys of asynchronous calls started (a durable invocation runs once per key).
    started: Mutex<HashSet<String>>,
    /// The gateway asynchronous calls run on (one that does not crash).
    survivor: Mutex<Option<Arc<Gateway>>>,
}

pub struct Gateway {
    world: Arc<World>,
    pub objects: Objects,
    pub plan: Arc<CrashPlan>,
    log: Arc<dyn LogBook>,
    me: std::sync::Weak<Gateway>,
}

pub fn world() -> Arc<World> {
    let mut functions: BTreeMap<String, Handler> = BTreeMap::new();
    let mut add_fn = |name: &str, h: Handler| {
        functions.insert(name.to_string(), h);
    };
    add_fn("counter.add", Arc::new(method(add)));
    add_fn("counter.get", Arc::new(method(get)));
    add_fn("counter.reset", Arc::new(method(reset)));
    add_fn("counter.clear", Arc::new(method(clear)));
    add_fn("counter.corrupt", Arc::new(method(corrupt)));
    add_fn("counter.sneak", Arc::new(method(sneak)));
    add_fn("counter.forward", Arc::new(method(forward)));
    add_fn("counter.bounce", Arc::new(method(bounce)));
    add_fn("counter.notify", Arc::new(method(notify)));
    add_fn("counter.later", Arc::new(method(later)));
    add_fn("counter.whoami", Arc::new(method(whoami)));
    add_fn("auditor.peek", Arc::new(method(peek)));
    add_fn("account.deposit", Arc::new(method(deposit)));
    add_fn("account.withdraw", Arc::new(method(withdraw)));
    add_fn("account.balance", Arc::new(method(balance)));
    add_fn("account.gated_deposit", Arc::new(method(gated_deposit)));
    add_fn("account.call_out", Arc::new(method(call_out)));
    add_fn("account.pay", Arc::new(method(pay)));
    add_fn("user.rename", Arc::new(method(rename)));
    add_fn("user.steal", Arc::new(method(steal)));
    for (name, f) in libobject::builtin_functions() {
        add_fn(name, f);
    }
    let mut workflows = libflow::Workflows::new();
    libobject::register_dataflows(&mut workflows);
    let dataflow = workflows
        .handler(libobject::DATAFLOW_WORKFLOW)
        .expect("registered");
    add_fn(libobject::DATAFLOW_WORKFLOW, dataflow);
    let world = Arc::new(World {
        log: Arc::new(MemoryLogBook::new()),
        functions,
        runs: Mutex::new(BTreeMap::new()),
        started: Mutex::new(HashSet::new()),
        survivor: Mutex::new(None),
    });
    let survivor = gateway(&world, None);
    *world.survivor.lock().unwrap() = Some(survivor);
    world
}

pub fn gateway(world: &Arc<World>, crash: Option<CrashAt>) -> Arc<Gateway> {
    gateway_with(world, CrashPlan::new(crash))
}

/// A gateway whose appends reach the log after a random delay of up to 300 µs, as over a
/// network: two such gateways driving one object race for its done records.
pub fn slow_gateway(world: &Arc<World>, seed: u64) -> Arc<Gateway> {
    gateway_with(
        world,
        CrashPlan::with_delays(None, Duration::from_micros(300), seed),
    )
}

pub fn gateway_with(world: &Arc<World>, plan: Arc<CrashPlan>) -> Arc<Gateway> {
    let log: Arc<dyn LogBook> = Arc::new(CrashingLog::new(world.log.clone(), plan.clone()));
    gateway_over(world, plan, log)
}

/// A gateway whose log is `log` (over the world's).
pub fn gateway_over(
    world: &Arc<World>,
    plan: Arc<CrashPlan>,
    log: Arc<dyn LogBook>,
) -> Arc<Gateway> {
    let objects = Objects::new();
    objects
        .install(Package::from_toml(PACKAGE).unwrap())
        .unwrap();
    objects
        .install(Package::from_toml(STRANGER).unwrap())
        .unwrap();
    Arc::new_cyclic(|me| Gateway {
        world: world.clone(),
        objects,
        plan,
        log,
        me: me.clone(),
    })
}

impl World {
    pub fn runs(&self, function: &str) -> usize {
        self.runs
            .lock()
            .unwrap()
            .get(function)
            .copied()
            .unwrap_or(0)
    }

    /// The seqnum of the newest record of the test book, if any.
    pub async fn tail(&self) -> Option<logbook::Seqnum> {
        let newest = self.log.check_tail(BOOK, logbook::Tag::ANY).await.unwrap();
        newest.map(|r| r.seqnum)
    }

    pub fn survivor(&self) -> Arc<Gateway> {
        self.survivor.lock().unwrap().clone().unwrap()
    }
}

impl Gateway {
    pub fn ctx(&self, depth: u32) -> Ctx {
        let invoker: Arc<dyn Invoker> = self.me.upgrade().unwrap();
        Ctx::with_invoker(self.log.clone(), BOOK, String::new(), invoker, depth)
    }

    pub async fn call(
        &self,
        class: &str,
        key: &str,
        m: &str,
        input: Value,
    ) -> Result<Value, Error> {
        self.objects
            .call(&self.ctx(0), CallRequest::new(class, key, m, input))
            .await
    }

    pub async fn run(&self, function: &str, input: Bytes, depth: u32) -> FunctionResult {
        if self.plan.is_dead() {
            return Err(FunctionError::unavailable("the gateway crashed"));
        }
        *self
            .world
            .runs
            .lock()
            .unwrap()
            .entry(function.to_string())
            .or_default() += 1;
        let ctx = self.ctx(depth);
        if function == CALL_FUNCTION {
            return self.objects.handler()(ctx, input).await;
        }
        let handler = self
            .world
            .functions
            .get(function)
            .cloned()
            .ok_or_else(|| FunctionError::new(format!("no function {function}")))?;
        handler(ctx, input).await
    }
}

#[async_trait]
impl Invoker for Gateway {
    async fn invoke(&self, call: Call<'_>) -> FunctionResult {
        self.run(call.function, call.input, call.depth).await
    }

    /// A durable invocation: runs once per key, on the survivor, once due.
    async fn invoke_async(&self, call: Call<'_>) -> Result<String, FunctionError> {
        if self.plan.is_dead() {
            return Err(FunctionError::unavailable("the gateway crashed"));
        }
        let key = call.key.expect("objects send with keys").to_string();
        if self.world.started.lock().unwrap().insert(key.clone()) {
            let survivor = self.world.survivor();
            let (function, input, due) =
                (call.function.to_string(), call.input, call.not_before_ms);
            tokio::spawn(async move {
                if let Some(due) = due {
                    let now = libobject_now();
                    if due > now {
                        tokio::time::sleep(Duration::from_millis(due - now)).await;
                    }
                }
                let _ = survivor.run(&function, input, 1).await;
            });
        }
        Ok(format!("async:{key}"))
    }
}

pub fn libobject_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub async fn history(g: &Gateway, class: &str, key: &str) -> Vec<HistoryEntry> {
    let object = ObjectRef::new(class, key);
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let page = g
            .objects
            .history(&g.ctx(0), &object, after, 100)
            .await
            .unwrap();
        all.extend(page.calls);
        match page.next {
            Some(next) => after = next,
            None => return all,
        }
    }
}

/// Waits (up to 5 s) until `condition` holds.
pub async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1_000 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not met in 5 s");
}
