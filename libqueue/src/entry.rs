//! The records libqueue writes, the group state every reader derives from them, and the tags
//! that name a queue's streams.
//!
//! A queue `q` with `n` shards has these streams (tags):
//! - `registry_tag(q)`: the queue's creation (its shard count) and each group's join record;
//! - `push_tag(q, s)`: the messages of shard `s`, in FIFO order; `queue_tag(q)` also carries
//!   every message, so a blocked pop wakes on a push to any shard;
//! - `group_tag(q, g, s)`: group `g`'s records about shard `s`: pops, acks, requeues and
//!   discards of dead letters, and checkpoints of the group's state;
//! - `trims_tag(q)`: the cuts of the last trim;
//! - `key_tag(q, scope, key)`: the records written under an idempotency key.
//!
//! Records are JSON; a push record is its JSON header, a newline, then the message's bytes.

use bytes::Bytes;
use logbook::{Record, Seqnum, Tag};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A message's id: its shard and the seqnum of its push record. Shown as `shard:seqnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    pub shard: u32,
    pub seqnum: Seqnum,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.shard, self.seqnum.0)
    }
}

impl FromStr for MessageId {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<MessageId, crate::Error> {
        let bad = || crate::Error::Invalid(format!("a message id is SHARD:SEQNUM, got {s:?}"));
        let (shard, seqnum) = s.split_once(':').ok_or_else(bad)?;
        Ok(MessageId {
            shard: shard.parse().map_err(|_| bad())?,
            seqnum: Seqnum(seqnum.parse().map_err(|_| bad())?),
        })
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MessageId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One record of libqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// The queue's creation; the first one in the registry holds.
    Create { shards: u32 },
    /// A group's creation; the first one of a name holds, and the group sees the messages
    /// pushed after it.
    Join { group: String },
    /// A message (its bytes follow the header).
    Push {
        ts_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A pop: takes the earliest message of the shard available to it (see `State::apply`).
    /// It carries the settings it was made under, so every reader decides alike.
    Pop {
        ts_ms: u64,
        shard: u32,
        visibility_ms: u64,
        max_deliveries: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// An ack of the delivery of `message` by the pop record `pop`.
    Ack {
        ts_ms: u64,
        shard: u32,
        message: Seqnum,
        pop: Seqnum,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A dead letter made available again, its deliveries counted from 0.
    Requeue { ts_ms: u64, message: Seqnum },
    /// A dead letter dropped.
    Discard { ts_ms: u64, message: Seqnum },
    /// The group's state after every earlier record of its stream: appended conditionally
    /// at `state.position`, so no record lands between that state and this record.
    Checkpoint { state: State },
    /// The cuts of a trim: where the next trim may cut each stream.
    Trim { cuts: Vec<Cut> },
}

/// Where a trim may cut one group's stream of one shard, and the lowest message of the shard
/// the group may still need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cut {
    pub group: String,
    pub shard: u32,
    pub checkpoint: Seqnum,
    pub low: Seqnum,
}

impl Entry {
    /// The record's bytes: the JSON header, and for a push a newline and the message.
    pub fn encode(&self, payload: Option<&[u8]>) -> Vec<u8> {
        let mut data = serde_json::to_vec(self).expect("an entry serializes");
        if let Some(payload) = payload {
            data.push(b'\n');
            data.extend_from_slice(payload);
        }
        data
    }

    /// A record's entry, and for a push its message.
    pub fn decode(record: &Record) -> Result<(Entry, Bytes), crate::Error> {
        let data = &record.data;
        let end = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
        let entry: Entry =
            serde_json::from_slice(&data[..end]).map_err(|e| crate::Error::Corrupt {
                seqnum: record.seqnum,
                reason: format!("not a libqueue record: {e}"),
            })?;
        let payload = if end < data.len() {
            data.slice(end + 1..)
        } else {
            Bytes::new()
        };
        Ok((entry, payload))
    }

    /// The record's writer's time, for the records that carry one.
    pub fn ts_ms(&self) -> Option<u64> {
        match self {
            Entry::Pop { ts_ms, .. }
            | Entry::Ack { ts_ms, .. }
            | Entry::Requeue { ts_ms, .. }
            | Entry::Discard { ts_ms, .. }
            | Entry::Push { ts_ms, .. } => Some(*ts_ms),
            _ => None,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            Entry::Pop { key, .. } | Entry::Ack { key, .. } | Entry::Push { key, .. } => {
                key.as_deref()
            }
            _ => None,
        }
    }
}

/// A message handed to a pop and not yet acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Flight {
    /// The pop record that took it: the delivery's receipt.
    pub pop: Seqnum,
    /// The group's clock at that pop.
    pub at_ms: u64,
    pub visibility_ms: u64,
    /// Deliveries so far, this one included.
    pub deliveries: u32,
}

impl Flight {
    /// The group clock at which the message is available again.
    pub fn expires_ms(&self) -> u64 {
        self.at_ms.saturating_add(self.visibility_ms)
    }
}

/// What a record of a group's stream did, as every reader decides it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// No record yet, or a checkpoint.
    #[default]
    Nothing,
    /// A pop took `message`, for its `deliveries`-th delivery.
    Delivered {
        message: Seqnum,
        deliveries: u32,
    },
    /// A pop found nothing available.
    Empty,
    Acked,
    /// An ack of a delivery that is not the message's current one.
    NotInFlight,
    Requeued,
    Discarded,
    /// A requeue or discard of a message that is not a dead letter.
    NotDead,
    /// A record under a key an earlier record holds: it did nothing.
    Duplicate {
        first: Seqnum,
    },
}

/// A group's state for one shard after a record of its stream: a pure function of the log up
/// to that record, which every reader computes alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    /// Records of the group's stream so far (its next record's position).
    pub position: u64,
    /// Records applied since the newest checkpoint.
    pub depth: u64,
    /// Messages below this were each delivered at least once.
    pub next: Seqnum,
    /// The group's clock: the greatest writer's time of its records so far.
    pub clock_ms: u64,
    /// Messages delivered and not acked, by seqnum.
    #[serde(with = "pairs")]
    pub in_flight: BTreeMap<u64, Flight>,
    /// Requeued dead letters, with their deliveries so far.
    #[serde(with = "pairs")]
    pub ready: BTreeMap<u64, u32>,
    /// Dead letters, with their deliveries.
    #[serde(with = "pairs")]
    pub dead: BTreeMap<u64, u32>,
    pub acked: u64,
    pub delivered: u64,
    /// What the last record did.
    pub last: Outcome,
}

impl State {
    /// A group that joined at `join`: it sees the messages pushed after its join record.
    pub fn joined_at(join: Seqnum) -> State {
        State {
            position: 0,
            depth: 0,
            next: join,
            clock_ms: 0,
            in_flight: BTreeMap::new(),
            ready: BTreeMap::new(),
            dead: BTreeMap::new(),
            acked: 0,
            delivered: 0,
            last: Outcome::Nothing,
        }
    }

    /// The lowest message the group may still need: none below it is in flight, ready, dead
    /// or undelivered. It never goes down.
    pub fn low(&self) -> Seqnum {
        let firsts = [
            self.in_flight.keys().next(),
            self.ready.keys().next(),
            self.dead.keys().next(),
        ];
        firsts
            .into_iter()
            .flatten()
            .map(|s| Seqnum(*s))
            .fold(self.next, Seqnum::min)
    }
}

/// Maps keyed by seqnum as lists of pairs: JSON object keys are strings, which a state inside
/// a tagged record (a checkpoint) would not read back as numbers.
mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<V: Serialize, S: Serializer>(
        map: &BTreeMap<u64, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, V>, D::Error> {
        Ok(Vec::<(u64, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// The cache attached to a group record: the group's state after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Aux {
    pub state: State,
}

impl Aux {
    /// The state cached on a record, if any can be read (a cache that fails to parse is
    /// dropped, never trusted).
    pub fn of(aux: Option<&Bytes>) -> Option<State> {
        aux.and_then(|a| serde_json::from_slice::<Aux>(a).ok())
            .map(|a| a.state)
    }
}

pub(crate) fn registry_tag(queue: &str) -> Tag {
    Tag::named(&["libqueue", "registry", queue])
}

pub(crate) fn trims_tag(queue: &str) -> Tag {
    Tag::named(&["libqueue", "trims", queue])
}

pub(crate) fn queue_tag(queue: &str) -> Tag {
    Tag::named(&["libqueue", "queue", queue])
}

pub(crate) fn push_tag(queue: &str, shard: u32) -> Tag {
    Tag::named(&["libqueue", "push", queue, &shard.to_string()])
}

pub(crate) fn group_tag(queue: &str, group: &str, shard: u32) -> Tag {
    Tag::named(&["libqueue", "group", queue, group, &shard.to_string()])
}

/// The stream of the records written under `key` in `scope` ("push", or "pop:G"/"ack:G").
pub(crate) fn key_tag(queue: &str, scope: &str, key: &str) -> Tag {
    Tag::named(&["libqueue", "key", queue, scope, key])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_and_distinct() {
        assert_eq!(push_tag("q", 1), push_tag("q", 1));
        assert_ne!(push_tag("q", 1), push_tag("q", 2));
        assert_ne!(group_tag("q", "g", 0), group_tag("q", "h", 0));
        assert_ne!(group_tag("ab", "c", 0), group_tag("a", "bc", 0));
        // The names are part of the log's format: they must never change.
        assert_eq!(push_tag("q", 1), Tag(0xc4f1_870e_4058_bde3));
    }

    #[test]
    fn a_push_record_round_trips_with_its_message() {
        let entry = Entry::Push {
            ts_ms: 7,
            key: Some("k".into()),
        };
        let record = Record {
            seqnum: Seqnum(3),
            book: logbook::BookId(1),
            tags: vec![],
            data: Bytes::from(entry.encode(Some(b"a\nb"))),
            aux: None,
        };
        let (back, payload) = Entry::decode(&record).unwrap();
        assert_eq!(back, entry);
        assert_eq!(&payload[..], b"a\nb");
    }

    #[test]
    fn message_ids_round_trip_as_text() {
        let id = MessageId {
            shard: 3,
            seqnum: Seqnum(42),
        };
        assert_eq!(id.to_string(), "3:42");
        assert_eq!("3:42".parse::<MessageId>().unwrap(), id);
        assert!("x".parse::<MessageId>().is_err());
    }
}
