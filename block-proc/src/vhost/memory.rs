//! Guest memory as the frontend shares it (SET_MEM_TABLE): each region a
//! file mapped at its guest physical address, plus the frontend's virtual
//! address of each region, which SET_VRING_ADDR uses.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::vring::Mem;

/// Errors mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Region/fd count mismatch or bad region geometry.
    #[error("invalid memory region table")]
    Invalid,
    /// mmap failed.
    #[error("mapping a memory region failed: {0}")]
    Map(String),
}

/// Result of memory operations.
pub type Result<T> = std::result::Result<T, MemoryError>;

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

impl MemoryTable {
    /// Map the regions of a SET_MEM_TABLE message.
    pub fn new(regions: &[VhostUserMemoryRegion], files: Vec<File>) -> Result<Self> {
        if regions.len() != files.len() || regions.is_empty() {
            return Err(MemoryError::Invalid);
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut table = Vec::with_capacity(regions.len());
        for (r, f) in regions.iter().zip(files) {
            let size = usize::try_from(r.memory_size).map_err(|_| MemoryError::Invalid)?;
            if size == 0 || r.guest_phys_addr.checked_add(r.memory_size).is_none() {
                return Err(MemoryError::Invalid);
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
