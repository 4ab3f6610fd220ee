//! The broker ↔ block-proc messages of a virtio-scsi controller whose
//! queues block-proc serves as a vhost-user-scsi backend (inside the block
//! channel's enums: [`crate::block::BlockRequest::AddScsiExport`],
//! [`crate::block::BlockRequest::ScsiMedium`] and
//! [`crate::block::BlockEvent::Scsi`]).
//!
//! The broker owns the desired state of every drive (medium, tray, the
//! guest's lock): it creates the export with that state and replays it
//! after a block-proc restart. block-proc reports what the guest changes
//! (START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL) as [`ScsiEvent`]s so the
//! broker's state stays true. Connections to a SCSI export come, as for
//! vhost-user-blk, with [`crate::block::BlockRequest::AttachExportConnection`];
//! [`crate::block::BlockRequest::DelExport`] removes it.

use serde::{Deserialize, Serialize};

/// What a logical unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScsiLunKind {
    /// `scsi-cd`: an MMC CD/DVD-ROM drive with a tray (removable, read-only).
    Cd,
    /// `scsi-hd`: a direct-access disk.
    Hd,
}

/// One logical unit (`-device scsi-cd` / `scsi-hd`) of a controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiLunConfig {
    /// The device's QMP id (`cd0`): names the LUN in requests and events.
    pub device_id: String,
    /// SCSI target (`scsi-id`, 0..=255).
    pub target: u8,
    /// LUN (`lun`, 0..=16383).
    pub lun: u16,
    /// Drive kind.
    pub kind: ScsiLunKind,
    /// The medium: the node the drive reads, or `None` for an empty drive.
    pub node_name: Option<String>,
    /// True when writes are allowed (never for a CD).
    pub writable: bool,
    /// The tray is open (CD only).
    pub tray_open: bool,
    /// The guest has locked the medium (PREVENT ALLOW MEDIUM REMOVAL).
    pub locked: bool,
    /// Serial number (VPD page 0x80), at most 36 bytes used.
    pub serial: String,
    /// Logical block size (2048 for a CD, 512 or 4096 for a disk).
    pub logical_block_size: u32,
}

/// `AddScsiExport`: serve a virtio-scsi controller as a vhost-user-scsi
/// export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiExportSpec {
    /// Export id (the controller's id, e.g. `scsi0`).
    pub id: String,
    /// Request queues (the control and event queues come on top).
    pub num_request_queues: u16,
    /// The controller's logical units.
    pub luns: Vec<ScsiLunConfig>,
}

/// A change of a drive's medium or tray the broker asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediumOp {
    /// Open the tray (the broker has already decided the lock allows it).
    /// If the guest's live lock disagrees (its `LockChanged` is still on
    /// the way), block-proc refuses with QEMU's "is locked and force was
    /// not specified" message and queues an eject request, as QEMU does.
    OpenTray,
    /// Close the tray.
    CloseTray,
    /// Take the medium out (the tray must be open).
    Remove,
    /// Put the node's medium in (the tray must be open, the drive empty).
    Insert {
        /// The node.
        node_name: String,
    },
    /// Ask the guest to eject (the drive is locked and `force` was not
    /// given): queues an MMC "eject request" media event.
    EjectRequest,
    /// Set the guest's lock, as replayed by the broker.
    SetLocked(bool),
}

/// What the guest changed on a drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScsiEvent {
    /// The guest moved the tray (START STOP UNIT with LoEj).
    TrayMoved {
        /// The export.
        export_id: String,
        /// The drive's QMP id.
        device_id: String,
        /// True when the tray is now open.
        open: bool,
    },
    /// The guest locked or unlocked the medium.
    LockChanged {
        /// The export.
        export_id: String,
        /// The drive's QMP id.
        device_id: String,
        /// True when locked.
        locked: bool,
    },
}
