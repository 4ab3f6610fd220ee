//! Network interop: net-proc's vhost-user-net backend (`net-proc
//! --standalone`) under QEMU's `-netdev vhost-user` frontend, bulkhead's
//! frontend over the same external backend, and two bulkhead guests on
//! TAPs joined by a Linux bridge. The guests are `net-loop` (rounds of 50
//! pings, answered by the host's echo or by the other guest). Needs root
//! (TAP devices, bridges) and /dev/kvm.

mod common;
mod disk_common;
mod net_common;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Bulkhead, TempDir};
use disk_common::{guest, SerialLog, GUEST_TIMEOUT};
use net_common::frame::{self, Parsed};
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
    wait_rounds(serial, n, 0);
}

/// Waits until `serial` shows `n` rounds in a row with at most `max_lost`
/// pings unanswered each and no duplicate; no round may have seen a
/// damaged frame.
fn wait_rounds(serial: &SerialLog, n: usize, max_lost: u32) {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let all = rounds(serial);
        let clean = all.windows(n).any(|w| {
            w.iter()
                .all(|r| r.sent > 0 && r.received + max_lost >= r.sent && r.duplicate == 0)
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

/// QEMU (microvm, guest RAM in a shared memfd) running `guest_name` with
/// its NIC on `-netdev vhost-user` over the backend's socket `nsock`.
fn start_qemu(dir: TempDir, nsock: &Path, guest_name: &str) -> (Bulkhead, SerialLog) {
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
        &guest(guest_name),
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
    (Bulkhead::start_with(&mut cmd, qmp, dir), serial)
}

#[test]
fn qemus_vhost_user_netdev_runs_the_net_guest_over_standalone_net_proc() {
    common::require_kvm();
    let tap = Tap::create("qi");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let nsock = socket_path(&dir);
    let _backend = Standalone::start(&nsock, &tap);
    let (_vm, serial) = start_qemu(dir, &nsock, "net-loop");
    wait_clean_rounds(&serial, 3);
    assert_echo_saw_pings(&echo, 150);
}

/// The whole `net` scenario (two rounds around `set_link off`/`on`, which
/// QEMU's frontend applies itself) on QEMU over net-proc: verdict PASS.
#[test]
fn the_net_guest_passes_its_link_scenario_on_qemu_over_standalone_net_proc() {
    common::require_kvm();
    let tap = Tap::create("ql");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let nsock = socket_path(&dir);
    let _backend = Standalone::start(&nsock, &tap);
    let (vm, serial) = start_qemu(dir, &nsock, "net");
    let mut qmp = vm.client();
    net_common::link_scenario(&mut qmp, &serial, &echo);
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

/// A Linux bridge joining TAPs, deleted on drop (the TAPs are deleted by
/// their own guards).
struct Bridge {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Bridge {
    /// Bridge `bhbr<pid>` with `taps` as its ports, all up.
    fn join(taps: &[&Tap]) -> Bridge {
        let name = format!("bhbr{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        ip(&["link", "add", "name", &name, "type", "bridge"]);
        let b = Bridge { name };
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", b.name),
            "1",
        );
        for t in taps {
            ip(&["link", "set", &t.name, "master", &b.name]);
            ip(&["link", "set", &t.name, "up"]);
        }
        ip(&["link", "set", &b.name, "up"]);
        b
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// An AF_PACKET socket seeing every frame of `ifname`, both directions.
/// (`ETH_P_ALL`: a socket bound to one EtherType sees nothing of a bridge
/// port, whose frames the bridge takes before protocol handlers.)
fn sniff_socket(ifname: &str) -> OwnedFd {
    net_common::bound_packet_socket(ifname, libc::ETH_P_ALL as u16)
}

/// Pongs seen, by (source, destination) MAC.
type PongCounts = Arc<Mutex<HashMap<([u8; 6], [u8; 6]), usize>>>;

/// Counts the pongs seen on a TAP (both directions), by (source,
/// destination) MAC.
struct PongSniffer {
    stop: Arc<AtomicBool>,
    seen: PongCounts,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PongSniffer {
    fn start(tap: &Tap) -> PongSniffer {
        let fd = sniff_socket(&tap.name);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (st, se) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::SeqCst) {
                // SAFETY: recv into our buffer (the socket has a timeout).
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else {
                    continue;
                };
                if let Parsed::Test(f) = frame::parse(&buf[..n]) {
                    if f.kind == frame::PONG {
                        *se.lock().unwrap().entry((f.src, f.dst)).or_insert(0) += 1;
                    }
                }
            }
        });
        PongSniffer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn pongs(&self, src: [u8; 6], dst: [u8; 6]) -> usize {
        self.seen
            .lock()
            .unwrap()
            .get(&(src, dst))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for PongSniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two bulkhead guests, each on its own TAP, the TAPs in one host bridge
/// and nothing else on it: every ping a guest broadcasts can only be
/// answered by the other guest, so answered rounds on both sides mean
/// frames went both ways through both net-procs and the bridge. A few
/// frames per round may be lost: each guest's receive queue (16 buffers
/// of 1 KiB, long pongs take two) also holds the peer's pings, and a frame
/// that finds no buffer is dropped, as on a wire.
#[test]
fn two_guests_on_taps_in_a_host_bridge_answer_each_others_pings() {
    let tap_a = Tap::create("ba");
    let tap_b = Tap::create("bb");
    let _bridge = Bridge::join(&[&tap_a, &tap_b]);
    let sniffer = PongSniffer::start(&tap_a);
    let start = |tap: &Tap, mac: &str| {
        let dir = TempDir::new();
        let netdev = format!("tap,id=n0,ifname={},script=no,downscript=no", tap.name);
        let nic = format!("virtio-net-device,netdev=n0,mac={mac},id=nic0");
        let (vm, serial) = disk_common::start_guest(
            &dir.0,
            "net-loop",
            &["-m", "64", "-netdev", &netdev, "-device", &nic],
        );
        (vm, serial, dir)
    };
    let (mac_a, mac_b) = (
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        [0x52, 0x54, 0, 0x12, 0x34, 0x57],
    );
    let (_vm_a, serial_a, _dir_a) = start(&tap_a, "52:54:00:12:34:56");
    let (_vm_b, serial_b, _dir_b) = start(&tap_b, "52:54:00:12:34:57");
    wait_rounds(&serial_a, 3, 5);
    wait_rounds(&serial_b, 3, 5);
    // The answers on the wire are the guests' own: B answers A, A answers B,
    // and nothing else answers.
    let (ab, ba) = (sniffer.pongs(mac_b, mac_a), sniffer.pongs(mac_a, mac_b));
    assert!(ab >= 100 && ba >= 100, "pongs B→A {ab}, A→B {ba}");
    let all: usize = sniffer.seen.lock().unwrap().values().sum();
    assert_eq!(all, ab + ba, "{:?}", sniffer.seen.lock().unwrap());
    for (name, serial) in [("A", &serial_a), ("B", &serial_b)] {
        let r = rounds(serial);
        eprintln!(
            "guest {name}: {} rounds, sent {} received {} duplicate {}",
            r.len(),
            r.iter().map(|r| r.sent).sum::<u32>(),
            r.iter().map(|r| r.received).sum::<u32>(),
            r.iter().map(|r| r.duplicate).sum::<u32>()
        );
    }
    eprintln!("pongs on A's TAP: B→A {ab}, A→B {ba}");
}

/// Bad `--standalone` command lines get a clear message and exit status 2.
#[test]
fn standalone_net_proc_refuses_bad_arguments_with_a_clear_message() {
    common::build_workers();
    let bin = Path::new(env!("CARGO_BIN_EXE_bulkhead")).with_file_name("net-proc");
    let dir = TempDir::new();
    let sock = socket_path(&dir);
    let sock = sock.to_str().expect("utf-8 path");
    for (args, says) in [
        (
            vec!["--socket", sock],
            "--socket PATH and --tap IFNAME are required",
        ),
        (
            vec!["--socket", sock, "--tap", "t0", "--mac", "1:2"],
            "--mac 1:2: not a MAC",
        ),
        (
            vec!["--socket", sock, "--tap", "t0", "--queues", "2"],
            "unknown argument --queues",
        ),
        (
            vec!["--socket", "/nonexistent/x.sock", "--tap", "bhzz0"],
            "cannot listen on /nonexistent/x.sock",
        ),
    ] {
        let out = Command::new(&bin)
            .arg("--standalone")
            .args(&args)
            .output()
            .expect("run net-proc");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
