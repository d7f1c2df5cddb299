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

use super::{answered, corrupt, Driver, Objects};
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
/// again, and how long in all before the transaction is reported `retryable`.
const VOTE_WAIT: Duration = Duration::from_millis(500);
const DECISION_WAIT_MAX: Duration = Duration::from_secs(60);

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

/// The first failed vote, if any.
fn first_failure(votes: &[Vote]) -> Option<(usize, &CallError)> {
    votes
        .iter()
        .enumerate()
        .find_map(|(i, v)| v.error.as_ref().map(|e| (i, e)))
}

fn parse_vote(record: &Record) -> Result<Vote, Error> {
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
        self.admit_txn(id, &calls, caller)?;
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
                return Ok(TxnOutcome {
                    id: id.to_string(),
                    outcome: TxnStatus::Retryable,
                    seqnum,
                    results: Vec::new(),
                    participant: None,
                    error: Some(CallError {
                        kind: ErrorKind::Unavailable,
                        message,
                    }),
                })
            }
            Err(e) => return Err(e),
        };
        // Answered once every participant answered it: a read after the answer sees it.
        for call in &calls {
            self.wait_answered(ctx, &ObjectRef::new(&call.class, &call.key), seqnum, &calls)
                .await?;
        }
        Ok(match first_failure(&votes) {
            None => TxnOutcome {
                id: id.to_string(),
                outcome: TxnStatus::Success,
                seqnum,
                results: votes
                    .into_iter()
                    .map(|v| v.output.unwrap_or(Value::Null))
                    .collect(),
                participant: None,
                error: None,
            },
            Some((i, e)) => TxnOutcome {
                id: id.to_string(),
                outcome: if e.kind == ErrorKind::Unavailable {
                    TxnStatus::Retryable
                } else {
                    TxnStatus::Failure
                },
                seqnum,
                results: Vec::new(),
                participant: Some(i),
                error: Some(e.clone()),
            },
        })
    }

    /// Checks a transaction before anything is logged: its id, its size, one call per
    /// object, and that each call names a method that `caller` may call and that may run in a
    /// transaction.
    fn admit_txn(
        &self,
        id: &str,
        calls: &[TxnCall],
        caller: Option<&ObjectRef>,
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
            let (_, method) = self.admit(&request)?;
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
    fn kick(&self, ctx: &Ctx, calls: &[TxnCall], except: Option<usize>) {
        for (j, call) in calls.iter().enumerate() {
            if Some(j) == except {
                continue;
            }
            let Ok(class) = self.class(&call.class) else {
                continue;
            };
            let object = ObjectRef::new(&call.class, &call.key);
            let slot = self.slot(ctx.book(), &object);
            let (me, ctx) = (self.clone(), ctx.clone());
            tokio::spawn(async move {
                // A failed drive is tried again by the next wait.
                let _ = me.drive(&ctx, &slot, &class, &object).await;
            });
        }
    }

    /// Every participant's vote, in order, waiting for those not cast yet (driving their
    /// objects meanwhile). `known` is the caller's own vote, as participant `i`.
    async fn votes(
        &self,
        ctx: &Ctx,
        seqnum: u64,
        calls: &[TxnCall],
        known: Option<(usize, &Vote)>,
    ) -> Result<Vec<Vote>, Error> {
        let started = Instant::now();
        let mut votes = Vec::with_capacity(calls.len());
        for j in 0..calls.len() {
            if let Some((i, vote)) = known {
                if i == j {
                    votes.push(vote.clone());
                    continue;
                }
            }
            let tag = vote_tag(seqnum, j);
            loop {
                if let Some(record) = ctx.read_next(tag, Seqnum::ZERO).await? {
                    votes.push(parse_vote(&record)?);
                    break;
                }
                if started.elapsed() > DECISION_WAIT_MAX {
                    return Err(Error::Unavailable(format!(
                        "participant {j} ({}/{}) did not vote within {DECISION_WAIT_MAX:?}",
                        calls[j].class, calls[j].key
                    )));
                }
                if ctx
                    .read_next_blocking(tag, Seqnum::ZERO, VOTE_WAIT)
                    .await?
                    .is_none()
                {
                    self.kick(ctx, calls, known.map(|(i, _)| i));
                }
            }
        }
        Ok(votes)
    }

    /// Waits until a done record of `object` answers the transaction at `seqnum`.
    async fn wait_answered(
        &self,
        ctx: &Ctx,
        object: &ObjectRef,
        seqnum: u64,
        calls: &[TxnCall],
    ) -> Result<(), Error> {
        let started = Instant::now();
        let dones = crate::entry::done_tag(&object.class, &object.key);
        let mut after = seqnum;
        loop {
            if answered(ctx, object, seqnum).await?.is_some() {
                return Ok(());
            }
            if started.elapsed() > DECISION_WAIT_MAX {
                return Err(Error::Unavailable(format!(
                    "{object} did not answer the transaction at {seqnum}"
                )));
            }
            match ctx
                .read_next_blocking(dones, Seqnum(after), VOTE_WAIT)
                .await?
            {
                Some(record) => after = record.seqnum.0 + 1,
                None => self.kick(ctx, calls, None),
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
        let i = t
            .calls
            .iter()
            .position(|c| c.class == object.class && c.key == object.key)
            .ok_or_else(|| corrupt(seqnum, "a transaction in the stream of a non-participant"))?;
        let mine = self.vote(ctx, class, object, d, seqnum, t, i).await?;
        let votes = self.votes(ctx, seqnum, &t.calls, Some((i, &mine))).await?;
        if let Some((j, e)) = first_failure(&votes) {
            let reason = Error::of_kind(
                e.kind,
                format!(
                    "transaction {} aborted: {}/{}.{} failed: {}",
                    t.id, t.calls[j].class, t.calls[j].key, t.calls[j].method, e.message
                ),
            );
            return Ok((vec![Outcome::failed(seqnum, &reason)], d.state.clone()));
        }
        // Committed: the held messages go out now, each once (a driver that runs this again
        // sends them under the same keys).
        for (n, message) in mine.messages.iter().enumerate() {
            let key = format!("{}#{i}#{n}", t.id);
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
        let state = mine.state.clone().unwrap_or_else(|| d.state.clone());
        let outcome = Outcome {
            call: seqnum,
            output: mine.output,
            error: None,
            state: mine.state,
            duplicate_of: None,
        };
        Ok((vec![outcome], state))
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
        let tag = vote_tag(seqnum, i);
        if let Some(record) = ctx.read_next(tag, Seqnum::ZERO).await? {
            return parse_vote(&record);
        }
        let call = &t.calls[i];
        let request = CallRequest::new(&call.class, &call.key, &call.method, call.input.clone());
        let ran = match class.method(&call.method) {
            Ok(method) => {
                let input = (
                    d.state.clone(),
                    format!("{object}@{seqnum}"),
                    Some(t.id.clone()),
                );
                self.run_method(ctx, class, object, &request, method, input)
                    .await
            }
            Err(e) => Err(e),
        };
        let vote = match ran {
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
        };
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
}
