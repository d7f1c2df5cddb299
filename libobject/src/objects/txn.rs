//! Serializable transactions across objects, ordered by the log: one transaction record,
//! tagged with every participant's stream, takes its place in each participant's queue. Each
//! participant, once every call before the transaction ran, runs its call on its state and
//! logs a vote (staged: its output, its state after, the messages it would send; or its
//! failure), conditionally at position 0 of the vote's stream, so it votes once. When every
//! vote is in, each participant decides alike: all succeeded, commit (its staged state
//! becomes its state, its messages are sent); else abort (nothing changes anywhere). Calls
//! after the transaction wait in the queue, so no one sees a staged state.
//!
//! Two transactions on the same objects are in the same order in every participant's stream
//! (the log has one order), so no participant waits for one that waits for it: no deadlock,
//! and no transaction is aborted for want of order. A participant waiting for votes drives
//! the others, so one touch of any participant finishes a transaction whose coordinator died.

use super::{corrupt, done_of, Driver, Objects};
use crate::entry::{
    now_ms, object_tag, txn_tag, vote_tag, CallError, Entry, Outcome, TxnCall, TxnRecord, Vote,
};
use crate::{CallRequest, Class, Error, ErrorKind, ObjectRef, CALL_FUNCTION};
use bytes::Bytes;
use logbook::{Cond, LogError, Record, Seqnum};
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use tally_sdk::Ctx;

/// Most participants of a transaction (a record's tags, less the transaction's own).
pub const TXN_CALLS_MAX: usize = logbook::TAGS_PER_RECORD_MAX - 1;
/// Longest transaction id, in bytes.
pub const TXN_ID_BYTES_MAX: usize = 256;
/// How long a wait for a vote or an answer lasts before the waiter drives the participants
/// again, and how long in all before the transaction is reported `retryable`. A waiter for
/// votes looks at every vote each `VOTE_POLL` (a failed one ends the wait).
pub(super) const VOTE_WAIT: Duration = Duration::from_millis(500);
pub(super) const VOTE_POLL: Duration = Duration::from_millis(50);
pub(super) const KICK_EVERY_POLLS: u32 = 10;
pub(super) const DECISION_WAIT_MAX: Duration = Duration::from_secs(60);

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnStatus {
    /// Every participant's call took effect.
    Success,
    /// A participant's call failed by its own logic; nothing took effect.
    Failure,
    /// It could not be decided (a participant's function could not run, or the wait for its
    /// votes timed out): nothing took effect unless a later look finds it did; try again.
    Retryable,
}

/// A transaction's outcome, the same for every request under its id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TxnOutcome {
    pub id: String,
    pub outcome: TxnStatus,
    /// The seqnum of its record.
    pub seqnum: u64,
    /// Each participant's output, in the order of the calls (on success).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<Value>,
    /// The first participant that failed, and its error (on failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
}

/// The first failed vote cast so far, looking once at each participant's.
async fn cast_failure(
    ctx: &Ctx,
    seqnum: u64,
    participants: usize,
) -> Result<Option<(usize, CallError)>, Error> {
    for j in 0..participants {
        if let Some(record) = ctx.read_next(vote_tag(seqnum, j), Seqnum::ZERO).await? {
            if let Some(e) = parse_vote(&record)?.error {
                return Ok(Some((j, e)));
            }
        }
    }
    Ok(None)
}

/// What the votes say so far.
enum Votes {
    /// Every participant's, in order, all succeeded: commit.
    All(Vec<Vote>),
    /// Participant `.0` failed: abort.
    Aborted(usize, CallError),
}

/// The outcome of transaction `id`: each participant's result, or the participant that
/// failed (if known) and its error.
pub(super) fn outcome_of(
    id: &str,
    seqnum: u64,
    decided: Result<Vec<Value>, (Option<usize>, CallError)>,
) -> TxnOutcome {
    match decided {
        Ok(results) => TxnOutcome {
            id: id.to_string(),
            outcome: TxnStatus::Success,
            seqnum,
            results,
            participant: None,
            error: None,
        },
        Err((participant, e)) => TxnOutcome {
            id: id.to_string(),
            outcome: if e.kind == ErrorKind::Unavailable {
                TxnStatus::Retryable
            } else {
                TxnStatus::Failure
            },
            seqnum,
            results: Vec::new(),
            participant,
            error: Some(e),
        },
    }
}

pub(super) fn parse_vote(record: &Record) -> Result<Vote, Error> {
    serde_json::from_slice(&record.data).map_err(|e| corrupt(record.seqnum.0, &e.to_string()))
}

impl Objects {
    /// Runs a transaction: `calls` (one per object, at most `TXN_CALLS_MAX`) take effect
    /// together or not at all, serializably, and the outcome is decided once per `id`:
    /// sending the same id again (with the same calls) answers the same outcome.
    pub async fn transact(
        &self,
        ctx: &Ctx,
        id: &str,
        calls: Vec<TxnCall>,
        caller: Option<&ObjectRef>,
    ) -> Result<TxnOutcome, Error> {
        self.admit_txn(id, &calls, caller, false)?;
        self.run_transaction(ctx, id, calls).await
    }

    /// `transact` of the runtime's own transactions (links and deletes), whose calls are of
    /// built-in methods.
    pub(super) async fn transact_system(
        &self,
        ctx: &Ctx,
        id: &str,
        calls: Vec<TxnCall>,
    ) -> Result<TxnOutcome, Error> {
        self.admit_txn(id, &calls, None, true)?;
        self.run_transaction(ctx, id, calls).await
    }

    /// The outcome of transaction `id` if it was sent before (finishing it first), else none.
    pub async fn transaction(&self, ctx: &Ctx, id: &str) -> Result<Option<TxnOutcome>, Error> {
        let Some(record) = ctx.read_next(txn_tag(id), Seqnum::ZERO).await? else {
            return Ok(None);
        };
        match Entry::parse(&record)? {
            Entry::Txn(txn) => self.run_transaction(ctx, id, txn.calls).await.map(Some),
            Entry::Join(root) if root.root.is_none() => self
                .finish_open(ctx, id, record.seqnum.0, &root.call)
                .await
                .map(Some),
            _ => Err(corrupt(record.seqnum.0, "not a transaction record")),
        }
    }

    async fn run_transaction(
        &self,
        ctx: &Ctx,
        id: &str,
        calls: Vec<TxnCall>,
    ) -> Result<TxnOutcome, Error> {
        let tag = txn_tag(id);
        let first = match ctx.read_next(tag, Seqnum::ZERO).await? {
            Some(record) => record,
            None => {
                let mut tags = vec![tag];
                tags.extend(calls.iter().map(|c| object_tag(&c.class, &c.key)));
                let record = Entry::Txn(TxnRecord {
                    id: id.to_string(),
                    calls: calls.clone(),
                    at_ms: now_ms(),
                });
                ctx.append(&tags, record.to_bytes()).await?;
                // Another coordinator of the same id may have been first.
                ctx.read_next(tag, Seqnum::ZERO)
                    .await?
                    .ok_or_else(|| Error::Unavailable("the transaction's record is gone".into()))?
            }
        };
        let Entry::Txn(txn) = Entry::parse(&first)? else {
            return Err(corrupt(first.seqnum.0, "not a transaction record"));
        };
        if txn.calls != calls {
            return Err(Error::Invalid(format!(
                "transaction {id} was sent before with other calls"
            )));
        }
        let seqnum = first.seqnum.0;
        self.kick(ctx, &calls, None);
        let votes = match self.votes(ctx, seqnum, &calls, None).await {
            Ok(votes) => votes,
            Err(Error::Unavailable(message)) => {
                let error = CallError {
                    kind: ErrorKind::Unavailable,
                    message,
                };
                return Ok(outcome_of(id, seqnum, Err((None, error))));
            }
            Err(e) => return Err(e),
        };
        let votes = match votes {
            // Nothing changes anywhere: no participant needs to have answered it yet.
            Votes::Aborted(j, e) => return Ok(outcome_of(id, seqnum, Err((Some(j), e)))),
            Votes::All(votes) => votes,
        };
        // Answered once every participant answered it: a read after the answer sees it.
        for call in &calls {
            self.wait_answered(ctx, &ObjectRef::new(&call.class, &call.key), seqnum, &calls)
                .await?;
        }
        let results = votes
            .into_iter()
            .map(|v| v.output.unwrap_or(Value::Null))
            .collect();
        Ok(outcome_of(id, seqnum, Ok(results)))
    }

    /// Checks a transaction before anything is logged: its id, its size, one call per
    /// object, and that each call names a method that `caller` may call and that may run in a
    /// transaction.
    pub(super) fn admit_txn(
        &self,
        id: &str,
        calls: &[TxnCall],
        caller: Option<&ObjectRef>,
        system: bool,
    ) -> Result<(), Error> {
        if id.is_empty() || id.len() > TXN_ID_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "a transaction id is 1 to {TXN_ID_BYTES_MAX} bytes"
            )));
        }
        if calls.is_empty() || calls.len() > TXN_CALLS_MAX {
            return Err(Error::Invalid(format!(
                "a transaction makes 1 to {TXN_CALLS_MAX} calls"
            )));
        }
        for (i, call) in calls.iter().enumerate() {
            if calls[..i]
                .iter()
                .any(|c| c.class == call.class && c.key == call.key)
            {
                return Err(Error::Invalid(format!(
                    "{}/{} is called twice in the transaction: one call per object",
                    call.class, call.key
                )));
            }
            let request = CallRequest {
                caller: caller.cloned(),
                ..CallRequest::new(&call.class, &call.key, &call.method, call.input.clone())
            };
            let (_, method) = self.admit_as(&request, system)?;
            if method.shared {
                return Err(Error::Invalid(format!(
                    "{}.{} is shared (read-only): a transaction's calls change state",
                    call.class, call.method
                )));
            }
        }
        Ok(())
    }

    /// Drives every participant but `except`, in tasks of their own.
    pub(super) fn kick(&self, ctx: &Ctx, calls: &[TxnCall], except: Option<usize>) {
        for (j, call) in calls.iter().enumerate() {
            if Some(j) != except {
                self.drive_later(ctx, &ObjectRef::new(&call.class, &call.key));
            }
        }
    }

    /// Drives `object` in a task of its own (nothing if its class is not installed here).
    pub(super) fn drive_later(&self, ctx: &Ctx, object: &ObjectRef) {
        let Ok(class) = self.class(&object.class) else {
            return;
        };
        let slot = self.slot(ctx.book(), object);
        let (me, ctx, object) = (self.clone(), ctx.clone(), object.clone());
        tokio::spawn(async move {
            // A failed drive is tried again by the next wait.
            let _ = me.drive(&ctx, &slot, &class, &object).await;
        });
    }

    /// Every participant's vote, in order, waiting for those not cast yet (driving their
    /// objects meanwhile); or, as soon as one failed, that one: the transaction aborts
    /// whatever the others vote. `known` is the caller's own vote, as participant `i`.
    async fn votes(
        &self,
        ctx: &Ctx,
        seqnum: u64,
        calls: &[TxnCall],
        known: Option<(usize, &Vote)>,
    ) -> Result<Votes, Error> {
        let started = Instant::now();
        let mut polls = 0u32;
        loop {
            let mut votes = Vec::with_capacity(calls.len());
            let mut missing = None;
            for j in 0..calls.len() {
                let vote = match known {
                    Some((i, vote)) if i == j => Some(vote.clone()),
                    _ => match ctx.read_next(vote_tag(seqnum, j), Seqnum::ZERO).await? {
                        Some(record) => Some(parse_vote(&record)?),
                        None => None,
                    },
                };
                match vote {
                    Some(Vote { error: Some(e), .. }) => return Ok(Votes::Aborted(j, e)),
                    Some(vote) => votes.push(vote),
                    None => {
                        missing.get_or_insert(j);
                    }
                }
            }
            let Some(j) = missing else {
                return Ok(Votes::All(votes));
            };
            if started.elapsed() > DECISION_WAIT_MAX {
                return Err(Error::Unavailable(format!(
                    "participant {j} ({}/{}) did not vote within {DECISION_WAIT_MAX:?}",
                    calls[j].class, calls[j].key
                )));
            }
            let tag = vote_tag(seqnum, j);
            if ctx
                .read_next_blocking(tag, Seqnum::ZERO, VOTE_POLL)
                .await?
                .is_none()
            {
                polls += 1;
                if polls == KICK_EVERY_POLLS {
                    polls = 0;
                    self.kick(ctx, calls, known.map(|(i, _)| i));
                }
            }
        }
    }

    /// Waits until a done record of `object` answers the transaction at `seqnum`.
    pub(super) async fn wait_answered(
        &self,
        ctx: &Ctx,
        object: &ObjectRef,
        seqnum: u64,
        calls: &[TxnCall],
    ) -> Result<(), Error> {
        let started = Instant::now();
        let dones = crate::entry::done_tag(&object.class, &object.key);
        // The done records not looked at yet: each is read once.
        let mut from = seqnum;
        loop {
            while let Some(record) = ctx.read_next(dones, Seqnum(from)).await? {
                from = record.seqnum.0 + 1;
                let done = done_of(ctx, object, &record).await?;
                if done.is_some_and(|d| d.outcomes.iter().any(|o| o.call == seqnum)) {
                    return Ok(());
                }
            }
            if started.elapsed() > DECISION_WAIT_MAX {
                return Err(Error::Unavailable(format!(
                    "{object} did not answer the transaction at {seqnum}"
                )));
            }
            let next = ctx.read_next_blocking(dones, Seqnum(from), VOTE_WAIT);
            if next.await?.is_none() {
                self.kick(ctx, calls, None);
            }
        }
    }

    /// A participant's turn at the transaction at the head of its queue: vote (or read its
    /// vote), wait for the others', and answer it: the staged state on commit, the state as
    /// it was on abort.
    pub(super) async fn run_txn(
        &self,
        ctx: &Ctx,
        class: &Class,
        object: &ObjectRef,
        d: &Driver,
        seqnum: u64,
        t: &TxnRecord,
    ) -> Result<(Vec<Outcome>, Value), Error> {
        let first = ctx
            .read_next(txn_tag(&t.id), Seqnum::ZERO)
            .await?
            .map_or(seqnum, |r| r.seqnum.0);
        if first < seqnum {
            // The same transaction sent again: it changes nothing.
            let outcome = Outcome {
                call: seqnum,
                output: None,
                error: None,
                state: None,
                duplicate_of: Some(first),
            };
            return Ok((vec![outcome], d.state.clone()));
        }
        let (i, _) = t
            .call_of(object)
            .ok_or_else(|| corrupt(seqnum, "a transaction in the stream of a non-participant"))?;
        // Another participant failed already: the transaction aborts, so this one's call
        // does not even run (no staged state, and no vote).
        let votes = match cast_failure(ctx, seqnum, t.calls.len()).await? {
            Some((j, e)) => Err((j, e)),
            None => Ok(self.vote(ctx, class, object, d, seqnum, t, i).await?),
        };
        let votes = match votes {
            Ok(mine) => match self.votes(ctx, seqnum, &t.calls, Some((i, &mine))).await? {
                Votes::All(_) => Ok(mine),
                Votes::Aborted(j, e) => Err((j, e)),
            },
            Err(aborted) => Err(aborted),
        };
        let mine = match votes {
            Ok(mine) => mine,
            Err((j, e)) => {
                let reason = Error::of_kind(
                    e.kind,
                    format!(
                        "transaction {} aborted: {}/{}.{} failed: {}",
                        t.id, t.calls[j].class, t.calls[j].key, t.calls[j].method, e.message
                    ),
                );
                return Ok((vec![Outcome::failed(seqnum, &reason)], d.state.clone()));
            }
        };
        committed(ctx, &format!("{}#{i}", t.id), seqnum, mine, d).await
    }

    /// This participant's vote: cast once (its call run on its state at the transaction), or
    /// read if cast already.
    #[allow(clippy::too_many_arguments)]
    async fn vote(
        &self,
        ctx: &Ctx,
        class: &Class,
        object: &ObjectRef,
        d: &Driver,
        seqnum: u64,
        t: &TxnRecord,
        i: usize,
    ) -> Result<Vote, Error> {
        let call = &t.calls[i];
        let request = CallRequest::new(&call.class, &call.key, &call.method, call.input.clone());
        let input = (
            d.state.clone(),
            format!("{object}@{seqnum}"),
            Some(t.id.clone()),
        );
        let run = async {
            let method = class.method(&call.method)?;
            self.run_method(ctx, class, object, &request, method, input)
                .await
        };
        cast(ctx, vote_tag(seqnum, i), seqnum, run).await
    }
}

/// A participant's call at `seqnum` committed with `vote`: its held messages leave (keys
/// `{prefix}#{n}`), its staged state becomes the state, and it answers its output.
pub(super) async fn committed(
    ctx: &Ctx,
    prefix: &str,
    seqnum: u64,
    vote: Vote,
    d: &Driver,
) -> Result<(Vec<Outcome>, Value), Error> {
    send_held(ctx, prefix, &vote.messages).await?;
    let state = vote.state.clone().unwrap_or_else(|| d.state.clone());
    let outcome = Outcome {
        call: seqnum,
        output: vote.output,
        error: None,
        state: vote.state,
        duplicate_of: None,
    };
    Ok((vec![outcome], state))
}

/// Sends a committed call's held messages, each once (a driver that runs the commit again
/// sends them under the same keys: `{prefix}#{n}`).
pub(super) async fn send_held(
    ctx: &Ctx,
    prefix: &str,
    messages: &[crate::objects::Message],
) -> Result<(), Error> {
    for (n, message) in messages.iter().enumerate() {
        let key = format!("{prefix}#{n}");
        let request = CallRequest {
            call_key: Some(key.clone()),
            ..message.request.clone()
        };
        let bytes = Bytes::from(serde_json::to_vec(&request).expect("requests serialize"));
        let sent = match message.due_ms {
            None => ctx.invoke_async_keyed(CALL_FUNCTION, &key, bytes).await,
            Some(due) => {
                ctx.invoke_async_keyed_at(CALL_FUNCTION, &key, bytes, due)
                    .await
            }
        };
        sent.map_err(Error::from)?;
    }
    Ok(())
}

/// A call's vote: its output, staged state and held messages, or its failure.
pub(super) fn vote_of(ran: Result<crate::objects::MethodOutput, Error>) -> Vote {
    match ran {
        Ok(out) => Vote {
            output: Some(out.output),
            error: None,
            state: out.state,
            messages: out.messages,
        },
        Err(e) => Vote {
            output: None,
            error: Some(CallError {
                kind: e.kind(),
                message: e.to_string(),
            }),
            state: None,
            messages: Vec::new(),
        },
    }
}

/// The vote at `tag` (for the call at `seqnum`): read if cast already, else `run`'s outcome,
/// cast once (a conditional append at position 0; another driver's vote, first, counts).
pub(super) async fn cast(
    ctx: &Ctx,
    tag: logbook::Tag,
    seqnum: u64,
    run: impl std::future::Future<Output = Result<crate::objects::MethodOutput, Error>>,
) -> Result<Vote, Error> {
    if let Some(record) = ctx.read_next(tag, Seqnum::ZERO).await? {
        return parse_vote(&record);
    }
    let vote = vote_of(run.await);
    let bytes = Bytes::from(serde_json::to_vec(&vote).expect("votes serialize"));
    match ctx.cond_append(&[tag], bytes, Cond::at(tag, 0)).await {
        Ok(_) => Ok(vote),
        // Another driver of this object voted first: its vote counts.
        Err(LogError::CondFailed { .. }) => {
            let record = ctx
                .read_next(tag, Seqnum::ZERO)
                .await?
                .ok_or_else(|| corrupt(seqnum, "a vote lost its place to nothing"))?;
            parse_vote(&record)
        }
        Err(e) => Err(e.into()),
    }
}
