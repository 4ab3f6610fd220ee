//! Guest memory as the frontend shares it (SET_MEM_TABLE): each region a
//! file mapped at its guest physical address, plus the frontend's virtual
//! address of each region, which SET_VRING_ADDR uses.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Guest memory.
pub type Mem = GuestMemoryMmap<()>;

/// Errors mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Region/fd count mismatch or bad region geometry.
    #[error("invalid memory region table")]
    Invalid,
    /// mmap failed.
    #[error("mapping a memory region failed: {0}")]
    Map(String),
    /// The region reaches past the end of its file (touching it would
    /// raise SIGBUS) or the fd is not a regular file.
    #[error("memory region [{offset:#x}, +{size:#x}) is not inside its file")]
    PastEndOfFile {
        /// `mmap_offset` of the region.
        offset: u64,
        /// `memory_size` of the region.
        size: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Region {
    gpa: u64,
    size: u64,
    uva: u64,
}

/// The current memory table.
#[derive(Clone)]
pub struct MemoryTable {
    /// Guest memory.
    pub mem: Arc<Mem>,
    regions: Vec<Region>,
}

/// Whether `[offset, offset + len)` lies inside `file`, which must be a
/// regular file (a memfd, tmpfs or hugetlbfs file). Mapping past the end
/// of a file succeeds but the first access there raises SIGBUS, so every
/// mapping of a file the frontend sends is checked with this first.
pub fn file_covers(file: &File, offset: u64, len: u64) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    meta.file_type().is_file() && offset.checked_add(len).is_some_and(|end| end <= meta.len())
}

impl MemoryTable {
    /// Map the regions of a SET_MEM_TABLE message.
    pub fn new(regions: &[VhostUserMemoryRegion], files: Vec<File>) -> Result<Self, MemoryError> {
        if regions.len() != files.len() || regions.is_empty() {
            return Err(MemoryError::Invalid);
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut table = Vec::with_capacity(regions.len());
        for (r, f) in regions.iter().zip(files) {
            let size = usize::try_from(r.memory_size).map_err(|_| MemoryError::Invalid)?;
            if size == 0
                || r.guest_phys_addr.checked_add(r.memory_size).is_none()
                || r.user_addr.checked_add(r.memory_size).is_none()
            {
                return Err(MemoryError::Invalid);
            }
            if !file_covers(&f, r.mmap_offset, r.memory_size) {
                return Err(MemoryError::PastEndOfFile {
                    offset: r.mmap_offset,
                    size: r.memory_size,
                });
            }
            let m = MmapRegion::from_file(FileOffset::new(f, r.mmap_offset), size)
                .map_err(|e| MemoryError::Map(e.to_string()))?;
            let g = GuestRegionMmap::new(m, GuestAddress(r.guest_phys_addr))
                .ok_or(MemoryError::Invalid)?;
            mapped.push(g);
            table.push(Region {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                uva: r.user_addr,
            });
        }
        let mem =
            GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Map(e.to_string()))?;
        Ok(MemoryTable {
            mem: Arc::new(mem),
            regions: table,
        })
    }

    /// Translate a frontend virtual address to a guest physical address.
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.uva && va - r.uva < r.size)
            .map(|r| r.gpa + (va - r.uva))
    }
}
