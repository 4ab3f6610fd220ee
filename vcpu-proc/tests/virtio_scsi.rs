//! vcpu-proc's virtio-scsi frontend as a real guest sees it: the `cdrom`
//! guest in a VM built over vcpu-proc's control channel, a
//! `VhostUserKind::Scsi` device attached with `AttachVhostUser` on a
//! socket to a scripted vhost-user-scsi backend (the frontend's own fake,
//! `src/virtio/fake_backend.rs`: it answers the handshake and records the
//! requests, but serves no queue). The guest finds device type 8, reads
//! the config space the frontend provides, sets up the control, event and
//! request queues, and the backend receives all three.
//!
//! The guest's commands themselves need a real backend: block-proc's
//! vhost-user-scsi backend (broker/tests/cdrom_guest.rs once merged).
//! Needs /dev/kvm.

mod common;

#[path = "../src/virtio/fake_backend.rs"]
#[allow(dead_code)]
mod fake_backend;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::{Opts, Vmm, TIMEOUT};
use fake_backend::FakeBackend;
use ipc_proto::vcpu::{FdSlot, VcpuReply, VcpuRequest, VhostUserDeviceConfig, VhostUserKind};

#[test]
fn cdrom_guest_finds_the_scsi_controller_and_sets_up_its_three_queues_on_the_backend() {
    let mut vmm = Vmm::start(Opts {
        start_paused: true,
        ..Opts::guest("cdrom")
    });
    vmm.create_result.clone().expect("VM created");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = FakeBackend::spawn_scsi(theirs, 3);
    let attach = VcpuRequest::AttachVhostUser(VhostUserDeviceConfig {
        id: "scsi0".into(),
        slot: 1,
        kind: VhostUserKind::Scsi,
        socket: FdSlot(0),
        num_queues: 3,
        queue_size: 128,
        mac: None,
    });
    let r = vmm.request_with_fds(attach, &[ours.as_fd()]);
    assert!(matches!(r, Ok(VcpuReply::Done)), "{r:?}");
    drop(ours);
    assert!(matches!(
        vmm.request(VcpuRequest::Cont),
        Ok(VcpuReply::Done)
    ));
    vmm.wait_serial("cdrom: virtio-scsi in Bulkhead slot 1", TIMEOUT);
    vmm.wait_serial(
        "cdrom: 1 request queue(s), sense_size 96, cdb_size 32, max_target 255",
        TIMEOUT,
    );
    // DRIVER_OK: the frontend hands control, event and request queue over.
    backend.wait_started(3);
    assert_eq!(backend.vring_bases(), vec![(0, 0), (1, 0), (2, 0)]);
    assert!(!backend.codes().contains(&fake_backend::req::GET_CONFIG));
}

#[test]
fn a_scsi_device_with_fewer_than_three_queues_is_refused_with_a_clear_error() {
    let mut vmm = Vmm::start(Opts {
        start_paused: true,
        ..Opts::guest("cdrom")
    });
    vmm.create_result.clone().expect("VM created");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let _backend = FakeBackend::spawn_scsi(theirs, 3);
    let attach = VcpuRequest::AttachVhostUser(VhostUserDeviceConfig {
        id: "scsi0".into(),
        slot: 1,
        kind: VhostUserKind::Scsi,
        socket: FdSlot(0),
        num_queues: 2,
        queue_size: 128,
        mac: None,
    });
    let r = vmm.request_with_fds(attach, &[ours.as_fd()]);
    let e = r.expect_err("two queues are refused");
    let text = format!("{e:?}");
    assert!(text.contains("invalid queue geometry: 2 queues"), "{text}");
    // The worker stays up and answers.
    assert!(matches!(
        vmm.request(VcpuRequest::QueryStatus),
        Ok(VcpuReply::Status(_))
    ));
}
