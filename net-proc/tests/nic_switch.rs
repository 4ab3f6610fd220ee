//! Guest NICs as rocker switch ports (`x-switch-port` netdevs), through
//! the VM-less harness: two harness devices are the NICs of two switch
//! port netdevs of one switch in the spawned, sandboxed net-proc; frames
//! go from one's tx ring to the other's rx ring, the switch learns both
//! MACs, and after a SIGKILL the broker's replay brings it all back.
//! The TAP case needs root.

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::tap::{seq_of, unique_name, HostTap, PacketSocket};
use common::{spawn, Worker};
use ipc_proto::net::{NetReply, NetRequest, NicSpec};
use ipc_proto::rocker::{Flow, PortState, RockerReply, RockerRequest, SwitchSpec};
use vhost_user_harness::net::HDR_LEN;
use vhost_user_harness::{NetDevice, NetOptions};

const A: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x0a];
const B: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x0b];
const H: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
const BCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE: u16 = 0x88b5;
const T: Duration = Duration::from_secs(5);

/// A frame `src` → `dst` with sequence number `seq`, `len` bytes.
fn frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = [dst, src].concat();
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u32 ^ seq) as u8);
    }
    f
}

fn add_port(w: &mut Worker, id: &str) {
    let req = NetRequest::AddSwitchPortNetdev { id: id.into() };
    assert_eq!(w.call(req, &[]), Ok(NetReply::Done));
}

fn add_nic(w: &mut Worker, id: &str, netdev: &str, mac: [u8; 6]) {
    let spec = NicSpec {
        id: id.into(),
        netdev: netdev.into(),
        mac,
        queue_pairs: 1,
        mtu: Some(9000),
        link_up: true,
    };
    assert_eq!(w.call(NetRequest::AddNic(spec), &[]), Ok(NetReply::Done));
}

fn rocker(w: &mut Worker, req: RockerRequest) -> RockerReply {
    match w.call(NetRequest::Rocker(req), &[]) {
        Ok(NetReply::Rocker(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn create_switch(w: &mut Worker, ports: &[&str]) {
    let spec = SwitchSpec {
        name: "sw1".into(),
        id: 1,
        ports: ports.iter().map(|p| p.to_string()).collect(),
        ageing_secs: 300,
    };
    assert_eq!(rocker(w, RockerRequest::Create(spec)), RockerReply::Done);
}

/// The learned entries of the bridging table: (MAC, port, hits).
fn learned(w: &mut Worker) -> Vec<([u8; 6], u32, u64)> {
    let req = RockerRequest::Flows {
        name: "sw1".into(),
        tbl_id: Some(50),
    };
    let RockerReply::Flows(flows) = rocker(w, req) else {
        panic!("not flows")
    };
    let mut v: Vec<_> = flows
        .iter()
        .filter(|f: &&Flow| f.mask.eth_dst.is_none())
        .map(|f| {
            let port = f.action.group_id.unwrap_or(0) & 0xffff;
            (f.key.eth_dst.unwrap_or_default(), port, f.hits)
        })
        .collect();
    v.sort_unstable();
    v
}

fn ports(w: &mut Worker) -> Vec<PortState> {
    match rocker(w, RockerRequest::Ports { name: "sw1".into() }) {
        RockerReply::Ports(p) => p,
        other => panic!("{other:?}"),
    }
}

/// Two switch ports with a NIC each on switch `sw1`, the switch created
/// first (`switch_first`, the command line's order) or last (a replay's).
fn two_nics(switch_first: bool) -> (Worker, NetDevice, NetDevice) {
    let mut w = spawn();
    add_port(&mut w, "p0");
    add_port(&mut w, "p1");
    if switch_first {
        create_switch(&mut w, &["p0", "p1"]);
    }
    add_nic(&mut w, "na", "p0", A);
    add_nic(&mut w, "nb", "p1", B);
    if !switch_first {
        create_switch(&mut w, &["p0", "p1"]);
    }
    let (a, b) = connect(&mut w);
    (w, a, b)
}

fn connect(w: &mut Worker) -> (NetDevice, NetDevice) {
    let mut a = w.attach("na", NetOptions::default());
    let mut b = w.attach("nb", NetOptions::default());
    a.fill_rx(0).unwrap();
    b.fill_rx(0).unwrap();
    (a, b)
}

/// Sends `f` on `from` and returns the first frame `to` receives (its
/// vnet header included).
fn across(from: &mut NetDevice, to: &mut NetDevice, f: &[u8]) -> Vec<u8> {
    from.send(0, f).unwrap();
    let got = to.recv_timeout(0, T).expect("the frame crossed the switch");
    got.into_iter().next().unwrap()
}

#[test]
fn two_nics_on_one_switch_exchange_frames_both_ways_and_both_macs_are_learned() {
    let (mut w, mut a, mut b) = two_nics(true);
    // A broadcast floods to B; B answers A's MAC (learned by then).
    let got = across(&mut a, &mut b, &frame(BCAST, A, 1, 60));
    assert_eq!(&got[HDR_LEN..], &frame(BCAST, A, 1, 60)[..]);
    assert_eq!(&got[..10], &[0u8; 10], "no offloads cross a switch port");
    let got = across(&mut b, &mut a, &frame(A, B, 2, 1514));
    assert_eq!(&got[HDR_LEN..], &frame(A, B, 2, 1514)[..]);
    // A jumbo frame spans several merged rx buffers.
    let got = across(&mut a, &mut b, &frame(B, A, 3, 9014));
    assert_eq!(&got[HDR_LEN..], &frame(B, A, 3, 9014)[..]);
    assert_eq!(learned(&mut w), vec![(A, 1, 1), (B, 2, 1)]);
    let p = ports(&mut w);
    assert!(p.len() == 2 && p.iter().all(|p| p.link_up), "{p:?}");
    let (sa, sb) = (w.stats("na"), w.stats("nb"));
    assert_eq!((sa.tx_packets, sa.rx_packets), (2, 1));
    assert_eq!((sb.tx_packets, sb.rx_packets), (1, 2));
}

#[test]
fn a_burst_larger_than_the_ring_arrives_in_order_or_is_dropped_and_counted() {
    let (mut w, mut a, mut b) = two_nics(false);
    let opts = NetOptions::default();
    let n = u32::from(opts.queue_size) * 3;
    let hdr = [0u8; HDR_LEN];
    let mut queued = 0u32;
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    while (queued < n || seen.len() as u64 + w.stats("nb").rx_dropped < u64::from(n))
        && Instant::now() < deadline
    {
        a.reap_tx(0).unwrap();
        while queued < n && a.queue_tx(0, &hdr, &frame(B, A, queued, 64)).is_ok() {
            queued += 1;
        }
        a.kick_tx(0).unwrap();
        for f in b.poll_rx(0).unwrap() {
            seen.extend(seq_of(&f[HDR_LEN..]));
        }
    }
    let dropped = w.stats("nb").rx_dropped;
    assert_eq!(
        seen.len() as u64 + dropped,
        u64::from(n),
        "every frame accounted"
    );
    assert!(
        seen.windows(2).all(|p| p[0] < p[1]),
        "in order, no duplicate"
    );
    assert!(!seen.is_empty());
}

#[test]
fn set_link_off_on_a_nic_port_drops_its_frames_and_shows_the_port_down() {
    let (mut w, mut a, mut b) = two_nics(true);
    across(&mut a, &mut b, &frame(BCAST, A, 1, 60));
    let req = NetRequest::SetLink {
        id: "nb".into(),
        up: false,
    };
    assert_eq!(w.call(req, &[]), Ok(NetReply::Done));
    assert_eq!(
        ports(&mut w).iter().map(|p| p.link_up).collect::<Vec<_>>(),
        vec![true, false]
    );
    a.send(0, &frame(B, A, 2, 60)).unwrap();
    assert!(b.recv_timeout(0, Duration::from_millis(300)).is_err());
    assert_eq!(w.stats("nb").rx_dropped, 1);
    let req = NetRequest::SetLink {
        id: "nb".into(),
        up: true,
    };
    assert_eq!(w.call(req, &[]), Ok(NetReply::Done));
    let got = across(&mut a, &mut b, &frame(B, A, 3, 60));
    assert_eq!(seq_of(&got[HDR_LEN..]), Some(3));
}

/// The broker's replay after a SIGKILL (switch ports, NICs, switch),
/// then both frontends reconnect: the switch forwards again both ways
/// and relearns the MACs.
#[test]
fn after_each_sigkill_the_replayed_switch_forwards_between_the_nics_again() {
    let (mut w, mut a, mut b) = two_nics(true);
    across(&mut a, &mut b, &frame(BCAST, A, 0, 60));
    for round in 1..=3u32 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = w.child.wait();
        w = spawn();
        add_port(&mut w, "p0");
        add_port(&mut w, "p1");
        add_nic(&mut w, "na", "p0", A);
        add_nic(&mut w, "nb", "p1", B);
        create_switch(&mut w, &["p0", "p1"]);
        a.reconnect(w.connection("na")).unwrap();
        b.reconnect(w.connection("nb")).unwrap();
        let seq = round * 10;
        let got = across(&mut a, &mut b, &frame(BCAST, A, seq, 60));
        assert_eq!(seq_of(&got[HDR_LEN..]), Some(seq), "round {round}");
        let got = across(&mut b, &mut a, &frame(A, B, seq + 1, 60));
        assert_eq!(seq_of(&got[HDR_LEN..]), Some(seq + 1), "round {round}");
        let macs: Vec<_> = learned(&mut w).iter().map(|l| (l.0, l.1)).collect();
        assert_eq!(macs, vec![(A, 1), (B, 2)], "round {round}");
    }
}

/// A NIC port and a TAP port on one switch: the switch thread writes the
/// TAP's frames into the NIC's rx ring, the NIC's tx worker writes the
/// NIC's frames into the TAP.
#[test]
fn a_nic_port_and_a_tap_port_on_one_switch_carry_frames_both_ways() {
    let tap = HostTap::create(&unique_name("nsw"), 1, true);
    let sock = PacketSocket::bind(&tap.name);
    let mut w = spawn();
    add_port(&mut w, "p0");
    w.add_tap("t1", &tap.dup_fds(), true);
    create_switch(&mut w, &["p0", "t1"]);
    add_nic(&mut w, "na", "p0", A);
    let mut a = w.attach("na", NetOptions::default());
    a.fill_rx(0).unwrap();
    a.send(0, &frame(BCAST, A, 5, 100)).unwrap();
    let deadline = Instant::now() + T;
    let out = loop {
        let f = sock.recv(Duration::from_millis(200));
        if let Some(f) = f.filter(|f| seq_of(f) == Some(5)) {
            break f;
        }
        assert!(Instant::now() < deadline, "nothing out of the TAP");
    };
    assert_eq!(out, frame(BCAST, A, 5, 100));
    sock.send(&frame(A, H, 6, 100));
    let got = a.recv_timeout(0, T).unwrap();
    assert_eq!(&got[0][HDR_LEN..], &frame(A, H, 6, 100)[..]);
    // (The TAP's own frames, IPv6 neighbour discovery, may be learned too.)
    let l = learned(&mut w);
    assert!(l.contains(&(A, 1, 1)) && l.contains(&(H, 2, 0)), "{l:?}");
}

#[test]
fn switch_port_netdevs_refuse_fds_a_second_nic_and_several_queue_pairs() {
    let mut w = spawn();
    add_port(&mut w, "p0");
    let (x, _y) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let e = w
        .call(
            NetRequest::AddSwitchPortNetdev { id: "p1".into() },
            &[x.as_fd()],
        )
        .unwrap_err();
    assert_eq!(e.desc, "netdev 'p1': a switch port takes no fds");
    let mut spec = NicSpec {
        id: "na".into(),
        netdev: "p0".into(),
        mac: A,
        queue_pairs: 2,
        mtu: None,
        link_up: true,
    };
    let e = w.call(NetRequest::AddNic(spec.clone()), &[]).unwrap_err();
    assert_eq!(
        e.desc,
        "NIC 'na': switch port netdev 'p0' has one queue pair, not 2"
    );
    spec.queue_pairs = 1;
    assert_eq!(
        w.call(NetRequest::AddNic(spec.clone()), &[]),
        Ok(NetReply::Done)
    );
    spec.id = "nb".into();
    let e = w.call(NetRequest::AddNic(spec), &[]).unwrap_err();
    assert_eq!(e.desc, "netdev 'p0' is used by NIC 'na'");
    w.ping();
}
