//! virtio-scsi as a device of block-proc's vhost-user backend: feature
//! bits, config space, the queue roles (control queue 0, event queue 1,
//! request queues 2..) and the broker's medium changes.
//!
//! The event queue: no event feature (hotplug, parameter change) is
//! offered, so it only holds the buffers the driver posts; medium changes
//! reach the guest as unit attentions and GET EVENT STATUS NOTIFICATION
//! media events, as on a real drive.

use std::sync::Arc;

use ipc_proto::scsi::MediumOp;

use super::target::Targets;
use super::virtio::SENSE_SIZE;
use super::ScsiError;
use crate::block::aio::{FileAio, Target};
use crate::block::Node;
use crate::throttle::Member;
use crate::vhost::device::{DeviceModel, Pending, QueueRole, RequestHandler};
use crate::vhost::queue::io_threads_per_queue;
use crate::virtio_blk::{feat, Completion};
use crate::vring::{Desc, Mem};

/// Size of `struct virtio_scsi_config`.
pub const CONFIG_LEN: usize = 36;
/// Queue size accepted at most.
const MAX_QUEUE_SIZE: u16 = 1024;
/// Config `seg_max`.
const SEG_MAX: u32 = 126;
/// Config `max_sectors` (512-byte units): 32 MiB, the largest transfer.
const MAX_SECTORS: u32 = 0xffff;
/// Config `cmd_per_lun`.
const CMD_PER_LUN: u32 = 128;
/// Config `max_target`.
const MAX_TARGET: u16 = 255;
/// Config `max_lun`.
const MAX_LUN: u32 = 16383;
/// Offset of `sense_size` in the config space (then `cdb_size`).
const SENSE_SIZE_OFFSET: usize = 20;

/// The request or control queue's handler.
struct Queue {
    name: String,
    targets: Arc<Targets>,
    control: bool,
    throttle: Member,
    io_threads: usize,
}

impl RequestHandler for Queue {
    fn name(&self) -> &str {
        &self.name
    }

    fn process(&self, mem: &Mem, descs: &[Desc]) -> Completion {
        if self.control {
            self.targets.control(mem, descs)
        } else {
            self.targets.command(mem, descs)
        }
    }

    /// The engine of the first unit's medium that has one: a queue's ring
    /// registers that file, so reads of that medium take the ring (after
    /// a medium change, until the queue restarts, reads of the new one
    /// run on the I/O threads).
    fn aio(&self) -> Option<FileAio> {
        if self.control {
            return None;
        }
        self.targets
            .luns()
            .iter()
            .find_map(|l| l.state().medium.as_ref().and_then(|m| m.driver.aio()))
    }

    fn prepare(
        &self,
        mem: &Mem,
        descs: &[Desc],
        lone: bool,
        ring_fd: std::os::fd::RawFd,
    ) -> Option<(Pending, Target, Vec<libc::iovec>)> {
        if self.control {
            return None;
        }
        super::aio::prepare(&self.targets, mem, descs, lone, ring_fd)
            .map(|(r, t, i)| (Pending::Scsi(r), t, i))
    }

    fn complete(&self, mem: &Mem, r: &Pending, res: std::io::Result<()>) -> Completion {
        match r {
            Pending::Scsi(r) => super::aio::complete(mem, r, res),
            // This handler only prepares SCSI reads.
            Pending::Blk(_) => Completion {
                used_len: 0,
                status: None,
                failure: None,
            },
        }
    }

    fn throttle(&self) -> &Member {
        // SCSI exports are not members of a throttle group (QEMU's
        // throttling is per drive, set on the broker's -drive).
        &self.throttle
    }

    fn io_threads(&self) -> usize {
        self.io_threads
    }
}

/// A virtio-scsi controller served as a vhost-user-scsi export.
pub struct ScsiDevice {
    id: String,
    num_request_queues: u16,
    targets: Arc<Targets>,
    control: Arc<Queue>,
    requests: Arc<Queue>,
}

impl ScsiDevice {
    /// Controller `id` with `num_request_queues` request queues over
    /// `targets`.
    pub fn new(id: String, num_request_queues: u16, targets: Targets) -> Self {
        let targets = Arc::new(targets);
        let queue = |control| {
            Arc::new(Queue {
                name: id.clone(),
                targets: targets.clone(),
                control,
                throttle: Member::default(),
                io_threads: io_threads_per_queue(num_request_queues),
            })
        };
        ScsiDevice {
            control: queue(true),
            requests: queue(false),
            id,
            num_request_queues,
            targets,
        }
    }

    /// The units.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Apply the broker's `op` to unit `device_id`; `node` is the node of
    /// an insert (the caller acquired it; on failure it is released
    /// here). A medium taken out is released.
    pub fn medium(
        &self,
        device_id: &str,
        op: &MediumOp,
        node: Option<Arc<Node>>,
    ) -> Result<(), ScsiError> {
        let lun = self
            .targets
            .by_id(device_id)
            .ok_or_else(|| ScsiError::NoSuchDevice(device_id.into(), self.id.clone()))?;
        match lun.medium_op(op, node.clone()) {
            Ok(removed) => {
                if let Some(old) = removed {
                    old.resolved().release();
                }
                Ok(())
            }
            Err(e) => {
                if let Some(n) = node {
                    n.release();
                }
                Err(e)
            }
        }
    }
}

impl ScsiDevice {
    /// Node `node_name` was resized: its disks report CAPACITY DATA HAS
    /// CHANGED, as QEMU's scsi-hd does (a CD's size is the disc's).
    pub fn capacity_changed(&self, node_name: &str) {
        for l in self.targets.luns() {
            if l.is_cd() {
                continue;
            }
            let mut st = l.state();
            if st.medium.as_ref().is_some_and(|m| m.name == node_name) {
                st.unit_attention = Some(super::sense::CAPACITY_CHANGED);
            }
        }
    }
}

impl DeviceModel for ScsiDevice {
    fn name(&self) -> &str {
        &self.id
    }

    fn features(&self) -> u64 {
        feat::VERSION_1 | feat::EVENT_IDX | feat::PROTOCOL_FEATURES
    }

    fn num_queues(&self) -> u16 {
        self.num_request_queues.saturating_add(2)
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn config_space(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(CONFIG_LEN);
        c.extend_from_slice(&u32::from(self.num_request_queues).to_le_bytes());
        c.extend_from_slice(&SEG_MAX.to_le_bytes());
        c.extend_from_slice(&MAX_SECTORS.to_le_bytes());
        c.extend_from_slice(&CMD_PER_LUN.to_le_bytes());
        c.extend_from_slice(&0u32.to_le_bytes()); // event_info_size
        c.extend_from_slice(&u32::try_from(SENSE_SIZE).unwrap_or(0).to_le_bytes());
        c.extend_from_slice(
            &u32::try_from(super::cdb::CDB_SIZE)
                .unwrap_or(0)
                .to_le_bytes(),
        );
        c.extend_from_slice(&0u16.to_le_bytes()); // max_channel
        c.extend_from_slice(&MAX_TARGET.to_le_bytes());
        c.extend_from_slice(&MAX_LUN.to_le_bytes());
        c
    }

    /// Only `sense_size` and `cdb_size` are writable in virtio-scsi, and
    /// this device keeps both at their defaults: a write of the values
    /// they have is accepted (Linux writes them at probe), anything else
    /// refused.
    fn set_config(&self, offset: u32, buf: &[u8]) -> Result<(), &'static str> {
        let space = self.config_space();
        let start = usize::try_from(offset).map_err(|_| "config write out of range")?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= SENSE_SIZE_OFFSET + 8 && start >= SENSE_SIZE_OFFSET)
            .ok_or("only sense_size and cdb_size are writable")?;
        if space[start..end] != *buf {
            return Err("virtio-scsi sense_size and cdb_size are fixed at 96 and 32");
        }
        Ok(())
    }

    fn queue(&self, index: u16) -> QueueRole {
        match index {
            0 => QueueRole::Requests(self.control.clone()),
            1 => QueueRole::Idle,
            _ => QueueRole::Requests(self.requests.clone()),
        }
    }

    fn acquire(&self) {
        for l in self.targets.luns() {
            if let Some(m) = &l.state().medium {
                m.acquire();
            }
        }
    }

    fn release(&self) {
        for l in self.targets.luns() {
            if let Some(m) = l.take_medium() {
                m.resolved().release();
            }
        }
    }
}
