//! vcpu-proc's control channel while a vhost-user backend hangs: a
//! reconnection to a stopped block-proc (SIGSTOP: the connection lands in
//! its listen backlog, nothing answers) runs on a thread of its own, so a
//! `query-status` sent after it is answered at once; the reconnection
//! itself fails at the request deadline, and succeeds on a replacement
//! backend, after which the `blk` guest passes.
//!
//! Needs /dev/kvm and a built block-proc binary (next to this test's target
//! directory, or named by `BULKHEAD_BLOCK_PROC`).

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::block_proc::{connect, disk_config, raw_image, temp_dir, BlockProc};
use common::{Opts, Vmm, TIMEOUT};
use ipc_proto::vcpu::{FdSlot, RunState, VcpuReply, VcpuRequest};
use nix::sys::signal::Signal;

fn reconnect(vmm: &mut Vmm, sock: &UnixStream) -> u64 {
    vmm.send(
        VcpuRequest::ReconnectVhostUser {
            id: "disk0".into(),
            socket: FdSlot(0),
        },
        &[sock.as_fd()],
    )
}

#[test]
fn query_status_answers_while_a_reconnection_waits_for_a_stopped_backend() {
    let dir = temp_dir("vuctl");
    let img = raw_image(&dir.0);
    let sock = dir.0.join("blk.sock");
    let backend = BlockProc::start(&img, &sock);
    let mut vmm = Vmm::start(Opts {
        start_paused: true,
        ..Opts::guest("blk")
    });
    vmm.create_result.clone().expect("VM created");
    let first = connect(&sock);
    let attach = VcpuRequest::AttachVhostUser(disk_config());
    vmm.request_with_fds(attach, &[first.as_fd()])
        .expect("attached");
    drop(first);

    backend.signal(Signal::SIGSTOP);
    let stuck = connect(&sock);
    let rid = reconnect(&mut vmm, &stuck);
    drop(stuck);
    let sid = vmm.send(VcpuRequest::QueryStatus, &[]);
    let Some(status) = vmm.reply_to(sid, Duration::from_secs(2)) else {
        // Unblock the old code before failing.
        backend.signal(Signal::SIGKILL);
        panic!("query-status waited for a reconnection to a stopped backend");
    };
    match status {
        Ok(VcpuReply::Status(s)) => assert_eq!(s.status, RunState::Prelaunch),
        other => panic!("unexpected status reply {other:?}"),
    }
    let r = vmm
        .reply_to(rid, Duration::from_secs(20))
        .expect("the reconnection is answered once its deadline passes");
    assert!(r.is_err(), "{r:?}");

    // A replacement backend takes the device; the guest runs on it.
    backend.signal(Signal::SIGKILL);
    drop(backend);
    let _backend = BlockProc::start(&img, &sock);
    let fresh = connect(&sock);
    let rid = reconnect(&mut vmm, &fresh);
    drop(fresh);
    let r = vmm.reply_to(rid, TIMEOUT).expect("reconnection answered");
    assert!(matches!(r, Ok(VcpuReply::Done)), "{r:?}");
    assert!(matches!(
        vmm.request(VcpuRequest::Cont),
        Ok(VcpuReply::Done)
    ));
    vmm.wait_serial("VERDICT: PASS blk", TIMEOUT * 3);
}
