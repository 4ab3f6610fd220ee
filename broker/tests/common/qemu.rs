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
        let mut guard = Microvm(child);
        let q = client_once_listening(&mut guard.0, sock);
        (guard, q)
    }
}

impl Drop for Microvm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `qemu-storage-daemon`; killed on drop.
pub struct Qsd(Child);

impl Qsd {
    /// Starts `qemu-storage-daemon` with its QMP monitor on `sock`, then
    /// `args` (`--blockdev`, `--export`...); returns it with a client past
    /// `qmp_capabilities`.
    pub fn start(sock: &Path, args: &[String]) -> (Qsd, Qmp) {
        let child = Command::new("qemu-storage-daemon")
            .arg("--chardev")
            .arg(format!(
                "socket,id=m,path={},server=on,wait=off",
                sock.display()
            ))
            .args(["--monitor", "chardev=m"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon is installed (scripts/setup)");
        let mut guard = Qsd(child);
        let q = client_once_listening(&mut guard.0, sock);
        (guard, q)
    }

    /// Waits until it exits (after a `quit`).
    pub fn wait(&mut self) {
        let _ = self.0.wait();
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--blockdev` arguments of `blockdevs` (QEMU's JSON form).
pub fn blockdev_args(blockdevs: &[Value]) -> Vec<String> {
    blockdevs
        .iter()
        .flat_map(|b| ["--blockdev".to_owned(), b.to_string()])
        .collect()
}

/// A QMP client past `qmp_capabilities` on `sock`, once `child` listens
/// there (it must not exit first).
fn client_once_listening(child: &mut Child, sock: &Path) -> Qmp {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "exited ({exited:?}) before its QMP socket appeared"
        );
        assert!(
            start.elapsed() < TIMEOUT,
            "{} never appeared",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut q, _) = Qmp::connect(sock);
    q.negotiate();
    q
}

/// QEMU's replies (`return` or `error`) to `cmds`, sent over `-qmp stdio`
/// after `qmp_capabilities`, from `qemu-system-x86_64 ARGS -display none`
/// (ARGS picks the machine, e.g. `-M none -S`).
pub fn replies(args: &[&str], cmds: &[Value]) -> Vec<Value> {
    let replies: Vec<Value> = transcript(args, cmds)
        .into_iter()
        .filter(is_reply)
        .collect();
    assert_eq!(
        replies.len(),
        cmds.len(),
        "QEMU answered {} of {} commands: {replies:?}",
        replies.len(),
        cmds.len()
    );
    replies
}

/// QEMU's messages for `cmds` as [`replies`] gets them, events included,
/// in order: from after the reply to `qmp_capabilities` to the reply to
/// the last of `cmds`.
pub fn transcript(args: &[&str], cmds: &[Value]) -> Vec<Value> {
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
    let mut out = Vec::new();
    let mut replies = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v.get("QMP").is_some() {
            continue;
        }
        if is_reply(&v) {
            replies += 1;
            // The first is qmp_capabilities', the one after the last
            // command's quit's.
            if replies == 1 {
                continue;
            }
            if replies > cmds.len() + 1 {
                break;
            }
        }
        out.push(v);
    }
    child.wait().unwrap();
    out
}

fn is_reply(v: &Value) -> bool {
    v.get("return").is_some() || v.get("error").is_some()
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
