//! net-proc's vhost-user-net backend end to end through the VM-less
//! harness: the spawned, sandboxed worker gets a real host TAP's fd; the
//! host side is an AF_PACKET socket on that TAP. Needs root.

mod common;

use std::time::Duration;

use common::tap::{frame, seq_of, unique_name, HostTap, PacketSocket};
use common::{spawn, MAC};
use ipc_proto::net::{NetReply, NetRequest};
use vhost_user_harness::net::{F_MQ, F_OFFLOADS, HDR_LEN};
use vhost_user_harness::ring::{RawDesc, F_NEXT, F_WRITE};
use vhost_user_harness::NetOptions;

const T: Duration = Duration::from_secs(5);
const SRC: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];

/// Frames the host sees within a short wait, by sequence number.
fn host_seqs(sock: &PacketSocket, want: usize) -> Vec<u32> {
    let mut seen = Vec::new();
    while seen.len() < want {
        match sock.recv(Duration::from_secs(2)) {
            Some(f) => seen.extend(seq_of(&f)),
            None => break,
        }
    }
    seen
}

/// NIC `nic0`'s counters once `pred` holds (queue workers count right
/// after the guest or the TAP saw the frame), or after 5 s.
fn stats_until(
    w: &mut common::Worker,
    pred: impl Fn(&ipc_proto::net::NicStats) -> bool,
) -> ipc_proto::net::NicStats {
    let deadline = std::time::Instant::now() + T;
    loop {
        let st = w.stats("nic0");
        if pred(&st) || std::time::Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Setup {
    _tap: HostTap,
    sock: PacketSocket,
    worker: common::Worker,
}

fn setup(tag: &str, queues: usize) -> Setup {
    let tap = HostTap::create(&unique_name(tag), queues, true);
    let sock = PacketSocket::bind(&tap.name);
    let mut worker = spawn();
    worker.add_tap("tap0", &tap.dup_fds(), true);
    worker.add_nic("nic0", "tap0", queues as u16);
    Setup {
        _tap: tap,
        sock,
        worker,
    }
}

#[test]
fn frames_sent_by_the_guest_come_out_of_the_tap_in_order() {
    let mut s = setup("tx", 1);
    let mut dev = s.worker.attach("nic0", NetOptions::default());
    for seq in 0..200 {
        dev.send(0, &frame(MAC, seq, 60 + (seq as usize % 1400)))
            .unwrap();
    }
    let seen = host_seqs(&s.sock, 200);
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    let st = stats_until(&mut s.worker, |st| st.tx_packets >= 200);
    assert_eq!(st.tx_packets, 200);
    assert_eq!(st.bad_chains, 0);
}

#[test]
fn frames_written_to_the_tap_arrive_in_rx_with_a_vnet_header_small_and_merged() {
    let mut s = setup("rx", 1);
    let mut dev = s.worker.attach("nic0", NetOptions::default());
    assert_ne!(dev.features() & vhost_user_harness::net::F_MRG_RXBUF, 0);
    dev.fill_rx(0).unwrap();
    // 9000 bytes need five 2 KiB buffers: merged.
    let sizes = [60usize, 1514, 9014];
    for (i, &len) in sizes.iter().enumerate() {
        s.sock.send(&frame(SRC, i as u32, len));
    }
    let mut got = Vec::new();
    while got.len() < sizes.len() {
        got.extend(dev.recv(0).unwrap());
    }
    for (i, f) in got.iter().enumerate() {
        let hdr = &f[..HDR_LEN];
        let body = &f[HDR_LEN..];
        assert_eq!(body, &frame(SRC, i as u32, sizes[i])[..], "frame {i}");
        let nbuf = u16::from_le_bytes([hdr[10], hdr[11]]);
        assert_eq!(
            usize::from(nbuf),
            (sizes[i] + HDR_LEN).div_ceil(2048),
            "frame {i}"
        );
    }
    assert_eq!(
        stats_until(&mut s.worker, |st| st.rx_packets >= 3).rx_packets,
        3
    );
}

#[test]
fn config_space_holds_mac_link_and_mtu_and_the_guest_mac_write_is_reported() {
    let mut s = setup("cfg", 1);
    let mut dev = s.worker.attach("nic0", NetOptions::default());
    let c = dev.config(12).unwrap();
    assert_eq!(&c[..6], &MAC);
    assert_eq!(c[6] & 1, 1);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
    let new = [0x52, 0x54, 0, 1, 2, 3];
    dev.set_config(0, &new).unwrap();
    assert_eq!(&dev.config(6).unwrap()[..], &new);
    s.worker.ping();
    let deadline = std::time::Instant::now() + T;
    while !s.worker.events.iter().any(|e| {
        matches!(e, ipc_proto::net::NetEvent::MacChanged { id, mac } if id == "nic0" && *mac == new)
    }) {
        assert!(std::time::Instant::now() < deadline, "{:?}", s.worker.events);
        std::thread::sleep(Duration::from_millis(20));
        s.worker.ping();
    }
    // Other fields are read-only: refused, the connection stays.
    assert!(dev.set_config(6, &[0, 0]).is_err());
    assert_eq!(&dev.config(6).unwrap()[..], &new);
}

#[test]
fn link_down_stops_traffic_both_ways_and_link_up_resumes_it() {
    let mut s = setup("link", 1);
    let mut dev = s.worker.attach("nic0", NetOptions::default());
    dev.fill_rx(0).unwrap();
    let req = NetRequest::SetLink {
        id: "nic0".into(),
        up: false,
    };
    assert_eq!(s.worker.call(req, &[]), Ok(NetReply::Done));
    assert!(!dev.link_up().unwrap());
    for seq in 0..10 {
        dev.send(0, &frame(MAC, seq, 100)).unwrap();
        s.sock.send(&frame(SRC, seq, 100));
    }
    assert!(host_seqs(&s.sock, 1).is_empty());
    assert!(dev.recv_timeout(0, Duration::from_millis(500)).is_err());
    let st = stats_until(&mut s.worker, |st| {
        st.tx_dropped >= 10 && st.rx_dropped >= 10
    });
    assert_eq!((st.tx_packets, st.rx_packets), (0, 0));
    assert_eq!((st.tx_dropped, st.rx_dropped), (10, 10));
    let req = NetRequest::SetLink {
        id: "nic0".into(),
        up: true,
    };
    assert_eq!(s.worker.call(req, &[]), Ok(NetReply::Done));
    assert!(dev.link_up().unwrap());
    dev.send(0, &frame(MAC, 77, 100)).unwrap();
    assert_eq!(host_seqs(&s.sock, 1), vec![77]);
    s.sock.send(&frame(SRC, 78, 100));
    let got = dev.recv(0).unwrap();
    assert_eq!(seq_of(&got[0][HDR_LEN..]), Some(78));
}

#[test]
fn rx_without_buffers_drops_and_counts_while_tx_carries_on() {
    let mut s = setup("exh", 1);
    let mut dev = s.worker.attach("nic0", NetOptions::default());
    // No rx buffers offered.
    for seq in 0..20 {
        s.sock.send(&frame(SRC, seq, 200));
    }
    dev.send(0, &frame(MAC, 5, 100)).unwrap();
    assert_eq!(host_seqs(&s.sock, 1), vec![5]);
    let deadline = std::time::Instant::now() + T;
    while s.worker.stats("nic0").rx_dropped < 20 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    dev.fill_rx(0).unwrap();
    s.sock.send(&frame(SRC, 100, 200));
    let got = dev.recv(0).unwrap();
    assert_eq!(seq_of(&got[0][HDR_LEN..]), Some(100));
}

/// An IPv4/UDP frame from `MAC` to port 9999 with `payload`, its UDP
/// checksum left for the device (the pseudo-header sum in the field).
fn udp_needing_csum(payload: &[u8]) -> ([u8; HDR_LEN], Vec<u8>) {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    // Pseudo-header sum (not complemented), as a driver leaves it.
    let mut ph: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + udp_len as u32;
    while ph > 0xffff {
        ph = (ph & 0xffff) + (ph >> 16);
    }
    f.extend_from_slice(&1234u16.to_be_bytes());
    f.extend_from_slice(&9999u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&(ph as u16).to_be_bytes());
    f.extend_from_slice(payload);
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: UDP header
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: UDP checksum
    (hdr, f)
}

#[test]
fn offloads_are_negotiated_and_a_partial_checksum_frame_reaches_the_tap() {
    let mut s = setup("off", 1);
    let ip = PacketSocket::bind_proto(&s._tap.name, 0x0800);
    let mut opts = NetOptions::default();
    opts.features |= F_OFFLOADS;
    let mut dev = s.worker.attach("nic0", opts);
    assert_eq!(dev.features() & F_OFFLOADS, F_OFFLOADS);
    let (hdr, f) = udp_needing_csum(b"offloaded checksum");
    dev.send_with(0, &hdr, &f).unwrap();
    let got = ip
        .recv(T)
        .expect("the partial-checksum frame reaches the TAP");
    assert_eq!(&got[42..], b"offloaded checksum");
    let st = stats_until(&mut s.worker, |st| st.tx_packets >= 1);
    assert_eq!((st.tx_packets, st.tx_dropped), (1, 0));
}

#[test]
fn multiqueue_pairs_each_carry_traffic_over_a_multiqueue_tap() {
    let mut s = setup("mq", 2);
    let mut opts = NetOptions {
        queue_pairs: 2,
        ..NetOptions::default()
    };
    opts.features |= F_MQ;
    let mut dev = s.worker.attach("nic0", opts);
    assert_ne!(dev.features() & F_MQ, 0);
    for seq in 0..50 {
        dev.send((seq % 2) as usize, &frame(MAC, seq, 80)).unwrap();
    }
    let mut seen = host_seqs(&s.sock, 50);
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

/// Every malformed chain on tx and rx is refused and counted; the worker
/// stays up and the queues keep working.
#[test]
fn malicious_chains_never_crash_net_proc_and_traffic_continues() {
    let mut s = setup("evil", 1);
    let mut dev = s.worker.attach("nic0", NetOptions::default());
    let slot = dev.slot_addr(1, 0);
    let big = dev.mem().size() + 4096;
    let d = |addr: u64, len: u32, flags: u16, next: u16| RawDesc {
        addr,
        len,
        flags,
        next,
    };
    let tx_chains: Vec<Vec<(u16, RawDesc)>> = vec![
        vec![(0, d(slot, 0, 0, 0))],            // zero length
        vec![(0, d(slot, 4, 0, 0))],            // shorter than the header
        vec![(0, d(slot, 100, F_WRITE, 0))],    // write-only on tx
        vec![(0, d(big, 100, 0, 0))],           // out of bounds
        vec![(0, d(u64::MAX - 10, 100, 0, 0))], // wraps around
        vec![(0, d(slot, 100, F_NEXT, 1)), (1, d(slot, 100, F_NEXT, 0))], // loop
        vec![(0, d(slot, 100, F_NEXT, 999))],   // next out of the table
        vec![(0, d(slot, 70_000, 0, 0))],       // larger than any frame
    ];
    for (i, c) in tx_chains.iter().enumerate() {
        dev.submit_raw(1, c, 0).unwrap();
        let used = dev
            .used(1, T)
            .unwrap_or_else(|e| panic!("tx chain {i}: {e}"));
        assert_eq!(used, vec![(0, 0)], "tx chain {i}");
    }
    s.sock.send(&frame(SRC, 1, 100));
    let rslot = dev.slot_addr(0, 0);
    let rx_chains: Vec<Vec<(u16, RawDesc)>> = vec![
        vec![(0, d(rslot, 2048, 0, 0))],     // device-readable on rx
        vec![(0, d(big, 2048, F_WRITE, 0))], // out of bounds
        vec![(0, d(rslot, 2048, F_WRITE | F_NEXT, 0))], // loop onto itself
    ];
    for (i, c) in rx_chains.iter().enumerate() {
        dev.submit_raw(0, c, 0).unwrap();
        s.sock.send(&frame(SRC, 10 + i as u32, 100));
        let used = dev
            .used(0, T)
            .unwrap_or_else(|e| panic!("rx chain {i}: {e}"));
        assert_eq!(used, vec![(0, 0)], "rx chain {i}");
    }
    s.worker.ping();
    let st = s.worker.stats("nic0");
    assert_eq!(st.bad_chains, (tx_chains.len() + rx_chains.len()) as u64);
    assert_eq!(st.tx_packets, 0);
}

#[test]
fn a_corrupt_avail_index_does_not_hang_the_queue_worker() {
    let mut s = setup("idx", 1);
    let mut dev = s.worker.attach("nic0", NetOptions::default());
    // Publish far more heads than the ring holds.
    for _ in 0..300 {
        let _ = dev.submit_raw(1, &[], 0);
    }
    std::thread::sleep(Duration::from_millis(200));
    s.worker.ping();
    assert!(s.worker.stats("nic0").bad_chains > 0);
}

#[test]
fn sigkill_then_replay_and_reconnect_resumes_traffic() {
    let tap = HostTap::create(&unique_name("kill"), 1, true);
    let sock = PacketSocket::bind(&tap.name);
    let mut worker = spawn();
    worker.add_tap("tap0", &tap.dup_fds(), true);
    worker.add_nic("nic0", "tap0", 1);
    let mut dev = worker.attach("nic0", NetOptions::default());
    dev.fill_rx(0).unwrap();
    dev.send(0, &frame(MAC, 1, 100)).unwrap();
    assert_eq!(host_seqs(&sock, 1), vec![1]);
    for round in 0..3u32 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = worker.child.wait();
        // The broker's replay: the same TAP fds, the same NIC, a new pair.
        worker = spawn();
        worker.add_tap("tap0", &tap.dup_fds(), true);
        worker.add_nic("nic0", "tap0", 1);
        dev.reconnect(worker.connection("nic0")).unwrap();
        let seq = 100 + round;
        dev.send(0, &frame(MAC, seq, 100)).unwrap();
        assert_eq!(host_seqs(&sock, 1), vec![seq], "round {round}");
        sock.send(&frame(SRC, seq, 100));
        let got = dev.recv(0).unwrap();
        assert_eq!(seq_of(&got[0][HDR_LEN..]), Some(seq), "round {round}");
    }
}

#[test]
fn bad_requests_get_clear_errors_and_the_worker_stays() {
    let mut w = spawn();
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::os::fd::AsFd;
    let r = w.call(
        NetRequest::AddTapNetdev {
            id: "t".into(),
            vnet_hdr: true,
        },
        &[a.as_fd()],
    );
    assert_eq!(r.unwrap_err().desc, "netdev 't': fd is not a TAP device");
    let r = w.call(
        NetRequest::AddTapNetdev {
            id: "t".into(),
            vnet_hdr: true,
        },
        &[],
    );
    assert_eq!(
        r.unwrap_err().desc,
        "netdev 't': a TAP netdev needs at least one fd"
    );
    let tap = HostTap::create(&unique_name("err"), 1, false);
    let r = w.call(
        NetRequest::AddTapNetdev {
            id: "t".into(),
            vnet_hdr: true,
        },
        &[tap.fds[0].as_fd()],
    );
    assert_eq!(
        r.unwrap_err().desc,
        "netdev 't': TAP was opened without IFF_VNET_HDR"
    );
    w.add_tap("t", &tap.dup_fds(), false);
    w.add_nic("n", "t", 1);
    let r = w.call(NetRequest::RemoveNetdev { id: "t".into() }, &[]);
    assert_eq!(r.unwrap_err().desc, "netdev 't' is used by NIC 'n'");
    let r = w.call(NetRequest::QueryStats { id: "zz".into() }, &[]);
    assert_eq!(r.unwrap_err().desc, "NIC 'zz' not found");
    let r = w.call(NetRequest::AttachNicConnection { id: "n".into() }, &[]);
    assert_eq!(r.unwrap_err().desc, "NIC 'n': no connected socket passed");
    assert_eq!(
        w.call(NetRequest::RemoveNic { id: "n".into() }, &[]),
        Ok(NetReply::Done)
    );
    assert_eq!(
        w.call(NetRequest::RemoveNetdev { id: "t".into() }, &[]),
        Ok(NetReply::Done)
    );
    w.ping();
}

#[test]
fn a_tap_without_vnet_header_carries_bare_frames() {
    let tap = HostTap::create(&unique_name("bare"), 1, false);
    let sock = PacketSocket::bind(&tap.name);
    let mut w = spawn();
    w.add_tap("t", &tap.dup_fds(), false);
    w.add_nic("n", "t", 1);
    let mut opts = NetOptions::default();
    opts.features |= F_OFFLOADS;
    let mut dev = w.attach("n", opts);
    assert_eq!(
        dev.features() & F_OFFLOADS,
        0,
        "no offloads without a vnet header"
    );
    dev.fill_rx(0).unwrap();
    dev.send(0, &frame(MAC, 3, 100)).unwrap();
    let f = sock.recv(T).unwrap();
    assert_eq!(f, frame(MAC, 3, 100));
    sock.send(&frame(SRC, 4, 100));
    let got = dev.recv(0).unwrap();
    assert_eq!(&got[0][..HDR_LEN - 2], &[0u8; HDR_LEN - 2]);
    assert_eq!(&got[0][HDR_LEN..], &frame(SRC, 4, 100)[..]);
}

/// A frontend's handler of the backend channel that counts
/// CONFIG_CHANGE_MSGs.
#[derive(Default)]
struct ConfigChanges(u32);

impl vhost::vhost_user::VhostUserFrontendReqHandlerMut for ConfigChanges {
    fn handle_config_change(&mut self) -> vhost::vhost_user::HandlerResult<u64> {
        self.0 += 1;
        Ok(0)
    }
}

type BackendChannel = vhost::vhost_user::FrontendReqHandler<std::sync::Mutex<ConfigChanges>>;

fn link_bit(fe: &mut vhost::vhost_user::Frontend) -> bool {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::VhostUserFrontend;
    let (_, c) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    c[6] & 1 != 0
}

/// The guest learns of a link change: the config space's STATUS changes
/// and the frontend gets CONFIG_CHANGE_MSG on its backend channel (which
/// it turns into a config interrupt).
#[test]
fn set_link_sends_config_change_on_the_backend_channel_with_the_new_status() {
    use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures as P};
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::VhostBackend;
    let mut s = setup("chan", 1);
    let mut fe = vhost::vhost_user::Frontend::from_stream(s.worker.connection("nic0"), 2);
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    fe.set_features(offered).unwrap();
    let p = fe.get_protocol_features().unwrap();
    assert!(p.contains(P::BACKEND_REQ), "{p:?}");
    assert!(
        !p.contains(P::INFLIGHT_SHMFD),
        "a net backend keeps no inflight region"
    );
    fe.set_protocol_features(P::CONFIG | P::REPLY_ACK | P::BACKEND_REQ)
        .unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let counts = std::sync::Arc::new(std::sync::Mutex::new(ConfigChanges::default()));
    let mut channel = BackendChannel::new(counts.clone()).unwrap();
    fe.set_backend_request_fd(&channel.get_tx_raw_fd()).unwrap();
    assert!(link_bit(&mut fe));
    for (n, up) in [(1, false), (2, true)] {
        let req = NetRequest::SetLink {
            id: "nic0".into(),
            up,
        };
        assert_eq!(s.worker.call(req, &[]), Ok(NetReply::Done));
        channel.handle_request().unwrap();
        assert_eq!(counts.lock().unwrap().0, n);
        assert_eq!(link_bit(&mut fe), up);
    }
    // Setting the state it already has sends nothing more.
    let req = NetRequest::SetLink {
        id: "nic0".into(),
        up: true,
    };
    assert_eq!(s.worker.call(req, &[]), Ok(NetReply::Done));
    s.worker.ping();
    assert_eq!(counts.lock().unwrap().0, 2);
}

/// 20 SIGKILLs while the guest sends: after each restart (replay +
/// reconnect) traffic resumes; the host sees every sequence number at most
/// once and every frame intact — only loss inside the kill windows.
#[test]
fn twenty_sigkills_under_traffic_lose_frames_but_never_duplicate_or_corrupt() {
    let tap = HostTap::create(&unique_name("chaos"), 1, true);
    let sock = PacketSocket::bind(&tap.name);
    let mut worker = spawn();
    worker.add_tap("tap0", &tap.dup_fds(), true);
    worker.add_nic("nic0", "tap0", 1);
    let mut dev = worker.attach("nic0", NetOptions::default());
    let mut seq = 0u32;
    let mut seen = std::collections::HashMap::new();
    let record = |sock: &PacketSocket, seen: &mut std::collections::HashMap<u32, u32>| {
        while let Some(f) = sock.recv(Duration::from_millis(300)) {
            let Some(s) = seq_of(&f) else { continue };
            assert_eq!(
                f,
                frame(MAC, s, 60 + (s as usize % 500)),
                "frame {s} corrupted"
            );
            *seen.entry(s).or_insert(0) += 1;
        }
    };
    for round in 0..20 {
        // A burst, then the kill while part of it may still be in flight.
        for _ in 0..40 {
            let hdr = [0u8; HDR_LEN];
            let f = frame(MAC, seq, 60 + (seq as usize % 500));
            if dev.queue_tx(0, &hdr, &f).is_ok() {
                seq += 1;
            }
        }
        dev.kick_tx(0).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = worker.child.wait();
        worker = spawn();
        worker.add_tap("tap0", &tap.dup_fds(), true);
        worker.add_nic("nic0", "tap0", 1);
        dev.reconnect(worker.connection("nic0")).unwrap();
        // Traffic resumes: a marker frame gets through.
        let marker = seq;
        dev.send(0, &frame(MAC, marker, 60 + (marker as usize % 500)))
            .unwrap();
        seq += 1;
        record(&sock, &mut seen);
        assert!(
            seen.contains_key(&marker),
            "round {round}: no traffic after the restart"
        );
        dev.reap_tx(0).unwrap();
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "duplicated: {dup:?}");
    assert!(seen.keys().all(|s| *s < seq));
    eprintln!("{} of {seq} frames through 20 kills", seen.len());
    // Most frames got through; the rest were lost in the kill windows.
    assert!(seen.len() as u32 > seq / 2, "{} of {seq}", seen.len());
}
