//! Firmware tables: the ACPI RSDP → XSDT/RSDT → MADT walk, and the MP table
//! as a fallback, to learn the CPUs' APIC IDs and ISA interrupt overrides.

use crate::entry::MAX_CPUS;

fn read8(addr: u64) -> u8 {
    // SAFETY: the first 4 GiB are identity-mapped; callers only pass
    // addresses inside firmware tables below 4 GiB.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn read16(addr: u64) -> u16 {
    u16::from(read8(addr)) | u16::from(read8(addr + 1)) << 8
}

fn read32(addr: u64) -> u32 {
    u32::from(read16(addr)) | u32::from(read16(addr + 2)) << 16
}

fn read64(addr: u64) -> u64 {
    u64::from(read32(addr)) | u64::from(read32(addr + 4)) << 32
}

fn matches(addr: u64, sig: &[u8]) -> bool {
    sig.iter()
        .enumerate()
        .all(|(i, b)| read8(addr + i as u64) == *b)
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    let mut sum = 0u8;
    for i in 0..len {
        sum = sum.wrapping_add(read8(addr + i));
    }
    sum == 0
}

/// Where the CPU list came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// ACPI MADT.
    Madt,
    /// MP specification table.
    MpTable,
    /// No table found: only the boot CPU is known.
    None,
}

/// What the firmware tables say about the machine.
pub struct Machine {
    /// APIC IDs of the enabled CPUs, boot CPU included.
    pub apic_ids: [u8; MAX_CPUS],
    /// Number of valid entries in `apic_ids`.
    pub cpus: usize,
    /// GSI that ISA IRQ 0 (the PIT) is delivered on, if an override says so.
    pub irq0_gsi: Option<u32>,
    /// Where the information came from.
    pub source: Source,
    /// More CPUs were listed than `MAX_CPUS`.
    pub truncated: bool,
    /// IOAPICs listed by the MADT: (MMIO address, first GSI).
    pub ioapics: [(u32, u32); MAX_IOAPICS],
    /// Number of valid entries in `ioapics`.
    pub ioapic_count: usize,
}

/// Most IOAPICs recorded from the MADT.
pub const MAX_IOAPICS: usize = 4;

impl Machine {
    fn add_cpu(&mut self, id: u8) {
        if self.cpus < MAX_CPUS {
            self.apic_ids[self.cpus] = id;
            self.cpus += 1;
        } else {
            self.truncated = true;
        }
    }
}

/// Finds the RSDP in 0xe0000..0x100000.
pub fn find_rsdp() -> Option<u64> {
    let mut a = 0xe_0000u64;
    while a < 0x10_0000 {
        if matches(a, b"RSD PTR ") && checksum_ok(a, 20) {
            return Some(a);
        }
        a += 16;
    }
    None
}

/// Finds the ACPI table with signature `sig` through the XSDT (or RSDT).
pub fn find_table(sig: &[u8; 4]) -> Option<u64> {
    let rsdp = find_rsdp()?;
    let revision = read8(rsdp + 15);
    let (root, entry_size) = if revision >= 2 && read64(rsdp + 24) != 0 {
        (read64(rsdp + 24), 8)
    } else {
        (u64::from(read32(rsdp + 16)), 4)
    };
    let len = u64::from(read32(root + 4));
    if !(36..=0x10000).contains(&len) {
        return None;
    }
    let mut p = root + 36;
    while p + entry_size <= root + len {
        let t = if entry_size == 8 {
            read64(p)
        } else {
            u64::from(read32(p))
        };
        if t != 0 && t < 0x1_0000_0000 && matches(t, sig) {
            return Some(t);
        }
        p += entry_size;
    }
    None
}

fn parse_madt(madt: u64, m: &mut Machine) {
    let len = u64::from(read32(madt + 4)).min(0x10000);
    let mut p = madt + 44;
    while p + 2 <= madt + len {
        let kind = read8(p);
        let elen = u64::from(read8(p + 1));
        if elen < 2 {
            break;
        }
        match kind {
            0 if elen >= 8 => {
                let flags = read32(p + 4);
                if flags & 1 != 0 {
                    m.add_cpu(read8(p + 3));
                }
            }
            1 if elen >= 12 && m.ioapic_count < MAX_IOAPICS => {
                m.ioapics[m.ioapic_count] = (read32(p + 4), read32(p + 8));
                m.ioapic_count += 1;
            }
            2 if elen >= 10 && read8(p + 3) == 0 => {
                m.irq0_gsi = Some(read32(p + 4));
            }
            9 if elen >= 16 => {
                let flags = read32(p + 8);
                let id = read32(p + 4);
                if flags & 1 != 0 && id < 256 {
                    m.add_cpu(id as u8);
                }
            }
            _ => {}
        }
        p += elen;
    }
}

fn find_mp_floating(start: u64, end: u64) -> Option<u64> {
    let mut a = start;
    while a + 16 <= end {
        if matches(a, b"_MP_") && checksum_ok(a, 16) {
            return Some(a);
        }
        a += 16;
    }
    None
}

fn parse_mp(m: &mut Machine) -> bool {
    let ebda = u64::from(read16(0x40e)) << 4;
    let fp = (if (0x8_0000..0xa_0000).contains(&ebda) {
        find_mp_floating(ebda, ebda + 1024)
    } else {
        None
    })
    .or_else(|| find_mp_floating(0x9_fc00, 0xa_0000))
    .or_else(|| find_mp_floating(0xf_0000, 0x10_0000));
    let Some(fp) = fp else { return false };
    let table = u64::from(read32(fp + 4));
    if table == 0 || !matches(table, b"PCMP") {
        return false;
    }
    let count = read16(table + 34);
    let mut p = table + 44;
    for _ in 0..count {
        match read8(p) {
            0 => {
                if read8(p + 3) & 1 != 0 {
                    m.add_cpu(read8(p + 1));
                }
                p += 20;
            }
            1..=4 => p += 8,
            _ => break,
        }
    }
    true
}

/// Reads the CPU list from the MADT, or from the MP table if ACPI is absent.
pub fn discover() -> Machine {
    let mut m = Machine {
        apic_ids: [0; MAX_CPUS],
        cpus: 0,
        irq0_gsi: None,
        source: Source::None,
        truncated: false,
        ioapics: [(0, 0); MAX_IOAPICS],
        ioapic_count: 0,
    };
    if let Some(madt) = find_table(b"APIC") {
        parse_madt(madt, &mut m);
        if m.cpus > 0 {
            m.source = Source::Madt;
            return m;
        }
    }
    if parse_mp(&mut m) && m.cpus > 0 {
        m.source = Source::MpTable;
        return m;
    }
    m.cpus = 0;
    m.add_cpu(crate::apic::lapic_id());
    m
}

/// An ACPI Generic Address Structure (the parts test guests use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gas {
    /// Address space: 0 = system memory, 1 = system I/O.
    pub space: u8,
    /// Address in that space.
    pub address: u64,
}

impl Gas {
    fn at(addr: u64) -> Option<Gas> {
        let g = Gas {
            space: read8(addr),
            address: read64(addr + 4),
        };
        if g.address == 0 || g.space > 1 {
            None
        } else {
            Some(g)
        }
    }

    /// Writes a byte to the register.
    pub fn write8(&self, value: u8) {
        if self.space == 1 {
            crate::port::outb(self.address as u16, value);
        } else {
            // SAFETY: the FADT names this byte as a register; the first
            // 4 GiB are identity-mapped (the FADT only names such addresses
            // on the machines the guests run on).
            unsafe { core::ptr::write_volatile(self.address as *mut u8, value) };
        }
    }
}

impl core::fmt::Display for Gas {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.space {
            1 => write!(f, "port {:#x}", self.address),
            _ => write!(f, "mmio {:#x}", self.address),
        }
    }
}

/// The FADT registers the test guests use.
pub struct Fadt {
    /// RESET_REG and RESET_VALUE, if the reset register is supported.
    pub reset: Option<(Gas, u8)>,
    /// SLEEP_CONTROL_REG (hardware-reduced ACPI), if present.
    pub sleep_control: Option<Gas>,
}

/// Reads the FADT, if there is one.
pub fn fadt() -> Option<Fadt> {
    let t = find_table(b"FACP")?;
    let len = u64::from(read32(t + 4));
    let flags = if len >= 116 { read32(t + 112) } else { 0 };
    let reset = if len >= 129 && flags & (1 << 10) != 0 {
        Gas::at(t + 116).map(|g| (g, read8(t + 128)))
    } else {
        None
    };
    let sleep_control = if len >= 256 { Gas::at(t + 244) } else { None };
    Some(Fadt {
        reset,
        sleep_control,
    })
}
