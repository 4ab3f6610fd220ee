//! The `raw` driver: a window (`offset`, `size`) onto a child node.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipc_proto::block::ImageInfo;

use std::time::Instant;

use super::aio::Kind;
use super::{iobuf, Bufs, Driver, Node};

/// A raw format node over a protocol node.
pub struct RawDriver {
    child: Arc<Node>,
    offset: u64,
    /// Current size (follows the child's on `block_resize`).
    size: AtomicU64,
    /// `size` was given: the window cannot be resized (QEMU's rule).
    fixed: bool,
}

/// Why a raw window is invalid, with QEMU's wording.
pub fn check_window(offset: u64, size: Option<u64>, child_size: u64) -> Result<u64, String> {
    if offset > child_size {
        return Err(format!(
            "Offset ({offset}) cannot be greater than size of the containing file ({child_size})"
        ));
    }
    match size {
        Some(s) if offset.checked_add(s).is_none_or(|e| e > child_size) => Err(format!(
            "The sum of offset ({offset}) and size ({s}) has to be smaller or equal to the  actual size of the containing file ({child_size})"
        )),
        Some(s) => Ok(s),
        None => Ok(child_size - offset),
    }
}

impl RawDriver {
    /// Wrap `child` with the window `[offset, offset + size)`, already
    /// checked by [`check_window`].
    pub fn new(child: Arc<Node>, offset: u64, size: u64, fixed: bool) -> Self {
        RawDriver {
            child,
            offset,
            size: AtomicU64::new(size),
            fixed,
        }
    }
}

impl Driver for RawDriver {
    fn drv(&self) -> &'static str {
        "raw"
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn resize(&self, new_size: u64) -> Result<(), String> {
        if self.fixed {
            return Err("Cannot resize fixed-size raw disks".into());
        }
        let child_size = new_size
            .checked_add(self.offset)
            .ok_or_else(|| "Disk size too large for the chosen offset".to_string())?;
        self.child.resize(child_size)?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
    // The child's I/O is counted at the child too (its statistics and
    // write threshold), without its node options: they are this node's.
    fn read(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let t = Instant::now();
        let r = self.child.driver.read(bufs, self.offset + offset);
        self.child
            .stats
            .account_read(iobuf::total_len(bufs) as u64, t, r.is_ok());
        r
    }
    fn write(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let t = Instant::now();
        let r = self.child.driver.write(bufs, self.offset + offset);
        let len = iobuf::total_len(bufs) as u64;
        self.child
            .account_write(self.offset + offset, len, t, r.is_ok());
        r
    }
    fn flush(&self) -> io::Result<()> {
        let t = Instant::now();
        let r = self.child.driver.flush();
        self.child.stats.account_flush(t, r.is_ok());
        r
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let t = Instant::now();
        let r = self.child.driver.discard(self.offset + offset, len);
        self.child.stats.account_discard(len, t, r.is_ok());
        r
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let t = Instant::now();
        let r = self
            .child
            .driver
            .write_zeroes(self.offset + offset, len, unmap);
        self.child
            .account_write(self.offset + offset, len, t, r.is_ok());
        r
    }
    fn account_child_aio(&self, kind: Kind, offset: u64, len: u64, t: Instant, ok: bool) {
        self.child
            .account_aio(kind, self.offset + offset, len, t, ok);
    }
    fn image_info(&self) -> ImageInfo {
        let c = self.child.driver.image_info();
        ImageInfo {
            filename: c.filename,
            format: "raw".into(),
            virtual_size: self.size(),
            actual_size: c.actual_size,
            cluster_size: None,
            backing_filename: None,
            backing_image: None,
            format_specific: None,
        }
    }
    fn children(&self) -> Vec<String> {
        vec![self.child.name.clone()]
    }
    fn aio(&self) -> Option<super::aio::FileAio> {
        self.child.driver.aio()
    }
    fn aio_target(&self, op: &super::aio::Op<'_, '_>) -> Option<super::aio::Target> {
        self.child.driver.aio_target(&op.shifted(self.offset)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_window_past_end_is_rejected_with_qemu_wording() {
        let e = check_window(2_000_000, None, 1_048_576).unwrap_err();
        assert_eq!(
            e,
            "Offset (2000000) cannot be greater than size of the containing file (1048576)"
        );
        assert_eq!(check_window(4096, None, 8192), Ok(4096));
        assert!(check_window(4096, Some(8192), 8192).is_err());
    }
}
