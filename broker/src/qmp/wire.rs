//! What travels over a QMP socket: the greeting, replies, errors and
//! events, formatted as QEMU formats them (`{"key": value, ...}` with a
//! space after `:` and `,`, one message per line), and the top-level checks
//! on a request (QEMU's `qmp_dispatch_check_obj`).

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::QmpError;

/// The QEMU version bulkhead reports, so tools that check it accept us.
pub const QEMU_VERSION: (u32, u32, u32) = (10, 0, 0);
/// The `package` string of the greeting and `query-version`.
pub const PACKAGE: &str = concat!("bulkhead ", env!("CARGO_PKG_VERSION"));

/// serde_json formatter with QEMU's spacing: `{"a": 1, "b": [1, 2]}`.
struct QemuFormatter;

impl serde_json::ser::Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Serializes `v` in QEMU's style.
pub fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, QemuFormatter);
    // Serializing a Value or a derived type into memory cannot fail; if it
    // ever did, `null` is still valid JSON.
    if v.serialize(&mut ser).is_err() {
        return "null".into();
    }
    String::from_utf8(buf).unwrap_or_else(|_| "null".into())
}

/// The greeting sent on connect.
pub fn greeting() -> String {
    let (major, minor, micro) = QEMU_VERSION;
    format!(
        "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": {micro}, \"minor\": {minor}, \"major\": {major}}}, \
         \"package\": {}}}, \"capabilities\": [\"oob\"]}}}}",
        to_json(PACKAGE)
    )
}

/// A success reply: `{"return": ..., "id": ...}`.
pub fn reply_ok(ret: &Value, id: Option<&Value>) -> String {
    match id {
        Some(id) => format!("{{\"return\": {}, \"id\": {}}}", to_json(ret), to_json(id)),
        None => format!("{{\"return\": {}}}", to_json(ret)),
    }
}

/// An error reply: `{"id": ..., "error": {"class": ..., "desc": ...}}`.
pub fn reply_err(err: &QmpError, id: Option<&Value>) -> String {
    let body = format!(
        "{{\"class\": {}, \"desc\": {}}}",
        to_json(err.class.as_str()),
        to_json(&err.desc)
    );
    match id {
        Some(id) => format!("{{\"id\": {}, \"error\": {body}}}", to_json(id)),
        None => format!("{{\"error\": {body}}}"),
    }
}

/// An event: `{"timestamp": {...}, "event": ..., "data": ...}`.
pub fn event_line(event: &str, data: Option<&Value>, at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let head = format!(
        "{{\"timestamp\": {{\"seconds\": {}, \"microseconds\": {}}}, \"event\": {}",
        since.as_secs(),
        since.subsec_micros(),
        to_json(event)
    );
    match data {
        Some(d) => format!("{head}, \"data\": {}}}", to_json(d)),
        None => format!("{head}}}"),
    }
}

/// A request that passed the top-level checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The `id`, echoed in the reply.
    pub id: Option<Value>,
    /// The command name.
    pub name: String,
    /// The `arguments` (empty when absent).
    pub args: Map<String, Value>,
    /// True for `exec-oob`.
    pub oob: bool,
}

/// True if `v` asks for out-of-band execution (`exec-oob` without `execute`).
pub fn is_oob(v: &Value) -> bool {
    v.get("exec-oob").is_some() && v.get("execute").is_none()
}

/// Checks the top level of a request as QEMU does; on error, returns the
/// `id` (if there is one) with the error.
pub fn parse_request(v: Value, allow_oob: bool) -> Result<Request, (Option<Value>, QmpError)> {
    let Value::Object(mut obj) = v else {
        return Err((None, QmpError::generic("QMP input must be a JSON object")));
    };
    let id = obj.remove("id");
    let fail = |id: Option<Value>, msg: String| Err((id, QmpError::generic(msg)));
    for (key, val) in &obj {
        match key.as_str() {
            "execute" => {}
            "exec-oob" if allow_oob => {}
            "arguments" => {
                if !val.is_object() {
                    return fail(id, "QMP input member 'arguments' must be an object".into());
                }
                continue;
            }
            _ => return fail(id, format!("QMP input member '{key}' is unexpected")),
        }
        if !val.is_string() {
            return fail(id, format!("QMP input member '{key}' must be a string"));
        }
    }
    let exec = obj.remove("execute");
    let exec_oob = obj.remove("exec-oob");
    let args = match obj.remove("arguments") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    match (exec, exec_oob) {
        (Some(_), Some(_)) => fail(
            id,
            "QMP input member 'execute' clashes with 'exec-oob'".into(),
        ),
        (Some(Value::String(name)), None) => Ok(Request {
            id,
            name,
            args,
            oob: false,
        }),
        (None, Some(Value::String(name))) => Ok(Request {
            id,
            name,
            args,
            oob: true,
        }),
        _ => fail(id, "QMP input lacks member 'execute'".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn output_uses_qemu_spacing() {
        assert_eq!(
            to_json(&json!({"a": [1, 2], "b": {"c": null}})),
            r#"{"a": [1, 2], "b": {"c": null}}"#
        );
    }

    #[test]
    fn greeting_matches_qemu_shape() {
        let g: Value = serde_json::from_str(&greeting()).unwrap();
        assert_eq!(g["QMP"]["version"]["qemu"]["major"], 10);
        assert_eq!(g["QMP"]["capabilities"], json!(["oob"]));
        assert!(g["QMP"]["version"]["package"]
            .as_str()
            .unwrap()
            .starts_with("bulkhead "));
    }

    #[test]
    fn replies_put_members_in_qemu_order() {
        assert_eq!(
            reply_ok(&json!({}), Some(&json!([1]))),
            r#"{"return": {}, "id": [1]}"#
        );
        let e = QmpError::generic("x");
        assert_eq!(
            reply_err(&e, Some(&json!(1))),
            r#"{"id": 1, "error": {"class": "GenericError", "desc": "x"}}"#
        );
        assert_eq!(
            reply_err(&e, None),
            r#"{"error": {"class": "GenericError", "desc": "x"}}"#
        );
    }

    #[test]
    fn event_has_timestamp_event_and_data() {
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_500_000);
        assert_eq!(
            event_line("STOP", Some(&json!({"a": 1})), at),
            r#"{"timestamp": {"seconds": 1, "microseconds": 500000}, "event": "STOP", "data": {"a": 1}}"#
        );
    }

    fn err_of(v: Value, oob: bool) -> String {
        parse_request(v, oob).unwrap_err().1.desc
    }

    #[test]
    fn top_level_checks_give_qemu_messages() {
        assert_eq!(err_of(json!([1]), false), "QMP input must be a JSON object");
        assert_eq!(
            err_of(json!({"arguments": {}}), false),
            "QMP input lacks member 'execute'"
        );
        assert_eq!(
            err_of(json!({"execute": 1}), false),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            err_of(json!({"execute": "x", "arguments": []}), false),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            err_of(json!({"execute": "x", "foo": 1}), false),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            err_of(json!({"exec-oob": "x"}), false),
            "QMP input member 'exec-oob' is unexpected"
        );
        assert_eq!(
            err_of(json!({"exec-oob": "x", "execute": "x"}), true),
            "QMP input member 'execute' clashes with 'exec-oob'"
        );
    }

    #[test]
    fn error_keeps_the_id() {
        let (id, _) =
            parse_request(json!({"execute": "x", "foo": 1, "id": {"a": 1}}), false).unwrap_err();
        assert_eq!(id, Some(json!({"a": 1})));
    }

    #[test]
    fn oob_request_parses_when_allowed() {
        let r = parse_request(json!({"exec-oob": "ping", "id": 3}), true).unwrap();
        assert!(r.oob);
        assert_eq!(r.name, "ping");
        assert_eq!(r.id, Some(json!(3)));
    }
}
