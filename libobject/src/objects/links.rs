//! References between objects, kept consistent on both sides: a link or an unlink is a
//! transaction of the built-in method `libobject.link` on the object and on each object it
//! (un)links, so both sides change together or neither does, whatever dies when. Deleting an
//! object unlinks it from every object it refers to (which are the objects that refer to it,
//! both sides mirroring each other) in the same transaction that empties it. Methods read
//! reference fields but never change them. And batch reads of many objects' states.

use super::Objects;
use crate::entry::TxnCall;
use crate::package::{Class, FieldType, DELETE_METHOD, LINK_METHOD};
use crate::{method, Error, ObjectRef, This, TxnOutcome, TxnStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tally_sdk::{Ctx, Handler};

/// Most keys a reference field holds.
pub const REFS_MAX: usize = 1_000;
/// Most keys one link or unlink names (one transaction: the object and each key's).
pub const LINKS_PER_TXN_MAX: usize = super::TXN_CALLS_MAX - 1;
/// Most objects a batch read reads.
pub const BATCH_READ_MAX: usize = 1_000;
/// Rounds a delete tries before giving up (each round one transaction; a round fails only if
/// the object's references changed under it).
const DELETE_ROUNDS_MAX: u32 = 64;

/// A method other than the built-ins leaves the reference fields as they were.
pub(super) fn check_references_kept(class: &Class, old: &Value, new: &Value) -> Result<(), Error> {
    for (name, field) in &class.fields {
        if field.refers.is_some() && old.get(name) != new.get(name) {
            return Err(Error::Invalid(format!(
                "{}.{name} is a reference: it changes through /objects/{}/KEY/links/{name}, not by a method",
                class.name, class.name
            )));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Link {
    field: String,
    keys: Vec<String>,
    add: bool,
}

/// `libobject.link`: adds `keys` to (or removes them from) reference field `field`. A `ref`
/// field refers to one object: adding a second fails (unlink the first).
async fn link(this: This, l: Link) -> Result<Value, Error> {
    let mut state = this.state_value();
    let me = this.me().clone();
    let Some(value) = state.get_mut(&l.field) else {
        return Err(Error::Invalid(format!("{me} has no field {:?}", l.field)));
    };
    match value {
        Value::Array(keys) => {
            for k in &l.keys {
                let at = keys.iter().position(|x| x.as_str() == Some(k.as_str()));
                match (l.add, at) {
                    (true, None) => keys.push(json!(k)),
                    (false, Some(i)) => {
                        keys.remove(i);
                    }
                    _ => {}
                }
            }
            if keys.len() > REFS_MAX {
                return Err(Error::failed(format!(
                    "{me}.{} would refer to more than {REFS_MAX} objects",
                    l.field
                )));
            }
        }
        single => {
            let [k] = l.keys.as_slice() else {
                return Err(Error::Invalid(format!(
                    "{me}.{} refers to one object: link one key",
                    l.field
                )));
            };
            match (l.add, single.as_str()) {
                (true, None) => *single = json!(k),
                (true, Some(now)) if now != k => {
                    return Err(Error::failed(format!(
                        "{me}.{} refers to {now}: unlink it first",
                        l.field
                    )))
                }
                (false, Some(now)) if now == k => *single = Value::Null,
                _ => {}
            }
        }
    }
    let after = state[&l.field].clone();
    this.set_state(&state)?;
    Ok(json!({ l.field: after }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    /// The reference fields as the deleter read them: the delete fails if they changed.
    expect: serde_json::Map<String, Value>,
    /// The state the object starts again from.
    initial: Value,
}

/// `libobject.delete`: empties the object, if its references are as the deleter read them.
async fn delete(this: This, d: Delete) -> Result<Value, Error> {
    let state = this.state_value();
    for (field, expected) in &d.expect {
        if state.get(field) != Some(expected) {
            return Err(Error::failed(format!(
                "{}.{field} changed while it was being deleted",
                this.me()
            )));
        }
    }
    this.set_state(&d.initial)?;
    Ok(json!({ "deleted": true }))
}

/// The built-in methods' functions, by name, for the registry that serves `libobject.call`.
pub fn builtin_functions() -> Vec<(&'static str, Handler)> {
    vec![
        (LINK_METHOD, Arc::new(method(link))),
        (DELETE_METHOD, Arc::new(method(delete))),
    ]
}

impl Objects {
    /// Links `object`'s reference field `field` to each of `keys` (or unlinks it, `add`
    /// false), both sides in one transaction `id`: at most `LINKS_PER_TXN_MAX` keys.
    pub async fn link(
        &self,
        ctx: &Ctx,
        id: &str,
        object: &ObjectRef,
        field: &str,
        keys: &[String],
        add: bool,
    ) -> Result<TxnOutcome, Error> {
        if let Some(done) = self.transaction(ctx, id).await? {
            return Ok(done);
        }
        let class = self.class(&object.class)?;
        let Some(target) = class.fields.get(field).and_then(|f| f.refers.clone()) else {
            return Err(Error::Invalid(format!(
                "class {} has no reference field {field:?}",
                class.name
            )));
        };
        if keys.is_empty() || keys.len() > LINKS_PER_TXN_MAX {
            return Err(Error::Invalid(format!(
                "a link names 1 to {LINKS_PER_TXN_MAX} keys"
            )));
        }
        if class.fields[field].kind == FieldType::Ref && keys.len() > 1 {
            return Err(Error::Invalid(format!(
                "{}.{field} refers to one object: link one key",
                class.name
            )));
        }
        let mut calls = vec![TxnCall {
            class: object.class.clone(),
            key: object.key.clone(),
            method: LINK_METHOD.into(),
            input: json!({ "field": field, "keys": keys, "add": add }),
        }];
        for key in keys {
            if target.class == object.class && *key == object.key {
                return Err(Error::Invalid(format!("{object} cannot refer to itself")));
            }
            calls.push(TxnCall {
                class: target.class.clone(),
                key: key.clone(),
                method: LINK_METHOD.into(),
                input: json!({ "field": target.inverse, "keys": [object.key], "add": add }),
            });
        }
        self.transact_system(ctx, id, calls).await
    }

    /// Deletes `object`: unlinks it from every object it refers to and empties it, in
    /// transactions `{id}.0`, `{id}.1`, ... (the same id again replays them); `{"deleted":
    /// true, "unlinked": N}`.
    pub async fn delete(&self, ctx: &Ctx, id: &str, object: &ObjectRef) -> Result<Value, Error> {
        let class = self.class(&object.class)?;
        let mut unlinked = 0;
        for round in 0..DELETE_ROUNDS_MAX {
            let round_id = format!("{id}.{round}");
            let outcome = match self.transaction(ctx, &round_id).await? {
                Some(outcome) => outcome,
                None => {
                    let state = self.latest_state(ctx, &class, object).await?;
                    let refs = class.references(&state);
                    let total: usize = refs.iter().map(|(_, _, keys)| keys.len()).sum();
                    if total > LINKS_PER_TXN_MAX {
                        // Too many for one transaction: unlink a part first.
                        let (field, _, keys) = refs
                            .iter()
                            .find(|(_, _, keys)| !keys.is_empty())
                            .expect("some field holds keys");
                        let part = &keys[..keys.len().min(LINKS_PER_TXN_MAX)];
                        self.link(ctx, &round_id, object, field, part, false)
                            .await?
                    } else {
                        let expect: serde_json::Map<String, Value> = refs
                            .iter()
                            .map(|(field, _, _)| (field.to_string(), state[*field].clone()))
                            .collect();
                        let mut calls = vec![TxnCall {
                            class: object.class.clone(),
                            key: object.key.clone(),
                            method: DELETE_METHOD.into(),
                            input: json!({ "expect": expect, "initial": class.initial_state() }),
                        }];
                        for (_, target, keys) in &refs {
                            for key in keys {
                                calls.push(TxnCall {
                                    class: target.class.clone(),
                                    key: key.clone(),
                                    method: LINK_METHOD.into(),
                                    input: json!({ "field": target.inverse, "keys": [object.key], "add": false }),
                                });
                            }
                        }
                        self.transact_system(ctx, &round_id, calls).await?
                    }
                }
            };
            let deleting = outcome
                .results
                .first()
                .is_some_and(|r| r.get("deleted").is_some());
            match outcome.outcome {
                TxnStatus::Success if deleting => {
                    unlinked += outcome.results.len() - 1;
                    return Ok(json!({ "deleted": true, "unlinked": unlinked }));
                }
                TxnStatus::Success => unlinked += outcome.results.len() - 1,
                // References changed under it: read them again.
                TxnStatus::Failure => {}
                TxnStatus::Retryable => {
                    return Err(Error::Unavailable(format!(
                        "deleting {object}: {}",
                        outcome.error.map(|e| e.message).unwrap_or_default()
                    )))
                }
            }
        }
        Err(Error::Unavailable(format!(
            "{object}'s references kept changing: not deleted after {DELETE_ROUNDS_MAX} rounds"
        )))
    }

    /// The states of objects `keys` of `class` (their newest done records'), by key.
    pub async fn read_many(
        &self,
        ctx: &Ctx,
        class: &str,
        keys: &[String],
    ) -> Result<serde_json::Map<String, Value>, Error> {
        if keys.len() > BATCH_READ_MAX {
            return Err(Error::Invalid(format!(
                "a batch read reads at most {BATCH_READ_MAX} objects"
            )));
        }
        let class = self.class(class)?;
        let mut states = serde_json::Map::new();
        for key in keys {
            super::check_key(key)?;
            let object = ObjectRef::new(&class.name, key);
            states.insert(key.clone(), self.latest_state(ctx, &class, &object).await?);
        }
        Ok(states)
    }
}
