//! QAPI-style descriptions of the types commands take and return.
//!
//! Each argument, return and event-data type implements [`QapiType`],
//! giving its [`SchemaType`]. The same description serves twice:
//! [`validate_args`] checks incoming arguments with QEMU's messages
//! (`Parameter 'x' is missing`, `Invalid parameter type for 'x', expected:
//! integer`, ...) before serde sees them, and [`Introspector`] produces
//! `query-qmp-schema`'s SchemaInfo entries.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// QAPI's built-in types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `str`.
    Str,
    /// `int` (a signed 64-bit integer).
    Int,
    /// `uint64` (introspected as `int`, as QEMU does).
    Uint64,
    /// `uint32` (introspected as `int`).
    Uint32,
    /// `bool`.
    Bool,
    /// `number` (any JSON number).
    Number,
    /// `any` JSON value.
    Any,
    /// `null`.
    Null,
}

impl Builtin {
    /// The name introspection uses.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Str => "str",
            Builtin::Int | Builtin::Uint64 | Builtin::Uint32 => "int",
            Builtin::Bool => "bool",
            Builtin::Number => "number",
            Builtin::Any => "any",
            Builtin::Null => "null",
        }
    }

    /// The JSON type introspection reports.
    pub fn json_type(self) -> &'static str {
        match self {
            Builtin::Str => "string",
            Builtin::Int | Builtin::Uint64 | Builtin::Uint32 => "int",
            Builtin::Bool => "boolean",
            Builtin::Number => "number",
            Builtin::Any => "value",
            Builtin::Null => "null",
        }
    }

    /// The type word of QEMU's "expected: ..." message.
    fn expected(self) -> &'static str {
        match self {
            Builtin::Str => "string",
            Builtin::Int | Builtin::Uint64 | Builtin::Uint32 => "integer",
            Builtin::Bool => "boolean",
            Builtin::Number => "number",
            Builtin::Any => "any",
            Builtin::Null => "null",
        }
    }
}

/// A type as QAPI describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaType {
    /// A built-in type.
    Builtin(Builtin),
    /// A struct.
    Object {
        /// Its (Rust-side) name; introspection gives it an opaque one.
        name: &'static str,
        /// Members, in order.
        members: Vec<Member>,
    },
    /// An enumeration of strings.
    Enum {
        /// Its name.
        name: &'static str,
        /// The values.
        values: Vec<&'static str>,
    },
    /// A list.
    Array(Box<SchemaType>),
}

/// One member of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The wire name (kebab-case as in QAPI).
    pub name: &'static str,
    /// Its type.
    pub ty: SchemaType,
    /// True if it may be absent.
    pub optional: bool,
}

/// A Rust type with a QAPI description.
pub trait QapiType {
    /// The description.
    fn schema() -> SchemaType;
}

/// A required member of type `T`.
pub fn member<T: QapiType>(name: &'static str) -> Member {
    Member {
        name,
        ty: T::schema(),
        optional: false,
    }
}

/// An optional member of type `T` (an `Option<T>` field).
pub fn optional<T: QapiType>(name: &'static str) -> Member {
    Member {
        name,
        ty: T::schema(),
        optional: true,
    }
}

macro_rules! builtin {
    ($($t:ty => $b:expr),* $(,)?) => {
        $(impl QapiType for $t {
            fn schema() -> SchemaType {
                SchemaType::Builtin($b)
            }
        })*
    };
}

builtin! {
    String => Builtin::Str,
    i64 => Builtin::Int,
    u64 => Builtin::Uint64,
    u32 => Builtin::Uint32,
    bool => Builtin::Bool,
    f64 => Builtin::Number,
    Value => Builtin::Any,
}

impl<T: QapiType> QapiType for Vec<T> {
    fn schema() -> SchemaType {
        SchemaType::Array(Box::new(T::schema()))
    }
}

/// The empty object: the arguments of a command that takes none, the
/// return of one that returns nothing, the data of an event without data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

impl QapiType for Empty {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "Empty",
            members: Vec::new(),
        }
    }
}

/// Checks a command's `arguments` against its argument type, with QEMU's
/// messages. Members are checked in declaration order, unexpected members
/// last, and the first problem is reported.
pub fn validate_args(args: &Map<String, Value>, ty: &SchemaType) -> Result<(), String> {
    match ty {
        SchemaType::Object { members, .. } => check_members(args, members, ""),
        SchemaType::Builtin(Builtin::Any) => Ok(()),
        SchemaType::Builtin(_) | SchemaType::Enum { .. } | SchemaType::Array(_) => {
            Err("internal error: command arguments must be an object".into())
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn check_members(obj: &Map<String, Value>, members: &[Member], prefix: &str) -> Result<(), String> {
    for m in members {
        let full = join(prefix, m.name);
        match obj.get(m.name) {
            None if m.optional => {}
            None => return Err(format!("Parameter '{full}' is missing")),
            Some(v) => check(v, &m.ty, &full, m.name)?,
        }
    }
    if let Some(extra) = obj
        .keys()
        .find(|k| !members.iter().any(|m| m.name == k.as_str()))
    {
        return Err(format!("Parameter '{}' is unexpected", join(prefix, extra)));
    }
    Ok(())
}

fn type_error(full: &str, expected: &str) -> String {
    format!("Invalid parameter type for '{full}', expected: {expected}")
}

/// `full` is the path QEMU prints (`a.b[0].c`); `name` the bare member
/// name, which QEMU's enum message uses (`null` inside lists).
fn check(v: &Value, ty: &SchemaType, full: &str, name: &str) -> Result<(), String> {
    match ty {
        SchemaType::Builtin(b) => {
            let ok = match b {
                Builtin::Str => v.is_string(),
                Builtin::Int => v.is_i64(),
                Builtin::Uint64 => {
                    // QEMU accepts negative values for uint64 (compatibility).
                    if !(v.is_u64() || v.is_i64()) {
                        return Err(format!("Parameter '{full}' expects uint64"));
                    }
                    true
                }
                Builtin::Uint32 => {
                    // As QEMU: read as uint64 (negative values wrap), then
                    // range-checked.
                    if !(v.is_u64() || v.is_i64()) {
                        return Err(format!("Parameter '{full}' expects uint64"));
                    }
                    if v.as_u64().is_none_or(|x| x > u64::from(u32::MAX)) {
                        return Err(format!("Parameter '{full}' expects uint32_t"));
                    }
                    true
                }
                Builtin::Bool => v.is_boolean(),
                Builtin::Number => v.is_number(),
                Builtin::Any => true,
                Builtin::Null => v.is_null(),
            };
            if ok {
                Ok(())
            } else {
                Err(type_error(full, b.expected()))
            }
        }
        SchemaType::Object { members, .. } => match v {
            Value::Object(o) => check_members(o, members, full),
            _ => Err(type_error(full, "object")),
        },
        SchemaType::Enum { values, .. } => match v {
            Value::String(s) if values.contains(&s.as_str()) => Ok(()),
            Value::String(s) => Err(format!("Parameter '{name}' does not accept value '{s}'")),
            _ => Err(type_error(full, "string")),
        },
        SchemaType::Array(elem) => match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, elem, &format!("{full}[{i}]"), "null")?;
                }
                Ok(())
            }
            _ => Err(type_error(full, "array")),
        },
    }
}

/// Builds `query-qmp-schema`'s entries: types get opaque names ("0", "1",
/// ...; arrays "[N]"), built-ins keep theirs, and every type referenced is
/// defined exactly once.
#[derive(Debug, Default)]
pub struct Introspector {
    entries: Vec<Value>,
    names: HashMap<String, String>,
    next: usize,
}

impl Introspector {
    /// An empty schema; the empty object is named "0" as in QEMU.
    pub fn new() -> Self {
        let mut i = Self::default();
        i.type_name(&Empty::schema());
        i
    }

    /// Adds a command entry.
    pub fn command(&mut self, name: &str, args: &SchemaType, ret: &SchemaType, allow_oob: bool) {
        let arg_type = self.type_name(args);
        let ret_type = self.type_name(ret);
        let mut e = json!({"name": name, "meta-type": "command", "arg-type": arg_type, "ret-type": ret_type});
        if allow_oob {
            e["allow-oob"] = json!(true);
        }
        self.entries.push(e);
    }

    /// Adds an event entry.
    pub fn event(&mut self, name: &str, data: &SchemaType) {
        let arg_type = self.type_name(data);
        self.entries
            .push(json!({"name": name, "meta-type": "event", "arg-type": arg_type}));
    }

    /// The entries.
    pub fn finish(self) -> Vec<Value> {
        self.entries
    }

    fn fresh(&mut self) -> String {
        let n = self.next.to_string();
        self.next += 1;
        n
    }

    /// The introspection name of `ty`, defining it (and what it refers
    /// to) on first use.
    pub fn type_name(&mut self, ty: &SchemaType) -> String {
        let key = match ty {
            SchemaType::Builtin(b) => format!("builtin:{}", b.name()),
            SchemaType::Object { name, .. } => format!("object:{name}"),
            SchemaType::Enum { name, .. } => format!("enum:{name}"),
            SchemaType::Array(elem) => {
                let e = self.type_name(elem);
                format!("array:{e}")
            }
        };
        if let Some(n) = self.names.get(&key) {
            return n.clone();
        }
        match ty {
            SchemaType::Builtin(b) => {
                let n = b.name().to_owned();
                self.names.insert(key, n.clone());
                self.entries
                    .push(json!({"name": n, "meta-type": "builtin", "json-type": b.json_type()}));
                n
            }
            SchemaType::Object { members, .. } => {
                let n = self.fresh();
                self.names.insert(key, n.clone());
                let ms: Vec<Value> = members
                    .iter()
                    .map(|m| {
                        let t = self.type_name(&m.ty);
                        if m.optional {
                            json!({"name": m.name, "type": t, "default": null})
                        } else {
                            json!({"name": m.name, "type": t})
                        }
                    })
                    .collect();
                self.entries
                    .push(json!({"name": n, "meta-type": "object", "members": ms}));
                n
            }
            SchemaType::Enum { values, .. } => {
                let n = self.fresh();
                self.names.insert(key, n.clone());
                let ms: Vec<Value> = values.iter().map(|v| json!({"name": v})).collect();
                self.entries
                    .push(json!({"name": n, "meta-type": "enum", "members": ms, "values": values}));
                n
            }
            SchemaType::Array(elem) => {
                let e = self.type_name(elem);
                let n = format!("[{e}]");
                self.names.insert(key, n.clone());
                self.entries
                    .push(json!({"name": n, "meta-type": "array", "element-type": e}));
                n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Inner;
    impl QapiType for Inner {
        fn schema() -> SchemaType {
            SchemaType::Object {
                name: "Inner",
                members: vec![member::<i64>("size"), optional::<String>("note")],
            }
        }
    }

    struct Kind;
    impl QapiType for Kind {
        fn schema() -> SchemaType {
            SchemaType::Enum {
                name: "Kind",
                values: vec!["a", "b"],
            }
        }
    }

    struct Args;
    impl QapiType for Args {
        fn schema() -> SchemaType {
            SchemaType::Object {
                name: "Args",
                members: vec![
                    member::<String>("node-name"),
                    member::<u64>("threshold"),
                    optional::<bool>("flat"),
                    optional::<Vec<Inner>>("children"),
                    optional::<Kind>("kind"),
                    optional::<Vec<Kind>>("kinds"),
                    optional::<f64>("ratio"),
                ],
            }
        }
    }

    fn err(v: Value) -> String {
        validate_args(v.as_object().unwrap(), &Args::schema()).unwrap_err()
    }

    #[test]
    fn valid_arguments_pass() {
        let v = json!({"node-name": "x", "threshold": 5, "children": [{"size": 1}], "kind": "a", "ratio": 1});
        assert_eq!(
            validate_args(v.as_object().unwrap(), &Args::schema()),
            Ok(())
        );
    }

    #[test]
    fn missing_and_unexpected_members_use_qemu_wording() {
        assert_eq!(
            err(json!({"threshold": 1})),
            "Parameter 'node-name' is missing"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "foo": 1})),
            "Parameter 'foo' is unexpected"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "children": [{"size": 1, "foo": 2}]})),
            "Parameter 'children[0].foo' is unexpected"
        );
    }

    #[test]
    fn type_errors_use_qemu_wording() {
        assert_eq!(
            err(json!({"node-name": 1})),
            "Invalid parameter type for 'node-name', expected: string"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": "a"})),
            "Parameter 'threshold' expects uint64"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "flat": null})),
            "Invalid parameter type for 'flat', expected: boolean"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "children": [{"size": 1.5}]})),
            "Invalid parameter type for 'children[0].size', expected: integer"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "children": {}})),
            "Invalid parameter type for 'children', expected: array"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "children": [3]})),
            "Invalid parameter type for 'children[0]', expected: object"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "ratio": "1"})),
            "Invalid parameter type for 'ratio', expected: number"
        );
    }

    #[test]
    fn enum_errors_use_qemu_wording() {
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "kind": "z"})),
            "Parameter 'kind' does not accept value 'z'"
        );
        assert_eq!(
            err(json!({"node-name": "x", "threshold": 1, "kinds": ["z"]})),
            "Parameter 'null' does not accept value 'z'"
        );
    }

    #[test]
    fn negative_uint64_is_accepted_like_qemu() {
        let v = json!({"node-name": "x", "threshold": -5});
        assert_eq!(
            validate_args(v.as_object().unwrap(), &Args::schema()),
            Ok(())
        );
    }

    #[test]
    fn introspection_defines_every_referenced_type_once() {
        let mut i = Introspector::new();
        i.command("c", &Args::schema(), &Empty::schema(), true);
        i.event("E", &Inner::schema());
        let entries = i.finish();
        let names: Vec<&str> = entries
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        let mut uniq = names.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), names.len());
        let cmd = entries.iter().find(|e| e["name"] == "c").unwrap();
        assert_eq!(cmd["ret-type"], "0");
        assert_eq!(cmd["allow-oob"], true);
        for e in &entries {
            for key in ["arg-type", "ret-type", "element-type"] {
                if let Some(t) = e.get(key) {
                    assert!(names.contains(&t.as_str().unwrap()), "{t} undefined");
                }
            }
            for m in e
                .get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = m.get("type") {
                    assert!(names.contains(&t.as_str().unwrap()), "{t} undefined");
                }
            }
        }
    }
}
