//! Kernel loading: ELF kernels and test guests (entered at the ELF entry in
//! 64-bit mode), Linux bzImages (entered at the 64-bit entry, load address +
//! 0x200), the command line, the initrd and the zero page with its e820 map.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError, ReadVolatile};

use crate::layout;
use crate::memory::GuestMemoryMmap;
use crate::regs::EntryPoint;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;
const XLF_KERNEL_64: u16 = 0x1;
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

/// Errors of loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel image is neither an ELF nor a bzImage.
    #[error("kernel image is neither an ELF file nor a bzImage")]
    UnknownFormat,
    /// Reading the kernel image failed.
    #[error("cannot read the kernel image")]
    Read(#[source] std::io::Error),
    /// linux-loader rejected the kernel.
    #[error("cannot load the kernel")]
    Kernel(#[source] loader::Error),
    /// The bzImage cannot be entered in 64-bit mode.
    #[error("the bzImage has no 64-bit entry point (boot protocol {0:#x})")]
    No64BitEntry(u16),
    /// The command line is too long or invalid.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The initrd does not fit in guest RAM.
    #[error("initrd of {0} bytes does not fit in guest memory")]
    InitrdTooLarge(u64),
    /// Writing guest memory failed.
    #[error("cannot write guest memory")]
    Memory(#[source] GuestMemoryError),
}

/// Result of loading.
pub type Result<T> = std::result::Result<T, LoaderError>;

/// The kernel to boot.
#[derive(Debug)]
pub enum KernelImage {
    /// A file from the broker (ELF or bzImage).
    File(File),
    /// An in-memory image (the built-in guest).
    Bytes(&'static [u8]),
}

/// Everything the loader needs, kept for reloading on reset.
#[derive(Debug)]
pub struct BootSource {
    /// The kernel.
    pub kernel: KernelImage,
    /// The initrd, if any.
    pub initrd: Option<File>,
    /// The command line.
    pub cmdline: String,
    /// RAM size in bytes.
    pub mem_size: u64,
}

fn is_elf<F: Read + Seek>(img: &mut F) -> Result<bool> {
    let mut magic = [0u8; 4];
    img.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    let n = img.read(&mut magic).map_err(LoaderError::Read)?;
    Ok(n == 4 && magic == *b"\x7fELF")
}

/// The e820 map of `mem_size` bytes of RAM.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let (low, high) = layout::split_ram(mem_size);
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: layout::EBDA_START.min(low),
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    if low > layout::HIMEM_START {
        map.push(boot_e820_entry {
            addr: layout::HIMEM_START,
            size: low - layout::HIMEM_START,
            r#type: E820_RAM,
        });
    }
    if high > 0 {
        map.push(boot_e820_entry {
            addr: layout::RAM_64BIT_START,
            size: high,
            r#type: E820_RAM,
        });
    }
    map
}

/// The `virtio_mmio.device=SIZE@BASE:GSI` options that tell a Linux built
/// with `VIRTIO_MMIO_CMDLINE_DEVICES` where the virtio-mmio devices are
/// (kernels without it find them in the DSDT as `LNRO0005`).
pub fn virtio_mmio_cmdline(devices: &[crate::acpi::VirtioMmioDevice]) -> String {
    devices
        .iter()
        .map(|d| {
            format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                d.size / 1024,
                d.base,
                d.gsi
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Loads the kernel, the command line (`src.cmdline`, then `extra` if not
/// empty), the initrd and the zero page into `mem` and returns where the
/// boot CPU starts.
pub fn load(mem: &GuestMemoryMmap, src: &mut BootSource, extra: &str) -> Result<EntryPoint> {
    let (rip, mut params) = match &mut src.kernel {
        KernelImage::File(f) => load_kernel(mem, f)?,
        KernelImage::Bytes(b) => load_kernel(mem, &mut Cursor::new(*b))?,
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;

    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)?;
    for part in [src.cmdline.as_str(), extra] {
        if !part.is_empty() {
            cmdline.insert_str(part).map_err(LoaderError::Cmdline)?;
        }
    }
    loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(LoaderError::Kernel)?;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    let text = cmdline.as_cstring().map_err(LoaderError::Cmdline)?;
    params.hdr.cmdline_size = text.as_bytes_with_nul().len() as u32;

    if let Some(initrd) = &mut src.initrd {
        let (addr, size) = load_initrd(mem, initrd, src.mem_size, params.hdr.initrd_addr_max)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let map = e820_map(src.mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = *e;
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = layout::RSDP_START;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(LoaderError::Memory)?;
    Ok(EntryPoint {
        rip,
        rsi: layout::ZERO_PAGE_START,
    })
}

/// Loads an ELF or bzImage kernel; returns its 64-bit entry and the zero
/// page to complete.
fn load_kernel<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    img: &mut F,
) -> Result<(u64, boot_params)> {
    let himem = Some(GuestAddress(layout::HIMEM_START));
    if is_elf(img)? {
        let r = Elf::load(mem, None, img, himem).map_err(LoaderError::Kernel)?;
        let mut params = boot_params::default();
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        return Ok((r.kernel_load.raw_value(), params));
    }
    let r = BzImage::load(mem, None, img, himem).map_err(LoaderError::Kernel)?;
    let hdr = r.setup_header.ok_or(LoaderError::UnknownFormat)?;
    if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry(hdr.version));
    }
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.loadflags |= LOADFLAG_CAN_USE_HEAP;
    Ok((
        r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
        params,
    ))
}

/// Places the initrd at the top of low RAM (below `addr_max` when the
/// kernel gives one), page aligned; returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    mem_size: u64,
    addr_max: u32,
) -> Result<(u64, u64)> {
    let size = initrd.seek(SeekFrom::End(0)).map_err(LoaderError::Read)?;
    initrd.seek(SeekFrom::Start(0)).map_err(LoaderError::Read)?;
    let (low, _) = layout::split_ram(mem_size);
    let mut top = low;
    if addr_max != 0 {
        top = top.min(u64::from(addr_max) + 1);
    }
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= layout::HIMEM_START)
        .ok_or(LoaderError::InitrdTooLarge(size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
        .map_err(LoaderError::Memory)?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_devices_become_virtio_mmio_device_options() {
        let devs = [
            crate::acpi::VirtioMmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                gsi: 5,
            },
            crate::acpi::VirtioMmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                gsi: 6,
            },
        ];
        assert_eq!(
            virtio_mmio_cmdline(&devs),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(virtio_mmio_cmdline(&[]), "");
    }

    #[test]
    fn e820_of_256m_has_low_reserved_and_high_ram() {
        let map = e820_map(256 << 20);
        let ram: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| (e.addr, e.size))
            .collect();
        assert_eq!(
            ram,
            vec![(0, 0x9fc00), (0x10_0000, (256 << 20) - 0x10_0000)]
        );
    }

    #[test]
    fn e820_of_4g_continues_above_4g() {
        let map = e820_map(4 << 30);
        let last = map.last().unwrap();
        assert_eq!((last.addr, last.size), (1 << 32, 1 << 30));
    }

    #[test]
    fn builtin_guest_loads_at_its_entry() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut src = BootSource {
            kernel: KernelImage::Bytes(crate::builtin_guest::hello()),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            mem_size: 4 << 20,
        };
        let entry = load(&mem, &mut src, "").unwrap();
        assert!(entry.rip >= layout::HIMEM_START);
        let mut cl = [0u8; 13];
        mem.read_slice(&mut cl, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&cl, b"console=ttyS0");
    }

    #[test]
    fn garbage_kernel_is_rejected_with_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        static JUNK: [u8; 4096] = [0x5a; 4096];
        let mut src = BootSource {
            kernel: KernelImage::Bytes(&JUNK),
            initrd: None,
            cmdline: String::new(),
            mem_size: 4 << 20,
        };
        assert!(load(&mem, &mut src, "").is_err());
    }
}
