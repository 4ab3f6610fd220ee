//! The host-side rocker switch end to end: a broker started with
//! `-device rocker` over three TAPs the test creates; host processes write
//! frames into one TAP (an AF_PACKET socket bound to it) and read them from
//! the others. Unknown destinations are flooded, learned ones go to their
//! port only; the OF-DPA tables, groups and ports answer in QEMU's shapes
//! (compared with `qemu-system-x86_64 -device rocker` on the same TAPs);
//! net-proc SIGKILLed is restarted with the switch replayed and forwards
//! again. Needs root (TAPs) and /dev/kvm (the harness).

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{broker_pid, children, qemu, Bulkhead};
use serde_json::{json, Value};

const ETHERTYPE: u16 = 0x88b5;
const A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const C: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 3];

/// A TAP interface, created up and removed on drop.
struct Tap(String);

impl Tap {
    fn new(tag: &str, i: usize) -> Tap {
        let name = format!("rk{}{tag}{i}", std::process::id() % 100_000);
        let run = |args: &[&str]| {
            let s = Command::new("ip").args(args).status().expect("ip");
            assert!(s.success(), "ip {args:?}");
        };
        run(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        // No IPv6 chatter of the host on the test's wires.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        run(&["link", "set", &name, "up"]);
        Tap(name)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// An AF_PACKET socket bound to a TAP interface: what it sends leaves the
/// host through the TAP (into the switch); what the switch writes into the
/// TAP arrives here.
struct Wire(OwnedFd);

impl Wire {
    fn new(tap: &Tap) -> Wire {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // Protocol 0: nothing is received until the bind below names the
        // interface (else frames of every interface queue up meanwhile).
        // SAFETY: plain socket creation; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(tap.0.clone()).unwrap();
        // SAFETY: name is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        Wire(fd)
    }

    fn send(&self, dst: [u8; 6], src: [u8; 6], seq: u32) {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.resize(60, 0);
        // SAFETY: f is a valid buffer of f.len() bytes.
        let n = unsafe { libc::send(self.0.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
    }

    /// The sequence numbers of the test's frames that arrived from the
    /// switch within `wait` (frames this socket sent itself are skipped).
    fn received(&self, wait: Duration) -> Vec<u32> {
        let mut seqs = Vec::new();
        let until = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_micros().div_ceil(1000) as i32) };
            if n <= 0 {
                return seqs;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // The interface went down meanwhile: reported once.
                assert_eq!(e.raw_os_error(), Some(libc::ENETDOWN), "{e}");
                continue;
            }
            let f = &buf[..n as usize];
            if from.sll_pkttype != libc::PACKET_OUTGOING
                && f.len() >= 18
                && f[12..14] == ETHERTYPE.to_be_bytes()
            {
                seqs.push(u32::from_be_bytes([f[14], f[15], f[16], f[17]]));
            }
        }
    }
}

/// Long enough for a frame to cross the switch; frames expected nowhere
/// are checked over the same window.
const CROSS: Duration = Duration::from_millis(400);

fn switch_args(taps: &[Tap]) -> Vec<String> {
    let mut args = vec!["-machine".to_owned(), "none".to_owned()];
    let mut dev = format!("rocker,name=sw1,len-ports={}", taps.len());
    for (i, t) in taps.iter().enumerate() {
        args.push("-netdev".into());
        args.push(format!(
            "tap,id=p{i},ifname={},script=no,downscript=no",
            t.0
        ));
        dev.push_str(&format!(",ports[{i}]=p{i}"));
    }
    args.push("-device".into());
    args.push(dev);
    args
}

fn net_procs(b: &Bulkhead) -> Vec<u32> {
    children(broker_pid(b))
        .into_iter()
        .filter(|(_, c)| c == "net-proc")
        .map(|(p, _)| p)
        .collect()
}

/// The `return` of `name`, failing on an error.
fn ret(q: &mut common::Qmp, name: &str, args: Value) -> Value {
    let r = q.execute(name, args);
    r.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{name} failed: {r}"))
}

/// Bridging entries: (eth-dst, out port from the group id, hits).
fn learned(q: &mut common::Qmp) -> Vec<(String, u64, u64)> {
    let flows = ret(
        q,
        "query-rocker-of-dpa-flows",
        json!({"name": "sw1", "tbl-id": 50}),
    );
    let mut out = Vec::new();
    for f in flows.as_array().unwrap() {
        assert_eq!(f["key"]["tbl-id"], 50);
        if f["mask"].get("eth-dst").is_none() {
            out.push((
                f["key"]["eth-dst"].as_str().unwrap().to_owned(),
                f["action"]["group-id"].as_u64().unwrap() & 0xffff,
                f["hits"].as_u64().unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn switch_floods_unknown_forwards_learned_shows_tables_and_survives_sigkill() {
    let taps: Vec<Tap> = (0..3).map(|i| Tap::new("s", i)).collect();
    let args = switch_args(&taps);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Bulkhead::start(&argv);
    let mut q = b.client();
    let w: Vec<Wire> = taps.iter().map(Wire::new).collect();

    // Unknown unicast and broadcast: flooded to every other port.
    w[0].send(B, A, 1);
    assert_eq!(w[1].received(CROSS), vec![1]);
    assert_eq!(w[2].received(Duration::ZERO), vec![1]);
    w[2].send([0xff; 6], C, 2);
    assert_eq!(w[0].received(CROSS), vec![2]);
    assert_eq!(w[1].received(Duration::ZERO), vec![2]);
    // A and C are learned: B's answer to A goes to port 1 only.
    w[1].send(A, B, 3);
    assert_eq!(w[0].received(CROSS), vec![3]);
    assert_eq!(w[2].received(CROSS), Vec::<u32>::new());
    w[0].send(B, A, 4);
    w[0].send(C, A, 5);
    assert_eq!(w[1].received(CROSS), vec![4]);
    assert_eq!(w[2].received(CROSS), vec![5]);

    let l = learned(&mut q);
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let entries: Vec<(String, u64)> = l.iter().map(|(m, p, _)| (m.clone(), *p)).collect();
    assert_eq!(entries, vec![(mac(A), 1), (mac(B), 2), (mac(C), 3)]);
    for (m, _, hits) in &l {
        assert!(*hits > 0, "{m} has no hits: {l:?}");
    }

    let groups = ret(
        &mut q,
        "query-rocker-of-dpa-groups",
        json!({"name": "sw1", "type": 0}),
    );
    let ids: Vec<u64> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![0x0f00_0001, 0x0f00_0002, 0x0f00_0003]);
    assert_eq!(
        groups[0],
        json!({"id": 0x0f00_0001, "type": 0, "vlan-id": 3840, "pport": 1, "out-pport": 1, "pop-vlan": 1})
    );
    let flood = ret(
        &mut q,
        "query-rocker-of-dpa-groups",
        json!({"name": "sw1", "type": 4}),
    );
    assert_eq!(
        flood,
        json!([{"id": 0x4f00_0000u32, "type": 4, "vlan-id": 3840, "index": 0,
                "group-ids": [0x0f00_0001, 0x0f00_0002, 0x0f00_0003]}])
    );
    let ingress = ret(
        &mut q,
        "query-rocker-of-dpa-flows",
        json!({"name": "sw1", "tbl-id": 0}),
    );
    assert_eq!(
        ingress[0]["key"],
        json!({"priority": 1, "tbl-id": 0, "in-pport": 0})
    );
    assert_eq!(ingress[0]["mask"], json!({"in-pport": 4_294_901_760u64}));
    assert_eq!(ingress[0]["action"], json!({"goto-tbl": 10}));
    assert!(ingress[0]["hits"].as_u64().unwrap() >= 5);
    let ports = ret(&mut q, "query-rocker-ports", json!({"name": "sw1"}));
    let names: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["sw1.1", "sw1.2", "sw1.3"]);
    assert_eq!(
        ports[0],
        json!({"name": "sw1.1", "enabled": true, "link-up": true, "speed": 10000,
               "duplex": "full", "autoneg": "off"})
    );
    assert_eq!(
        ret(&mut q, "query-rocker", json!({"name": "sw1"})),
        json!({"name": "sw1", "id": 1_327_446_905_938u64, "ports": 3})
    );
    let e =
        q.request(json!({"execute": "query-rocker-of-dpa-flows", "arguments": {"name": "nope"}}));
    assert_eq!(
        common::Qmp::error_of(&e),
        ("GenericError".into(), "rocker nope not found".into())
    );

    // net-proc SIGKILLed: restarted with the switch, learning from scratch.
    let before = net_procs(&b);
    assert_eq!(before.len(), 1, "{before:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    q.event_where("__org.bulkhead_WORKER_RESTARTED", |d| d["worker"] == "net");
    assert_ne!(net_procs(&b), before);
    assert!(learned(&mut q).is_empty());
    w[0].send(B, A, 6);
    assert_eq!(w[1].received(CROSS), vec![6]);
    assert_eq!(w[2].received(Duration::ZERO), vec![6]);
    w[1].send(A, B, 7);
    assert_eq!(w[0].received(CROSS), vec![7]);
    assert_eq!(w[2].received(CROSS), Vec::<u32>::new());
    assert_eq!(learned(&mut q).len(), 2);

    // A port whose interface is down refuses frames: its link is down
    // until a frame gets through again.
    let link = |q: &mut common::Qmp| -> Vec<bool> {
        ret(q, "query-rocker-ports", json!({"name": "sw1"}))
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["link-up"].as_bool().unwrap())
            .collect()
    };
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success());
    ip(&["link", "set", &taps[2].0, "down"]);
    w[0].send([0xff; 6], A, 8);
    assert_eq!(w[1].received(CROSS), vec![8]);
    assert_eq!(link(&mut q), vec![true, true, false]);
    ip(&["link", "set", &taps[2].0, "up"]);
    w[0].send([0xff; 6], A, 9);
    assert_eq!(w[2].received(CROSS), vec![9]);
    assert_eq!(link(&mut q), vec![true, true, true]);
}

#[test]
fn switch_and_port_shapes_and_errors_are_qemus() {
    let taps: Vec<Tap> = (0..2).map(|i| Tap::new("q", i)).collect();
    let mut netdevs = Vec::new();
    for (i, t) in taps.iter().enumerate() {
        netdevs.push("-netdev".to_owned());
        netdevs.push(format!(
            "tap,id=p{i},ifname={},script=no,downscript=no",
            t.0
        ));
    }
    let device = r#"{"driver":"rocker","name":"sw1","ports":["p0","p1"]}"#;
    let cmds = [
        json!({"execute": "query-rocker", "arguments": {"name": "sw1"}}),
        json!({"execute": "query-rocker", "arguments": {"name": "nope"}}),
        json!({"execute": "query-rocker-ports", "arguments": {"name": "nope"}}),
        json!({"execute": "query-rocker-of-dpa-flows", "arguments": {"name": "nope"}}),
        json!({"execute": "query-rocker-of-dpa-groups", "arguments": {"name": "nope", "type": 0}}),
        json!({"execute": "query-rocker", "arguments": {}}),
        json!({"execute": "query-rocker", "arguments": {"name": "sw1", "x": 1}}),
    ];
    let ports_cmd = json!({"execute": "query-rocker-ports", "arguments": {"name": "sw1"}});
    let mut qargs: Vec<&str> = vec!["-machine", "q35", "-S", "-nodefaults"];
    qargs.extend(netdevs.iter().map(String::as_str));
    qargs.extend(["-device", device]);
    let mut all = cmds.to_vec();
    all.push(ports_cmd.clone());
    let theirs = qemu::replies(&qargs, &all);
    // QEMU has released the TAPs: the broker takes them.
    let mut bargs: Vec<&str> = vec!["-machine", "none"];
    bargs.extend(netdevs.iter().map(String::as_str));
    bargs.extend(["-device", device]);
    let b = Bulkhead::start(&bargs);
    let mut q = b.client();
    let mut ours = qemu::ours(&mut q, &all);
    assert_eq!(ours[..cmds.len()], theirs[..cmds.len()]);
    // Ports: the same members and types; the names in the reference's
    // form (QEMU 10 says sw1p1); our ports are enabled and up (no guest
    // driver needed to enable them).
    let shape = |v: &Value| -> Vec<Vec<(String, &'static str)>> {
        v["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let mut m: Vec<(String, &'static str)> = p
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| {
                        let t = match v {
                            Value::Bool(_) => "bool",
                            Value::Number(_) => "number",
                            Value::String(_) => "string",
                            _ => "other",
                        };
                        (k.clone(), t)
                    })
                    .collect();
                m.sort();
                m
            })
            .collect()
    };
    let ports = ours.pop().unwrap();
    let qports = &theirs[cmds.len()];
    assert_eq!(shape(&ports), shape(qports));
    assert_eq!(qports["return"][1]["name"], "sw1p2");
    assert_eq!(ports["return"][1]["name"], "sw1.2");
    for (o, t) in ports["return"]
        .as_array()
        .unwrap()
        .iter()
        .zip(qports["return"].as_array().unwrap())
    {
        for k in ["speed", "duplex", "autoneg"] {
            assert_eq!(o[k], t[k]);
        }
    }
}

#[test]
fn bad_rocker_devices_are_refused_with_qemus_messages() {
    common::build_workers();
    let bulkhead = env!("CARGO_BIN_EXE_bulkhead");
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "-device",
                r#"{"driver":"rocker","name":"sw1","ports":["x"]}"#,
            ],
            "Property 'rocker.ports' can't find value 'x'",
        ),
        (
            &[
                "-device",
                r#"{"driver":"rocker","name":"sw1","ports":"p0"}"#,
            ],
            "Invalid parameter type for 'ports', expected: array",
        ),
        (
            &["-device", r#"{"driver":"rocker","name":"sw1","bogus":1}"#],
            "Property 'rocker.bogus' not found",
        ),
    ];
    for (args, msg) in cases {
        let mut qargs = vec!["-machine", "q35", "-S", "-nodefaults", "-display", "none"];
        qargs.extend(args);
        let q = Command::new("qemu-system-x86_64")
            .args(&qargs)
            .output()
            .unwrap();
        let qerr = String::from_utf8_lossy(&q.stderr);
        assert!(qerr.contains(msg), "QEMU said {qerr}");
        let o = Command::new(bulkhead)
            .args(["-machine", "none", "-display", "none"])
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("-device {}: {msg}", args[1])),
            "bulkhead said {err}"
        );
    }
}

#[test]
fn ten_sigkills_of_net_proc_each_leave_a_forwarding_switch() {
    let taps: Vec<Tap> = (0..2).map(|i| Tap::new("k", i)).collect();
    let args = switch_args(&taps);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Bulkhead::start(&argv);
    let mut q = b.client();
    let w: Vec<Wire> = taps.iter().map(Wire::new).collect();
    let mut gaps = Vec::new();
    for round in 0..10u32 {
        let pids = net_procs(&b);
        assert_eq!(pids.len(), 1, "round {round}: {pids:?}");
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // One frame a millisecond until one crosses the new switch (frames
        // sent meanwhile wait in the TAP's queue, up to its length, and
        // cross later).
        let seq = 10_000 * (round + 1);
        let mut got = Vec::new();
        let mut sent = 0;
        while sent < 5000 && got.is_empty() {
            w[0].send([0xff; 6], A, seq + sent);
            sent += 1;
            got = w[1].received(Duration::from_millis(1));
        }
        assert!(
            !got.is_empty(),
            "round {round}: nothing forwarded after the kill"
        );
        gaps.push(killed.elapsed());
        q.event_where("__org.bulkhead_WORKER_RESTARTED", |d| d["worker"] == "net");
        // Only loss: each frame crossed at most once, in order.
        got.extend(w[1].received(CROSS));
        assert!(
            got.windows(2).all(|p| p[0] < p[1]) && got.iter().all(|s| *s < seq + sent),
            "round {round}: {got:?}"
        );
        // Traffic flows both ways on the new worker.
        w[1].send(A, B, seq + 9999);
        assert_eq!(w[0].received(CROSS), vec![seq + 9999], "round {round}");
        assert_eq!(w[1].received(Duration::ZERO), Vec::<u32>::new());
    }
    assert_eq!(
        ret(&mut q, "query-rocker", json!({"name": "sw1"}))["ports"],
        2
    );
    gaps.sort();
    eprintln!(
        "recovery gap (SIGKILL -> first frame forwarded by the new net-proc): median {:?}, max {:?}",
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
}

/// A switch's ports are netdevs of the one netdev layer: a NIC cannot
/// take one, `netdev_del` refuses one, and a free TAP netdev still takes
/// a NIC beside the switch (one net-proc serves both).
#[test]
fn a_switch_port_netdev_is_refused_to_nics_and_netdev_del() {
    let taps: Vec<Tap> = (0..3).map(|i| Tap::new("x", i)).collect();
    let mut args = switch_args(&taps[..2]);
    // A VM in prelaunch (device_add works), not `-machine none`.
    args.drain(..2);
    args.insert(0, "-S".into());
    args.push("-netdev".into());
    args.push(format!(
        "tap,id=n0,ifname={},script=no,downscript=no",
        taps[2].0
    ));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Bulkhead::start(&argv);
    let mut q = b.client();
    let r = q.execute(
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "p0", "id": "nic0"}),
    );
    assert_eq!(
        common::Qmp::error_of(&r).1,
        "Property 'virtio-net-device.netdev' can't take value 'p0', it's in use"
    );
    let r = q.execute("netdev_del", json!({"id": "p1"}));
    assert_eq!(
        common::Qmp::error_of(&r).1,
        "netdev 'p1' is a port of switch 'sw1'"
    );
    ret(
        &mut q,
        "device_add",
        json!({"driver": "virtio-net-device", "netdev": "n0", "id": "nic1"}),
    );
    assert_eq!(
        net_procs(&b).len(),
        1,
        "one net-proc for the switch and the NIC"
    );
    let ports = ret(&mut q, "query-rocker-ports", json!({"name": "sw1"}));
    assert_eq!(ports.as_array().map(Vec::len), Some(2));
}
