//! COM1's registers and receive FIFO as VM state, through vm-superio's
//! own `SerialState` (`Serial::state` / `Serial::from_state`).

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::{SerialDevice, SerialIrq};

/// Why a UART state cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    /// vm-superio refused it (a FIFO larger than the UART's) or the
    /// pending interrupt could not be raised.
    #[error("serial state refused: {0}")]
    Refused(String),
}

impl SerialDevice {
    /// The registers and the receive FIFO.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Rebuilds the UART from `state`, with the same interrupt line and
    /// output (a pending interrupt the state holds is raised again).
    pub fn restore(&mut self, state: &SerialState) -> Result<(), SerialStateError> {
        let irq: SerialIrq = self.uart.interrupt_evt().clone();
        let out = self.uart.writer().clone();
        let uart = Serial::from_state(state, irq, NoEvents, out)
            .map_err(|e| SerialStateError::Refused(format!("{e:?}")))?;
        self.uart = uart;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::serial::SerialOut;

    const SCRATCH: u64 = 7;
    const IER: u64 = 1;

    #[test]
    fn a_uart_rebuilt_from_state_reads_back_its_registers_and_input() {
        let mut a = SerialDevice::new(SerialIrq(None), SerialOut::Null);
        a.write(SCRATCH, &[0x5a]);
        a.write(IER, &[0x1]);
        a.enqueue(b"hi");
        let saved = a.state();
        let mut b = SerialDevice::new(SerialIrq(None), SerialOut::Null);
        b.restore(&saved).unwrap();
        assert_eq!(b.state(), saved);
        let mut byte = [0u8];
        b.read(SCRATCH, &mut byte);
        assert_eq!(byte[0], 0x5a);
        b.read(0, &mut byte);
        assert_eq!(byte[0], b'h');
    }

    #[test]
    fn a_fifo_larger_than_the_uarts_is_refused() {
        let mut s = SerialState {
            in_buffer: vec![0; 1000],
            ..SerialState::default()
        };
        s.scratch = 1;
        let mut d = SerialDevice::new(SerialIrq(None), SerialOut::Null);
        assert!(d.restore(&s).is_err());
        assert_eq!(d.state(), SerialState::default());
    }
}
