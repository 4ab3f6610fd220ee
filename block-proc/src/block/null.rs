//! The `null-co` driver: reads return zeroes, writes are dropped.

use std::io;

use ipc_proto::block::ImageInfo;

use super::{iobuf, Bufs, Driver};

/// A node with no storage.
pub struct NullDriver {
    size: u64,
    latency: std::time::Duration,
}

impl NullDriver {
    /// QEMU's default size, 1 GiB.
    pub const DEFAULT_SIZE: u64 = 1 << 30;

    /// A null device of `size` bytes.
    pub fn new(size: u64) -> Self {
        NullDriver {
            size,
            latency: std::time::Duration::ZERO,
        }
    }

    /// Add QEMU's `latency-ns`: every read and write takes this long.
    pub fn with_latency_ns(mut self, ns: u64) -> Self {
        self.latency = std::time::Duration::from_nanos(ns);
        self
    }

    fn delay(&self) {
        if !self.latency.is_zero() {
            std::thread::sleep(self.latency);
        }
    }
}

impl Driver for NullDriver {
    fn drv(&self) -> &'static str {
        "null-co"
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, bufs: Bufs<'_, '_>, _offset: u64) -> io::Result<()> {
        self.delay();
        iobuf::zero_from(bufs, 0);
        Ok(())
    }
    fn write(&self, _bufs: Bufs<'_, '_>, _offset: u64) -> io::Result<()> {
        self.delay();
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Ok(())
    }
    fn image_info(&self) -> ImageInfo {
        ImageInfo {
            filename: "null-co://".into(),
            format: "null-co".into(),
            virtual_size: self.size,
            actual_size: Some(0),
            cluster_size: None,
            backing_filename: None,
            backing_image: None,
            format_specific: None,
        }
    }
    fn children(&self) -> Vec<String> {
        Vec::new()
    }
}
