//! A minimal virtio-mmio (version 2) driver with one split virtqueue in
//! static, page-aligned guest memory.
//!
//! [`find`] looks for a device first in Bulkhead's slots (`docs/platform.md`:
//! `0xd000_0000 + 0x1000 * i`, GSI 5 + i), then in QEMU microvm's transports
//! (`0xfeb0_0000 + 0x200 * i`), so the same guest runs on both.
//!
//! Completion is detected by polling the used ring; while waiting, the CPU
//! halts until an interrupt (the device's GSI through the IOAPIC, or a slow
//! LAPIC timer tick as a safety net), so a waiting guest does not burn the
//! host CPU its backend needs.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// virtio-mmio device 0.
pub const MMIO_BASE: usize = 0xd000_0000;
/// Window size of one device.
pub const MMIO_SIZE: usize = 0x1000;
/// GSI of device 0.
pub const GSI_BASE: u8 = 5;
/// Bulkhead's virtio-mmio slots.
pub const SLOTS: u32 = 8;

/// QEMU microvm's first virtio-mmio transport.
pub const MICROVM_MMIO_BASE: usize = 0xfeb0_0000;
/// Distance between microvm's transports.
pub const MICROVM_MMIO_STRIDE: usize = 0x200;
/// Most transports microvm creates (24 with its second IOAPIC, else 8).
pub const MICROVM_TRANSPORTS: u32 = 24;

/// "virt".
pub const MAGIC: u32 = 0x7472_6976;

const REG_MAGIC: usize = 0x000;
const REG_VERSION: usize = 0x004;
const REG_DEVICE_ID: usize = 0x008;
const REG_DEVICE_FEATURES: usize = 0x010;
const REG_DEVICE_FEATURES_SEL: usize = 0x014;
const REG_DRIVER_FEATURES: usize = 0x020;
const REG_DRIVER_FEATURES_SEL: usize = 0x024;
const REG_QUEUE_SEL: usize = 0x030;
const REG_QUEUE_NUM_MAX: usize = 0x034;
const REG_QUEUE_NUM: usize = 0x038;
const REG_QUEUE_READY: usize = 0x044;
const REG_QUEUE_NOTIFY: usize = 0x050;
const REG_INTERRUPT_STATUS: usize = 0x060;
const REG_INTERRUPT_ACK: usize = 0x064;
const REG_STATUS: usize = 0x070;
const REG_QUEUE_DESC_LOW: usize = 0x080;
const REG_QUEUE_DESC_HIGH: usize = 0x084;
const REG_QUEUE_AVAIL_LOW: usize = 0x090;
const REG_QUEUE_AVAIL_HIGH: usize = 0x094;
const REG_QUEUE_USED_LOW: usize = 0x0a0;
const REG_QUEUE_USED_HIGH: usize = 0x0a4;
/// Start of the device config space.
pub const REG_CONFIG: usize = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// Descriptor flag: another descriptor follows.
pub const DESC_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_WRITE: u16 = 2;

/// Queue size used by this driver.
pub const QUEUE_SIZE: usize = 8;

/// One descriptor.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(4096))]
struct DescTable([Desc; QUEUE_SIZE]);

#[repr(C, align(4096))]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4096))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE],
    avail_event: u16,
}

static mut DESC: DescTable = DescTable(
    [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QUEUE_SIZE],
);
static mut AVAIL: Avail = Avail {
    flags: 0,
    idx: 0,
    ring: [0; QUEUE_SIZE],
    used_event: 0,
};
static mut USED: Used = Used {
    flags: 0,
    idx: 0,
    ring: [UsedElem { id: 0, len: 0 }; QUEUE_SIZE],
    avail_event: 0,
};

/// Where a virtio-mmio device was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Bulkhead's slot `i` (GSI 5 + i).
    Bulkhead(u32),
    /// QEMU microvm's transport `i`.
    Microvm(u32),
}

impl Transport {
    /// Base address of the register window.
    pub fn base(self) -> usize {
        match self {
            Transport::Bulkhead(slot) => MMIO_BASE + MMIO_SIZE * slot as usize,
            Transport::Microvm(i) => MICROVM_MMIO_BASE + MICROVM_MMIO_STRIDE * i as usize,
        }
    }
}

/// The first virtio-mmio device of type `device_id`: Bulkhead's slots
/// first, then microvm's transports. Only the magic and device id
/// registers are read, and the scan stops at the first match, so on
/// Bulkhead (disk in slot 0) nothing beyond that slot is touched.
pub fn find(device_id: u32) -> Option<Transport> {
    let bulkhead = (0..SLOTS).map(Transport::Bulkhead);
    let microvm = (0..MICROVM_TRANSPORTS).map(Transport::Microvm);
    bulkhead.chain(microvm).find(|t| {
        let base = t.base();
        rd(base, REG_MAGIC) == MAGIC && rd(base, REG_DEVICE_ID) == device_id
    })
}

/// Why probing or set-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// No virtio-mmio device of the wanted type anywhere.
    NotFound,
    /// No virtio-mmio device at the slot.
    NoDevice(Transport),
    /// Not transport version 2.
    Version(u32),
    /// Another device type.
    DeviceId(u32),
    /// VERSION_1 not offered.
    NotModern,
    /// The device refused our features.
    FeaturesRefused,
    /// Queue 0 is missing or too small.
    Queue(u32),
    /// The device reports an error status.
    Status(u32),
}

/// A virtio-mmio device with queue 0 set up.
pub struct Device {
    base: usize,
    next_avail: u16,
    last_used: u16,
    /// Features negotiated.
    pub features: u64,
}

fn rd(base: usize, reg: usize) -> u32 {
    // SAFETY: `base` is an identity-mapped virtio-mmio window and `reg` a
    // register offset inside it.
    unsafe { read_volatile((base + reg) as *const u32) }
}

fn wr(base: usize, reg: usize, v: u32) {
    // SAFETY: as in `rd`.
    unsafe { write_volatile((base + reg) as *mut u32, v) }
}

impl Device {
    /// Probes `transport` for device type `device_id`, negotiates
    /// VERSION_1 plus whatever of `wanted` is offered, and sets up queue 0.
    pub fn init(transport: Transport, device_id: u32, wanted: u64) -> Result<Device, SetupError> {
        let base = transport.base();
        if rd(base, REG_MAGIC) != MAGIC {
            return Err(SetupError::NoDevice(transport));
        }
        let version = rd(base, REG_VERSION);
        if version != 2 {
            return Err(SetupError::Version(version));
        }
        let id = rd(base, REG_DEVICE_ID);
        if id != device_id {
            return Err(SetupError::DeviceId(id));
        }
        wr(base, REG_STATUS, 0);
        wr(base, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(base, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(base, REG_DEVICE_FEATURES_SEL, 0);
        let lo = rd(base, REG_DEVICE_FEATURES);
        wr(base, REG_DEVICE_FEATURES_SEL, 1);
        let hi = rd(base, REG_DEVICE_FEATURES);
        let offered = (u64::from(hi) << 32) | u64::from(lo);
        if offered & F_VERSION_1 == 0 {
            return Err(SetupError::NotModern);
        }
        let features = offered & (wanted | F_VERSION_1);
        wr(base, REG_DRIVER_FEATURES_SEL, 0);
        wr(base, REG_DRIVER_FEATURES, features as u32);
        wr(base, REG_DRIVER_FEATURES_SEL, 1);
        wr(base, REG_DRIVER_FEATURES, (features >> 32) as u32);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        wr(base, REG_STATUS, s);
        if rd(base, REG_STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(SetupError::FeaturesRefused);
        }
        wr(base, REG_QUEUE_SEL, 0);
        let max = rd(base, REG_QUEUE_NUM_MAX);
        if (max as usize) < QUEUE_SIZE {
            return Err(SetupError::Queue(max));
        }
        wr(base, REG_QUEUE_NUM, QUEUE_SIZE as u32);
        let (d, a, u) = (
            addr_of!(DESC) as u64,
            addr_of!(AVAIL) as u64,
            addr_of!(USED) as u64,
        );
        wr(base, REG_QUEUE_DESC_LOW, d as u32);
        wr(base, REG_QUEUE_DESC_HIGH, (d >> 32) as u32);
        wr(base, REG_QUEUE_AVAIL_LOW, a as u32);
        wr(base, REG_QUEUE_AVAIL_HIGH, (a >> 32) as u32);
        wr(base, REG_QUEUE_USED_LOW, u as u32);
        wr(base, REG_QUEUE_USED_HIGH, (u >> 32) as u32);
        wr(base, REG_QUEUE_READY, 1);
        wr(base, REG_STATUS, s | STATUS_DRIVER_OK);
        let st = rd(base, REG_STATUS);
        if st & (STATUS_NEEDS_RESET | STATUS_FAILED) != 0 || st & STATUS_DRIVER_OK == 0 {
            return Err(SetupError::Status(st));
        }
        Ok(Device {
            base,
            next_avail: 0,
            last_used: 0,
            features,
        })
    }

    /// Reads a 32-bit config field.
    pub fn config_u32(&self, offset: usize) -> u32 {
        rd(self.base, REG_CONFIG + offset)
    }

    /// Reads a 64-bit config field (two 32-bit reads).
    pub fn config_u64(&self, offset: usize) -> u64 {
        let lo = self.config_u32(offset);
        let hi = self.config_u32(offset + 4);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Writes one byte of the config space (as a driver changing, e.g.,
    /// virtio-blk's `writeback` field does).
    pub fn config_write_u8(&self, offset: usize, v: u8) {
        // SAFETY: as in `rd`; config space starts at `REG_CONFIG`.
        unsafe { write_volatile((self.base + REG_CONFIG + offset) as *mut u8, v) }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        rd(self.base, REG_STATUS)
    }

    /// Posts the chain `bufs` (address, length, device-writable) starting
    /// at descriptor 0, notifies the device and waits for the used element.
    /// Returns the used length.
    pub fn submit(&mut self, bufs: &[(u64, u32, bool)], wait: &mut dyn FnMut()) -> u32 {
        let n = bufs.len();
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let mut flags = if write { DESC_WRITE } else { 0 };
            if i + 1 < n {
                flags |= DESC_NEXT;
            }
            let desc = Desc {
                addr,
                len,
                flags,
                next: (i + 1) as u16,
            };
            // SAFETY: `i < n <= QUEUE_SIZE`; only this driver writes the
            // descriptor table, and the previous request has completed.
            unsafe { write_volatile(addr_of_mut!(DESC.0[i]), desc) };
        }
        let slot = usize::from(self.next_avail) % QUEUE_SIZE;
        // SAFETY: the avail ring is written only by this driver.
        unsafe { write_volatile(addr_of_mut!(AVAIL.ring[slot]), 0) };
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { write_volatile(addr_of_mut!(AVAIL.idx), self.next_avail) };
        fence(Ordering::SeqCst);
        wr(self.base, REG_QUEUE_NOTIFY, 0);
        loop {
            // SAFETY: the used index is written by the device; a volatile
            // read sees its latest value.
            let used = unsafe { read_volatile(addr_of!(USED.idx)) };
            if used != self.last_used {
                break;
            }
            wait();
        }
        fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used) % QUEUE_SIZE;
        // SAFETY: the device published this element before the index.
        let elem = unsafe { read_volatile(addr_of!(USED.ring[slot])) };
        self.last_used = self.last_used.wrapping_add(1);
        elem.len
    }

    /// Acknowledges the interrupt status (as a real driver's handler does)
    /// and returns it.
    pub fn ack_interrupt(&self) -> u32 {
        let s = rd(self.base, REG_INTERRUPT_STATUS);
        if s != 0 {
            wr(self.base, REG_INTERRUPT_ACK, s);
        }
        s
    }
}
