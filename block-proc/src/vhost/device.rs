//! What a vhost-user device served by block-proc's backend must provide:
//! the device half ([`DeviceModel`]: feature bits, config space, queue
//! count, which queues run requests) and, per request queue, the request
//! logic ([`RequestHandler`]: one descriptor chain in, one used element
//! out). The protocol handler ([`super::backend`]), the queue workers
//! ([`super::queue`]: rings, inflight tracking, resubmission, I/O threads,
//! io_uring, throttling) and the export's connection loop
//! ([`super::export`]) are the same for virtio-blk and virtio-scsi.

use std::sync::Arc;

use crate::block::aio::{FileAio, Target};
use crate::scsi::aio::ScsiAsync;
use crate::throttle::gate::Cost;
use crate::throttle::Member;
use crate::virtio_blk::aio::AsyncReq;
use crate::virtio_blk::Completion;
use crate::vring::{Desc, Mem};

/// What the completion of a request given to the io_uring engine needs,
/// per device.
pub enum Pending {
    /// A virtio-blk request.
    Blk(AsyncReq),
    /// A virtio-scsi READ.
    Scsi(ScsiAsync),
}

/// The request logic of one queue.
pub trait RequestHandler: Send + Sync + 'static {
    /// Name in logs and trace points (the node or the export).
    fn name(&self) -> &str;
    /// Parse, run and answer the request in `descs` (never panics on
    /// guest input).
    fn process(&self, mem: &Mem, descs: &[Desc]) -> Completion;
    /// The asynchronous engine requests may go to; None: every request
    /// runs through [`RequestHandler::process`] on the queue's threads.
    fn aio(&self) -> Option<FileAio> {
        None
    }
    /// The request in `descs` as one host I/O for [`RequestHandler::aio`]'s
    /// engine, whose ring has `ring_fd` registered, or None to run it with
    /// `process` (see `virtio_blk::aio`, `scsi::aio`).
    fn prepare(
        &self,
        _mem: &Mem,
        _descs: &[Desc],
        _lone: bool,
        _ring_fd: std::os::fd::RawFd,
    ) -> Option<(Pending, Target, Vec<libc::iovec>)> {
        None
    }
    /// Answer a request [`RequestHandler::prepare`] gave the engine.
    fn complete(&self, _mem: &Mem, _r: &Pending, _res: std::io::Result<()>) -> Completion {
        Completion {
            used_len: 0,
            status: None,
            failure: None,
        }
    }
    /// The throttle group membership requests are metered against.
    fn throttle(&self) -> &Member;
    /// What the request costs the throttle group.
    fn cost(&self, _mem: &Mem, _descs: &[Desc]) -> Cost {
        Cost::Free
    }
    /// I/O threads this queue may start.
    fn io_threads(&self) -> usize;
}

/// What runs on one of the device's queues.
pub enum QueueRole {
    /// Requests, each answered by the handler.
    Requests(Arc<dyn RequestHandler>),
    /// A queue the device keeps buffers on without using them (the
    /// virtio-scsi event queue when no event feature was offered): kicks
    /// are taken, nothing is popped.
    Idle,
}

/// The device half of an export.
pub trait DeviceModel: Send + Sync + 'static {
    /// Name in logs and trace points.
    fn name(&self) -> &str;
    /// Virtio feature bits offered (with the vhost-user ones).
    fn features(&self) -> u64;
    /// vhost-user queues (GET_QUEUE_NUM; for virtio-scsi the control and
    /// event queues count).
    fn num_queues(&self) -> u16;
    /// The largest queue size accepted.
    fn max_queue_size(&self) -> u16;
    /// The config space.
    fn config_space(&self) -> Vec<u8>;
    /// A SET_CONFIG of `buf` at `offset`; Err: refused, with why.
    fn set_config(&self, offset: u32, buf: &[u8]) -> Result<(), &'static str>;
    /// What runs on queue `index`.
    fn queue(&self, index: u16) -> QueueRole;
    /// Take the nodes the device reads (when the export starts).
    fn acquire(&self);
    /// Give them back (when the export stopped).
    fn release(&self);
}
