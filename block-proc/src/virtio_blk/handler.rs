//! virtio-blk as a device of the vhost-user backend: [`BlkHandler`] runs
//! the requests of every queue (synchronously through [`super::process`]
//! or on the node's asynchronous engine through [`super::aio`]), and
//! [`BlkDevice`] is the device half (features, config space, queues).

use std::sync::Arc;

use super::{aio, throttle_cost, BlkConfig, Completion, CONFIG_LEN};
use crate::block::aio::{FileAio, Target};
use crate::block::Node;
use crate::throttle::gate::Cost;
use crate::throttle::Member;
use crate::vhost::device::{DeviceModel, Pending, QueueRole, RequestHandler};
use crate::vhost::queue::io_threads_per_queue;
use crate::vring::{Desc, Mem};

/// The request logic of a virtio-blk export (shared by its queues).
pub struct BlkHandler {
    node: Arc<Node>,
    blk: Arc<BlkConfig>,
}

impl BlkHandler {
    /// Requests on `node` as `blk` describes the device.
    pub fn new(node: Arc<Node>, blk: Arc<BlkConfig>) -> Self {
        BlkHandler { node, blk }
    }
}

impl RequestHandler for BlkHandler {
    fn name(&self) -> &str {
        &self.node.name
    }

    fn process(&self, mem: &Mem, descs: &[Desc]) -> Completion {
        super::process(&self.node, &self.blk, mem, descs)
    }

    fn aio(&self) -> Option<FileAio> {
        self.node.driver.aio()
    }

    fn prepare(
        &self,
        mem: &Mem,
        descs: &[Desc],
        lone: bool,
        _ring_fd: std::os::fd::RawFd,
    ) -> Option<(Pending, Target, Vec<libc::iovec>)> {
        aio::prepare(&self.node, &self.blk, mem, descs, lone)
            .map(|(r, t, i)| (Pending::Blk(r), t, i))
    }

    fn complete(&self, mem: &Mem, r: &Pending, res: std::io::Result<()>) -> Completion {
        match r {
            Pending::Blk(r) => aio::complete(&self.node, mem, r, res),
            // This handler only prepares virtio-blk requests.
            Pending::Scsi(_) => Completion {
                used_len: 0,
                status: None,
                failure: None,
            },
        }
    }

    fn throttle(&self) -> &Member {
        &self.blk.throttle
    }

    fn cost(&self, mem: &Mem, descs: &[Desc]) -> Cost {
        throttle_cost::request_cost(mem, descs)
    }

    fn io_threads(&self) -> usize {
        io_threads_per_queue(self.blk.num_queues)
    }
}

/// A virtio-blk export's device half.
pub struct BlkDevice {
    node: Arc<Node>,
    blk: Arc<BlkConfig>,
    handler: Arc<BlkHandler>,
}

impl BlkDevice {
    /// The device exporting `node` as `blk` describes it.
    pub fn new(node: Arc<Node>, blk: BlkConfig) -> Self {
        let blk = Arc::new(blk);
        let handler = Arc::new(BlkHandler::new(node.clone(), blk.clone()));
        BlkDevice { node, blk, handler }
    }
}

impl DeviceModel for BlkDevice {
    fn name(&self) -> &str {
        &self.node.name
    }

    fn features(&self) -> u64 {
        self.blk.features()
    }

    fn num_queues(&self) -> u16 {
        self.blk.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        self.blk.max_queue_size
    }

    fn config_space(&self) -> Vec<u8> {
        let c: [u8; CONFIG_LEN] = self.blk.config_space();
        c.to_vec()
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> Result<(), &'static str> {
        Err("virtio-blk config space is read-only")
    }

    fn queue(&self, _index: u16) -> QueueRole {
        QueueRole::Requests(self.handler.clone())
    }

    fn acquire(&self) {
        self.node.acquire();
    }

    fn release(&self) {
        self.node.resolved().release();
    }
}
