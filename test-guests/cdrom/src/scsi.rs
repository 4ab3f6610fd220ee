//! A minimal virtio-scsi driver: the control, event and first request
//! queue of the first virtio-scsi device (Bulkhead's slots, then QEMU
//! microvm's transports), one command at a time on the request queue.
//!
//! A command is the chain request header (device-readable), response
//! (device-writable) and, for commands that read, the data-in buffer. No
//! feature beyond VIRTIO_F_VERSION_1 is negotiated, so the device sends no
//! events: media changes are found by polling GET EVENT STATUS
//! NOTIFICATION, as a CD-ROM driver does.

use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU32, Ordering};

use blk::blk::route_microvm;
use blk::virtio::{find, Transport, GSI_BASE};
use guest_rt::apic::{self, ioapic_route, lapic_id, Trigger};
use guest_rt::virtio::{Buffer, QueueMem, SplitQueue, VirtioError, VirtioMmio};
use guest_rt::{idt, port, println};

/// Virtio device type of a SCSI host.
pub const VIRTIO_ID_SCSI: u32 = 8;
const CONTROL_QUEUE: u16 = 0;
const EVENT_QUEUE: u16 = 1;
const REQUEST_QUEUE: u16 = 2;

/// SCSI status GOOD.
pub const GOOD: u8 = 0;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 2;
/// Sense key NOT READY.
pub const NOT_READY: u8 = 2;
/// Sense key UNIT ATTENTION.
pub const UNIT_ATTENTION: u8 = 6;
/// virtio-scsi response VIRTIO_SCSI_S_OK.
pub const S_OK: u8 = 0;

/// Largest data-in transfer of one command.
pub const DATA_BYTES: usize = 16384;

const VECTOR: u8 = 0x30;
const TICK_VECTOR: u8 = 0x31;
/// LAPIC timer period: 10 ms at KVM's 1 GHz bus / 16.
const TICK_COUNT: u32 = 625_000;

static CONTROL_MEM: QueueMem = QueueMem::new();
static EVENT_MEM: QueueMem = QueueMem::new();
static REQUEST_MEM: QueueMem = QueueMem::new();

/// `struct virtio_scsi_cmd_req` with a 32-byte CDB.
#[repr(C, packed)]
struct CmdReq {
    lun: [u8; 8],
    tag: u64,
    task_attr: u8,
    prio: u8,
    crn: u8,
    cdb: [u8; 32],
}

/// `struct virtio_scsi_cmd_resp` with 96 sense bytes.
#[repr(C, packed)]
struct CmdResp {
    sense_len: u32,
    resid: u32,
    status_qualifier: u16,
    status: u8,
    response: u8,
    sense: [u8; 96],
}

#[repr(C, align(4096))]
struct Data([u8; DATA_BYTES]);

static mut REQ: CmdReq = CmdReq {
    lun: [0; 8],
    tag: 0,
    task_attr: 0,
    prio: 0,
    crn: 0,
    cdb: [0; 32],
};
static mut RESP: CmdResp = CmdResp {
    sense_len: 0,
    resid: 0,
    status_qualifier: 0,
    status: 0,
    response: 0,
    sense: [0; 96],
};
static mut DATA: Data = Data([0; DATA_BYTES]);

static TICKS: AtomicU32 = AtomicU32::new(0);

fn on_device_interrupt(_vector: u8) {}

fn on_tick(_vector: u8) {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Waits about `n` timer ticks (10 ms each).
pub fn sleep_ticks(n: u32) {
    let start = TICKS.load(Ordering::Relaxed);
    while TICKS.load(Ordering::Relaxed).wrapping_sub(start) < n {
        port::wait_for_interrupt();
    }
}

/// Why the host adapter could not be set up (printed with `{:?}`).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub enum SetupError {
    /// No virtio-scsi device anywhere.
    NotFound,
    /// The transport refused.
    Virtio(VirtioError),
    /// The device has no request queue.
    NoRequestQueue(u32),
}

impl From<VirtioError> for SetupError {
    fn from(e: VirtioError) -> Self {
        SetupError::Virtio(e)
    }
}

/// Sense data: key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// ASC.
    pub asc: u8,
    /// ASCQ.
    pub ascq: u8,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD, with the bytes of data-in transferred.
    Good(u32),
    /// CHECK CONDITION with its sense data.
    Check(Sense),
    /// Another SCSI status.
    Status(u8),
    /// The transport failed the command (virtio-scsi response code).
    Response(u8),
}

/// The virtio-scsi host adapter.
pub struct Hba {
    dev: VirtioMmio,
    // Set up for the device (as a driver must), but unused: no events.
    _control: SplitQueue,
    _event: SplitQueue,
    request: SplitQueue,
    next_tag: u64,
}

fn parse_sense(s: &[u8], len: usize) -> Sense {
    let s = &s[..len.min(s.len())];
    match s.first().map(|b| b & 0x7f) {
        // Descriptor format.
        Some(0x72) | Some(0x73) if s.len() >= 4 => Sense {
            key: s[1] & 0xf,
            asc: s[2],
            ascq: s[3],
        },
        // Fixed format.
        Some(0x70) | Some(0x71) if s.len() >= 14 => Sense {
            key: s[2] & 0xf,
            asc: s[12],
            ascq: s[13],
        },
        _ => Sense {
            key: 0xff,
            asc: 0xff,
            ascq: 0xff,
        },
    }
}

impl Hba {
    /// Finds the first virtio-scsi device, routes its interrupt, starts
    /// the wake-up tick and sets up its queues.
    pub fn init() -> Result<Hba, SetupError> {
        idt::set_handler(VECTOR, on_device_interrupt);
        idt::set_handler(TICK_VECTOR, on_tick);
        let transport = find(VIRTIO_ID_SCSI).ok_or(SetupError::NotFound)?;
        match transport {
            Transport::Bulkhead(slot) => {
                ioapic_route(GSI_BASE + slot as u8, VECTOR, Trigger::Edge, lapic_id());
                println!("cdrom: virtio-scsi in Bulkhead slot {}", slot);
            }
            Transport::Microvm(index) => {
                let gsi = route_microvm(index, VECTOR);
                println!(
                    "cdrom: virtio-scsi at microvm transport {} ({:#x}), GSI {:?}",
                    index,
                    transport.base(),
                    gsi
                );
            }
        }
        apic::timer_periodic(TICK_VECTOR, TICK_COUNT);
        let dev = VirtioMmio::at(transport.base())?;
        dev.init(0)?;
        let num_queues = dev.config32(0);
        if num_queues == 0 {
            return Err(SetupError::NoRequestQueue(num_queues));
        }
        let taken = "queue memory taken once";
        let control = CONTROL_MEM.take().expect(taken);
        let event = EVENT_MEM.take().expect(taken);
        let request = REQUEST_MEM.take().expect(taken);
        dev.setup_queue(CONTROL_QUEUE, &control)?;
        dev.setup_queue(EVENT_QUEUE, &event)?;
        dev.setup_queue(REQUEST_QUEUE, &request)?;
        dev.driver_ok();
        println!(
            "cdrom: {} request queue(s), sense_size {}, cdb_size {}, max_target {}",
            num_queues,
            dev.config32(20),
            dev.config32(24),
            dev.config32(28) >> 16
        );
        Ok(Hba {
            dev,
            _control: control,
            _event: event,
            request,
            next_tag: 1,
        })
    }

    /// The data-in buffer of the last command.
    pub fn data(&self) -> &[u8; DATA_BYTES] {
        // SAFETY: single-threaded driver; the device writes the buffer only
        // during `command`, which waits for completion.
        unsafe { &(*addr_of!(DATA)).0 }
    }

    /// Runs `cdb` on `target`/`lun`, reading up to `data_in` bytes
    /// (at most [`DATA_BYTES`]) into [`Hba::data`].
    pub fn command(&mut self, target: u8, lun: u16, cdb: &[u8], data_in: usize) -> Outcome {
        let data_in = data_in.min(DATA_BYTES);
        let mut c = [0u8; 32];
        c[..cdb.len().min(32)].copy_from_slice(&cdb[..cdb.len().min(32)]);
        let tag = self.next_tag;
        self.next_tag += 1;
        // SAFETY: single-threaded driver; the previous command completed,
        // so the device no longer uses these buffers.
        unsafe {
            addr_of_mut!(REQ).write_volatile(CmdReq {
                lun: [1, target, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0],
                tag,
                task_attr: 0,
                prio: 0,
                crn: 0,
                cdb: c,
            });
            addr_of_mut!(RESP).write_volatile(CmdResp {
                sense_len: 0,
                resid: 0,
                status_qualifier: 0,
                status: 0xff,
                response: 0xff,
                sense: [0; 96],
            });
        }
        let req = Buffer {
            addr: addr_of!(REQ) as u64,
            len: core::mem::size_of::<CmdReq>() as u32,
            device_writes: false,
        };
        let resp = Buffer {
            addr: addr_of!(RESP) as u64,
            len: core::mem::size_of::<CmdResp>() as u32,
            device_writes: true,
        };
        let data = Buffer {
            addr: addr_of!(DATA) as u64,
            len: data_in as u32,
            device_writes: true,
        };
        // Edge-triggered routing: clear what the last completion raised.
        self.dev.ack_interrupt();
        let chain = [req, resp, data];
        let chain = if data_in == 0 { &chain[..2] } else { &chain[..] };
        if let Err(e) = self.request.submit(chain) {
            guest_rt::fail!("virtio-scsi submit: {}", e);
        }
        self.dev.notify(REQUEST_QUEUE);
        loop {
            if self.request.poll_used().is_some() {
                break;
            }
            port::wait_for_interrupt();
        }
        // SAFETY: the device wrote the response before publishing the used
        // element.
        let r = unsafe { addr_of!(RESP).read_volatile() };
        let (response, status, resid, sense_len) = (r.response, r.status, r.resid, r.sense_len);
        if response != S_OK {
            return Outcome::Response(response);
        }
        match status {
            GOOD => Outcome::Good((data_in as u32).saturating_sub(resid)),
            CHECK_CONDITION => Outcome::Check(parse_sense(&r.sense, sense_len as usize)),
            s => Outcome::Status(s),
        }
    }
}
