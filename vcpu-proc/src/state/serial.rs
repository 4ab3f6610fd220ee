//! The `serial` section: COM1's 16550 registers and receive FIFO.

use ipc_proto::vmstate::{OwnedSection, Reader, Section, SectionId, Writer};
use vm_superio::serial::SerialState;

use super::Result;

/// The 16550's receive FIFO (vm-superio's, which does not export it).
pub const FIFO_SIZE: usize = 64;

/// The UART's state as the section payload: nine register bytes, then
/// the FIFO as a blob.
pub fn encode(s: &SerialState) -> Result<OwnedSection> {
    let mut w = Writer::new();
    let regs = [
        s.baud_divisor_low,
        s.baud_divisor_high,
        s.interrupt_enable,
        s.interrupt_identification,
        s.line_control,
        s.line_status,
        s.modem_control,
        s.modem_status,
        s.scratch,
    ];
    w.blob(&regs)?;
    w.blob(&s.in_buffer)?;
    Ok(OwnedSection {
        id: SectionId::Serial,
        payload: w.finish(),
    })
}

/// Reads a `serial` section (a FIFO longer than the UART's is malformed,
/// so a restore refuses it before touching anything).
pub fn decode(s: &Section<'_>) -> Result<SerialState> {
    let mut r = Reader::new(s.payload);
    let regs = r.blob("serial registers")?;
    let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
        *regs
    else {
        return Err(s
            .malformed(format!("{} register bytes, expected 9", regs.len()))
            .into());
    };
    let fifo = r.blob("serial FIFO")?;
    if fifo.len() > FIFO_SIZE {
        return Err(s
            .malformed(format!(
                "a FIFO of {} bytes, the UART holds {FIFO_SIZE}",
                fifo.len()
            ))
            .into());
    }
    let in_buffer = fifo.to_vec();
    if r.remaining() != 0 {
        return Err(s
            .malformed(format!("{} bytes after its contents", r.remaining()))
            .into());
    }
    Ok(SerialState {
        baud_divisor_low,
        baud_divisor_high,
        interrupt_enable,
        interrupt_identification,
        line_control,
        line_status,
        modem_control,
        modem_status,
        scratch,
        in_buffer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(payload: &[u8]) -> Section<'_> {
        Section {
            id: SectionId::Serial,
            version: 1,
            payload,
        }
    }

    #[test]
    fn a_serial_section_round_trips() {
        let st = SerialState {
            scratch: 9,
            line_control: 3,
            in_buffer: b"abc".to_vec(),
            ..SerialState::default()
        };
        let p = encode(&st).unwrap().payload;
        assert_eq!(decode(&section(&p)).unwrap(), st);
    }

    #[test]
    fn a_fifo_longer_than_the_uarts_is_malformed() {
        let st = SerialState {
            in_buffer: vec![0; FIFO_SIZE + 1],
            ..SerialState::default()
        };
        let p = encode(&st).unwrap().payload;
        let err = decode(&section(&p)).unwrap_err();
        assert!(err.to_string().contains("the UART holds 64"), "{err}");
    }

    #[test]
    fn every_truncated_serial_section_is_an_error() {
        let p = encode(&SerialState::default()).unwrap().payload;
        for n in 0..p.len() {
            assert!(decode(&section(&p[..n])).is_err(), "length {n}");
        }
    }
}
