//! The `ged` and `cpu-hotplug` sections: the Generic Event Device's
//! latched events and the ACPI CPU hotplug register block.

use ipc_proto::vmstate::{OwnedSection, Reader, Section, SectionId, Writer};

use super::Result;
use crate::devices::ged::{EVENT_CPU_HOTPLUG, EVENT_POWER_BUTTON};
use crate::hotplug::registers::SlotState;

/// The CPU hotplug block as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuHotplugState {
    /// The CPU selector.
    pub selector: u32,
    /// The command register.
    pub command: u8,
    /// Every possible CPU, by slot.
    pub slots: Vec<SlotState>,
}

const PRESENT: u32 = 1 << 0;
const INSERTING: u32 = 1 << 1;
const REMOVING: u32 = 1 << 2;

/// More possible CPUs than any VM has (APIC ids stay below 255).
const MAX_SLOTS: u32 = 255;

fn no_trailing_bytes(s: &Section<'_>, r: &Reader<'_>) -> Result<()> {
    if r.remaining() != 0 {
        return Err(s
            .malformed(format!("{} bytes after its contents", r.remaining()))
            .into());
    }
    Ok(())
}

/// The GED's latched events as a section: one `u32`.
pub fn encode_ged(pending: u8) -> OwnedSection {
    let mut w = Writer::new();
    w.u32(u32::from(pending));
    OwnedSection {
        id: SectionId::Ged,
        payload: w.finish(),
    }
}

/// Reads a `ged` section (a bit the GED never latches is malformed).
pub fn decode_ged(s: &Section<'_>) -> Result<u8> {
    let mut r = Reader::new(s.payload);
    let v = r.u32("GED events")?;
    no_trailing_bytes(s, &r)?;
    let known = u32::from(EVENT_POWER_BUTTON | EVENT_CPU_HOTPLUG);
    if v & !known != 0 {
        return Err(s
            .malformed(format!("events {v:#x}: the GED latches only {known:#x}"))
            .into());
    }
    Ok(v as u8)
}

/// The CPU hotplug block as a section: selector, command, slot count,
/// then per slot its APIC id, flags (bit 0 present, 1 insert event,
/// 2 remove event), `_OST` event and status.
pub fn encode_cpu_hotplug(st: &CpuHotplugState) -> OwnedSection {
    let mut w = Writer::new();
    w.u32(st.selector)
        .u32(u32::from(st.command))
        .u32(st.slots.len() as u32);
    for s in &st.slots {
        let flags = if s.present { PRESENT } else { 0 }
            | if s.inserting { INSERTING } else { 0 }
            | if s.removing { REMOVING } else { 0 };
        w.u32(s.apic_id)
            .u32(flags)
            .u32(s.ost_event)
            .u32(s.ost_status);
    }
    OwnedSection {
        id: SectionId::CpuHotplug,
        payload: w.finish(),
    }
}

/// Reads a `cpu-hotplug` section.
pub fn decode_cpu_hotplug(s: &Section<'_>) -> Result<CpuHotplugState> {
    let mut r = Reader::new(s.payload);
    let selector = r.u32("CPU selector")?;
    let command = r.u32("CPU hotplug command")?;
    let command = u8::try_from(command)
        .map_err(|_| s.malformed(format!("command {command} is not a byte")))?;
    let n = r.u32("possible CPUs")?;
    if n == 0 || n > MAX_SLOTS {
        return Err(s
            .malformed(format!("{n} possible CPUs (1 to {MAX_SLOTS})"))
            .into());
    }
    let mut slots = Vec::new();
    for _ in 0..n {
        let apic_id = r.u32("APIC id")?;
        let flags = r.u32("CPU flags")?;
        if flags & !(PRESENT | INSERTING | REMOVING) != 0 {
            return Err(s.malformed(format!("CPU flags {flags:#x}")).into());
        }
        slots.push(SlotState {
            apic_id,
            present: flags & PRESENT != 0,
            inserting: flags & INSERTING != 0,
            removing: flags & REMOVING != 0,
            ost_event: r.u32("OST event")?,
            ost_status: r.u32("OST status")?,
        });
    }
    no_trailing_bytes(s, &r)?;
    Ok(CpuHotplugState {
        selector,
        command,
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(id: SectionId, payload: &[u8]) -> Section<'_> {
        Section {
            id,
            version: 1,
            payload,
        }
    }

    fn hotplug() -> CpuHotplugState {
        CpuHotplugState {
            selector: 2,
            command: 3,
            slots: vec![
                SlotState {
                    apic_id: 0,
                    present: true,
                    ..Default::default()
                },
                SlotState {
                    apic_id: 1,
                    present: true,
                    removing: true,
                    ost_event: 3,
                    ost_status: 0x80,
                    ..Default::default()
                },
                SlotState {
                    apic_id: 4,
                    inserting: true,
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn ged_and_cpu_hotplug_sections_round_trip() {
        let p = encode_ged(EVENT_CPU_HOTPLUG).payload;
        assert_eq!(
            decode_ged(&section(SectionId::Ged, &p)).unwrap(),
            EVENT_CPU_HOTPLUG
        );
        let st = hotplug();
        let p = encode_cpu_hotplug(&st).payload;
        assert_eq!(
            decode_cpu_hotplug(&section(SectionId::CpuHotplug, &p)).unwrap(),
            st
        );
    }

    #[test]
    fn every_truncated_ged_or_cpu_hotplug_section_is_an_error() {
        let p = encode_ged(EVENT_POWER_BUTTON).payload;
        for n in 0..p.len() {
            assert!(
                decode_ged(&section(SectionId::Ged, &p[..n])).is_err(),
                "ged length {n}"
            );
        }
        let p = encode_cpu_hotplug(&hotplug()).payload;
        for n in 0..p.len() {
            assert!(
                decode_cpu_hotplug(&section(SectionId::CpuHotplug, &p[..n])).is_err(),
                "cpu-hotplug length {n}"
            );
        }
    }

    #[test]
    fn unknown_event_bits_flags_and_slot_counts_are_malformed() {
        let p = encode_ged(0x80).payload;
        let e = decode_ged(&section(SectionId::Ged, &p)).unwrap_err();
        assert!(e.to_string().contains("latches only"), "{e}");
        let mut p = encode_cpu_hotplug(&hotplug()).payload;
        p[16..20].copy_from_slice(&0x10u32.to_le_bytes()); // slot 0's flags
        assert!(decode_cpu_hotplug(&section(SectionId::CpuHotplug, &p)).is_err());
        let mut p = encode_cpu_hotplug(&hotplug()).payload;
        p[8..12].copy_from_slice(&u32::MAX.to_le_bytes()); // slot count
        let e = decode_cpu_hotplug(&section(SectionId::CpuHotplug, &p)).unwrap_err();
        assert!(e.to_string().contains("possible CPUs"), "{e}");
        let mut p = encode_cpu_hotplug(&hotplug()).payload;
        p.push(0);
        assert!(decode_cpu_hotplug(&section(SectionId::CpuHotplug, &p)).is_err());
    }
}
