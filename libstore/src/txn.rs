//! Interactive transactions: read and write at a snapshot, commit with one record that every
//! reader decides alike (`Store::decide_commit`), and the outcome of any transaction.
//!
//! Reads come from one snapshot (the log's tail at `begin`), so even a transaction that will
//! abort never sees a state that did not exist. Writes are buffered as whole new documents;
//! the transaction's own reads see them. Nothing is appended before `commit`, and nothing at
//! all if the transaction wrote nothing.

use crate::entry::{Commit, ObjectId, Touched, Written};
use crate::path::{self, Op};
use crate::{Error, Object, Store, TXN_OBJECTS_MAX};
use logbook::Seqnum;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use std::collections::BTreeMap;

/// What a transaction's commit validates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Every object read or written must be unchanged between the snapshot and the commit
    /// record: the transaction is as if it ran alone at its commit record.
    #[default]
    Serializable,
    /// Only the objects written must be unchanged (first committer wins): fewer aborts, and
    /// write skew is possible (two transactions that read each other's writes' objects).
    Snapshot,
}

/// How a transaction ended. In JSON: `{"committed": true, "seqnum": .., "reads": [..]}` or
/// `{"committed": false, "seqnum": .., "reason": ".."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "OutcomeJson", from = "OutcomeJson")]
pub enum Outcome {
    /// The transaction took effect at `seqnum` (`None`: it wrote nothing and appended
    /// nothing). `reads`: a one-shot transaction's reads, in order.
    Committed {
        seqnum: Option<Seqnum>,
        reads: Vec<Option<Value>>,
    },
    /// The transaction did not take effect: its record at `seqnum` lost to a conflicting one
    /// (interactive: try again from `begin`), or its own logic stopped it (one-shot).
    Aborted {
        seqnum: Option<Seqnum>,
        reason: String,
    },
}

impl Outcome {
    /// Whether the transaction took effect.
    pub fn is_committed(&self) -> bool {
        matches!(self, Outcome::Committed { .. })
    }
}

#[derive(Serialize, Deserialize)]
struct OutcomeJson {
    committed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seqnum: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reads: Vec<Option<Value>>,
}

impl From<Outcome> for OutcomeJson {
    fn from(outcome: Outcome) -> OutcomeJson {
        match outcome {
            Outcome::Committed { seqnum, reads } => OutcomeJson {
                committed: true,
                seqnum: seqnum.map(|s| s.0),
                reason: None,
                reads,
            },
            Outcome::Aborted { seqnum, reason } => OutcomeJson {
                committed: false,
                seqnum: seqnum.map(|s| s.0),
                reason: Some(reason),
                reads: Vec::new(),
            },
        }
    }
}

impl From<OutcomeJson> for Outcome {
    fn from(json: OutcomeJson) -> Outcome {
        let seqnum = json.seqnum.map(Seqnum);
        if json.committed {
            Outcome::Committed {
                seqnum,
                reads: json.reads,
            }
        } else {
            Outcome::Aborted {
                seqnum,
                reason: json.reason.unwrap_or_default(),
            }
        }
    }
}

/// An object as the transaction sees it.
struct Loaded {
    /// Its version at the snapshot.
    version: Seqnum,
    doc: Option<Value>,
    written: bool,
}

/// An interactive transaction: `store.begin()`. Drop it to abort (nothing was appended).
///
/// ```
/// # async fn f(store: libstore::Store) -> Result<(), libstore::Error> {
/// let counter = store.collection("counters").object("c");
/// loop {
///     let mut tx = store.begin().await?;
///     let n = tx.get(&counter, "/n").await?.and_then(|n| n.as_i64()).unwrap_or(0);
///     tx.set(&counter, "/n", serde_json::json!(n * 2)).await?;
///     if tx.commit().await?.is_committed() {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Transaction {
    store: Store,
    snapshot: Seqnum,
    isolation: Isolation,
    objects: BTreeMap<ObjectId, Loaded>,
    /// The commit record's key, from a keyed store.
    key: Option<String>,
}

fn only(mut results: Vec<Value>) -> Value {
    results.pop().expect("one op has one result")
}

impl Transaction {
    pub(crate) fn new(
        store: Store,
        snapshot: Seqnum,
        isolation: Isolation,
        key: Option<String>,
    ) -> Transaction {
        Transaction {
            store,
            snapshot,
            isolation,
            objects: BTreeMap::new(),
            key,
        }
    }

    /// The seqnum the transaction reads at: it sees every record up to it.
    pub fn snapshot(&self) -> Seqnum {
        self.snapshot
    }

    /// What the commit will validate.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    async fn load(&mut self, object: &ObjectId) -> Result<&mut Loaded, Error> {
        if !self.objects.contains_key(object) {
            object.check()?;
            let view = self.store.view(object, self.snapshot).await?;
            let loaded = Loaded {
                version: view.version,
                doc: view.doc,
                written: false,
            };
            self.objects.insert(object.clone(), loaded);
        }
        Ok(self
            .objects
            .get_mut(object)
            .expect("inserted above if missing"))
    }

    /// The value at `path` in the snapshot, with this transaction's writes applied.
    pub async fn get(&mut self, object: &Object, path: &str) -> Result<Option<Value>, Error> {
        path::parse(path)?;
        let loaded = self.load(object.id()).await?;
        Ok(path::get(loaded.doc.as_ref(), path)?.cloned())
    }

    /// Applies `ops` to the transaction's copy of `object`: all or none. Each op's result.
    pub async fn apply(&mut self, object: &Object, ops: Vec<Op>) -> Result<Vec<Value>, Error> {
        for op in &ops {
            op.check()?;
        }
        let document_bytes_max = self.store.settings().document_bytes_max;
        let loaded = self.load(object.id()).await?;
        let (doc, results) = path::apply_all(&loaded.doc, &ops, document_bytes_max)?;
        loaded.doc = doc;
        loaded.written = true;
        Ok(results)
    }

    /// Sets `path` to `value`; the old value.
    pub async fn set(&mut self, object: &Object, path: &str, value: Value) -> Result<Value, Error> {
        Ok(only(self.apply(object, vec![Op::set(path, value)]).await?))
    }

    /// Removes `path` (`""`: the document); the old value (`null` if missing).
    pub async fn delete(&mut self, object: &Object, path: &str) -> Result<Value, Error> {
        Ok(only(self.apply(object, vec![Op::delete(path)]).await?))
    }

    /// Adds `delta` to the number at `path` (a missing one counts as 0); the old number.
    pub async fn fetch_add(
        &mut self,
        object: &Object,
        path: &str,
        delta: impl Into<Number>,
    ) -> Result<Number, Error> {
        match only(self.apply(object, vec![Op::add(path, delta)]).await?) {
            Value::Number(old) => Ok(old),
            other => unreachable!("add returns a number, not {other}"),
        }
    }

    /// Appends `value` to the array at `path`, keeping the newest `limit`; the new length.
    pub async fn push(
        &mut self,
        object: &Object,
        path: &str,
        value: Value,
        limit: Option<usize>,
    ) -> Result<usize, Error> {
        let len = only(
            self.apply(object, vec![Op::push(path, value, limit)])
                .await?,
        );
        Ok(len.as_u64().expect("push returns a length") as usize)
    }

    /// Removes the last element of the array at `path`; it (`null` if the array was empty).
    pub async fn pop(&mut self, object: &Object, path: &str) -> Result<Value, Error> {
        Ok(only(self.apply(object, vec![Op::pop(path)]).await?))
    }

    /// Sets `path` to `value` if it holds `expected` (`None`: missing); whether it did.
    pub async fn compare_and_set(
        &mut self,
        object: &Object,
        path: &str,
        expected: Option<Value>,
        value: Value,
    ) -> Result<bool, Error> {
        let op = Op::compare_and_set(path, expected, value);
        Ok(only(self.apply(object, vec![op]).await?) == Value::Bool(true))
    }

    /// Sets `path` to `{}`.
    pub async fn make_object(&mut self, object: &Object, path: &str) -> Result<(), Error> {
        self.apply(object, vec![Op::make_object(path)])
            .await
            .map(drop)
    }

    /// Sets `path` to `[]`.
    pub async fn make_array(&mut self, object: &Object, path: &str) -> Result<(), Error> {
        self.apply(object, vec![Op::make_array(path)])
            .await
            .map(drop)
    }

    /// Commits: appends one record with the read and write sets, tagged with each written
    /// object, and decides it as every reader will. A transaction that wrote nothing appends
    /// nothing and commits (its reads were one snapshot). From a keyed store, a commit whose
    /// key was used before (the same step, run again) changes nothing and answers the first
    /// commit's outcome.
    pub async fn commit(self) -> Result<Outcome, Error> {
        let writes: Vec<Written> = (self.objects.iter())
            .filter(|(_, l)| l.written)
            .map(|(object, l)| Written {
                object: object.clone(),
                doc: l.doc.clone(),
            })
            .collect();
        if writes.is_empty() {
            return self.store.commit_nothing(self.key.as_deref()).await;
        }
        if writes.len() > TXN_OBJECTS_MAX {
            return Err(Error::Invalid(format!(
                "a transaction writes at most {TXN_OBJECTS_MAX} objects, this one {}",
                writes.len()
            )));
        }
        let touched = (self.objects.iter())
            .map(|(object, l)| Touched {
                object: object.clone(),
                version: l.version,
            })
            .collect();
        let commit = Commit {
            snapshot: self.snapshot,
            isolation: self.isolation,
            touched,
            writes,
            key: self.key,
        };
        self.store.commit(commit).await
    }
}
