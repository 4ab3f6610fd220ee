//! The vhost-user dirty log from the frontend's side, as a migrating VMM
//! uses it: a memfd bitmap (one bit per 4 KiB guest-physical page, bit
//! `n % 8` of byte `n / 8`), handed over with SET_LOG_BASE
//! (`VHOST_USER_PROTOCOL_F_LOG_SHMFD`), and logging turned on or off on a
//! live device with SET_FEATURES (±`VHOST_F_LOG_ALL`) and SET_VRING_ADDR
//! (±`VHOST_VRING_F_LOG`, the used ring's guest address as its log
//! address).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vhost::vhost_user::message::VhostUserVringAddrFlags;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VringConfigData};

use crate::error::{HarnessError, Result};
use crate::frontend::{Connection, RingAddrs};
use crate::memory::GuestMem;
use crate::ring::DriverRing;

/// `VHOST_F_LOG_ALL`.
pub const F_LOG_ALL: u64 = 1 << 26;
/// Guest-physical bytes per bit.
pub const LOG_PAGE: u64 = 4096;

/// A dirty log in a memfd.
pub struct HarnessLog {
    file: File,
    size: u64,
}

impl HarnessLog {
    /// A log covering `mem_size` bytes of guest RAM.
    pub fn for_memory(mem_size: u64) -> Result<Self> {
        let size = mem_size.div_ceil(LOG_PAGE).div_ceil(8).next_multiple_of(8);
        Self::with_file_size(size, size)
    }

    /// A log of `size` bytes in a file of `file_size` bytes (a file
    /// smaller than the log is a malformed SET_LOG_BASE).
    pub fn with_file_size(size: u64, file_size: u64) -> Result<Self> {
        let fd = nix::sys::memfd::memfd_create(
            c"harness-dirty-log",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(file_size)?;
        Ok(HarnessLog { file, size })
    }

    /// The log's bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The pages marked so far, in order.
    pub fn pages(&self) -> Result<Vec<u64>> {
        let mut buf = vec![0u8; usize::try_from(self.size).unwrap_or(0)];
        self.file.read_exact_at(&mut buf, 0)?;
        let mut pages = Vec::new();
        for (i, b) in buf.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    pages.push(i as u64 * 8 + bit);
                }
            }
        }
        Ok(pages)
    }

    /// Clears every bit.
    pub fn clear(&self) -> Result<()> {
        let zero = vec![0u8; usize::try_from(self.size).unwrap_or(0)];
        self.file.write_all_at(&zero, 0)?;
        Ok(())
    }
}

/// The pages `[gpa, gpa + len)` touches.
pub fn pages_of(gpa: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    gpa / LOG_PAGE..=(gpa + len.max(1) - 1) / LOG_PAGE
}

impl Connection {
    /// SET_LOG_BASE with `log` (needs LOG_SHMFD negotiated).
    pub fn set_log_base(&mut self, log: &HarnessLog) -> Result<()> {
        if !self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD) {
            return Err(HarnessError::Invalid(
                "the backend does not offer LOG_SHMFD".into(),
            ));
        }
        let region = VhostUserDirtyLogRegion {
            mmap_size: log.size,
            mmap_offset: 0,
            mmap_handle: log.file.as_raw_fd(),
        };
        self.fe.set_log_base(0, Some(region))?;
        Ok(())
    }

    /// Turns logging on or off on the live device: SET_FEATURES with or
    /// without LOG_ALL, then SET_VRING_ADDR of each ring in `rings` with
    /// or without the log flag.
    pub fn set_logging(
        &mut self,
        on: bool,
        mem: &GuestMem,
        rings: &[(usize, RingAddrs)],
    ) -> Result<()> {
        let features = if on {
            self.features | F_LOG_ALL
        } else {
            self.features & !F_LOG_ALL
        };
        self.fe.set_features(features)?;
        self.features = features;
        for &(index, r) in rings {
            let cfg = VringConfigData {
                queue_max_size: r.size,
                queue_size: r.size,
                flags: if on {
                    VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
                } else {
                    0
                },
                desc_table_addr: mem.va(r.desc)?,
                used_ring_addr: mem.va(r.used)?,
                avail_ring_addr: mem.va(r.avail)?,
                log_addr: on.then_some(r.used),
            };
            self.fe.set_vring_addr(index, &cfg)?;
        }
        Ok(())
    }
}

/// Where `r`'s rings are.
pub fn ring_addrs(r: &DriverRing) -> RingAddrs {
    RingAddrs {
        size: r.size,
        desc: r.desc,
        avail: r.avail,
        used: r.used,
    }
}

/// What a device's `set_dirty_log` does over its connection: hands `log`
/// over (SET_LOG_BASE) if given, and turns logging on (`on`) or off on
/// every ring of `rings` (queue index order).
pub fn set_dirty_log<'a>(
    conn: &mut Connection,
    mem: &GuestMem,
    rings: impl Iterator<Item = &'a DriverRing>,
    log: Option<&HarnessLog>,
    on: bool,
) -> Result<()> {
    if let Some(log) = log {
        conn.set_log_base(log)?;
    }
    let rings: Vec<(usize, RingAddrs)> = rings.map(ring_addrs).enumerate().collect();
    conn.set_logging(on, mem, &rings)
}
