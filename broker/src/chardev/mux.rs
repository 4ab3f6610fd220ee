//! stdio shared by the guest's serial port and a human monitor, as QEMU's
//! mux chardev (`-serial mon:stdio`, `-nographic`): the serial port has
//! the keyboard first; Ctrl-a c switches between it and the monitor,
//! Ctrl-a x quits, Ctrl-a h prints the keys, Ctrl-a Ctrl-a sends a
//! Ctrl-a. Output of both goes to stdout at all times, as QEMU's.
//! Also serves `-monitor stdio` (the monitor alone on stdio).
//!
//! vcpu-proc's UART talks to one end of a socket pair; the broker pumps
//! the other end to stdout and feeds it the keys while the serial port
//! has the focus. On a terminal, stdin is put in QEMU's raw mode (no
//! echo, no line editing, signals kept) and restored at exit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

use super::ChardevError;
use crate::cli::{HmpSpec, SerialSpec};
use crate::machine::Machine;
use crate::monitor::console::{banner, Console};

/// The escape key (Ctrl-a, QEMU's default).
const ESCAPE: u8 = 1;

/// QEMU's text for the keys bulkhead's mux has (QEMU's `C-a s`, `C-a b`,
/// `C-a t` — snapshot save, break, timestamps — are not there).
const HELP: &str = "\n\rC-a h    print this help\n\r\
C-a x    exit emulator\n\r\
C-a c    switch between console and monitor\n\r\
C-a C-a  sends C-a\n\r";

/// What a key typed on muxed stdio does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxKey {
    /// A byte for the serial port.
    Serial(u8),
    /// A byte for the monitor.
    Monitor(u8),
    /// Print the keys.
    Help,
    /// The focus changed; true if the monitor has it now.
    Switched(bool),
    /// End the VM.
    Quit,
    /// Nothing (the escape key, or an unknown key after it).
    Nothing,
}

/// QEMU's mux key handling (chardev/char-mux.c `mux_proc_byte`).
#[derive(Debug, Default)]
pub struct MuxInput {
    escaped: bool,
    monitor: bool,
}

impl MuxInput {
    /// Handles one typed byte.
    pub fn feed(&mut self, b: u8) -> MuxKey {
        if self.escaped {
            self.escaped = false;
            return match b {
                b'h' | b'?' => MuxKey::Help,
                b'x' => MuxKey::Quit,
                b'c' => {
                    self.monitor = !self.monitor;
                    MuxKey::Switched(self.monitor)
                }
                ESCAPE => self.deliver(b),
                _ => MuxKey::Nothing,
            };
        }
        if b == ESCAPE {
            self.escaped = true;
            return MuxKey::Nothing;
        }
        self.deliver(b)
    }

    fn deliver(&self, b: u8) -> MuxKey {
        if self.monitor {
            MuxKey::Monitor(b)
        } else {
            MuxKey::Serial(b)
        }
    }
}

/// The socket-pair end vcpu-proc's UART gets (muxed stdio only).
static GUEST_END: OnceLock<OwnedFd> = OnceLock::new();

/// A dup of the UART's end of the pair; `None` unless [`start`] set up a
/// mux.
pub fn guest_end() -> Option<std::io::Result<OwnedFd>> {
    GUEST_END.get().map(|fd| fd.try_clone())
}

/// stdout shared by the output pump and the monitor: one write at a time.
#[derive(Clone)]
struct SharedOut(Arc<Mutex<File>>);

impl Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Restores the terminal's settings when dropped (at the broker's exit).
pub struct TerminalGuard(Option<Termios>);

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            if let Err(e) = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t) {
                tracing::warn!("cannot restore the terminal: {e}");
            }
        }
    }
}

/// QEMU's stdio settings (chardev/char-stdio.c): raw input, no echo,
/// output processing and signals kept. `None` if stdin is no terminal.
fn raw_terminal() -> Option<Termios> {
    let stdin = std::io::stdin();
    let old = termios::tcgetattr(stdin.as_fd()).ok()?;
    let mut t = old.clone();
    use termios::{
        ControlFlags as C, InputFlags as I, OutputFlags as O, SpecialCharacterIndices as S,
    };
    t.input_flags &=
        !(I::IGNBRK | I::BRKINT | I::PARMRK | I::ISTRIP | I::INLCR | I::IGNCR | I::ICRNL | I::IXON);
    t.output_flags |= O::OPOST;
    t.local_flags &=
        !(LocalFlags::ECHO | LocalFlags::ECHONL | LocalFlags::ICANON | LocalFlags::IEXTEN);
    t.control_flags &= !(C::CSIZE | C::PARENB);
    t.control_flags |= C::CS8;
    t.control_chars[S::VMIN as usize] = 1;
    t.control_chars[S::VTIME as usize] = 0;
    if let Err(e) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &t) {
        tracing::warn!("cannot put the terminal in raw mode: {e}");
        return None;
    }
    Some(old)
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ChardevError {
    move |source| ChardevError::Io { what, source }
}

/// Serves stdio if the configuration puts a monitor there (muxed with the
/// serial port, or alone); call before the VM is prepared. The guard
/// restores the terminal.
pub fn start(machine: &Arc<Machine>) -> Result<Option<TerminalGuard>, ChardevError> {
    let cfg = machine.config();
    let muxed = cfg.serial == SerialSpec::MonStdio;
    if !muxed && !cfg.hmp.contains(&HmpSpec::Stdio) {
        return Ok(None);
    }
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io("stdout"))?;
    let out = SharedOut(Arc::new(Mutex::new(File::from(stdout))));
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io("stdin"))?;
    let guard = TerminalGuard(raw_terminal());
    let mut console = Console::new(machine.clone());
    let serial_in = if muxed {
        let (broker, guest) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| io("the serial socket pair")(e.into()))?;
        let reader = File::from(broker.try_clone().map_err(io("the serial socket pair"))?);
        let _ = GUEST_END.set(guest);
        let mut pump_out = out.clone();
        std::thread::Builder::new()
            .name("mux-out".into())
            .spawn(move || pump(reader, &mut pump_out))
            .map_err(io("the serial output thread"))?;
        Some(File::from(broker))
    } else {
        let mut o = out.clone();
        let shown = o
            .write_all(banner().as_bytes())
            .and_then(|()| console.show_prompt(&mut o));
        if let Err(e) = shown {
            tracing::warn!("monitor output on stdout failed: {e}");
        }
        None
    };
    let machine = machine.clone();
    std::thread::Builder::new()
        .name("stdio-in".into())
        .spawn(move || {
            let r = match serial_in {
                Some(serial) => keys(File::from(stdin), serial, console, out, &machine),
                None => monitor_only(File::from(stdin), console, out),
            };
            if let Err(e) = r {
                tracing::warn!("stdio: {e}");
            }
        })
        .map_err(io("the stdio input thread"))?;
    Ok(Some(guard))
}

/// Guest output to stdout, whoever has the keyboard.
fn pump(mut from: File, out: &mut SharedOut) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]) {
                    tracing::warn!("serial output on stdout failed: {e}");
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("serial output read failed: {e}");
                return;
            }
        }
    }
}

fn monitor_only(mut stdin: File, mut console: Console, mut out: SharedOut) -> std::io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => console.input(&buf[..n], &mut out)?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The keyboard of muxed stdio.
fn keys(
    mut stdin: File,
    mut serial: File,
    mut console: Console,
    mut out: SharedOut,
    machine: &Machine,
) -> std::io::Result<()> {
    let mut mux = MuxInput::default();
    let mut opened = false;
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for b in &buf[..n] {
            match mux.feed(*b) {
                MuxKey::Serial(b) => serial.write_all(&[b])?,
                MuxKey::Monitor(b) => console.input(&[b], &mut out)?,
                MuxKey::Help => out.write_all(HELP.as_bytes())?,
                MuxKey::Switched(true) => {
                    // QEMU greets when the monitor first gets the keyboard.
                    if !opened {
                        out.write_all(banner().as_bytes())?;
                        opened = true;
                    }
                    console.show_prompt(&mut out)?;
                }
                MuxKey::Switched(false) => out.write_all(b"\r\n")?,
                MuxKey::Quit => {
                    out.write_all(b"bulkhead: Terminated\n\r")?;
                    machine.request_quit();
                }
                MuxKey::Nothing => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_keys_switch_quit_and_pass_through_as_qemu() {
        let mut m = MuxInput::default();
        let keys: Vec<MuxKey> = b"a\x01c\x01\x01b\x01z\x01hx\x01c\x01x"
            .iter()
            .map(|b| m.feed(*b))
            .filter(|k| *k != MuxKey::Nothing)
            .collect();
        assert_eq!(
            keys,
            [
                MuxKey::Serial(b'a'),
                MuxKey::Switched(true),
                MuxKey::Monitor(1),
                MuxKey::Monitor(b'b'),
                MuxKey::Help,
                MuxKey::Monitor(b'x'),
                MuxKey::Switched(false),
                MuxKey::Quit,
            ]
        );
    }
}
