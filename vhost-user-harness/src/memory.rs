//! "Guest" memory: one memfd mapped at guest physical address 0, passed to
//! the backend in SET_MEM_TABLE.

use std::fs::File;
use std::os::fd::AsRawFd;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

use crate::error::{HarnessError, Result};

/// Guest memory backed by a memfd.
pub struct GuestMem {
    /// The mapping.
    pub mem: GuestMemoryMmap<()>,
    file: File,
    size: u64,
}

impl GuestMem {
    /// Create `size` bytes of zeroed shared memory.
    pub fn new(size: u64) -> Result<Self> {
        let fd = nix::sys::memfd::memfd_create(
            c"harness-guest-ram",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(size)?;
        let len = usize::try_from(size).map_err(|_| HarnessError::Invalid("memory size".into()))?;
        let region = MmapRegion::from_file(FileOffset::new(file.try_clone()?, 0), len)
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| HarnessError::Memory("region".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        Ok(GuestMem { mem, file, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The region description for SET_MEM_TABLE (the fd stays owned here).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo> {
        let va = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| HarnessError::Memory(e.to_string()))? as u64;
        Ok(VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: self.size,
            userspace_addr: va,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        })
    }

    /// Translate a guest address to the frontend virtual address the
    /// backend expects in SET_VRING_ADDR.
    pub fn va(&self, gpa: u64) -> Result<u64> {
        Ok(self.region_info()?.userspace_addr + gpa)
    }
}
