//! Migration parameters and capabilities as set through QMP, with QEMU
//! 10's defaults and checks, and how a change reaches a running
//! migration.

use ipc_proto::migration::{MigrationParams, MigrationRequest, MigrationStatus};
use ipc_proto::vcpu::{VcpuReply, VcpuRequest};
use ipc_proto::FlatError;

use crate::machine::{expect_vcpu_done, Machine};

/// QEMU's default `downtime-limit` (ms).
pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
/// QEMU's default `max-bandwidth` (bytes/s): 128 MiB/s.
pub const DEFAULT_MAX_BANDWIDTH: u64 = 128 << 20;
/// QEMU's default `xbzrle-cache-size` (bytes): 64 MiB.
pub const DEFAULT_XBZRLE_CACHE_SIZE: u64 = 64 << 20;
/// QEMU's largest `downtime-limit` (`MAX_MIGRATE_DOWNTIME`, ms).
pub const MAX_DOWNTIME_LIMIT_MS: u64 = 2000 * 1000;
/// The guest page size (QEMU's `TARGET_PAGE_SIZE` on x86).
pub const TARGET_PAGE_SIZE: u64 = 4096;

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
    /// `announce-initial`, `announce-max`, `announce-rounds`,
    /// `announce-step`: the NICs' announcement after an incoming migration.
    pub announce: AnnounceSettings,
}

/// The announcement parameters (ms, rounds), QEMU 10's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceSettings {
    /// `announce-initial`.
    pub initial: u64,
    /// `announce-max`.
    pub max: u64,
    /// `announce-rounds`.
    pub rounds: u64,
    /// `announce-step`.
    pub step: u64,
}

impl Default for AnnounceSettings {
    fn default() -> Self {
        AnnounceSettings {
            initial: 50,
            max: 550,
            rounds: 5,
            step: 100,
        }
    }
}

impl AnnounceSettings {
    /// The timer's parameters (all NICs). The values are checked against
    /// QEMU's ranges, so they fit.
    pub fn params(&self) -> crate::machine::announce::AnnounceParams {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        crate::machine::announce::AnnounceParams {
            initial: ms(self.initial),
            max: ms(self.max),
            rounds: self.rounds,
            step: ms(self.step),
            interfaces: None,
        }
    }
}

/// QEMU 10's checks of the announcement parameters
/// (`migrate_params_check`, in its order), with its messages.
pub fn check_announce(name: &str, value: u64) -> Result<(), String> {
    let (qemu_name, ok, range) = match name {
        "announce-initial" => ("announce_initial", value <= 100_000, "0 and 100000"),
        "announce-max" => ("announce_max", value <= 100_000, "0 and 100000"),
        "announce-rounds" => ("announce_rounds", value <= 1000, "0 and 1000"),
        // QEMU refuses 0 but names the range from 0.
        "announce-step" => (
            "announce_step",
            (1..=10_000).contains(&value),
            "0 and 10000",
        ),
        other => return Err(format!("'{other}' is not an announcement parameter")),
    };
    if !ok {
        return Err(format!(
            "Parameter '{qemu_name}' expects a value between {range}"
        ));
    }
    Ok(())
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            downtime_limit_ms: DEFAULT_DOWNTIME_LIMIT_MS,
            max_bandwidth: DEFAULT_MAX_BANDWIDTH,
            xbzrle_cache_size: DEFAULT_XBZRLE_CACHE_SIZE,
            xbzrle: false,
            events: false,
            announce: AnnounceSettings::default(),
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

/// QEMU 10's check of `downtime-limit` (`migrate_params_check`).
pub fn check_downtime_limit(ms: u64) -> Result<(), String> {
    if ms > MAX_DOWNTIME_LIMIT_MS {
        return Err(
            "Parameter 'downtime_limit' expects an integer in the range of 0 to \
             (2000 * 1000) ms"
                .into(),
        );
    }
    Ok(())
}

/// QEMU 10's check of `xbzrle-cache-size`: a power of two of at least a
/// page (larger than guest RAM is accepted, as QEMU 10 does).
pub fn check_xbzrle_cache_size(bytes: u64) -> Result<(), String> {
    if bytes < TARGET_PAGE_SIZE || !bytes.is_power_of_two() {
        return Err(
            "Parameter 'xbzrle_cache_size' expects a power of two no less than the \
             target page size"
                .into(),
        );
    }
    Ok(())
}

/// The reference's `migrate-set-cache-size` (QEMU 2.8's
/// `qmp_migrate_set_cache_size`): `value` no larger than guest RAM
/// (`ram`), at least a page, rounded down to a power of two. A negative
/// value compares as the huge unsigned number it is in C, so it is
/// "larger than guest RAM" too. QEMU 2.8 printed "exceeds guest ram size "
/// with a trailing space; QEMU 2.11 dropped the space, as here.
pub fn cache_size_from_value(value: i64, ram: u64) -> Result<u64, String> {
    let v = value as u64;
    if v > ram {
        return Err("Parameter 'cache size' expects exceeds guest ram size".into());
    }
    if v < TARGET_PAGE_SIZE {
        return Err("Parameter 'cache size' expects is smaller than page size".into());
    }
    Ok(1 << (63 - v.leading_zeros()))
}

/// Serialises [`update`]s (one broker serves one machine), so changes
/// reach vcpu-proc in the order they are stored, while the settings
/// themselves stay locked only for a copy: the queries never wait for
/// vcpu-proc.
static UPDATES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Applies `change` to the settings. When the VM exists, vcpu-proc is
/// sent the new parameters first (a running migration takes them; with
/// none running it answers Done): if it refuses, nothing changes.
pub fn update(
    m: &Machine,
    change: impl FnOnce(&mut MigrationSettings) -> Result<(), FlatError>,
) -> Result<(), FlatError> {
    let _one_at_a_time = UPDATES.lock().unwrap_or_else(|p| p.into_inner());
    let old = current(m);
    let mut new = old;
    change(&mut new)?;
    if new.params() != old.params() && m.vcpu_pid().is_some() {
        let req = VcpuRequest::Migration(MigrationRequest::SetParams(new.params()));
        m.vcpu_request(req).and_then(expect_vcpu_done)?;
    }
    *m.migration
        .settings
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = new;
    Ok(())
}

/// Whether a migration runs in vcpu-proc, which streams it (capabilities
/// cannot change then, as in QEMU). vcpu-proc serves one migration at a
/// time, out or in, so an incoming one counts too (QEMU checks only its
/// outgoing one). No vcpu-proc, or one that cannot answer, runs none.
pub fn migration_running(m: &Machine) -> bool {
    if m.vcpu_pid().is_none() {
        return false;
    }
    match m.vcpu_request(VcpuRequest::Migration(MigrationRequest::Query)) {
        Ok(VcpuReply::Migration(stats)) => match stats.status {
            MigrationStatus::Setup
            | MigrationStatus::Active
            | MigrationStatus::Device
            | MigrationStatus::Cancelling => true,
            MigrationStatus::None
            | MigrationStatus::Cancelled
            | MigrationStatus::Completed
            | MigrationStatus::Failed => false,
        },
        Ok(
            VcpuReply::Done
            | VcpuReply::Status(_)
            | VcpuReply::Cpus(_)
            | VcpuReply::Trace(_)
            | VcpuReply::DumpStarted { .. }
            | VcpuReply::DumpProgress { .. },
        )
        | Err(_) => false,
    }
}

/// The current settings.
pub fn current(m: &Machine) -> MigrationSettings {
    *m.migration
        .settings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_size_value_is_rounded_down_to_a_power_of_two_as_qemu_2_8() {
        let ram = 128 << 20;
        assert_eq!(cache_size_from_value(536870912, 1 << 30), Ok(536870912));
        assert_eq!(cache_size_from_value(5000, ram), Ok(4096));
        assert_eq!(cache_size_from_value(4096, ram), Ok(4096));
        assert_eq!(cache_size_from_value(100 << 20, ram), Ok(64 << 20));
        assert_eq!(cache_size_from_value(ram as i64, ram), Ok(ram));
    }

    #[test]
    fn cache_size_value_too_small_or_above_ram_is_refused_with_qemu_2_8s_words() {
        let ram = 128 << 20;
        let big = "Parameter 'cache size' expects exceeds guest ram size";
        let small = "Parameter 'cache size' expects is smaller than page size";
        assert_eq!(cache_size_from_value(ram as i64 + 1, ram).unwrap_err(), big);
        assert_eq!(cache_size_from_value(-1, ram).unwrap_err(), big);
        assert_eq!(cache_size_from_value(4095, ram).unwrap_err(), small);
        assert_eq!(cache_size_from_value(0, ram).unwrap_err(), small);
    }

    #[test]
    fn qemu_10_parameter_checks() {
        assert!(check_downtime_limit(MAX_DOWNTIME_LIMIT_MS).is_ok());
        assert!(check_downtime_limit(MAX_DOWNTIME_LIMIT_MS + 1).is_err());
        assert!(check_xbzrle_cache_size(4096).is_ok());
        assert!(check_xbzrle_cache_size(1 << 40).is_ok());
        assert!(check_xbzrle_cache_size(2048).is_err());
        assert!(check_xbzrle_cache_size(5000).is_err());
        assert!(check_xbzrle_cache_size(u64::MAX).is_err());
    }

    #[test]
    fn announcement_ranges_and_messages_are_qemu_10s() {
        assert!(check_announce("announce-initial", 100_000).is_ok());
        assert_eq!(
            check_announce("announce-initial", 100_001).unwrap_err(),
            "Parameter 'announce_initial' expects a value between 0 and 100000"
        );
        assert_eq!(
            check_announce("announce-max", 100_001).unwrap_err(),
            "Parameter 'announce_max' expects a value between 0 and 100000"
        );
        assert!(check_announce("announce-rounds", 0).is_ok());
        assert_eq!(
            check_announce("announce-rounds", 1001).unwrap_err(),
            "Parameter 'announce_rounds' expects a value between 0 and 1000"
        );
        let step = "Parameter 'announce_step' expects a value between 0 and 10000";
        assert_eq!(check_announce("announce-step", 0).unwrap_err(), step);
        assert_eq!(check_announce("announce-step", 10_001).unwrap_err(), step);
        assert!(check_announce("announce-step", 10_000).is_ok());
    }
}
