//! One-shot transactions: objects declared up front, logic as data. Every reader evaluates a
//! one-shot record alike from the record and the objects' documents just before it, so the
//! evaluation is a pure function, part of the log's meaning like the path operations.
//!
//! A transaction reads (`reads`), tests (`conditions`, all of which must hold) and writes
//! (`writes`, path operations that take effect together). It aborts only by its own logic: a
//! condition that fails, a read or a write that fails (a bad path, `add` on a string), or a
//! written document over the size limit.

use crate::entry::ObjectId;
use crate::path::{self, Op};
use crate::{Error, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Most reads, conditions and writes one one-shot transaction holds, together.
pub const ONESHOT_ITEMS_MAX: usize = 256;

/// A one-shot transaction. Build it with `new()` and `read`, `condition`, `write`, or parse
/// it from JSON (the form the log holds):
///
/// ```
/// use libstore::OneShot;
/// let transfer: OneShot = serde_json::from_str(r#"{
///   "conditions": [{"collection": "accounts", "key": "a1", "path": "/balance", "ge": 5,
///                   "message": "insufficient funds"}],
///   "writes": [{"collection": "accounts", "key": "a1", "op": "add", "path": "/balance", "delta": -5},
///              {"collection": "accounts", "key": "a2", "op": "add", "path": "/balance", "delta": 5}]
/// }"#).unwrap();
/// assert_eq!(transfer.writes.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OneShot {
    /// Values returned with the outcome, as they were before the writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<Read>,
    /// Tests that must all hold, checked before the writes, in order; the first that fails
    /// aborts the transaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Path operations, applied in order, all or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<Write>,
}

/// A value to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Read {
    #[serde(flatten)]
    pub object: ObjectId,
    pub path: String,
}

/// A test on the value at a path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(flatten)]
    pub object: ObjectId,
    pub path: String,
    #[serde(flatten)]
    pub test: Test,
    /// The abort reason if the test fails (else one that names the test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a condition tests. Numbers compare as numbers and strings as strings; any other
/// comparison with `gt`, `ge`, `lt` or `le` (a missing value included) does not hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Ge(Value),
    Lt(Value),
    Le(Value),
    /// Whether the path exists.
    Exists(bool),
}

/// A write to an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    #[serde(flatten)]
    pub object: ObjectId,
    #[serde(flatten)]
    pub op: Op,
}

impl OneShot {
    /// A transaction with nothing in it yet.
    pub fn new() -> OneShot {
        OneShot::default()
    }

    /// Reads `path` of `object` (before the writes) into the outcome's `reads`, in order.
    pub fn read(mut self, object: &Object, path: &str) -> OneShot {
        self.reads.push(Read {
            object: object.id().clone(),
            path: path.into(),
        });
        self
    }

    /// Aborts the transaction with `message` unless `test` holds for `path` of `object`.
    pub fn condition(mut self, object: &Object, path: &str, test: Test, message: &str) -> OneShot {
        self.conditions.push(Condition {
            object: object.id().clone(),
            path: path.into(),
            test,
            message: Some(message.into()),
        });
        self
    }

    /// Applies `op` to `object` if every condition holds.
    pub fn write(mut self, object: &Object, op: Op) -> OneShot {
        self.writes.push(Write {
            object: object.id().clone(),
            op,
        });
        self
    }

    /// Every object the transaction names, once each, in order.
    pub(crate) fn objects(&self) -> Vec<&ObjectId> {
        let mut objects: Vec<&ObjectId> = Vec::new();
        let named = (self.reads.iter().map(|r| &r.object))
            .chain(self.conditions.iter().map(|c| &c.object))
            .chain(self.writes.iter().map(|w| &w.object));
        for object in named {
            if !objects.contains(&object) {
                objects.push(object);
            }
        }
        objects
    }

    /// The objects it writes, once each.
    pub(crate) fn written(&self) -> Vec<&ObjectId> {
        let mut objects: Vec<&ObjectId> = Vec::new();
        for w in &self.writes {
            if !objects.contains(&&w.object) {
                objects.push(&w.object);
            }
        }
        objects
    }

    /// Applies the writes to `object` to its document, as a committed transaction does.
    pub(crate) fn apply_to(
        &self,
        object: &ObjectId,
        doc: &Option<Value>,
    ) -> Result<Option<Value>, Error> {
        let ops: Vec<Op> = (self.writes.iter())
            .filter(|w| &w.object == object)
            .map(|w| w.op.clone())
            .collect();
        path::apply_all(doc, &ops, usize::MAX).map(|(doc, _)| doc)
    }

    /// Checks what can be checked before the transaction is logged.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.writes.is_empty() {
            return Err(Error::Invalid(
                "a one-shot transaction writes something; read a snapshot with begin()".into(),
            ));
        }
        let items = self.reads.len() + self.conditions.len() + self.writes.len();
        if items > ONESHOT_ITEMS_MAX {
            return Err(Error::Invalid(format!(
                "a one-shot transaction holds at most {ONESHOT_ITEMS_MAX} reads, conditions and writes, got {items}"
            )));
        }
        let written = self.written().len();
        if written > crate::TXN_OBJECTS_MAX {
            return Err(Error::Invalid(format!(
                "a transaction writes at most {} objects, this one {written}",
                crate::TXN_OBJECTS_MAX
            )));
        }
        for object in self.objects() {
            object.check()?;
        }
        for path in (self.reads.iter().map(|r| r.path.as_str()))
            .chain(self.conditions.iter().map(|c| c.path.as_str()))
        {
            path::parse(path)?;
        }
        self.writes.iter().try_for_each(|w| w.op.check())
    }

    /// Evaluates the transaction on the objects' documents just before it: the reads and the
    /// new documents of the written objects, or why it aborts.
    pub(crate) fn evaluate(
        &self,
        docs: &BTreeMap<ObjectId, Option<Value>>,
        document_bytes_max: usize,
    ) -> Result<Evaluated, String> {
        let doc = |object: &ObjectId| docs.get(object).and_then(|d| d.as_ref());
        let reads = self
            .reads
            .iter()
            .map(|r| {
                path::get(doc(&r.object), &r.path)
                    .map(|v| v.cloned())
                    .map_err(|e| format!("read of {}: {e}", r.object))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for c in &self.conditions {
            let value = path::get(doc(&c.object), &c.path)
                .map_err(|e| format!("condition on {}: {e}", c.object))?;
            if !c.test.holds(value) {
                return Err(c.message.clone().unwrap_or_else(|| {
                    format!(
                        "condition {} {:?} {} does not hold (the value is {})",
                        c.object,
                        c.path,
                        serde_json::to_string(&c.test).expect("a test serializes"),
                        value.map_or("missing".into(), Value::to_string)
                    )
                }));
            }
        }
        let mut written: BTreeMap<ObjectId, Option<Value>> = BTreeMap::new();
        for w in &self.writes {
            let current = written
                .get(&w.object)
                .cloned()
                .unwrap_or_else(|| doc(&w.object).cloned());
            let (new, _) = path::apply_all(&current, std::slice::from_ref(&w.op), usize::MAX)
                .map_err(|e| format!("write to {}: {e}", w.object))?;
            written.insert(w.object.clone(), new);
        }
        for (object, doc) in &written {
            path::check_size(doc, document_bytes_max).map_err(|e| format!("{object}: {e}"))?;
        }
        Ok(Evaluated { reads, written })
    }
}

/// A one-shot transaction that commits: what it read and what it wrote.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Evaluated {
    pub reads: Vec<Option<Value>>,
    pub written: BTreeMap<ObjectId, Option<Value>>,
}

impl Test {
    fn holds(&self, value: Option<&Value>) -> bool {
        let order = |bound: &Value| value.and_then(|v| compare(v, bound));
        match self {
            Test::Eq(bound) => value == Some(bound),
            Test::Ne(bound) => value != Some(bound),
            Test::Gt(bound) => order(bound) == Some(Ordering::Greater),
            Test::Ge(bound) => matches!(order(bound), Some(Ordering::Greater | Ordering::Equal)),
            Test::Lt(bound) => order(bound) == Some(Ordering::Less),
            Test::Le(bound) => matches!(order(bound), Some(Ordering::Less | Ordering::Equal)),
            Test::Exists(exists) => value.is_some() == *exists,
        }
    }
}

/// Orders two numbers (exactly for integers) or two strings; nothing else.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let int =
                |n: &serde_json::Number| n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
            match (int(x), int(y)) {
                (Some(x), Some(y)) => Some(x.cmp(&y)),
                _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}
