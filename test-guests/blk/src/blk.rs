//! virtio-blk on top of [`crate::virtio`]: one request at a time (header,
//! data, status descriptors), capacity from the config space, and the
//! write / flush / read-back / verify pass the guests run.

use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU32, Ordering};

use guest_rt::apic::{self, ioapic_route, ioapic_route_at, lapic_id, Trigger};
use guest_rt::{acpi, idt, port, println};

use crate::pattern::{self, Mismatch, SECTOR, WORDS};
use crate::virtio::{self, Device, SetupError, Transport, GSI_BASE};

/// virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// VIRTIO_BLK_F_RO.
pub const F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_FLUSH.
pub const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;

/// Sectors written and verified per pass.
pub const SECTORS: u64 = 64;
/// Sectors per request.
pub const PER_REQUEST: usize = 8;

/// Interrupt vector of the device.
const VECTOR: u8 = 0x30;
/// Fallback wake-up tick (LAPIC timer, 10 ms at KVM's 1 GHz bus / 16).
const TICK_VECTOR: u8 = 0x31;
const TICK_COUNT: u32 = 625_000;

#[repr(C, align(4096))]
struct Data([[u64; WORDS]; PER_REQUEST]);

#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

static mut DATA: Data = Data([[0; WORDS]; PER_REQUEST]);
static mut HEADER: Header = Header {
    kind: 0,
    reserved: 0,
    sector: 0,
};
static mut STATUS: u8 = 0xff;

/// Why a pass failed.
#[derive(Debug, Clone, Copy)]
pub enum PassError {
    /// A request completed with a non-OK status.
    Status {
        /// Request type.
        kind: u32,
        /// First sector.
        sector: u64,
        /// Status byte.
        status: u8,
    },
    /// Read-back data differs.
    Data {
        /// Sector.
        sector: u64,
        /// What differs.
        mismatch: Mismatch,
    },
}

/// A virtio-blk device.
pub struct Blk {
    dev: Device,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
}

/// Device interrupts received (the irqfd path works when this grows).
static DEVICE_INTERRUPTS: AtomicU32 = AtomicU32::new(0);

fn on_device_interrupt(_vector: u8) {
    DEVICE_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

fn on_tick(_vector: u8) {}

/// Device interrupts received so far.
pub fn device_interrupts() -> u32 {
    DEVICE_INTERRUPTS.load(Ordering::Relaxed)
}

fn wait() {
    port::wait_for_interrupt();
}

/// Pins per IOAPIC assumed when mapping a GSI to an IOAPIC from the MADT.
const IOAPIC_PINS: u32 = 24;

/// Routes the interrupt of microvm's transport `index` to `vector`.
///
/// QEMU's microvm wires transport `i` to GSI `base + i`: base 24 with its
/// second IOAPIC (listed in the MADT with GSI base 24), else 16 with ACPI,
/// else 5 (no MADT). Returns the GSI, or `None` if no IOAPIC serves it
/// (completions are then found by the fallback tick).
pub fn route_microvm(index: u32, vector: u8) -> Option<u32> {
    let machine = acpi::discover();
    // Without a MADT (microvm with acpi=off): the one IOAPIC at its default
    // address, GSIs from 0.
    let default = [(apic::IOAPIC_BASE as u32, 0)];
    let (ioapics, gsi) = match &machine.ioapics[..machine.ioapic_count] {
        [] => (&default[..], u32::from(GSI_BASE) + index),
        listed if listed.iter().any(|&(_, base)| base == 24) => (listed, 24 + index),
        listed => (listed, 16 + index),
    };
    let &(addr, base) = ioapics
        .iter()
        .find(|&&(_, base)| (base..base + IOAPIC_PINS).contains(&gsi))?;
    let pin = (gsi - base) as u8;
    ioapic_route_at(addr as usize, pin, vector, Trigger::Edge, lapic_id());
    Some(gsi)
}

/// InterruptStatus bit: the configuration changed.
const INT_CONFIG: u32 = 2;

/// Offset of virtio-blk's `writeback` config field.
pub const CONFIG_WRITEBACK: usize = 32;

impl Blk {
    /// Writes `v` to the config space's `writeback` byte.
    pub fn write_writeback(&self, v: u8) {
        self.dev.config_write_u8(CONFIG_WRITEBACK, v);
    }

    /// Finds the first virtio-blk device (Bulkhead's slots, then QEMU
    /// microvm's transports) and sets it up; routes its interrupt and
    /// starts the fallback tick.
    pub fn init() -> Result<Blk, SetupError> {
        idt::set_handler(VECTOR, on_device_interrupt);
        idt::set_handler(TICK_VECTOR, on_tick);
        let transport = virtio::find(VIRTIO_ID_BLOCK).ok_or(SetupError::NotFound)?;
        match transport {
            Transport::Bulkhead(slot) => {
                ioapic_route(GSI_BASE + slot as u8, VECTOR, Trigger::Edge, lapic_id());
                println!("blk: virtio-blk in Bulkhead slot {}", slot);
            }
            Transport::Microvm(index) => match route_microvm(index, VECTOR) {
                Some(gsi) => println!(
                    "blk: virtio-blk at microvm transport {} ({:#x}), GSI {}",
                    index,
                    transport.base(),
                    gsi
                ),
                None => println!(
                    "blk: virtio-blk at microvm transport {} ({:#x}), no IOAPIC for its GSI",
                    index,
                    transport.base()
                ),
            },
        }
        apic::timer_periodic(TICK_VECTOR, TICK_COUNT);
        let dev = Device::init(transport, VIRTIO_ID_BLOCK, F_FLUSH)?;
        let capacity = dev.config_u64(0);
        Ok(Blk { dev, capacity })
    }

    /// Features negotiated.
    pub fn features(&self) -> u64 {
        self.dev.features
    }

    fn request(&mut self, kind: u32, sector: u64, bytes: u32) -> u8 {
        // SAFETY: single-threaded driver; the previous request completed,
        // so the device no longer uses the header and status buffers.
        unsafe {
            addr_of_mut!(HEADER).write_volatile(Header {
                kind,
                reserved: 0,
                sector,
            })
        };
        // SAFETY: as above.
        unsafe { addr_of_mut!(STATUS).write_volatile(0xff) };
        let hdr = addr_of!(HEADER) as u64;
        let data = addr_of!(DATA) as u64;
        let status = addr_of!(STATUS) as u64;
        let hdr_desc = (hdr, core::mem::size_of::<Header>() as u32, false);
        let status_desc = (status, 1, true);
        // The interrupt is routed edge-triggered: acknowledge any status left
        // from the previous completion (QEMU raises a level line that stays
        // high until acknowledged), so this completion makes a new edge.
        if self.dev.ack_interrupt() & INT_CONFIG != 0 {
            // A config-change interrupt: read the capacity again, as
            // Linux's virtblk_config_changed does.
            self.capacity = self.dev.config_u64(0);
            println!("blk: config change, capacity {} sectors", self.capacity);
        }
        if bytes == 0 {
            self.dev.submit(&[hdr_desc, status_desc], &mut wait);
        } else {
            let data_desc = (data, bytes, kind == T_IN);
            self.dev
                .submit(&[hdr_desc, data_desc, status_desc], &mut wait);
        }
        // SAFETY: the device wrote the status before publishing the used
        // element.
        unsafe { addr_of!(STATUS).read_volatile() }
    }

    fn data() -> &'static mut [[u64; WORDS]; PER_REQUEST] {
        // SAFETY: single-threaded driver; the buffer is only handed to the
        // device inside `request`, which waits for completion.
        unsafe { &mut (*addr_of_mut!(DATA)).0 }
    }

    fn checked(&mut self, kind: u32, sector: u64, bytes: u32) -> Result<(), PassError> {
        match self.request(kind, sector, bytes) {
            S_OK => Ok(()),
            status => Err(PassError::Status {
                kind,
                sector,
                status,
            }),
        }
    }

    /// Writes the patterns of `pass` to sectors `[start, start + SECTORS)`,
    /// flushes (if offered), reads them back and verifies them.
    pub fn run_pass(&mut self, start: u64, pass: u64) -> Result<(), PassError> {
        let bytes = (PER_REQUEST * SECTOR) as u32;
        let mut s = start;
        while s < start + SECTORS {
            for (i, sec) in Self::data().iter_mut().enumerate() {
                pattern::fill(sec, s + i as u64, pass);
            }
            self.checked(T_OUT, s, bytes)?;
            s += PER_REQUEST as u64;
        }
        if self.features() & F_FLUSH != 0 {
            self.checked(T_FLUSH, 0, 0)?;
        }
        let mut s = start;
        while s < start + SECTORS {
            for sec in Self::data().iter_mut() {
                sec.fill(0);
            }
            self.checked(T_IN, s, bytes)?;
            for (i, sec) in Self::data().iter().enumerate() {
                let sector = s + i as u64;
                pattern::check(sec, sector, pass)
                    .map_err(|mismatch| PassError::Data { sector, mismatch })?;
            }
            s += PER_REQUEST as u64;
        }
        Ok(())
    }
}

/// Finds and sets up the disk and prints what it found; fails the test on
/// error.
pub fn setup() -> Blk {
    let blk = match Blk::init() {
        Ok(b) => b,
        Err(e) => guest_rt::fail!("virtio-blk set-up: {:?}", e),
    };
    println!(
        "blk: capacity {} sectors, features {:#x}",
        blk.capacity,
        blk.features()
    );
    if blk.capacity < SECTORS {
        guest_rt::fail!("disk too small: {} sectors", blk.capacity);
    }
    if blk.features() & F_RO != 0 {
        guest_rt::fail!("disk is read-only");
    }
    blk
}
