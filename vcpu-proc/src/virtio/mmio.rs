//! The virtio-mmio (version 2) transport state machine: registers, feature
//! negotiation, queue configuration, device status, config space and
//! interrupt status. It knows nothing about KVM or vhost-user: the device
//! behind it is a [`VirtioBackend`] (the vhost-user frontend in production,
//! a mock in the tests).
//!
//! Queue notifications do not pass through here: the QueueNotify register
//! is covered by one KVM ioeventfd per queue, so a write only reaches
//! [`MmioTransport`] for a queue index that has no ioeventfd (and is then
//! ignored).
//!
//! ## Why InterruptStatus always reports "used buffer" while DRIVER_OK
//!
//! The backend signals used buffers through the call eventfd, which is a
//! KVM irqfd: the interrupt goes straight into the in-kernel IOAPIC and this
//! process never sees it, so it cannot latch `VIRTIO_MMIO_INT_VRING` per
//! interrupt. A driver that reads InterruptStatus in its interrupt handler
//! (Linux's `vm_interrupt`) would then see 0 and drop the interrupt. So the
//! VRING bit reads as pending whenever the device is live (DRIVER_OK): the
//! driver then scans its used rings, and a scan that finds nothing new is
//! harmless (the same happens with a shared interrupt line). The
//! config-change bit is real state: set when the transport notices a config
//! change, cleared by InterruptACK.

use crate::devices::{le_value, GuestAction};
use crate::trace::{
    virtio_mmio_read as mmio_read, virtio_mmio_status as mmio_status,
    virtio_mmio_write as mmio_write,
};
use ipc_proto::{trace_point, warn_limited};

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version this implements (virtio 1.x "modern").
pub const MMIO_VERSION: u32 = 2;
/// VendorID reported to the guest ("BKHD").
pub const VENDOR_ID: u32 = 0x4448_4b42;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod reg {
    /// Magic value.
    pub const MAGIC: u64 = 0x000;
    /// Transport version.
    pub const VERSION: u64 = 0x004;
    /// Virtio device type.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features (32 bits selected by DEVICE_FEATURES_SEL).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features word selector.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features (32 bits selected by DRIVER_FEATURES_SEL).
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features word selector.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Largest queue size of the selected queue.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Queue size chosen by the driver.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Queue ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notifier (served by ioeventfds).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low word.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high word.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available (driver) ring address, low word.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available (driver) ring address, high word.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used (device) ring address, low word.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used (device) ring address, high word.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Shared memory region selector.
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory length, low word.
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory length, high word.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory base, low word.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory base, high word.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Config generation counter.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific config space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: queues are live.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up.
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: a used buffer was published.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_INDIRECT_DESC.
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// VIRTIO_F_RING_EVENT_IDX.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
/// The device-specific feature ranges of the virtio spec (1.2, 2.2
/// "Feature Bits"): bits 0 to 23 and 50 to 127 (of which a 64-bit word
/// holds 50 to 63; virtio-net uses them, e.g. GUEST_USO4 54, HASH_REPORT
/// 57, RSS 60, SPEED_DUPLEX 63). Bits 24 to 41 belong to the transport and
/// 42 to 49 are reserved.
pub const DEVICE_SPECIFIC_FEATURES: u64 = 0x00ff_ffff | (u64::MAX << 50);
/// Feature bits this transport can pass to the guest: every
/// device-specific bit, plus indirect descriptors, event index and
/// VERSION_1. Transport bits it would have to implement itself (packed
/// rings, access platform, notification data, ring reset, ...) and the
/// reserved range are masked.
pub const TRANSPORT_FEATURE_MASK: u64 =
    DEVICE_SPECIFIC_FEATURES | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX | F_VERSION_1;

/// The guest-programmed configuration of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue size (number of descriptors).
    pub size: u16,
    /// QueueReady was set.
    pub ready: bool,
    /// Descriptor table (guest physical).
    pub desc: u64,
    /// Available ring (guest physical).
    pub avail: u64,
    /// Used ring (guest physical).
    pub used: u64,
}

/// What the driver set up when it wrote DRIVER_OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Every queue, indexed by queue number (only `ready` ones are live).
    pub queues: Vec<QueueConfig>,
}

/// The device behind a transport.
pub trait VirtioBackend: Send {
    /// Virtio device type (2 = block).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the guest (already masked to what the
    /// transport supports).
    fn device_features(&self) -> u64;
    /// Number of queues.
    fn num_queues(&self) -> u16;
    /// Largest queue size.
    fn queue_max_size(&self) -> u16;
    /// Reads the device config space at `offset`; true when the content
    /// differs from the last read (the config generation then advances).
    fn read_config(&mut self, offset: u64, data: &mut [u8]) -> bool;
    /// Writes the device config space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device (DRIVER_OK). False if it could not: the transport
    /// then reports DEVICE_NEEDS_RESET.
    fn activate(&mut self, activation: &Activation) -> bool;
    /// True when the device failed after DRIVER_OK (e.g. the backend
    /// refused the queues, asynchronously): the transport then reports
    /// DEVICE_NEEDS_RESET with a config-change interrupt.
    fn needs_reset(&self) -> bool;
    /// True once per config change the device noticed by itself (the
    /// transport latches the config-change interrupt status).
    fn take_config_interrupt(&mut self) -> bool;
    /// Stops the device (status 0 written).
    fn reset(&mut self);
}

/// One virtio-mmio transport.
#[derive(Debug)]
pub struct MmioTransport<B: VirtioBackend> {
    backend: B,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    shm_sel: u32,
}

fn set_half(value: &mut u64, high: bool, word: u32) {
    if high {
        *value = (*value & 0xffff_ffff) | (u64::from(word) << 32);
    } else {
        *value = (*value & !0xffff_ffff) | u64::from(word);
    }
}

impl<B: VirtioBackend> MmioTransport<B> {
    /// A transport in its reset state in front of `backend`.
    pub fn new(backend: B) -> Self {
        let n = usize::from(backend.num_queues());
        MmioTransport {
            backend,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: vec![QueueConfig::default(); n],
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            shm_sel: 0,
        }
    }

    /// The device behind the transport.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The device behind the transport, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The queues as the guest configured them.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// Latches a configuration change (the caller raises the interrupt).
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt_status |= INT_CONFIG;
    }

    fn selected(&self) -> Option<&QueueConfig> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
    }

    fn selected_mut(&mut self) -> Option<&mut QueueConfig> {
        // A queue's configuration is frozen while the device is live.
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
    }

    /// Resets the device as a status write of 0 does (also used for a
    /// machine reset).
    pub fn reset(&mut self) {
        self.backend.reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueConfig::default());
        self.status = 0;
        self.interrupt_status = 0;
        self.shm_sel = 0;
    }

    /// Latches a failure the device reported after DRIVER_OK, and a
    /// config change it noticed.
    fn poll_backend(&mut self) {
        if self.backend.take_config_interrupt() {
            self.notify_config_change();
        }
        if self.status & status::DRIVER_OK != 0
            && self.status & status::DEVICE_NEEDS_RESET == 0
            && self.backend.needs_reset()
        {
            self.status |= status::DEVICE_NEEDS_RESET;
            self.notify_config_change();
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        if offset == reg::STATUS || offset == reg::INTERRUPT_STATUS {
            self.poll_backend();
        }
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.backend.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let f = self.backend.device_features() & TRANSPORT_FEATURE_MASK;
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self
                .selected()
                .map_or(0, |_| u32::from(self.backend.queue_max_size())),
            reg::QUEUE_NUM => self.selected().map_or(0, |q| u32::from(q.size)),
            reg::QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => {
                let vring = if self.status & status::DRIVER_OK != 0 {
                    INT_VRING
                } else {
                    0
                };
                vring | self.interrupt_status
            }
            reg::STATUS => self.status,
            // No shared memory regions: length reads as all ones (-1).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                warn_limited!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    warn_limited!("virtio-mmio: driver features written after FEATURES_OK");
                    return;
                }
                match self.driver_features_sel {
                    0 => set_half(&mut self.driver_features, false, v),
                    1 => set_half(&mut self.driver_features, true, v),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                let max = self.backend.queue_max_size();
                if let Some(q) = self.selected_mut() {
                    match u16::try_from(v) {
                        Ok(n) if n <= max => q.size = n,
                        _ => warn_limited!("virtio-mmio: queue size {v} above the maximum {max}"),
                    }
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_mut() {
                    q.ready = v & 1 == 1;
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                if let Some(q) = self.selected_mut() {
                    set_half(&mut q.desc, offset == reg::QUEUE_DESC_HIGH, v);
                }
            }
            reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH => {
                if let Some(q) = self.selected_mut() {
                    set_half(&mut q.avail, offset == reg::QUEUE_AVAIL_HIGH, v);
                }
            }
            reg::QUEUE_USED_LOW | reg::QUEUE_USED_HIGH => {
                if let Some(q) = self.selected_mut() {
                    set_half(&mut q.used, offset == reg::QUEUE_USED_HIGH, v);
                }
            }
            reg::QUEUE_NOTIFY => {
                // Valid queues are served by ioeventfds; this is an
                // out-of-range index.
                warn_limited!("virtio-mmio: notify of unknown queue {v}");
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => self.shm_sel = v,
            _ => warn_limited!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.backend.device_features() & TRANSPORT_FEATURE_MASK;
        self.driver_features & !offered == 0 && self.driver_features & F_VERSION_1 != 0
    }

    fn queues_valid(&self) -> bool {
        self.queues
            .iter()
            .filter(|q| q.ready)
            .all(|q| q.size != 0 && q.size.is_power_of_two())
    }

    fn write_status(&mut self, v: u32) {
        trace_point!(mmio_status(self.backend.device_type(), self.status, v));
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if v & old != old {
            warn_limited!("virtio-mmio: status {old:#x} -> {v:#x} clears bits without a reset");
            return;
        }
        let mut new = v;
        if new & status::FEATURES_OK != 0
            && old & status::FEATURES_OK == 0
            && !self.features_acceptable()
        {
            // The driver reads FEATURES_OK back and gives up.
            new &= !status::FEATURES_OK;
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 || !self.queues_valid() {
                warn_limited!("virtio-mmio: DRIVER_OK without valid features or queues");
                self.status = new & !status::DRIVER_OK | status::DEVICE_NEEDS_RESET;
                return;
            }
            let activation = Activation {
                driver_features: self.driver_features,
                queues: self.queues.clone(),
            };
            if !self.backend.activate(&activation) {
                new |= status::DEVICE_NEEDS_RESET;
                self.interrupt_status |= INT_CONFIG;
            }
        }
        self.status = new;
    }

    /// A guest read at `offset` within the device window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            if self.backend.read_config(offset - reg::CONFIG, data) {
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_limited!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        trace_point!(mmio_read(self.backend.device_type(), offset, v));
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write at `offset` within the device window.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestAction> {
        trace_point!(mmio_write(self.backend.device_type(), offset, data));
        if offset >= reg::CONFIG {
            self.backend.write_config(offset - reg::CONFIG, data);
            return None;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_limited!("virtio-mmio: {}-byte write at {offset:#x}", data.len());
            return None;
        }
        self.write_reg(offset, le_value(data) as u32);
        None
    }
}

pub mod state;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Mock {
        config: Vec<u8>,
        activations: Vec<Activation>,
        resets: usize,
        refuse: bool,
        failed_later: bool,
        config_irq: bool,
        changed: bool,
        /// Device features other than the default set.
        features: Option<u64>,
    }

    impl VirtioBackend for Mock {
        fn device_type(&self) -> u32 {
            2
        }
        fn device_features(&self) -> u64 {
            self.features
                .unwrap_or(F_VERSION_1 | (1 << 9) | (1 << 30) | (1 << 34))
        }
        fn num_queues(&self) -> u16 {
            2
        }
        fn queue_max_size(&self) -> u16 {
            256
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) -> bool {
            let o = offset as usize;
            data.copy_from_slice(&self.config[o..o + data.len()]);
            self.changed
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.config[o..o + data.len()].copy_from_slice(data);
        }
        fn activate(&mut self, activation: &Activation) -> bool {
            self.activations.push(activation.clone());
            !self.refuse
        }
        fn needs_reset(&self) -> bool {
            self.failed_later
        }
        fn take_config_interrupt(&mut self) -> bool {
            std::mem::take(&mut self.config_irq)
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn transport() -> MmioTransport<Mock> {
        MmioTransport::new(Mock {
            config: (0u8..16).collect(),
            ..Mock::default()
        })
    }

    fn rd(t: &mut MmioTransport<Mock>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Mock>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport<Mock>, features: u64) {
        wr(t, reg::STATUS, status::ACKNOWLEDGE);
        wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, reg::DRIVER_FEATURES, features as u32);
        wr(t, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport<Mock>, q: u32, size: u32, base: u64) {
        wr(t, reg::QUEUE_SEL, q);
        wr(t, reg::QUEUE_NUM, size);
        wr(t, reg::QUEUE_DESC_LOW, base as u32);
        wr(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
        wr(t, reg::QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
        wr(t, reg::QUEUE_AVAIL_HIGH, ((base + 0x1000) >> 32) as u32);
        wr(t, reg::QUEUE_USED_LOW, (base + 0x2000) as u32);
        wr(t, reg::QUEUE_USED_HIGH, ((base + 0x2000) >> 32) as u32);
        wr(t, reg::QUEUE_READY, 1);
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_registers_describe_a_version_2_block_device() {
        let mut t = transport();
        assert_eq!(rd(&mut t, reg::MAGIC), MAGIC_VALUE);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 2);
        assert_eq!(rd(&mut t, reg::VENDOR_ID), VENDOR_ID);
    }

    #[test]
    fn device_features_hide_vhost_user_and_unsupported_transport_bits() {
        let mut t = transport();
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1 << 9);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn device_specific_bits_50_to_63_reach_the_guest_and_reserved_ones_do_not() {
        // virtio-net's GUEST_USO4 (54), HASH_REPORT (57), RSS (60),
        // SPEED_DUPLEX (63); 42..=49 are reserved, 34 (packed) is a
        // transport bit this transport does not implement.
        let net_high = (1 << 54) | (1 << 57) | (1 << 60) | (1 << 63);
        let mut t = MmioTransport::new(Mock {
            features: Some(F_VERSION_1 | net_high | (1 << 34) | (1 << 45)),
            ..Mock::default()
        });
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            u64::from(rd(&mut t, reg::DEVICE_FEATURES)) << 32,
            F_VERSION_1 | net_high
        );
        negotiate(&mut t, F_VERSION_1 | (1 << 63) | (1 << 54));
        assert_ne!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        let mut t = MmioTransport::new(Mock {
            features: Some(F_VERSION_1 | (1 << 45)),
            ..Mock::default()
        });
        negotiate(&mut t, F_VERSION_1 | (1 << 45));
        assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn features_ok_sticks_for_an_offered_subset_with_version_1() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1 | (1 << 9));
        assert_ne!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_bits() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1 | (1 << 30));
        assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn features_ok_is_refused_without_version_1() {
        let mut t = transport();
        negotiate(&mut t, 1 << 9);
        assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_activates_the_backend_with_the_programmed_queues() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 128, 0x1_0000_0000);
        wr(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(rd(&mut t, reg::STATUS), ALL_OK);
        let a = &t.backend().activations;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].driver_features, F_VERSION_1);
        assert_eq!(
            a[0].queues[0],
            QueueConfig {
                size: 128,
                ready: true,
                desc: 0x1_0000_0000,
                avail: 0x1_0000_1000,
                used: 0x1_0000_2000,
            }
        );
        assert!(!a[0].queues[1].ready);
    }

    #[test]
    fn failed_activation_reports_device_needs_reset() {
        let mut t = transport();
        t.backend_mut().refuse = true;
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10000);
        wr(&mut t, reg::STATUS, ALL_OK);
        assert_ne!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn a_device_failing_after_driver_ok_reports_needs_reset_with_a_config_interrupt() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10000);
        wr(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(rd(&mut t, reg::STATUS), ALL_OK);
        t.backend_mut().failed_later = true;
        assert_eq!(
            rd(&mut t, reg::INTERRUPT_STATUS),
            INT_VRING | INT_CONFIG,
            "config interrupt"
        );
        assert_eq!(rd(&mut t, reg::STATUS), ALL_OK | status::DEVICE_NEEDS_RESET);
        wr(&mut t, reg::STATUS, 0);
        t.backend_mut().failed_later = false;
        assert_eq!(rd(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn driver_ok_with_a_non_power_of_two_queue_is_refused() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 100, 0x10000);
        wr(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(rd(&mut t, reg::STATUS) & status::DRIVER_OK, 0);
        assert!(t.backend().activations.is_empty());
    }

    #[test]
    fn queue_registers_of_a_missing_queue_read_zero_and_ignore_writes() {
        let mut t = transport();
        wr(&mut t, reg::QUEUE_SEL, 5);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
        wr(&mut t, reg::QUEUE_NUM, 64);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM), 0);
        wr(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 256);
    }

    #[test]
    fn queue_size_above_the_maximum_is_ignored() {
        let mut t = transport();
        wr(&mut t, reg::QUEUE_SEL, 0);
        wr(&mut t, reg::QUEUE_NUM, 512);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM), 0);
    }

    #[test]
    fn queue_configuration_is_frozen_while_live() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10000);
        wr(&mut t, reg::STATUS, ALL_OK);
        wr(&mut t, reg::QUEUE_NUM, 64);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM), 128);
    }

    #[test]
    fn status_zero_resets_transport_and_backend() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10000);
        wr(&mut t, reg::STATUS, ALL_OK);
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert_eq!(t.backend().resets, 1);
        assert_eq!(t.queues()[0], QueueConfig::default());
    }

    #[test]
    fn machine_reset_stops_a_live_device() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10000);
        wr(&mut t, reg::STATUS, ALL_OK);
        t.reset();
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
        assert_eq!(t.backend().resets, 1);
    }

    #[test]
    fn clearing_status_bits_without_reset_is_ignored() {
        let mut t = transport();
        negotiate(&mut t, F_VERSION_1);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            rd(&mut t, reg::STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
    }

    #[test]
    fn interrupt_status_reports_vring_only_while_driver_ok() {
        let mut t = transport();
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
        negotiate(&mut t, F_VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10000);
        wr(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
        wr(&mut t, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
    }

    #[test]
    fn config_change_is_latched_until_acknowledged() {
        let mut t = transport();
        let g = rd(&mut t, reg::CONFIG_GENERATION);
        t.notify_config_change();
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_ne!(rd(&mut t, reg::CONFIG_GENERATION), g);
        wr(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn config_space_accesses_reach_the_backend_at_their_offset() {
        let mut t = transport();
        let mut b = [0u8; 2];
        t.read(reg::CONFIG + 4, &mut b);
        assert_eq!(b, [4, 5]);
        t.write(reg::CONFIG + 8, &[0xaa]);
        assert_eq!(t.backend().config[8], 0xaa);
    }

    #[test]
    fn a_config_change_the_device_noticed_raises_the_config_interrupt() {
        let mut t = transport();
        let g = rd(&mut t, reg::CONFIG_GENERATION);
        t.backend_mut().config_irq = true;
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_ne!(rd(&mut t, reg::CONFIG_GENERATION), g);
        wr(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn changed_config_content_advances_the_generation() {
        let mut t = transport();
        t.backend_mut().changed = true;
        let mut b = [0u8; 1];
        t.read(reg::CONFIG, &mut b);
        assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 1);
    }

    #[test]
    fn narrow_register_accesses_are_ignored() {
        let mut t = transport();
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1]);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
    }
}
