//! The block layer: nodes built from already-open files, their drivers and
//! the node graph. Nothing here knows about virtio or vhost-user.
//!
//! - [`graph`]: the named node graph (`blockdev-add`/`-del`, queries).
//! - [`file`], [`raw`], [`qcow2`], [`null`]: the drivers.
//! - [`aio`]: the `file` driver's I/O engines (thread pool, io_uring).
//! - [`iobuf`]: aligned buffers and guest-buffer helpers.
//! - [`counted_storage`]: imago's storage counted at the qcow2 node's file node.
//! - [`bounce`]: the budgeted bounce-buffer pool of an `O_DIRECT` file.
//! - [`range_lock`]: byte-range locks over data-modifying requests.
//! - [`stats`]: per-node I/O accounting.
//! - [`write_threshold`]: `block-set-write-threshold`'s one-shot threshold.
//! - [`qcow2_info`]: cluster size and format-specific data for queries.
//! - [`hooks`]: requests in flight and drain, job taps, pivot redirects.
//! - [`quorum`]: the `quorum` driver, its vote and `x-blockdev-change`.

pub mod aio;
pub mod bounce;
pub mod counted_storage;
pub mod file;
pub mod graph;
pub mod hooks;
pub mod iobuf;
pub mod null;
pub mod qcow2;
pub mod qcow2_backing;
pub mod qcow2_header;
pub mod qcow2_info;
pub mod qcow2_repair;
pub mod quorum;
pub mod range_lock;
pub mod raw;
pub mod stats;
pub mod write_threshold;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipc_proto::block::{DetectZeroes, ImageInfo};
use vm_memory::VolatileSlice;

pub use graph::{Graph, GraphError};
pub use stats::Stats;

/// Guest (or test) buffers one request reads into or writes from.
pub type Bufs<'a, 'b> = &'a [VolatileSlice<'b>];

/// What every block driver does. Offsets and lengths are already checked
/// against [`Driver::size`] by the caller.
pub trait Driver: Send + Sync {
    /// QEMU's driver name (`file`, `raw`, ...).
    fn drv(&self) -> &'static str;
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Change the virtual size (`block_resize`); the error is QEMU's
    /// message. Drivers that cannot resize keep this default.
    fn resize(&self, _new_size: u64) -> Result<(), String> {
        Err("Image format driver does not support resize".into())
    }
    /// Fill `bufs` from `offset`; bytes past the end of the data read as zero.
    fn read(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()>;
    /// Write `bufs` at `offset`.
    fn write(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()>;
    /// Make written data durable.
    fn flush(&self) -> io::Result<()>;
    /// Discard a range (advisory).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Write zeroes to a range, unmapping it if `unmap` allows.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// Image description for queries.
    fn image_info(&self) -> ImageInfo;
    /// Names of child nodes in the graph (for reference counting).
    fn children(&self) -> Vec<String>;
    /// The open file, for protocol drivers (format drivers open their own
    /// handle on it).
    fn as_file(&self) -> Option<&std::fs::File> {
        None
    }
    /// The asynchronous engine of the `file` node this node's I/O lands
    /// on, with its fd; None: requests run through the methods above.
    fn aio(&self) -> Option<aio::FileAio> {
        None
    }
    /// `op` as one host I/O for that engine, when this driver can run it
    /// as it is; None: the synchronous methods run it.
    fn aio_target(&self, _op: &aio::Op<'_, '_>) -> Option<aio::Target> {
        None
    }
    /// Count, at the child node it landed on, a request the asynchronous
    /// engine ran for this node (`offset` is this node's).
    fn account_child_aio(
        &self,
        _kind: aio::Kind,
        _offset: u64,
        _len: u64,
        _t: std::time::Instant,
        _ok: bool,
    ) {
    }
    /// The qcow2 driver, for the jobs that work on backing chains.
    fn as_qcow2(&self) -> Option<&qcow2::Qcow2Driver> {
        None
    }
    /// The quorum driver, for `x-blockdev-change`.
    fn as_quorum(&self) -> Option<&quorum::QuorumDriver> {
        None
    }
}

/// One named node of the graph.
pub struct Node {
    /// Node name (user given or generated `#blockN`).
    pub name: String,
    /// The driver instance.
    pub driver: Box<dyn Driver>,
    /// Opened read-only.
    pub read_only: bool,
    /// Discards passed down (`discard=unmap`).
    pub discard_unmap: bool,
    /// Zero-write detection mode.
    pub detect_zeroes: DetectZeroes,
    /// O_DIRECT in use.
    pub cache_direct: bool,
    /// Flushes ignored.
    pub cache_no_flush: bool,
    /// I/O counters.
    pub stats: Stats,
    /// `block-set-write-threshold`.
    pub write_threshold: write_threshold::WriteThreshold,
    /// Dirty bitmaps, marked before every data-modifying request.
    pub bitmaps: crate::bitmaps::NodeBitmaps,
    /// Number of parents (nodes and exports) holding this node.
    users: AtomicUsize,
    /// Requests in flight, drain, job tap and pivot redirect.
    pub hooks: hooks::Hooks,
}

impl Node {
    /// Wrap a driver as a node.
    pub fn new(name: String, driver: Box<dyn Driver>, read_only: bool) -> Self {
        Node {
            name,
            driver,
            read_only,
            discard_unmap: false,
            detect_zeroes: DetectZeroes::Off,
            cache_direct: false,
            cache_no_flush: false,
            stats: Stats::default(),
            write_threshold: Default::default(),
            bitmaps: Default::default(),
            users: AtomicUsize::new(0),
            hooks: hooks::Hooks::default(),
        }
    }

    /// Record a new parent.
    pub fn acquire(&self) {
        self.users.fetch_add(1, Ordering::SeqCst);
    }

    /// Drop a parent.
    pub fn release(&self) {
        // Saturating: a release without acquire is a bug, not a wrap-around.
        let _ = self
            .users
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_sub(1));
    }

    /// Whether a parent holds this node.
    pub fn in_use(&self) -> bool {
        self.users.load(Ordering::SeqCst) > 0
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self.hooks.redirect() {
            Some(to) => to.size(),
            None => self.driver.size(),
        }
    }

    /// `block_resize`: change the size of the node requests reach.
    pub fn resize(self: &std::sync::Arc<Self>, new_size: u64) -> Result<(), String> {
        let target = self.resolved();
        // A dirty bitmap covers the size it was made with; growing under
        // it would leave writes past its end untracked.
        if !target.bitmaps.all().is_empty() {
            return Err(format!(
                "Cannot resize node '{}': it has dirty bitmaps, which bulkhead does not resize",
                target.name
            ));
        }
        target.driver.resize(new_size)
    }

    /// The node this node's requests reach (itself, or the node it was
    /// pivoted to).
    pub fn resolved(self: &std::sync::Arc<Self>) -> std::sync::Arc<Node> {
        match self.hooks.redirect() {
            Some(to) => to.resolved(),
            None => self.clone(),
        }
    }

    /// Read with accounting.
    pub fn read(&self, bufs: Bufs<'_, '_>, offset: u64, len: u64) -> io::Result<()> {
        let _in = self.hooks.enter();
        if let Some(to) = self.hooks.redirect() {
            return to.read(bufs, offset, len);
        }
        let t = std::time::Instant::now();
        let r = self.driver.read(bufs, offset);
        self.stats.account_read(len, t, r.is_ok());
        r
    }

    /// Write with accounting (and zero detection when enabled), through
    /// the job tap if one is set.
    pub fn write(&self, bufs: Bufs<'_, '_>, offset: u64, len: u64) -> io::Result<()> {
        let _in = self.hooks.enter();
        if let Some(to) = self.hooks.redirect() {
            return to.write(bufs, offset, len);
        }
        match self.hooks.tap() {
            Some(tap) => tap.write(offset, len, &mut || self.write_untapped(bufs, offset, len)),
            None => self.write_untapped(bufs, offset, len),
        }
    }

    /// A write past the tap (a job's own copy into the node).
    pub fn write_untapped(&self, bufs: Bufs<'_, '_>, offset: u64, len: u64) -> io::Result<()> {
        self.bitmaps.mark(offset, len);
        let t = std::time::Instant::now();
        let r = if self.detect_zeroes != DetectZeroes::Off && iobuf::all_zero(bufs) {
            let unmap = self.detect_zeroes == DetectZeroes::Unmap && self.discard_unmap;
            self.driver.write_zeroes(offset, len, unmap)
        } else {
            self.driver.write(bufs, offset)
        };
        self.account_write(offset, len, t, r.is_ok());
        r
    }

    /// Flush with accounting.
    pub fn flush(&self) -> io::Result<()> {
        let _in = self.hooks.enter();
        if let Some(to) = self.hooks.redirect() {
            return to.flush();
        }
        let t = std::time::Instant::now();
        let r = if self.cache_no_flush {
            Ok(())
        } else {
            self.driver.flush()
        };
        self.stats.account_flush(t, r.is_ok());
        r
    }

    /// Discard with accounting; a no-op unless `discard=unmap`.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _in = self.hooks.enter();
        if let Some(to) = self.hooks.redirect() {
            return to.discard(offset, len);
        }
        let t = std::time::Instant::now();
        if self.discard_unmap {
            self.bitmaps.mark(offset, len);
        }
        let r = if !self.discard_unmap {
            Ok(())
        } else if let Some(tap) = self.hooks.tap() {
            tap.write(offset, len, &mut || self.driver.discard(offset, len))
        } else {
            self.driver.discard(offset, len)
        };
        self.stats.account_discard(len, t, r.is_ok());
        r
    }

    /// `op` as one host I/O for the asynchronous engine; None: run it with
    /// the methods above. Writes under zero detection, flushes with
    /// `cache.no-flush` and discards without `discard=unmap` stay there
    /// (they look at the data or need no I/O).
    pub fn aio_target(&self, op: &aio::Op<'_, '_>) -> Option<aio::Target> {
        if !self.hooks.enter_async() {
            return None;
        }
        self.mark_dirty(op);
        let t = match op {
            aio::Op::Write { .. } if self.detect_zeroes != DetectZeroes::Off => None,
            aio::Op::Flush if self.cache_no_flush => None,
            aio::Op::Discard { .. } if !self.discard_unmap => None,
            aio::Op::Read { .. }
            | aio::Op::Write { .. }
            | aio::Op::Flush
            | aio::Op::Discard { .. } => self.driver.aio_target(op),
        };
        if t.is_none() {
            self.hooks.leave();
        }
        t
    }

    /// Account a request the asynchronous engine ran, started at `t`.
    pub fn account_aio(
        &self,
        kind: aio::Kind,
        offset: u64,
        len: u64,
        t: std::time::Instant,
        ok: bool,
    ) {
        self.hooks.leave();
        match kind {
            aio::Kind::Read => self.stats.account_read(len, t, ok),
            aio::Kind::Write => self.account_write(offset, len, t, ok),
            aio::Kind::Flush => self.stats.account_flush(t, ok),
            aio::Kind::Discard => self.stats.account_discard(len, t, ok),
        }
        self.driver.account_child_aio(kind, offset, len, t, ok);
    }

    /// Count a write on this node and check its write threshold.
    pub fn account_write(&self, offset: u64, len: u64, t: std::time::Instant, ok: bool) {
        self.write_threshold.check(&self.name, offset, len);
        self.stats.account_write(offset, len, t, ok);
    }

    /// Write zeroes with accounting.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let _in = self.hooks.enter();
        if let Some(to) = self.hooks.redirect() {
            return to.write_zeroes(offset, len, unmap);
        }
        self.bitmaps.mark(offset, len);
        let t = std::time::Instant::now();
        let unmap = unmap && self.discard_unmap;
        let r = match self.hooks.tap() {
            Some(tap) => tap.write(offset, len, &mut || {
                self.driver.write_zeroes(offset, len, unmap)
            }),
            None => self.driver.write_zeroes(offset, len, unmap),
        };
        self.account_write(offset, len, t, r.is_ok());
        r
    }
}
