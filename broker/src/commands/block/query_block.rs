//! `query-block`.

use serde::Serialize;

use super::*;
use crate::machine::{block_state, lock};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's `BlockDeviceIoStatus`.
pub struct BlockDeviceIoStatus;

impl QapiType for BlockDeviceIoStatus {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockDeviceIoStatus",
            values: vec!["ok", "failed", "nospace"],
        }
    }
}

/// QEMU's `BlockInfo`: one block device (BlockBackend) and its medium.
#[derive(Debug, Clone, Serialize)]
pub struct BlockInfo {
    /// Device id.
    pub device: String,
    /// The guest device's QOM path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    /// Always `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Removable medium.
    pub removable: bool,
    /// Medium locked by the guest.
    pub locked: bool,
    /// The medium's root node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
    /// Tray open (removable only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tray_open: Option<bool>,
    /// I/O status (when error handling stops the guest).
    #[serde(rename = "io-status", skip_serializing_if = "Option::is_none")]
    pub io_status: Option<String>,
}

impl QapiType for BlockInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockInfo",
            members: vec![
                member::<String>("device"),
                optional::<String>("qdev"),
                member::<String>("type"),
                member::<bool>("removable"),
                member::<bool>("locked"),
                optional::<BlockDeviceInfo>("inserted"),
                optional::<bool>("tray_open"),
                optional::<BlockDeviceIoStatus>("io-status"),
            ],
        }
    }
}

/// `query-block`.
pub struct QueryBlock;

impl Command for QueryBlock {
    const NAME: &'static str = "query-block";
    const DOC: &'static str =
        "List the block devices (BlockInfo): every virtio-blk-device and SCSI drive, \
        its medium and tray.";
    type Args = Empty;
    type Ret = Vec<BlockInfo>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<BlockInfo>> {
        let devs = crate::machine::devices::block_devices(ctx.machine);
        let luns = lock(&ctx.machine.media).luns().to_vec();
        if devs.is_empty() && luns.is_empty() {
            return Ok(Vec::new());
        }
        let m = ctx.machine;
        let nodes = query_nodes(m)?;
        let limits = |id: &str| lock(&block_state::state(m)).limits.throttle(id);
        let mut infos: Vec<BlockInfo> = devs
            .into_iter()
            .map(|(id, node)| BlockInfo {
                // QEMU: the `-drive` id, or "" for a device's own backend.
                device: backend_name(m, &node),
                // QEMU 10 names the device by its id when it has one.
                qdev: Some(id.clone()),
                kind: "unknown".into(),
                removable: false,
                locked: false,
                inserted: nodes.iter().find(|n| n.node_name == node).map(|n| {
                    BlockDeviceInfo::from_node(n, false)
                        .with_threshold(m)
                        .with_throttle(limits(&id).as_ref())
                }),
                tray_open: None,
                io_status: Some("ok".into()),
            })
            .collect();
        let lun_info = |l: crate::machine::media::Lun| BlockInfo {
            device: l.backend_name.clone(),
            qdev: Some(l.config.device_id.clone()),
            kind: "unknown".into(),
            removable: l.config.kind == ipc_proto::scsi::ScsiLunKind::Cd,
            locked: l.config.locked,
            inserted: l.config.node_name.as_ref().and_then(|node| {
                nodes
                    .iter()
                    .find(|n| n.node_name == *node)
                    .map(|n| BlockDeviceInfo::from_node(n, false).with_threshold(m))
            }),
            tray_open: (l.config.kind == ipc_proto::scsi::ScsiLunKind::Cd)
                .then_some(l.config.tray_open),
            io_status: Some("ok".into()),
        };
        infos.extend(luns.into_iter().map(lun_info));
        // QEMU's order: a `-drive`'s backend from its creation, before the
        // devices' own ones; these when their device was created.
        {
            let media = lock(&m.media);
            infos.sort_by_key(|i| {
                let id = i.qdev.as_deref().unwrap_or_default();
                (i.device.is_empty(), media.block_position(id))
            });
        }
        fill_dirty_bitmaps(
            ctx.machine,
            infos.iter_mut().filter_map(|i| i.inserted.as_mut()),
        )?;
        Ok(infos)
    }
}
