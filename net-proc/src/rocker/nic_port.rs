//! A switch port netdev (`x-switch-port`): the meeting point of a guest
//! NIC and the switch that lists the netdev as a port, with no host side.
//!
//! Ring to ring: the NIC's tx worker runs each frame through the switch
//! itself ([`NicPort::ingress`], in its own thread) and the switch
//! writes it straight into the rx rings of the NICs it goes to
//! (`NicPort::deliver`), or into a TAP port. The NIC's rx ring has no
//! worker thread: while the driver has it running it is held here
//! ([`NicPort::attach_rx`]) and whichever thread forwards a frame fills
//! it under its lock. Each forwarding thread signals the rings it filled
//! once per batch ([`Pending`]): no syscall per frame. A frame for one
//! NIC is copied once, from the sender's tx chain into the receiver's rx
//! buffers; the sender's chain is completed after the copy and before
//! the receiver's used entries publish the frame, so a net-proc killed
//! mid-way loses the frame but never lets the sender's successor send
//! it a second time.
//!
//! The netdev exists before its NIC and its switch (the broker creates,
//! and replays, netdevs first) and outlives either: a NIC attaches its rx
//! ring, a switch its uplink, each for as long as it runs.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use super::forward::{Frame, Scratch, Shared};
use crate::vhost::body::Body;
use crate::vhost::ring::Ring;
use crate::virtio_net::HDR_LEN;

/// The switch a port belongs to, and its index there (pport - 1).
pub(super) struct Uplink {
    /// The running switch.
    pub switch: Arc<Shared>,
    /// The port's index in the switch.
    pub index: usize,
}

/// A switch port netdev.
pub struct NicPort {
    id: String,
    uplink: RwLock<Option<Uplink>>,
    rx: Mutex<Option<Ring>>,
}

impl NicPort {
    /// Netdev `id`, on no switch and with no NIC yet.
    pub fn new(id: &str) -> Arc<NicPort> {
        Arc::new(NicPort {
            id: id.to_owned(),
            uplink: RwLock::new(None),
            rx: Mutex::new(None),
        })
    }

    /// The netdev id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn rx(&self) -> MutexGuard<'_, Option<Ring>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The NIC's driver started its rx ring: frames for this port go
    /// there from now on.
    pub fn attach_rx(&self, ring: Ring) {
        *self.rx() = Some(ring);
    }

    /// The rx ring stops: its next avail index (None: it had none).
    pub fn detach_rx(&self) -> Option<u16> {
        let ring = self.rx().take()?;
        Some(ring.next_avail())
    }

    /// Joins (or with `None` leaves) a switch.
    pub(super) fn set_uplink(&self, uplink: Option<Uplink>) {
        *self.uplink.write().unwrap_or_else(|p| p.into_inner()) = uplink;
    }

    /// A frame from the NIC (its tx chain after the vnet header, read
    /// where it lies) forwarded through the switch (no offloads cross a
    /// switch port: its header is not read); false when the port is on
    /// no switch (the frame is lost, as on an unplugged wire). `done`
    /// (completing the NIC's chain) is called once, after the chain was
    /// read and before any receiver sees the frame (see [`Ring::deliver`]).
    pub fn ingress(
        &self,
        body: Body<'_>,
        now: Instant,
        scratch: &mut Scratch,
        done: &mut dyn FnMut(),
    ) -> bool {
        let uplink = self.uplink.read().unwrap_or_else(|p| p.into_inner());
        let Some(u) = uplink.as_ref() else {
            done();
            return false;
        };
        u.switch
            .forward(u.index, Frame::Chain(body, done), now, scratch);
        true
    }

    /// A frame for the NIC (`hdr` its vnet header, `body` the frame)
    /// into its rx ring, `done` called as [`Ring::deliver`] says (also
    /// when the frame is dropped). True when a chain was used (the caller
    /// signals, see [`Pending`]); a frame that finds no running ring, a
    /// link down or no buffers is dropped (counted when the NIC runs).
    pub(super) fn deliver(
        &self,
        hdr: &[u8; HDR_LEN],
        body: &Body<'_>,
        done: &mut dyn FnMut(),
    ) -> bool {
        let mut rx = self.rx();
        let Some(ring) = rx.as_mut() else {
            done();
            return false;
        };
        if !ring.link_up() {
            done();
            crate::vhost::stats::add(&ring.stats.rx_dropped, 1);
            return false;
        }
        ring.deliver(hdr, body, done)
    }

    /// Link state as `query-rocker-ports` shows it: the NIC's link is up
    /// (`set_link`) and its driver has the rx ring running.
    pub fn link_up(&self) -> bool {
        self.rx().as_ref().is_some_and(Ring::link_up)
    }

    fn signal(&self) {
        if let Some(ring) = self.rx().as_mut() {
            ring.signal();
        }
    }
}

/// Switch ports whose rx rings a forwarding thread filled and has not
/// signalled yet: it signals them once at the end of its batch.
#[derive(Default)]
pub struct Pending(Vec<Arc<NicPort>>);

impl Pending {
    /// Remembers `port` (once).
    pub(super) fn add(&mut self, port: &Arc<NicPort>) {
        if !self.0.iter().any(|p| Arc::ptr_eq(p, port)) {
            self.0.push(port.clone());
        }
    }

    /// Signals every port remembered.
    pub fn flush(&mut self) {
        for p in self.0.drain(..) {
            p.signal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_on_no_switch_and_without_a_driver_drops_frames_and_shows_link_down() {
        let p = NicPort::new("p0");
        let mut scratch = Scratch::default();
        let frame = [0u8; 60];
        let mut done = 0;
        assert!(!p.ingress(
            Body::Bytes(&frame),
            Instant::now(),
            &mut scratch,
            &mut || done += 1
        ));
        assert!(!p.deliver(&[0; HDR_LEN], &Body::Bytes(&frame), &mut || done += 1));
        // The sender's chain is completed even when the frame is lost.
        assert_eq!(done, 2);
        assert!(!p.link_up());
        assert_eq!(p.detach_rx(), None);
        assert_eq!(p.id(), "p0");
    }

    #[test]
    fn pending_remembers_each_port_once() {
        let (a, b) = (NicPort::new("a"), NicPort::new("b"));
        let mut pending = Pending::default();
        for p in [&a, &b, &a, &a] {
            pending.add(p);
        }
        assert_eq!(pending.0.len(), 2);
        pending.flush();
        assert!(pending.0.is_empty());
    }
}
