//! virtio-scsi: the SCSI and MMC emulation behind block-proc's
//! vhost-user-scsi exports (a `virtio-scsi-device` controller with
//! `scsi-cd` and `scsi-hd` units). Written after QEMU's `scsi-disk.c` /
//! `scsi-bus.c` and rust-vmm's vhost-device-scsi; no crate does SCSI
//! target emulation on top of our block layer, so it is ours.
//!
//! - [`cdb`]: operation codes and CDB fields.
//! - [`sense`]: sense triples and fixed-format sense data.
//! - [`lun`]: a unit's medium, tray, lock, unit attention, media events.
//! - [`commands`]: the dispatch and the SPC commands; [`sbc`] the block
//!   commands, [`mmc`] the CD-ROM ones.
//! - [`virtio`]: virtio-scsi request/response/TMF framing.
//! - [`target`]: LUN addressing, REPORT LUNS, a chain end to end.
//! - [`aio`]: READs on the node's io_uring engine.
//! - [`device`]: the vhost-user device (config space, queues, medium ops).
//! - [`spec`]: building a controller from the broker's `ScsiExportSpec`.

pub mod aio;
pub mod cdb;
pub mod commands;
pub mod device;
pub mod lun;
pub mod mmc;
pub mod sbc;
pub mod sense;
pub mod spec;
pub mod target;
pub mod virtio;

pub use device::ScsiDevice;

/// Errors of SCSI exports and medium changes (their text goes to the
/// broker).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScsiError {
    /// The unit has no tray.
    #[error("Device '{0}' is not removable")]
    NotRemovable(String),
    /// The medium can only change with the tray open.
    #[error("Tray of device '{0}' is not open")]
    TrayClosed(String),
    /// The broker asked to open a tray the guest has locked (its view of
    /// the lock lagged the guest's): QEMU's answer to an eject without
    /// `force`; the guest was sent an eject request, as QEMU does.
    #[error(
        "Device '{0}' is locked and force was not specified, wait for tray to open and try again"
    )]
    Locked(String),
    /// Insert into a full drive.
    #[error("Device '{0}' already has a medium")]
    HasMedium(String),
    /// No such node.
    #[error("Cannot find device='' nor node-name='{0}'")]
    NoSuchNode(String),
    /// No such unit.
    #[error("Device '{0}' is not a unit of SCSI export '{1}'")]
    NoSuchDevice(String, String),
    /// A bad export description.
    #[error("Invalid SCSI export: {0}")]
    BadSpec(String),
}
