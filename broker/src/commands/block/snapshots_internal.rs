//! `blockdev-snapshot-internal-sync` and
//! `blockdev-snapshot-delete-internal-sync`: qcow2 internal snapshots,
//! written by block-proc into the image itself (`block-proc/src/snapshots/`),
//! so the broker keeps no state for them and a restarted block-proc finds
//! them in the file. The checks that need the graph (QEMU's
//! `qmp_get_root_bs`, a job using the node) are made here, the others by
//! block-proc, in QEMU's order and with its messages.

use std::time::{SystemTime, UNIX_EPOCH};

use ipc_proto::block::{BlockReply, BlockRequest};
use ipc_proto::snapshots::{SnapshotInfo as Info, SnapshotReply, SnapshotRequest};
use ipc_proto::FlatError;
use serde::{Deserialize, Serialize};

use crate::machine::{block_state, lock, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// Arguments of `blockdev-snapshot-internal-sync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockdevSnapshotInternal {
    /// Device id or node name.
    pub device: String,
    /// Snapshot name.
    pub name: String,
}

impl QapiType for BlockdevSnapshotInternal {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevSnapshotInternal",
            members: vec![member::<String>("device"), member::<String>("name")],
        }
    }
}

/// Arguments of `blockdev-snapshot-delete-internal-sync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDeleteArgs {
    /// Device id or node name.
    pub device: String,
    /// Snapshot id.
    #[serde(default)]
    pub id: Option<String>,
    /// Snapshot name.
    #[serde(default)]
    pub name: Option<String>,
}

impl QapiType for SnapshotDeleteArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "q_obj_blockdev-snapshot-delete-internal-sync-arg",
            members: vec![
                member::<String>("device"),
                optional::<String>("id"),
                optional::<String>("name"),
            ],
        }
    }
}

/// QEMU's `SnapshotInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    /// Unique id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Saved VM state size (0: disk only).
    pub vm_state_size: i64,
    /// Creation time, seconds.
    pub date_sec: i64,
    /// Creation time, nanoseconds part.
    pub date_nsec: i64,
    /// Guest clock, seconds.
    pub vm_clock_sec: i64,
    /// Guest clock, nanoseconds part.
    pub vm_clock_nsec: i64,
    /// Instruction count, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<i64>,
}

impl QapiType for SnapshotInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "SnapshotInfo",
            members: vec![
                member::<String>("id"),
                member::<String>("name"),
                member::<i64>("vm-state-size"),
                member::<i64>("date-sec"),
                member::<i64>("date-nsec"),
                member::<i64>("vm-clock-sec"),
                member::<i64>("vm-clock-nsec"),
                optional::<i64>("icount"),
            ],
        }
    }
}

impl From<&Info> for SnapshotInfo {
    fn from(i: &Info) -> Self {
        SnapshotInfo {
            id: i.id.clone(),
            name: i.name.clone(),
            vm_state_size: i.vm_state_size as i64,
            date_sec: i64::from(i.date_sec),
            date_nsec: i64::from(i.date_nsec),
            vm_clock_sec: (i.vm_clock_nsec / 1_000_000_000) as i64,
            vm_clock_nsec: (i.vm_clock_nsec % 1_000_000_000) as i64,
            icount: i.icount.map(|v| v as i64),
        }
    }
}

/// QEMU's `qmp_get_root_bs(device)`: a backend (`-drive` id, which names
/// its top node here) or node named `device`, which no node uses as a
/// child; and, as `bdrv_op_is_blocked`, not in use by a job.
fn root_node(m: &Machine, device: &str) -> Result<String> {
    let state = block_state::state(m);
    let st = lock(&state);
    if !st.node_names().iter().any(|n| n == device) {
        return Err(QmpError::generic(format!(
            "Cannot find device='{device}' nor node-name='{device}'"
        )));
    }
    if !st.is_root(device) {
        return Err(QmpError::generic("Need a root block node"));
    }
    drop(st);
    super::jobs::not_busy(m, device)?;
    Ok(device.to_owned())
}

/// The guest clock QEMU records (`QEMU_CLOCK_VIRTUAL`): 0 before the
/// guest first ran (QEMU's too), else the time since the broker started
/// (bulkhead keeps no virtual clock of its own, so paused time counts).
fn vm_clock_nsec(m: &Machine) -> u64 {
    if m.query_status()
        .is_ok_and(|s| s.status == ipc_proto::vcpu::RunState::Prelaunch)
    {
        return 0;
    }
    process_age().unwrap_or_default().as_nanos() as u64
}

/// How long this process has run, from `/proc/self/stat` and
/// `/proc/uptime`.
fn process_age() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    // Field 22 (starttime) is the 20th after the command name.
    let start: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let age = up - start / hz.max(1) as f64;
    (age >= 0.0).then(|| std::time::Duration::from_secs_f64(age))
}

fn snapshot_reply(r: BlockReply) -> std::result::Result<SnapshotReply, FlatError> {
    match r {
        BlockReply::Snapshot(s) => Ok(s),
        other @ (BlockReply::Done
        | BlockReply::Trace(_)
        | BlockReply::NeedFiles { .. }
        | BlockReply::Nodes(_)
        | BlockReply::Stats(_)
        | BlockReply::Bitmap(_)) => Err(crate::machine::unexpected_reply(&other)),
    }
}

/// `blockdev-snapshot-internal-sync`.
pub struct BlockdevSnapshotInternalSync;

impl Command for BlockdevSnapshotInternalSync {
    const NAME: &'static str = "blockdev-snapshot-internal-sync";
    const DOC: &'static str = "Take a qcow2 internal snapshot (disk only) of a root node.";
    type Args = BlockdevSnapshotInternal;
    type Ret = Empty;

    fn run(a: BlockdevSnapshotInternal, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let node = root_node(m, &a.device)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // QEMU takes the date from g_get_real_time(): microseconds.
        let req = SnapshotRequest::Create {
            node,
            device: a.device,
            name: a.name,
            date: (now.as_secs() as u32, now.subsec_micros() * 1000),
            vm_clock_nsec: vm_clock_nsec(m),
        };
        // Idempotent: block-proc answers a repeated create whose snapshot
        // (same name and date) exists as done, so a worker restart in the
        // middle runs it again safely.
        let r = m.across_block_restarts(|| {
            snapshot_reply(m.block_request(BlockRequest::Snapshot(req.clone()))?)
        })?;
        match r {
            SnapshotReply::Created => Ok(Empty {}),
            SnapshotReply::Deleted(_) => Err(QmpError::generic(
                "block-proc answered a create with a delete",
            )),
        }
    }
}

/// `blockdev-snapshot-delete-internal-sync`.
pub struct BlockdevSnapshotDeleteInternalSync;

impl Command for BlockdevSnapshotDeleteInternalSync {
    const NAME: &'static str = "blockdev-snapshot-delete-internal-sync";
    const DOC: &'static str =
        "Delete a qcow2 internal snapshot by id and/or name; returns what it was.";
    type Args = SnapshotDeleteArgs;
    type Ret = SnapshotInfo;

    fn run(a: SnapshotDeleteArgs, ctx: &Ctx<'_>) -> Result<SnapshotInfo> {
        let m = ctx.machine;
        let node = root_node(m, &a.device)?;
        if a.id.is_none() && a.name.is_none() {
            return Err(QmpError::generic("Name or id must be provided"));
        }
        let req = SnapshotRequest::Delete {
            node,
            device: a.device,
            id: a.id,
            name: a.name,
        };
        // Not run again after a worker restart: the snapshot may be gone
        // already, and its description with it.
        match snapshot_reply(m.block_request(BlockRequest::Snapshot(req))?)? {
            SnapshotReply::Deleted(info) => Ok(SnapshotInfo::from(&info)),
            SnapshotReply::Created => Err(QmpError::generic(
                "block-proc answered a delete with a create",
            )),
        }
    }
}

/// The `snapshots` member of a node's `ImageInfo` (absent when none).
pub fn image_snapshots(list: &[Info]) -> Option<Vec<SnapshotInfo>> {
    (!list.is_empty()).then(|| list.iter().map(SnapshotInfo::from).collect())
}
