//! net-proc's switches without a broker: `Switches` given datagram
//! socketpairs as ports (one read or write is one frame, as a TAP without
//! packet information) forwards frames on its thread, answers the table
//! queries, and refuses bad requests with QEMU's messages.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use ipc_proto::rocker::{RockerReply, RockerRequest, SwitchSpec};
use std::sync::Arc;

use net_proc::port::Port;
use net_proc::rocker::port::{FdPort, Member};
use net_proc::rocker::Switches;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

fn frame(dst: [u8; 6], src: [u8; 6], seq: u8) -> Vec<u8> {
    let mut f = [dst, src].concat();
    f.extend_from_slice(&[0x88, 0xb5, seq]);
    f.resize(60, 0);
    f
}

/// The host ends of `n` ports, and the switch ends to hand over.
fn wires(n: usize) -> (Vec<UnixDatagram>, Vec<OwnedFd>) {
    let mut host = Vec::new();
    let mut switch = Vec::new();
    for _ in 0..n {
        let (h, s) = UnixDatagram::pair().unwrap();
        h.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        host.push(h);
        switch.push(OwnedFd::from(s));
    }
    (host, switch)
}

/// Hands `fds` out as the ports a switch asks for, in order.
fn given(fds: Vec<OwnedFd>) -> impl FnMut(&str) -> Result<Member, String> {
    let mut fds = fds.into_iter();
    move |id| {
        fds.next()
            .map(|fd| Member::Fd(Arc::new(FdPort::new(fd)) as Arc<dyn Port>))
            .ok_or_else(|| format!("netdev '{id}' not found"))
    }
}

fn recv(h: &UnixDatagram) -> Option<u8> {
    let mut buf = [0u8; 128];
    h.recv(&mut buf).ok().map(|_| buf[14])
}

fn spec(name: &str, ports: usize) -> SwitchSpec {
    SwitchSpec {
        name: name.into(),
        id: 1,
        ports: (0..ports).map(|i| format!("p{i}")).collect(),
        ageing_secs: 300,
    }
}

#[test]
fn a_switch_forwards_between_its_ports_and_shows_what_it_learned() {
    let mut sw = Switches::default();
    let (host, fds) = wires(3);
    assert_eq!(
        sw.handle(RockerRequest::Create(spec("sw1", 3)), &mut given(fds))
            .unwrap(),
        RockerReply::Done
    );
    host[0].send(&frame(B, A, 1)).unwrap();
    assert_eq!((recv(&host[1]), recv(&host[2])), (Some(1), Some(1)));
    host[1].send(&frame(A, B, 2)).unwrap();
    assert_eq!(recv(&host[0]), Some(2));
    assert_eq!(recv(&host[2]), None);
    let flows = match sw
        .handle(
            RockerRequest::Flows {
                name: "sw1".into(),
                tbl_id: Some(50),
            },
            &mut given(Vec::new()),
        )
        .unwrap()
    {
        RockerReply::Flows(f) => f,
        other => panic!("{other:?}"),
    };
    let learned: Vec<_> = flows
        .iter()
        .filter(|f| f.mask.eth_dst.is_none())
        .map(|f| (f.key.eth_dst.unwrap(), f.hits))
        .collect();
    assert_eq!(learned, vec![(A, 1), (B, 0)]);
    let ports = sw
        .handle(
            RockerRequest::Ports { name: "sw1".into() },
            &mut given(Vec::new()),
        )
        .unwrap();
    assert!(matches!(ports, RockerReply::Ports(p) if p.len() == 3 && p.iter().all(|p| p.link_up)));
    let groups = sw
        .handle(
            RockerRequest::Groups {
                name: "sw1".into(),
                group_type: Some(4),
            },
            &mut given(Vec::new()),
        )
        .unwrap();
    assert!(matches!(groups, RockerReply::Groups(g) if g.len() == 1));
    sw.handle(
        RockerRequest::Destroy { name: "sw1".into() },
        &mut given(Vec::new()),
    )
    .unwrap();
    // Its ports are closed with it.
    assert!(host[0].send(&frame(B, A, 3)).is_err());
}

#[test]
fn bad_switch_requests_are_refused() {
    let mut sw = Switches::default();
    let e = sw
        .handle(
            RockerRequest::Ports {
                name: "nope".into(),
            },
            &mut given(Vec::new()),
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "rocker nope not found");
    let (_host, fds) = wires(1);
    let e = sw
        .handle(RockerRequest::Create(spec("sw1", 2)), &mut given(fds))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "switch sw1: port 'p1': netdev 'p1' not found"
    );
    let (_host, fds) = wires(1);
    sw.handle(RockerRequest::Create(spec("sw1", 1)), &mut given(fds))
        .unwrap();
    let (_host2, fds) = wires(1);
    let e = sw
        .handle(RockerRequest::Create(spec("sw1", 1)), &mut given(fds))
        .unwrap_err();
    assert_eq!(e.to_string(), "sw1 already exists");
    let (_host3, fds) = wires(1);
    let e = sw
        .handle(RockerRequest::Create(spec("sw2", 1)), &mut given(fds))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "switch sw2: port 'p0': already a port of switch sw1"
    );
}

#[test]
fn each_switch_gets_its_own_internal_vlan() {
    let mut sw = Switches::default();
    let (_h1, fds) = wires(1);
    sw.handle(RockerRequest::Create(spec("a", 1)), &mut given(fds))
        .unwrap();
    let (_h2, fds) = wires(1);
    // Another netdev: a netdev is a port of one switch only.
    let mut b = spec("b", 1);
    b.ports = vec!["q0".into()];
    sw.handle(RockerRequest::Create(b), &mut given(fds))
        .unwrap();
    let vlan = |sw: &mut Switches, name: &str| match sw
        .handle(
            RockerRequest::Groups {
                name: name.into(),
                group_type: Some(0),
            },
            &mut given(Vec::new()),
        )
        .unwrap()
    {
        RockerReply::Groups(g) => g[0].vlan_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(vlan(&mut sw, "a"), Some(0xf00));
    assert_eq!(vlan(&mut sw, "b"), Some(0xf01));
}
