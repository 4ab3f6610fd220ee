//! QEMU-compatible image locking (issue 13.4) against real peers:
//! `qemu-storage-daemon`, `qemu-img` and `qemu-system-x86_64` see
//! bulkhead's OFD lock bytes and bulkhead sees theirs; the locks stay
//! through a block-proc SIGKILL and go with `blockdev-del` and `quit`.
//! Needs /dev/kvm and the QEMU tools (scripts/setup installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::locks::{held, qcow2_over};
use common::{Bulkhead, Qmp, TempDir, TIMEOUT};
use serde_json::{json, Value};

/// A 1 MiB qcow2 image (optionally over a raw backing file).
fn qcow2(dir: &Path, name: &str, backing: Option<&str>) -> PathBuf {
    let p = dir.join(name);
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        c.args(["-b", b, "-F", "raw"]);
    }
    let out = c.arg(&p).arg("1M").output().unwrap();
    assert!(out.status.success(), "qemu-img create: {out:?}");
    p
}

/// Waits until `held(img, byte)` is `want`.
fn wait_held(img: &Path, byte: i64, want: bool) {
    let start = Instant::now();
    while held(img, byte) != want {
        assert!(
            start.elapsed() < TIMEOUT,
            "byte {byte} of {} never became {}",
            img.display(),
            if want { "locked" } else { "free" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn qemu_img_info(img: &Path, force_share: bool) -> Output {
    let mut c = Command::new("qemu-img");
    c.arg("info");
    if force_share {
        c.arg("-U");
    }
    c.arg(img).output().unwrap()
}

/// A peer process, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn add(q: &mut Qmp, args: Value) -> Value {
    q.execute("blockdev-add", args)
}

#[test]
fn an_image_qemu_storage_daemon_writes_is_refused_with_qemu_message() {
    let dir = TempDir::new();
    let img = qcow2(&dir.0, "d.qcow2", None);
    let _qsd = Peer(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                img.display()
            ))
            .args(["--blockdev", "driver=qcow2,node-name=q,file=f"])
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon is installed"),
    );
    wait_held(&img, 101, true);
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let r = add(&mut q, qcow2_over("d0", &img));
    assert_eq!(Qmp::error_of(&r).1, "Failed to get \"write\" lock");
    // Read-only users are refused too: the daemon does not share write.
    let mut ro = qcow2_over("d1", &img);
    ro["read-only"] = json!(true);
    let r = add(&mut q, ro);
    assert_eq!(Qmp::error_of(&r).1, "Failed to get shared \"write\" lock");
    // On the command line, QEMU's hint follows.
    let blockdev = qcow2_over("d0", &img).to_string();
    let mut child = Peer(
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args([
                "-qmp",
                &format!("unix:{}/q.sock,server=on,wait=off", dir.0.display()),
            ])
            .args(["-serial", "null", "-blockdev", &blockdev])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "bulkhead started on a locked image"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(&format!(
            "-blockdev {blockdev}: Failed to get \"write\" lock\nIs another process using the \
             image [{}]?",
            img.display()
        )),
        "stderr: {err}"
    );
}

#[test]
fn qemu_img_info_needs_force_share_on_an_image_bulkhead_writes() {
    let b = Bulkhead::start(&[]);
    let img = qcow2(&b.dir.0, "d.qcow2", None);
    let mut q = b.client();
    assert_eq!(add(&mut q, qcow2_over("d0", &img)), json!({"return": {}}));
    let out = qemu_img_info(&img, false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Failed to get shared \"write\" lock")
            && err.contains(&format!(
                "Is another process using the image [{}]?",
                img.display()
            )),
        "qemu-img info: {err}"
    );
    let out = qemu_img_info(&img, true);
    assert!(out.status.success(), "qemu-img info -U: {out:?}");
}

#[test]
fn qemu_system_refuses_an_image_bulkhead_writes() {
    let b = Bulkhead::start(&[]);
    let img = qcow2(&b.dir.0, "d.qcow2", None);
    let mut q = b.client();
    assert_eq!(add(&mut q, qcow2_over("d0", &img)), json!({"return": {}}));
    let mut qemu = Peer(
        Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
            .arg("-blockdev")
            .arg(qcow2_over("q", &img).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 is installed"),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = qemu.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "qemu-system-x86_64 opened an image bulkhead writes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut qemu.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("Failed to get \"write\" lock")
            && err.contains(&format!(
                "Is another process using the image [{}]?",
                img.display()
            )),
        "qemu-system-x86_64: {err}"
    );
}

#[test]
fn locks_survive_a_block_worker_sigkill_and_go_with_blockdev_del_and_quit() {
    let mut b = Bulkhead::start(&[]);
    let img = qcow2(&b.dir.0, "d.qcow2", None);
    let mut q = b.client();
    assert_eq!(add(&mut q, qcow2_over("d0", &img)), json!({"return": {}}));
    assert!(held(&img, 101) && held(&img, 201));
    common::kill_worker_and_wait_restart(&b, &mut q, "block-proc");
    assert!(held(&img, 101), "the write lock went with block-proc");
    assert!(!qemu_img_info(&img, false).status.success());

    assert_eq!(
        q.execute("blockdev-del", json!({"node-name": "d0"})),
        json!({"return": {}})
    );
    wait_held(&img, 101, false);
    wait_held(&img, 201, false);
    assert!(qemu_img_info(&img, false).status.success());

    assert_eq!(add(&mut q, qcow2_over("d0", &img)), json!({"return": {}}));
    assert!(held(&img, 101));
    q.ok("quit");
    b.wait_exit();
    wait_held(&img, 101, false);
}

#[test]
fn locking_off_takes_no_locks_and_backing_files_take_read_locks() {
    let b = Bulkhead::start(&[]);
    let img = qcow2(&b.dir.0, "d.qcow2", None);
    let mut q = b.client();
    let mut off = qcow2_over("d0", &img);
    off["file"]["locking"] = json!("off");
    assert_eq!(add(&mut q, off), json!({"return": {}}));
    assert!(!held(&img, 100) && !held(&img, 101));
    assert!(qemu_img_info(&img, false).status.success());

    let base = b.dir.0.join("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let top = qcow2(&b.dir.0, "top.qcow2", Some("base.raw"));
    assert_eq!(add(&mut q, qcow2_over("t0", &top)), json!({"return": {}}));
    // Consistent read held; write shared (QEMU's backing child).
    assert!(held(&base, 100));
    assert!(!held(&base, 101) && !held(&base, 201));
    assert!(qemu_img_info(&base, false).status.success());
    assert!(held(&top, 101));
}
