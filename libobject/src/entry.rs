//! What libobject writes to the log: an object's call records and done records, in the
//! object's stream, and the streams it tags them with. Every record is JSON.

use crate::{Error, ErrorKind, ObjectRef};
use bytes::Bytes;
use logbook::{Record, Tag};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every call record and done record of an object, in log order.
pub fn object_tag(class: &str, key: &str) -> Tag {
    Tag::named(&["libobject", "object", class, key])
}

/// An object's done records: each lands at its position here (a conditional append), so one
/// object never gets two done records for the same calls.
pub fn done_tag(class: &str, key: &str) -> Tag {
    Tag::named(&["libobject", "done", class, key])
}

/// The call records of an object under one key (an `Idempotency-Key`, or a key a method's
/// call carries): the first of them is the call; later ones are duplicates.
pub fn key_tag(class: &str, key: &str, call_key: &str) -> Tag {
    Tag::named(&["libobject", "key", class, key, call_key])
}

/// The records of transaction `id` (its first is the transaction; later ones, sent again,
/// are duplicates).
pub fn txn_tag(id: &str) -> Tag {
    Tag::named(&["libobject", "txn", id])
}

/// The vote of participant `index` of the transaction whose record is at `txn` (a seqnum):
/// one, conditionally at position 0.
pub fn vote_tag(txn: u64, index: usize) -> Tag {
    Tag::named(&["libobject", "vote", &txn.to_string(), &index.to_string()])
}

/// The calls of the open transaction `id` (each a join record): the objects it reached, in
/// the order it reached them.
pub fn members_tag(id: &str) -> Tag {
    Tag::named(&["libobject", "members", id])
}

/// The join record of open transaction `id` under call key `key`: one, conditionally at
/// position 0, so a call made again (its caller run again) joins once.
pub fn join_tag(id: &str, key: &str) -> Tag {
    Tag::named(&["libobject", "join", id, key])
}

/// The decision of open transaction `id`: one, conditionally at position 0 (commit by its
/// root's driver, or abort by whoever finds it cannot commit).
pub fn decision_tag(id: &str) -> Tag {
    Tag::named(&["libobject", "decision", id])
}

/// The packages installed over HTTP, in book 0, newest last.
pub fn packages_tag() -> Tag {
    Tag::named(&["libobject", "packages"])
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Call(CallRecord),
    Done(DoneRecord),
    /// A transaction, in the stream of each of its participants.
    Txn(TxnRecord),
    /// A call run at once on an object with nothing queued: its call record and its done
    /// record in one, at the done stream's next position. It ran only if no record of the
    /// object's stream came between the newest one its writer had read (`basis`) and it;
    /// otherwise it is a call record like any other, queued behind those.
    Fast(FastRecord),
    /// A call of an open transaction (one that finds its participants as it runs) on this
    /// object: its lock here, held from when the object runs it until the decision.
    Join(JoinRecord),
}

/// A call of an open transaction on one object. The first (the root: the call the
/// transaction was sent with) is the transaction's record; each call a method makes inside
/// it joins another object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRecord {
    pub txn: String,
    /// The seqnum of the root's join record; none in the root's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<u64>,
    pub call: TxnCall,
    /// The object whose method made the call; none for the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<ObjectRef>,
    /// The objects waiting, synchronously, for this call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ObjectRef>,
    pub at_ms: u64,
}

impl JoinRecord {
    /// The transaction's seqnum (its root's), for the join record at `seqnum`.
    pub fn txn_seqnum(&self, seqnum: u64) -> u64 {
        self.root.unwrap_or(seqnum)
    }

    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(&self.call.class, &self.call.key)
    }
}

/// How an open transaction ended: commit (the joins that voted, each taking effect) or
/// abort (nothing takes effect; the error says why, and `Unavailable` makes it retryable: a
/// deadlock's victim, or a decision that did not come in time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub commit: bool,
    /// The seqnums of the join records that commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    /// The object whose call failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// The root call's vote, when its driver decided (the root votes in the decision: one
    /// record where a vote and a decision would be two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Vote>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FastRecord {
    /// The seqnum of the newest record of the object's stream its writer had read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<u64>,
    pub call: CallRecord,
    /// Its outcome (whose `call` is 0: this record) and the state after it.
    pub done: DoneRecord,
}

impl FastRecord {
    /// Its done record, as if it were one, for the fast record at `seqnum`.
    pub fn done_at(&self, seqnum: u64) -> DoneRecord {
        let mut done = self.done.clone();
        for o in &mut done.outcomes {
            o.call = seqnum;
        }
        done
    }
}

/// A serializable transaction: one call on each of its participants, all of which take
/// effect or none. Tagged with every participant's stream, so the log orders it against each
/// one's other calls and transactions alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub id: String,
    pub calls: Vec<TxnCall>,
    pub at_ms: u64,
}

impl TxnRecord {
    /// `object`'s call in the transaction, and its place among the participants.
    pub fn call_of(&self, object: &ObjectRef) -> Option<(usize, &TxnCall)> {
        self.calls
            .iter()
            .enumerate()
            .find(|(_, c)| c.class == object.class && c.key == object.key)
    }
}

/// One participant's call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnCall {
    pub class: String,
    pub key: String,
    pub method: String,
    #[serde(default)]
    pub input: Value,
}

/// A participant's vote: its call run on its state at the transaction, staged (its state
/// after, the messages it sends), or its failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<crate::objects::Message>,
}

/// A call, queued in the object's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub method: String,
    pub input: Value,
    /// The object whose method made the call; none from outside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<ObjectRef>,
    /// The call's key, if it has one: a second call record under it is a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The objects waiting, synchronously, for this call (its caller's chain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ObjectRef>,
    pub at_ms: u64,
    /// The call's id, if it was given one before it was logged (a call first tried at once):
    /// the prefix of the keys of the calls it makes. Else `class/key@seqnum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The calls one drive ran, in their order in the stream, and the state they left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneRecord {
    /// Its position among the object's done records.
    pub index: u64,
    /// How many calls the object has run, these included.
    pub calls_total: u64,
    pub outcomes: Vec<Outcome>,
    /// The state after the last of them.
    pub state: Value,
    pub at_ms: u64,
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The seqnum of its call record.
    pub call: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    /// The state after it, if it changed the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// A duplicate (its key was used first by this call): answered with that one's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    pub kind: ErrorKind,
    pub message: String,
}

impl Outcome {
    /// The outcome of call `call` that failed with `e`.
    pub fn failed(call: u64, e: &Error) -> Outcome {
        Outcome {
            call,
            output: None,
            error: Some(CallError {
                kind: e.kind(),
                message: e.to_string(),
            }),
            state: None,
            duplicate_of: None,
        }
    }

    /// The answer the caller gets.
    pub fn result(&self) -> Result<Value, Error> {
        match &self.error {
            Some(e) => Err(Error::of_kind(e.kind, e.message.clone())),
            None => Ok(self.output.clone().unwrap_or(Value::Null)),
        }
    }
}

impl Entry {
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("entries serialize"))
    }

    pub fn parse(record: &Record) -> Result<Entry, Error> {
        serde_json::from_slice(&record.data).map_err(|e| Error::Corrupt {
            seqnum: record.seqnum.0,
            message: e.to_string(),
        })
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
