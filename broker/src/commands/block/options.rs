//! `blockdev-add`'s arguments: QEMU's `BlockdevOptions`, checked with
//! QEMU's messages and turned into ipc-proto's options.
//!
//! `blockdev-add`'s arguments are QEMU's `BlockdevOptions`, a flat union on
//! `driver`. The schema module has no unions, so the registry sees one
//! object holding the common members plus every driver's members (all
//! optional; `file`/`backing`, which are alternates, as `any`), which gives
//! `query-qmp-schema` every member name and QEMU's messages for a missing
//! or unknown `driver` and unknown members. The driver-specific checks
//! (required members, members of another driver, nested definitions with
//! their `file.` prefix) are done here by [`validate_options`], with the
//! same schema functions and QEMU's messages; then the arguments are
//! deserialised into ipc-proto's [`BlockdevOptions`].

use ipc_proto::block::{BlockdevOptions, BlockdevRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::machine::{block_state, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::schema::{member, optional, validate_args, Member, QapiType, SchemaType};

/// QEMU's `BlockdevDriver`, restricted to the drivers bulkhead has.
pub struct BlockdevDriver;

impl QapiType for BlockdevDriver {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevDriver",
            values: vec!["file", "null-co", "qcow2", "quorum", "raw"],
        }
    }
}

/// QEMU's `BlockdevDiscardOptions`.
pub struct BlockdevDiscardOptions;

impl QapiType for BlockdevDiscardOptions {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevDiscardOptions",
            values: vec!["ignore", "unmap"],
        }
    }
}

/// QEMU's `BlockdevDetectZeroesOptions`.
pub struct BlockdevDetectZeroesOptions;

impl QapiType for BlockdevDetectZeroesOptions {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevDetectZeroesOptions",
            values: vec!["off", "on", "unmap"],
        }
    }
}

/// QEMU's `BlockdevCacheOptions`.
pub struct BlockdevCacheOptions;

impl QapiType for BlockdevCacheOptions {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevCacheOptions",
            members: vec![optional::<bool>("direct"), optional::<bool>("no-flush")],
        }
    }
}

/// QEMU's `OnOffAuto` (the `file` driver's `locking`).
pub struct OnOffAuto;

impl QapiType for OnOffAuto {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "OnOffAuto",
            values: vec!["auto", "on", "off"],
        }
    }
}

/// QEMU's `BlockdevAioOptions`.
pub struct BlockdevAioOptions;

impl QapiType for BlockdevAioOptions {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevAioOptions",
            values: vec!["threads", "native", "io_uring"],
        }
    }
}

/// QEMU's `QuorumReadPattern`.
pub struct QuorumReadPattern;

impl QapiType for QuorumReadPattern {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "QuorumReadPattern",
            values: vec!["quorum", "fifo"],
        }
    }
}

/// A `BlockdevRef` or `BlockdevRefOrNull` alternate, checked by hand.
fn alternate(name: &'static str, required: bool) -> Member {
    Member {
        name,
        ty: Value::schema(),
        optional: !required,
    }
}

/// The members every driver has (QEMU `BlockdevOptionsBase`).
fn base_members() -> Vec<Member> {
    vec![
        member::<BlockdevDriver>("driver"),
        optional::<String>("node-name"),
        optional::<BlockdevDiscardOptions>("discard"),
        optional::<BlockdevCacheOptions>("cache"),
        optional::<bool>("read-only"),
        optional::<bool>("auto-read-only"),
        optional::<bool>("force-share"),
        optional::<BlockdevDetectZeroesOptions>("detect-zeroes"),
    ]
}

/// The members of one driver's variant.
fn variant_members(driver: &str) -> Vec<Member> {
    match driver {
        "file" => vec![
            member::<String>("filename"),
            optional::<OnOffAuto>("locking"),
            optional::<BlockdevAioOptions>("aio"),
        ],
        "raw" => vec![
            alternate("file", true),
            optional::<u64>("offset"),
            optional::<u64>("size"),
        ],
        "qcow2" => vec![
            alternate("file", true),
            alternate("backing", false),
            optional::<bool>("lazy-refcounts"),
            optional::<bool>("pass-discard-request"),
            optional::<u64>("cache-size"),
        ],
        "null-co" => vec![
            optional::<u64>("size"),
            optional::<u64>("latency-ns"),
            optional::<bool>("read-zeroes"),
        ],
        "quorum" => vec![
            optional::<bool>("blkverify"),
            member::<Vec<Value>>("children"),
            member::<i64>("vote-threshold"),
            optional::<bool>("rewrite-corrupted"),
            optional::<QuorumReadPattern>("read-pattern"),
        ],
        _ => Vec::new(),
    }
}

/// `blockdev-add`'s arguments: the `BlockdevOptions` object itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockdevAddArgs(pub Map<String, Value>);

impl QapiType for BlockdevAddArgs {
    fn schema() -> SchemaType {
        let mut members = base_members();
        for d in ["file", "null-co", "qcow2", "quorum", "raw"] {
            for mut m in variant_members(d) {
                if !members.iter().any(|x| x.name == m.name) {
                    m.optional = true;
                    members.push(m);
                }
            }
        }
        SchemaType::Object {
            name: "BlockdevOptions",
            members,
        }
    }
}

/// Puts `prefix` in front of the member path of a schema message (QEMU
/// prints nested paths as `file.filename`; enum messages keep the bare
/// member name).
fn with_prefix(msg: String, prefix: &str) -> String {
    if prefix.is_empty() || msg.contains("' does not accept value '") {
        return msg;
    }
    for head in ["Parameter '", "Invalid parameter type for '"] {
        if let Some(rest) = msg.strip_prefix(head) {
            return format!("{head}{prefix}{rest}");
        }
    }
    msg
}

/// Checks a `BlockdevOptions` object (and its inline children) against
/// its driver's members, with QEMU's messages. `prefix` is the path of the
/// object (`""`, `"file."`, ...).
pub fn validate_options(map: &Map<String, Value>, prefix: &str) -> std::result::Result<(), String> {
    let union = BlockdevAddArgs::schema();
    validate_args(map, &union).map_err(|e| with_prefix(e, prefix))?;
    let driver = map
        .get("driver")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut members = base_members();
    members.extend(variant_members(driver));
    let variant = SchemaType::Object {
        name: "BlockdevOptions",
        members,
    };
    validate_args(map, &variant).map_err(|e| with_prefix(e, prefix))?;
    for (name, nullable) in [("file", false), ("backing", true)] {
        match map.get(name) {
            None | Some(Value::String(_)) => {}
            Some(Value::Null) if nullable => {}
            Some(Value::Object(child)) => validate_options(child, &format!("{prefix}{name}."))?,
            Some(_) => {
                let ty = if nullable {
                    "BlockdevRefOrNull"
                } else {
                    "BlockdevRef"
                };
                return Err(format!(
                    "Invalid parameter type for '{prefix}{name}', expected: {ty}"
                ));
            }
        }
    }
    // A quorum's children: each a node name or a definition.
    for (i, c) in map
        .get("children")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match c {
            Value::String(_) => {}
            Value::Object(child) => validate_options(child, &format!("{prefix}children[{i}]."))?,
            _ => return Err("Invalid parameter type for 'null', expected: BlockdevRef".into()),
        }
    }
    Ok(())
}

/// Marks `"backing": null` as "no backing file" (serde reads a JSON null
/// in an `Option<Option<_>>` as the outer `None`).
fn fix_null_backing(o: &mut BlockdevOptions, map: &Map<String, Value>) {
    let child = |r: Option<&mut BlockdevRef>, key: &str| {
        if let (Some(BlockdevRef::Definition(d)), Some(Value::Object(m))) = (r, map.get(key)) {
            fix_null_backing(d, m);
        }
    };
    match o {
        BlockdevOptions::File(_) | BlockdevOptions::NullCo(_) => {}
        BlockdevOptions::Raw(r) => child(r.file.as_mut(), "file"),
        BlockdevOptions::Quorum(q) => {
            let maps = map.get("children").and_then(Value::as_array);
            for (i, c) in q.children.iter_mut().enumerate() {
                if let (BlockdevRef::Definition(d), Some(Value::Object(m))) =
                    (c, maps.and_then(|a| a.get(i)))
                {
                    fix_null_backing(d, m);
                }
            }
        }
        BlockdevOptions::Qcow2(q) => {
            if map.get("backing") == Some(&Value::Null) {
                q.backing = Some(None);
            }
            child(q.file.as_mut(), "file");
            child(q.backing.as_mut().and_then(Option::as_mut), "backing");
        }
    }
}

/// Validates `blockdev-add` arguments into ipc-proto's options.
pub fn parse_options(map: Map<String, Value>) -> Result<BlockdevOptions> {
    validate_options(&map, "").map_err(QmpError::generic)?;
    if !map.contains_key("node-name") {
        return Err(QmpError::generic(
            "'node-name' must be specified for the root node",
        ));
    }
    let mut o: BlockdevOptions = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| QmpError::generic(format!("Invalid parameter: {e}")))?;
    fix_null_backing(&mut o, &map);
    Ok(o)
}

/// `blockdev-add` with the arguments as a JSON object: the path both the
/// command and the command line (`-blockdev`, `-drive`) take.
pub fn blockdev_add(m: &Machine, map: Map<String, Value>) -> Result<()> {
    blockdev_add_hinted(m, map).map_err(|(e, _)| e)
}

/// [`blockdev_add`], keeping QEMU's hint line for the command line.
fn blockdev_add_hinted(
    m: &Machine,
    map: Map<String, Value>,
) -> std::result::Result<(), (QmpError, Option<String>)> {
    let o = parse_options(map).map_err(|e| (e, None))?;
    // The hint of the last attempt (a restart of block-proc runs it again).
    let hint = std::cell::RefCell::new(None);
    m.across_block_restarts(|| {
        block_state::add_node(m, o.clone()).map_err(|e| {
            *hint.borrow_mut() = e.hint;
            e.error
        })
    })
    .map_err(|e| (e.into(), hint.take()))
}

/// Applies the command line's `-blockdev` and `-drive` options, in order.
/// The error is QEMU's `OPTION VALUE: message`, and its hint on the next
/// line when QEMU prints one.
pub fn apply_config(m: &Machine) -> std::result::Result<(), QmpError> {
    for spec in &m.config().blockdevs {
        let mut options = spec.options.clone();
        let id = options
            .get("node-name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let throttling = super::throttle::take_drive_throttling(&mut options, &id)
            .map_err(|e| QmpError::generic(format!("{} {}: {e}", spec.option, spec.text)))?;
        if let Some(t) = throttling {
            super::throttle::record_drive(m, &id, t);
        }
        blockdev_add_hinted(m, options).map_err(|(e, hint)| QmpError {
            class: e.class,
            desc: match hint {
                Some(h) => format!("{} {}: {}\n{h}", spec.option, spec.text, e.desc),
                None => format!("{} {}: {}", spec.option, spec.text, e.desc),
            },
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> std::result::Result<BlockdevOptions, String> {
        let map = v.as_object().unwrap().clone();
        validate_args(&map, &BlockdevAddArgs::schema())?;
        parse_options(map).map_err(|e| e.desc)
    }

    #[test]
    fn driver_errors_use_qemu_wording() {
        assert_eq!(
            check(json!({"node-name": "x"})).unwrap_err(),
            "Parameter 'driver' is missing"
        );
        assert_eq!(
            check(json!({"driver": "foo", "node-name": "x"})).unwrap_err(),
            "Parameter 'driver' does not accept value 'foo'"
        );
    }

    #[test]
    fn root_node_needs_a_node_name() {
        assert_eq!(
            check(json!({"driver": "file", "filename": "/nope"})).unwrap_err(),
            "'node-name' must be specified for the root node"
        );
    }

    #[test]
    fn variant_members_are_checked_per_driver() {
        assert_eq!(
            check(json!({"driver": "file", "node-name": "f", "filename": "/x", "bogus": 1}))
                .unwrap_err(),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            check(json!({"driver": "raw", "node-name": "r"})).unwrap_err(),
            "Parameter 'file' is missing"
        );
        assert_eq!(
            check(json!({"driver": "raw", "node-name": "r", "file": 5})).unwrap_err(),
            "Invalid parameter type for 'file', expected: BlockdevRef"
        );
        assert_eq!(
            check(json!({"driver": "null-co", "node-name": "n", "filename": "/x"})).unwrap_err(),
            "Parameter 'filename' is unexpected"
        );
    }

    #[test]
    fn nested_definitions_report_their_path() {
        let raw = |file: Value| json!({"driver": "raw", "node-name": "r", "file": file});
        assert_eq!(
            check(raw(json!({"driver": "file", "filename": "/x", "bogus": 1}))).unwrap_err(),
            "Parameter 'file.bogus' is unexpected"
        );
        assert_eq!(
            check(raw(json!({"driver": "file", "filename": 5}))).unwrap_err(),
            "Invalid parameter type for 'file.filename', expected: string"
        );
        assert_eq!(
            check(raw(json!({"driver": "file"}))).unwrap_err(),
            "Parameter 'file.filename' is missing"
        );
        assert_eq!(
            check(raw(json!({"filename": "x"}))).unwrap_err(),
            "Parameter 'file.driver' is missing"
        );
        assert_eq!(
            check(raw(json!({"driver": "foo"}))).unwrap_err(),
            "Parameter 'driver' does not accept value 'foo'"
        );
        assert_eq!(
            check(raw(
                json!({"driver": "file", "filename": "/x", "detect-zeroes": "bad"})
            ))
            .unwrap_err(),
            "Parameter 'detect-zeroes' does not accept value 'bad'"
        );
    }

    #[test]
    fn valid_trees_become_ipc_options() {
        let o = check(
            json!({"driver": "qcow2", "node-name": "d0", "backing": null,
            "file": {"driver": "file", "filename": "/x.qcow2", "read-only": true}}),
        )
        .unwrap();
        match o {
            BlockdevOptions::Qcow2(q) => {
                assert_eq!(q.backing, Some(None));
                assert!(matches!(q.file, Some(BlockdevRef::Definition(_))));
            }
            other => panic!("wrong driver {other:?}"),
        }
        let o = check(json!({"driver": "raw", "node-name": "r", "file": "f0"})).unwrap();
        assert_eq!(block_state::file_child_name(&o), Some("f0"));
    }
}
