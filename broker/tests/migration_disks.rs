//! Disks of a migration target are inactive (QEMU's `BDRV_O_INACTIVE`):
//! opened without image locks so the source can keep them until its
//! switchover, and still without them across a block-proc SIGKILL; a VM
//! started without `-incoming` takes them at once. Checked against the
//! lock bytes QEMU reads (100 + perm: held, 200 + perm: not shared).

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::locks::{held, qcow2_over};
use common::migration::{start_vm, Guest};
use common::{Bulkhead, Qmp};
use serde_json::{json, Value};

fn qcow2(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("1M")
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img create: {out:?}");
    p
}

#[test]
fn a_migration_target_holds_no_image_locks_even_across_a_block_proc_sigkill() {
    let b = Bulkhead::start(&["-incoming", "defer"]);
    let img = qcow2(&b.dir.0, "d.qcow2");
    let mut q = b.client();
    let r = q.execute("blockdev-add", qcow2_over("d0", &img));
    assert_eq!(r, json!({"return": {}}));
    assert!(
        !held(&img, 101) && !held(&img, 201),
        "an inactive disk took the write lock"
    );
    // The source's locks are what the target must not collide with: a
    // writer elsewhere can hold them now.
    let out = Command::new("qemu-img")
        .arg("info")
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    common::kill_worker_and_wait_restart(&b, &mut q, "block-proc");
    assert!(!held(&img, 101), "a restarted block-proc took the lock");
    // The disk itself works (the node is back in the restarted worker).
    let r = q.execute("query-named-block-nodes", Value::Null);
    assert!(r["return"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["node-name"] == "d0"));
}

#[test]
fn a_vm_started_without_incoming_locks_its_images_at_once() {
    let b = Bulkhead::start(&[]);
    let img = qcow2(&b.dir.0, "d.qcow2");
    let mut q = b.client();
    let r = q.execute("blockdev-add", qcow2_over("d0", &img));
    assert_eq!(r, json!({"return": {}}));
    assert!(held(&img, 101) && held(&img, 201));
}

fn timer_vm(dir: &Path, name: &str, img: &Path, extra: &[&str]) -> Bulkhead {
    vm_on_image(Guest::Timer, dir, name, img, extra)
}

/// The `dirty` guest, idle until stopped (it runs through a migration).
fn idle_vm(dir: &Path, name: &str, img: &Path, extra: &[&str]) -> Bulkhead {
    vm_on_image(Guest::IdleDirty, dir, name, img, extra)
}

/// `guest` with node `d0`, the qcow2 image `img`.
fn vm_on_image(guest: Guest, dir: &Path, name: &str, img: &Path, extra: &[&str]) -> Bulkhead {
    let blockdev = qcow2_over("d0", img).to_string();
    let mut args = vec!["-blockdev", blockdev.as_str()];
    args.extend_from_slice(extra);
    start_vm(dir, name, guest, &args)
}

fn wait_migration(q: &mut Qmp, want: &[&str]) -> Value {
    let start = std::time::Instant::now();
    loop {
        let r = q.ok("query-migrate");
        if want.iter().any(|w| r["status"] == *w) {
            return r;
        }
        assert!(start.elapsed() < common::TIMEOUT, "never {want:?}: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(q: &mut Qmp) -> String {
    q.ok("query-status")["status"].as_str().unwrap().to_owned()
}

/// A node on shared storage on both sides (no guest device: the guest's
/// devices match): the source holds the image locks until the
/// switchover, flushes and releases them there, and the target takes
/// them when its incoming migration completes. A block-proc SIGKILL on
/// the source while the migration runs changes none of it.
#[test]
fn the_image_locks_move_from_source_to_target_at_the_switchover() {
    let dir = common::TempDir::new();
    let img = qcow2(&dir.0, "shared.qcow2");
    let src = timer_vm(&dir.0, "src", &img, &["-S"]);
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    let dst = timer_vm(&dir.0, "dst", &img, &["-incoming", &incoming, "-S"]);
    let mut s = src.client();
    let mut d = dst.client();
    assert!(held(&img, 101), "the source holds the write lock");
    let r = s.execute("migrate", json!({"uri": incoming}));
    assert_eq!(r, json!({"return": {}}));
    common::kill_worker_and_wait_restart(&src, &mut s, "block-proc");
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    wait_migration(&mut d, &["completed"]);
    // The source never ran: its target takes its `prelaunch` (QEMU 10).
    let start = std::time::Instant::now();
    while status(&mut d) != "prelaunch" {
        assert!(start.elapsed() < common::TIMEOUT);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Someone holds it: the target (the source let go, see below).
    assert!(held(&img, 101) && held(&img, 201));
    drop(d);
    drop(dst);
    let start = std::time::Instant::now();
    while held(&img, 101) {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "the source kept its lock after the switchover"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The source (postmigrate) takes it back with `cont`, as QEMU.
    assert_eq!(status(&mut s), "postmigrate");
    s.ok("cont");
    assert!(
        held(&img, 101),
        "cont in postmigrate did not take the lock back"
    );
}

/// Another writer holds the image when the incoming migration completes:
/// the target cannot take its locks, so it leaves the guest paused even
/// with autostart, as QEMU. The source runs (an idle `dirty` guest): a
/// source that did not run would leave the target stopped anyway (its
/// run state travels, QEMU's global state).
#[test]
fn a_target_that_cannot_lock_its_images_stays_paused() {
    let dir = common::TempDir::new();
    let src_img = qcow2(&dir.0, "src.qcow2");
    let dst_img = qcow2(&dir.0, "dst.qcow2");
    let src = idle_vm(&dir.0, "src", &src_img, &[]);
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    let dst = idle_vm(&dir.0, "dst", &dst_img, &["-incoming", &incoming, "-S"]);
    let mut s = src.client();
    let mut d = dst.client();
    // A writer elsewhere: QEMU's lock bytes of "write" held and unshared.
    let other = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dst_img)
        .unwrap();
    for byte in [101, 201] {
        // SAFETY: flock is plain data; all-zero is valid.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_RDLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte;
        fl.l_len = 1;
        // SAFETY: valid fd and flock for the call.
        let r = unsafe { libc::fcntl(other.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        assert_eq!(r, 0);
    }
    // Autostart: the guest should run once loaded, unless it cannot.
    assert_eq!(d.execute("cont", Value::Null), json!({"return": {}}));
    let r = s.execute("migrate", json!({"uri": incoming}));
    assert_eq!(r, json!({"return": {}}));
    wait_migration(&mut s, &["completed"]);
    wait_migration(&mut d, &["completed"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut d), "paused");
    // `cont` says why, with QEMU's message.
    let r = d.execute("cont", Value::Null);
    assert_eq!(
        Qmp::error_of(&r),
        ("GenericError".into(), "Failed to get \"write\" lock".into())
    );
    drop(other);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.execute("cont", Value::Null), json!({"return": {}}));
    assert!(held(&dst_img, 101));
}
