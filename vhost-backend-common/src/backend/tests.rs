//! The handler's bookkeeping against a scripted device: when a queue
//! starts, where it starts, what restarts it, what is refused.

use std::fs::File;
use std::sync::{Arc, Mutex};

use ipc_proto::trace::TracePoint;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserVringAddrFlags,
};
use vhost::vhost_user::{Error as VuError, Result as VuResult, VhostUserBackendReqHandlerMut};

use super::{BackendDevice, ReadyQueue, RunningQueue, VhostBackend, PROTOCOL_FEATURES};

/// Guest memory of the tests: 64 KiB at guest physical 0, which the
/// frontend sees at this virtual address.
const UVA: u64 = 0x10_0000;
const MEM: u64 = 0x1_0000;
/// What a scripted queue pretends to have processed when it stops.
const TAKEN: u16 = 5;

static POINT: TracePoint = TracePoint::new("test", "msg", &["dev", "request", "arg"], false);

/// Every start: (queue, base, desc gpa).
type Starts = Arc<Mutex<Vec<(u16, u16, u64)>>>;

struct Scripted {
    starts: Starts,
}

struct ScriptedQueue {
    base: u16,
}

impl RunningQueue for ScriptedQueue {
    fn stop(self) -> u16 {
        self.base.wrapping_add(TAKEN)
    }
}

impl BackendDevice for Scripted {
    type Queue = ScriptedQueue;
    type StartError = std::io::Error;

    fn name(&self) -> &str {
        "dev"
    }
    fn label(&self) -> String {
        "device dev".into()
    }
    fn msg_point(&self) -> &'static TracePoint {
        &POINT
    }
    fn features(&self) -> u64 {
        PROTOCOL_FEATURES | 1
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::BACKEND_REQ
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn max_queue_size(&self) -> u16 {
        256
    }
    fn features_acked(&mut self, _features: u64) -> VuResult<()> {
        Ok(())
    }
    fn config_space(&self) -> Vec<u8> {
        vec![7; 8]
    }
    fn set_config(&mut self, _offset: u32, _buf: &[u8]) -> VuResult<()> {
        Err(VuError::InvalidOperation("read-only"))
    }
    fn start_queue(&mut self, q: ReadyQueue) -> std::io::Result<ScriptedQueue> {
        self.starts.lock().unwrap().push((q.index, q.base, q.desc));
        Ok(ScriptedQueue { base: q.base })
    }
}

fn memfd(size: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(c"mem", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let f = File::from(fd);
    f.set_len(size).unwrap();
    f
}

fn backend() -> (VhostBackend<Scripted>, Starts) {
    let starts = Starts::default();
    let b = VhostBackend::new(Scripted {
        starts: starts.clone(),
    });
    (b, starts)
}

fn set_mem(b: &mut VhostBackend<Scripted>) -> VuResult<()> {
    let region = VhostUserMemoryRegion::new(0, MEM, UVA, 0);
    b.set_mem_table(&[region], vec![memfd(MEM)], None)
        .map(|_| ())
}

/// Queue 0 given everything but its enable: size 8, rings at the start
/// of guest memory, base 3, a kick fd.
fn configure_queue_0(b: &mut VhostBackend<Scripted>) {
    b.set_features(PROTOCOL_FEATURES).unwrap();
    set_mem(b).unwrap();
    b.set_vring_num(0, 8).unwrap();
    let flags = VhostUserVringAddrFlags::empty();
    b.set_vring_addr(0, flags, UVA + 0x100, UVA + 0x200, UVA + 0x300, 0)
        .unwrap();
    b.set_vring_base(0, 3).unwrap();
    b.set_vring_kick(0, Some(memfd(0))).unwrap();
}

#[test]
fn a_queue_starts_once_enabled_at_its_base_and_get_vring_base_returns_where_it_stopped() {
    let (mut b, starts) = backend();
    configure_queue_0(&mut b);
    assert!(starts.lock().unwrap().is_empty());

    b.set_vring_enable(0, true).unwrap();
    assert_eq!(*starts.lock().unwrap(), vec![(0, 3, 0x100)]);
    let num = { b.get_vring_base(0).unwrap().num };

    assert_eq!(num, u32::from(3 + TAKEN));
}

#[test]
fn a_running_queue_refuses_a_new_size_and_restarts_where_it_was_on_a_new_memory_table() {
    let (mut b, starts) = backend();
    configure_queue_0(&mut b);
    b.set_vring_enable(0, true).unwrap();

    assert!(b.set_vring_num(0, 16).is_err());
    assert!(b.take_refusal());
    set_mem(&mut b).unwrap();

    assert!(!b.take_refusal());
    assert_eq!(
        *starts.lock().unwrap(),
        vec![(0, 3, 0x100), (0, 3 + TAKEN, 0x100)]
    );
}

#[test]
fn a_ring_outside_the_memory_table_does_not_start() {
    let (mut b, starts) = backend();
    configure_queue_0(&mut b);
    let flags = VhostUserVringAddrFlags::empty();
    b.set_vring_addr(0, flags, UVA + MEM, UVA + 0x200, UVA + 0x300, 0)
        .unwrap();

    b.set_vring_enable(0, true).unwrap();

    assert!(starts.lock().unwrap().is_empty());
}

#[test]
fn features_not_offered_and_bad_ring_sizes_are_refused_with_an_ack() {
    let (mut b, _) = backend();

    assert!(b.set_features(1 << 40).is_err());
    assert!(b.take_refusal());
    assert!(b.set_vring_num(0, 12).is_err());
    assert!(b.take_refusal());
    assert!(b.set_vring_num(2, 8).is_err());
    assert!(b.take_refusal());
    assert!(b.set_vring_num(1, 512).is_err());
    assert!(b.take_refusal());
}

#[test]
fn get_config_answers_inside_the_space_and_hangs_up_past_its_end() {
    let (mut b, _) = backend();
    let flags = VhostUserConfigFlags::empty();

    assert_eq!(b.get_config(4, 4, flags).unwrap(), vec![7; 4]);
    assert!(!b.take_hang_up());
    assert!(b.get_config(4, 5, flags).is_err());
    assert!(b.take_hang_up());
}

#[test]
fn the_backend_channel_is_taken_only_once_backend_req_is_acked() {
    let (mut b, _) = backend();
    let (channel, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(!b.set_channel(channel.try_clone().unwrap()));

    let acked = VhostUserProtocolFeatures::BACKEND_REQ.bits();
    b.set_protocol_features(acked).unwrap();

    assert!(b.set_channel(channel));
}

#[test]
fn a_reset_stops_every_queue_and_forgets_the_connection() {
    let (mut b, starts) = backend();
    configure_queue_0(&mut b);
    b.set_vring_enable(0, true).unwrap();

    b.reset_owner().unwrap();
    b.set_vring_enable(0, true).unwrap();

    assert_eq!(starts.lock().unwrap().len(), 1);
    assert!(!b.protocol_features_acked());
}
