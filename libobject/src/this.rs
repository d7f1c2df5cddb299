//! What a method sees: `This`, the object as one call sees it (its state, its caller, calls
//! it makes), and `method`, which turns a method into the function a class binds it to.

use crate::objects::{
    CallRequest, Message, MethodInput, MethodOutput, CALL_FUNCTION, FAST_REFUSAL,
};
use crate::{Error, ObjectRef};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::{BoxFuture, Ctx, FunctionError};

/// The object as one call of one of its methods sees it. Cheap to clone (shared).
#[derive(Clone)]
pub struct This {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Ctx,
    call: MethodInput,
    me: ObjectRef,
    /// The state as the call left it so far, and whether it changed it.
    state: Mutex<(Value, bool)>,
    /// How many calls and messages this call made: the position in their keys.
    made: AtomicU32,
    /// Messages held until the call's transaction commits.
    held: Mutex<Vec<Message>>,
    /// A fast run tried to make a call.
    refused_fast: std::sync::atomic::AtomicBool,
}

impl This {
    fn new(ctx: Ctx, mut call: MethodInput) -> This {
        let state = std::mem::take(&mut call.state);
        let me = ObjectRef::new(&call.class, &call.key);
        This {
            inner: Arc::new(Inner {
                ctx,
                call,
                me,
                state: Mutex::new((state, false)),
                made: AtomicU32::new(0),
                held: Mutex::new(Vec::new()),
                refused_fast: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The object's class (the class it was made as: a subclass's, for an inherited method).
    pub fn class(&self) -> &str {
        &self.inner.call.class
    }

    pub fn key(&self) -> &str {
        &self.inner.call.key
    }

    /// The object's address.
    pub fn me(&self) -> &ObjectRef {
        &self.inner.me
    }

    /// The method this call runs.
    pub fn method(&self) -> &str {
        &self.inner.call.method
    }

    /// The call's id, `class/key@seqnum`: the same in every run of the call.
    pub fn call_id(&self) -> &str {
        &self.inner.call.call
    }

    /// The object whose method made this call; `None` for a call from outside.
    pub fn caller(&self) -> Option<&ObjectRef> {
        self.inner.call.caller.as_ref()
    }

    /// The transaction this call is a participant's call of, if it is (of known participants,
    /// or open: see `call`).
    pub fn transaction(&self) -> Option<&str> {
        self.inner.call.transaction.as_deref()
    }

    /// The function's context: the log (in the object's book) and other functions.
    pub fn ctx(&self) -> &Ctx {
        &self.inner.ctx
    }

    /// The state, as `T`.
    pub fn state<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.state_value()).map_err(|e| {
            Error::Invalid(format!(
                "{}.{}: the state does not read as the method's type: {e}",
                self.class(),
                self.method()
            ))
        })
    }

    /// The state as JSON.
    pub fn state_value(&self) -> Value {
        self.lock().0.clone()
    }

    /// Sets the state; it takes effect with the call's answer (and not at all if the call
    /// fails). A shared method may not set it.
    pub fn set_state<T: Serialize + ?Sized>(&self, state: &T) -> Result<(), Error> {
        if self.inner.call.shared {
            return Err(Error::Invalid(format!(
                "{}.{} is shared (read-only): it may not set the state",
                self.class(),
                self.method()
            )));
        }
        let value = serde_json::to_value(state)
            .map_err(|e| Error::Invalid(format!("the state does not serialize: {e}")))?;
        *self.lock() = (value, true);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Value, bool)> {
        self.inner
            .state
            .lock()
            .expect("no panics under the state lock")
    }

    /// The key of the next call or message this call makes; none from a shared method, whose
    /// runs are not logged (and so not told apart).
    fn next_key(&self) -> Option<String> {
        let n = self.inner.made.fetch_add(1, Ordering::Relaxed);
        (!self.inner.call.shared).then(|| format!("{}#{n}", self.call_id()))
    }

    /// A fast run (the call not logged yet) makes no call: it is refused, and the runtime
    /// logs the call and runs it again, when the calls it makes can be made once.
    fn refuse_if_fast(&self) -> Result<(), Error> {
        if !self.inner.call.fast {
            return Ok(());
        }
        self.inner.refused_fast.store(true, Ordering::Relaxed);
        Err(Error::Unavailable(FAST_REFUSAL.to_string()))
    }

    fn request(&self, class: &str, key: &str, method: &str, input: Value) -> CallRequest {
        CallRequest {
            caller: Some(self.me().clone()),
            chain: self.inner.call.chain.clone(),
            ..CallRequest::new(class, key, method, input)
        }
    }

    /// Calls `method` of object (`class`, `key`) and waits for its answer. Made once per
    /// run of this call: run again, it gets the first run's answer. In an open transaction
    /// the object joins the transaction (it is locked for it until the decision; a failure
    /// of its call aborts the transaction); a participant's call of a transaction of known
    /// participants calls no other object (make that object a participant).
    pub async fn call<T: DeserializeOwned>(
        &self,
        class: &str,
        key: &str,
        method: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        match self.transaction() {
            Some(t) if !self.inner.call.open => return Err(Error::Invalid(format!(
                "{}.{} runs in transaction {t}: it calls no other object ({class}/{key}); make that object a participant",
                self.class(),
                self.method()
            ))),
            _ => {}
        }
        self.refuse_if_fast()?;
        let request = CallRequest {
            call_key: self.next_key(),
            transaction: self.inner.call.transaction.clone(),
            open: self.inner.call.open,
            ..self.request(class, key, method, to_value(input)?)
        };
        let raw = self.call_function(&request).await?;
        from_output(&raw, class, method)
    }

    /// Runs `method` of this object inside this call, on its state as this call left it;
    /// the method's state change becomes this call's. Private methods are callable so.
    pub async fn call_self<T: DeserializeOwned>(
        &self,
        method: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        let request = CallRequest {
            call_key: Some(self.call_id().to_string()),
            inline_state: Some(self.state_value()),
            transaction: self.inner.call.transaction.clone(),
            open: self.inner.call.open,
            fast: self.inner.call.fast,
            ..self.request(self.class(), self.key(), method, to_value(input)?)
        };
        let raw = self.call_function(&request).await?;
        let out: MethodOutput = serde_json::from_slice(&raw)
            .map_err(|e| Error::Failed(format!("{}: not a method's output: {e}", method)))?;
        if out.refused_fast {
            self.inner.refused_fast.store(true, Ordering::Relaxed);
            return Err(Error::Unavailable(FAST_REFUSAL.to_string()));
        }
        if let Some(state) = out.state {
            self.set_state(&state)?;
        }
        self.hold().extend(out.messages);
        serde_json::from_value(out.output).map_err(|e| {
            Error::Failed(format!(
                "{}.{method} answered what the caller cannot read: {e}",
                self.class()
            ))
        })
    }

    /// Sends `method` of (`class`, `key`) a message: the call runs later, on its own, in the
    /// log before this returns; returns its invocation id. Sent once per run of this call.
    /// In a transaction, the message is held until the transaction commits (and dropped if it
    /// aborts); `send` then returns `held`.
    pub async fn send(
        &self,
        class: &str,
        key: &str,
        method: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Result<String, Error> {
        self.send_at(None, class, key, method, input).await
    }

    /// Like `send`, delivered no earlier than `delay` from now: a durable timer (it fires
    /// after restarts, on whichever gateway runs then).
    pub async fn send_after(
        &self,
        delay: Duration,
        class: &str,
        key: &str,
        method: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Result<String, Error> {
        let due = crate::entry::now_ms().saturating_add(delay.as_millis() as u64);
        self.send_at(Some(due), class, key, method, input).await
    }

    async fn send_at(
        &self,
        due_ms: Option<u64>,
        class: &str,
        key: &str,
        method: &str,
        input: &(impl Serialize + ?Sized),
    ) -> Result<String, Error> {
        self.refuse_if_fast()?;
        let Some(call_key) = self.next_key() else {
            return Err(Error::Invalid(format!(
                "{}.{} is shared (read-only): it sends nothing",
                self.class(),
                self.method()
            )));
        };
        // A message has no caller waiting on it: no chain.
        let request = CallRequest {
            call_key: Some(call_key.clone()),
            chain: Vec::new(),
            ..self.request(class, key, method, to_value(input)?)
        };
        if self.transaction().is_some() {
            self.hold().push(Message { request, due_ms });
            return Ok("held".to_string());
        }
        let bytes = Bytes::from(serde_json::to_vec(&request).expect("requests serialize"));
        let ctx = self.ctx();
        let sent = match due_ms {
            None => {
                ctx.invoke_async_keyed(CALL_FUNCTION, &call_key, bytes)
                    .await
            }
            Some(due) => {
                ctx.invoke_async_keyed_at(CALL_FUNCTION, &call_key, bytes, due)
                    .await
            }
        };
        sent.map_err(Error::from)
    }

    async fn call_function(&self, request: &CallRequest) -> Result<Bytes, Error> {
        let bytes = Bytes::from(serde_json::to_vec(request).expect("requests serialize"));
        self.ctx()
            .call(CALL_FUNCTION, bytes, None)
            .await
            .map_err(Error::from)
    }

    fn hold(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        self.inner
            .held
            .lock()
            .expect("no panics under the held lock")
    }

    fn finish(&self, output: Value) -> MethodOutput {
        let (state, changed) = self.lock().clone();
        MethodOutput {
            output,
            state: changed.then_some(state),
            messages: std::mem::take(&mut *self.hold()),
            refused_fast: self.inner.refused_fast.load(Ordering::Relaxed),
        }
    }
}

fn to_value(input: &(impl Serialize + ?Sized)) -> Result<Value, Error> {
    serde_json::to_value(input)
        .map_err(|e| Error::Invalid(format!("the input does not serialize: {e}")))
}

fn from_output<T: DeserializeOwned>(raw: &[u8], class: &str, method: &str) -> Result<T, Error> {
    serde_json::from_slice(raw).map_err(|e| {
        Error::Failed(format!(
            "{class}.{method} answered what the caller cannot read: {e}"
        ))
    })
}

/// A method, as the function a class binds it to: it reads the call (the object's state, the
/// input as `In`), runs `f`, and answers its output and the state it left.
///
/// ```
/// use libobject::{method, Error, This};
/// use serde_json::{json, Value};
///
/// async fn get(this: This, _input: Value) -> Result<Value, Error> {
///     Ok(json!({ "value": this.state_value()["value"] }))
/// }
/// let mut worker = tally_sdk::Worker::new("counters");
/// worker.register("counter.get", method(get));
/// ```
pub fn method<In, Out, F, Fut>(
    f: F,
) -> impl Fn(Ctx, Bytes) -> BoxFuture + Send + Sync + Clone + 'static
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
    F: Fn(This, In) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Out, Error>> + Send + 'static,
{
    move |ctx, raw| {
        let f = f.clone();
        Box::pin(async move {
            let call: MethodInput = serde_json::from_slice(&raw).map_err(|e| {
                FunctionError::bad_input(format!(
                    "not a method call ({e}): call a method through its object, POST /objects/CLASS/KEY/METHOD"
                ))
            })?;
            let input = read_input::<In>(&call.input).map_err(|e| {
                Error::Invalid(format!("{}.{}: bad input: {e}", call.class, call.method))
            })?;
            let this = This::new(ctx, call);
            let output = f(this.clone(), input).await?;
            let output = serde_json::to_value(output).map_err(|e| {
                Error::Failed(format!(
                    "{}.{}: the output does not serialize: {e}",
                    this.class(),
                    this.method()
                ))
            })?;
            let out = this.finish(output);
            Ok(Bytes::from(
                serde_json::to_vec(&out).expect("method outputs serialize"),
            ))
        })
    }
}

/// The input as `In`; a call with no input (null) reads as an empty object too, so a method
/// whose input type has only optional fields takes a call without a body.
fn read_input<In: DeserializeOwned>(input: &Value) -> Result<In, serde_json::Error> {
    match serde_json::from_value(input.clone()) {
        Err(_) if input.is_null() => serde_json::from_value(Value::Object(Default::default())),
        read => read,
    }
}
