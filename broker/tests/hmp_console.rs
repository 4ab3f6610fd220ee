//! The human monitor with QEMU's readline and its stdio mux, end to end:
//! bulkhead runs on a pseudo-terminal as a user starts it (`-nographic`,
//! `-serial mon:stdio`, `-monitor stdio`), the hello guest prints and
//! echoes on the serial port, Ctrl-a c switches to the monitor, and the
//! bytes the terminal receives for `info status`, `stop`, `cont` and an
//! unknown command are the bytes QEMU 10 sends for the same keys (QEMU runs
//! the same guest). Also the monitor on a Unix socket. Needs /dev/kvm and
//! qemu-system-x86_64 (scripts/setup).

mod common;
mod disk_common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TempDir, TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// A program on a pseudo-terminal (its stdin and stdout), everything it
/// prints collected.
struct Term {
    child: Child,
    master: File,
    got: Arc<Mutex<Vec<u8>>>,
    mark: usize,
}

impl Term {
    fn spawn(cmd: &mut Command) -> Term {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = File::from(pty.slave);
        let child = cmd
            .stdin(slave.try_clone().unwrap())
            .stdout(slave)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let master = File::from(pty.master);
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut r, g) = (master.try_clone().unwrap(), got.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the program has exited and closed the terminal.
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                g.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            child,
            master,
            got,
            mark: 0,
        }
    }

    /// Waits until the output since the last mark contains `want`;
    /// returns that output and moves the mark to its end.
    fn expect(&mut self, want: &str) -> Vec<u8> {
        let start = Instant::now();
        loop {
            let got = self.got.lock().unwrap();
            let new = &got[self.mark..];
            if let Some(i) = find(new, want.as_bytes()) {
                let out = new[..i + want.len()].to_vec();
                self.mark += i + want.len();
                return out;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no {want:?}; got {:?}",
                String::from_utf8_lossy(new)
            );
            drop(got);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < TIMEOUT, "did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// QEMU 10 booting the hello guest as bulkhead does (qboot, microvm with
/// COM1 and the debug-exit port), with `opts`.
fn qemu(opts: &[&str]) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off",
        "-bios",
        "/usr/share/qemu/qboot.rom",
        "-enable-kvm",
        "-m",
        "64",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
        &disk_common::guest("hello"),
    ])
    .args(opts);
    c
}

fn bulkhead(opts: &[&str]) -> Command {
    common::require_kvm();
    common::build_workers();
    let mut c = Command::new(BIN);
    c.args(["-m", "64"]).args(opts);
    c
}

/// The banner line, QEMU's or bulkhead's, as one placeholder.
fn normalise(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes).into_owned();
    let Some(start) = s.find("QEMU ") else {
        return s;
    };
    let end = s[start..].find(" monitor - ").map_or(start, |e| start + e);
    format!("{}QEMU <version>{}", &s[..start], &s[end..])
}

const PROMPT: &str = "(qemu) ";

/// Drives the guest and the monitor on muxed stdio; returns the
/// terminal's bytes from the switch to the monitor to the last prompt.
fn muxed_session(t: &mut Term) -> String {
    t.expect("echoing serial input");
    t.send(b"hi\r");
    t.expect("hi\r\r\n");
    let mut monitor = Vec::new();
    t.send(b"\x01c");
    monitor.extend(t.expect(PROMPT));
    for line in [
        "info status",
        "stop",
        "info status",
        "cont",
        "foo",
        "info chardev",
    ] {
        t.send(format!("{line}\r").as_bytes());
        monitor.extend(t.expect(PROMPT));
    }
    // Back to the guest: the keys reach the serial port again.
    t.send(b"\x01c");
    monitor.extend(t.expect("\r\n"));
    t.send(b"yo\r");
    t.expect("yo\r\r\n");
    t.send(b"\x01c");
    monitor.extend(t.expect(PROMPT));
    normalise(&monitor)
}

#[test]
fn nographic_muxes_serial_and_monitor_on_stdio_as_qemu_does() {
    let mut b = Term::spawn(&mut bulkhead(&["-nographic"]));
    let ours = muxed_session(&mut b);
    assert!(ours.contains("VM status: running\r\r\n"), "{ours:?}");
    assert!(ours.contains("VM status: paused\r\r\n"), "{ours:?}");
    assert!(ours.contains("unknown command: 'foo'\r\r\n"), "{ours:?}");
    b.send(b"quit\r");
    assert_eq!(b.wait_exit().code(), Some(0));

    let mut q = Term::spawn(&mut qemu(&[
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "mon:stdio",
    ]));
    let theirs = muxed_session(&mut q);
    assert_eq!(ours, theirs, "bulkhead and QEMU 10 differ on the terminal");
    q.send(b"quit\r");
    assert_eq!(q.wait_exit().code(), Some(0));
}

#[test]
fn ctrl_a_h_lists_the_keys_and_ctrl_a_x_ends_bulkhead() {
    let mut b = Term::spawn(&mut bulkhead(&["-serial", "mon:stdio"]));
    b.expect("echoing serial input");
    b.send(b"\x01h");
    let help = b.expect("C-a C-a  sends C-a");
    let help = String::from_utf8_lossy(&help);
    for key in [
        "C-a h    print this help",
        "C-a x    exit emulator",
        "C-a c    switch between console and monitor",
    ] {
        assert!(help.contains(key), "{help:?}");
    }
    // Ctrl-a Ctrl-a sends one Ctrl-a to the guest, which echoes it.
    b.send(b"\x01\x01\r");
    b.expect("\x01\r\r\n");
    b.send(b"\x01x");
    b.expect("bulkhead: Terminated");
    assert_eq!(b.wait_exit().code(), Some(0));
}

#[test]
fn monitor_stdio_greets_and_runs_commands_as_qemu() {
    let session = |t: &mut Term| {
        let mut out = t.expect(PROMPT);
        t.send(b"info status\r");
        out.extend(t.expect(PROMPT));
        // History: Up recalls the line, as in QEMU.
        t.send(b"\x1b[A\r");
        out.extend(t.expect(PROMPT));
        normalise(&out)
    };
    let mut b = Term::spawn(&mut bulkhead(&["-monitor", "stdio"]));
    let ours = session(&mut b);
    assert!(
        ours.starts_with("QEMU <version> monitor - type 'help' for more information\r\r\n(qemu) "),
        "{ours:?}"
    );
    b.send(b"q\r");
    assert_eq!(b.wait_exit().code(), Some(0));

    let mut q = Term::spawn(&mut qemu(&[
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "stdio",
    ]));
    let theirs = session(&mut q);
    assert_eq!(ours, theirs);
}

/// Connects to a monitor socket (waiting for it to appear).
fn connect(sock: &std::path::Path) -> UnixStream {
    let start = Instant::now();
    let s = loop {
        if let Ok(s) = UnixStream::connect(sock) {
            break s;
        }
        assert!(start.elapsed() < TIMEOUT, "no monitor socket");
        std::thread::sleep(Duration::from_millis(10));
    };
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Reads up to and including the next prompt.
fn read_prompt(s: &mut UnixStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !got.ends_with(PROMPT.as_bytes()) {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A client's first exchange: the greeting and `info status`.
fn socket_session(sock: &std::path::Path) -> (UnixStream, String) {
    let mut s = connect(sock);
    let mut out = read_prompt(&mut s);
    s.write_all(b"info status\r").unwrap();
    out.push_str(&read_prompt(&mut s));
    (s, normalise(out.as_bytes()))
}

#[test]
fn monitor_on_a_unix_socket_serves_one_client_after_another_as_qemu() {
    let dir = TempDir::new();
    let sock = dir.0.join("hmp.sock");
    let spec = format!("unix:{},server=on,wait=off", sock.display());
    let chardev = format!("socket,id=hmp0,path={},server=on,wait=off", sock.display());
    for opts in [
        vec!["-monitor", spec.as_str()],
        vec![
            "-chardev",
            chardev.as_str(),
            "-mon",
            "chardev=hmp0,mode=readline",
        ],
    ] {
        let mut child = bulkhead(&opts).args(["-serial", "null"]).spawn().unwrap();
        let (s, ours) = socket_session(&sock);
        assert!(ours.contains("VM status: running\r\n"), "{ours:?}");
        drop(s);
        // The next client is greeted too.
        let (mut s, again) = socket_session(&sock);
        assert_eq!(ours, again);
        s.write_all(b"quit\r").unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(start.elapsed() < TIMEOUT, "quit did not end bulkhead");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0));
        assert!(!sock.exists(), "monitor socket left behind");

        // QEMU 10 on the same options: the same bytes.
        let mut q = qemu(&["-nodefaults", "-display", "none"])
            .args(&opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (mut s, theirs) = socket_session(&sock);
        s.write_all(b"quit\r").unwrap();
        let _ = q.wait();
        assert_eq!(ours, theirs, "{opts:?}");
    }
}
