//! How a disk's vhost-user connection is made, and that making one holds
//! nothing up: block-proc's exports have no socket (the broker hands each
//! connection over as a socketpair), so no other local process can reach
//! one; QMP and vcpu-proc's events go on while a `device_add` waits on a
//! stopped block worker (an external disk's loss is reported meanwhile),
//! and a `device_add` that fails that way (a timeout, or the guest started
//! meanwhile) leaves no export behind. Needs /dev/kvm and
//! qemu-storage-daemon.

mod common;
mod disk_common;

use std::time::Duration;

use common::{Bulkhead, Qmp};
use disk_common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// (inode, path) of the listening Unix sockets in `pid`'s network
/// namespace (`__SO_ACCEPTCON`; an abstract name starts with `@`).
fn listening_unix(pid: u32) -> Vec<(String, String)> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let inode = f.get(6)?.to_string();
            let path = f.get(7).copied().unwrap_or("").to_owned();
            (flags & 0x10000 != 0).then_some((inode, path))
        })
        .collect()
}

/// Inodes of the sockets `pid` holds.
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect()
}

/// The listening sockets process `pid` holds, by path.
fn listening_held_by(pid: u32) -> Vec<String> {
    let mine = socket_inodes(pid);
    listening_unix(pid)
        .into_iter()
        .filter(|(inode, _)| mine.contains(inode))
        .map(|(_, path)| path)
        .collect()
}

#[test]
fn exports_have_no_socket_and_only_the_qmp_socket_listens() {
    let dir = common::TempDir::new();
    let img = raw_image(&dir.0);
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = start_with_disk(&[], "blk-loop", "raw", &img, &serial);
    let broker = common::broker_pid(&b);
    let mut q = b.client();
    serial.wait_passes(1);
    // Also after a block worker restart, when every device reconnects.
    sigkill(block_proc_pid(broker).expect("block-proc runs"));
    let restored = q.event("__org.bulkhead_DEVICE_BACKEND_RESTORED");
    assert_eq!(restored["data"]["id"], "vda");
    let done = serial.passes();
    serial.wait_passes(done + 1);

    let qmp = b.sock.display().to_string();
    assert_eq!(
        listening_held_by(broker),
        vec![qmp],
        "the broker's listeners"
    );
    let workers = common::children(broker);
    assert!(
        workers.iter().any(|(_, n)| n == "block-proc"),
        "{workers:?}"
    );
    for (pid, name) in workers {
        assert_eq!(
            listening_held_by(pid),
            Vec::<String>::new(),
            "{name} listens"
        );
    }
}

/// qemu-storage-daemon exporting `img` at `sock`, killed on drop.
struct Qsd(std::process::Child);

impl Qsd {
    fn start(img: &std::path::Path, sock: &std::path::Path) -> Qsd {
        let child = std::process::Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                img.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                sock.display()
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon is needed");
        let qsd = Qsd(child);
        let start = std::time::Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < common::TIMEOUT, "no qsd socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        qsd
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_paused(
    serial: &SerialLog,
    img0: &std::path::Path,
    img1: &std::path::Path,
    extra: &[&str],
) -> Bulkhead {
    let d = |name: &str, img: &std::path::Path| {
        json!({"driver": "raw", "node-name": name,
               "file": {"driver": "file", "filename": img}})
        .to_string()
    };
    let (d0, d1) = (d("d0", img0), d("d1", img1));
    // `hello` idles (echoing serial input) until told to exit.
    let kernel = guest("hello");
    let serial = format!("file:{}", serial.0.display());
    let mut args = vec![
        "-S",
        "-kernel",
        &kernel,
        "-m",
        "64M",
        "-serial",
        &serial,
        "-blockdev",
        &d0,
        "-blockdev",
        &d1,
    ];
    args.extend_from_slice(extra);
    Bulkhead::start(&args)
}

/// block-proc's pid, once the broker has started it.
fn wait_block_proc(broker: u32) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(p) = block_proc_pid(broker) {
            return p;
        }
        assert!(start.elapsed() < common::TIMEOUT, "no block-proc");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: i32, s: Signal) {
    kill(Pid::from_raw(pid), s).unwrap();
}

/// Sends `device_add` of `id` on `drive` from a client of its own, in a
/// thread; the thread returns the reply.
fn device_add_in_background(b: &Bulkhead, id: &str, drive: &str) -> std::thread::JoinHandle<Value> {
    let mut q = b.client();
    // Longer than the broker's wait for a worker reply.
    q.stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let args = json!({"driver": "virtio-blk-device", "drive": drive, "id": id});
    std::thread::spawn(move || q.execute("device_add", args))
}

/// `d1` is held by nothing (no export left on it).
fn assert_d1_unused(q: &mut Qmp) {
    let nodes = q.ok("query-named-block-nodes");
    let d1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "d1")
        .cloned()
        .unwrap_or_else(|| panic!("no d1 in {nodes}"));
    assert_eq!(
        q.execute("blockdev-del", json!({"node-name": "d1"})),
        json!({"return": {}}),
        "d1 still in use: {d1}"
    );
}

#[test]
fn qmp_and_vcpu_events_go_on_while_device_add_waits_and_a_late_add_is_undone() {
    let dir = common::TempDir::new();
    let (img0, img1) = (
        raw_image_named(&dir.0, "0.raw"),
        raw_image_named(&dir.0, "1.raw"),
    );
    let serial = SerialLog(dir.0.join("serial.log"));
    // An external disk too, whose daemon goes away while device_add waits.
    let qsd_img = raw_image_named(&dir.0, "2.raw");
    let qsd_sock = dir.0.join("qsd.sock");
    let qsd = Qsd::start(&qsd_img, &qsd_sock);
    let chardev = format!("socket,id=c0,path={}", qsd_sock.display());
    let b = start_paused(
        &serial,
        &img0,
        &img1,
        &[
            "-chardev",
            &chardev,
            "-device",
            "vhost-user-blk,chardev=c0,id=vdx",
        ],
    );
    let broker = common::broker_pid(&b);
    let mut q = b.client();
    // (Started by now: the client waited for the -blockdev nodes.)
    let block = wait_block_proc(broker);
    signal(block, Signal::SIGSTOP);
    let adding = device_add_in_background(&b, "vdb", "d1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !adding.is_finished(),
        "device_add did not wait on the worker"
    );
    // The device lists and their lock are free: these answer at once,
    // well before the worker request could time out (30 s).
    q.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = q.execute("device_del", json!({"id": "vdb"}));
    assert_eq!(Qmp::error_of(&r).1, "Device 'vdb' not found");
    let r = q.execute(
        "device_add",
        json!({"driver": "virtio-blk-device", "drive": "d1", "id": "vdb"}),
    );
    assert_eq!(Qmp::error_of(&r).1, "Duplicate device ID 'vdb'");
    assert_eq!(q.ok("query-block"), json!([]));
    // The guest starts (vcpu-proc answers, its RESUME event arrives).
    q.ok("cont");
    q.event("RESUME");
    assert_eq!(q.ok("query-status")["status"], "running");
    // vcpu-proc's report of the lost external backend gets through (its
    // link reader needs the device state).
    drop(qsd);
    let lost = q.event("__org.bulkhead_DEVICE_BACKEND_LOST");
    assert_eq!(lost["data"]["id"], "vdx");
    assert_eq!(q.ok("query-status")["status"], "running");
    assert!(!adding.is_finished());
    // The export is made only now, after the guest started: undone.
    signal(block, Signal::SIGCONT);
    let r = adding.join().unwrap();
    assert_eq!(
        Qmp::error_of(&r).1,
        "Bus 'virtio-mmio-bus.1' does not support hotplugging"
    );
    assert_eq!(q.ok("query-block"), json!([]));
    assert_d1_unused(&mut q);
}

#[test]
fn device_add_whose_worker_request_times_out_leaves_no_export_behind() {
    let dir = common::TempDir::new();
    let (img0, img1) = (
        raw_image_named(&dir.0, "0.raw"),
        raw_image_named(&dir.0, "1.raw"),
    );
    let serial = SerialLog(dir.0.join("serial.log"));
    let b = start_paused(
        &serial,
        &img0,
        &img1,
        &["-__org.bulkhead-worker-timeout", "2"],
    );
    let broker = common::broker_pid(&b);
    let mut q = b.client();
    // (Started by now: the client waited for the -blockdev nodes.)
    let block = wait_block_proc(broker);
    signal(block, Signal::SIGSTOP);
    let adding = device_add_in_background(&b, "vdb", "d1");
    // The AddExport request passes its deadline; the stopped worker is
    // then found hung, killed and restarted from the desired state, in
    // which the half-made export is not.
    let r = adding.join().unwrap();
    let desc = Qmp::error_of(&r).1;
    assert!(desc.starts_with("the block worker did not answer"), "{r}");
    q.event("__org.bulkhead_WORKER_RESTARTED");
    assert_eq!(q.ok("query-block"), json!([]));
    // Nothing half-made stays: the same device can be added, and removed.
    let args = json!({"driver": "virtio-blk-device", "drive": "d1", "id": "vdb"});
    assert_eq!(q.execute("device_add", args), json!({"return": {}}));
    assert_eq!(q.ok("query-block")[0]["qdev"], "vdb");
    assert_eq!(
        q.execute("device_del", json!({"id": "vdb"})),
        json!({"return": {}})
    );
    assert_d1_unused(&mut q);
}
