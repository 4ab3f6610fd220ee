//! What the broker opens for block-proc (issue 14.1) and how it waits
//! (14.9), on the real `bulkhead`: backing files only from the chain the
//! broker read and inside the VM's image directories, never a FIFO, files
//! opened as `-run-with user=`, the block state never locked across a
//! worker request, and a timed-out `blockdev-del` not brought back by a
//! replay. Needs /dev/kvm and root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bulkhead, Qmp, TempDir, TIMEOUT};
use serde_json::{json, Value};

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

/// A 1 MiB raw image `name` in `dir`.
fn raw(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    p
}

/// A 1 MiB qcow2 image `name` in `dir` whose header names `backing` (raw).
fn overlay(dir: &Path, name: &str, backing: &str) -> PathBuf {
    let p = dir.join(name);
    // -u: qemu-img does not open the backing file (it may be a FIFO).
    qemu_img(&[
        "create",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        "raw",
        p.to_str().unwrap(),
        "1M",
    ]);
    p
}

fn qcow2_over(node: &str, img: &Path) -> Value {
    json!({"driver": "qcow2", "node-name": node,
           "file": {"driver": "file", "filename": img}})
}

fn error_desc(r: &Value) -> String {
    Qmp::error_of(r).1
}

fn node_names(q: &mut Qmp) -> Vec<String> {
    q.ok("query-named-block-nodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap().to_owned())
        .collect()
}

fn block_proc_pid(b: &Bulkhead) -> i32 {
    let broker = b.child.as_ref().unwrap().id();
    let start = Instant::now();
    loop {
        if let Some((pid, _)) = common::children(broker)
            .into_iter()
            .find(|(_, c)| c == "block-proc")
        {
            return pid as i32;
        }
        assert!(start.elapsed() < TIMEOUT, "no block-proc child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: i32, s: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s).unwrap();
}

/// Starts bulkhead with `extra`, its stderr (the log) in `log`.
fn start_logged(extra: &[&str], log: &Path) -> Bulkhead {
    // Builds the workers (once per test binary).
    drop(Bulkhead::start(&[]));
    let dir = TempDir::new();
    let sock = dir.0.join("q.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(["-serial", "null"])
        .args(extra)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(start.elapsed() < TIMEOUT, "QMP socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    Bulkhead {
        child: Some(child),
        sock,
        dir,
    }
}

#[test]
fn backing_file_of_another_vm_is_refused_and_logged() {
    let vms = TempDir::new();
    let (vm1, vm2) = (vms.0.join("vm1"), vms.0.join("vm2"));
    std::fs::create_dir_all(&vm1).unwrap();
    std::fs::create_dir_all(&vm2).unwrap();
    let other = raw(&vm2, "disk.raw");
    let top = overlay(&vm1, "top.qcow2", other.to_str().unwrap());
    let log = vms.0.join("log");
    let b = start_logged(&[], &log);
    let mut q = b.client();
    let r = q.execute("blockdev-add", qcow2_over("t0", &top));
    assert_eq!(
        error_desc(&r),
        format!(
            "Could not open backing file: Could not open '{}': Permission denied (outside the \
             directories this VM may use: those of the images it was given, and \
             -x-bulkhead-image-dir)",
            other.display()
        )
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("refused backing file '{}'", other.display())),
        "log: {text}"
    );
    // Nothing half-made stays behind: the name is free, no node listed.
    assert!(node_names(&mut q).is_empty());
}

#[test]
fn backing_file_beside_the_image_or_under_an_image_dir_is_used() {
    let vms = TempDir::new();
    let (vm1, base) = (vms.0.join("vm1"), vms.0.join("base"));
    std::fs::create_dir_all(&vm1).unwrap();
    std::fs::create_dir_all(&base).unwrap();
    raw(&vm1, "local.raw");
    let near = overlay(&vm1, "near.qcow2", "local.raw");
    let shared = raw(&base, "shared.raw");
    let far = overlay(&vm1, "far.qcow2", shared.to_str().unwrap());
    let b = Bulkhead::start(&["-x-bulkhead-image-dir", base.to_str().unwrap()]);
    let mut q = b.client();
    assert_eq!(
        q.execute("blockdev-add", qcow2_over("n0", &near)),
        json!({"return": {}})
    );
    assert_eq!(
        q.execute("blockdev-add", qcow2_over("f0", &far)),
        json!({"return": {}})
    );
    let list = q.ok("query-named-block-nodes");
    let f0 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "f0")
        .unwrap();
    assert_eq!(f0["backing_file"], json!(shared.display().to_string()));
}

#[test]
fn a_fifo_filename_answers_an_error_at_once() {
    let b = Bulkhead::start(&[]);
    let fifo = b.dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut q = b.client();
    q.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = q.execute(
        "blockdev-add",
        json!({"driver": "file", "node-name": "p0", "filename": fifo, "read-only": true}),
    );
    assert_eq!(
        error_desc(&r),
        format!(
            "Could not open '{}': not a regular file or block device",
            fifo.display()
        )
    );
    // A qcow2 header naming a FIFO as backing file: refused too.
    let top = overlay(&b.dir.0, "top.qcow2", "fifo");
    let r = q.execute("blockdev-add", qcow2_over("t0", &top));
    assert_eq!(
        error_desc(&r),
        format!(
            "Could not open backing file: Could not open '{}': a backing file must be a \
             regular file",
            fifo.display()
        )
    );
}

#[test]
fn qmp_stays_responsive_while_a_blockdev_add_is_stuck() {
    let b = Bulkhead::start(&[]);
    let fifo = b.dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut stuck = b.client();
    let mut other = b.client();
    assert_eq!(
        other.execute(
            "blockdev-add",
            json!({"driver": "null-co", "node-name": "n0"})
        ),
        json!({"return": {}})
    );
    let pid = block_proc_pid(&b);
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    stuck.send_raw(
        json!({"execute": "blockdev-add",
               "arguments": {"driver": "null-co", "node-name": "n1"}})
        .to_string()
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(300));
    // Well under the worker timeout (5 s), after which the broker would
    // kill the stopped worker itself.
    other
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(other.ok("query-status")["status"], "running");
    let r = other.execute(
        "blockdev-add",
        json!({"driver": "file", "node-name": "p0", "filename": fifo, "read-only": true}),
    );
    assert!(error_desc(&r).ends_with("not a regular file or block device"));
    let r = other.execute(
        "blockdev-add",
        json!({"driver": "null-co", "node-name": "n0"}),
    );
    assert_eq!(error_desc(&r), "Duplicate nodes with node-name='n0'");
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    // The stuck command waits for the restarted worker and then applies.
    assert_eq!(stuck.reply(), json!({"return": {}}));
    other.event("__org.bulkhead_WORKER_RESTARTED");
    assert_eq!(node_names(&mut other), ["n1", "n0"]);
}

#[test]
fn a_timed_out_blockdev_del_is_not_resurrected_by_the_replay() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    for n in ["n0", "keep"] {
        assert_eq!(
            q.execute("blockdev-add", json!({"driver": "null-co", "node-name": n})),
            json!({"return": {}})
        );
    }
    let pid = block_proc_pid(&b);
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    // The worker's reply timeout is 30 s.
    q.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let r = q.execute("blockdev-del", json!({"node-name": "n0"}));
    assert!(
        error_desc(&r).starts_with("the block worker did not answer"),
        "{r}"
    );
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    q.event("__org.bulkhead_WORKER_RESTARTED");
    assert_eq!(node_names(&mut q), ["keep"]);
}

#[test]
fn images_are_opened_as_the_run_with_user() {
    let user = format!("user={RUN_WITH_UID}");
    opened_as_the_run_with_user(&["-run-with", &user]);
    // QEMU's -run-with user= applies without a sandbox too.
    opened_as_the_run_with_user(&["-sandbox", "off", "-run-with", &user]);
}

const RUN_WITH_UID: u32 = 4_000_321;

fn opened_as_the_run_with_user(args: &[&str]) {
    const UID: u32 = RUN_WITH_UID;
    let b = Bulkhead::start(args);
    let mine = raw(&b.dir.0, "mine.raw");
    let roots = raw(&b.dir.0, "roots.raw");
    nix::unistd::chown(&mine, Some(UID.into()), Some(UID.into())).unwrap();
    for p in [&mine, &roots] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let mut q = b.client();
    let r = q.execute(
        "blockdev-add",
        json!({"driver": "file", "node-name": "r0", "filename": roots}),
    );
    assert_eq!(
        error_desc(&r),
        format!("Could not open '{}': Permission denied", roots.display())
    );
    assert_eq!(
        q.execute(
            "blockdev-add",
            json!({"driver": "file", "node-name": "m0", "filename": mine})
        ),
        json!({"return": {}})
    );
}

#[test]
fn a_backing_file_outside_the_directories_works_when_named_explicitly() {
    let vms = TempDir::new();
    let (vm1, vm2) = (vms.0.join("vm1"), vms.0.join("vm2"));
    std::fs::create_dir_all(&vm1).unwrap();
    std::fs::create_dir_all(&vm2).unwrap();
    let base = raw(&vm2, "base.raw");
    let top = overlay(&vm1, "top.qcow2", base.to_str().unwrap());
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    let mut o = qcow2_over("t0", &top);
    o["backing"] = json!({"driver": "raw",
                          "file": {"driver": "file", "filename": base}});
    assert_eq!(q.execute("blockdev-add", o), json!({"return": {}}));
    let list = q.ok("query-named-block-nodes");
    let t0 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "t0")
        .unwrap();
    assert_eq!(t0["backing_file"], json!(base.display().to_string()));
}

#[test]
fn a_missing_backing_file_gives_qemu_message() {
    let b = Bulkhead::start(&[]);
    let top = overlay(&b.dir.0, "top.qcow2", "gone.raw");
    let mut q = b.client();
    let r = q.execute("blockdev-add", qcow2_over("t0", &top));
    // qemu-storage-daemon says the same for this image.
    assert_eq!(
        error_desc(&r),
        format!(
            "Could not open backing file: Could not open '{}': No such file or directory",
            b.dir.0.join("gone.raw").display()
        )
    );
}
