//! `-serial pty` and `-chardev pty,id=X`: the broker opens a pseudo-terminal,
//! prints QEMU's `char device redirected to /dev/pts/N (label X)` line, and
//! a user who opens that terminal talks to the guest's COM1. Needs /dev/kvm.

mod common;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{Bulkhead, TempDir, TIMEOUT};

/// The stderr line naming the pty, read from `child` (its stderr piped).
fn redirect_line(child: &mut Child) -> String {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no pty line on stderr"
        );
        if line.starts_with("char device redirected to ") {
            // Keep draining stderr so the process never blocks on it.
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            return line.trim_end().to_owned();
        }
    }
}

/// `line` with the pty number replaced by N.
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut digits = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('N');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    out
}

/// Reads from `pty` until `want` has arrived.
fn read_until(pty: &mut std::fs::File, want: &str) -> String {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains(want) {
        assert!(
            start.elapsed() < TIMEOUT,
            "no {want:?} on the pty; got {:?}",
            String::from_utf8_lossy(&got)
        );
        match pty.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("pty read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn serial_pty_is_a_terminal_a_user_opens_to_talk_to_the_guest() {
    for (opts, label) in [
        (&["-serial", "pty"][..], "serial0"),
        (
            &[
                "-chardev",
                "pty,id=charserial0",
                "-device",
                "isa-serial,chardev=charserial0,id=serial0,index=0",
            ][..],
            "charserial0",
        ),
    ] {
        let dir = TempDir::new();
        let sock = dir.0.join("q.sock");
        let qmp = format!("unix:{},server=on,wait=off", sock.display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        cmd.args(["-qmp", &qmp])
            .args(opts)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut b = Bulkhead::start_with(&mut cmd, sock, dir);
        let line = redirect_line(b.child.as_mut().unwrap());
        // QEMU 10's line (`-M none`, same serial options), by hand.
        assert_eq!(
            shape(&line),
            shape(&format!(
                "char device redirected to /dev/pts/0 (label {label})"
            )),
            "{opts:?}"
        );
        assert!(line.ends_with(&format!("(label {label})")), "{line}");
        let path = line
            .strip_prefix("char device redirected to ")
            .and_then(|r| r.split(' ').next())
            .unwrap();
        let mut pty = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .unwrap();
        // The built-in hello guest prints its banner, then echoes input.
        read_until(&mut pty, "echoing serial input");
        pty.write_all(b"ping").unwrap();
        read_until(&mut pty, "ping");
        let mut q = b.client();
        let chardevs = q.execute(
            "human-monitor-command",
            serde_json::json!({"command-line": "info chardev"}),
        );
        assert!(
            chardevs["return"]
                .as_str()
                .unwrap()
                .contains(&format!("filename=pty:{path}")),
            "{chardevs}"
        );
    }
}
