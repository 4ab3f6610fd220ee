//! QEMU's "modern" ACPI CPU hotplug register block
//! (docs/specs/acpi_cpu_hotplug.rst in QEMU), 12 bytes: a CPU selector,
//! per-CPU status flags (enabled, insert event, remove event), a command
//! register (next CPU with an event, OST event, OST status, CPU id) and
//! its data registers. Written by hand from the specification: no crate
//! implements it.

use std::sync::mpsc::Sender;

use crate::bus::BusDevice;
use crate::devices::{le_value, GuestAction};

/// Size of the register block.
pub const REG_LEN: u64 = 12;
/// Write: CPU selector (DWORD). Read: command data 2.
const SELECTOR_OR_DATA2: u64 = 0;
/// Status (read) / control (write) flags (byte).
const FLAGS: u64 = 4;
/// Command (byte, write).
const COMMAND: u64 = 5;
/// Command data (DWORD).
const DATA: u64 = 8;

const FLAG_ENABLED: u8 = 1 << 0;
const FLAG_INSERT: u8 = 1 << 1;
const FLAG_REMOVE: u8 = 1 << 2;
const FLAG_EJECT: u8 = 1 << 3;

/// Selects the next CPU with a pending event.
const CMD_NEXT_EVENT: u8 = 0;
/// Command data writes set the OST event.
const CMD_OST_EVENT: u8 = 1;
/// Command data writes set the OST status.
const CMD_OST_STATUS: u8 = 2;
/// Command data (2) read the selected CPU's architecture id (APIC id).
const CMD_CPU_ID: u8 = 3;

/// One possible CPU as the guest sees it through the block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotState {
    /// Its APIC id.
    pub apic_id: u32,
    /// A vCPU is plugged in this slot.
    pub present: bool,
    /// Plugged, not yet acknowledged by the guest (device check pending).
    pub inserting: bool,
    /// Unplug requested, not yet acknowledged (eject request pending).
    pub removing: bool,
    /// Last `_OST` source event.
    pub ost_event: u32,
    /// Last `_OST` status.
    pub ost_status: u32,
}

/// What the guest did through the block that must leave the vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestCpuMsg {
    /// It ejected the CPU of this slot (after an unplug request).
    Eject(u32),
    /// It wrote an `_OST` status (QEMU's `ACPI_DEVICE_OST`).
    Ost {
        /// The slot.
        slot: u32,
        /// The OST event (source) written before.
        source: u32,
        /// The status.
        status: u32,
    },
}

/// The register block of every possible CPU.
#[derive(Debug)]
pub struct CpuHotplugRegs {
    slots: Vec<SlotState>,
    selector: u32,
    command: u8,
    /// Where ejects and OST statuses are reported.
    reports: Option<Sender<GuestCpuMsg>>,
}

impl CpuHotplugRegs {
    /// The block for CPUs with `apic_ids`, the first `present` of which
    /// are plugged; ejects and OST statuses are reported on `reports`.
    pub fn new(apic_ids: &[u32], present: u32, reports: Option<Sender<GuestCpuMsg>>) -> Self {
        let slots = apic_ids
            .iter()
            .enumerate()
            .map(|(i, &apic_id)| SlotState {
                apic_id,
                present: (i as u32) < present,
                ..Default::default()
            })
            .collect();
        CpuHotplugRegs {
            slots,
            selector: 0,
            command: CMD_NEXT_EVENT,
            reports,
        }
    }

    /// Every slot's state.
    pub fn slots(&self) -> &[SlotState] {
        &self.slots
    }

    /// The selector and the command register (saved state).
    pub fn selector_and_command(&self) -> (u32, u8) {
        (self.selector, self.command)
    }

    /// Restores a saved block: `slots` must be this block's possible CPUs
    /// (same count, same APIC ids), `command` one the block knows.
    pub fn restore(
        &mut self,
        selector: u32,
        command: u8,
        slots: &[SlotState],
    ) -> Result<(), String> {
        if command > CMD_CPU_ID {
            return Err(format!("command {command} is not one of the block's"));
        }
        let ids = |v: &[SlotState]| v.iter().map(|s| s.apic_id).collect::<Vec<_>>();
        if ids(slots) != ids(&self.slots) {
            return Err(format!(
                "the saved possible CPUs have APIC ids {:?}, this VM's {:?}",
                ids(slots),
                ids(&self.slots)
            ));
        }
        self.slots = slots.to_vec();
        (self.selector, self.command) = (selector, command);
        Ok(())
    }

    /// Whether `slot` holds a plugged CPU.
    pub fn is_present(&self, slot: u32) -> bool {
        self.slots.get(slot as usize).is_some_and(|s| s.present)
    }

    /// Marks `slot` plugged with an insert event pending (`hotplugged`) or
    /// plugged silently (a CPU present at start).
    pub fn plug(&mut self, slot: u32, hotplugged: bool) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.present = true;
            s.inserting = hotplugged;
            s.removing = false;
        }
    }

    /// Sets the remove event of `slot` (an unplug request).
    pub fn request_remove(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.removing = true;
        }
    }

    /// Forgets `slot`'s CPU (its plug failed).
    pub fn unplug(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            (s.present, s.inserting, s.removing) = (false, false, false);
        }
    }

    fn selected(&mut self) -> Option<&mut SlotState> {
        self.slots.get_mut(self.selector as usize)
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let command = self.command;
        let selector = self.selector;
        let Some(s) = self.selected() else {
            return 0;
        };
        match offset {
            SELECTOR_OR_DATA2 if command == CMD_CPU_ID => 0, // APIC ids fit in 32 bits
            FLAGS => u32::from(
                if s.present { FLAG_ENABLED } else { 0 }
                    | if s.inserting { FLAG_INSERT } else { 0 }
                    | if s.removing { FLAG_REMOVE } else { 0 },
            ),
            DATA => match command {
                CMD_NEXT_EVENT => selector,
                CMD_CPU_ID => s.apic_id,
                _ => 0,
            },
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        if offset != SELECTOR_OR_DATA2 && self.selected().is_none() {
            return;
        }
        match offset {
            SELECTOR_OR_DATA2 => self.selector = value,
            FLAGS => self.write_flags(value as u8),
            COMMAND => self.write_command(value as u8),
            DATA => {
                let (command, slot) = (self.command, self.selector);
                let reports = self.reports.clone();
                if let Some(s) = self.selected() {
                    match command {
                        CMD_OST_EVENT => s.ost_event = value,
                        CMD_OST_STATUS => {
                            s.ost_status = value;
                            let msg = GuestCpuMsg::Ost {
                                slot,
                                source: s.ost_event,
                                status: value,
                            };
                            if let Some(tx) = reports {
                                // Ignoring the error: the receiver lives as
                                // long as the VM.
                                let _ = tx.send(msg);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn write_flags(&mut self, v: u8) {
        let slot = self.selector;
        let reports = self.reports.clone();
        let Some(s) = self.selected() else { return };
        if v & FLAG_INSERT != 0 {
            s.inserting = false;
        } else if v & FLAG_REMOVE != 0 {
            s.removing = false;
        } else if v & FLAG_EJECT != 0 {
            // The boot CPU and empty slots cannot be ejected (QEMU ignores
            // the write too).
            if !s.present || slot == 0 {
                return;
            }
            (s.present, s.inserting, s.removing) = (false, false, false);
            if let Some(tx) = reports {
                // Ignoring the error: the receiver lives as long as the VM.
                let _ = tx.send(GuestCpuMsg::Eject(slot));
            }
        }
    }

    fn write_command(&mut self, cmd: u8) {
        if cmd > CMD_CPU_ID {
            return;
        }
        self.command = cmd;
        if cmd != CMD_NEXT_EVENT {
            return;
        }
        let n = self.slots.len() as u32;
        let start = self.selector;
        let mut i = start;
        loop {
            let Some(s) = self.slots.get(i as usize) else {
                return;
            };
            if s.inserting || s.removing {
                self.selector = i;
                return;
            }
            i = if i + 1 < n { i + 1 } else { 0 };
            if i == start {
                return;
            }
        }
    }
}

impl BusDevice for CpuHotplugRegs {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.read_reg(offset).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestAction> {
        self.write_reg(offset, le_value(data) as u32);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(present: u32) -> (CpuHotplugRegs, std::sync::mpsc::Receiver<GuestCpuMsg>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (CpuHotplugRegs::new(&[0, 1, 2, 3], present, Some(tx)), rx)
    }

    fn rd(r: &mut CpuHotplugRegs, off: u64, len: usize) -> u32 {
        let mut b = vec![0u8; len];
        r.read(off, &mut b);
        le_value(&b) as u32
    }

    fn wr(r: &mut CpuHotplugRegs, off: u64, v: u32, len: usize) {
        r.write(off, &v.to_le_bytes()[..len]);
    }

    #[test]
    fn enumeration_sees_present_cpus_and_modern_interface_reads_zero() {
        let (mut r, _) = regs(2);
        wr(&mut r, 0, 0, 4);
        wr(&mut r, 5, 0, 1);
        assert_eq!(rd(&mut r, 0, 4), 0, "modern interface detection");
        let present: Vec<u32> = (0..4)
            .map(|i| {
                wr(&mut r, 0, i, 4);
                rd(&mut r, 4, 1) & 1
            })
            .collect();
        assert_eq!(present, [1, 1, 0, 0]);
        // An invalid selector reads 0 and ignores writes.
        wr(&mut r, 0, 9, 4);
        assert_eq!(rd(&mut r, 4, 1), 0);
        assert_eq!(rd(&mut r, 8, 4), 0);
    }

    #[test]
    fn next_event_command_selects_the_inserted_cpu_until_cleared() {
        let (mut r, _) = regs(1);
        r.plug(2, true);
        wr(&mut r, 0, 0, 4);
        wr(&mut r, 5, 0, 1);
        assert_eq!(rd(&mut r, 4, 1), 0b011);
        assert_eq!(rd(&mut r, 8, 4), 2);
        wr(&mut r, 5, 3, 1);
        assert_eq!(rd(&mut r, 8, 4), 2, "APIC id");
        wr(&mut r, 4, 0b10, 1);
        wr(&mut r, 0, 0, 4);
        wr(&mut r, 5, 0, 1);
        assert_eq!(rd(&mut r, 8, 4), 0, "no more events: selector unchanged");
        assert_eq!(rd(&mut r, 4, 1) & 0b110, 0);
    }

    #[test]
    fn eject_reports_the_slot_once_and_never_for_the_boot_cpu() {
        let (mut r, rx) = regs(2);
        r.request_remove(1);
        wr(&mut r, 0, 0, 4);
        wr(&mut r, 5, 0, 1);
        assert_eq!(rd(&mut r, 4, 1), 0b101);
        wr(&mut r, 4, 0b100, 1);
        wr(&mut r, 4, 0b1000, 1);
        assert_eq!(rx.try_recv(), Ok(GuestCpuMsg::Eject(1)));
        assert!(!r.is_present(1));
        wr(&mut r, 4, 0b1000, 1);
        wr(&mut r, 0, 0, 4);
        wr(&mut r, 4, 0b1000, 1);
        assert!(rx.try_recv().is_err());
        assert!(r.is_present(0));
    }

    #[test]
    fn ost_writes_are_kept_per_cpu_and_the_status_is_reported() {
        let (mut r, rx) = regs(2);
        wr(&mut r, 0, 1, 4);
        wr(&mut r, 5, 1, 1);
        wr(&mut r, 8, 0x103, 4);
        wr(&mut r, 5, 2, 1);
        wr(&mut r, 8, 0x80, 4);
        assert_eq!(
            (r.slots()[1].ost_event, r.slots()[1].ost_status),
            (0x103, 0x80)
        );
        assert_eq!(
            rx.try_recv(),
            Ok(GuestCpuMsg::Ost {
                slot: 1,
                source: 0x103,
                status: 0x80
            })
        );
    }
}
