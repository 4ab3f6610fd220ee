//! The peer side of the comparison tests: a QEMU serving QMP, QEMU's
//! replies to the same QMP commands, and ours without the `id` the client
//! added.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Qmp, TIMEOUT};

/// A `qemu-system-x86_64 -M microvm`; killed on drop.
pub struct Microvm(Child);

impl Microvm {
    /// Starts `qemu-system-x86_64 -M microvm -display none -nodefaults
    /// EXTRA...` with its QMP on `sock`; returns it with a client past
    /// `qmp_capabilities`.
    pub fn start(sock: &Path, extra: &[&str]) -> (Microvm, Qmp) {
        let child = Command::new("qemu-system-x86_64")
            .args(["-M", "microvm", "-display", "none", "-nodefaults", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 is installed (scripts/setup)");
        let guard = Microvm(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(
                start.elapsed() < TIMEOUT,
                "QEMU's QMP socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (mut q, _) = Qmp::connect(sock);
        q.negotiate();
        (guard, q)
    }
}

impl Drop for Microvm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// QEMU's replies (`return` or `error`) to `cmds`, sent over `-qmp stdio`
/// after `qmp_capabilities`, from `qemu-system-x86_64 ARGS -display none`
/// (ARGS picks the machine, e.g. `-M none -S`).
pub fn replies(args: &[&str], cmds: &[Value]) -> Vec<Value> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .args(["-display", "none", "-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 is installed (scripts/setup)");
    let mut input = String::from("{\"execute\":\"qmp_capabilities\"}\n");
    for c in cmds {
        input.push_str(&c.to_string());
        input.push('\n');
    }
    input.push_str("{\"execute\":\"quit\"}\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let replies: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
        .filter(|v| v.get("return").is_some() || v.get("error").is_some())
        .skip(1)
        .collect();
    child.wait().unwrap();
    assert!(
        replies.len() >= cmds.len(),
        "QEMU answered {} of {} commands: {replies:?}",
        replies.len(),
        cmds.len()
    );
    replies[..cmds.len()].to_vec()
}

/// Our replies to `cmds` on `q`, without the `id` the client added, to
/// compare with [`replies`].
pub fn ours(q: &mut Qmp, cmds: &[Value]) -> Vec<Value> {
    cmds.iter()
        .map(|c| {
            let mut r = q.request(c.clone());
            r.as_object_mut().unwrap().remove("id");
            r
        })
        .collect()
}
