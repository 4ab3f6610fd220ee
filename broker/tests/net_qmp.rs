//! Netdevs and NICs over QMP and the command line, in `prelaunch` (`-S`):
//! `-netdev tap` / `netdev_add` (the broker opens /dev/net/tun, or takes a
//! `getfd` fd) start net-proc and hand it the TAP; `virtio-net-device`
//! creates its NIC there with QEMU's default MACs; `query-rx-filter`,
//! `set_link`, `netdev_del` and their errors as QEMU's; a SIGKILLed
//! net-proc is restarted with its TAPs and NICs replayed. Needs root and
//! /dev/kvm.

mod common;

use std::time::{Duration, Instant};

use common::{broker_pid, children, Bulkhead, Qmp};
use serde_json::{json, Value};

const EXITED: &str = "__org.bulkhead_WORKER_EXITED";
const RESTARTED: &str = "__org.bulkhead_WORKER_RESTARTED";

fn tap_name(tag: &str) -> String {
    format!("bhq{tag}{}", std::process::id() % 100_000)
}

fn net_proc(b: &Bulkhead) -> Option<u32> {
    children(broker_pid(b))
        .into_iter()
        .find(|(_, c)| c == "net-proc")
        .map(|(p, _)| p)
}

/// True if process `pid` holds an fd on /dev/net/tun.
fn holds_tun(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l == std::path::Path::new("/dev/net/tun"))
            })
        })
        .unwrap_or(false)
}

/// A persistent TAP made by the test (as `ip tuntap add NAME mode tap`
/// does): the running broker keeps no CAP_NET_ADMIN, so `netdev_add`
/// attaches to an existing TAP, as an unprivileged QEMU does. Removed on
/// drop.
struct PersistentTap(String);

impl PersistentTap {
    fn new(name: &str) -> Self {
        set_persist(&open_tap(name), true);
        PersistentTap(name.to_owned())
    }
}

impl Drop for PersistentTap {
    fn drop(&mut self) {
        // Best effort: the TAP goes once nothing holds it.
        if let Some(fd) = try_open_tap(&self.0) {
            let _ = try_set_persist(&fd, false);
        }
    }
}

fn set_persist(fd: &std::os::fd::OwnedFd, on: bool) {
    assert!(
        try_set_persist(fd, on),
        "TUNSETPERSIST: {}",
        std::io::Error::last_os_error()
    );
}

fn try_set_persist(fd: &std::os::fd::OwnedFd, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETPERSIST takes its flag by value.
    unsafe { libc::ioctl(fd.as_raw_fd(), 0x4004_54cb as _, libc::c_ulong::from(on)) >= 0 }
}

/// net-proc under the broker runs sandboxed: seccomp filter, no new
/// privileges, no capabilities (it enters the sandbox after its handshake).
fn assert_sandboxed(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if st.contains("Seccomp:\t2") {
            assert!(st.contains("NoNewPrivs:\t1"), "{st}");
            assert!(st.contains("CapEff:\t0000000000000000"), "{st}");
            return;
        }
        assert!(Instant::now() < deadline, "net-proc not sandboxed: {st}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn iface_exists(name: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{name}")).exists()
}

fn ok(q: &mut Qmp, name: &str, args: Value) -> Value {
    let r = q.execute(name, args);
    r.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{name} failed: {r}"))
}

fn err(r: &Value) -> (String, String) {
    Qmp::error_of(r)
}

#[test]
fn netdev_and_nic_in_prelaunch_with_qemu_macs_rx_filter_and_errors() {
    let tap = tap_name("a");
    let _t = PersistentTap::new(&tap);
    let tb = PersistentTap::new(&tap_name("b"));
    let tc = PersistentTap::new(&tap_name("c"));
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    assert!(net_proc(&b).is_none(), "no net-proc before a netdev");
    let r = q.execute(
        "netdev_add",
        json!({"type": "tap", "id": "n0", "ifname": tap, "script": "no", "downscript": "no"}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert!(iface_exists(&tap));
    let pid = net_proc(&b).expect("net-proc started for the TAP");
    assert!(holds_tun(pid), "net-proc holds the TAP fd");
    assert_sandboxed(pid);
    let r = q.execute(
        "netdev_add",
        json!({"type": "tap", "id": "n0", "ifname": tap}),
    );
    assert_eq!(err(&r).1, "Duplicate ID 'n0'");
    ok(
        &mut q,
        "netdev_add",
        json!({"type": "tap", "id": "n1", "ifname": tb.0}),
    );
    ok(
        &mut q,
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "n0", "id": "nic0"}),
    );
    ok(
        &mut q,
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "n1", "id": "nic1",
        "mac": "52:54:00:aa:bb:cc"}),
    );
    let r = q.execute(
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "n0", "id": "nic2"}),
    );
    assert_eq!(
        err(&r).1,
        "Property 'virtio-net-device.netdev' can't take value 'n0', it's in use"
    );
    let r = q.execute(
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "n9", "id": "nic3"}),
    );
    assert_eq!(
        err(&r).1,
        "Property 'virtio-net-device.netdev' can't find value 'n9'"
    );
    let f = q.ok("query-rx-filter");
    let f = f.as_array().unwrap();
    assert_eq!(f.len(), 2);
    assert_eq!(f[0]["name"], "nic0");
    assert_eq!(f[0]["main-mac"], "52:54:00:12:34:56");
    assert_eq!(f[1]["main-mac"], "52:54:00:aa:bb:cc");
    assert_eq!(f[0]["promiscuous"], true);
    assert_eq!(f[0]["vlan"], "all");
    assert_eq!(f[0]["vlan-table"].as_array().unwrap().len(), 4096);
    assert_eq!(f[0]["vlan-table"][0], 4095);
    assert_eq!(f[0]["broadcast-allowed"], false);
    let r = q.execute("query-rx-filter", json!({"name": "n0"}));
    assert_eq!(err(&r).1, "net client(n0) isn't a NIC");
    let r = q.execute("query-rx-filter", json!({"name": "zz"}));
    assert_eq!(err(&r).1, "invalid net client name: zz");
    let r = q.execute("set_link", json!({"name": "zz", "up": false}));
    assert_eq!(
        err(&r),
        ("DeviceNotFound".into(), "Device 'zz' not found".into())
    );
    ok(&mut q, "set_link", json!({"name": "nic0", "up": false}));
    ok(&mut q, "set_link", json!({"name": "n1", "up": false}));
    let r = q.execute("netdev_del", json!({"id": "zz"}));
    assert_eq!(
        err(&r),
        ("DeviceNotFound".into(), "Device 'zz' not found".into())
    );
    let r = q.execute("netdev_del", json!({"id": "nic0"}));
    assert_eq!(
        err(&r),
        ("DeviceNotFound".into(), "Device 'nic0' not found".into())
    );
    let r = q.execute("netdev_del", json!({"id": "n0"}));
    assert!(err(&r).1.contains("in use by device 'nic0'"), "{r}");
    ok(&mut q, "device_del", json!({"id": "nic0"}));
    ok(&mut q, "netdev_del", json!({"id": "n0"}));
    let f = q.ok("query-rx-filter");
    assert_eq!(f.as_array().unwrap().len(), 1);
    // A NIC added now takes the first free default MAC again.
    ok(
        &mut q,
        "netdev_add",
        json!({"type": "tap", "id": "n2", "ifname": tc.0}),
    );
    ok(
        &mut q,
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "n2", "id": "nic4"}),
    );
    let f = q.execute("query-rx-filter", json!({"name": "nic4"}));
    assert_eq!(f["return"][0]["main-mac"], "52:54:00:12:34:56");
}

#[test]
fn bad_netdevs_get_qemu_messages() {
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    let r = q.execute(
        "netdev_add",
        json!({"type": "tap", "id": "n1", "fd": "nofd"}),
    );
    assert_eq!(err(&r).1, "File descriptor named 'nofd' has not been found");
    let r = q.execute(
        "netdev_add",
        json!({"type": "tap", "id": "1bad", "ifname": "x"}),
    );
    assert_eq!(err(&r).1, "Parameter 'id' expects an identifier");
    let r = q.execute(
        "netdev_add",
        json!({"type": "vhost-user", "id": "n3", "chardev": "nochr"}),
    );
    assert_eq!(err(&r).1, "chardev \"nochr\" not found");
    let r = q.execute(
        "netdev_add",
        json!({"type": "tap", "id": "n4", "ifname": "0123456789abcdefg"}),
    );
    assert!(
        err(&r).1.starts_with("could not configure /dev/net/tun"),
        "{r}"
    );
    // Still serving.
    q.ok("query-status");
}

/// An `x-switch-port` takes only `id`, and a NIC on one no
/// `-device rocker` lists is refused rather than left on an unplugged
/// wire.
#[test]
fn a_switch_port_netdev_takes_no_options_and_no_nic_outside_a_switch() {
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    let r = q.execute(
        "netdev_add",
        json!({"type": "x-switch-port", "id": "s0", "ifname": "t"}),
    );
    assert_eq!(err(&r).1, "Invalid parameter 'ifname'");
    ok(
        &mut q,
        "netdev_add",
        json!({"type": "x-switch-port", "id": "s0"}),
    );
    let r = q.execute(
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "s0", "id": "nic0"}),
    );
    assert_eq!(
        err(&r).1,
        "Property 'virtio-net-device.netdev' can't take value 's0': x-switch-port netdev \
         's0' is not a port of any -device rocker"
    );
    ok(&mut q, "netdev_del", json!({"id": "s0"}));
}

#[test]
fn netdev_add_takes_a_tap_fd_passed_with_getfd() {
    let b = Bulkhead::start(&["-S"]);
    let mut q = b.client();
    let name = tap_name("fd");
    let fd = open_tap(&name);
    use std::os::fd::AsFd;
    let r = q.execute_with_fds("getfd", json!({"fdname": "tapfd"}), &[fd.as_fd()]);
    assert_eq!(r, json!({"return": {}}));
    ok(
        &mut q,
        "netdev_add",
        json!({"type": "tap", "id": "n0", "fd": "tapfd"}),
    );
    ok(
        &mut q,
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "n0", "id": "nic0"}),
    );
    let pid = net_proc(&b).unwrap();
    assert!(holds_tun(pid));
    // The name was consumed, as in QEMU.
    let r = q.execute(
        "netdev_add",
        json!({"type": "tap", "id": "n1", "fd": "tapfd"}),
    );
    assert_eq!(
        err(&r).1,
        "File descriptor named 'tapfd' has not been found"
    );
}

/// A TAP opened by the test, as a management layer would.
fn open_tap(name: &str) -> std::os::fd::OwnedFd {
    try_open_tap(name)
        .unwrap_or_else(|| panic!("TUNSETIFF {name}: {}", std::io::Error::last_os_error()))
}

fn try_open_tap(name: &str) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: open(2) of a constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: just opened, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags: u16 = 0x0002 | 0x1000 | 0x4000;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes the 40-byte ifreq.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), 0x4004_54ca as _, req.as_mut_ptr()) };
    (rc >= 0).then_some(fd)
}

#[test]
fn sigkilled_net_proc_is_restarted_with_its_taps_and_nics_replayed() {
    let tap = tap_name("k");
    let b = Bulkhead::start(&[
        "-S",
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        "-device",
        "virtio-net-device,netdev=n0,id=nic0,mac=52:54:00:01:02:03",
    ]);
    let mut q = b.client();
    assert!(iface_exists(&tap));
    for round in 0..3 {
        let pid = net_proc(&b).expect("net-proc runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let e = q.event(EXITED);
        assert_eq!(e["data"]["worker"], "net", "round {round}");
        assert_eq!(e["data"]["action"], "restart");
        let e = q.event(RESTARTED);
        assert_eq!(e["data"]["worker"], "net");
        let deadline = Instant::now() + Duration::from_secs(5);
        let new = loop {
            match net_proc(&b) {
                Some(p) if p != pid => break p,
                _ => assert!(Instant::now() < deadline),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(holds_tun(new), "the TAP was replayed into net-proc");
        assert_sandboxed(new);
        // The NIC was replayed: net-proc knows it (set_link reaches it).
        ok(
            &mut q,
            "set_link",
            json!({"name": "nic0", "up": round % 2 == 0}),
        );
        let f = q.execute("query-rx-filter", json!({"name": "nic0"}));
        assert_eq!(f["return"][0]["main-mac"], "52:54:00:01:02:03");
    }
}
