//! The `net` test guest on a TAP, a host process echoing its frames:
//! first on QEMU's own virtio-net (`-netdev tap -device
//! virtio-net-device`, the reference), then the same scenario on
//! bulkhead (net-proc's vhost-user-net backend behind vcpu-proc's
//! virtio-net frontend). Needs root (TAP devices) and /dev/kvm.

mod common;
mod disk_common;
mod net_common;

use std::process::{Command, Stdio};

use common::{Bulkhead, TempDir};
use disk_common::{guest, SerialLog};
use net_common::frame::{self, Parsed};
use net_common::{link_scenario, nic_rounds, rounds, worker_pid, Echo, Tap, GUEST_MAC};

fn netdev(tap: &Tap) -> String {
    format!("tap,id=n0,ifname={},script=no,downscript=no", tap.name)
}

fn nic() -> String {
    format!("virtio-net-device,netdev=n0,mac={GUEST_MAC},id=nic0")
}

#[test]
fn the_net_guest_exchanges_frames_with_the_host_through_qemus_tap_and_sees_set_link() {
    common::require_kvm();
    let tap = Tap::create("q");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let sock = dir.0.join("q.sock");
    let serial = SerialLog(dir.0.join("serial.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off",
        "-bios",
        "/usr/share/qemu/qboot.rom",
        "-enable-kvm",
        "-m",
        "64",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        // microvm's virtio-mmio transports are legacy unless told.
        "-global",
        "virtio-mmio.force-legacy=false",
        "-kernel",
        &guest("net"),
        "-serial",
        &format!("file:{}", serial.0.display()),
        "-netdev",
        &netdev(&tap),
        "-device",
        &nic(),
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ])
    .stdin(Stdio::null());
    let vm = Bulkhead::start_with(&mut cmd, sock, dir);
    let mut qmp = vm.client();
    link_scenario(&mut qmp, &serial, &echo);
}

#[test]
fn the_net_guest_exchanges_frames_with_the_host_through_bulkheads_tap_and_sees_set_link() {
    let tap = Tap::create("b");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let (vm, serial) = disk_common::start_guest(
        &dir.0,
        "net",
        &["-m", "64", "-netdev", &netdev(&tap), "-device", &nic()],
    );
    let mut qmp = vm.client();
    link_scenario(&mut qmp, &serial, &echo);
}

#[test]
fn a_damaged_test_frame_is_told_from_a_good_one() {
    let mut buf = [0u8; 2048];
    let n = frame::build(&mut buf, [1; 6], [2; 6], frame::PING, 77).unwrap();
    let Parsed::Test(f) = frame::parse(&buf[..n]) else {
        panic!("a good frame does not parse");
    };
    assert_eq!((f.kind, f.seq), (frame::PING, 77));
    assert!(frame::pattern_ok(77, f.data));
    for at in [14, 18, 22, 30, n - 1] {
        let mut bad = buf;
        bad[at] ^= 0x10;
        assert_eq!(
            frame::parse(&bad[..n]),
            Parsed::Corrupt,
            "a flipped bit at {at} went unnoticed"
        );
    }
    // Short frames are padded to 60 bytes.
    let n = frame::build(&mut buf, [1; 6], [2; 6], frame::PONG, 0).unwrap();
    assert!(n >= frame::MIN_FRAME);
}

/// SIGKILLs of net-proc while `net-loop` exchanges frames with the host:
/// after each, traffic resumes by itself (a later round loses nothing),
/// QMP answers throughout, and no frame is ever damaged.
#[test]
fn net_loop_traffic_resumes_after_each_of_twenty_net_proc_kills() {
    const KILLS: usize = 20;
    let tap = Tap::create("c");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let (vm, serial) = disk_common::start_guest(
        &dir.0,
        "net-loop",
        &["-m", "64", "-netdev", &netdev(&tap), "-device", &nic()],
    );
    let broker = vm.child.as_ref().unwrap().id();
    let mut qmp = vm.client();
    let wait_clean_round_after = |n: u64| {
        let deadline = std::time::Instant::now() + disk_common::GUEST_TIMEOUT;
        loop {
            let clean = rounds(&serial).iter().any(|r| {
                r.n > n + 1
                    && r.sent > 0
                    && r.received == r.sent
                    && r.duplicate == 0
                    && r.corrupt == 0
            });
            if clean {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "traffic did not resume after round {n}:\n{}",
                serial.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_clean_round_after(0);
    for kill in 0..KILLS {
        let last = rounds(&serial).last().map_or(0, |r| r.n);
        let pid = worker_pid(broker, "net-proc").expect("net-proc runs");
        disk_common::sigkill(pid);
        assert_eq!(qmp.ok("query-status")["status"], "running", "kill {kill}");
        wait_clean_round_after(last);
    }
    let all = rounds(&serial);
    assert!(all.iter().all(|r| r.corrupt == 0), "{all:?}");
    assert_eq!(echo.counts().corrupt, 0);
    eprintln!(
        "rounds: {}, pings lost in all: {}, duplicated: {}",
        all.len(),
        all.iter().map(|r| r.lost).sum::<u32>(),
        all.iter().map(|r| r.duplicate).sum::<u32>()
    );
}

/// The guest's learned MAC in switch `sw1`'s bridging table: (port, hits).
fn learned_guest(qmp: &mut common::Qmp) -> Option<(u64, u64)> {
    let r = qmp.execute(
        "query-rocker-of-dpa-flows",
        serde_json::json!({"name": "sw1", "tbl-id": 50}),
    );
    let flows = r["return"].as_array().cloned().unwrap_or_default();
    flows
        .iter()
        .find(|f| f["mask"].get("eth-dst").is_none() && f["key"]["eth-dst"] == GUEST_MAC)
        .map(|f| {
            (
                f["action"]["group-id"].as_u64().unwrap_or(0) & 0xffff,
                f["hits"].as_u64().unwrap_or(0),
            )
        })
}

/// A guest NIC as a rocker port: `net-loop`'s NIC on an `x-switch-port`
/// netdev and a TAP (a host process echoing) are the two ports of one
/// switch. Pings cross the switch both ways, the bridging table learns
/// the guest's MAC on port 1 with hits, and after a net-proc SIGKILL the
/// netdevs, the NIC and the switch are replayed and traffic resumes.
#[test]
fn a_guest_nic_and_a_tap_on_one_rocker_switch_exchange_frames_and_survive_a_kill() {
    let tap = Tap::create("r");
    let echo = Echo::start(&tap);
    let dir = TempDir::new();
    let tap_netdev = format!("tap,id=p1,ifname={},script=no,downscript=no", tap.name);
    let (vm, serial) = disk_common::start_guest(
        &dir.0,
        "net-loop",
        &[
            "-m",
            "64",
            "-netdev",
            "x-switch-port,id=n0",
            "-netdev",
            &tap_netdev,
            "-device",
            &nic(),
            "-device",
            "rocker,name=sw1,len-ports=2,ports[0]=n0,ports[1]=p1",
        ],
    );
    let broker = vm.child.as_ref().unwrap().id();
    let mut qmp = vm.client();
    let wait_clean_round_after = |n: u64| {
        let deadline = std::time::Instant::now() + disk_common::GUEST_TIMEOUT;
        loop {
            let clean = rounds(&serial)
                .iter()
                .any(|r| r.n > n + 1 && r.sent > 0 && r.received == r.sent && r.corrupt == 0);
            if clean {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no clean round after round {n}:\n{}",
                serial.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_clean_round_after(0);
    let (port, hits) = learned_guest(&mut qmp).expect("the guest's MAC is learned");
    assert_eq!(port, 1, "learned on the NIC's port");
    assert!(hits > 0, "the echo's frames to the guest hit its entry");
    let last = rounds(&serial).last().map_or(0, |r| r.n);
    let pid = worker_pid(broker, "net-proc").expect("net-proc runs");
    disk_common::sigkill(pid);
    wait_clean_round_after(last);
    assert!(
        learned_guest(&mut qmp).is_some(),
        "relearned after the kill"
    );
    assert_eq!(echo.counts().corrupt, 0);
}

/// The learned entries of switch `sw1`'s bridging table: (MAC, port, hits).
fn learned(qmp: &mut common::Qmp) -> Vec<(String, u64, u64)> {
    let r = qmp.execute(
        "query-rocker-of-dpa-flows",
        serde_json::json!({"name": "sw1", "tbl-id": 50}),
    );
    let mut v: Vec<_> = r["return"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|f| f["mask"].get("eth-dst").is_none())
        .map(|f| {
            (
                f["key"]["eth-dst"].as_str().unwrap_or_default().to_owned(),
                f["action"]["group-id"].as_u64().unwrap_or(0) & 0xffff,
                f["hits"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

/// Two NICs of one guest on one rocker switch (`net-pair`: the NICs
/// ping each other in turns), each on an `x-switch-port` netdev: frames
/// cross the switch both ways ring to ring, the bridging table learns
/// both MACs with hits, `query-rocker-ports` shows both ports up, and
/// after each net-proc SIGKILL the switch ports, NICs and switch are
/// replayed, the NICs reconnect and both directions are clean again.
#[test]
fn two_nics_of_one_guest_on_one_rocker_switch_exchange_frames_and_survive_kills() {
    common::require_kvm();
    const MAC0: &str = "52:54:00:12:34:0a";
    const MAC1: &str = "52:54:00:12:34:0b";
    let dir = TempDir::new();
    let nic0 = format!("virtio-net-device,netdev=s0,mac={MAC0},id=nic0");
    let nic1 = format!("virtio-net-device,netdev=s1,mac={MAC1},id=nic1");
    let (vm, serial) = disk_common::start_guest(
        &dir.0,
        "net-pair",
        &[
            "-m",
            "64",
            "-netdev",
            "x-switch-port,id=s0",
            "-netdev",
            "x-switch-port,id=s1",
            "-device",
            &nic0,
            "-device",
            &nic1,
            "-device",
            "rocker,name=sw1,len-ports=2,ports[0]=s0,ports[1]=s1",
        ],
    );
    let broker = vm.child.as_ref().unwrap().id();
    let mut qmp = vm.client();
    // A round of each NIC after round `n`, every ping answered once.
    let wait_clean_rounds_after = |n: u64| {
        let deadline = std::time::Instant::now() + disk_common::GUEST_TIMEOUT;
        loop {
            let clean = |nic| {
                nic_rounds(&serial, nic)
                    .iter()
                    .any(|r| r.n > n + 1 && r.sent > 0 && r.received == r.sent && r.duplicate == 0)
            };
            if clean(0) && clean(1) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no clean rounds after round {n}:\n{}",
                serial.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_clean_rounds_after(0);
    let l = learned(&mut qmp);
    assert_eq!(
        l.iter()
            .map(|(m, p, _)| (m.as_str(), *p))
            .collect::<Vec<_>>(),
        vec![(MAC0, 1), (MAC1, 2)],
        "both MACs learned on their ports"
    );
    assert!(l.iter().all(|(_, _, hits)| *hits > 0), "{l:?}");
    let ports = qmp.execute("query-rocker-ports", serde_json::json!({"name": "sw1"}));
    let ports = ports["return"].as_array().cloned().unwrap_or_default();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert!(ports.iter().all(|p| p["link-up"] == true), "{ports:?}");
    for _ in 0..3 {
        let last = nic_rounds(&serial, 1).last().map_or(0, |r| r.n);
        let pid = worker_pid(broker, "net-proc").expect("net-proc runs");
        disk_common::sigkill(pid);
        wait_clean_rounds_after(last);
        assert_eq!(learned(&mut qmp).len(), 2, "relearned after the kill");
    }
    let all: Vec<_> = [0, 1]
        .iter()
        .flat_map(|&n| nic_rounds(&serial, n))
        .collect();
    assert!(all.iter().all(|r| r.corrupt == 0), "{all:?}");
}
