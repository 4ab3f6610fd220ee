//! The VM-state file: a versioned binary container shared by the broker
//! (which will store and move it) and vcpu-proc (which fills and reads it).
//! The layout is documented in `docs/vmstate-format.md`.
//!
//! - [`mod@self`]: the container: header, sections, checksum ([`encode`],
//!   [`decode`]).
//! - [`cursor`]: bounds-checked little-endian reads and writes for section
//!   payloads.
//!
//! Decoding never trusts a length: every length is checked against the
//! bytes actually present before anything is sliced or allocated, so a
//! corrupt file costs no more memory than its own size.

pub mod cursor;

pub use cursor::{Reader, Writer};

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"BHVMSTAT";
/// The container version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header: magic, format version, flags, section count.
pub const HEADER_LEN: usize = 8 + 4 + 4 + 4;
/// Section header: id, version, payload length.
pub const SECTION_HEADER_LEN: usize = 4 + 4 + 8;
/// Trailer: CRC-32C of everything before it.
pub const TRAILER_LEN: usize = 4;
/// Flag bits this build understands (none yet); a file with another bit
/// set is refused.
pub const KNOWN_FLAGS: u32 = 0;

/// Why a state file cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmStateError {
    /// The file does not start with [`MAGIC`].
    #[error("not a Bulkhead VM-state file (bad magic)")]
    BadMagic,
    /// The container version is not this build's.
    #[error(
        "VM-state format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// In the file.
        found: u32,
        /// What this build reads.
        supported: u32,
    },
    /// Flag bits this build does not know.
    #[error("VM-state file has unknown flags {0:#x}")]
    UnknownFlags(u32),
    /// The file ends before a structure it announces.
    #[error("VM-state file is truncated: {what} needs {needed} bytes, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The checksum does not match the contents.
    #[error("VM-state file is corrupt: checksum {found:#010x}, expected {expected:#010x}")]
    Checksum {
        /// In the file.
        found: u32,
        /// Computed over the contents.
        expected: u32,
    },
    /// A section id this build does not know.
    #[error("VM-state file has an unknown section {0:#x}")]
    UnknownSection(u32),
    /// A section version this build cannot read.
    #[error("VM-state section {section} has version {found}, this build reads up to {supported}")]
    SectionVersion {
        /// The section.
        section: SectionId,
        /// In the file.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// Bytes after the checksum.
    #[error("VM-state file has {0} bytes after its checksum")]
    TrailingBytes(u64),
    /// A section payload is malformed.
    #[error("VM-state section {section} is malformed: {reason}")]
    Malformed {
        /// The section.
        section: SectionId,
        /// What is wrong.
        reason: String,
    },
    /// The writer was given more than the format can hold.
    #[error("VM state too large for the format: {0}")]
    TooLarge(&'static str),
}

/// Result of the VM-state container.
pub type Result<T> = std::result::Result<T, VmStateError>;

/// The sections this build knows. Ids are stable: a new kind of state gets
/// a new id, a changed payload a new section version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionId {
    /// One vCPU (registers, FPU/XSAVE, MSRs, LAPIC, events, MP state,
    /// debug registers); one section per vCPU.
    Vcpu,
    /// The in-kernel PIC pair and IOAPIC.
    Irqchip,
    /// The in-kernel PIT.
    Pit,
    /// kvm-clock (`KVM_GET_CLOCK`).
    Clock,
    /// One virtio-mmio transport's registers; one section per device.
    VirtioMmio,
    /// COM1's 16550 registers and receive FIFO.
    Serial,
    /// The Generic Event Device's latched events.
    Ged,
    /// The ACPI CPU hotplug register block (selector, command, each
    /// possible CPU's flags and `_OST` values).
    CpuHotplug,
    /// The run state the VM had when it was saved (QEMU's global state):
    /// a migration target that did not run takes it.
    RunState,
}

impl SectionId {
    /// Every known section.
    pub const ALL: [SectionId; 9] = [
        SectionId::Vcpu,
        SectionId::Irqchip,
        SectionId::Pit,
        SectionId::Clock,
        SectionId::VirtioMmio,
        SectionId::Serial,
        SectionId::Ged,
        SectionId::CpuHotplug,
        SectionId::RunState,
    ];

    /// The id on disk.
    pub fn raw(self) -> u32 {
        match self {
            SectionId::Vcpu => 1,
            SectionId::Irqchip => 2,
            SectionId::Pit => 3,
            SectionId::Clock => 4,
            SectionId::VirtioMmio => 5,
            SectionId::Serial => 6,
            SectionId::Ged => 7,
            SectionId::CpuHotplug => 8,
            SectionId::RunState => 9,
        }
    }

    /// The newest payload version of this section this build reads and
    /// the one it writes.
    pub fn version(self) -> u32 {
        match self {
            SectionId::Vcpu
            | SectionId::Irqchip
            | SectionId::Pit
            | SectionId::Clock
            | SectionId::Serial
            | SectionId::Ged
            | SectionId::CpuHotplug
            | SectionId::RunState => 1,
            // 2: the vring state of live devices (GET_VRING_BASE).
            SectionId::VirtioMmio => 2,
        }
    }

    /// The section of an on-disk id.
    pub fn from_raw(raw: u32) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.raw() == raw)
            .ok_or(VmStateError::UnknownSection(raw))
    }
}

impl std::fmt::Display for SectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SectionId::Vcpu => "vcpu",
            SectionId::Irqchip => "irqchip",
            SectionId::Pit => "pit",
            SectionId::Clock => "clock",
            SectionId::VirtioMmio => "virtio-mmio",
            SectionId::Serial => "serial",
            SectionId::Ged => "ged",
            SectionId::CpuHotplug => "cpu-hotplug",
            SectionId::RunState => "run-state",
        })
    }
}

/// One section as read from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    /// What it holds.
    pub id: SectionId,
    /// Its payload version (at most [`SectionId::version`]).
    pub version: u32,
    /// Its payload.
    pub payload: &'a [u8],
}

impl Section<'_> {
    /// A [`VmStateError::Malformed`] for this section.
    pub fn malformed(&self, reason: impl Into<String>) -> VmStateError {
        VmStateError::Malformed {
            section: self.id,
            reason: reason.into(),
        }
    }
}

/// A section to write: its id and payload, at the id's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSection {
    /// What it holds.
    pub id: SectionId,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Lays `sections` out as a state file (header, sections in order, CRC-32C).
pub fn encode(sections: &[OwnedSection]) -> Result<Vec<u8>> {
    let count = u32::try_from(sections.len()).map_err(|_| VmStateError::TooLarge("sections"))?;
    let body: usize = sections
        .iter()
        .map(|s| SECTION_HEADER_LEN + s.payload.len())
        .sum();
    let mut out = Vec::with_capacity(HEADER_LEN + body + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for s in sections {
        out.extend_from_slice(&s.id.raw().to_le_bytes());
        out.extend_from_slice(&s.id.version().to_le_bytes());
        out.extend_from_slice(&(s.payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&s.payload);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks and splits a state file into its sections (in file order).
///
/// The header is checked first (so a file of another version says so
/// rather than "corrupt"), then the checksum, then each section.
pub fn decode(file: &[u8]) -> Result<Vec<Section<'_>>> {
    let mut r = Reader::new(file);
    let magic = r.bytes(MAGIC.len(), "header")?;
    if magic != MAGIC {
        return Err(VmStateError::BadMagic);
    }
    let version = r.u32("header")?;
    if version != FORMAT_VERSION {
        return Err(VmStateError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = r.u32("header")?;
    let count = r.u32("header")?;
    if file.len() < HEADER_LEN + TRAILER_LEN {
        return Err(VmStateError::Truncated {
            what: "checksum",
            needed: TRAILER_LEN as u64,
            available: (file.len() - HEADER_LEN) as u64,
        });
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(VmStateError::UnknownFlags(flags & !KNOWN_FLAGS));
    }
    // Sections are read from the bytes before the checksum; a section
    // claiming more is reported as truncated, not as a checksum error.
    let (contents, trailer) = file.split_at(file.len() - TRAILER_LEN);
    let mut body = Reader::new(&contents[HEADER_LEN..]);
    let mut sections = Vec::new();
    for _ in 0..count {
        let raw_id = body.u32("section header")?;
        let sversion = body.u32("section header")?;
        let len = body.u64("section header")?;
        let payload = body.bytes_u64(len, "section payload")?;
        sections.push((raw_id, sversion, payload));
    }
    let expected = crc32c::crc32c(contents);
    let found = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if found != expected {
        return Err(VmStateError::Checksum { found, expected });
    }
    if body.remaining() != 0 {
        return Err(VmStateError::TrailingBytes(body.remaining() as u64));
    }
    sections
        .into_iter()
        .map(|(raw_id, sversion, payload)| {
            let id = SectionId::from_raw(raw_id)?;
            if sversion == 0 || sversion > id.version() {
                return Err(VmStateError::SectionVersion {
                    section: id,
                    found: sversion,
                    supported: id.version(),
                });
            }
            Ok(Section {
                id,
                version: sversion,
                payload,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
