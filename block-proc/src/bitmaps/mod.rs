//! Dirty bitmaps (`block-dirty-bitmap-*`): which granules of a node guest
//! writes touched, for incremental backup and mirroring.
//!
//! - [`bitmap`]: one bitmap over memory the broker owns, marked lock-free.
//! - [`shm`]: that memory (the broker's memfd, mapped shared).
//! - [`qcow2_ext`]: the qcow2 bitmaps extension (load at open, store at
//!   close), with [`refcounts`] for its clusters.
//! - [`requests`]: the broker's bitmap requests against the node graph.
//!
//! Every node carries a [`NodeBitmaps`]; the data path calls
//! [`NodeBitmaps::mark`] before a write, write-zeroes or discard is
//! submitted, so a write the guest saw complete is always in the broker's
//! memory even if block-proc is killed right after.

pub mod bitmap;
pub mod qcow2_ext;
pub mod refcounts;
pub mod requests;
pub mod shm;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

pub use bitmap::DirtyBitmap;
use qcow2_ext::ImageDir;

/// The bitmaps of one node, and its image's bitmaps extension if it is a
/// qcow2 node.
#[derive(Default)]
pub struct NodeBitmaps {
    /// Any bitmap attached (the data path's one check when none is).
    any: AtomicBool,
    /// Newest first, as QEMU lists them.
    list: RwLock<Vec<Arc<DirtyBitmap>>>,
    image: Mutex<Option<ImageDir>>,
    /// Bitmaps removed (`block-dirty-bitmap-remove`): their image entries
    /// go at the next store.
    removed: Mutex<Vec<String>>,
    /// The child this node's data lands on, if its drivers write it
    /// directly (not through the child's [`crate::block::Node`] methods),
    /// and where: `Some(shift)` at `offset + shift` (raw), `None`
    /// anywhere (qcow2: the host offset of a guest write is imago's).
    lower: OnceLock<(Arc<crate::block::Node>, Option<u64>)>,
}

impl NodeBitmaps {
    /// Marks `[offset, offset + len)` dirty in every recording bitmap.
    #[inline]
    pub fn mark(&self, offset: u64, len: u64) {
        if self.any.load(Ordering::Relaxed) {
            for b in self.list.read().iter() {
                b.mark(offset, len);
            }
        }
        if let Some((child, shift)) = self.lower.get() {
            match shift {
                Some(s) => child.bitmaps.mark(offset.saturating_add(*s), len),
                None => child.bitmaps.mark_all(),
            }
        }
    }

    /// Marks everything in every recording bitmap (a write somewhere this
    /// node cannot place; over-reporting is safe, forgetting is not).
    pub fn mark_all(&self) {
        if self.any.load(Ordering::Relaxed) {
            for b in self.list.read().iter().filter(|b| b.recording()) {
                b.fill();
            }
        }
        if let Some((child, _)) = self.lower.get() {
            child.bitmaps.mark_all();
        }
    }

    /// Records the child a driver writes directly (see `lower`).
    pub fn set_lower(&self, child: Arc<crate::block::Node>, shift: Option<u64>) {
        let _ = self.lower.set((child, shift));
    }

    /// The bitmap called `name`.
    pub fn find(&self, name: &str) -> Option<Arc<DirtyBitmap>> {
        self.list.read().iter().find(|b| b.name == name).cloned()
    }

    /// Every bitmap, newest first.
    pub fn all(&self) -> Vec<Arc<DirtyBitmap>> {
        self.list.read().clone()
    }

    /// Adds a bitmap (newest first).
    pub fn attach(&self, b: Arc<DirtyBitmap>) {
        self.removed.lock().retain(|n| *n != b.name);
        let mut l = self.list.write();
        l.insert(0, b);
        self.any.store(true, Ordering::SeqCst);
    }

    /// Removes bitmap `name`; false if there is none.
    pub fn remove(&self, name: &str) -> bool {
        self.removed.lock().push(name.to_string());
        let mut l = self.list.write();
        let before = l.len();
        l.retain(|b| b.name != name);
        self.any.store(!l.is_empty(), Ordering::SeqCst);
        l.len() != before
    }

    /// Records the qcow2 image's bitmaps extension as found at open.
    pub fn set_image(&self, dir: ImageDir) {
        *self.image.lock() = Some(dir);
    }

    /// Runs `f` on the image's extension state (None: not a qcow2 node).
    pub fn with_image<T>(&self, f: impl FnOnce(Option<&mut ImageDir>) -> T) -> T {
        f(self.image.lock().as_mut())
    }

    /// The node is dropped without being used (a failed `blockdev-add`):
    /// the image's entries get back the flags they had at open.
    pub fn abandon(&self, node: &str) {
        if let Some(dir) = self.image.lock().as_mut() {
            if let Err(e) = dir.restore_flags() {
                tracing::warn!("bitmaps of '{node}' left in use: {e}");
            }
        }
    }

    /// Stores the persistent bitmaps in the image (at close; QEMU logs a
    /// failure and closes all the same, and so does this).
    pub fn store(&self, node: &str) {
        let bitmaps = self.all();
        let mut img = self.image.lock();
        let Some(dir) = img.as_mut() else {
            return;
        };
        if !dir.writable() || (dir.entries.is_empty() && !bitmaps.iter().any(|b| b.persistent)) {
            return;
        }
        let removed = self.removed.lock().clone();
        match dir.store(&bitmaps, &removed) {
            Ok(()) => tracing::debug!("stored the persistent bitmaps of '{node}'"),
            Err(e) => tracing::error!("Failed to store bitmaps of '{node}': {e}"),
        }
    }
}

impl crate::block::Node {
    /// Marks what an asynchronous `op` will modify (before it is
    /// submitted; an ignored discard modifies nothing).
    pub(crate) fn mark_dirty(&self, op: &crate::block::aio::Op<'_, '_>) {
        use crate::block::aio::Op;
        match op {
            Op::Write { bufs, offset } => {
                let len = bufs.iter().map(|b| b.len() as u64).sum();
                self.bitmaps.mark(*offset, len);
            }
            Op::Discard { offset, len } if self.discard_unmap => self.bitmaps.mark(*offset, *len),
            Op::Read { .. } | Op::Flush | Op::Discard { .. } => {}
        }
    }
}
