//! The `dirty` guest moved while it rewrites its memory: live migration
//! between two VMMs over `unix:`, and a save to a file with a restore in a
//! new VMM. The guest must go on where it was (no new boot, the next
//! generation after the last one) and check every one of its pages on the
//! destination twice. QEMU's microvm runs the same scenarios as the
//! reference (a failure there is the guest's, not bulkhead's). Needs
//! /dev/kvm and qemu-system-x86_64.

mod common;
mod dirty_common;
mod disk_common;

use std::time::{Duration, Instant};

use common::{Qmp, TempDir};
use dirty_common::{area, last_gen, lines, wait_gen, RamFile, Vm, Vmm};
use disk_common::{SerialLog, GUEST_TIMEOUT};
use serde_json::{json, Value};

/// 16 MiB rewritten at 8 pages/ms: a pass every ~0.5 s.
const APPEND: &str = "dirty.mb=16 dirty.rate=8 dirty.rounds=0";
const PASS_DONE: &str = "pages verified and rewritten";

/// Polls `query-migrate` until `completed`; its reply.
fn wait_completed(q: &mut Qmp) -> Value {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let info = q.ok("query-migrate");
        match info["status"].as_str() {
            Some("completed") => return info,
            Some("failed") | Some("cancelled") => panic!("migration ended: {info}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "migration never completed: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(q: &mut Qmp) -> String {
    q.ok("query-status")["status"].as_str().unwrap().to_owned()
}

/// The generations the guest completed on `log`, in order.
fn gens(log: &SerialLog) -> Vec<u64> {
    lines(log)
        .iter()
        .filter(|l| l.contains(PASS_DONE))
        .filter_map(|l| {
            l.strip_prefix("dirty: gen ")?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The guest on the destination went on after generation `after`, the
/// last one the source printed whole (no boot banner: it was not started
/// again; the next one, or the one after if the move cut its line), and
/// completed two passes there, so every page was checked on the
/// destination.
fn assert_goes_on(dst: &Vm, after: u64) {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while gens(&dst.log).len() < 2 {
        let t = dst.log.text();
        assert!(!t.contains("VERDICT"), "guest failed after the move:\n{t}");
        assert!(
            Instant::now() < deadline,
            "fewer than 2 passes after the move:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = dst.log.text();
    assert!(
        !text.contains("Bulkhead test guest"),
        "booted again:\n{text}"
    );
    let g = gens(&dst.log);
    assert!(
        g[0] > after && g[0] <= after + 2,
        "{after} then {g:?}:\n{text}"
    );
    assert_eq!(g[1], g[0] + 1, "{text}");
}

fn live_migration(vmm: Vmm) {
    let (src_ram, dst_ram) = (RamFile::new(), RamFile::new());
    let src = Vm::start(vmm, &src_ram, APPEND, &[]);
    area(&src.log);
    wait_gen(&src.log, 2);
    let uri = format!("unix:{}", src.dir.0.join("migrate.sock").display());
    let dst = Vm::start(vmm, &dst_ram, APPEND, &["-incoming", &uri, "-S"]);
    let mut dq = dst.client();
    let mut sq = src.client();
    let r = sq.execute("migrate", json!({ "uri": uri }));
    assert_eq!(r["return"], json!({}), "{r}");
    let info = wait_completed(&mut sq);
    assert!(
        info["ram"]["transferred"].as_u64().unwrap() > 16 << 20,
        "{info}"
    );
    assert_eq!(status(&mut sq), "postmigrate");
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while status(&mut dq) == "inmigrate" {
        assert!(
            Instant::now() < deadline,
            "the destination never left inmigrate"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status(&mut dq), "paused");
    dq.ok("cont");
    let before = last_gen(&src.log);
    assert_goes_on(&dst, before);
    assert_eq!(status(&mut dq), "running");
}

fn save_and_restore(vmm: Vmm) {
    let ram = RamFile::new();
    let keep = TempDir::new();
    let state = keep.0.join("state");
    let mut src = Vm::start(vmm, &ram, APPEND, &[]);
    wait_gen(&src.log, 2);
    let mut q = src.client();
    q.ok("stop");
    let saved = match vmm {
        Vmm::Bulkhead => q.execute(
            "xen-save-devices-state",
            json!({"filename": state, "live": false}),
        ),
        Vmm::Qemu => q.execute(
            "migrate",
            json!({"uri": format!("file:{}", state.display())}),
        ),
    };
    assert_eq!(saved["return"], json!({}), "{saved}");
    if vmm == Vmm::Qemu {
        wait_completed(&mut q);
    }
    let before = last_gen(&src.log);
    q.ok("quit");
    src.exit_code();
    drop(src);

    let dst = Vm::start(vmm, &ram, APPEND, &["-incoming", "defer", "-S"]);
    let mut q = dst.client();
    let loaded = match vmm {
        Vmm::Bulkhead => q.execute("xen-load-devices-state", json!({ "filename": state })),
        Vmm::Qemu => q.execute(
            "migrate-incoming",
            json!({"uri": format!("file:{}", state.display())}),
        ),
    };
    assert_eq!(loaded["return"], json!({}), "{loaded}");
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while status(&mut q) == "inmigrate" {
        assert!(Instant::now() < deadline, "state never loaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status(&mut q), "paused");
    q.ok("cont");
    assert_goes_on(&dst, before);
}

#[test]
fn qemu_live_migration_over_unix_keeps_the_dirty_guest_verifying() {
    live_migration(Vmm::Qemu);
}

#[test]
fn qemu_restore_from_a_file_keeps_the_dirty_guest_verifying() {
    save_and_restore(Vmm::Qemu);
}

#[test]
fn bulkhead_restore_with_xen_load_devices_state_keeps_the_dirty_guest_verifying() {
    save_and_restore(Vmm::Bulkhead);
}

#[test]
fn bulkhead_live_migration_over_unix_keeps_the_dirty_guest_verifying() {
    live_migration(Vmm::Bulkhead);
}
