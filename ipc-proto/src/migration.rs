//! Device state and live migration on the vcpu channel: the requests the
//! broker sends for `xen-save-devices-state` / `xen-load-devices-state`
//! and for `migrate` / `-incoming`, the statistics vcpu-proc keeps, and
//! the events it reports. vcpu-proc owns guest RAM, the KVM dirty log and
//! the frontends' vhost-user dirty log, so it streams RAM and device state
//! itself over the fd the broker connected (the broker opens every file
//! and socket; the worker only reads and writes fds).

use serde::{Deserialize, Serialize};

use crate::vcpu::FdSlot;

/// Guest-physical bytes one bit of the vhost-user dirty log stands for.
pub const DIRTY_LOG_PAGE: u64 = 4096;

/// Bytes of the vhost-user dirty log for `mem_size` bytes of guest RAM:
/// it covers guest-physical addresses up to `mem_size` + 4 GiB (RAM above
/// the 32-bit hole is shifted by at most that), rounded up to 4 KiB.
pub fn dirty_log_size(mem_size: u64) -> u64 {
    let pages = mem_size.saturating_add(4 << 30).div_ceil(DIRTY_LOG_PAGE);
    pages.div_ceil(8).next_multiple_of(4096)
}

/// A device-state or migration request (carried by
/// [`crate::vcpu::VcpuRequest::Migration`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MigrationRequest {
    /// `xen-save-devices-state`: write the VM-state file
    /// (`docs/vmstate-format.md`) to `fd`. The VM is paused (the broker
    /// checks). Replies [`crate::vcpu::VcpuReply::Done`] once written.
    SaveDevicesState {
        /// The file the broker opened for writing.
        fd: FdSlot,
    },
    /// `xen-load-devices-state`: read a VM-state file from `fd` into a VM
    /// created with [`crate::vcpu::VmConfig::incoming`] that has not run.
    /// A file that does not decode or does not fit this VM leaves the VM
    /// as it was. Replies Done once loaded.
    LoadDevicesState {
        /// The file the broker opened for reading.
        fd: FdSlot,
    },
    /// Start migrating out over the connected stream `fd`. Replies Done at
    /// once; progress comes as [`MigrationEvent`]s.
    Start {
        /// The connected migration stream.
        fd: FdSlot,
        /// A memfd of [`dirty_log_size`] bytes the broker made (vcpu-proc
        /// cannot create one): the vhost-user dirty log the backends write
        /// (`SET_LOG_BASE`), one bit per 4 KiB guest-physical page.
        log: FdSlot,
        /// Parameters and capabilities at start.
        params: MigrationParams,
    },
    /// New parameters for a running outgoing migration (the broker sends
    /// them on `migrate-set-parameters`).
    SetParams(MigrationParams),
    /// Source only, after [`MigrationEvent::ReadyForSwitchover`]: the
    /// broker has flushed and released the disks; send the rest (final
    /// dirty RAM, device state, end of stream).
    Switchover,
    /// `migrate_cancel`: stop the outgoing migration; the VM keeps (or
    /// goes back to) running as it did before.
    Cancel,
    /// Report [`MigrationStats`] (`query-migrate`), of the running or the
    /// last migration, outgoing or incoming.
    Query,
    /// Receive an incoming migration on the connected stream `fd` into a
    /// VM created with `incoming`. Replies Done at once; the end comes as
    /// [`MigrationEvent::Status`] `completed` (RAM and state loaded, vCPUs
    /// not running: the broker activates the disks and resumes) or
    /// `failed`.
    Incoming {
        /// The accepted migration stream.
        fd: FdSlot,
    },
}

/// Migration parameters and capabilities that steer vcpu-proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationParams {
    /// `downtime-limit` in milliseconds: switch over once the remaining
    /// dirty RAM can be sent within it.
    pub downtime_limit_ms: u64,
    /// `max-bandwidth` in bytes per second.
    pub max_bandwidth: u64,
    /// The `xbzrle` capability.
    pub xbzrle: bool,
    /// `xbzrle-cache-size` in bytes (a power of two).
    pub xbzrle_cache_size: u64,
}

/// QEMU's `MigrationStatus` values bulkhead goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationStatus {
    /// No migration has run.
    None,
    /// Connecting, setting up dirty logging.
    Setup,
    /// Copying RAM while the guest runs (or receiving, on the target).
    Active,
    /// The guest is stopped; the last RAM and the device state are sent.
    Device,
    /// `migrate_cancel` is being carried out.
    Cancelling,
    /// Cancelled; the source runs on.
    Cancelled,
    /// Done.
    Completed,
    /// Failed (see [`MigrationStats::error`]).
    Failed,
}

impl MigrationStatus {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::None => "none",
            MigrationStatus::Setup => "setup",
            MigrationStatus::Active => "active",
            MigrationStatus::Device => "device",
            MigrationStatus::Cancelling => "cancelling",
            MigrationStatus::Cancelled => "cancelled",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
        }
    }
}

/// RAM statistics of a migration (`query-migrate`'s `ram`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RamStats {
    /// Bytes sent (RAM pages, their headers, deltas).
    pub transferred: u64,
    /// Bytes of RAM still dirty.
    pub remaining: u64,
    /// Guest RAM size in bytes.
    pub total: u64,
    /// Pages sent as zero pages.
    pub duplicate: u64,
    /// Pages sent whole.
    pub normal: u64,
    /// Bytes of the pages sent whole.
    pub normal_bytes: u64,
    /// Pages dirtied per second in the last pass.
    pub dirty_pages_rate: u64,
    /// Throughput in megabits per second.
    pub mbps: f64,
    /// Dirty-log synchronisations (passes) so far.
    pub dirty_sync_count: u64,
    /// Page size.
    pub page_size: u64,
    /// Pages sent per second (zero, whole and XBZRLE) over the last
    /// 100 ms window.
    pub pages_per_second: u64,
    /// Stream bytes sent while the guest ran (QEMU's `precopy-bytes`).
    pub precopy_bytes: u64,
    /// RAM bytes sent while the guest was stopped for the switchover
    /// (QEMU's `downtime-bytes`; the device state is not counted).
    pub downtime_bytes: u64,
}

/// XBZRLE statistics (`query-migrate`'s `xbzrle-cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct XbzrleStats {
    /// Cache size in bytes.
    pub cache_size: u64,
    /// Bytes sent as deltas.
    pub bytes: u64,
    /// Pages sent as deltas.
    pub pages: u64,
    /// Pages not found in the cache.
    pub cache_miss: u64,
    /// Misses per page looked up in the last pass.
    pub cache_miss_rate: f64,
    /// Deltas longer than a page (sent whole instead).
    pub overflow: u64,
    /// Page bytes per delta byte in the last pass.
    pub encoding_rate: f64,
}

/// What `query-migrate` shows of the running or last migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// The status.
    pub status: MigrationStatus,
    /// Milliseconds since the start (until the end once it ended).
    pub total_time_ms: u64,
    /// Milliseconds in setup.
    pub setup_time_ms: u64,
    /// Milliseconds the guest was stopped (once completed).
    pub downtime_ms: Option<u64>,
    /// Expected downtime while active, in milliseconds.
    pub expected_downtime_ms: Option<u64>,
    /// RAM statistics.
    pub ram: RamStats,
    /// XBZRLE statistics, when the capability is on.
    pub xbzrle: Option<XbzrleStats>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Events of a migration (carried by
/// [`crate::vcpu::VcpuEvent::Migration`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MigrationEvent {
    /// The status changed (QMP `MIGRATION`); on the incoming side
    /// `Completed` means RAM and device state are loaded and the vCPUs
    /// wait for the broker.
    Status {
        /// The new status.
        status: MigrationStatus,
        /// Why, when it failed.
        error: Option<String>,
    },
    /// A new dirty-log pass began (QMP `MIGRATION_PASS`).
    Pass {
        /// The pass number (`dirty-sync-count`).
        count: u64,
    },
    /// Source: RAM converged and the guest is stopped (status `device`);
    /// the broker flushes and releases the disks, then sends
    /// [`MigrationRequest::Switchover`] (or `Cancel`).
    ReadyForSwitchover,
}
