//! Dirty logging of a queue's writes into guest RAM (the log itself is
//! `vhost_backend_common::log`): every device-writable buffer of a
//! request is logged when the request completes, before its used element
//! is published — the data a read brought in (also when the kernel wrote
//! it straight into guest RAM: O_DIRECT, io_uring), the status byte, a
//! SCSI response. The whole descriptor is logged, whatever the used
//! length says: a page logged in vain is only sent once more.
//!
//! A request run synchronously logs from the chain it ran; one given to
//! the io_uring engine keeps its writable buffers ([`Written`]) from
//! when it was prepared until it completes (the chain in guest memory is
//! not read again then). With logging off nothing is kept or done.

use vhost_backend_common::log::QueueLog;

use crate::vring::Desc;

/// Logs every device-writable buffer of `descs`.
pub fn log_written(log: &QueueLog, descs: &[Desc]) {
    for d in descs.iter().filter(|d| d.is_write()) {
        log.data(d.addr, u64::from(d.len));
    }
}

/// The device-writable buffers of a request on the engine (guest
/// physical address, length); empty when logging is off (no allocation).
#[derive(Debug, Default)]
pub struct Written(Vec<(u64, u32)>);

impl Written {
    /// What `descs` let the device write, kept only when `log` is on.
    pub fn of(log: Option<&QueueLog>, descs: &[Desc]) -> Self {
        if log.is_none() {
            return Written::default();
        }
        Written(
            descs
                .iter()
                .filter(|d| d.is_write())
                .map(|d| (d.addr, d.len))
                .collect(),
        )
    }

    /// Logs the kept buffers.
    pub fn log(&self, log: &QueueLog) {
        for &(addr, len) in &self.0 {
            log.data(addr, u64::from(len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vring::VRING_DESC_F_WRITE;
    use std::sync::Arc;
    use vhost_backend_common::log::{DirtyLog, LOG_ALL, LOG_PAGE};

    fn desc(addr: u64, len: u32, write: bool) -> Desc {
        Desc {
            addr,
            len,
            flags: if write { VRING_DESC_F_WRITE } else { 0 },
            next: 0,
        }
    }

    #[test]
    fn only_writable_buffers_are_kept_and_only_with_logging_on() {
        let f = std::fs::File::from(
            nix::sys::memfd::memfd_create(c"l", nix::sys::memfd::MFdFlags::empty()).unwrap(),
        );
        f.set_len(4096).unwrap();
        let l = Arc::new(DirtyLog::map(f.try_clone().unwrap(), 0, 64).unwrap());
        let q = QueueLog::new(LOG_ALL, Some(&l), None).unwrap();
        let d = [
            desc(0, 16, false),
            desc(3 * LOG_PAGE, 8192, true),
            desc(9 * LOG_PAGE + 4095, 1, true),
        ];
        assert!(Written::of(None, &d).0.is_empty());
        let w = Written::of(Some(&q), &d);
        assert_eq!(w.0, vec![(3 * LOG_PAGE, 8192), (9 * LOG_PAGE + 4095, 1)]);
        w.log(&q);
        let mut raw = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut raw, 0).unwrap();
        // Pages 3, 4 and 9; not page 0 (the device-readable header).
        assert_eq!(raw, [0b0001_1000, 0b0000_0010]);
    }
}
