//! The waits of the migration tests: run state and `query-migrate`
//! status polled over QMP, each bounded.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Qmp, TIMEOUT};

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
