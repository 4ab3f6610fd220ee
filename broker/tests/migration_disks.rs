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

fn qcow2_over(node: &str, img: &Path) -> Value {
    json!({"driver": "qcow2", "node-name": node,
           "file": {"driver": "file", "node-name": format!("{node}-file"), "filename": img}})
}

/// Whether some process holds an OFD lock on `byte` of `img`.
fn held(img: &Path, byte: i64) -> bool {
    let f = std::fs::File::open(img).unwrap();
    // SAFETY: flock is plain data; all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: valid fd and flock for the call.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(r, 0);
    fl.l_type != libc::F_UNLCK as libc::c_short
}

fn kill_block_proc(b: &Bulkhead, q: &mut Qmp) {
    let broker = b.child.as_ref().unwrap().id();
    let pid = loop {
        if let Some((pid, _)) = common::children(broker)
            .into_iter()
            .find(|(_, c)| c == "block-proc")
        {
            break pid as i32;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    q.event("__org.bulkhead_WORKER_RESTARTED");
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
    kill_block_proc(&b, &mut q);
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
