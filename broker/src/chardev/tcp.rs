//! The serial port on TCP (`-serial tcp:...`, `-chardev socket,host=,
//! port=`): the broker connects (client) or binds (server) before the
//! workers start, so a refused connection ends start-up with QEMU's
//! message, and keeps the socket for the broker's life; vcpu-proc gets a
//! dup — the connected stream, or the listening socket it accepts one
//! client at a time on.

use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use super::{os_text, ChardevError};
use crate::cli::serial_tcp::TcpSerial;

/// The open socket: (listening?, fd).
static SOCKET: OnceLock<(bool, OwnedFd)> = OnceLock::new();

/// A `wait=on` server's first client, until vcpu-proc takes it.
static FIRST_CLIENT: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Connects or binds `t` (once per broker).
pub fn open(t: &TcpSerial) -> Result<(), ChardevError> {
    if SOCKET.get().is_some() {
        return Ok(());
    }
    let addr = (t.host_or_default(), t.port);
    let fd: OwnedFd = if t.server {
        let l = TcpListener::bind(addr).map_err(|e| ChardevError::Bind {
            origin: t.origin.clone(),
            reason: os_text(&e),
        })?;
        if t.wait {
            // QEMU's line, then nothing of the VM exists until a client
            // connected (as QEMU, which waits at this chardev).
            eprintln!(
                "bulkhead: {}: info: QEMU waiting for connection on: disconnected:tcp:{},server=on",
                t.origin,
                t.address()
            );
            let (client, _) = l.accept().map_err(|e| ChardevError::Io {
                what: "the serial socket's first client",
                source: e,
            })?;
            *FIRST_CLIENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.into());
        }
        l.into()
    } else {
        let s = TcpStream::connect(addr).map_err(|e| ChardevError::Connect {
            origin: t.origin.clone(),
            address: t.address(),
            reason: os_text(&e),
        })?;
        // Keystrokes and guest output are small writes: no Nagle delay.
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!("serial TCP_NODELAY: {e}");
        }
        s.into()
    };
    let _ = SOCKET.set((t.server, fd));
    Ok(())
}

/// The first client a `wait=on` server accepted (taken: vcpu-proc owns
/// it from then on).
pub fn take_first_client() -> Option<OwnedFd> {
    FIRST_CLIENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}

/// A dup of the socket [`open`] made: (listening?, fd); `None` before.
pub fn socket() -> Option<std::io::Result<(bool, OwnedFd)>> {
    SOCKET
        .get()
        .map(|(server, fd)| fd.try_clone().map(|fd| (*server, fd)))
}
