//! COM1: vm-superio's 16550 UART on an irqfd, and its backends — a byte
//! stream (output fd, optional input fd), a listening socket (Unix or TCP,
//! bound by the broker; one client at a time; output is dropped while none
//! is connected) or null.
//!
//! Input is bounded: a reader thread holds at most one buffer and feeds the
//! UART's FIFO only as space frees up.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::Serial;

use crate::bus::BusDevice;
use crate::devices::irq::IrqLine;
use crate::devices::GuestAction;
use ipc_proto::warn_limited;

const INPUT_BUF: usize = 256;
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// The UART's interrupt: an irqfd line, or none (unit tests). Shared so
/// a UART rebuilt from saved state keeps the same line.
#[derive(Debug, Clone)]
pub struct SerialIrq(pub Option<Arc<IrqLine>>);

impl vm_superio::Trigger for SerialIrq {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        match &self.0 {
            Some(l) => l.trigger(),
            None => Ok(()),
        }
    }
}

/// Where guest output goes.
#[derive(Debug, Clone)]
pub enum SerialOut {
    /// Dropped.
    Null,
    /// Written to a file or pipe.
    File(Arc<File>),
    /// Written to the connected socket client, dropped while none.
    Client(Arc<Mutex<Option<File>>>),
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOut::Null => Ok(buf.len()),
            SerialOut::File(f) => {
                if let Err(e) = (&**f).write_all(buf) {
                    warn_limited!("serial output failed: {e}");
                }
                Ok(buf.len())
            }
            SerialOut::Client(c) => {
                let mut guard = c.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(s) = guard.as_mut() {
                    if s.write_all(buf).is_err() {
                        *guard = None;
                    }
                }
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub mod state;

/// The UART on the I/O bus.
pub struct SerialDevice {
    uart: Serial<SerialIrq, vm_superio::serial::NoEvents, SerialOut>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq`, writing to `out`.
    pub fn new(irq: SerialIrq, out: SerialOut) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }

    /// Queues guest input; returns how many bytes fit in the FIFO.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                warn_limited!("serial input failed: {e:?}");
                n
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestAction> {
        if let Some(b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, *b) {
                warn_limited!("serial register write failed: {e:?}");
            }
        }
        None
    }
}

/// Feeds `bytes` into the UART, waiting while its FIFO is full.
fn feed(dev: &Mutex<SerialDevice>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = dev.lock().unwrap_or_else(|p| p.into_inner()).enqueue(bytes);
        bytes = &bytes[n..];
        if n == 0 {
            std::thread::sleep(FIFO_FULL_BACKOFF);
        }
    }
}

fn pump<R: Read + std::os::fd::AsFd>(dev: &Mutex<SerialDevice>, mut input: R) {
    let mut buf = [0u8; INPUT_BUF];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => feed(dev, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A non-blocking input (the broker's pty master): wait for data.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&input),
                    nix::poll::PollFlags::POLLIN,
                )];
                if let Err(e) = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                    if e != nix::errno::Errno::EINTR {
                        warn_limited!("serial input poll failed: {e}");
                        return;
                    }
                }
            }
            Err(e) => {
                warn_limited!("serial input read failed: {e}");
                return;
            }
        }
    }
}

/// Starts a thread reading `input` into the UART until EOF.
pub fn spawn_stream_input(dev: Arc<Mutex<SerialDevice>>, input: OwnedFd) -> io::Result<()> {
    std::thread::Builder::new()
        .name("serial-in".into())
        .spawn(move || pump(&dev, File::from(input)))
        .map(|_| ())
}

/// Accepts one connection on a listening socket of any family (the
/// broker binds Unix and TCP ones).
fn accept(listener: &OwnedFd) -> io::Result<File> {
    let fd = nix::sys::socket::accept4(
        listener.as_raw_fd(),
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    // SAFETY: accept4 just returned this new fd; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Starts a thread serving `listener`: one client at a time (`first`, if
/// the broker accepted one already, then each accepted one), its bytes
/// are input and `client` (the UART's output sink) points at it while
/// connected.
pub fn spawn_listener(
    dev: Arc<Mutex<SerialDevice>>,
    listener: OwnedFd,
    client: Arc<Mutex<Option<File>>>,
    first: Option<File>,
) -> io::Result<()> {
    // The first client is the output sink before any vCPU runs, so the
    // guest's first bytes reach it.
    let mut first_reader = match first {
        Some(f) => {
            let reader = f.try_clone()?;
            *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
            Some(reader)
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("serial-listen".into())
        .spawn(move || loop {
            if let Some(reader) = first_reader.take() {
                pump(&dev, reader);
                *client.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            let stream = match accept(&listener) {
                Ok(s) => s,
                Err(e) => {
                    warn_limited!("serial socket accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Ok(reader) = stream.try_clone() else {
                continue;
            };
            *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
            pump(&dev, reader);
            *client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const LSR: u64 = 5;

    #[test]
    fn transmitted_bytes_reach_the_client_and_are_dropped_without_one() {
        let slot = Arc::new(Mutex::new(None));
        let mut dev = SerialDevice::new(SerialIrq(None), SerialOut::Client(slot.clone()));
        dev.write(THR, b"x");
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        *slot.lock().unwrap() = Some(File::from(OwnedFd::from(a)));
        dev.write(THR, b"y");
        let mut got = [0u8; 1];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"y");
    }

    #[test]
    fn input_is_readable_from_the_receive_register() {
        let dev = Mutex::new(SerialDevice::new(SerialIrq(None), SerialOut::Null));
        feed(&dev, b"hi");
        let mut d = dev.lock().unwrap();
        let mut b = [0u8];
        d.read(LSR, &mut b);
        assert_eq!(b[0] & 1, 1, "data ready");
        d.read(THR, &mut b);
        assert_eq!(b[0], b'h');
    }
}
