//! vcpu-proc's virtio-net frontend with a real guest driver: the
//! `net-loop` guest exchanges frames with an echo NIC (a vhost-user-net
//! backend in this process, `common/net_echo.rs`, with neither a config
//! space nor inflight tracking), sees the MAC the device was given, and
//! carries on after the backend crashes and a new one takes over.
//!
//! Needs /dev/kvm.

mod common;
#[path = "common/net_echo.rs"]
mod net_echo;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::{Opts, Vmm, TIMEOUT};
use ipc_proto::vcpu::{
    FdSlot, VcpuEvent, VcpuReply, VcpuRequest, VhostUserDeviceConfig, VhostUserKind,
};
use net_echo::EchoNic;

/// Pings of a `net-loop` round.
const ROUND: u32 = 50;

/// `net: round N: sent S received R lost L duplicate D corrupt C ...`
/// lines: (N, whether every ping of a full round came back once, intact).
fn rounds(serial: &str) -> Vec<(u64, bool)> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("net: round ")?;
            let (n, counts) = rest.split_once(':')?;
            let full = format!(" sent {ROUND} received {ROUND} lost 0 duplicate 0 corrupt 0 ");
            let clean = counts.contains(&full);
            Some((n.trim().parse().ok()?, clean))
        })
        .collect()
}

/// Waits for a round after round `n` that lost nothing; returns its number.
fn wait_clean_round_after(vmm: &Vmm, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + TIMEOUT * 2;
    loop {
        let text = vmm.serial_text();
        assert!(!text.contains("VERDICT: FAIL"), "{text}");
        if let Some((m, _)) = rounds(&text)
            .into_iter()
            .find(|(m, clean)| *m > n && *clean)
        {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no clean round after {n}:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_net_guest_talks_through_the_virtio_net_frontend_and_survives_a_backend_crash() {
    let mut vmm = Vmm::start(Opts {
        start_paused: true,
        ..Opts::guest("net-loop")
    });
    vmm.create_result.clone().expect("VM created");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let echo = EchoNic::spawn(theirs);
    let attach = VcpuRequest::AttachVhostUser(VhostUserDeviceConfig {
        id: "net0".into(),
        slot: 0,
        kind: VhostUserKind::Net,
        socket: FdSlot(0),
        num_queues: 2,
        queue_size: 256,
        mac: Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
    });
    let r = vmm.request_with_fds(attach, &[ours.as_fd()]);
    assert!(matches!(r, Ok(VcpuReply::Done)), "{r:?}");
    drop(ours);
    assert!(matches!(
        vmm.request(VcpuRequest::Cont),
        Ok(VcpuReply::Done)
    ));
    vmm.wait_serial("mac 52:54:00:12:34:56", TIMEOUT);
    let first = wait_clean_round_after(&vmm, 1);
    assert!(echo.stats.echoed.load(std::sync::atomic::Ordering::Relaxed) >= 50);

    // The backend dies with the guest's traffic in flight.
    echo.crash();
    loop {
        // (Run-state events come first.)
        if let VcpuEvent::VhostUserDisconnected { id, .. } = vmm.next_event() {
            assert_eq!(id, "net0");
            break;
        }
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    let second = EchoNic::spawn(theirs);
    let r = vmm.request_with_fds(
        VcpuRequest::ReconnectVhostUser {
            id: "net0".into(),
            socket: FdSlot(0),
        },
        &[ours.as_fd()],
    );
    assert!(matches!(r, Ok(VcpuReply::Done)), "{r:?}");
    drop(ours);
    // A round that began on the new backend loses nothing.
    let last = rounds(&vmm.serial_text()).last().map_or(first, |(n, _)| *n);
    wait_clean_round_after(&vmm, last + 1);
    second.wait_echoed(50, TIMEOUT);
    let text = vmm.serial_text();
    assert!(!text.contains("corrupt 1"), "{text}");
    eprintln!("{text}");
}
