//! `block-dirty-bitmap-add`, `-remove`, `-clear`, `-enable`, `-disable`
//! and `-merge`, and the `dirty-bitmaps` member of the node queries. The
//! bitmaps live in block-proc over memory the broker keeps
//! ([`crate::machine::bitmaps`]), so they survive a block-proc restart.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BlockDeviceInfo;
use crate::machine::{bitmaps, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// Arguments of `block-dirty-bitmap-add`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDirtyBitmapAdd {
    /// Node name.
    pub node: String,
    /// Bitmap name.
    pub name: String,
    /// Bytes per bit.
    #[serde(default)]
    pub granularity: Option<u32>,
    /// Stored in the image.
    #[serde(default)]
    pub persistent: Option<bool>,
    /// Created not recording.
    #[serde(default)]
    pub disabled: Option<bool>,
}

impl QapiType for BlockDirtyBitmapAdd {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockDirtyBitmapAdd",
            members: vec![
                member::<String>("node"),
                member::<String>("name"),
                optional::<u32>("granularity"),
                optional::<bool>("persistent"),
                optional::<bool>("disabled"),
            ],
        }
    }
}

/// Arguments naming one bitmap (`BlockDirtyBitmap`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDirtyBitmap {
    /// Node name.
    pub node: String,
    /// Bitmap name.
    pub name: String,
}

impl QapiType for BlockDirtyBitmap {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockDirtyBitmap",
            members: vec![member::<String>("node"), member::<String>("name")],
        }
    }
}

/// Arguments of `block-dirty-bitmap-merge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDirtyBitmapMerge {
    /// Node of the target.
    pub node: String,
    /// Target bitmap.
    pub target: String,
    /// Sources: names on `node`, or `{node, name}` objects
    /// (`BlockDirtyBitmapOrStr`, checked by [`merge_sources`]).
    pub bitmaps: Vec<Value>,
}

impl QapiType for BlockDirtyBitmapMerge {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockDirtyBitmapMerge",
            members: vec![
                member::<String>("node"),
                member::<String>("target"),
                member::<Vec<Value>>("bitmaps"),
            ],
        }
    }
}

/// The sources of a merge as (node, name), with QEMU's messages for the
/// `BlockDirtyBitmapOrStr` alternate.
pub fn merge_sources(node: &str, items: &[Value]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        match v {
            Value::String(s) => out.push((node.to_string(), s.clone())),
            Value::Object(o) => {
                let field = |k: &str| -> Result<String> {
                    match o.get(k) {
                        None => Err(QmpError::generic(format!(
                            "Parameter 'bitmaps[{i}].{k}' is missing"
                        ))),
                        Some(Value::String(s)) => Ok(s.clone()),
                        Some(_) => Err(QmpError::generic(format!(
                            "Invalid parameter type for 'bitmaps[{i}].{k}', expected: string"
                        ))),
                    }
                };
                let (n, name) = (field("node")?, field("name")?);
                if let Some(extra) = o.keys().find(|k| *k != "node" && *k != "name") {
                    return Err(QmpError::generic(format!(
                        "Parameter 'bitmaps[{i}].{extra}' is unexpected"
                    )));
                }
                out.push((n, name));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::Array(_) => {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
                ))
            }
        }
    }
    Ok(out)
}

/// `block-dirty-bitmap-add`.
pub struct BlockDirtyBitmapAddCmd;

impl Command for BlockDirtyBitmapAddCmd {
    const NAME: &'static str = "block-dirty-bitmap-add";
    const DOC: &'static str =
        "Create a dirty bitmap on a node (persistent: stored in its qcow2 image).";
    type Args = BlockDirtyBitmapAdd;
    type Ret = Empty;

    fn run(a: BlockDirtyBitmapAdd, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let add = bitmaps::AddBitmap {
            node: a.node,
            name: a.name,
            granularity: a.granularity,
            persistent: a.persistent.unwrap_or(false),
            disabled: a.disabled.unwrap_or(false),
        };
        m.across_block_restarts(|| bitmaps::add(m, &add))?;
        Ok(Empty {})
    }
}

macro_rules! one_bitmap_command {
    ($ty:ident, $name:literal, $doc:literal, $f:expr) => {
        #[doc = $doc]
        pub struct $ty;

        impl Command for $ty {
            const NAME: &'static str = $name;
            const DOC: &'static str = $doc;
            type Args = BlockDirtyBitmap;
            type Ret = Empty;

            fn run(a: BlockDirtyBitmap, ctx: &Ctx<'_>) -> Result<Empty> {
                let m = ctx.machine;
                let f: fn(&Machine, &str, &str) -> std::result::Result<(), ipc_proto::FlatError> =
                    $f;
                m.across_block_restarts(|| f(m, &a.node, &a.name))?;
                Ok(Empty {})
            }
        }
    };
}

one_bitmap_command!(
    BlockDirtyBitmapRemove,
    "block-dirty-bitmap-remove",
    "`block-dirty-bitmap-remove`: delete a bitmap (a persistent one leaves the image when the node closes).",
    bitmaps::remove
);
one_bitmap_command!(
    BlockDirtyBitmapClear,
    "block-dirty-bitmap-clear",
    "`block-dirty-bitmap-clear`: reset every bit of a bitmap.",
    bitmaps::clear
);
one_bitmap_command!(
    BlockDirtyBitmapEnable,
    "block-dirty-bitmap-enable",
    "`block-dirty-bitmap-enable`: a bitmap records guest writes again.",
    |m, node, name| bitmaps::set_recording(m, node, name, true)
);
one_bitmap_command!(
    BlockDirtyBitmapDisable,
    "block-dirty-bitmap-disable",
    "`block-dirty-bitmap-disable`: a bitmap stops recording guest writes.",
    |m, node, name| bitmaps::set_recording(m, node, name, false)
);

/// `block-dirty-bitmap-merge`.
pub struct BlockDirtyBitmapMergeCmd;

impl Command for BlockDirtyBitmapMergeCmd {
    const NAME: &'static str = "block-dirty-bitmap-merge";
    const DOC: &'static str = "Merge bitmaps into a target bitmap (target |= sources).";
    type Args = BlockDirtyBitmapMerge;
    type Ret = Empty;

    fn run(a: BlockDirtyBitmapMerge, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let sources = merge_sources(&a.node, &a.bitmaps)?;
        m.across_block_restarts(|| bitmaps::merge(m, &a.node, &a.target, sources.clone()))?;
        Ok(Empty {})
    }
}

/// QEMU's `BlockDirtyInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockDirtyInfo {
    /// Bitmap name.
    pub name: String,
    /// Dirty bytes.
    pub count: i64,
    /// Bytes per bit.
    pub granularity: i64,
    /// Records guest writes.
    pub recording: bool,
    /// In use by a job.
    pub busy: bool,
    /// Stored in the image.
    pub persistent: bool,
    /// Loaded with the in-use flag set (only when true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inconsistent: Option<bool>,
}

impl QapiType for BlockDirtyInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockDirtyInfo",
            members: vec![
                optional::<String>("name"),
                member::<i64>("count"),
                member::<i64>("granularity"),
                member::<bool>("recording"),
                member::<bool>("busy"),
                member::<bool>("persistent"),
                optional::<bool>("inconsistent"),
            ],
        }
    }
}

/// Fills `dirty-bitmaps` of every node in `infos` that has bitmaps
/// (block-proc is asked only when any exists).
pub fn fill_dirty_bitmaps<'a>(
    m: &Machine,
    infos: impl IntoIterator<Item = &'a mut BlockDeviceInfo>,
) -> Result<()> {
    let all = bitmaps::query(m)?;
    if all.is_empty() {
        return Ok(());
    }
    for info in infos {
        let mine: Vec<BlockDirtyInfo> = all
            .iter()
            .filter(|b| b.node == info.node_name)
            .map(|b| BlockDirtyInfo {
                name: b.name.clone(),
                count: i64::try_from(b.count).unwrap_or(i64::MAX),
                granularity: i64::from(b.granularity),
                recording: b.recording,
                busy: false,
                persistent: b.persistent,
                inconsistent: b.inconsistent.then_some(true),
            })
            .collect();
        if !mine.is_empty() {
            info.dirty_bitmaps = Some(mine);
        }
    }
    Ok(())
}
