//! The storage under imago, counted at the `file` node it belongs to: a
//! qcow2 node's host I/O (data and metadata) shows in its file node's
//! statistics and reaches the file node's write threshold, as QEMU
//! counts every request at the node it lands on. A delegating wrapper
//! written here because imago's only wrapper (`Annotated`) counts
//! nothing.

use std::fmt::{self, Debug, Display, Formatter};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::storage::PreallocateMode;
use imago::Storage;

use super::Node;

/// imago's file storage, with the node whose statistics count its I/O
/// (None for backing images, which are no graph nodes).
pub struct Counted {
    inner: imago::file::File,
    node: Option<Arc<Node>>,
}

impl Counted {
    /// `inner`, counted nowhere yet.
    pub fn new(inner: imago::file::File) -> Self {
        Counted { inner, node: None }
    }

    /// Count this storage's I/O at `node`.
    pub fn counted_at(mut self, node: Arc<Node>) -> Self {
        self.node = Some(node);
        self
    }

    fn count(&self, f: impl FnOnce(&Node)) {
        if let Some(n) = self.node.as_deref() {
            f(n);
        }
    }
}

impl Debug for Counted {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted")
            .field("inner", &self.inner)
            .field("node", &self.node.as_ref().map(|n| n.name.clone()))
            .finish()
    }
}

impl Display for Counted {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        Display::fmt(&self.inner, f)
    }
}

// imago is built with its `sync` feature: the trait's methods are plain
// (blocking) functions.
impl Storage for Counted {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }
    fn req_align(&self) -> usize {
        self.inner.req_align()
    }
    fn zero_align(&self) -> usize {
        self.inner.zero_align()
    }
    fn discard_align(&self) -> usize {
        self.inner.discard_align()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        self.inner.resolve_relative_path(relative)
    }
    fn get_filename(&self) -> Option<PathBuf> {
        self.inner.get_filename()
    }
    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let (t, len) = (Instant::now(), bufv.len());
        // SAFETY: the caller's guarantees are passed on unchanged.
        let r = unsafe { self.inner.pure_readv(bufv, offset) };
        self.count(|n| n.stats.account_read(len, t, r.is_ok()));
        r
    }
    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        let (t, len) = (Instant::now(), bufv.len());
        // SAFETY: the caller's guarantees are passed on unchanged.
        let r = unsafe { self.inner.pure_writev(bufv, offset) };
        self.count(|n| n.account_write(offset, len, t, r.is_ok()));
        r
    }
    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        let t = Instant::now();
        // SAFETY: the caller's guarantees are passed on unchanged.
        let r = unsafe { self.inner.pure_write_zeroes(offset, length) };
        self.count(|n| n.account_write(offset, length, t, r.is_ok()));
        r
    }
    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        let t = Instant::now();
        // SAFETY: the caller's guarantees are passed on unchanged.
        let r = unsafe { self.inner.pure_write_allocated_zeroes(offset, length) };
        self.count(|n| n.account_write(offset, length, t, r.is_ok()));
        r
    }
    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        let t = Instant::now();
        // SAFETY: the caller's guarantees are passed on unchanged.
        let r = unsafe { self.inner.pure_discard(offset, length) };
        self.count(|n| n.stats.account_discard(length, t, r.is_ok()));
        r
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn sync(&self) -> io::Result<()> {
        let t = Instant::now();
        let r = self.inner.sync();
        self.count(|n| n.stats.account_flush(t, r.is_ok()));
        r
    }
    fn settle_writes(&self) -> io::Result<()> {
        self.inner.settle_writes()
    }
    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        // SAFETY: the caller's guarantees are passed on unchanged.
        unsafe { self.inner.invalidate_cache() }
    }
    fn get_storage_helper(&self) -> &CommonStorageHelper {
        // The inner helper: the same request serialisation.
        self.inner.get_storage_helper()
    }
    fn resize(&self, new_size: u64, prealloc_mode: PreallocateMode) -> io::Result<()> {
        self.inner.resize(new_size, prealloc_mode)
    }
}
