//! VM-wide in-kernel state: the PIC pair and IOAPIC (`KVM_GET_IRQCHIP`),
//! the PIT (`KVM_GET_PIT2`) and kvm-clock (`KVM_GET_CLOCK`), and their
//! sections.

use ipc_proto::vmstate::{OwnedSection, Reader, Section, SectionId, Writer};
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use zerocopy::IntoBytes;

use super::cpu::kvm_struct;
use super::{kvm, Result, StateError};

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// The VM-wide device state.
#[derive(Clone)]
pub struct PlatformState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: [kvm_irqchip; 3],
    /// The PIT's channels and speaker state.
    pub pit: kvm_pit_state2,
    /// kvm-clock.
    pub clock: kvm_clock_data,
}

impl PlatformState {
    /// Reads the state of `vm` (its vCPUs parked).
    pub fn capture(vm: &VmFd) -> Result<Self> {
        let mut irqchips = CHIPS.map(|chip_id| kvm_irqchip {
            chip_id,
            ..Default::default()
        });
        for c in &mut irqchips {
            vm.get_irqchip(c).map_err(kvm("KVM_GET_IRQCHIP"))?;
        }
        Ok(PlatformState {
            irqchips,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
        })
    }

    /// Writes the irqchips and the PIT.
    pub fn restore_devices(&self, vm: &VmFd) -> Result<()> {
        for c in &self.irqchips {
            vm.set_irqchip(c).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))
    }

    /// Sets kvm-clock to the saved value. Only the clock is given: the
    /// saved `realtime`/`host_tsc` would make KVM add the wall time since
    /// the save, and a restored guest continues where it stopped.
    pub fn restore_clock(&self, vm: &VmFd) -> Result<()> {
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))
    }

    /// The `irqchip`, `pit` and `clock` sections.
    pub fn encode(&self) -> Result<Vec<OwnedSection>> {
        let mut chips = Writer::new();
        for c in &self.irqchips {
            chips.blob(c.as_bytes())?;
        }
        let mut pit = Writer::new();
        pit.blob(self.pit.as_bytes())?;
        let mut clock = Writer::new();
        clock.blob(self.clock.as_bytes())?;
        Ok(vec![
            OwnedSection {
                id: SectionId::Irqchip,
                payload: chips.finish(),
            },
            OwnedSection {
                id: SectionId::Pit,
                payload: pit.finish(),
            },
            OwnedSection {
                id: SectionId::Clock,
                payload: clock.finish(),
            },
        ])
    }
}

/// Collects the platform sections of a file, each exactly once.
#[derive(Default)]
pub struct Builder {
    irqchips: Option<[kvm_irqchip; 3]>,
    pit: Option<kvm_pit_state2>,
    clock: Option<kvm_clock_data>,
}

fn once<T>(slot: &mut Option<T>, s: &Section<'_>, v: T) -> Result<()> {
    if slot.replace(v).is_some() {
        return Err(s.malformed("the section appears twice").into());
    }
    Ok(())
}

fn whole(s: &Section<'_>, r: &Reader<'_>) -> Result<()> {
    match r.remaining() {
        0 => Ok(()),
        n => Err(s.malformed(format!("{n} bytes after its contents")).into()),
    }
}

impl Builder {
    /// Takes an `irqchip`, `pit` or `clock` section.
    pub fn add(&mut self, s: &Section<'_>) -> Result<()> {
        let mut r = Reader::new(s.payload);
        match s.id {
            SectionId::Irqchip => {
                let mut chips = [kvm_irqchip::default(); 3];
                for (c, want) in chips.iter_mut().zip(CHIPS) {
                    *c = kvm_struct(s, &mut r, "kvm_irqchip")?;
                    if c.chip_id != want {
                        return Err(s
                            .malformed(format!("chip {} where {want} belongs", c.chip_id))
                            .into());
                    }
                }
                whole(s, &r)?;
                once(&mut self.irqchips, s, chips)
            }
            SectionId::Pit => {
                let pit = kvm_struct(s, &mut r, "kvm_pit_state2")?;
                whole(s, &r)?;
                once(&mut self.pit, s, pit)
            }
            SectionId::Clock => {
                let clock = kvm_struct(s, &mut r, "kvm_clock_data")?;
                whole(s, &r)?;
                once(&mut self.clock, s, clock)
            }
            SectionId::Vcpu
            | SectionId::VirtioMmio
            | SectionId::Serial
            | SectionId::Ged
            | SectionId::CpuHotplug
            | SectionId::RunState => Err(s.malformed("not a platform section").into()),
        }
    }

    /// The platform state, if every section was there.
    pub fn finish(self) -> Result<PlatformState> {
        let missing = |what: &str| StateError::Mismatch(format!("the state has no {what} section"));
        Ok(PlatformState {
            irqchips: self.irqchips.ok_or_else(|| missing("irqchip"))?,
            pit: self.pit.ok_or_else(|| missing("pit"))?,
            clock: self.clock.ok_or_else(|| missing("clock"))?,
        })
    }
}
