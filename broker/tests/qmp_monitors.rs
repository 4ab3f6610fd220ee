//! QMP monitors in QEMU's spellings: `-qmp` with QEMU's `wait=on` default
//! for a server (the guest runs only once the first client connected),
//! the legacy `server,nowait`, and `-chardev socket,...,server=on` with
//! `-mon chardev=,mode=control` on a path or on an inherited listening
//! fd (libvirt's way). Needs /dev/kvm.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{broker_pid, children, Bulkhead, Qmp, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

fn has_vcpu_proc(pid: u32) -> bool {
    children(pid).iter().any(|(_, c)| c == "vcpu-proc")
}

#[test]
fn qmp_server_without_wait_holds_the_guest_until_the_first_client() {
    common::require_kvm();
    let dir = TempDir::new();
    let sock = dir.0.join("q.sock");
    let child = Command::new(BIN)
        .args(["-qmp", &format!("unix:{},server=on", sock.display())])
        .args(["-serial", "null"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < common::TIMEOUT, "socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!has_vcpu_proc(pid), "the guest started before any client");
    let (mut q, greeting) = Qmp::connect(&sock);
    assert!(greeting["QMP"].is_object());
    q.negotiate();
    assert_eq!(q.ok("query-status")["status"], "running");
    assert!(has_vcpu_proc(pid));
    q.ok("quit");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "waiting for connection on: disconnected:unix:{},server=on",
            sock.display()
        )),
        "{err}"
    );
}

#[test]
fn legacy_server_nowait_spelling_starts_at_once() {
    let dir = TempDir::new();
    let sock = dir.0.join("legacy.sock");
    let b = Bulkhead::start(&["-qmp", &format!("unix:{},server,nowait", sock.display())]);
    // Had `nowait` been read as wait=on, the broker would still be
    // waiting on the legacy socket and never greet on its other one.
    assert_eq!(b.client().ok("query-status")["status"], "running");
    assert!(has_vcpu_proc(broker_pid(&b)));
    let (mut q, _) = Qmp::connect(&sock);
    q.negotiate();
    assert_eq!(q.ok("query-status")["status"], "running");
}

#[test]
fn chardev_server_with_mon_is_a_qmp_monitor() {
    let dir = TempDir::new();
    let sock = dir.0.join("mon.sock");
    let b = Bulkhead::start(&[
        "-chardev",
        &format!("socket,id=mon0,path={},server=on,wait=off", sock.display()),
        "-mon",
        "chardev=mon0,mode=control",
    ]);
    let (mut q, _) = Qmp::connect(&sock);
    q.negotiate();
    assert_eq!(q.ok("query-status")["running"], true);
    drop(b);
}

#[test]
fn chardev_on_an_inherited_listening_fd_is_a_qmp_monitor() {
    common::require_kvm();
    let dir = TempDir::new();
    let path = dir.0.join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // Let the broker inherit it, as libvirt passes its monitor socket.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let sock = dir.0.join("q.sock");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ])
    .args(["-serial", "null"])
    .args([
        "-chardev",
        &format!("socket,id=charmonitor,fd={fd},server=on,wait=off"),
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
    ])
    .stdin(Stdio::null());
    let b = Bulkhead::start_with(&mut cmd, sock, TempDir::new());
    drop(listener);
    let (mut q, _) = Qmp::connect(&path);
    q.negotiate();
    assert_eq!(q.ok("query-status")["running"], true);
    drop(b);
}

#[test]
fn monitors_bulkhead_lacks_are_refused() {
    for (args, msg) in [
        (
            &["-monitor", "vc"][..],
            "bulkhead: -monitor: 'vc': only unix:PATH sockets are supported",
        ),
        (
            &[
                "-chardev",
                "socket,id=m,path=/tmp/x,server=on",
                "-mon",
                "chardev=m,mode=readline",
            ][..],
            "bulkhead: -mon: chardev 'm': bulkhead's human monitor socket does not hold the guest",
        ),
        (
            &[
                "-chardev",
                "socket,id=m,host=127.0.0.1,port=4444,server=on,wait=off",
                "-mon",
                "chardev=m",
            ][..],
            "bulkhead: -mon: chardev 'm': bulkhead's monitors listen on Unix sockets (path=) only",
        ),
        (
            &["-mon", "chardev=nope"][..],
            "bulkhead: -mon: chardev \"nope\" not found",
        ),
        (
            &["-chardev", "socket,id=m,path=/tmp/x,server=on,wait=off"][..],
            "bulkhead: -chardev: server chardev 'm' is used by no -mon",
        ),
        (
            &[
                "-chardev",
                "socket,id=m,fd=0,server=on,wait=off",
                "-mon",
                "chardev=m",
            ][..],
            "bulkhead: chardev: socket: fd=0 is not a listening Unix socket",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["-serial", "null"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(msg), "{args:?}: {err}");
    }
}
