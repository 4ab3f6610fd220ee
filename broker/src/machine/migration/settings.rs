//! Migration parameters and capabilities as set through QMP, with QEMU
//! 10's defaults.

use ipc_proto::migration::MigrationParams;

/// QEMU's default `downtime-limit` (ms).
pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
/// QEMU's default `max-bandwidth` (bytes/s): 128 MiB/s.
pub const DEFAULT_MAX_BANDWIDTH: u64 = 128 << 20;
/// QEMU's default `xbzrle-cache-size` (bytes): 64 MiB.
pub const DEFAULT_XBZRLE_CACHE_SIZE: u64 = 64 << 20;

/// What the user set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationSettings {
    /// `downtime-limit` (ms).
    pub downtime_limit_ms: u64,
    /// `max-bandwidth` (bytes/s).
    pub max_bandwidth: u64,
    /// `xbzrle-cache-size` (bytes).
    pub xbzrle_cache_size: u64,
    /// The `xbzrle` capability.
    pub xbzrle: bool,
    /// The `events` capability (MIGRATION / MIGRATION_PASS events).
    pub events: bool,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            downtime_limit_ms: DEFAULT_DOWNTIME_LIMIT_MS,
            max_bandwidth: DEFAULT_MAX_BANDWIDTH,
            xbzrle_cache_size: DEFAULT_XBZRLE_CACHE_SIZE,
            xbzrle: false,
            events: false,
        }
    }
}

impl MigrationSettings {
    /// What vcpu-proc is told at a migration's start.
    pub fn params(&self) -> MigrationParams {
        MigrationParams {
            downtime_limit_ms: self.downtime_limit_ms,
            max_bandwidth: self.max_bandwidth,
            xbzrle: self.xbzrle,
            xbzrle_cache_size: self.xbzrle_cache_size,
        }
    }
}
