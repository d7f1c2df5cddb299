//! Path operations on one JSON document: the pure function every reader applies to replay an
//! object, so it must give the same answer everywhere, forever (it is part of the log's
//! meaning). No IO, no clock, no randomness.
//!
//! Paths are JSON Pointers (RFC 6901). A document is `Option<Value>`: `None` for an object
//! never written or deleted whole. A write below the root of a missing document first makes
//! it `{}`; a missing number counts as 0 for `add` and a missing array as `[]` for `push`.

use crate::Error;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// Longest path, in bytes.
pub const PATH_BYTES_MAX: usize = 1024;

/// One write to a document at a path. Its JSON form is what the log holds and what a
/// one-shot transaction's `writes` carry: `{"op": "add", "path": "/balance", "delta": -5}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Sets a member or an array element (`/-` appends); `""` replaces the whole document.
    Set { path: String, value: Value },
    /// Removes a member or an element; `""` removes the whole document. A missing path is
    /// no error (the result is `null`), so deleting twice is deleting once.
    Delete { path: String },
    /// Sets `{}`.
    MakeObject { path: String },
    /// Sets `[]`.
    MakeArray { path: String },
    /// Adds `delta` to a number (a missing one counts as 0); the result is the old number.
    Add { path: String, delta: Number },
    /// Appends to an array (a missing one counts as `[]`), then drops the oldest elements
    /// beyond `limit`; the result is the new length.
    Push {
        path: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Removes an array's last element; the result is it, or `null` if the array is empty.
    Pop { path: String },
    /// Sets `value` if the current value equals `expected` (`None`: the path is missing);
    /// the result is whether it did.
    CompareAndSet {
        path: String,
        expected: Option<Value>,
        value: Value,
    },
}

impl Op {
    /// Sets `path` to `value`.
    pub fn set(path: &str, value: Value) -> Op {
        Op::Set {
            path: path.into(),
            value,
        }
    }

    /// Removes `path`.
    pub fn delete(path: &str) -> Op {
        Op::Delete { path: path.into() }
    }

    /// Sets `path` to `{}`.
    pub fn make_object(path: &str) -> Op {
        Op::MakeObject { path: path.into() }
    }

    /// Sets `path` to `[]`.
    pub fn make_array(path: &str) -> Op {
        Op::MakeArray { path: path.into() }
    }

    /// Adds `delta` to the number at `path`.
    pub fn add(path: &str, delta: impl Into<Number>) -> Op {
        Op::Add {
            path: path.into(),
            delta: delta.into(),
        }
    }

    /// Appends `value` to the array at `path`, keeping the newest `limit`.
    pub fn push(path: &str, value: Value, limit: Option<usize>) -> Op {
        Op::Push {
            path: path.into(),
            value,
            limit,
        }
    }

    /// Removes the last element of the array at `path`.
    pub fn pop(path: &str) -> Op {
        Op::Pop { path: path.into() }
    }

    /// Sets `path` to `value` if it holds `expected` (`None`: missing).
    pub fn compare_and_set(path: &str, expected: Option<Value>, value: Value) -> Op {
        Op::CompareAndSet {
            path: path.into(),
            expected,
            value,
        }
    }

    /// The path the operation writes.
    pub fn path(&self) -> &str {
        match self {
            Op::Set { path, .. }
            | Op::Delete { path }
            | Op::MakeObject { path }
            | Op::MakeArray { path }
            | Op::Add { path, .. }
            | Op::Push { path, .. }
            | Op::Pop { path }
            | Op::CompareAndSet { path, .. } => path,
        }
    }

    /// The value the operation puts in the document, if it puts one.
    fn value(&self) -> Option<&Value> {
        match self {
            Op::Set { value, .. } | Op::Push { value, .. } | Op::CompareAndSet { value, .. } => {
                Some(value)
            }
            _ => None,
        }
    }

    /// Refuses a value that alone is larger than a document may be: no document can take
    /// it, so it is refused before it is logged.
    pub(crate) fn check_value_size(&self, document_bytes_max: usize) -> Result<(), Error> {
        let Some(value) = self.value() else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(value)
            .expect("a JSON value serializes")
            .len();
        if bytes > document_bytes_max {
            return Err(Error::TooLarge {
                what: "the value",
                bytes,
                max: document_bytes_max,
            });
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Set { .. } => "set",
            Op::Delete { .. } => "delete",
            Op::MakeObject { .. } => "make_object",
            Op::MakeArray { .. } => "make_array",
            Op::Add { .. } => "add",
            Op::Push { .. } => "push",
            Op::Pop { .. } => "pop",
            Op::CompareAndSet { .. } => "compare_and_set",
        }
    }

    /// Checks what can be checked without the document: the path's syntax and the
    /// arguments. The rest (types, existence) depends on the document at the op's position.
    pub(crate) fn check(&self) -> Result<(), Error> {
        parse(self.path())?;
        if let Op::Push { limit: Some(0), .. } = self {
            return Err(Error::Invalid("a push limit must be at least 1".into()));
        }
        Ok(())
    }
}

/// Splits a JSON Pointer into its unescaped tokens.
pub(crate) fn parse(path: &str) -> Result<Vec<String>, Error> {
    if path.len() > PATH_BYTES_MAX {
        let start: String = path.chars().take(64).collect();
        return Err(Error::bad_path(
            &format!("{start}..."),
            format!("longer than {PATH_BYTES_MAX} bytes"),
        ));
    }
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Error::bad_path(
            path,
            "a path is empty (the whole document) or starts with '/'",
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => return Err(Error::bad_path(path, "'~' must be followed by 0 or 1")),
                }
            }
            Ok(out)
        })
        .collect()
}

/// The name of a value's kind, for errors.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An array index token: digits without a leading zero.
fn index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// The value at `path`, or `None` if the path is missing. A path through a scalar, or a
/// token that is not an index into an array, is an error.
pub fn get<'a>(doc: Option<&'a Value>, path: &str) -> Result<Option<&'a Value>, Error> {
    let tokens = parse(path)?;
    let Some(mut current) = doc else {
        return Ok(None);
    };
    for (i, token) in tokens.iter().enumerate() {
        current = match current {
            Value::Object(map) => match map.get(token) {
                Some(v) => v,
                None => return Ok(None),
            },
            Value::Array(items) => match index(token) {
                Some(n) => match items.get(n) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                None => {
                    return Err(Error::bad_path(
                        path,
                        format!("{token:?} is not an index into {}", prefix(&tokens, i)),
                    ))
                }
            },
            other => {
                return Err(Error::bad_path(
                    path,
                    format!(
                        "{} is {}, not an object or an array",
                        prefix(&tokens, i),
                        kind(other)
                    ),
                ))
            }
        };
    }
    Ok(Some(current))
}

/// The pointer of the first `n` tokens, for messages (`""` reads as "the document").
fn prefix(tokens: &[String], n: usize) -> String {
    if n == 0 {
        return "the document".into();
    }
    tokens[..n]
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Where a write lands: the whole document, a member of an object, or an element of an array
/// (`index == len` for `/-`, the end).
enum Place<'a> {
    Root(&'a mut Option<Value>),
    Member(&'a mut Map<String, Value>, String),
    Element(&'a mut Vec<Value>, usize),
}

impl Place<'_> {
    fn get(&mut self) -> Option<&mut Value> {
        match self {
            Place::Root(doc) => doc.as_mut(),
            Place::Member(map, key) => map.get_mut(key.as_str()),
            Place::Element(items, i) => items.get_mut(*i),
        }
    }

    /// Puts `value` here; the old value, if there was one.
    fn put(&mut self, value: Value) -> Option<Value> {
        match self {
            Place::Root(doc) => doc.replace(value),
            Place::Member(map, key) => map.insert(key.clone(), value),
            Place::Element(items, i) if *i == items.len() => {
                items.push(value);
                None
            }
            Place::Element(items, i) => Some(std::mem::replace(&mut items[*i], value)),
        }
    }

    fn take(&mut self) -> Option<Value> {
        match self {
            Place::Root(doc) => doc.take(),
            Place::Member(map, key) => map.remove(key.as_str()),
            Place::Element(items, i) if *i < items.len() => Some(items.remove(*i)),
            Place::Element(..) => None,
        }
    }
}

/// Finds where a write at `path` lands; the parent must exist and be an object or an array.
fn place<'a>(doc: &'a mut Option<Value>, path: &str) -> Result<Place<'a>, Error> {
    let tokens = parse(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        return Ok(Place::Root(doc));
    };
    let mut current = doc.get_or_insert_with(|| Value::Object(Map::new()));
    for (i, token) in parents.iter().enumerate() {
        let here = prefix(&tokens, i);
        current = match current {
            Value::Object(map) => map.get_mut(token).ok_or_else(|| {
                Error::bad_path(path, format!("{} does not exist", prefix(&tokens, i + 1)))
            })?,
            Value::Array(items) => {
                let len = items.len();
                let n = index(token).ok_or_else(|| {
                    Error::bad_path(path, format!("{token:?} is not an index into {here}"))
                })?;
                items.get_mut(n).ok_or_else(|| {
                    Error::bad_path(path, format!("{here} has {len} elements, no {n}"))
                })?
            }
            other => {
                return Err(Error::bad_path(
                    path,
                    format!("{here} is {}, not an object or an array", kind(other)),
                ))
            }
        };
    }
    let here = prefix(&tokens, parents.len());
    match current {
        Value::Object(map) => Ok(Place::Member(map, last.clone())),
        Value::Array(items) => {
            let len = items.len();
            let n = if last == "-" {
                len
            } else {
                index(last).ok_or_else(|| {
                    Error::bad_path(path, format!("{last:?} is not an index into {here}"))
                })?
            };
            if n > len || (n == len && last != "-") {
                return Err(Error::bad_path(
                    path,
                    format!("{here} has {len} elements, no {n} (use /- to append)"),
                ));
            }
            Ok(Place::Element(items, n))
        }
        other => Err(Error::bad_path(
            path,
            format!("{here} is {}, not an object or an array", kind(other)),
        )),
    }
}

/// `a + b`, exact for integers, or `None` if it overflows.
fn add_numbers(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = x.checked_add(y) {
            return Some(sum.into());
        }
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x.checked_add(y).map(Number::from);
    }
    if a.is_f64() || b.is_f64() {
        return Number::from_f64(a.as_f64()? + b.as_f64()?);
    }
    // Mixed signs beyond i64: exact in i128.
    let x = a.as_i64().map(i128::from).or(a.as_u64().map(i128::from))?;
    let y = b.as_i64().map(i128::from).or(b.as_u64().map(i128::from))?;
    let sum = x + y;
    i64::try_from(sum)
        .map(Number::from)
        .ok()
        .or_else(|| u64::try_from(sum).ok().map(Number::from))
}

/// Applies one op to `doc` in place; its result. On an error `doc` may be half-changed: the
/// caller applies to a copy (`apply_all`).
fn apply_one(doc: &mut Option<Value>, op: &Op) -> Result<Value, Error> {
    let path = op.path();
    if let (Op::Delete { .. }, None) = (op, &doc) {
        return Ok(Value::Null);
    }
    let mut place = place(doc, path)?;
    let mismatch = |expected, found: &Value| Error::TypeMismatch {
        op: op.name(),
        path: path.to_string(),
        expected,
        found: kind(found),
    };
    Ok(match op {
        Op::Set { value, .. } => place.put(value.clone()).unwrap_or(Value::Null),
        Op::Delete { .. } => place.take().unwrap_or(Value::Null),
        Op::MakeObject { .. } => place.put(Value::Object(Map::new())).unwrap_or(Value::Null),
        Op::MakeArray { .. } => place.put(Value::Array(Vec::new())).unwrap_or(Value::Null),
        Op::Add { delta, .. } => {
            let old = match place.get() {
                None => Number::from(0),
                Some(Value::Number(n)) => n.clone(),
                Some(other) => return Err(mismatch("a number", other)),
            };
            let new = add_numbers(&old, delta).ok_or_else(|| Error::Overflow {
                op: "add",
                path: path.to_string(),
            })?;
            place.put(Value::Number(new));
            Value::Number(old)
        }
        Op::Push { value, limit, .. } => match place.get() {
            None => {
                place.put(Value::Array(vec![value.clone()]));
                Value::from(1)
            }
            Some(Value::Array(items)) => {
                items.push(value.clone());
                if let Some(limit) = *limit {
                    let excess = items.len().saturating_sub(limit);
                    items.drain(..excess);
                }
                Value::from(items.len())
            }
            Some(other) => return Err(mismatch("an array", other)),
        },
        Op::Pop { .. } => match place.get() {
            None => Value::Null,
            Some(Value::Array(items)) => items.pop().unwrap_or(Value::Null),
            Some(other) => return Err(mismatch("an array", other)),
        },
        Op::CompareAndSet {
            expected, value, ..
        } => {
            if place.get().map(|v| &*v) == expected.as_ref() {
                place.put(value.clone());
                Value::Bool(true)
            } else {
                Value::Bool(false)
            }
        }
    })
}

/// Applies `ops` in order to a copy of `doc`: the new document and each op's result, or the
/// first error (and then nothing changes). The new document must fit in `bytes_max`.
pub(crate) fn apply_all(
    doc: &Option<Value>,
    ops: &[Op],
    bytes_max: usize,
) -> Result<(Option<Value>, Vec<Value>), Error> {
    let mut new = doc.clone();
    let results = ops
        .iter()
        .map(|op| apply_one(&mut new, op))
        .collect::<Result<Vec<_>, _>>()?;
    check_size(&new, bytes_max)?;
    Ok((new, results))
}

/// Checks a document against the size limit.
pub(crate) fn check_size(doc: &Option<Value>, bytes_max: usize) -> Result<(), Error> {
    let bytes = doc.as_ref().map_or(0, |d| {
        serde_json::to_vec(d)
            .expect("a JSON value serializes")
            .len()
    });
    if bytes > bytes_max {
        return Err(Error::TooLarge {
            what: "the document",
            bytes,
            max: bytes_max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Applies `ops` to `doc`; expects the new document and results, or an error whose
    /// message contains `expect`'s string.
    fn check(doc: Option<Value>, ops: &[Op], expect: Result<(Option<Value>, Vec<Value>), &str>) {
        let got = apply_all(&doc, ops, 1000);
        match (got, expect) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{ops:?} on {doc:?}"),
            (Err(e), Err(want)) => assert!(
                e.to_string().contains(want),
                "{ops:?} on {doc:?}: {e} lacks {want:?}"
            ),
            (got, want) => panic!("{ops:?} on {doc:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn writes_do_what_they_say() {
        let doc = Some(json!({"n": 1, "l": [1, 2], "s": "x", "o": {"a/b": 1, "t~": 2}}));
        let with = |f: &dyn Fn(&mut Value)| {
            let mut d = doc.clone().unwrap();
            f(&mut d);
            Some(d)
        };
        let cases: Vec<(Vec<Op>, Option<Value>, Vec<Value>)> = vec![
            (
                vec![Op::set("/n", json!(5))],
                with(&|d| d["n"] = json!(5)),
                vec![json!(1)],
            ),
            (
                vec![Op::set("/new", json!(true))],
                with(&|d| d["new"] = json!(true)),
                vec![Value::Null],
            ),
            (
                vec![Op::set("/l/0", json!(9))],
                with(&|d| d["l"][0] = json!(9)),
                vec![json!(1)],
            ),
            (
                vec![Op::set("/l/-", json!(3))],
                with(&|d| d["l"] = json!([1, 2, 3])),
                vec![Value::Null],
            ),
            (
                vec![Op::set("/o/a~1b", json!(7))],
                with(&|d| d["o"]["a/b"] = json!(7)),
                vec![json!(1)],
            ),
            (
                vec![Op::delete("/o/t~0")],
                with(&|d| {
                    d["o"].as_object_mut().unwrap().remove("t~");
                }),
                vec![json!(2)],
            ),
            (
                vec![Op::set("", json!(3))],
                Some(json!(3)),
                vec![doc.clone().unwrap()],
            ),
            (vec![Op::delete("")], None, vec![doc.clone().unwrap()]),
            (vec![Op::delete("/gone")], doc.clone(), vec![Value::Null]),
            (
                vec![Op::delete("/l/0")],
                with(&|d| d["l"] = json!([2])),
                vec![json!(1)],
            ),
            (
                vec![Op::add("/n", 2)],
                with(&|d| d["n"] = json!(3)),
                vec![json!(1)],
            ),
            (
                vec![Op::add("/m", -2)],
                with(&|d| d["m"] = json!(-2)),
                vec![json!(0)],
            ),
            (
                vec![Op::push("/l", json!(3), Some(2))],
                with(&|d| d["l"] = json!([2, 3])),
                vec![json!(2)],
            ),
            (
                vec![Op::push("/q", json!(1), None)],
                with(&|d| d["q"] = json!([1])),
                vec![json!(1)],
            ),
            (
                vec![Op::pop("/l")],
                with(&|d| d["l"] = json!([1])),
                vec![json!(2)],
            ),
            (
                vec![Op::make_array("/l")],
                with(&|d| d["l"] = json!([])),
                vec![json!([1, 2])],
            ),
            (
                vec![Op::make_object("/o")],
                with(&|d| d["o"] = json!({})),
                vec![json!({"a/b": 1, "t~": 2})],
            ),
            (
                vec![Op::compare_and_set("/s", Some(json!("x")), json!("y"))],
                with(&|d| d["s"] = json!("y")),
                vec![json!(true)],
            ),
            (
                vec![Op::compare_and_set("/s", Some(json!("z")), json!("y"))],
                doc.clone(),
                vec![json!(false)],
            ),
            (
                vec![Op::compare_and_set("/k", None, json!(1))],
                with(&|d| d["k"] = json!(1)),
                vec![json!(true)],
            ),
            (
                vec![Op::add("/n", 1), Op::add("/n", 1)],
                with(&|d| d["n"] = json!(3)),
                vec![json!(1), json!(2)],
            ),
        ];
        for (ops, new, results) in cases {
            check(doc.clone(), &ops, Ok((new, results)));
        }
    }

    #[test]
    fn a_missing_document_is_made_by_a_write_below_its_root() {
        check(
            None,
            &[Op::add("/n", 1)],
            Ok((Some(json!({"n": 1})), vec![json!(0)])),
        );
        check(None, &[Op::delete("/n")], Ok((None, vec![Value::Null])));
        check(None, &[Op::pop("")], Ok((None, vec![Value::Null])));
        assert_eq!(get(None, "/a/b").unwrap(), None);
    }

    #[test]
    fn bad_paths_and_type_mismatches_are_errors_that_change_nothing() {
        let doc = Some(json!({"n": 1, "l": [1], "s": "x"}));
        let cases: Vec<(Op, &str)> = vec![
            (Op::set("n", json!(1)), "starts with '/'"),
            (
                Op::set("/n/x", json!(1)),
                "/n is a number, not an object or an array",
            ),
            (Op::set("/a/b", json!(1)), "/a does not exist"),
            (Op::set("/l/5", json!(1)), "/l has 1 elements, no 5"),
            (Op::set("/l/1", json!(1)), "use /- to append"),
            (Op::set("/l/01", json!(1)), "is not an index"),
            (Op::set("/l/x/y", json!(1)), "is not an index"),
            (Op::set("/~2", json!(1)), "'~' must be followed by 0 or 1"),
            (
                Op::add("/s", 1),
                "add at \"/s\" needs a number, but finds a string",
            ),
            (
                Op::push("/n", json!(1), None),
                "push at \"/n\" needs an array, but finds a number",
            ),
            (Op::pop("/s"), "needs an array"),
            (Op::add("/n", u64::MAX), "overflows"),
            (Op::set("/big", json!("x".repeat(1000))), "the document is"),
        ];
        for (op, want) in cases {
            // A good op first: an error undoes it too.
            check(doc.clone(), &[Op::add("/n", 1), op], Err(want));
        }
        assert!(get(doc.as_ref(), "/s/0").is_err());
        assert_eq!(get(doc.as_ref(), "/l/3").unwrap(), None);
    }

    #[test]
    fn numbers_add_exactly() {
        let cases = [
            (json!(1), Number::from(2), json!(3)),
            (json!(u64::MAX - 1), Number::from(1), json!(u64::MAX)),
            (json!(-5), Number::from(u64::MAX - 1), json!(u64::MAX - 6)),
            (json!(1.5), Number::from(1), json!(2.5)),
        ];
        for (old, delta, new) in cases {
            let (doc, _) = apply_all(
                &Some(json!({"n": old})),
                &[Op::Add {
                    path: "/n".into(),
                    delta,
                }],
                1000,
            )
            .unwrap();
            assert_eq!(doc.unwrap()["n"], new);
        }
    }
}
