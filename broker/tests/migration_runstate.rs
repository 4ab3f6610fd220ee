//! The run state after a migration, side by side with QEMU 10 (two
//! `qemu-system-x86_64 -M microvm` over `unix:`): the source running,
//! paused (`stop`) or never run (`-S`), the target with or without `-S`
//! and with or without a `cont` while the migration runs. QEMU's target
//! takes a source's run state that is not live from the migration's
//! global state and does not autostart then; bulkhead's VM state
//! carries it in its `run-state` section. Needs /dev/kvm.

mod common;

use std::any::Any;
use std::path::Path;
use std::time::{Duration, Instant};

use common::migration::{start_vm, status, wait_migration, Guest};
use common::qemu::Peer;
use common::{Qmp, TempDir, TIMEOUT};
use serde_json::json;

/// One combination of source and target.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// The source starts with `-S` and never runs.
    src_prelaunch: bool,
    /// The running source is stopped before `migrate`.
    src_stop: bool,
    /// The target starts with `-S`.
    dst_s: bool,
    /// `cont` on the target while it waits for the migration.
    dst_cont: bool,
}

/// A VM: what keeps it alive, and its QMP client.
type Started = (Box<dyn Any>, Qmp);

/// QEMU (microvm, 64 MiB, KVM) with its QMP on `dir/NAME-qmp.sock`.
fn qemu(dir: &Path, name: &str, extra: &[&str]) -> Started {
    let sock = dir.join(format!("{name}-qmp.sock"));
    let mut args = vec!["-accel", "kvm", "-m", "64M"];
    args.extend_from_slice(extra);
    let (guard, q) = Peer::microvm(&sock, &args);
    (Box::new(guard), q)
}

/// The `dirty` guest, idle until stopped: it runs through any migration.
fn bulkhead(dir: &Path, name: &str, extra: &[&str]) -> Started {
    let b = start_vm(dir, name, Guest::IdleDirty, extra);
    let q = b.client();
    (Box::new(b), q)
}

/// Runs `case` with VMs from `start`: the source's status after the
/// migration, the target's, and the target's after a `cont`.
fn run(case: Case, start: fn(&Path, &str, &[&str]) -> Started) -> [String; 3] {
    let dir = TempDir::new();
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    let src_args: &[&str] = if case.src_prelaunch { &["-S"] } else { &[] };
    let (_src, mut s) = start(&dir.0, "src", src_args);
    let mut dst_args = vec!["-incoming", incoming.as_str()];
    if case.dst_s {
        dst_args.push("-S");
    }
    let (_dst, mut d) = start(&dir.0, "dst", &dst_args);
    if case.src_stop {
        s.ok("stop");
    }
    if case.dst_cont {
        d.ok("cont");
    }
    assert_eq!(
        s.execute("migrate", json!({"uri": incoming})),
        json!({"return": {}}),
        "{case:?}"
    );
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{case:?}: {info}");
    wait_migration(&mut d, &["completed"]);
    let begun = Instant::now();
    while status(&mut d) == "inmigrate" {
        assert!(begun.elapsed() < TIMEOUT, "{case:?}: target in inmigrate");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both answer the end of the migration on another thread (QEMU's
    // bottom half, the broker's take-over): let a late `cont` land.
    std::thread::sleep(Duration::from_millis(300));
    let after = [status(&mut s), status(&mut d)];
    assert_eq!(
        d.execute("cont", serde_json::Value::Null),
        json!({"return": {}})
    );
    let [src, dst] = after;
    [src, dst, status(&mut d)]
}

#[test]
fn the_target_s_run_state_after_a_migration_matches_qemu() {
    let mut cases = Vec::new();
    for (src_prelaunch, src_stop) in [(false, false), (false, true), (true, false)] {
        for (dst_s, dst_cont) in [(false, false), (true, false), (true, true)] {
            cases.push(Case {
                src_prelaunch,
                src_stop,
                dst_s,
                dst_cont,
            });
        }
    }
    let mut theirs = Vec::new();
    let mut ours = Vec::new();
    for case in &cases {
        theirs.push(run(*case, qemu));
        ours.push(run(*case, bulkhead));
    }
    for ((case, t), o) in cases.iter().zip(&theirs).zip(&ours) {
        assert_eq!(o, t, "{case:?}: bulkhead {o:?}, QEMU {t:?}");
    }
    // What QEMU 10 says, so a change on either side is seen here.
    let dst: Vec<&str> = theirs.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(
        dst,
        [
            "running",
            "paused",
            "running", // source running
            "paused",
            "paused",
            "paused", // source paused
            "prelaunch",
            "prelaunch",
            "prelaunch", // source never ran
        ]
    );
    assert!(theirs
        .iter()
        .all(|r| r[0] == "postmigrate" && r[2] == "running"));
}
