//! The migration tests' VMs and waits: a broker running a guest that
//! lives through a migration, run state and `query-migrate` status polled
//! over QMP, each bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Bulkhead, Qmp, TIMEOUT};

/// The test guest a migration moves.
#[derive(Debug, Clone, Copy)]
pub enum Guest {
    /// `dirty`, idle until stopped (4 MiB of pattern, never rewritten).
    IdleDirty,
    /// `timer`: ticks on its serial line until stopped.
    Timer,
}

/// Where [`start_vm`] puts the serial output of VM `name`.
pub fn serial_log(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Starts bulkhead for a migration: `guest` with 64 MiB, its serial
/// output in [`serial_log`], then `extra` (devices, `-incoming`, `-S`).
pub fn start_vm(dir: &Path, name: &str, guest: Guest, extra: &[&str]) -> Bulkhead {
    let (kernel, append) = match guest {
        Guest::IdleDirty => ("dirty", "dirty.mb=4 dirty.rate=0 dirty.rounds=0"),
        Guest::Timer => ("timer", ""),
    };
    let kernel = super::guest(kernel);
    let serial = format!("file:{}", serial_log(dir, name).display());
    let mut args = vec!["-kernel", &kernel, "-serial", &serial, "-m", "64M"];
    if !append.is_empty() {
        args.extend(["-append", append]);
    }
    args.extend_from_slice(extra);
    Bulkhead::start(&args)
}

/// How long a migration may take to reach a status (guests on nested KVM
/// are slow).
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// `query-status`'s status.
pub fn status(q: &mut Qmp) -> String {
    q.ok("query-status")["status"].as_str().unwrap().to_owned()
}

/// Polls `query-migrate` until its status is one of `want`; returns it.
pub fn wait_migration(q: &mut Qmp, want: &[&str]) -> Value {
    let start = Instant::now();
    loop {
        let r = q.ok("query-migrate");
        if want.iter().any(|w| r["status"] == *w) {
            return r;
        }
        assert!(
            start.elapsed() < MIGRATION_TIMEOUT,
            "migration never reached {want:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `query-status` until the run state is `want`.
pub fn wait_status(q: &mut Qmp, want: &str) {
    let start = Instant::now();
    while status(q) != want {
        assert!(start.elapsed() < TIMEOUT, "run state never became {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
