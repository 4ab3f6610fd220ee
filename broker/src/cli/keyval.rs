//! QEMU's `key=value,...` option syntax (with `,,` for a literal comma and
//! dotted keys for nested objects) and the options written in it:
//! `-blockdev`, `-drive`, `-device`.

use serde_json::{Map, Value};

use super::{bad, parse_on_off, Result};

/// Splits QEMU's `key=value,...` syntax, where `,,` is a literal comma.
/// A first element without `=` is returned under `implied_key`.
pub(super) fn keyval_pairs(
    option: &str,
    s: &str,
    implied_key: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let mut items: Vec<String> = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                if let Some(i) = items.last_mut() {
                    i.push(',');
                }
            }
            ',' => items.push(String::new()),
            c => {
                if let Some(i) = items.last_mut() {
                    i.push(c);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_owned(), v.to_owned())),
            None if i == 0 && implied_key.is_some() && !item.is_empty() => {
                out.push((implied_key.unwrap_or_default().to_owned(), item));
            }
            _ => return Err(bad(option, format!("Invalid parameter '{item}'"))),
        }
    }
    Ok(out)
}

/// `BlockdevOptions` members whose keyval strings are booleans.
const BOOL_KEYS: [&str; 10] = [
    "blkverify",
    "rewrite-corrupted",
    "read-only",
    "auto-read-only",
    "force-share",
    "direct",
    "no-flush",
    "lazy-refcounts",
    "pass-discard-request",
    "read-zeroes",
];

/// `BlockdevOptions` members whose keyval strings are sizes or integers.
const INT_KEYS: [&str; 4] = ["offset", "size", "cache-size", "latency-ns"];

/// QEMU's size syntax: a number with an optional k/M/G/T/P/E suffix.
pub(super) fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return None,
            };
            (&v[..i], shift)
        }
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Converts one keyval string to the JSON type the member has.
fn keyval_value(option: &str, path: &str, leaf: &str, v: String) -> Result<Value> {
    if BOOL_KEYS.contains(&leaf) {
        return match v.as_str() {
            "on" | "yes" | "true" | "y" => Ok(Value::Bool(true)),
            "off" | "no" | "false" | "n" => Ok(Value::Bool(false)),
            _ => Err(bad(
                option,
                format!("Parameter '{path}' expects 'on' or 'off'"),
            )),
        };
    }
    if leaf == "vote-threshold" {
        return v
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| bad(option, format!("Parameter '{path}' expects integer")));
    }
    if INT_KEYS.contains(&leaf) {
        return parse_size(&v).map(Value::from).ok_or_else(|| {
            bad(
                option,
                format!("Parameter '{path}' expects a non-negative number below 2^64"),
            )
        });
    }
    if leaf == "backing" && v.is_empty() {
        return Ok(Value::Null);
    }
    Ok(Value::String(v))
}

/// QEMU's dotted keyval form (`driver=qcow2,file.driver=file,...`) as a
/// JSON object.
fn keyval_object(option: &str, pairs: Vec<(String, String)>) -> Result<Map<String, Value>> {
    let mut root = Map::new();
    for (key, v) in pairs {
        let parts: Vec<&str> = key.split('.').collect();
        let (leaf, parents) = match parts.split_last() {
            Some((l, p)) if !l.is_empty() && p.iter().all(|x| !x.is_empty()) => (*l, p),
            _ => return Err(bad(option, format!("Invalid parameter '{key}'"))),
        };
        let mut cur = &mut root;
        for (i, p) in parents.iter().enumerate() {
            let entry = cur
                .entry((*p).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            cur = match entry {
                Value::Object(m) => m,
                _ => {
                    let path = parents[..=i].join(".");
                    return Err(bad(
                        option,
                        format!("Parameter '{path}' used inconsistently"),
                    ));
                }
            };
        }
        if cur.contains_key(leaf) {
            return Err(bad(
                option,
                format!("Parameter '{key}' used inconsistently"),
            ));
        }
        let value = keyval_value(option, &key, leaf, v)?;
        cur.insert(leaf.to_owned(), value);
    }
    for (k, v) in root.iter_mut() {
        listify(option, k, v)?;
    }
    Ok(root)
}

/// QEMU's keyval lists: an object whose keys are all indexes
/// (`children.0`, `children.1`) is the list of its members, which must
/// be numbered from 0 without gaps.
fn listify(option: &str, path: &str, v: &mut Value) -> Result<()> {
    let Value::Object(m) = v else { return Ok(()) };
    for (k, c) in m.iter_mut() {
        listify(option, &format!("{path}.{k}"), c)?;
    }
    let numeric = m
        .keys()
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        .count();
    if numeric == 0 {
        return Ok(());
    }
    if numeric != m.len() {
        return Err(bad(
            option,
            format!("Parameters '{path}.*' used inconsistently"),
        ));
    }
    let mut items = Vec::with_capacity(m.len());
    for i in 0..m.len() {
        match m.remove(&i.to_string()) {
            Some(x) => items.push(x),
            None => return Err(bad(option, format!("Parameter '{path}.{i}' missing"))),
        }
    }
    *v = Value::Array(items);
    Ok(())
}

/// `-blockdev`: JSON (`{"driver": ...}`) or dotted keyval
/// (`driver=file,node-name=f0,filename=/x.img`), same result.
pub fn parse_blockdev(s: &str) -> Result<Map<String, Value>> {
    if s.trim_start().starts_with('{') {
        return serde_json::from_str::<Map<String, Value>>(s)
            .map_err(|e| bad("-blockdev", format!("JSON parse error, {e}")));
    }
    keyval_object("-blockdev", keyval_pairs("-blockdev", s, Some("driver"))?)
}

/// `-drive file=PATH,format=raw|qcow2,if=none,id=ID[,readonly=on][,media=disk|cdrom]
/// [,cache.direct=on][,cache=none|writeback|...][,aio=threads|native|io_uring]`:
/// a `file` node under a format node named `ID`.
pub fn parse_drive(s: &str) -> Result<Map<String, Value>> {
    let o = "-drive";
    let (mut file, mut format, mut id) = (None, None, None);
    let (mut ro, mut direct, mut no_flush) = (false, false, false);
    let mut extra = Map::new();
    let mut aio = None;
    for (k, v) in keyval_pairs(o, s, Some("file"))? {
        match k.as_str() {
            "file" => file = Some(v),
            "format" => format = Some(v),
            "id" => id = Some(v),
            "if" if v == "none" => {}
            "if" => {
                return Err(bad(
                    o,
                    format!("if={v} is not supported; use if=none and -device"),
                ))
            }
            "media" if v == "disk" => {}
            // QEMU: a CD-ROM drive's medium is read-only.
            "media" if v == "cdrom" => ro = true,
            "readonly" | "read-only" => ro = parse_on_off(o, &v)?,
            "cache.direct" => direct = parse_on_off(o, &v)?,
            "cache.no-flush" => no_flush = parse_on_off(o, &v)?,
            "cache" => {
                (direct, no_flush) = match v.as_str() {
                    "none" => (true, false),
                    "writeback" | "writethrough" => (false, false),
                    "directsync" => (true, false),
                    "unsafe" => (false, true),
                    _ => return Err(bad(o, format!("invalid cache option '{v}'"))),
                }
            }
            "discard" | "detect-zeroes" => {
                extra.insert(k, Value::String(v));
            }
            k if k.starts_with("throttling.") => {
                let key = &k["throttling.".len()..];
                let value = match crate::commands::block::throttle::drive_key(key) {
                    Some(true) => Value::from(
                        v.parse::<u64>()
                            .map_err(|_| bad(o, format!("Parameter '{k}' expects a number")))?,
                    ),
                    Some(false) => Value::String(v),
                    None => return Err(bad(o, format!("Invalid parameter '{k}'"))),
                };
                extra.insert(k.to_string(), value);
            }
            "aio" => match v.as_str() {
                "threads" | "native" | "io_uring" => aio = Some(v),
                _ => return Err(bad(o, "invalid aio option")),
            },
            _ => return Err(bad(o, format!("Invalid parameter '{k}'"))),
        }
    }
    let file = file.ok_or_else(|| bad(o, "file= is required"))?;
    let id = id.ok_or_else(|| bad(o, "id= is required (bulkhead drives are if=none)"))?;
    let format = format.ok_or_else(|| {
        bad(
            o,
            "format= is required (bulkhead does not probe image formats)",
        )
    })?;
    if !matches!(format.as_str(), "raw" | "qcow2") {
        return Err(bad(o, format!("'{format}' invalid format")));
    }
    let cache = serde_json::json!({"direct": direct, "no-flush": no_flush});
    let mut proto = Map::new();
    proto.insert("driver".into(), "file".into());
    proto.insert("filename".into(), file.into());
    proto.insert("cache".into(), cache.clone());
    if let Some(a) = aio {
        proto.insert("aio".into(), a.into());
    }
    let mut top = Map::new();
    top.insert("driver".into(), format.into());
    top.insert("node-name".into(), id.into());
    top.insert("cache".into(), cache);
    if ro {
        top.insert("read-only".into(), Value::Bool(true));
        proto.insert("read-only".into(), Value::Bool(true));
    }
    top.extend(extra);
    top.insert("file".into(), Value::Object(proto));
    Ok(top)
}

/// `-device DRIVER,prop=value,...` or `-device {"driver": ...}`: the
/// properties `device_add` takes (checked when applied).
pub fn parse_device(s: &str) -> Result<Map<String, Value>> {
    if s.trim_start().starts_with('{') {
        return serde_json::from_str::<Map<String, Value>>(s)
            .map_err(|e| bad("-device", format!("JSON parse error, {e}")));
    }
    Ok(keyval_pairs("-device", s, Some("driver"))?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect())
}

/// `-netdev TYPE,id=ID,key=value,...` or `-netdev {"type": ...}`: the
/// properties `netdev_add` takes (checked when applied).
pub fn parse_netdev(s: &str) -> Result<Map<String, Value>> {
    if s.trim_start().starts_with('{') {
        return serde_json::from_str::<Map<String, Value>>(s)
            .map_err(|e| bad("-netdev", format!("JSON parse error, {e}")));
    }
    Ok(keyval_pairs("-netdev", s, Some("type"))?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_aio_goes_to_the_file_node_and_bad_values_get_qemus_message() {
        let d = parse_drive("file=/x.img,format=raw,if=none,id=d0,aio=io_uring").unwrap();
        assert_eq!(d["file"]["aio"], "io_uring");
        assert!(d.get("aio").is_none());
        let d = parse_drive("file=/x.img,format=raw,if=none,id=d0").unwrap();
        assert!(d["file"].get("aio").is_none());
        let e = parse_drive("file=/x.img,format=raw,if=none,id=d0,aio=foo").unwrap_err();
        assert!(e.to_string().ends_with("invalid aio option"), "{e}");
    }

    #[test]
    fn blockdev_json_and_dotted_forms_give_the_same_options() {
        let json = parse_blockdev(
            r#"{"driver":"qcow2","node-name":"d0","read-only":true,"file":{"driver":"file","filename":"/x,y.img"}}"#,
        )
        .unwrap();
        let dotted = parse_blockdev(
            "driver=qcow2,node-name=d0,read-only=on,file.driver=file,file.filename=/x,,y.img",
        )
        .unwrap();
        assert_eq!(json, dotted);
        let implied = parse_blockdev("null-co,node-name=n0,size=1M").unwrap();
        assert_eq!(
            Value::Object(implied),
            serde_json::json!({"driver": "null-co", "node-name": "n0", "size": 1048576})
        );
    }

    #[test]
    fn numbered_keys_make_lists_as_in_qemu() {
        let q = parse_blockdev(
            "driver=quorum,node-name=q0,children.0=a,children.1.driver=raw,children.1.file=f,vote-threshold=2,blkverify=off",
        )
        .unwrap();
        assert_eq!(
            Value::Object(q),
            serde_json::json!({"driver": "quorum", "node-name": "q0", "vote-threshold": 2,
                "blkverify": false, "children": ["a", {"driver": "raw", "file": "f"}]})
        );
        let e = |s: &str| parse_blockdev(s).unwrap_err().to_string();
        assert!(e("driver=quorum,children.0=a,children.2=b")
            .ends_with("Parameter 'children.1' missing"));
        assert!(e("driver=quorum,children.0=a,children.x=b")
            .ends_with("Parameters 'children.*' used inconsistently"));
        assert!(e("driver=quorum,children.0=a,vote-threshold=x")
            .ends_with("Parameter 'vote-threshold' expects integer"));
    }

    #[test]
    fn bad_blockdev_values_are_rejected() {
        assert!(parse_blockdev("driver=file,read-only=maybe").is_err());
        assert!(parse_blockdev("driver=file,size=-1").is_err());
        assert!(parse_blockdev("driver=file,file=x,file.driver=y").is_err());
        assert!(parse_blockdev("{not json").is_err());
    }

    #[test]
    fn drive_makes_a_format_node_over_a_file_node() {
        let d =
            parse_drive("file=/x.img,format=qcow2,if=none,id=disk0,readonly=on,cache.direct=on")
                .unwrap();
        assert_eq!(
            Value::Object(d),
            serde_json::json!({"driver": "qcow2", "node-name": "disk0", "read-only": true,
                "cache": {"direct": true, "no-flush": false},
                "file": {"driver": "file", "filename": "/x.img", "read-only": true,
                         "cache": {"direct": true, "no-flush": false}}})
        );
        assert!(parse_drive("file=/x.img,format=raw,if=virtio,id=d").is_err());
        assert!(parse_drive("file=/x.img,if=none,id=d").is_err());
        assert!(parse_drive("file=/x.img,format=raw,if=none").is_err());
    }
}
