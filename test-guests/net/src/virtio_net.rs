//! A virtio-net driver (virtio 1.2, 5.1) over `guest_rt::virtio`'s
//! transport and split queues: receiveq 0 and transmitq 1 of
//! [`QUEUE_SIZE`] entries, the 12-byte header of VERSION_1, merged
//! receive buffers (MRG_RXBUF: receive buffers are [`RX_BUF_LEN`] bytes,
//! smaller than a full frame on purpose, so a long packet comes in
//! several buffers and is reassembled from `num_buffers`; without
//! MRG_RXBUF each receive chain is two adjacent buffers), the MAC and the link status from the
//! config space (STATUS: a change comes with a config interrupt, which
//! the driver sees in InterruptStatus).
//!
//! The device is looked for in Bulkhead's slots, then QEMU microvm's
//! transports, so the same guest runs on both.

use guest_rt::apic::{self, Trigger};
use guest_rt::virtio::{Buffer, QueueMem, SplitQueue, VirtioMmio, QUEUE_SIZE};

/// Virtio device type of a network device.
pub const DEVICE_ID_NET: u32 = 1;
/// VIRTIO_NET_F_MAC.
pub const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_MRG_RXBUF.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// VIRTIO_NET_F_STATUS.
pub const F_STATUS: u64 = 1 << 16;
/// VIRTIO_NET_S_LINK_UP.
pub const S_LINK_UP: u16 = 1;
/// The virtio-net header with VERSION_1 (num_buffers included).
pub const HDR_LEN: usize = 12;
/// Bytes of a buffer for one test frame (the exchange's frames).
pub const BUF_LEN: usize = 2048;
/// Bytes of one transmit buffer: a 9000-byte-MTU frame with its header.
pub const TX_BUF_LEN: usize = 9216;
/// Bytes of one receive buffer (less than a full frame: see above).
pub const RX_BUF_LEN: usize = 1024;
/// Largest receive buffer [`Net::setup_nth`] takes.
pub const RX_BUF_MAX: usize = 4096;
/// Largest packet the driver reassembles (a 9000-byte-MTU frame).
pub const MAX_PACKET: usize = TX_BUF_LEN;
/// MAC used when the device has none (locally administered).
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x42, 0x48, 0x4e, 0x54, 0x01];

const BULKHEAD_BASE: usize = 0xd000_0000;
const BULKHEAD_STRIDE: usize = 0x1000;
const BULKHEAD_SLOTS: usize = 8;
/// GSI of Bulkhead's slot 0 (docs/platform.md).
const BULKHEAD_GSI_BASE: u32 = 5;
/// Pins per IOAPIC assumed when mapping a GSI to an IOAPIC from the MADT.
const IOAPIC_PINS: u32 = 24;
const MICROVM_BASE: usize = 0xfeb0_0000;
const MICROVM_STRIDE: usize = 0x200;
const MICROVM_TRANSPORTS: usize = 24;
const REG_CONFIG: usize = 0x100;
const REG_CONFIG_GENERATION: usize = 0x0fc;
const INT_CONFIG: u32 = 2;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const N: usize = QUEUE_SIZE as usize;

#[repr(C, align(4096))]
struct Buffers([[u8; TX_BUF_LEN]; N]);

/// Room for `N` receive buffers of up to [`RX_BUF_MAX`] bytes, laid out
/// back to back at the buffer length in use.
#[repr(C, align(4096))]
struct RxBuffers([u8; RX_BUF_MAX * N]);

/// Most NICs one guest drives ([`Net::setup_nth`]), each with buffers
/// and queue memory of its own.
pub const MAX_NICS: usize = 2;

static mut RX_BUFS: [RxBuffers; MAX_NICS] = [
    RxBuffers([0; RX_BUF_MAX * N]),
    RxBuffers([0; RX_BUF_MAX * N]),
];
static mut TX_BUFS: [Buffers; MAX_NICS] =
    [Buffers([[0; TX_BUF_LEN]; N]), Buffers([[0; TX_BUF_LEN]; N])];
static mut PACKET: [[u8; MAX_PACKET]; MAX_NICS] = [[0; MAX_PACKET]; MAX_NICS];
static RX_MEM: [QueueMem; MAX_NICS] = [QueueMem::new(), QueueMem::new()];
static TX_MEM: [QueueMem; MAX_NICS] = [QueueMem::new(), QueueMem::new()];

/// Why the device could not be set up.
#[derive(Debug, Clone, Copy)]
pub enum SetupError {
    /// No virtio-net device anywhere.
    NotFound,
    /// The transport refused (features, queues).
    Virtio(guest_rt::virtio::VirtioError),
    /// A queue's memory was taken already.
    QueueTaken,
    /// More NICs than [`MAX_NICS`].
    TooMany,
}

/// A link status change the driver saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkChange {
    /// The link is up now.
    pub up: bool,
    /// A config interrupt came with it.
    pub interrupt: bool,
}

/// The driver.
pub struct Net {
    dev: VirtioMmio,
    /// Which of the driver's NICs (its buffers).
    nth: usize,
    rx: SplitQueue,
    tx: SplitQueue,
    /// Receive buffer of each descriptor head.
    rx_buf_of: [u8; N],
    /// Transmit buffer of each descriptor head.
    tx_buf_of: [u8; N],
    tx_free: [bool; N],
    /// The device's MAC (or [`DEFAULT_MAC`]).
    pub mac: [u8; 6],
    /// Negotiated features.
    pub features: u64,
    link_up: bool,
    config_irq: bool,
    /// Packets longer than [`MAX_PACKET`] or with a bad `num_buffers`.
    pub rx_errors: u32,
    /// Packets that came in more than one buffer (MRG_RXBUF).
    pub merged: u32,
    /// Bytes of each receive buffer.
    rx_len: usize,
    /// `recv` leaves the receive queue's notification to [`Net::kick_rx`].
    rx_batched: bool,
    /// A used receive chain taken by [`Net::rx_pending`], for `recv`.
    rx_stash: Option<(u16, u32)>,
}

fn base_of(i: usize) -> usize {
    if i < BULKHEAD_SLOTS {
        BULKHEAD_BASE + BULKHEAD_STRIDE * i
    } else {
        MICROVM_BASE + MICROVM_STRIDE * (i - BULKHEAD_SLOTS)
    }
}

/// The first virtio-net device.
pub fn find() -> Option<VirtioMmio> {
    find_nth(0)
}

/// The `n`th virtio-net device (from 0, in slot order).
pub fn find_nth(n: usize) -> Option<VirtioMmio> {
    (0..BULKHEAD_SLOTS + MICROVM_TRANSPORTS)
        .filter_map(|i| VirtioMmio::at(base_of(i)).ok())
        .filter(|d| d.device_id() == DEVICE_ID_NET)
        .nth(n)
}

/// Receive buffer `b` of NIC `nth` (of `len` bytes; buffers are back to
/// back).
fn rx_buf(nth: usize, b: usize, len: usize) -> *mut u8 {
    // SAFETY: only the address of a static is taken; nth < MAX_NICS (as
    // `Net::setup_nth` checks) and (b % N) * len stays inside it since
    // len <= RX_BUF_MAX.
    unsafe { (core::ptr::addr_of_mut!(RX_BUFS[nth].0) as *mut u8).add((b % N) * len) }
}

fn tx_buf(nth: usize, b: usize) -> *mut u8 {
    // SAFETY: only the address of a static is taken (nth < MAX_NICS).
    unsafe { core::ptr::addr_of_mut!(TX_BUFS[nth].0[b]) as *mut u8 }
}

impl Net {
    /// Finds the `nth` virtio-net device (below [`MAX_NICS`]; each NIC
    /// once), negotiates VERSION_1, MAC, STATUS and MRG_RXBUF, sets both
    /// queues up with receive buffers of `rx_len` bytes (at most
    /// [`RX_BUF_MAX`]; a Linux guest posts page-sized ones), fills the
    /// receive queue and starts it.
    pub fn setup_nth(nth: usize, rx_len: usize) -> Result<Net, SetupError> {
        if nth >= MAX_NICS {
            return Err(SetupError::TooMany);
        }
        let rx_len = rx_len.clamp(HDR_LEN + 64, RX_BUF_MAX);
        let dev = find_nth(nth).ok_or(SetupError::NotFound)?;
        let features = dev
            .init(F_MAC | F_STATUS | F_MRG_RXBUF)
            .map_err(SetupError::Virtio)?;
        let rx = RX_MEM[nth].take().ok_or(SetupError::QueueTaken)?;
        let tx = TX_MEM[nth].take().ok_or(SetupError::QueueTaken)?;
        dev.setup_queue(RX_QUEUE, &rx).map_err(SetupError::Virtio)?;
        dev.setup_queue(TX_QUEUE, &tx).map_err(SetupError::Virtio)?;
        let mut net = Net {
            dev,
            nth,
            rx,
            tx,
            rx_buf_of: [0; N],
            tx_buf_of: [0; N],
            tx_free: [true; N],
            mac: DEFAULT_MAC,
            features,
            link_up: true,
            config_irq: false,
            rx_errors: 0,
            merged: 0,
            rx_len,
            rx_batched: false,
            rx_stash: None,
        };
        if features & F_MAC != 0 {
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = net.config8(i);
            }
            net.mac = mac;
        }
        net.link_up = net.read_link();
        dev.driver_ok();
        for b in (0..N).step_by(net.rx_chain()) {
            net.post_rx(b);
        }
        dev.notify(RX_QUEUE);
        Ok(net)
    }

    /// The device's MMIO base.
    pub fn base(&self) -> usize {
        self.dev.base()
    }

    /// Routes the device's interrupt to `vector` on this CPU (edge
    /// triggered, so a waiter acknowledges it with
    /// [`Net::ack_interrupt`]); returns its GSI, or None if no IOAPIC
    /// serves it. Bulkhead's slot `i` is GSI 5 + i; QEMU microvm's
    /// transport `i` is GSI 24 + i with its second IOAPIC, else 16 + i
    /// with ACPI, else 5 + i.
    pub fn route_interrupt(&self, vector: u8) -> Option<u32> {
        let base = self.dev.base();
        let (ioapics, gsi) = if base < MICROVM_BASE {
            let slot = ((base - BULKHEAD_BASE) / BULKHEAD_STRIDE) as u32;
            (None, BULKHEAD_GSI_BASE + slot)
        } else {
            let index = ((base - MICROVM_BASE) / MICROVM_STRIDE) as u32;
            let m = guest_rt::acpi::discover();
            let listed = m.ioapics;
            let n = m.ioapic_count;
            let gsi = match &listed[..n] {
                [] => BULKHEAD_GSI_BASE + index,
                l if l.iter().any(|&(_, b)| b == 24) => 24 + index,
                _ => 16 + index,
            };
            (Some((listed, n)), gsi)
        };
        let (addr, first) = match ioapics {
            Some((listed, n)) if n > 0 => *listed[..n]
                .iter()
                .find(|&&(_, b)| (b..b + IOAPIC_PINS).contains(&gsi))?,
            Some(_) | None => (apic::IOAPIC_BASE as u32, 0),
        };
        let pin = (gsi - first) as u8;
        apic::ioapic_route_at(addr as usize, pin, vector, Trigger::Edge, apic::lapic_id());
        Some(gsi)
    }

    /// Reads and acknowledges the interrupt status (a config change is
    /// kept for [`Net::poll_link`]).
    pub fn ack_interrupt(&mut self) {
        if self.dev.ack_interrupt() & INT_CONFIG != 0 {
            self.config_irq = true;
        }
    }

    fn config8(&self, off: usize) -> u8 {
        // SAFETY: the device's config space, identity mapped MMIO.
        unsafe { core::ptr::read_volatile((self.dev.base() + REG_CONFIG + off) as *const u8) }
    }

    fn config16(&self, off: usize) -> u16 {
        // SAFETY: as in `config8`; the field is 2-byte aligned.
        unsafe { core::ptr::read_volatile((self.dev.base() + REG_CONFIG + off) as *const u16) }
    }

    fn generation(&self) -> u32 {
        // SAFETY: a register of the device, identity mapped MMIO.
        unsafe { core::ptr::read_volatile((self.dev.base() + REG_CONFIG_GENERATION) as *const u32) }
    }

    /// The status field (link up without VIRTIO_NET_F_STATUS).
    fn read_link(&self) -> bool {
        if self.features & F_STATUS == 0 {
            return true;
        }
        loop {
            let g = self.generation();
            let s = self.config16(6);
            if self.generation() == g {
                return s & S_LINK_UP != 0;
            }
        }
    }

    /// The link as last seen.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Acknowledges the interrupt status and reports a link change (the
    /// status field differs from the last one seen).
    pub fn poll_link(&mut self) -> Option<LinkChange> {
        if self.dev.ack_interrupt() & INT_CONFIG != 0 {
            self.config_irq = true;
        }
        let up = self.read_link();
        if up == self.link_up {
            return None;
        }
        self.link_up = up;
        // The change may have landed between the interrupt status read
        // above and the config read: a device raises the config
        // interrupt with the change, so it shows now.
        if !self.config_irq && self.dev.ack_interrupt() & INT_CONFIG != 0 {
            self.config_irq = true;
        }
        Some(LinkChange {
            up,
            interrupt: core::mem::take(&mut self.config_irq),
        })
    }

    /// Receive buffers per chain: 1 with MRG_RXBUF, else 2 (a full
    /// frame must fit in one chain).
    fn rx_chain(&self) -> usize {
        if self.features & F_MRG_RXBUF != 0 {
            1
        } else {
            2
        }
    }

    /// Posts the receive chain starting at buffer `b`.
    fn post_rx(&mut self, b: usize) {
        let len = self.rx_len;
        let buf = |i: usize| Buffer {
            addr: rx_buf(self.nth, i, len) as u64,
            len: len as u32,
            device_writes: true,
        };
        let pair = [buf(b), buf(b + 1)];
        let chain = &pair[..self.rx_chain()];
        // As many descriptors as buffers: a free descriptor is always
        // there for a chain just taken off the used ring.
        if let Ok(head) = self.rx.submit(chain) {
            self.rx_buf_of[usize::from(head)] = b as u8;
        }
    }

    fn reclaim_tx(&mut self) {
        while let Some((head, _)) = self.tx.poll_used() {
            self.tx_free[usize::from(self.tx_buf_of[usize::from(head)])] = true;
        }
    }

    /// Sends `frame` (an Ethernet frame without FCS); false if no
    /// transmit buffer is free.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        let queued = self.queue_tx(frame.len(), &mut |buf| buf.copy_from_slice(frame));
        if queued {
            self.kick_tx();
        }
        queued
    }

    /// Puts a frame of `len` bytes, written in place by `fill`, in the
    /// transmit queue without notifying the device ([`Net::kick_tx`]
    /// does); false if no transmit buffer is free or `len` is too long.
    pub fn queue_tx(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> bool {
        self.reclaim_tx();
        let Some(b) = self.tx_free.iter().position(|f| *f) else {
            return false;
        };
        if len + HDR_LEN > TX_BUF_LEN {
            return false;
        }
        let p = tx_buf(self.nth, b);
        // SAFETY: buffer `b` is free (not in the ring) and TX_BUF_LEN long.
        let buf = unsafe { core::slice::from_raw_parts_mut(p, HDR_LEN + len) };
        buf[..HDR_LEN].fill(0);
        fill(&mut buf[HDR_LEN..]);
        let chain = [Buffer {
            addr: p as u64,
            len: (HDR_LEN + len) as u32,
            device_writes: false,
        }];
        match self.tx.submit(&chain) {
            Ok(head) => {
                self.tx_free[b] = false;
                self.tx_buf_of[usize::from(head)] = b as u8;
                true
            }
            Err(_) => false,
        }
    }

    /// Tells the device the transmit queue has new frames.
    pub fn kick_tx(&self) {
        self.dev.notify(TX_QUEUE);
    }

    /// True when every queued frame was sent (the transmit buffers are
    /// all back).
    pub fn tx_idle(&mut self) -> bool {
        self.reclaim_tx();
        self.tx_free.iter().all(|f| *f)
    }

    /// True if a transmit buffer is free.
    pub fn tx_has_room(&mut self) -> bool {
        self.reclaim_tx();
        self.tx_free.iter().any(|f| *f)
    }

    /// True if a received packet waits for [`Net::recv`].
    pub fn rx_pending(&mut self) -> bool {
        if self.rx_stash.is_none() {
            self.rx_stash = self.rx.poll_used();
        }
        self.rx_stash.is_some()
    }

    /// With `on`, [`Net::recv`] returns buffers to the receive queue
    /// without notifying the device each time: the caller calls
    /// [`Net::kick_rx`] after a batch.
    pub fn batch_rx(&mut self, on: bool) {
        self.rx_batched = on;
    }

    /// Tells the device the receive queue has new buffers.
    pub fn kick_rx(&self) {
        self.dev.notify(RX_QUEUE);
    }

    /// Receives one packet (the Ethernet frame, header stripped) into the
    /// driver's packet buffer and passes it to `f`; false if none came.
    pub fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        let Some((head, len)) = self.rx_stash.take().or_else(|| self.rx.poll_used()) else {
            return false;
        };
        let b = usize::from(self.rx_buf_of[usize::from(head)]);
        let rx_len = self.rx_len;
        let len = (len as usize).min(rx_len * self.rx_chain());
        let src = rx_buf(self.nth, b, rx_len);
        // SAFETY: the device is done with the chain at buffer `b` (it is
        // in the used ring); its buffers are adjacent, `len` within them.
        let first = unsafe { core::slice::from_raw_parts(src, len) };
        let parts = if self.features & F_MRG_RXBUF != 0 && len >= HDR_LEN {
            usize::from(u16::from_le_bytes([first[10], first[11]]))
        } else {
            1
        };
        // SAFETY: PACKET[nth] is only used here, by this single-threaded
        // driver of NIC `nth` (nth < MAX_NICS).
        let packet = unsafe { &mut *core::ptr::addr_of_mut!(PACKET[self.nth]) };
        let mut total = 0;
        let mut ok = len >= HDR_LEN && parts >= 1;
        if ok {
            let body = &first[HDR_LEN..];
            packet[..body.len()].copy_from_slice(body);
            total = body.len();
        }
        self.post_rx(b);
        if parts > 1 {
            self.merged += 1;
        }
        // The other buffers of a merged packet (no header of their own).
        for _ in 1..parts.max(1) {
            let next = loop {
                if let Some(n) = self.rx.poll_used() {
                    break n;
                }
                guest_rt::port::pause();
            };
            let nb = usize::from(self.rx_buf_of[usize::from(next.0)]);
            let nlen = (next.1 as usize).min(rx_len);
            // SAFETY: as for the first buffer.
            let part = unsafe { core::slice::from_raw_parts(rx_buf(self.nth, nb, rx_len), nlen) };
            if ok && total + nlen <= MAX_PACKET {
                packet[total..total + nlen].copy_from_slice(part);
                total += nlen;
            } else {
                ok = false;
            }
            self.post_rx(nb);
        }
        if !self.rx_batched {
            self.dev.notify(RX_QUEUE);
        }
        if ok {
            f(&packet[..total]);
        } else {
            self.rx_errors += 1;
        }
        true
    }
}
