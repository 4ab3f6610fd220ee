//! The MMC commands the guest uses on a CD-ROM logical unit, on top of
//! [`crate::scsi::Hba`]. Any failure the script cannot go on from fails
//! the test with the command and its sense data.

use guest_rt::println;

use crate::disc::{self, BLOCK, WORDS};
use crate::scsi::{sleep_ticks, Hba, Outcome, Sense, NOT_READY, UNIT_ATTENTION};

/// Peripheral device type of a CD/DVD device.
pub const TYPE_CDROM: u8 = 5;
/// Targets probed for the drive.
pub const TARGETS: u8 = 8;
/// Blocks per READ(10).
pub const BLOCKS_PER_READ: u32 = (crate::scsi::DATA_BYTES / BLOCK) as u32;
/// TEST UNIT READY attempts (a tick apart) before giving up on a drive.
const READY_TRIES: u32 = 3000;

/// GET EVENT STATUS NOTIFICATION media event codes (MMC-6 table 148).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// No change.
    NoChange,
    /// The user (the host) asked for the medium to be ejected.
    EjectRequest,
    /// A medium was inserted.
    NewMedia,
    /// The medium was removed.
    MediaRemoval,
    /// Another code.
    Other(u8),
}

/// What a media event poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaStatus {
    /// The event.
    pub event: MediaEvent,
    /// Door or tray open.
    pub tray_open: bool,
    /// A medium is present.
    pub present: bool,
}

/// A CD-ROM logical unit.
pub struct Drive {
    hba: Hba,
    target: u8,
    lun: u16,
}

fn must(what: &str, o: Outcome) -> u32 {
    match o {
        Outcome::Good(n) => n,
        o => guest_rt::fail!("{}: {:?}", what, o),
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Drive {
    /// Probes targets `0..TARGETS`, LUN 0, with INQUIRY and takes the
    /// first CD-ROM (peripheral type 5, removable).
    pub fn find(mut hba: Hba) -> Drive {
        for target in 0..TARGETS {
            let o = hba.command(target, 0, &[0x12, 0, 0, 0, 36, 0], 36);
            let Outcome::Good(n) = o else { continue };
            let d = hba.data();
            let (kind, removable) = (d[0] & 0x1f, d[1] & 0x80 != 0);
            // Qualifier 3: no unit at this LUN.
            if n < 36 || d[0] >> 5 != 0 || kind != TYPE_CDROM {
                continue;
            }
            let text = core::str::from_utf8(&d[8..32]).unwrap_or("?");
            println!(
                "cdrom: target {} lun 0: peripheral type {} (CD-ROM), removable {}, \"{}\"",
                target, kind, removable, text
            );
            if !removable {
                guest_rt::fail!("the CD-ROM is not removable");
            }
            return Drive {
                hba,
                target,
                lun: 0,
            };
        }
        guest_rt::fail!("no CD-ROM on targets 0..{}", TARGETS)
    }

    fn cmd(&mut self, cdb: &[u8], data_in: usize) -> Outcome {
        self.hba.command(self.target, self.lun, cdb, data_in)
    }

    /// TEST UNIT READY until the drive is ready, reporting each UNIT
    /// ATTENTION (power on, medium changed) and waiting while NOT READY.
    pub fn wait_ready(&mut self) {
        let mut not_ready: Option<Sense> = None;
        for _ in 0..READY_TRIES {
            match self.cmd(&[0, 0, 0, 0, 0, 0], 0) {
                Outcome::Good(_) => return,
                Outcome::Check(s) if s.key == UNIT_ATTENTION => {
                    println!(
                        "cdrom: unit attention (asc {:#04x} ascq {:#04x})",
                        s.asc, s.ascq
                    );
                }
                Outcome::Check(s) if s.key == NOT_READY => {
                    if not_ready != Some(s) {
                        println!(
                            "cdrom: not ready (asc {:#04x} ascq {:#04x}), waiting",
                            s.asc, s.ascq
                        );
                        not_ready = Some(s);
                    }
                    sleep_ticks(1);
                }
                o => guest_rt::fail!("TEST UNIT READY: {:?}", o),
            }
        }
        guest_rt::fail!("the drive did not become ready")
    }

    /// READ CAPACITY(10): (blocks, block size).
    pub fn capacity(&mut self) -> (u32, u32) {
        must(
            "READ CAPACITY(10)",
            self.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
        );
        let d = self.hba.data();
        (be32(&d[0..4]).wrapping_add(1), be32(&d[4..8]))
    }

    /// Reads the whole disc (`blocks` blocks) and checks it is one test
    /// disc; returns its (tag, flags) from block 0.
    pub fn read_disc(&mut self, blocks: u32) -> (u64, u64) {
        let mut id: Option<(u64, u64)> = None;
        let mut lba = 0;
        while lba < blocks {
            let n = BLOCKS_PER_READ.min(blocks - lba);
            let l = lba.to_be_bytes();
            let c = (n as u16).to_be_bytes();
            let bytes = n as usize * BLOCK;
            let got = must(
                "READ(10)",
                self.cmd(&[0x28, 0, l[0], l[1], l[2], l[3], 0, c[0], c[1], 0], bytes),
            );
            if got as usize != bytes {
                guest_rt::fail!("READ(10) at {}: {} of {} bytes", lba, got, bytes);
            }
            for i in 0..n {
                let block = u64::from(lba + i);
                let words = words_of(&self.hba.data()[i as usize * BLOCK..][..BLOCK]);
                let (tag, flags) = *id.get_or_insert((words[2], words[3]));
                if let Err(m) = disc::check(&words, block, tag, flags) {
                    guest_rt::fail!("disc block {}: {:?}", block, m);
                }
            }
            lba += n;
        }
        id.unwrap_or_else(|| guest_rt::fail!("empty disc"))
    }

    /// PREVENT ALLOW MEDIUM REMOVAL: locks (`true`) or unlocks the tray.
    pub fn prevent_removal(&mut self, prevent: bool) {
        must(
            "PREVENT ALLOW MEDIUM REMOVAL",
            self.cmd(&[0x1e, 0, 0, 0, u8::from(prevent), 0], 0),
        );
    }

    /// START STOP UNIT with LoEj: ejects the medium (opens the tray).
    pub fn eject(&mut self) {
        must("START STOP UNIT (eject)", self.cmd(&[0x1b, 0, 0, 0, 0x02, 0], 0));
    }

    /// GET EVENT STATUS NOTIFICATION, polled, media class; `None` when a
    /// unit attention answered instead (poll again).
    pub fn media_event(&mut self) -> Option<MediaStatus> {
        let o = self.cmd(&[0x4a, 1, 0, 0, 1 << 4, 0, 0, 0, 8, 0], 8);
        let n = match o {
            Outcome::Good(n) => n,
            // A pending unit attention is reported by the next TEST UNIT
            // READY; poll again.
            Outcome::Check(s) if s.key == UNIT_ATTENTION => return None,
            o => guest_rt::fail!("GET EVENT STATUS NOTIFICATION: {:?}", o),
        };
        let d = self.hba.data();
        // Header: event data length (QEMU, like Linux's check, counts the
        // 4-byte descriptor), NEA | class, supported classes.
        if n < 8 || d[2] & 0x80 != 0 || d[2] & 0x7 != 4 || be16(&d[0..2]) < 4 {
            guest_rt::fail!("GET EVENT STATUS NOTIFICATION: no media event: {:?}", &d[..8]);
        }
        let event = match d[4] & 0xf {
            0 => MediaEvent::NoChange,
            1 => MediaEvent::EjectRequest,
            2 => MediaEvent::NewMedia,
            3 => MediaEvent::MediaRemoval,
            c => MediaEvent::Other(c),
        };
        Some(MediaStatus {
            event,
            tray_open: d[5] & 1 != 0,
            present: d[5] & 2 != 0,
        })
    }
}

/// The 2048 bytes of a block as little-endian words.
fn words_of(b: &[u8]) -> [u64; WORDS] {
    let mut w = [0u64; WORDS];
    for (i, c) in b.chunks_exact(8).enumerate().take(WORDS) {
        let mut x = [0u8; 8];
        x.copy_from_slice(c);
        w[i] = u64::from_le_bytes(x);
    }
    w
}
