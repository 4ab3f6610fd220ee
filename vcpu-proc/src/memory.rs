//! Guest RAM: the broker's memfd mapped with vm-memory (so the same file can
//! be shared with vhost-user backends) and registered with KVM.

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout;

/// The guest memory type used throughout vcpu-proc.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors of setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The memory size is zero or not page aligned.
    #[error("guest memory size {0:#x} is zero or not a multiple of 4 KiB")]
    BadSize(u64),
    /// The memfd is smaller than the configured size.
    #[error("memory fd holds {actual:#x} bytes, {wanted:#x} needed")]
    FileTooSmall {
        /// Bytes needed.
        wanted: u64,
        /// Bytes present.
        actual: u64,
    },
    /// fstat on the memfd failed.
    #[error("cannot stat the memory fd")]
    Stat(#[source] std::io::Error),
    /// Mapping the memfd failed.
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION failed")]
    Register(#[source] kvm_ioctls::Error),
    /// madvise(MADV_DONTDUMP) failed.
    #[error("cannot leave guest memory out of core dumps")]
    DontDump(#[source] std::io::Error),
}

/// Result of memory operations.
pub type Result<T> = std::result::Result<T, MemoryError>;

/// Maps `file` (a memfd of at least `mem_size` bytes) as guest RAM laid out
/// per the platform: `[0, low)` and, past 3 GiB, `[4 GiB, 4 GiB + rest)`.
pub fn map_guest_memory(file: File, mem_size: u64) -> Result<GuestMemoryMmap> {
    if mem_size == 0 || mem_size & 0xfff != 0 {
        return Err(MemoryError::BadSize(mem_size));
    }
    let actual = file.metadata().map_err(MemoryError::Stat)?.len();
    if actual < mem_size {
        return Err(MemoryError::FileTooSmall {
            wanted: mem_size,
            actual,
        });
    }
    let file = Arc::new(file);
    let (low, high) = layout::split_ram(mem_size);
    let mut ranges = vec![(
        GuestAddress(0),
        usize_of(low),
        Some(FileOffset::from_arc(file.clone(), 0)),
    )];
    if high > 0 {
        ranges.push((
            GuestAddress(layout::RAM_64BIT_START),
            usize_of(high),
            Some(FileOffset::from_arc(file, low)),
        ));
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

fn usize_of(v: u64) -> usize {
    // vcpu-proc only builds for 64-bit hosts.
    v as usize
}

/// Registers every region of `mem` with KVM, one slot per region.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    set_slots(vm, mem, 0)
}

/// Turns KVM's dirty-page logging (`KVM_MEM_LOG_DIRTY_PAGES`) on or off
/// on every RAM slot [`register_with_kvm`] made (slot `i` is region `i`).
pub fn set_dirty_logging(vm: &VmFd, mem: &GuestMemoryMmap, on: bool) -> Result<()> {
    let flags = if on {
        kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
    } else {
        0
    };
    set_slots(vm, mem, flags)
}

fn set_slots(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::BadSize(region.len()))?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VM
        // keeps alive for as long as the VM fd exists, and slots do not
        // overlap (a slot registered again only changes its flags).
        unsafe { vm.set_user_memory_region(desc) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

/// `-machine dump-guest-core=off`: leaves every region of `mem` out of
/// this process's core dumps, as QEMU does for its guest RAM.
pub fn exclude_from_core_dumps(mem: &GuestMemoryMmap) -> Result<()> {
    for region in mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::BadSize(region.len()))?;
        // SAFETY: `host..host+len` is a live mapping owned by `mem`;
        // MADV_DONTDUMP only changes which pages a core dump writes.
        let rc = unsafe { libc::madvise(host.cast(), usize_of(region.len()), libc::MADV_DONTDUMP) };
        if rc != 0 {
            return Err(MemoryError::DontDump(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn memfd(size: u64) -> File {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn memfd_is_mapped_as_one_low_region() {
        let mem = map_guest_memory(memfd(1 << 20), 1 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0x1234u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0x1234);
    }

    #[test]
    fn short_memfd_is_rejected() {
        let r = map_guest_memory(memfd(4096), 1 << 20);
        assert!(matches!(r, Err(MemoryError::FileTooSmall { .. })));
    }

    #[test]
    fn unaligned_size_is_rejected() {
        assert!(matches!(
            map_guest_memory(memfd(8192), 4097),
            Err(MemoryError::BadSize(_))
        ));
    }
}
