//! Control of a live [`BlkDevice`]'s session beyond requests: stopping
//! and starting a queue, sending set-up messages again while the queues
//! run (each makes the backend restart its running queues, as a VMM's
//! migration or reconfiguration does), and the inflight region — reading
//! its marks, replacing it.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;

use crate::blk::BlkDevice;
use crate::error::{HarnessError, Result};
use crate::frontend::RingAddrs;

impl BlkDevice {
    /// Stop queue `q` (GET_VRING_BASE) and return the backend's avail index.
    pub fn stop_queue(&mut self, q: usize) -> Result<u32> {
        self.conn.stop_queue(q)
    }

    /// Start queue `q` again at avail index `base` (what
    /// [`BlkDevice::stop_queue`] answered): its ring set-up sent anew
    /// (SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE). Requests put on the
    /// ring while it was stopped are there for the backend's first look,
    /// without a kick.
    pub fn start_queue(&mut self, q: usize, base: u16) -> Result<()> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        let r = RingAddrs {
            size: queue.ring.size,
            desc: queue.ring.desc,
            avail: queue.ring.avail,
            used: queue.ring.used,
        };
        self.conn
            .setup_queue(&self.mem, q, r, base, &queue.kick, &queue.call)?;
        queue.kicked_at = queue.ring.avail_idx();
        Ok(())
    }

    /// SET_VRING_CALL again with queue `q`'s own call eventfd (the backend
    /// restarts the queue if it runs).
    pub fn resend_call(&mut self, q: usize) -> Result<()> {
        let queue = self
            .queues
            .get(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        self.conn.fe.set_vring_call(q, &queue.call)?;
        Ok(())
    }

    /// SET_MEM_TABLE again with the same memory (the backend restarts its
    /// running queues).
    pub fn resend_memory(&mut self) -> Result<()> {
        self.conn.set_memory(&self.mem)
    }

    /// Per queue, how many descriptors the inflight region marks as in
    /// flight (split layout: `mmap_size / num_queues` bytes per queue,
    /// 16-byte header, 16-byte descriptor states with `inflight` first).
    pub fn inflight_marked(&self) -> Result<Vec<usize>> {
        let Some((info, file)) = &self.inflight else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; usize::try_from(info.mmap_size).unwrap_or(0)];
        file.read_exact_at(&mut buf, info.mmap_offset)?;
        let nq = usize::from(info.num_queues.max(1));
        let stride = buf.len() / nq;
        Ok((0..nq)
            .map(|q| {
                (0..usize::from(info.queue_size))
                    .filter(|i| buf.get(q * stride + 16 + 16 * i) == Some(&1))
                    .count()
            })
            .collect())
    }

    /// Replaces the inflight region, while the queues may run, by a fresh
    /// one from the backend (GET_INFLIGHT_FD, then SET_INFLIGHT_FD with
    /// it): from now on [`BlkDevice::inflight_marked`] reads the new one.
    pub fn renew_inflight(&mut self) -> Result<()> {
        let fresh = self.fresh_inflight()?;
        self.conn
            .fe
            .set_inflight_fd(&fresh.0, fresh.1.as_raw_fd())?;
        self.inflight = Some(fresh);
        Ok(())
    }

    /// GET_INFLIGHT_FD only: the backend hands out a fresh region, which
    /// this frontend drops without ever setting it (it keeps its own).
    pub fn get_inflight_unused(&mut self) -> Result<()> {
        self.fresh_inflight().map(drop)
    }

    fn fresh_inflight(&mut self) -> Result<(VhostUserInflight, std::fs::File)> {
        if self.inflight.is_none() {
            return Err(HarnessError::Invalid(
                "the backend does not track inflight requests".into(),
            ));
        }
        let ask = VhostUserInflight::new(0, 0, self.opts.num_queues, self.opts.queue_size);
        Ok(self.conn.fe.get_inflight_fd(&ask)?)
    }
}
