//! The Generic Event Device: a one-byte, read-to-clear event register
//! (bit 1 = power button, bit 3 = CPU hotplug) whose setting raises GSI
//! 13; the DSDT's `_EVT` method reads it and notifies the power button
//! device or scans the CPU hotplug registers.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::devices::irq::IrqLine;
use crate::devices::GuestAction;

/// Power-button event bit.
pub const EVENT_POWER_BUTTON: u8 = 1 << 1;
/// CPU hotplug event bit (QEMU's `ACPI_GED_CPU_HOTPLUG_EVT`): `_EVT`
/// calls `\_SB.CPUS.CSCN`.
pub const EVENT_CPU_HOTPLUG: u8 = 1 << 3;

/// The GED register and its interrupt line.
#[derive(Debug)]
pub struct Ged {
    pending: u8,
    irq: Option<Arc<IrqLine>>,
}

impl Ged {
    /// A GED raising `irq` (none in unit tests).
    pub fn new(irq: Option<Arc<IrqLine>>) -> Self {
        Ged { pending: 0, irq }
    }

    /// Latches `event` and raises the interrupt.
    pub fn notify(&mut self, event: u8) -> std::io::Result<()> {
        self.pending |= event;
        match &self.irq {
            Some(irq) => irq.trigger(),
            None => Ok(()),
        }
    }

    /// The latched events not yet read by the guest (saved state).
    pub fn pending(&self) -> u8 {
        self.pending
    }

    /// Sets the latched events (restored state). The interrupt is not
    /// raised again: the restored IOAPIC already holds its state.
    pub fn set_pending(&mut self, events: u8) {
        self.pending = events;
    }

    /// Clears pending events (machine reset).
    pub fn reset(&mut self) {
        self.pending = 0;
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.pending;
                self.pending = 0;
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> Option<GuestAction> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_button_bit_is_read_once() {
        let mut ged = Ged::new(None);
        ged.notify(EVENT_POWER_BUTTON).unwrap();
        let mut b = [0u8];
        ged.read(0, &mut b);
        assert_eq!(b[0], EVENT_POWER_BUTTON);
        ged.read(0, &mut b);
        assert_eq!(b[0], 0);
    }
}
