//! Packages and classes: what a package file declares (fields, methods, access, inheritance),
//! checked and resolved into classes whose every method, inherited or overridden, is known.
//! No IO here: `Classes` is the installed set, consulted by the runtime before each call.

use crate::Error;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Longest package, class, method or field name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Most classes in a package, methods in a class, fields in a class.
pub const CLASSES_MAX: usize = 256;
pub const METHODS_MAX: usize = 256;
pub const FIELDS_MAX: usize = 256;
/// How deep inheritance goes, at most.
pub const INHERITANCE_DEPTH_MAX: usize = 16;
/// Method names the object routes use themselves (`/objects/{class}/{key}/history`, `.../send`).
pub const RESERVED_METHODS: [&str; 3] = ["history", "send", "links"];
/// The built-in methods every class has: the runtime's own, never called from outside.
/// `libobject.link` adds or removes keys of a reference field; `libobject.delete` empties an
/// object whose references are as expected. Their functions have the same names.
pub const LINK_METHOD: &str = "libobject.link";
pub const DELETE_METHOD: &str = "libobject.delete";

/// A package as its file declares it (TOML) or `PUT /packages/{name}` sends it (TOML or JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    #[serde(default)]
    pub classes: BTreeMap<String, ClassDecl>,
}

/// A class as declared: what it adds to the class it extends.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDecl {
    /// The class this one extends, in the same package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldDecl>,
    #[serde(default)]
    pub methods: BTreeMap<String, MethodDecl>,
}

/// A state field: `"integer"`, or `{ type = "integer", default = 0 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldDecl {
    Type(FieldType),
    Full {
        #[serde(rename = "type", default)]
        kind: FieldType,
        #[serde(default)]
        default: Option<Value>,
        /// For `ref` and `refs`: the class referred to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<String>,
        /// For `ref` and `refs`: the field of that class that refers back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inverse: Option<String>,
    },
}

/// What a field holds. `any` takes every JSON value, `null` included; the others take their
/// type only (an `integer` is a number without a fraction). `ref` is the key of one object
/// (or null) and `refs` a list of keys: references, kept consistent with the field that
/// refers back (`inverse`) by the runtime alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    #[default]
    Any,
    String,
    Number,
    Integer,
    Bool,
    Array,
    Object,
    Ref,
    Refs,
}

impl FieldType {
    /// Whether it holds references.
    pub fn is_reference(self) -> bool {
        matches!(self, FieldType::Ref | FieldType::Refs)
    }

    fn holds(self, v: &Value) -> bool {
        match self {
            FieldType::Any => true,
            FieldType::String => v.is_string(),
            FieldType::Number => v.is_number(),
            FieldType::Integer => v.is_i64() || v.is_u64(),
            FieldType::Bool => v.is_boolean(),
            FieldType::Array => v.is_array(),
            FieldType::Object => v.is_object(),
            FieldType::Ref => v.is_null() || v.is_string(),
            FieldType::Refs => v
                .as_array()
                .is_some_and(|keys| keys.iter().all(Value::is_string)),
        }
    }

    fn zero(self) -> Value {
        match self {
            FieldType::Any => Value::Null,
            FieldType::String => Value::String(String::new()),
            FieldType::Number | FieldType::Integer => Value::from(0),
            FieldType::Bool => Value::Bool(false),
            FieldType::Array => Value::Array(Vec::new()),
            FieldType::Object => Value::Object(Map::new()),
            FieldType::Ref => Value::Null,
            FieldType::Refs => Value::Array(Vec::new()),
        }
    }
}

/// A method as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodDecl {
    /// The function that runs it (in-process or in a worker); none for a dataflow method.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function: String,
    /// A dataflow method: calls on objects, each run once its inputs exist, and what it
    /// answers (`output`; by default every step's output, by step name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataflow: Option<Vec<crate::dataflow::Step>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default)]
    pub access: Access,
    /// Read-only: runs at once on the newest state, beside the queue, and appends nothing.
    #[serde(default)]
    pub shared: bool,
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone: HTTP, and any object.
    #[default]
    Public,
    /// Methods of objects whose class is in the same package.
    Internal,
    /// The object itself.
    Private,
    /// The runtime's own (`LINK_METHOD`, `DELETE_METHOD`): never called from outside or by
    /// a method; a package cannot declare it.
    System,
}

/// An object's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub class: String,
    pub key: String,
}

impl ObjectRef {
    pub fn new(class: impl Into<String>, key: impl Into<String>) -> ObjectRef {
        ObjectRef {
            class: class.into(),
            key: key.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.class, self.key)
    }
}

/// A resolved method: where it runs and who may call it, and the class that declared it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Method {
    pub function: String,
    pub access: Access,
    pub shared: bool,
    pub declared_in: String,
    /// A dataflow method's steps and output (its `function` is `DATAFLOW_WORKFLOW`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataflow: Option<crate::dataflow::Dataflow>,
}

/// A resolved field: its type and starting value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Field {
    #[serde(rename = "type")]
    pub kind: FieldType,
    pub default: Value,
    /// What a reference field refers to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refers: Option<Reference>,
}

/// The other side of a reference field: objects of `class`, whose field `inverse` refers back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub class: String,
    pub inverse: String,
}

/// A resolved class: its own and inherited fields and methods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Class {
    pub name: String,
    pub package: String,
    /// The classes it extends, nearest first.
    pub ancestors: Vec<String>,
    pub fields: BTreeMap<String, Field>,
    pub methods: BTreeMap<String, Method>,
}

impl Class {
    /// The method `name`, or `NoMethod`.
    pub fn method(&self, name: &str) -> Result<&Method, Error> {
        self.methods.get(name).ok_or_else(|| Error::NoMethod {
            class: self.name.clone(),
            method: name.to_string(),
        })
    }

    /// The state of an object never changed: every field at its default.
    pub fn initial_state(&self) -> Value {
        Value::Object(
            self.fields
                .iter()
                .map(|(name, field)| (name.clone(), field.default.clone()))
                .collect(),
        )
    }

    /// Whether `state` fits the class: an object with every field, each of its type, and no
    /// other member. A class without fields takes any JSON object.
    pub fn check_state(&self, state: &Value) -> Result<(), Error> {
        let Some(members) = state.as_object() else {
            return Err(Error::Invalid(format!(
                "the state of a {} must be a JSON object",
                self.name
            )));
        };
        if self.fields.is_empty() {
            return Ok(());
        }
        for (name, field) in &self.fields {
            match members.get(name) {
                None => {
                    return Err(Error::Invalid(format!(
                        "the state of a {} lacks field {name:?}",
                        self.name
                    )))
                }
                Some(v) if !field.kind.holds(v) => {
                    return Err(Error::Invalid(format!(
                        "field {name:?} of a {} holds {v}, not a {}",
                        self.name,
                        type_name(field.kind)
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = members.keys().find(|k| !self.fields.contains_key(*k)) {
            return Err(Error::Invalid(format!(
                "a {} has no field {extra:?} (its fields: {})",
                self.name,
                self.fields.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// The keys `state` refers to, by reference field: (field, what it refers to, keys).
    pub fn references<'a>(&'a self, state: &Value) -> Vec<(&'a str, &'a Reference, Vec<String>)> {
        self.fields
            .iter()
            .filter_map(|(name, f)| f.refers.as_ref().map(|r| (name.as_str(), r)))
            .map(|(name, r)| {
                let keys = match &state[name] {
                    Value::String(k) => vec![k.clone()],
                    Value::Array(keys) => keys
                        .iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                (name, r, keys)
            })
            .collect()
    }

    /// Whether an object of this class is a `class` (itself or an ancestor).
    pub fn is_a(&self, class: &str) -> bool {
        self.name == class || self.ancestors.iter().any(|a| a == class)
    }
}

fn type_name(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Any => "any",
        FieldType::String => "string",
        FieldType::Number => "number",
        FieldType::Integer => "integer",
        FieldType::Bool => "bool",
        FieldType::Array => "array",
        FieldType::Object => "object",
        FieldType::Ref => "ref",
        FieldType::Refs => "refs",
    }
}

/// Whether `name` may name a package, class, method or field: 1 to 64 bytes of ASCII letters,
/// digits, `_` and `-` (it goes into URLs as it is).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Package {
    /// A package from its TOML file.
    pub fn from_toml(text: &str) -> Result<Package, Error> {
        let package: Package =
            toml::from_str(text).map_err(|e| Error::Invalid(format!("package: {e}")))?;
        package.check()?;
        Ok(package)
    }

    /// A package from JSON (what the log keeps).
    pub fn from_json(bytes: &[u8]) -> Result<Package, Error> {
        let package: Package =
            serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("package: {e}")))?;
        package.check()?;
        Ok(package)
    }

    /// Checks names, limits, field defaults, and that every `extends` names a class of the
    /// package without a cycle; `resolve` then cannot fail.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(format!("package {:?}: {m}", self.name)));
        if !valid_name(&self.name) {
            return bad("a package name is 1 to 64 letters, digits, '_' or '-'".into());
        }
        if self.classes.len() > CLASSES_MAX {
            return bad(format!("more than {CLASSES_MAX} classes"));
        }
        for (name, class) in &self.classes {
            if !valid_name(name) {
                return bad(format!(
                    "class {name:?}: a class name is 1 to 64 letters, digits, '_' or '-'"
                ));
            }
            if class.fields.len() > FIELDS_MAX || class.methods.len() > METHODS_MAX {
                return bad(format!(
                    "class {name:?}: more than {FIELDS_MAX} fields or {METHODS_MAX} methods"
                ));
            }
            for (field, decl) in &class.fields {
                if !valid_name(field) {
                    return bad(format!("class {name:?}: bad field name {field:?}"));
                }
                let resolved = decl.resolve();
                if !resolved.kind.holds(&resolved.default) {
                    return bad(format!(
                        "class {name:?}: the default of field {field:?} is not a {}",
                        type_name(resolved.kind)
                    ));
                }
                self.check_reference(name, field, decl).map_err(|m| {
                    Error::Invalid(format!("package {:?}: class {name:?}: {m}", self.name))
                })?;
            }
            for (method, decl) in &class.methods {
                if !valid_name(method) || RESERVED_METHODS.contains(&method.as_str()) {
                    return bad(format!(
                        "class {name:?}: bad method name {method:?} (letters, digits, '_', '-'; not {})",
                        RESERVED_METHODS.join(" or ")
                    ));
                }
                match (&decl.dataflow, decl.function.is_empty()) {
                    (None, true) => {
                        return bad(format!(
                        "class {name:?}: method {method:?} names no function (nor is a dataflow)"
                    ))
                    }
                    (Some(_), false) => {
                        return bad(format!(
                        "class {name:?}: method {method:?} is a function or a dataflow, not both"
                    ))
                    }
                    (Some(steps), true) => {
                        let dataflow = crate::dataflow::Dataflow {
                            steps: steps.clone(),
                            output: decl.output.clone(),
                        };
                        dataflow.check().map_err(|m| {
                            Error::Invalid(format!(
                                "package {:?}: class {name:?}: method {method:?}: {m}",
                                self.name
                            ))
                        })?;
                    }
                    (None, false) if decl.output.is_some() => {
                        return bad(format!(
                            "class {name:?}: method {method:?}: only a dataflow names its output"
                        ))
                    }
                    (None, false) => {}
                }
                if decl.access == Access::System {
                    return bad(format!(
                        "class {name:?}: method {method:?}: access is public, internal or private"
                    ));
                }
            }
            // Walk up: every ancestor exists here, and the chain ends.
            let mut at = class;
            let mut depth = 0;
            while let Some(parent) = &at.extends {
                let Some(next) = self.classes.get(parent) else {
                    return bad(format!(
                        "class {name:?} extends {parent:?}, which the package does not declare"
                    ));
                };
                depth += 1;
                if depth > INHERITANCE_DEPTH_MAX {
                    return bad(format!(
                        "class {name:?}: inheritance cycles or goes deeper than {INHERITANCE_DEPTH_MAX}"
                    ));
                }
                at = next;
            }
        }
        Ok(())
    }

    /// A reference field names a class of the package and a field of it that refers back
    /// to this one; references are neither inherited nor given defaults.
    fn check_reference(&self, class: &str, field: &str, decl: &FieldDecl) -> Result<(), String> {
        let (kind, target, inverse, default) = match decl {
            FieldDecl::Type(kind) => (*kind, None, None, None),
            FieldDecl::Full {
                kind,
                class,
                inverse,
                default,
            } => (*kind, class.as_ref(), inverse.as_ref(), default.as_ref()),
        };
        if !kind.is_reference() {
            if target.is_some() || inverse.is_some() {
                return Err(format!(
                    "field {field:?}: only ref and refs fields name a class and an inverse"
                ));
            }
            return Ok(());
        }
        let (Some(target), Some(inverse)) = (target, inverse) else {
            return Err(format!(
                "field {field:?}: a {} field names the class it refers to and its inverse field (class = \"...\", inverse = \"...\")",
                type_name(kind)
            ));
        };
        if default.is_some() {
            return Err(format!(
                "field {field:?}: references start empty: no default"
            ));
        }
        let Some(other) = self.classes.get(target) else {
            return Err(format!(
                "field {field:?} refers to class {target:?}, which the package does not declare"
            ));
        };
        let back = match other.fields.get(inverse) {
            Some(FieldDecl::Full {
                kind,
                class: Some(c),
                inverse: Some(i),
                ..
            }) if kind.is_reference() => c == class && i == field,
            _ => false,
        };
        if !back {
            return Err(format!(
                "field {field:?}: {target}.{inverse} must be a ref or refs field with class = {class:?} and inverse = {field:?}"
            ));
        }
        let extended = |c: &str| {
            self.classes
                .values()
                .any(|d| d.extends.as_deref() == Some(c))
        };
        if extended(class) || extended(target) || self.classes[class].extends.is_some() {
            return Err(format!(
                "field {field:?}: classes with reference fields neither extend nor are extended"
            ));
        }
        Ok(())
    }

    /// Every class of the package, resolved. The package must have passed `check`.
    fn resolve(&self) -> Vec<Class> {
        self.classes
            .keys()
            .map(|name| {
                // Root first, so a subclass's fields and methods override its ancestors'.
                let mut chain = vec![name.clone()];
                while let Some(parent) = &self.classes[chain.last().expect("not empty")].extends {
                    chain.push(parent.clone());
                }
                let mut class = Class {
                    name: name.clone(),
                    package: self.name.clone(),
                    ancestors: chain[1..].to_vec(),
                    fields: BTreeMap::new(),
                    methods: BTreeMap::new(),
                };
                for declared in chain.iter().rev() {
                    let decl = &self.classes[declared];
                    for (field, f) in &decl.fields {
                        class.fields.insert(field.clone(), f.resolve());
                    }
                    for (method, m) in &decl.methods {
                        class.methods.insert(
                            method.clone(),
                            Method {
                                function: match &m.dataflow {
                                    Some(_) => crate::dataflow::DATAFLOW_WORKFLOW.to_string(),
                                    None => m.function.clone(),
                                },
                                access: m.access,
                                shared: m.shared,
                                declared_in: declared.clone(),
                                dataflow: m.dataflow.clone().map(|steps| {
                                    crate::dataflow::Dataflow {
                                        steps,
                                        output: m.output.clone(),
                                    }
                                }),
                            },
                        );
                    }
                }
                for (method, function) in
                    [(LINK_METHOD, LINK_METHOD), (DELETE_METHOD, DELETE_METHOD)]
                {
                    class.methods.insert(
                        method.to_string(),
                        Method {
                            function: function.to_string(),
                            access: Access::System,
                            shared: false,
                            declared_in: name.clone(),
                            dataflow: None,
                        },
                    );
                }
                class
            })
            .collect()
    }
}

impl FieldDecl {
    fn resolve(&self) -> Field {
        match self {
            FieldDecl::Type(kind) => Field {
                kind: *kind,
                default: kind.zero(),
                refers: None,
            },
            FieldDecl::Full {
                kind,
                default,
                class,
                inverse,
            } => Field {
                kind: *kind,
                default: default.clone().unwrap_or_else(|| kind.zero()),
                refers: class
                    .clone()
                    .zip(inverse.clone())
                    .map(|(class, inverse)| Reference { class, inverse }),
            },
        }
    }
}

/// The installed packages and their classes.
#[derive(Debug, Default, Clone)]
pub struct Classes {
    packages: BTreeMap<String, Package>,
    classes: BTreeMap<String, Arc<Class>>,
}

impl Classes {
    /// Installs `package`, replacing an installed package of the same name (its classes go,
    /// the new ones come). Refused if one of its classes belongs to another package.
    pub fn install(&mut self, package: Package) -> Result<(), Error> {
        package.check()?;
        for name in package.classes.keys() {
            if let Some(owner) = self.classes.get(name).map(|c| &c.package) {
                if *owner != package.name {
                    return Err(Error::Invalid(format!(
                        "package {:?}: class {name:?} belongs to package {owner:?}",
                        package.name
                    )));
                }
            }
        }
        self.classes.retain(|_, c| c.package != package.name);
        for class in package.resolve() {
            self.classes.insert(class.name.clone(), Arc::new(class));
        }
        self.packages.insert(package.name.clone(), package);
        Ok(())
    }

    /// The class `name`, or `NoClass`.
    pub fn class(&self, name: &str) -> Result<Arc<Class>, Error> {
        self.classes
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoClass(name.to_string()))
    }

    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.get(name)
    }

    pub fn packages(&self) -> impl Iterator<Item = &Package> {
        self.packages.values()
    }

    /// Whether `caller` (`None`: from outside) may call `method` of object `callee`.
    pub fn check_access(
        &self,
        callee: &ObjectRef,
        class: &Class,
        method_name: &str,
        method: &Method,
        caller: Option<&ObjectRef>,
    ) -> Result<(), Error> {
        let allowed = match method.access {
            Access::Public => true,
            Access::Internal => caller
                .and_then(|c| self.classes.get(&c.class))
                .is_some_and(|c| c.package == class.package),
            Access::Private => caller == Some(callee),
            Access::System => false,
        };
        if allowed {
            return Ok(());
        }
        let who = match caller {
            None => "a call from outside".to_string(),
            Some(c) => format!("a call from {c}"),
        };
        let rule = match method.access {
            Access::Public => unreachable!("public methods are always allowed"),
            Access::Internal => format!(
                "only methods of classes of package {:?} may call it",
                class.package
            ),
            Access::Private => "only the object itself may call it".to_string(),
            Access::System => format!(
                "the runtime's own: references change through /objects/{}/KEY/links/FIELD, objects go with DELETE",
                class.name
            ),
        };
        Err(Error::Forbidden(format!(
            "{callee}.{method_name} is {}: {rule}, not {who}",
            serde_json::to_value(method.access)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHOP: &str = r#"
name = "shop"

[classes.item]
fields = { name = "string", stock = { type = "integer", default = 10 } }
[classes.item.methods]
buy = { function = "item.buy" }
restock = { function = "item.restock", access = "internal" }
audit = { function = "item.audit", access = "private" }
show = { function = "item.show", shared = true }

[classes.gift]
extends = "item"
fields = { wrap = "bool" }
methods = { buy = { function = "gift.buy", access = "internal" } }

[classes.clerk]
methods = { work = { function = "clerk.work" } }
"#;

    const OTHER: &str = r#"
name = "other"
[classes.stranger]
methods = { poke = { function = "stranger.poke" } }
"#;

    fn classes() -> Classes {
        let mut classes = Classes::default();
        classes.install(Package::from_toml(SHOP).unwrap()).unwrap();
        classes.install(Package::from_toml(OTHER).unwrap()).unwrap();
        classes
    }

    #[test]
    fn inheritance_adds_fields_and_overrides_methods() {
        let classes = classes();
        let gift = classes.class("gift").unwrap();
        assert_eq!(gift.ancestors, vec!["item".to_string()]);
        assert!(gift.is_a("item") && !classes.class("item").unwrap().is_a("gift"));
        assert_eq!(
            gift.initial_state(),
            json!({"name": "", "stock": 10, "wrap": false})
        );
        let buy = gift.method("buy").unwrap();
        assert_eq!(
            (buy.function.as_str(), buy.access),
            ("gift.buy", Access::Internal)
        );
        assert_eq!(gift.method("restock").unwrap().declared_in, "item");
        assert!(gift.method("show").unwrap().shared);
        assert!(matches!(gift.method("fly"), Err(Error::NoMethod { .. })));
    }

    #[test]
    fn state_checks_follow_the_fields() {
        let item = classes().class("item").unwrap();
        item.check_state(&json!({"name": "tea", "stock": 3}))
            .unwrap();
        for bad in [
            json!({"name": "tea"}),
            json!({"name": "tea", "stock": 1.5}),
            json!({"name": 7, "stock": 1}),
            json!({"name": "tea", "stock": 1, "colour": "red"}),
            json!([1, 2]),
        ] {
            assert!(
                matches!(item.check_state(&bad), Err(Error::Invalid(_))),
                "{bad} passed"
            );
        }
        // A class without fields takes any object.
        let clerk = classes().class("clerk").unwrap();
        clerk.check_state(&json!({"anything": [1]})).unwrap();
    }

    /// Every access rule, from every kind of caller: the table the issue asks for.
    #[test]
    fn access_table() {
        let classes = classes();
        let item = |k: &str| Some(ObjectRef::new("item", k));
        let cases: &[(&str, &str, Option<ObjectRef>, bool)] = &[
            // (class, method, caller, allowed); the callee is always key "k".
            ("item", "buy", None, true),
            ("item", "buy", Some(ObjectRef::new("stranger", "s")), true),
            ("item", "restock", None, false),
            ("item", "restock", Some(ObjectRef::new("clerk", "c")), true),
            ("item", "restock", item("other"), true),
            (
                "item",
                "restock",
                Some(ObjectRef::new("stranger", "s")),
                false,
            ),
            ("item", "audit", None, false),
            ("item", "audit", item("other"), false),
            ("item", "audit", Some(ObjectRef::new("clerk", "k")), false),
            ("item", "audit", item("k"), true),
            ("item", "show", None, true),
            // The override is internal where the parent's was public.
            ("gift", "buy", None, false),
            ("gift", "buy", Some(ObjectRef::new("clerk", "c")), true),
            // Inherited methods keep their access; private means this very object.
            (
                "gift",
                "restock",
                Some(ObjectRef::new("stranger", "s")),
                false,
            ),
            ("gift", "audit", item("k"), false),
            ("gift", "audit", Some(ObjectRef::new("gift", "k")), true),
        ];
        for (class_name, method_name, caller, allowed) in cases {
            let class = classes.class(class_name).unwrap();
            let method = class.method(method_name).unwrap();
            let callee = ObjectRef::new(*class_name, "k");
            let got = classes.check_access(&callee, &class, method_name, method, caller.as_ref());
            assert_eq!(
                got.is_ok(),
                *allowed,
                "{class_name}.{method_name} from {caller:?}: {got:?}"
            );
            if let Err(e) = got {
                assert!(matches!(e, Error::Forbidden(_)), "{e:?}");
            }
        }
    }

    #[test]
    fn bad_packages_are_refused_with_a_reason() {
        let cases = [
            ("name = \"a b\"", "package name"),
            ("name = \"p\"\n[classes.a]\nextends = \"b\"", "does not declare"),
            (
                "name = \"p\"\n[classes.a]\nextends = \"b\"\n[classes.b]\nextends = \"a\"",
                "cycles",
            ),
            (
                "name = \"p\"\n[classes.a]\nmethods = { history = { function = \"f\" } }",
                "bad method name",
            ),
            (
                "name = \"p\"\n[classes.a]\nfields = { n = { type = \"integer\", default = \"x\" } }",
                "default",
            ),
            ("name = \"p\"\n[classes.a]\nfeilds = {}", "unknown field"),
        ];
        for (text, why) in cases {
            match Package::from_toml(text) {
                Err(Error::Invalid(m)) => assert!(m.contains(why), "{text}: {m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // A class name belongs to one package.
        let mut classes = classes();
        let thief = Package::from_toml("name = \"thief\"\n[classes.item]\n").unwrap();
        assert!(matches!(classes.install(thief), Err(Error::Invalid(_))));
        // Reinstalling a package replaces its classes.
        let shop = Package::from_toml("name = \"shop\"\n[classes.item]\n").unwrap();
        classes.install(shop).unwrap();
        assert!(classes.class("gift").is_err() && classes.class("item").is_ok());
    }
}
