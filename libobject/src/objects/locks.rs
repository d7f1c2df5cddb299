//! Open transactions: serializable transactions whose participants are found as they run
//! (two-phase commit with two-phase locking, on the log).
//!
//! The transaction is sent with one call (its root). Each call of it on an object is a join
//! record in the object's stream (and the transaction's members): the object runs it when
//! every record before it ran, logs a vote (its output and staged state, or its failure),
//! and then holds the object (its lock: later calls queue behind) until the decision. A
//! method running in the transaction that calls another object appends a join there and
//! waits for that object's vote: the object joins, and the caller gets its answer.
//!
//! Once the root's call ended (every call it made answered), the root's driver decides:
//! commit with every join that voted, or abort if one failed; the root's outcome goes in the
//! decision itself (one record where a vote and a decision would be two syncs apart). The decision is one record,
//! conditionally at position 0, so an abort by anyone else (a deadlock's victim, a wait
//! that ran out) and the commit cannot both land. Each participant applies it to its own
//! join: commit, its staged state becomes its state and its held messages leave; abort,
//! nothing changes.
//!
//! Locks taken in the order calls are made can wait in a cycle (T1 holds A and waits for B,
//! T2 holds B and waits for A). A call that has waited `DEADLOCK_CHECK_AFTER` for its vote
//! follows who waits for whom through the objects' queues in the log (edge chasing), and
//! if its own transaction is on a cycle, aborts the youngest open transaction of the cycle
//! (the largest seqnum): every member finds the same cycle and so the same victim, and the
//! decision's one place makes it one abort. The victim is told `retryable`.

use super::txn::{
    cast, committed, outcome_of, parse_vote, vote_of, DECISION_WAIT_MAX, KICK_EVERY_POLLS,
    VOTE_POLL, VOTE_WAIT,
};
use super::{corrupt, newest_done, CallRequest, Driver, Objects};
use crate::entry::{
    decision_tag, join_tag, members_tag, now_ms, object_tag, txn_tag, vote_tag, CallError,
    Decision, Entry, JoinRecord, Outcome, TxnCall, Vote,
};
use crate::{Class, Error, ErrorKind, ObjectRef, TxnOutcome};
use logbook::{Cond, LogError, Seqnum};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tally_sdk::Ctx;

/// The call key of an open transaction's root call.
pub(super) const ROOT_KEY: &str = "root";
/// How long a call of an open transaction waits for its object's vote before it looks for a
/// deadlock, and how often it looks again.
const DEADLOCK_CHECK_AFTER: Duration = Duration::from_millis(5);
const DEADLOCK_CHECK_EVERY: Duration = Duration::from_millis(20);
/// Most transactions one look for a deadlock visits.
const WAIT_GRAPH_NODES_MAX: usize = 256;

/// A transaction in the graph of who waits for whom.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    /// The seqnum of its first record: the larger, the younger.
    seqnum: u64,
    /// The calls of a transaction of known participants; none for an open one.
    calls: Option<Vec<TxnCall>>,
}

impl Objects {
    /// Runs an open transaction: `root` runs as a participant's call, and every object its
    /// method calls (and theirs, in turn) joins the transaction; all of them take effect or
    /// none, serializably. Each object is locked from when it runs its call until the
    /// decision; a cycle of transactions waiting for each other's locks is broken by aborting
    /// one of them (`retryable`). The outcome is decided once per `id`; `results` holds the
    /// root call's output.
    pub async fn transact_open(
        &self,
        ctx: &Ctx,
        id: &str,
        root: TxnCall,
        caller: Option<&ObjectRef>,
    ) -> Result<TxnOutcome, Error> {
        self.admit_txn(id, std::slice::from_ref(&root), caller, false)?;
        let seqnum = match open_txn(ctx, id, Some(&root)).await? {
            Some(seqnum) => seqnum,
            None => {
                let join = JoinRecord {
                    txn: id.to_string(),
                    root: None,
                    call: root.clone(),
                    caller: None,
                    chain: Vec::new(),
                    at_ms: now_ms(),
                };
                let key = join_tag(id, ROOT_KEY);
                let tags = [
                    txn_tag(id),
                    members_tag(id),
                    key,
                    object_tag(&root.class, &root.key),
                ];
                let bytes = Entry::Join(join).to_bytes();
                match ctx.cond_append(&tags, bytes, Cond::at(key, 0)).await {
                    // Another coordinator of the same id may have been first.
                    Ok(_) | Err(LogError::CondFailed { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                open_txn(ctx, id, Some(&root))
                    .await?
                    .ok_or_else(|| Error::Unavailable("the transaction's record is gone".into()))?
            }
        };
        self.finish_open(ctx, id, seqnum, &root).await
    }

    /// The outcome of open transaction `id` (its root's join at `seqnum`), once decided and,
    /// on commit, answered by every participant (so a read after it sees it).
    pub(super) async fn finish_open(
        &self,
        ctx: &Ctx,
        id: &str,
        seqnum: u64,
        root: &TxnCall,
    ) -> Result<TxnOutcome, Error> {
        let root = ObjectRef::new(&root.class, &root.key);
        let decision = self.wait_decision(ctx, id, Some(root)).await?;
        let members = members(ctx, id).await?;
        if !decision.commit {
            let participant = decision
                .object
                .as_ref()
                .and_then(|o| members.iter().position(|(_, j)| &j.object() == o));
            let error = decision.error.unwrap_or_else(|| CallError {
                kind: ErrorKind::Failed,
                message: "aborted".into(),
            });
            return Ok(outcome_of(id, seqnum, Err((participant, error))));
        }
        let committed: Vec<&(u64, JoinRecord)> = members
            .iter()
            .filter(|(s, _)| decision.joins.contains(s))
            .collect();
        let calls: Vec<TxnCall> = committed.iter().map(|(_, j)| j.call.clone()).collect();
        for (s, j) in &committed {
            self.wait_answered(ctx, &j.object(), *s, &calls).await?;
        }
        let output = decision.root.and_then(|v| v.output).unwrap_or(Value::Null);
        Ok(outcome_of(id, seqnum, Ok(vec![output])))
    }

    /// A call a method of open transaction `request.transaction` makes: joins the callee to
    /// the transaction (once per call key) and answers its vote.
    pub(super) async fn join(&self, ctx: &Ctx, request: CallRequest) -> Result<Value, Error> {
        let id = request.transaction.clone().unwrap_or_default();
        let root = open_txn(ctx, &id, None)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no open transaction {id:?}")))?;
        let key = request.call_key.clone().ok_or_else(|| {
            Error::Invalid("a call in a transaction is made by a method (This::call)".into())
        })?;
        let callee = ObjectRef::new(&request.class, &request.key);
        let tag = join_tag(&id, &key);
        let seqnum = match ctx.read_next(tag, Seqnum::ZERO).await? {
            Some(record) => record.seqnum.0,
            None => {
                if let Some(d) = decision(ctx, &id).await? {
                    return Err(aborted(&id, &d));
                }
                let joined = members(ctx, &id)
                    .await?
                    .iter()
                    .any(|(_, j)| j.object() == callee);
                // Joined since the look above by another run of the same call: that join.
                let again = ctx.read_next(tag, Seqnum::ZERO).await?;
                if let Some(record) = again {
                    return self
                        .wait_vote(ctx, &id, root, record.seqnum.0, &callee)
                        .await;
                }
                if joined {
                    return Err(Error::Invalid(format!(
                        "{callee} takes part in transaction {id} already: a transaction calls each object once"
                    )));
                }
                let join = JoinRecord {
                    txn: id.clone(),
                    root: Some(root),
                    call: TxnCall {
                        class: request.class.clone(),
                        key: request.key.clone(),
                        method: request.method.clone(),
                        input: request.input.clone(),
                    },
                    caller: request.caller.clone(),
                    chain: request.chain.clone(),
                    at_ms: now_ms(),
                };
                let tags = [
                    object_tag(&callee.class, &callee.key),
                    members_tag(&id),
                    tag,
                ];
                let bytes = Entry::Join(join).to_bytes();
                match ctx.cond_append(&tags, bytes, Cond::at(tag, 0)).await {
                    Ok(seqnum) => seqnum.0,
                    Err(LogError::CondFailed { .. }) => {
                        ctx.read_next(tag, Seqnum::ZERO)
                            .await?
                            .ok_or_else(|| corrupt(root, "a join lost its place to nothing"))?
                            .seqnum
                            .0
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        self.wait_vote(ctx, &id, root, seqnum, &callee).await
    }

    /// Waits for the vote of the join at `seqnum` (on `callee`), driving the callee, and
    /// looking for a deadlock while it waits; an abort of the transaction ends the wait.
    async fn wait_vote(
        &self,
        ctx: &Ctx,
        id: &str,
        root: u64,
        seqnum: u64,
        callee: &ObjectRef,
    ) -> Result<Value, Error> {
        let started = Instant::now();
        let tag = vote_tag(seqnum, 0);
        let mut check_at = DEADLOCK_CHECK_AFTER;
        let mut kick_at = VOTE_POLL * KICK_EVERY_POLLS;
        self.drive_later(ctx, callee);
        loop {
            // Until the next look for a deadlock, at most.
            let wait = check_at
                .saturating_sub(started.elapsed())
                .clamp(Duration::from_millis(1), VOTE_POLL);
            if let Some(record) = ctx.read_next_blocking(tag, Seqnum::ZERO, wait).await? {
                let vote = parse_vote(&record)?;
                return match vote.error {
                    Some(e) => Err(Error::of_kind(e.kind, e.message)),
                    None => Ok(vote.output.unwrap_or(Value::Null)),
                };
            }
            if let Some(d) = decision(ctx, id).await? {
                return Err(aborted(id, &d));
            }
            if started.elapsed() >= kick_at {
                self.drive_later(ctx, callee);
                kick_at = started.elapsed() + VOTE_POLL * KICK_EVERY_POLLS;
            }
            if started.elapsed() >= check_at {
                self.break_deadlock(ctx, id, root).await?;
                check_at = started.elapsed() + DEADLOCK_CHECK_EVERY;
            }
            if started.elapsed() > DECISION_WAIT_MAX {
                let message = format!("{callee} did not answer within {DECISION_WAIT_MAX:?}");
                abort(ctx, id, ErrorKind::Unavailable, message).await?;
            }
        }
    }

    /// A participant's turn at a join of an open transaction at the head of its queue: vote
    /// (or read its vote), decide if it is the root's, hold the object until the decision,
    /// and answer it: the staged state on commit, the state as it was on abort.
    pub(super) async fn run_join(
        &self,
        ctx: &Ctx,
        class: &Class,
        object: &ObjectRef,
        d: &Driver,
        seqnum: u64,
        j: &JoinRecord,
    ) -> Result<(Vec<Outcome>, Value), Error> {
        let failed = |e: Error| Ok((vec![Outcome::failed(seqnum, &e)], d.state.clone()));
        if j.root.is_none() {
            // A root whose id another transaction took first never runs (a failed read of
            // the log is not that: the drive stops and is tried again).
            let first = match open_txn(ctx, &j.txn, None).await {
                Ok(first) => first,
                Err(Error::Invalid(_)) => None,
                Err(e) => return Err(e),
            };
            if first != Some(seqnum) {
                return failed(Error::Invalid(format!(
                    "transaction id {} was used before",
                    j.txn
                )));
            }
        }
        let decision = match decision(ctx, &j.txn).await? {
            Some(decision) => decision,
            None => {
                let request = CallRequest {
                    caller: j.caller.clone(),
                    chain: j.chain.clone(),
                    transaction: Some(j.txn.clone()),
                    open: true,
                    ..CallRequest::new(
                        &object.class,
                        &object.key,
                        &j.call.method,
                        j.call.input.clone(),
                    )
                };
                let input = (
                    d.state.clone(),
                    format!("{object}@{seqnum}"),
                    Some(j.txn.clone()),
                );
                let run = async {
                    let method = class.method(&j.call.method)?;
                    self.run_method(ctx, class, object, &request, method, input)
                        .await
                };
                if j.root.is_none() {
                    // The root votes in the decision it makes (every call it made answered).
                    let vote = vote_of(run.await);
                    self.decide(ctx, &j.txn, seqnum, vote).await?
                } else {
                    let vote = cast(ctx, vote_tag(seqnum, 0), seqnum, run).await?;
                    if let Some(e) = vote.error {
                        // The transaction aborts: this object holds nothing for it.
                        return failed(Error::of_kind(e.kind, e.message));
                    }
                    self.wait_decision(ctx, &j.txn, None).await?
                }
            }
        };
        if decision.commit && !decision.joins.contains(&seqnum) {
            // Joined by a run of a method whose answer did not count.
            return failed(Error::Failed(format!(
                "transaction {} was decided without this call",
                j.txn
            )));
        }
        if !decision.commit {
            return failed(aborted(&j.txn, &decision));
        }
        let vote = match (j.root, decision.root) {
            (None, Some(vote)) => vote,
            _ => read_vote(ctx, seqnum)
                .await?
                .ok_or_else(|| corrupt(seqnum, "a join committed without its vote"))?,
        };
        committed(ctx, &format!("{}#{seqnum}", j.txn), seqnum, vote, d).await
    }

    /// Decides open transaction `id` once its root (the join at `root`) ran, with `vote` its
    /// outcome: commit with every join that voted, unless one failed (abort). Returns the
    /// decision that stands (another one, if it was decided already).
    async fn decide(&self, ctx: &Ctx, id: &str, root: u64, vote: Vote) -> Result<Decision, Error> {
        if let Some(decision) = decision(ctx, id).await? {
            return Ok(decision);
        }
        let mut joins = Vec::new();
        // The first call that failed, in the order they joined; the root's failure only if
        // none of its calls failed (it fails because one did, if one did).
        let (mut failed, mut root_failed) = (None, None);
        for (seqnum, j) in members(ctx, id).await? {
            let voted = match seqnum == root {
                true => Some(vote.clone()),
                false => read_vote(ctx, seqnum).await?,
            };
            match voted {
                Some(Vote { error: Some(e), .. }) if seqnum == root => {
                    root_failed = Some((j.object(), e));
                }
                Some(Vote { error: Some(e), .. }) => {
                    failed.get_or_insert((j.object(), e));
                }
                Some(_) => joins.push(seqnum),
                // Made by a run of a method that did not count (its answer was not used).
                None => {}
            }
        }
        let decision = match failed.or(root_failed) {
            None => Decision {
                commit: true,
                joins,
                error: None,
                object: None,
                root: Some(vote),
                at_ms: now_ms(),
            },
            Some((object, e)) => Decision {
                commit: false,
                joins: Vec::new(),
                error: Some(CallError {
                    kind: e.kind,
                    message: format!("{object}: {}", e.message),
                }),
                object: Some(object),
                root: None,
                at_ms: now_ms(),
            },
        };
        if append_decision(ctx, id, &decision).await? {
            return Ok(decision);
        }
        self::decision(ctx, id)
            .await?
            .ok_or_else(|| corrupt(root, "a decision lost its place to nothing"))
    }

    /// Waits for open transaction `id`'s decision, driving its root's object meanwhile (its
    /// driver decides: a coordinator that died leaves it to whoever waits); after
    /// `DECISION_WAIT_MAX`, aborts it (retryable). The coordinator passes the root's object
    /// and has it run at once; a participant drives it only once the decision is slow.
    async fn wait_decision(
        &self,
        ctx: &Ctx,
        id: &str,
        mut root: Option<ObjectRef>,
    ) -> Result<Decision, Error> {
        let started = Instant::now();
        loop {
            if let Some(decision) = decision(ctx, id).await? {
                return Ok(decision);
            }
            if let Some(root) = &root {
                self.drive_later(ctx, root);
            }
            if started.elapsed() > DECISION_WAIT_MAX {
                let message = format!("no decision within {DECISION_WAIT_MAX:?}");
                abort(ctx, id, ErrorKind::Unavailable, message).await?;
                continue;
            }
            let waited = ctx.read_next_blocking(decision_tag(id), Seqnum::ZERO, VOTE_WAIT);
            if waited.await?.is_none() && root.is_none() {
                root = root_object(ctx, id).await?;
            }
        }
    }

    /// Looks for a cycle of transactions waiting for each other through open transaction
    /// `id` (its root at `seqnum`); on one, aborts the cycle's youngest open transaction.
    /// Returns the victim's id.
    async fn break_deadlock(
        &self,
        ctx: &Ctx,
        id: &str,
        seqnum: u64,
    ) -> Result<Option<String>, Error> {
        let start = Node {
            id: id.to_string(),
            seqnum,
            calls: None,
        };
        let mut parent: HashMap<String, Node> = HashMap::new();
        let mut seen = HashSet::from([id.to_string()]);
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for next in waits_for(ctx, &node).await? {
                if next.id == id {
                    // id -> ... -> node -> id: the cycle, from node back to id.
                    let mut cycle = vec![node.clone()];
                    let mut at = node.id.clone();
                    while let Some(p) = parent.get(&at) {
                        cycle.push(p.clone());
                        at = p.id.clone();
                    }
                    let broken = abort_victim(ctx, &cycle).await?;
                    if let Some((_, members)) = &broken {
                        self.observe(crate::Observation::Deadlock { members: *members });
                    }
                    return Ok(broken.map(|(victim, _)| victim));
                }
                if seen.len() < WAIT_GRAPH_NODES_MAX && seen.insert(next.id.clone()) {
                    parent.insert(next.id.clone(), node.clone());
                    queue.push_back(next);
                }
            }
        }
        Ok(None)
    }
}

/// Aborts the youngest open transaction of `cycle` if every one of them is still undecided
/// (each waits for the next until one is decided, so the cycle is there now).
/// Returns the victim's id and the cycle's length if this abort is its decision.
async fn abort_victim(ctx: &Ctx, cycle: &[Node]) -> Result<Option<(String, usize)>, Error> {
    let Some(victim) = cycle
        .iter()
        .filter(|n| n.calls.is_none())
        .max_by_key(|n| n.seqnum)
    else {
        return Ok(None);
    };
    for node in cycle {
        if decided(ctx, node).await? {
            return Ok(None);
        }
    }
    let mut ids: Vec<&str> = cycle.iter().rev().map(|n| n.id.as_str()).collect();
    ids.push(ids[0]);
    let message = format!(
        "deadlock: transactions {} wait for each other; {} (the youngest) is the victim",
        ids.join(" -> "),
        victim.id
    );
    let landed = abort(ctx, &victim.id, ErrorKind::Unavailable, message).await?;
    Ok(landed.then(|| (victim.id.clone(), cycle.len())))
}

/// The transactions `node` waits for: for each of its calls not voted yet, the undecided
/// transactions queued before it on that object.
async fn waits_for(ctx: &Ctx, node: &Node) -> Result<Vec<Node>, Error> {
    let mut waiting = Vec::new();
    match &node.calls {
        None => {
            for (seqnum, j) in members(ctx, &node.id).await? {
                if read_vote(ctx, seqnum).await?.is_none() {
                    waiting.push((j.object(), seqnum));
                }
            }
        }
        Some(calls) => {
            for (i, c) in calls.iter().enumerate() {
                let voted = ctx
                    .read_next(vote_tag(node.seqnum, i), Seqnum::ZERO)
                    .await?;
                if voted.is_none() {
                    waiting.push((ObjectRef::new(&c.class, &c.key), node.seqnum));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (object, before) in waiting {
        out.extend(blockers(ctx, &object, before, &node.id).await?);
    }
    Ok(out)
}

/// The undecided transactions (other than `me`) with a record in `object`'s queue before
/// seqnum `before`: what a call of `me` there waits for.
async fn blockers(
    ctx: &Ctx,
    object: &ObjectRef,
    before: u64,
    me: &str,
) -> Result<Vec<Node>, Error> {
    // Everything up to the last call the newest done record answered ran.
    let mut at = match newest_done(ctx, object).await? {
        Some((seqnum, done)) => done.outcomes.last().map_or(seqnum, |o| o.call) + 1,
        None => 0,
    };
    let stream = object_tag(&object.class, &object.key);
    let mut out = Vec::new();
    while let Some(record) = ctx.read_next(stream, Seqnum(at)).await? {
        let seqnum = record.seqnum.0;
        if seqnum >= before {
            break;
        }
        at = seqnum + 1;
        let node = match Entry::parse(&record)? {
            Entry::Join(j) if j.txn != me => {
                // A failed call holds nothing.
                if matches!(
                    read_vote(ctx, seqnum).await?,
                    Some(Vote { error: Some(_), .. })
                ) {
                    continue;
                }
                Node {
                    id: j.txn.clone(),
                    seqnum: j.txn_seqnum(seqnum),
                    calls: None,
                }
            }
            Entry::Txn(t) if t.id != me => {
                // A transaction sent again is answered at once: only its first record holds.
                let first = ctx.read_next(txn_tag(&t.id), Seqnum::ZERO).await?;
                if first.map(|r| r.seqnum.0) != Some(seqnum) {
                    continue;
                }
                Node {
                    id: t.id,
                    seqnum,
                    calls: Some(t.calls),
                }
            }
            _ => continue,
        };
        if !decided(ctx, &node).await? {
            out.push(node);
        }
    }
    Ok(out)
}

/// Whether a transaction is decided: an open one's decision is logged; one of known
/// participants has every vote, or a failed one.
async fn decided(ctx: &Ctx, node: &Node) -> Result<bool, Error> {
    let Some(calls) = &node.calls else {
        return Ok(decision(ctx, &node.id).await?.is_some());
    };
    let mut all = true;
    for i in 0..calls.len() {
        match ctx
            .read_next(vote_tag(node.seqnum, i), Seqnum::ZERO)
            .await?
        {
            Some(record) if parse_vote(&record)?.error.is_some() => return Ok(true),
            Some(_) => {}
            None => all = false,
        }
    }
    Ok(all)
}

/// The seqnum of open transaction `id`'s root join, if it was sent; an error if `id` is a
/// transaction of known participants, or (given `root`) was sent with another root call.
async fn open_txn(ctx: &Ctx, id: &str, root: Option<&TxnCall>) -> Result<Option<u64>, Error> {
    let Some(record) = ctx.read_next(txn_tag(id), Seqnum::ZERO).await? else {
        return Ok(None);
    };
    match Entry::parse(&record)? {
        Entry::Join(j) if j.root.is_none() && root.is_none_or(|r| *r == j.call) => {
            Ok(Some(record.seqnum.0))
        }
        _ => Err(Error::Invalid(format!(
            "transaction {id} was sent before with other calls"
        ))),
    }
}

/// The object of open transaction `id`'s root call, if it was sent.
async fn root_object(ctx: &Ctx, id: &str) -> Result<Option<ObjectRef>, Error> {
    let Some(record) = ctx.read_next(txn_tag(id), Seqnum::ZERO).await? else {
        return Ok(None);
    };
    match Entry::parse(&record)? {
        Entry::Join(j) => Ok(Some(j.object())),
        _ => Ok(None),
    }
}

/// Every join of open transaction `id`, in log order (the root first).
async fn members(ctx: &Ctx, id: &str) -> Result<Vec<(u64, JoinRecord)>, Error> {
    let tag = members_tag(id);
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(record) = ctx.read_next(tag, Seqnum(at)).await? {
        at = record.seqnum.0 + 1;
        match Entry::parse(&record)? {
            Entry::Join(j) => out.push((record.seqnum.0, j)),
            _ => return Err(corrupt(record.seqnum.0, "not a join record")),
        }
    }
    Ok(out)
}

async fn read_vote(ctx: &Ctx, join: u64) -> Result<Option<Vote>, Error> {
    match ctx.read_next(vote_tag(join, 0), Seqnum::ZERO).await? {
        Some(record) => parse_vote(&record).map(Some),
        None => Ok(None),
    }
}

async fn decision(ctx: &Ctx, id: &str) -> Result<Option<Decision>, Error> {
    match ctx.read_next(decision_tag(id), Seqnum::ZERO).await? {
        Some(record) => serde_json::from_slice(&record.data)
            .map(Some)
            .map_err(|e| corrupt(record.seqnum.0, &e.to_string())),
        None => Ok(None),
    }
}

/// Logs `decision` unless another is logged already (that one counts).
/// Whether it was this one that landed.
async fn append_decision(ctx: &Ctx, id: &str, decision: &Decision) -> Result<bool, Error> {
    let tag = decision_tag(id);
    let bytes = bytes::Bytes::from(serde_json::to_vec(decision).expect("decisions serialize"));
    match ctx.cond_append(&[tag], bytes, Cond::at(tag, 0)).await {
        Ok(_) => Ok(true),
        Err(LogError::CondFailed { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Aborts open transaction `id` (unless it is decided already) for a reason of no call's;
/// whether this abort is the decision.
async fn abort(ctx: &Ctx, id: &str, kind: ErrorKind, message: String) -> Result<bool, Error> {
    let decision = Decision {
        commit: false,
        joins: Vec::new(),
        error: Some(CallError { kind, message }),
        object: None,
        root: None,
        at_ms: now_ms(),
    };
    append_decision(ctx, id, &decision).await
}

/// The error a call of an aborted transaction answers.
fn aborted(id: &str, decision: &Decision) -> Error {
    match &decision.error {
        Some(e) => Error::of_kind(e.kind, format!("transaction {id} aborted: {}", e.message)),
        None => Error::Failed(format!("transaction {id} aborted")),
    }
}
