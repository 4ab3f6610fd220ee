//! Minimal virtio-mmio (version 2) transport and split virtqueue, for guests
//! that drive virtio devices (e.g. a virtio-blk guest).
//!
//! Bulkhead places device `i` (< 8) at `0xd000_0000 + 0x1000 * i` on GSI
//! `5 + i` ([`VirtioMmio::bulkhead`]). The queue memory is a static
//! [`QueueMem`]; requests are submitted as descriptor chains and completions
//! polled from the used ring (or awaited with an interrupt on the GSI).
//!
//! Ordering: x86 keeps stores in order and MMIO accesses are VM exits, so
//! compiler fences suffice (no `mfence`, which the development machines'
//! emulating KVM may not handle).

use core::cell::UnsafeCell;
use core::sync::atomic::{compiler_fence, AtomicBool, Ordering};

/// First virtio-mmio device in Bulkhead.
pub const BULKHEAD_MMIO_BASE: usize = 0xd000_0000;
/// Distance between Bulkhead's virtio-mmio devices.
pub const BULKHEAD_MMIO_STRIDE: usize = 0x1000;
/// GSI of Bulkhead's virtio-mmio device 0 (device `i` uses `5 + i`).
pub const BULKHEAD_MMIO_GSI_BASE: u32 = 5;
/// Number of virtio-mmio slots in Bulkhead.
pub const BULKHEAD_MMIO_SLOTS: usize = 8;
/// Entries per virtqueue.
pub const QUEUE_SIZE: u16 = 16;
/// Virtio device ID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC_LOW: usize = 0x080;
const QUEUE_DESC_HIGH: usize = 0x084;
const QUEUE_DRIVER_LOW: usize = 0x090;
const QUEUE_DRIVER_HIGH: usize = 0x094;
const QUEUE_DEVICE_LOW: usize = 0x0a0;
const QUEUE_DEVICE_HIGH: usize = 0x0a4;
const CONFIG: usize = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// Why a virtio device could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioError {
    /// No virtio-mmio device (bad magic or device ID 0).
    NoDevice,
    /// Not a version 2 (modern) virtio-mmio device.
    UnsupportedVersion(u32),
    /// The device does not offer VIRTIO_F_VERSION_1.
    NotModern,
    /// The device cleared FEATURES_OK.
    FeaturesRejected,
    /// The queue does not exist or is smaller than [`QUEUE_SIZE`].
    QueueTooSmall(u32),
    /// The queue is already set up.
    QueueInUse,
    /// The descriptor chain is empty or longer than the free descriptors.
    BadChain,
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VirtioError::NoDevice => write!(f, "no virtio-mmio device"),
            VirtioError::UnsupportedVersion(v) => write!(f, "virtio-mmio version {v} (want 2)"),
            VirtioError::NotModern => write!(f, "device does not offer VIRTIO_F_VERSION_1"),
            VirtioError::FeaturesRejected => write!(f, "device rejected the features"),
            VirtioError::QueueTooSmall(n) => write!(f, "queue size {n} (want >= {QUEUE_SIZE})"),
            VirtioError::QueueInUse => write!(f, "queue already set up"),
            VirtioError::BadChain => write!(f, "bad descriptor chain"),
        }
    }
}

/// A virtio-mmio device.
#[derive(Clone, Copy, Debug)]
pub struct VirtioMmio {
    base: usize,
}

impl VirtioMmio {
    /// The device at `base`, if a virtio-mmio device with a non-zero device
    /// ID is there.
    pub fn at(base: usize) -> Result<Self, VirtioError> {
        let d = VirtioMmio { base };
        if d.read(MAGIC) != 0x7472_6976 || d.read(DEVICE_ID) == 0 {
            return Err(VirtioError::NoDevice);
        }
        match d.read(VERSION) {
            2 => Ok(d),
            v => Err(VirtioError::UnsupportedVersion(v)),
        }
    }

    /// Bulkhead's virtio-mmio device in slot `index`.
    pub fn bulkhead(index: usize) -> Result<Self, VirtioError> {
        if index >= BULKHEAD_MMIO_SLOTS {
            return Err(VirtioError::NoDevice);
        }
        Self::at(BULKHEAD_MMIO_BASE + BULKHEAD_MMIO_STRIDE * index)
    }

    fn read(&self, reg: usize) -> u32 {
        // SAFETY: `base` is an identity-mapped virtio-mmio register page.
        unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
    }

    fn write(&self, reg: usize, value: u32) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, value) };
    }

    /// MMIO base address.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Virtio device ID (2 = block, 1 = net, ...).
    pub fn device_id(&self) -> u32 {
        self.read(DEVICE_ID)
    }

    /// Resets the device and negotiates `wanted` (VIRTIO_F_VERSION_1 is
    /// always requested). Returns the features in use.
    pub fn init(&self, wanted: u64) -> Result<u64, VirtioError> {
        self.write(STATUS, 0);
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read(DEVICE_FEATURES));
        self.write(DEVICE_FEATURES_SEL, 1);
        let offered = low | u64::from(self.read(DEVICE_FEATURES)) << 32;
        if offered & F_VERSION_1 == 0 {
            self.write(STATUS, STATUS_FAILED);
            return Err(VirtioError::NotModern);
        }
        let features = offered & (wanted | F_VERSION_1);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
        self.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if self.read(STATUS) & STATUS_FEATURES_OK == 0 {
            self.write(STATUS, STATUS_FAILED);
            return Err(VirtioError::FeaturesRejected);
        }
        Ok(features)
    }

    /// Reads a 32-bit word of the device configuration space.
    pub fn config32(&self, offset: usize) -> u32 {
        self.read(CONFIG + offset)
    }

    /// Reads a 64-bit field of the device configuration space (retrying
    /// across config generation changes).
    pub fn config64(&self, offset: usize) -> u64 {
        loop {
            let gen = self.read(0x0fc);
            let v = u64::from(self.config32(offset)) | u64::from(self.config32(offset + 4)) << 32;
            if self.read(0x0fc) == gen {
                return v;
            }
        }
    }

    /// Sets up queue `index` with the memory of `queue` (size [`QUEUE_SIZE`]).
    pub fn setup_queue(&self, index: u16, queue: &SplitQueue) -> Result<(), VirtioError> {
        self.write(QUEUE_SEL, u32::from(index));
        if self.read(QUEUE_READY) != 0 {
            return Err(VirtioError::QueueInUse);
        }
        let max = self.read(QUEUE_NUM_MAX);
        if max < u32::from(QUEUE_SIZE) {
            return Err(VirtioError::QueueTooSmall(max));
        }
        self.write(QUEUE_NUM, u32::from(QUEUE_SIZE));
        let (desc, avail, used) = queue.addresses();
        self.write(QUEUE_DESC_LOW, desc as u32);
        self.write(QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(QUEUE_DRIVER_LOW, avail as u32);
        self.write(QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        self.write(QUEUE_DEVICE_LOW, used as u32);
        self.write(QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        self.write(QUEUE_READY, 1);
        Ok(())
    }

    /// Sets DRIVER_OK: the device may now process queues.
    pub fn driver_ok(&self) {
        self.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    /// Device status register.
    pub fn status(&self) -> u32 {
        self.read(STATUS)
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        compiler_fence(Ordering::SeqCst);
        self.write(QUEUE_NOTIFY, u32::from(index));
    }

    /// Reads and acknowledges the interrupt status (bit 0: used buffer,
    /// bit 1: configuration change).
    pub fn ack_interrupt(&self) -> u32 {
        let s = self.read(INTERRUPT_STATUS);
        self.write(INTERRUPT_ACK, s);
        s
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE as usize],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE as usize],
    avail_event: u16,
}

#[repr(C, align(4096))]
struct Rings {
    desc: [Desc; QUEUE_SIZE as usize],
    avail: Avail,
    used: Used,
}

/// Static memory for one virtqueue; hand it out once with [`QueueMem::take`].
pub struct QueueMem {
    rings: UnsafeCell<Rings>,
    taken: AtomicBool,
}

// SAFETY: the rings are only reached through the single `SplitQueue` that
// `take` hands out (guarded by `taken`) and by the device.
unsafe impl Sync for QueueMem {}

impl QueueMem {
    /// Zeroed queue memory (place it in a `static`).
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        const D: Desc = Desc {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        };
        const U: UsedElem = UsedElem { id: 0, len: 0 };
        QueueMem {
            rings: UnsafeCell::new(Rings {
                desc: [D; QUEUE_SIZE as usize],
                avail: Avail {
                    flags: 0,
                    idx: 0,
                    ring: [0; QUEUE_SIZE as usize],
                    used_event: 0,
                },
                used: Used {
                    flags: 0,
                    idx: 0,
                    ring: [U; QUEUE_SIZE as usize],
                    avail_event: 0,
                },
            }),
            taken: AtomicBool::new(false),
        }
    }

    /// The queue, the first time; `None` afterwards.
    pub fn take(&'static self) -> Option<SplitQueue> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(SplitQueue {
            rings: self.rings.get(),
            free: [true; QUEUE_SIZE as usize],
            next_avail: 0,
            last_used: 0,
        })
    }
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    /// Guest-physical address (identity-mapped, so a pointer's value).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes this buffer (otherwise it reads it).
    pub device_writes: bool,
}

/// A split virtqueue of [`QUEUE_SIZE`] entries over static [`QueueMem`].
pub struct SplitQueue {
    rings: *mut Rings,
    free: [bool; QUEUE_SIZE as usize],
    next_avail: u16,
    last_used: u16,
}

impl SplitQueue {
    fn addresses(&self) -> (u64, u64, u64) {
        let r = self.rings;
        // SAFETY: only field addresses are computed; `rings` points to a
        // live static.
        unsafe {
            (
                core::ptr::addr_of!((*r).desc) as u64,
                core::ptr::addr_of!((*r).avail) as u64,
                core::ptr::addr_of!((*r).used) as u64,
            )
        }
    }

    /// Places `chain` in the descriptor table and publishes it in the avail
    /// ring; returns the head descriptor index (the ID the used ring reports).
    /// Call [`VirtioMmio::notify`] afterwards.
    pub fn submit(&mut self, chain: &[Buffer]) -> Result<u16, VirtioError> {
        let free = self.free.iter().filter(|f| **f).count();
        if chain.is_empty() || chain.len() > free {
            return Err(VirtioError::BadChain);
        }
        let mut ids = [0u16; QUEUE_SIZE as usize];
        let mut n = 0;
        for (i, f) in self.free.iter_mut().enumerate() {
            if *f && n < chain.len() {
                *f = false;
                ids[n] = i as u16;
                n += 1;
            }
        }
        for (k, b) in chain.iter().enumerate() {
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            let next = if k + 1 < chain.len() {
                flags |= DESC_F_NEXT;
                ids[k + 1]
            } else {
                0
            };
            let d = Desc {
                addr: b.addr,
                len: b.len,
                flags,
                next,
            };
            // SAFETY: ids[k] < QUEUE_SIZE; the descriptor is free, so the
            // device does not read it concurrently.
            unsafe {
                core::ptr::write_volatile(
                    core::ptr::addr_of_mut!((*self.rings).desc[usize::from(ids[k])]),
                    d,
                )
            };
        }
        let slot = usize::from(self.next_avail % QUEUE_SIZE);
        // SAFETY: the avail ring slot belongs to the driver until `idx` moves.
        unsafe {
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*self.rings).avail.ring[slot]),
                ids[0],
            )
        };
        compiler_fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: publishing the new index is the driver's write to make.
        unsafe {
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*self.rings).avail.idx),
                self.next_avail,
            )
        };
        Ok(ids[0])
    }

    /// A completed chain, if any: (head descriptor index, bytes written).
    /// Frees the chain's descriptors.
    pub fn poll_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: the device writes `used.idx`; reading it volatile is the
        // protocol.
        let idx = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*self.rings).used.idx)) };
        if idx == self.last_used {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used % QUEUE_SIZE);
        // SAFETY: entries before `used.idx` are complete and stable.
        let e =
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*self.rings).used.ring[slot])) };
        self.last_used = self.last_used.wrapping_add(1);
        let mut id = (e.id as u16) % QUEUE_SIZE;
        for _ in 0..QUEUE_SIZE {
            self.free[usize::from(id)] = true;
            // SAFETY: id < QUEUE_SIZE; the chain is back in the driver's hands.
            let d = unsafe {
                core::ptr::read_volatile(core::ptr::addr_of!((*self.rings).desc[usize::from(id)]))
            };
            if d.flags & DESC_F_NEXT == 0 {
                break;
            }
            id = d.next % QUEUE_SIZE;
        }
        Some(((e.id as u16) % QUEUE_SIZE, e.len))
    }
}
