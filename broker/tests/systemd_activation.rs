//! The broker under systemd's protocols, end to end: socket activation of
//! the QMP socket through `systemd-socket-activate` (Debian package
//! `systemd`), readiness, status, watchdog pings and stopping on a
//! notification socket the test owns. Needs /dev/kvm.
//!
//! The broker must take its QMP listener from `systemd::listen_fds()` and
//! notify through `systemd::Notifier`; until run.rs does, this test fails
//! with a message saying so.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for any one step before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The worker executables live beside `bulkhead`; `cargo test -p broker`
/// builds only the broker.
fn build_workers() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_bulkhead"));
    let profile_dir = bin
        .parent()
        .expect("bulkhead has a directory")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("profile dir has a parent");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "vcpu-proc", "-p", "block-proc"])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cannot run cargo to build the workers");
    assert!(status.success(), "building vcpu-proc and block-proc failed");
    profile_dir
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Receives notifications until one equals `want` (each datagram may hold
/// several lines); returns everything received.
fn wait_for(notify: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|s| s == want) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {want} notification; got {seen:?}");
        notify.set_read_timeout(Some(left)).unwrap();
        match notify.recv(&mut buf) {
            Ok(n) => seen.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            ),
            Err(e) => panic!("no {want} notification ({e}); got {seen:?}"),
        }
    }
}

#[test]
fn socket_activated_broker_greets_on_the_passed_socket_and_notifies_systemd() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (KVM) and it is missing"
    );
    let activate = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        activate.exists(),
        "needs systemd-socket-activate (package systemd)"
    );
    let worker_dir = build_workers();
    let dir = Dir(std::env::temp_dir().join(format!("bulkhead-act-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let qmp = dir.0.join("vm.qmp");
    let notify_path = dir.0.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    let child = Command::new(activate)
        .arg("-l")
        .arg(&qmp)
        .arg("--fdname=qmp")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=WATCHDOG_USEC=2000000")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["-S", "-serial", "null", "-sandbox", "off", "-worker-dir"])
        .arg(&worker_dir)
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot run systemd-socket-activate");
    let mut child = Killed(child);

    // systemd-socket-activate listens first and starts the broker on the
    // first connection.
    let deadline = Instant::now() + TIMEOUT;
    while !qmp.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            qmp.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stream = UnixStream::connect(&qmp).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    let read = reader.read_line(&mut greeting);
    assert!(
        read.is_ok_and(|n| n > 0) && greeting.contains("\"QMP\""),
        "no QMP greeting on the activated socket (is systemd::listen_fds() \
         wired into run.rs?): {greeting:?}"
    );

    let mut seen = Vec::new();
    wait_for(&notify, "READY=1", &mut seen);
    wait_for(&notify, "WATCHDOG=1", &mut seen);
    assert!(
        seen.iter().any(|s| s.starts_with("STATUS=")),
        "no STATUS= notification: {seen:?}"
    );

    let mut w = stream;
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
        .unwrap();
    wait_for(&notify, "STOPPING=1", &mut seen);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "broker ended with {status}");
}
