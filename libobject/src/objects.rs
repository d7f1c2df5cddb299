//! The runtime: calls of objects' methods, one at a time per object in log order.
//!
//! A queued call appends a call record to the object's stream, then drives the object: the
//! driver replays the stream from the newest done record, runs the calls queued after it one
//! by one (each on the state the one before it left, through the method's function), and
//! appends one done record for them, conditionally at its position among the object's done
//! records. A driver that loses that race reads the winner's record instead. Callers are
//! answered from done records only, so an answer is never ahead of the state, nor behind it.
//!
//! One driver per object runs at a time in a process (a lock); any number of processes may
//! drive one object (the conditional append keeps them apart). What a driver knows of an
//! object (state, position, queue) is kept between calls, for the `OBJECTS_CACHED_MAX`
//! objects used last; losing it costs one backward read and the queue's records.

use crate::entry::{
    done_tag, key_tag, now_ms, object_tag, CallError, CallRecord, DoneRecord, Entry, FastRecord,
    JoinRecord, Outcome, TxnRecord,
};

mod links;
mod locks;
mod txn;
use crate::package::{Class, Classes, Method, ObjectRef, Package};
use crate::Error;
use bytes::Bytes;
pub use links::{builtin_functions, BATCH_READ_MAX, LINKS_PER_TXN_MAX, REFS_MAX};
use logbook::{BookId, Cond, LogError, Seqnum};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use tally_sdk::{BoxFuture, Ctx, FunctionError};
use tokio::sync::oneshot;
pub use txn::{TxnOutcome, TxnStatus, TXN_CALLS_MAX, TXN_ID_BYTES_MAX};

/// The function every object call goes through: `Objects::handler`, which the gateway serves.
/// Methods' calls of other objects (`This::call`, `send`) are calls of it.
pub const CALL_FUNCTION: &str = "libobject.call";
/// Most calls one done record answers.
pub const BATCH_CALLS_MAX: usize = 64;
/// A drive stops adding calls to a done record once their states pass this many bytes.
pub const BATCH_STATE_BYTES_MAX: usize = 256 * 1024;
/// Objects whose driver state a process keeps between calls.
pub const OBJECTS_CACHED_MAX: usize = 16_384;
/// Longest object key, in bytes.
pub const KEY_BYTES_MAX: usize = 256;
/// Most calls a history page holds, and queued calls `inspect` lists.
pub const HISTORY_LIMIT_MAX: usize = 1_000;
pub const QUEUED_LISTED_MAX: usize = 100;
/// Outcomes a driver remembers for duplicates, beyond which it reads the log.
const RECENT_OUTCOMES_MAX: usize = 256;

/// A call, as `libobject.call` takes it (and the HTTP routes make it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    pub class: String,
    pub key: String,
    pub method: String,
    #[serde(default)]
    pub input: Value,
    /// The object whose method makes the call; none from outside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<ObjectRef>,
    /// Runs the call once: a second call record under this key is answered with the first's
    /// outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_key: Option<String>,
    /// The objects waiting synchronously on this call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ObjectRef>,
    /// A call of the caller's own method, run inside the caller's call on this state (not
    /// queued); answered with the method's `MethodOutput`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_state: Option<Value>,
    /// The transaction the caller's call belongs to: an inline call's, or a call an open
    /// transaction makes (it joins the transaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// The transaction is open: it finds its participants as it runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
    /// The caller's call runs at once, not logged yet (an inline call's only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast: bool,
}

impl CallRequest {
    /// A call from outside.
    pub fn new(class: &str, key: &str, method: &str, input: Value) -> CallRequest {
        CallRequest {
            class: class.to_string(),
            key: key.to_string(),
            method: method.to_string(),
            input,
            caller: None,
            call_key: None,
            chain: Vec::new(),
            inline_state: None,
            transaction: None,
            open: false,
            fast: false,
        }
    }
}

/// What a method's function is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodInput {
    pub class: String,
    pub key: String,
    pub method: String,
    pub input: Value,
    pub state: Value,
    /// The call's id, `class/key@seqnum` (the seqnum of its call record): the prefix of the
    /// keys of the calls it makes.
    pub call: String,
    #[serde(default)]
    pub caller: Option<ObjectRef>,
    /// The objects waiting on this call, the object itself last.
    #[serde(default)]
    pub chain: Vec<ObjectRef>,
    #[serde(default)]
    pub shared: bool,
    /// The transaction this call is a participant's call of: its state change is staged
    /// until the transaction commits, and its messages are sent only then. In a transaction
    /// of known participants it calls no other object synchronously; in an open one, each
    /// object it calls joins the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// The transaction is open (it finds its participants as it runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
    /// Run at once, before the call is logged: the method may make no call and send no
    /// message (`This` refuses them, and the call is then logged and run as any other).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast: bool,
}

/// The message of the refusal that ends a fast run of a method that makes a call.
pub const FAST_REFUSAL: &str = "a call run at once makes no calls";

/// What a method's function answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodOutput {
    pub output: Value,
    /// The new state, if the method changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// Messages held back until the transaction the call belongs to commits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// A fast run that tried to make a call: its outcome does not count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused_fast: bool,
}

/// A message a participant of a transaction sends, held until the transaction commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub request: CallRequest,
    /// Delivered no earlier than this (ms since the Unix epoch): `send_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
}

/// An object as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectView {
    pub class: String,
    pub key: String,
    pub state: Value,
    /// Calls run so far (shared ones not counted: they leave no record).
    pub calls: u64,
    /// The seqnum of the newest done record; none before the first call.
    pub version: Option<u64>,
    /// Calls in the log, not run yet, oldest first (at most `QUEUED_LISTED_MAX`).
    pub queued: Vec<Queued>,
    pub queued_total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Queued {
    pub call: u64,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<ObjectRef>,
    /// The transaction it belongs to, if it is a participant's call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    pub at_ms: u64,
}

/// One call in an object's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// The seqnum of its call record: calls ran in this order.
    pub call: u64,
    pub method: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub at_ms: u64,
    /// The seqnum of the done record that answered it, and when it was written.
    pub done: u64,
    pub done_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    /// The state after it, if it changed the state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<u64>,
    /// The transaction it was a participant's call of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryPage {
    pub calls: Vec<HistoryEntry>,
    /// Pass as `after` for the next page; none at the end.
    pub next: Option<u64>,
}

/// The installed classes and the objects this process drives. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Objects {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    classes: RwLock<Classes>,
    slots: Mutex<HashMap<(BookId, ObjectRef), Arc<Slot>>>,
    observer: RwLock<Option<Observer>>,
}

/// What the runtime tells an observer (metrics): each call it answered in a done record it
/// appended, and each done record.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation<'a> {
    /// A call was answered (or found a duplicate) in a done record this process appended.
    Call {
        class: &'a str,
        /// `ok`, `failed` or `duplicate`; a transaction's participant call counts too.
        outcome: &'static str,
    },
    /// A method's function ran (in a call, a vote, a shared or an inline call), this long.
    Run {
        class: &'a str,
        elapsed: std::time::Duration,
    },
    /// A done record this process appended, answering `calls` calls (many when calls
    /// queued while the one before was on its way).
    Done { class: &'a str, calls: usize },
    /// A cycle of `members` open transactions waiting for each other's locks was broken here:
    /// the abort of its victim is this process's record (one observation per deadlock).
    Deadlock { members: usize },
}

/// A function the runtime calls with every observation.
pub type Observer = Arc<dyn Fn(Observation<'_>) + Send + Sync>;

/// One object, in this process.
#[derive(Default)]
struct Slot {
    driver: tokio::sync::Mutex<Driver>,
    /// Callers waiting for the outcome of their call record (by seqnum).
    waiters: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// The newest done record read: its seqnum, the state after it, its call count.
    latest: Mutex<Option<(u64, Arc<Value>, u64)>>,
}

/// What a driver knows of its object.
#[derive(Default)]
struct Driver {
    loaded: bool,
    /// The next seqnum of the object's stream to read.
    cursor: u64,
    /// The position of the next done record.
    dones: u64,
    calls_total: u64,
    state: Value,
    /// The seqnum of the newest record of the object's stream read (or loaded).
    last_seen: Option<u64>,
    /// Calls and transactions not answered yet, in log order.
    pending: VecDeque<(u64, Item)>,
    recent: VecDeque<Outcome>,
}

/// What an object's queue holds.
#[derive(Clone)]
enum Item {
    Call(CallRecord),
    Txn(TxnRecord),
    Join(JoinRecord),
}

impl Item {
    /// The method, caller and transaction id, as listings show them.
    fn describe(&self, object: &ObjectRef) -> (String, Option<ObjectRef>, Option<String>, u64) {
        match self {
            Item::Call(c) => (c.method.clone(), c.caller.clone(), None, c.at_ms),
            Item::Txn(t) => {
                let method = t.call_of(object).map(|(_, c)| c.method.clone());
                (
                    method.unwrap_or_default(),
                    None,
                    Some(t.id.clone()),
                    t.at_ms,
                )
            }
            Item::Join(j) => (
                j.call.method.clone(),
                j.caller.clone(),
                Some(j.txn.clone()),
                j.at_ms,
            ),
        }
    }
}

impl Slot {
    fn resolve(&self, outcome: &Outcome) {
        let waiter = self
            .waiters
            .lock()
            .expect("no panics under the waiters lock")
            .remove(&outcome.call);
        if let Some(tx) = waiter {
            let _ = tx.send(outcome.clone());
        }
    }

    fn set_latest(&self, seqnum: u64, state: &Value, calls: u64) {
        let mut latest = self.latest.lock().expect("no panics under the latest lock");
        if latest.as_ref().is_none_or(|(s, _, _)| *s < seqnum) {
            *latest = Some((seqnum, Arc::new(state.clone()), calls));
        }
    }
}

impl Objects {
    pub fn new() -> Objects {
        Objects::default()
    }

    /// Calls `observer` with every observation from now on (one observer; a later one
    /// replaces it).
    pub fn set_observer(&self, observer: Observer) {
        *self
            .inner
            .observer
            .write()
            .expect("no panics under the observer lock") = Some(observer);
    }

    fn observe(&self, observation: Observation<'_>) {
        let observer = self
            .inner
            .observer
            .read()
            .expect("no panics under the observer lock")
            .clone();
        if let Some(observer) = observer {
            observer(observation);
        }
    }

    /// Installs `package` (see `Classes::install`).
    pub fn install(&self, package: Package) -> Result<(), Error> {
        self.inner
            .classes
            .write()
            .expect("no panics under the classes lock")
            .install(package)
    }

    /// The installed classes, as they are now.
    pub fn classes(&self) -> Classes {
        self.inner
            .classes
            .read()
            .expect("no panics under the classes lock")
            .clone()
    }

    /// The class `name`, or `NoClass`.
    pub fn class(&self, name: &str) -> Result<Arc<Class>, Error> {
        self.inner
            .classes
            .read()
            .expect("no panics under the classes lock")
            .class(name)
    }

    /// Checks that `request` names a class and method and that its caller may call it:
    /// what a call is refused for before anything is logged.
    pub fn admit(&self, request: &CallRequest) -> Result<(Arc<Class>, Method), Error> {
        self.admit_as(request, false)
    }

    /// `admit`; `system`: the runtime's own calls of built-in methods (links, deletes).
    fn admit_as(&self, request: &CallRequest, system: bool) -> Result<(Arc<Class>, Method), Error> {
        check_key(&request.key)?;
        let classes = self
            .inner
            .classes
            .read()
            .expect("no panics under the classes lock");
        let class = classes.class(&request.class)?;
        let method = class.method(&request.method)?.clone();
        if system && method.access == crate::Access::System {
            return Ok((class, method));
        }
        let callee = ObjectRef::new(&request.class, &request.key);
        classes.check_access(
            &callee,
            &class,
            &request.method,
            &method,
            request.caller.as_ref(),
        )?;
        Ok((class, method))
    }

    /// Calls a method and waits for its answer: shared methods at once on the newest state,
    /// the others queued behind the object's earlier calls. `ctx` is the log and the
    /// functions the call runs with (its book is the object's).
    pub async fn call(&self, ctx: &Ctx, request: CallRequest) -> Result<Value, Error> {
        let (class, method) = self.admit(&request)?;
        let callee = ObjectRef::new(&request.class, &request.key);
        if let Some(state) = request.inline_state.clone() {
            if request.caller.as_ref() != Some(&callee) {
                return Err(Error::Invalid(
                    "only an object's own calls run inside its call".into(),
                ));
            }
            let call = request.call_key.clone().unwrap_or_default();
            let input = (state, call, request.transaction.clone());
            let out = self
                .run_method_as(ctx, &class, &callee, &request, &method, input, request.fast)
                .await?;
            return Ok(serde_json::to_value(out).expect("method outputs serialize"));
        }
        if let Some(dataflow) = &method.dataflow {
            return self.run_dataflow(ctx, &request, dataflow).await;
        }
        if request.transaction.is_some() {
            // A call an open transaction's method makes: it joins the transaction.
            if method.dataflow.is_some() {
                return Err(Error::Invalid(format!(
                    "{}.{} is a dataflow method: it takes no part in a transaction",
                    request.class, request.method
                )));
            }
            check_chain(&request, &callee)?;
            return self.join(ctx, request).await;
        }
        if method.shared {
            let state = self.latest_state(ctx, &class, &callee).await?;
            let input = (state, format!("{callee}@shared"), None);
            let out = self
                .run_method(ctx, &class, &callee, &request, &method, input)
                .await?;
            return Ok(out.output);
        }
        check_chain(&request, &callee)?;
        self.call_queued(ctx, class, callee, request).await
    }

    async fn call_queued(
        &self,
        ctx: &Ctx,
        class: Arc<Class>,
        callee: ObjectRef,
        request: CallRequest,
    ) -> Result<Value, Error> {
        let mut tags = vec![object_tag(&callee.class, &callee.key)];
        if let Some(k) = &request.call_key {
            tags.push(key_tag(&callee.class, &callee.key, k));
        }
        let mut call = CallRecord {
            method: request.method.clone(),
            input: request.input.clone(),
            caller: request.caller.clone(),
            key: request.call_key.clone(),
            chain: request.chain.clone(),
            at_ms: now_ms(),
            id: None,
        };
        let slot = self.slot(ctx.book(), &callee);
        // A call without a key on an object with nothing queued runs at once: one record.
        if request.call_key.is_none() {
            let queued = match slot.driver.try_lock() {
                Err(_) => None,
                Ok(mut d) => {
                    call.id = Some(format!("{callee}@{}", fresh_suffix()));
                    match self
                        .run_fast(ctx, &slot, &class, &callee, &request, &call, &mut d)
                        .await
                    {
                        Ok(Fast::Ran(outcome)) => return outcome.result(),
                        // Queued behind calls that came first: answered as they are.
                        Ok(Fast::Queued(seqnum)) => Some((seqnum, self.wait_for(&slot, seqnum))),
                        Ok(Fast::NotNow) => None,
                        Err(e) => {
                            *d = Driver::default();
                            return Err(e);
                        }
                    }
                }
            };
            if let Some((seqnum, rx)) = queued {
                return self.answer(ctx, class, callee, slot, seqnum, rx).await;
            }
        }
        let seqnum = ctx.append(&tags, Entry::Call(call).to_bytes()).await?.0;
        let rx = self.wait_for(&slot, seqnum);
        self.answer(ctx, class, callee, slot, seqnum, rx).await
    }

    /// Registers a waiter for the outcome of the call at `seqnum`.
    fn wait_for(&self, slot: &Slot, seqnum: u64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        slot.waiters
            .lock()
            .expect("no panics under the waiters lock")
            .insert(seqnum, tx);
        rx
    }

    /// Tries a call at once: with the object's driver held and nothing queued, runs it on the
    /// newest state and appends one fast record at the done stream's next position.
    #[allow(clippy::too_many_arguments)]
    async fn run_fast(
        &self,
        ctx: &Ctx,
        slot: &Slot,
        class: &Class,
        object: &ObjectRef,
        request: &CallRequest,
        call: &CallRecord,
        d: &mut Driver,
    ) -> Result<Fast, Error> {
        if !d.loaded {
            load(ctx, slot, class, object, d).await?;
        }
        catch_up(ctx, slot, object, d).await?;
        if !d.pending.is_empty() {
            return Ok(Fast::NotNow);
        }
        let method = class.method(&call.method)?;
        let id = call.id.clone().expect("a fast call has its id");
        let ran = self
            .run_method_as(
                ctx,
                class,
                object,
                request,
                method,
                (d.state.clone(), id, None),
                true,
            )
            .await;
        let outcome = match ran {
            // It makes calls: they must be made once, so it runs only once it is logged.
            Ok(out) if out.refused_fast => return Ok(Fast::NotNow),
            Err(Error::Unavailable(m)) if m.contains(FAST_REFUSAL) => return Ok(Fast::NotNow),
            Ok(out) => Outcome {
                call: 0,
                output: Some(out.output),
                error: None,
                state: out.state,
                duplicate_of: None,
            },
            Err(e) => Outcome::failed(0, &e),
        };
        let fast = FastRecord {
            basis: d.last_seen,
            call: call.clone(),
            done: DoneRecord {
                index: d.dones,
                calls_total: d.calls_total + 1,
                state: outcome.state.clone().unwrap_or_else(|| d.state.clone()),
                outcomes: vec![outcome],
                at_ms: now_ms(),
            },
        };
        let dones = done_tag(&object.class, &object.key);
        let tags = [object_tag(&object.class, &object.key), dones];
        let cond = Cond::at(dones, d.dones);
        let seqnum = match ctx
            .cond_append(&tags, Entry::Fast(fast.clone()).to_bytes(), cond)
            .await
        {
            Ok(seqnum) => seqnum.0,
            // Another driver's done record came first: log the call as any other, under
            // the same id (so the calls it made are not made twice).
            Err(LogError::CondFailed { .. }) => {
                let seqnum = ctx
                    .append(&tags[..1], Entry::Call(call.clone()).to_bytes())
                    .await?;
                return Ok(Fast::Queued(seqnum.0));
            }
            Err(e) => return Err(e.into()),
        };
        if !fast_ran(ctx, object, seqnum, fast.basis).await? {
            // A call came between: this one waits behind it; the stream says how it ends.
            return Ok(Fast::Queued(seqnum));
        }
        let done = fast.done_at(seqnum);
        self.observe_done(class, &done);
        d.pending.push_back((seqnum, Item::Call(fast.call)));
        d.cursor = seqnum + 1;
        d.last_seen = Some(seqnum);
        let outcome = done.outcomes[0].clone();
        apply(slot, d, seqnum, done)?;
        Ok(Fast::Ran(outcome))
    }

    /// The outcome of the call at `seqnum`, driving the object until it is answered.
    async fn answer(
        &self,
        ctx: &Ctx,
        class: Arc<Class>,
        callee: ObjectRef,
        slot: Arc<Slot>,
        seqnum: u64,
        mut rx: oneshot::Receiver<Outcome>,
    ) -> Result<Value, Error> {
        // In a task of its own: a caller that goes away does not cut a drive short.
        let drive = {
            let (me, ctx, slot, callee) = (self.clone(), ctx.clone(), slot.clone(), callee.clone());
            tokio::spawn(async move { me.drive(&ctx, &slot, &class, &callee).await })
        };
        let driven = drive
            .await
            .unwrap_or_else(|e| Err(Error::Unavailable(format!("the drive stopped: {e}"))));
        if let Ok(outcome) = rx.try_recv() {
            return outcome.result();
        }
        slot.waiters
            .lock()
            .expect("no panics under the waiters lock")
            .remove(&seqnum);
        driven?;
        // A driver that started from a done record newer than the call (another process ran
        // it first) never applied the record that answered it: read that one.
        find_outcome(ctx, &callee, seqnum).await?.result()
    }

    fn slot(&self, book: BookId, object: &ObjectRef) -> Arc<Slot> {
        let mut slots = self
            .inner
            .slots
            .lock()
            .expect("no panics under the slots lock");
        if let Some(slot) = slots.get(&(book, object.clone())) {
            return slot.clone();
        }
        if slots.len() >= OBJECTS_CACHED_MAX {
            // Forget the objects no call uses right now.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot = Arc::new(Slot::default());
        slots.insert((book, object.clone()), slot.clone());
        slot
    }

    async fn drive(
        &self,
        ctx: &Ctx,
        slot: &Slot,
        class: &Class,
        object: &ObjectRef,
    ) -> Result<(), Error> {
        let mut driver = slot.driver.lock().await;
        let driven = self
            .drive_locked(ctx, slot, class, object, &mut driver)
            .await;
        if driven.is_err() {
            // Start over from the log next time.
            *driver = Driver::default();
        }
        driven
    }

    async fn drive_locked(
        &self,
        ctx: &Ctx,
        slot: &Slot,
        class: &Class,
        object: &ObjectRef,
        d: &mut Driver,
    ) -> Result<(), Error> {
        if !d.loaded {
            load(ctx, slot, class, object, d).await?;
        }
        let done_tag = done_tag(&object.class, &object.key);
        loop {
            catch_up(ctx, slot, object, d).await?;
            let (outcomes, state) = match d.pending.front() {
                None => return Ok(()),
                Some((seqnum, Item::Txn(t))) => {
                    let (seqnum, t) = (*seqnum, t.clone());
                    self.run_txn(ctx, class, object, d, seqnum, &t).await?
                }
                Some((seqnum, Item::Join(j))) => {
                    let (seqnum, j) = (*seqnum, j.clone());
                    self.run_join(ctx, class, object, d, seqnum, &j).await?
                }
                Some(_) => self.run_batch(ctx, class, object, d).await?,
            };
            let done = DoneRecord {
                index: d.dones,
                calls_total: d.calls_total + outcomes.len() as u64,
                outcomes,
                state,
                at_ms: now_ms(),
            };
            let tags = [object_tag(&object.class, &object.key), done_tag];
            let cond = Cond::at(done_tag, d.dones);
            match ctx
                .cond_append(&tags, Entry::Done(done.clone()).to_bytes(), cond)
                .await
            {
                Ok(seqnum) => {
                    self.observe_done(class, &done);
                    apply(slot, d, seqnum.0, done)?
                }
                // Another driver answered these calls first: read its record.
                Err(LogError::CondFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn observe_done(&self, class: &Class, done: &DoneRecord) {
        if self
            .inner
            .observer
            .read()
            .map(|o| o.is_none())
            .unwrap_or(true)
        {
            return;
        }
        for o in &done.outcomes {
            let outcome = match (&o.duplicate_of, &o.error) {
                (Some(_), _) => "duplicate",
                (None, Some(_)) => "failed",
                (None, None) => "ok",
            };
            self.observe(Observation::Call {
                class: &class.name,
                outcome,
            });
        }
        self.observe(Observation::Done {
            class: &class.name,
            calls: done.outcomes.len(),
        });
    }

    /// Runs the queued calls, each on the state the one before left; returns their outcomes
    /// and the state after them.
    async fn run_batch(
        &self,
        ctx: &Ctx,
        class: &Class,
        object: &ObjectRef,
        d: &Driver,
    ) -> Result<(Vec<Outcome>, Value), Error> {
        let mut state = d.state.clone();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut state_bytes = 0;
        for (seqnum, item) in d.pending.iter().take(BATCH_CALLS_MAX) {
            let seqnum = *seqnum;
            // A transaction runs on its own, once every call before it ran.
            let Item::Call(call) = item else { break };
            if let Some(key) = &call.key {
                let first = ctx
                    .read_next(key_tag(&object.class, &object.key, key), Seqnum::ZERO)
                    .await?
                    .map_or(seqnum, |r| r.seqnum.0);
                if first < seqnum {
                    let earlier = match outcomes
                        .iter()
                        .chain(d.recent.iter())
                        .find(|o| o.call == first)
                    {
                        Some(o) => o.clone(),
                        None => find_outcome(ctx, object, first).await?,
                    };
                    outcomes.push(Outcome {
                        call: seqnum,
                        state: None,
                        duplicate_of: Some(first),
                        ..earlier
                    });
                    continue;
                }
            }
            let request = CallRequest {
                class: object.class.clone(),
                key: object.key.clone(),
                method: call.method.clone(),
                input: call.input.clone(),
                caller: call.caller.clone(),
                call_key: call.key.clone(),
                chain: call.chain.clone(),
                inline_state: None,
                transaction: None,
                open: false,
                fast: false,
            };
            let call_id = call
                .id
                .clone()
                .unwrap_or_else(|| format!("{object}@{seqnum}"));
            let ran = match class.method(&call.method) {
                Ok(method) => {
                    let input = (state.clone(), call_id, None);
                    self.run_method(ctx, class, object, &request, method, input)
                        .await
                }
                Err(e) => Err(e),
            };
            let outcome = match ran {
                Ok(out) => {
                    if let Some(s) = &out.state {
                        state_bytes += serde_json::to_vec(s).map(|v| v.len()).unwrap_or(0);
                        state = s.clone();
                    }
                    Outcome {
                        call: seqnum,
                        output: Some(out.output),
                        error: None,
                        state: out.state,
                        duplicate_of: None,
                    }
                }
                Err(e) => Outcome::failed(seqnum, &e),
            };
            outcomes.push(outcome);
            if state_bytes > BATCH_STATE_BYTES_MAX {
                break;
            }
        }
        Ok((outcomes, state))
    }

    /// Runs `method` of `object` through its function, on `(state, call id, transaction)`.
    async fn run_method(
        &self,
        ctx: &Ctx,
        class: &Class,
        object: &ObjectRef,
        request: &CallRequest,
        method: &Method,
        input: (Value, String, Option<String>),
    ) -> Result<MethodOutput, Error> {
        self.run_method_as(ctx, class, object, request, method, input, false)
            .await
    }

    /// `run_method`, at once (`fast`) or not.
    #[allow(clippy::too_many_arguments)]
    async fn run_method_as(
        &self,
        ctx: &Ctx,
        class: &Class,
        object: &ObjectRef,
        request: &CallRequest,
        method: &Method,
        (state, call, transaction): (Value, String, Option<String>),
        fast: bool,
    ) -> Result<MethodOutput, Error> {
        let mut chain = request.chain.clone();
        chain.push(object.clone());
        let input = MethodInput {
            class: object.class.clone(),
            key: object.key.clone(),
            method: request.method.clone(),
            input: request.input.clone(),
            state,
            call,
            caller: request.caller.clone(),
            chain,
            shared: method.shared,
            open: transaction.is_some() && request.open,
            transaction,
            fast,
        };
        let bytes = Bytes::from(serde_json::to_vec(&input).expect("method inputs serialize"));
        let started = std::time::Instant::now();
        let raw = ctx.call(&method.function, bytes, None).await;
        self.observe(Observation::Run {
            class: &object.class,
            elapsed: started.elapsed(),
        });
        let raw = raw?;
        let out: MethodOutput = serde_json::from_slice(&raw).map_err(|e| {
            Error::Failed(format!(
                "{}.{}: function {} answered no method output ({e}); write methods with libobject::method",
                object.class, request.method, method.function
            ))
        })?;
        if let Some(state) = &out.state {
            if method.shared {
                return Err(Error::Invalid(format!(
                    "{}.{} is shared (read-only) but changed the state",
                    object.class, request.method
                )));
            }
            class.check_state(state)?;
            if method.access != crate::Access::System {
                links::check_references_kept(class, &input.state, state)?;
            }
        }
        Ok(out)
    }

    /// The state of the newest done record (the class's initial state before any).
    async fn latest_state(
        &self,
        ctx: &Ctx,
        class: &Class,
        object: &ObjectRef,
    ) -> Result<Value, Error> {
        let Some(record) = ctx.check_tail(done_tag(&object.class, &object.key)).await? else {
            return Ok(class.initial_state());
        };
        let slot = self.slot(ctx.book(), object);
        if let Some((seqnum, state, _)) = slot
            .latest
            .lock()
            .expect("no panics under the latest lock")
            .as_ref()
        {
            if *seqnum == record.seqnum.0 {
                return Ok((**state).clone());
            }
        }
        match newest_done(ctx, object).await? {
            Some((seqnum, done)) => {
                slot.set_latest(seqnum, &done.state, done.calls_total);
                Ok(done.state)
            }
            None => Ok(class.initial_state()),
        }
    }

    /// The object's state, call count and queued calls, as the log has them now.
    pub async fn inspect(&self, ctx: &Ctx, object: &ObjectRef) -> Result<ObjectView, Error> {
        check_key(&object.key)?;
        let class = self.class(&object.class)?;
        let slot = Slot::default();
        let mut d = Driver::default();
        load(ctx, &slot, &class, object, &mut d).await?;
        catch_up(ctx, &slot, object, &mut d).await?;
        let version = slot
            .latest
            .lock()
            .expect("no panics under the latest lock")
            .as_ref()
            .map(|(s, _, _)| *s);
        Ok(ObjectView {
            class: object.class.clone(),
            key: object.key.clone(),
            state: d.state,
            calls: d.calls_total,
            version,
            queued_total: d.pending.len(),
            queued: d
                .pending
                .iter()
                .take(QUEUED_LISTED_MAX)
                .map(|(call, item)| {
                    let (method, caller, transaction, at_ms) = item.describe(object);
                    Queued {
                        call: *call,
                        method,
                        caller,
                        transaction,
                        at_ms,
                    }
                })
                .collect(),
        })
    }

    /// The calls the object ran after call seqnum `after`, oldest first, at most `limit`
    /// (up to `HISTORY_LIMIT_MAX`); `next` continues.
    pub async fn history(
        &self,
        ctx: &Ctx,
        object: &ObjectRef,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, Error> {
        check_key(&object.key)?;
        self.class(&object.class)?;
        let limit = limit.clamp(1, HISTORY_LIMIT_MAX);
        let stream = object_tag(&object.class, &object.key);
        let dones = done_tag(&object.class, &object.key);
        let mut calls = Vec::new();
        // A call's done record comes after it, so its first candidate is after `after`.
        let mut at = after.saturating_add(1);
        while let Some(record) = ctx.read_next(dones, Seqnum(at)).await? {
            at = record.seqnum.0 + 1;
            let Some(done) = done_of(ctx, object, &record).await? else {
                continue;
            };
            for outcome in done.outcomes.into_iter().filter(|o| o.call > after) {
                if calls.len() == limit {
                    let next = calls.last().map(|c: &HistoryEntry| c.call);
                    return Ok(HistoryPage { calls, next });
                }
                let (method, input, caller, key, at_ms, transaction) =
                    match ctx.read_next(stream, Seqnum(outcome.call)).await? {
                        Some(r) if r.seqnum.0 == outcome.call => match Entry::parse(&r)? {
                            Entry::Call(c) | Entry::Fast(FastRecord { call: c, .. }) => {
                                (c.method, c.input, c.caller, c.key, c.at_ms, None)
                            }
                            Entry::Txn(t) => {
                                let (_, mine) = t
                                    .call_of(object)
                                    .ok_or_else(|| corrupt(outcome.call, "not a participant"))?;
                                let (method, input) = (mine.method.clone(), mine.input.clone());
                                (method, input, None, None, t.at_ms, Some(t.id))
                            }
                            Entry::Join(j) => {
                                let (method, input) = (j.call.method, j.call.input);
                                (method, input, j.caller, None, j.at_ms, Some(j.txn))
                            }
                            Entry::Done(_) => {
                                return Err(corrupt(
                                    outcome.call,
                                    "a done record answers a done record",
                                ))
                            }
                        },
                        _ => return Err(corrupt(outcome.call, "the call record is gone")),
                    };
                calls.push(HistoryEntry {
                    call: outcome.call,
                    method,
                    input,
                    caller,
                    key,
                    at_ms,
                    transaction,
                    done: record.seqnum.0,
                    done_at_ms: done.at_ms,
                    output: outcome.output,
                    error: outcome.error,
                    state: outcome.state,
                    duplicate_of: outcome.duplicate_of,
                });
            }
        }
        Ok(HistoryPage { calls, next: None })
    }

    /// The handler of `CALL_FUNCTION`: a `CallRequest` in, the method's output out.
    pub fn handler(&self) -> impl Fn(Ctx, Bytes) -> BoxFuture + Send + Sync + Clone + 'static {
        let objects = self.clone();
        move |ctx, raw| {
            let objects = objects.clone();
            Box::pin(async move {
                let request: CallRequest = serde_json::from_slice(&raw).map_err(|e| {
                    FunctionError::bad_input(format!("{CALL_FUNCTION} takes a call: {e}"))
                })?;
                let out = objects.call(&ctx, request).await?;
                Ok(Bytes::from(
                    serde_json::to_vec(&out).expect("JSON values serialize"),
                ))
            })
        }
    }
}

/// Refuses a synchronous call into an object that waits on the call's chain.
fn check_chain(request: &CallRequest, callee: &ObjectRef) -> Result<(), Error> {
    if request.chain.contains(callee) {
        return Err(Error::Reentrant(format!(
            "{callee} waits on this chain of calls ({}): a synchronous call into it would wait for itself; send a message instead, or use call_self",
            request
                .chain
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "an object key is 1 to {KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

fn corrupt(seqnum: u64, message: &str) -> Error {
    Error::Corrupt {
        seqnum,
        message: message.to_string(),
    }
}

/// Starts a driver at the newest done record: its state, and the calls after its last.
async fn load(
    ctx: &Ctx,
    slot: &Slot,
    class: &Class,
    object: &ObjectRef,
    d: &mut Driver,
) -> Result<(), Error> {
    *d = Driver {
        state: class.initial_state(),
        ..Driver::default()
    };
    if let Some((seqnum, done)) = newest_done(ctx, object).await? {
        // Every call after the last one it answered is still to run.
        d.cursor = done.outcomes.last().map_or(seqnum, |o| o.call + 1);
        d.last_seen = Some(seqnum);
        d.dones = done.index + 1;
        d.calls_total = done.calls_total;
        slot.set_latest(seqnum, &done.state, done.calls_total);
        for outcome in &done.outcomes {
            slot.resolve(outcome);
        }
        d.state = done.state;
    }
    d.loaded = true;
    Ok(())
}

/// Reads the object's stream to its end: queues new calls, applies done records.
async fn catch_up(ctx: &Ctx, slot: &Slot, object: &ObjectRef, d: &mut Driver) -> Result<(), Error> {
    let stream = object_tag(&object.class, &object.key);
    while let Some(record) = ctx.read_next(stream, Seqnum(d.cursor)).await? {
        let seqnum = record.seqnum.0;
        d.cursor = seqnum + 1;
        d.last_seen = d.last_seen.max(Some(seqnum));
        match Entry::parse(&record)? {
            Entry::Call(call) => d.pending.push_back((seqnum, Item::Call(call))),
            Entry::Txn(t) => d.pending.push_back((seqnum, Item::Txn(t))),
            Entry::Join(j) => d.pending.push_back((seqnum, Item::Join(j))),
            // Older ones were applied already (the newest when loading, or our own).
            Entry::Done(done) if done.index < d.dones => {}
            Entry::Done(done) => apply(slot, d, seqnum, done)?,
            // Read again below the newest done record: it ran already, or it is a call that
            // the done records after it answered.
            Entry::Fast(f) if f.done.index < d.dones => {
                if !fast_ran(ctx, object, seqnum, f.basis).await? {
                    d.pending.push_back((seqnum, Item::Call(f.call)));
                }
            }
            Entry::Fast(f) => {
                // It ran if nothing was queued when it came (nothing came after its basis).
                let ran = d.pending.is_empty();
                let done = f.done_at(seqnum);
                d.pending.push_back((seqnum, Item::Call(f.call)));
                if ran {
                    apply(slot, d, seqnum, done)?;
                } else if done.index == d.dones {
                    d.dones += 1;
                } else {
                    return Err(corrupt(seqnum, "a fast record out of its place"));
                }
            }
        }
    }
    Ok(())
}

/// Applies a done record: answers its calls' callers and moves the state on.
fn apply(slot: &Slot, d: &mut Driver, seqnum: u64, done: DoneRecord) -> Result<(), Error> {
    if done.index != d.dones {
        return Err(corrupt(
            seqnum,
            &format!("done record {} where {} was next", done.index, d.dones),
        ));
    }
    for outcome in &done.outcomes {
        match d.pending.pop_front() {
            Some((call, _)) if call == outcome.call => {}
            _ => {
                return Err(corrupt(
                    seqnum,
                    &format!(
                        "it answers call {}, which is not the next queued",
                        outcome.call
                    ),
                ))
            }
        }
        slot.resolve(outcome);
        d.recent.push_back(outcome.clone());
        if d.recent.len() > RECENT_OUTCOMES_MAX {
            d.recent.pop_front();
        }
    }
    d.dones += 1;
    d.calls_total = done.calls_total;
    slot.set_latest(seqnum, &done.state, done.calls_total);
    d.state = done.state;
    Ok(())
}

/// The outcome of call `call`, from the done record that answered it.
async fn find_outcome(ctx: &Ctx, object: &ObjectRef, call: u64) -> Result<Outcome, Error> {
    answered(ctx, object, call)
        .await?
        .ok_or_else(|| corrupt(call, "no done record answers this call"))
}

/// The outcome of call `call` (or a transaction), if a done record answered it yet.
async fn answered(ctx: &Ctx, object: &ObjectRef, call: u64) -> Result<Option<Outcome>, Error> {
    let dones = done_tag(&object.class, &object.key);
    let mut at = call;
    while let Some(record) = ctx.read_next(dones, Seqnum(at)).await? {
        at = record.seqnum.0 + 1;
        if let Some(done) = done_of(ctx, object, &record).await? {
            if let Some(o) = done.outcomes.into_iter().find(|o| o.call == call) {
                return Ok(Some(o));
            }
        }
    }
    Ok(None)
}

/// What a fast call tried: it ran (its outcome), it is queued at `seqnum` behind calls that
/// came first, or it was not tried (something is queued).
enum Fast {
    Ran(Outcome),
    Queued(u64),
    NotNow,
}

/// Whether the fast record at `seqnum` ran: the first record of the object's stream after its
/// basis is itself.
async fn fast_ran(
    ctx: &Ctx,
    object: &ObjectRef,
    seqnum: u64,
    basis: Option<u64>,
) -> Result<bool, Error> {
    let from = basis.map_or(0, |b| b + 1);
    let first = ctx
        .read_next(object_tag(&object.class, &object.key), Seqnum(from))
        .await?;
    Ok(first.map(|r| r.seqnum.0) == Some(seqnum))
}

/// A record of an object's done stream as a done record: a done record, a fast record that
/// ran, or none (a fast record that did not run).
async fn done_of(
    ctx: &Ctx,
    object: &ObjectRef,
    record: &logbook::Record,
) -> Result<Option<DoneRecord>, Error> {
    match Entry::parse(record)? {
        Entry::Done(done) => Ok(Some(done)),
        Entry::Fast(f) => Ok(fast_ran(ctx, object, record.seqnum.0, f.basis)
            .await?
            .then(|| f.done_at(record.seqnum.0))),
        _ => Err(corrupt(record.seqnum.0, "a call record among done records")),
    }
}

/// The newest done record of the object (a fast record that ran counts; one that did not is
/// passed over), with its seqnum.
async fn newest_done(ctx: &Ctx, object: &ObjectRef) -> Result<Option<(u64, DoneRecord)>, Error> {
    let dones = done_tag(&object.class, &object.key);
    let mut below = Seqnum::MAX;
    while let Some(record) = ctx.read_prev(dones, below).await? {
        if let Some(done) = done_of(ctx, object, &record).await? {
            return Ok(Some((record.seqnum.0, done)));
        }
        match record.seqnum.0.checked_sub(1) {
            Some(s) => below = Seqnum(s),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// A call id no other call of this process or another uses: the time, the process, a counter.
pub(crate) fn fresh_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}.{}.{n}", now_ms(), std::process::id())
}
