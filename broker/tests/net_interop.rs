//! Network interop: net-proc's vhost-user-net backend (`net-proc
//! --standalone`) under QEMU's `-netdev vhost-user` frontend, bulkhead's
//! frontend over the same external backend, and two bulkhead guests on
//! TAPs joined by a Linux bridge. The guests are `net-loop` (rounds of 50
//! pings, answered by the host's echo or by the other guest). Needs root
//! (TAP devices, bridges) and /dev/kvm.

mod common;
mod disk_common;
mod net_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bulkhead, TempDir};
use disk_common::{guest, SerialLog, GUEST_TIMEOUT};
use net_common::{rounds, Echo, Tap, GUEST_MAC};

/// `net-proc --standalone` serving one NIC on a socket; killed on drop.
struct Standalone {
    child: Child,
}

impl Standalone {
    fn start(sock: &Path, tap: &Tap) -> Standalone {
        common::build_workers();
        let bin = Path::new(env!("CARGO_BIN_EXE_bulkhead")).with_file_name("net-proc");
        let child = Command::new(bin)
            .args(["--standalone", "--socket"])
            .arg(sock)
            .args(["--tap", &tap.name, "--mac", GUEST_MAC])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start net-proc --standalone");
        let mut s = Standalone { child };
        let deadline = Instant::now() + common::TIMEOUT;
        while !sock.exists() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("net-proc --standalone exited: {st}");
            }
            assert!(Instant::now() < deadline, "no socket {}", sock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `serial` shows `n` rounds in a row that lost nothing and
/// saw no duplicate or damaged frame.
fn wait_clean_rounds(serial: &SerialLog, n: usize) {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let all = rounds(serial);
        let clean = all.windows(n).any(|w| {
            w.iter()
                .all(|r| r.sent > 0 && r.received == r.sent && r.duplicate == 0)
        });
        if clean {
            assert!(all.iter().all(|r| r.corrupt == 0), "{all:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} clean rounds:\n{}",
            serial.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks the host's echo saw the guest's pings (frames guest → TAP) and
/// none damaged; the guest's clean rounds prove the answers came back.
fn assert_echo_saw_pings(echo: &Echo, at_least: usize) {
    let c = echo.counts();
    assert!(c.pings >= at_least, "{c:?}");
    assert_eq!(c.corrupt, 0, "{c:?}");
}

fn socket_path(dir: &TempDir) -> PathBuf {
    dir.0.join("net.sock")
}

#[test]
fn qemus_vhost_user_netdev_runs_the_net_guest_over_standalone_net_proc() {
    common::require_kvm();
    let tap = Tap::create("qi");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let nsock = socket_path(&dir);
    let _backend = Standalone::start(&nsock, &tap);
    let qmp = dir.0.join("q.sock");
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off,memory-backend=mem",
        "-bios",
        "/usr/share/qemu/qboot.rom",
        "-enable-kvm",
        "-m",
        "64",
        "-object",
        "memory-backend-memfd,id=mem,size=64M,share=on",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-kernel",
        &guest("net-loop"),
        "-serial",
        &format!("file:{}", serial.0.display()),
        "-chardev",
        &format!("socket,id=c0,path={}", nsock.display()),
        "-netdev",
        "vhost-user,id=n0,chardev=c0",
        "-device",
        &format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
    ])
    .stdin(Stdio::null());
    let _vm = Bulkhead::start_with(&mut cmd, qmp, dir);
    wait_clean_rounds(&serial, 3);
    assert_echo_saw_pings(&echo, 150);
}

#[test]
fn bulkheads_vhost_user_netdev_runs_the_net_guest_over_an_external_net_proc() {
    let tap = Tap::create("bi");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let nsock = socket_path(&dir);
    let _backend = Standalone::start(&nsock, &tap);
    let chardev = format!("socket,id=c0,path={}", nsock.display());
    let nic = format!("virtio-net-device,netdev=n0,mac={GUEST_MAC},id=nic0");
    let (vm, serial) = disk_common::start_guest(
        &dir.0,
        "net-loop",
        &[
            "-m",
            "64",
            "-chardev",
            &chardev,
            "-netdev",
            "vhost-user,id=n0,chardev=c0",
            "-device",
            &nic,
        ],
    );
    wait_clean_rounds(&serial, 3);
    assert_echo_saw_pings(&echo, 150);
    // No net-proc of its own: the NIC is the external backend's.
    let broker = common::broker_pid(&vm);
    assert!(
        net_common::worker_pid(broker, "net-proc").is_none(),
        "the broker started a net-proc for an external backend"
    );
}
