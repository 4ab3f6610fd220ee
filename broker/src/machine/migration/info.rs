//! `query-migrate`'s `MigrationInfo`, shaped as QEMU 10's
//! (`fill_source_migration_info`, `fill_destination_migration_info`):
//! `{}` before any migration; `status` alone in `setup`; times, `ram` and
//! (with the capability) `xbzrle-cache` while active and once completed;
//! `status` and `error-desc` after a failure. On a target the incoming
//! status (and where it listens) shows until it migrates out itself.
//!
//! `ram` has all of QEMU 10's members; the postcopy and multifd counters
//! are 0 because bulkhead has neither.

use ipc_proto::migration::{MigrationStats, MigrationStatus};
use serde::Serialize;
use serde_json::Value;

use super::incoming::Incoming;
use super::outgoing::Outgoing;

/// QEMU's `MigrationInfo`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// The status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// RAM statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamInfo>,
    /// XBZRLE statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache: Option<XbzrleInfo>,
    /// Milliseconds since the start (until the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// Expected downtime (ms) while active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<u64>,
    /// Downtime (ms) once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    /// Milliseconds of setup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Where a target listens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_address: Option<Vec<Value>>,
}

/// QEMU's `MigrationStats` (the `ram` member).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamInfo {
    /// Bytes sent.
    pub transferred: u64,
    /// Bytes of RAM still dirty.
    pub remaining: u64,
    /// Guest RAM size.
    pub total: u64,
    /// Pages sent as zero pages.
    pub duplicate: u64,
    /// Pages sent whole.
    pub normal: u64,
    /// Bytes of the pages sent whole.
    pub normal_bytes: u64,
    /// Pages dirtied per second.
    pub dirty_pages_rate: u64,
    /// Throughput in Mbit/s.
    pub mbps: f64,
    /// Dirty-log synchronisations.
    pub dirty_sync_count: u64,
    /// Postcopy page requests (no postcopy: 0).
    pub postcopy_requests: u64,
    /// Page size.
    pub page_size: u64,
    /// Bytes sent over multifd channels (no multifd: 0).
    pub multifd_bytes: u64,
    /// Pages sent per second over the last 100 ms.
    pub pages_per_second: u64,
    /// Bytes sent while the guest ran.
    pub precopy_bytes: u64,
    /// RAM bytes sent while the guest was stopped.
    pub downtime_bytes: u64,
    /// Bytes sent during postcopy (no postcopy: 0).
    pub postcopy_bytes: u64,
    /// Zero-copy sends that missed a sync (no zero-copy: 0).
    pub dirty_sync_missed_zero_copy: u64,
}

/// QEMU's `XBZRLECacheStats`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct XbzrleInfo {
    /// Cache size in bytes.
    pub cache_size: u64,
    /// Bytes sent as deltas.
    pub bytes: u64,
    /// Pages sent as deltas.
    pub pages: u64,
    /// Cache misses.
    pub cache_miss: u64,
    /// Miss rate.
    pub cache_miss_rate: f64,
    /// Encoding rate.
    pub encoding_rate: f64,
    /// Deltas too large.
    pub overflow: u64,
}

/// The source's info: `stats` is vcpu-proc's answer when it has the
/// migration (None while connecting, or once vcpu-proc is gone).
pub fn source(out: &Outgoing, stats: Option<&MigrationStats>) -> MigrationInfo {
    let mut info = MigrationInfo {
        status: Some(out.status.as_str()),
        error_desc: out.error.clone(),
        ..Default::default()
    };
    let full = match out.status {
        MigrationStatus::Active
        | MigrationStatus::Device
        | MigrationStatus::Cancelling
        | MigrationStatus::Completed => true,
        MigrationStatus::None
        | MigrationStatus::Setup
        | MigrationStatus::Cancelled
        | MigrationStatus::Failed => false,
    };
    let Some(s) = stats.filter(|_| full) else {
        return info;
    };
    info.setup_time = Some(s.setup_time_ms);
    info.total_time = Some(s.total_time_ms);
    if out.status == MigrationStatus::Completed {
        info.downtime = Some(s.downtime_ms.unwrap_or(0));
    } else {
        info.expected_downtime = Some(s.expected_downtime_ms.unwrap_or(0));
    }
    let completed = out.status == MigrationStatus::Completed;
    info.ram = Some(RamInfo {
        transferred: s.ram.transferred,
        remaining: if completed { 0 } else { s.ram.remaining },
        total: s.ram.total,
        duplicate: s.ram.duplicate,
        normal: s.ram.normal,
        normal_bytes: s.ram.normal_bytes,
        dirty_pages_rate: if completed { 0 } else { s.ram.dirty_pages_rate },
        mbps: s.ram.mbps,
        dirty_sync_count: s.ram.dirty_sync_count,
        postcopy_requests: 0,
        page_size: s.ram.page_size,
        multifd_bytes: 0,
        pages_per_second: s.ram.pages_per_second,
        precopy_bytes: s.ram.precopy_bytes,
        downtime_bytes: s.ram.downtime_bytes,
        postcopy_bytes: 0,
        dirty_sync_missed_zero_copy: 0,
    });
    info.xbzrle_cache = s.xbzrle.map(|x| XbzrleInfo {
        cache_size: x.cache_size,
        bytes: x.bytes,
        pages: x.pages,
        cache_miss: x.cache_miss,
        cache_miss_rate: x.cache_miss_rate,
        encoding_rate: x.encoding_rate,
        overflow: x.overflow,
    });
    info
}

/// The target's info (`status`, `socket-address` while it waits,
/// `error-desc`).
pub fn destination(inc: &Incoming) -> MigrationInfo {
    MigrationInfo {
        status: Some(inc.status.as_str()),
        error_desc: inc.error.clone(),
        socket_address: (!inc.socket_address.is_empty()).then(|| inc.socket_address.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::migration::RamStats;

    fn stats() -> MigrationStats {
        MigrationStats {
            status: MigrationStatus::Active,
            total_time_ms: 10,
            setup_time_ms: 1,
            downtime_ms: Some(3),
            expected_downtime_ms: Some(2),
            ram: RamStats {
                transferred: 100,
                remaining: 50,
                total: 200,
                page_size: 4096,
                pages_per_second: 7,
                precopy_bytes: 90,
                downtime_bytes: 8,
                ..Default::default()
            },
            xbzrle: None,
            error: None,
        }
    }

    fn out(status: MigrationStatus) -> Outgoing {
        Outgoing {
            status,
            ..Default::default()
        }
    }

    #[test]
    fn setup_shows_only_the_status() {
        let v = serde_json::to_value(source(&out(MigrationStatus::Setup), Some(&stats()))).unwrap();
        assert_eq!(v, serde_json::json!({"status": "setup"}));
    }

    #[test]
    fn active_has_expected_downtime_and_completed_has_downtime() {
        let v =
            serde_json::to_value(source(&out(MigrationStatus::Active), Some(&stats()))).unwrap();
        assert_eq!(v["expected-downtime"], 2);
        assert!(v.get("downtime").is_none());
        assert_eq!(v["ram"]["remaining"], 50);
        assert_eq!(v["ram"]["page-size"], 4096);
        let v =
            serde_json::to_value(source(&out(MigrationStatus::Completed), Some(&stats()))).unwrap();
        assert_eq!(v["downtime"], 3);
        assert!(v.get("expected-downtime").is_none());
        assert_eq!(v["ram"]["remaining"], 0);
        assert_eq!(v["total-time"], 10);
        assert_eq!(v["ram"]["pages-per-second"], 7);
        assert_eq!(v["ram"]["precopy-bytes"], 90);
        assert_eq!(v["ram"]["downtime-bytes"], 8);
        assert_eq!(v["ram"]["postcopy-bytes"], 0);
    }

    #[test]
    fn failed_shows_status_and_error() {
        let mut o = out(MigrationStatus::Failed);
        o.error = Some("Failed to connect to '/x': Connection refused".into());
        let v = serde_json::to_value(source(&o, Some(&stats()))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "failed",
                "error-desc": "Failed to connect to '/x': Connection refused"})
        );
    }
}
