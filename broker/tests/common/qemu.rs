//! The peer side of the comparison tests: a QEMU serving QMP, QEMU's
//! replies to the same QMP commands, and ours without the `id` the client
//! added.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Qmp, TIMEOUT};

/// A QEMU program serving QMP (`qemu-system-x86_64`,
/// `qemu-storage-daemon`), the peer of a comparison; killed on drop.
pub struct Peer(Child);

impl Peer {
    /// `qemu-system-x86_64 -M microvm -display none -nodefaults EXTRA...`
    /// with its QMP on `sock`, and a client past `qmp_capabilities`.
    pub fn microvm(sock: &Path, extra: &[&str]) -> (Peer, Qmp) {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "microvm", "-display", "none", "-nodefaults", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        Self::serving_qmp(&mut cmd, sock)
    }

    /// `qemu-storage-daemon` with its QMP monitor on `sock`, then `args`
    /// (`--blockdev`, `--export`...), and a client past
    /// `qmp_capabilities`.
    pub fn qsd(sock: &Path, args: &[String]) -> (Peer, Qmp) {
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--chardev")
            .arg(format!(
                "socket,id=m,path={},server=on,wait=off",
                sock.display()
            ))
            .args(["--monitor", "chardev=m"])
            .args(args)
            // stdin stays the test's: with /dev/null there, the monitor
            // now and then closed the first client before its greeting
            // (block_jobs_on_error, 3 runs in 6 with 9 tests in parallel).
            .stdout(Stdio::null());
        Self::serving_qmp(&mut cmd, sock)
    }

    /// Spawns `cmd`, whose QMP is on `sock`, and connects once it listens
    /// (it must not exit first).
    fn serving_qmp(cmd: &mut Command, sock: &Path) -> (Peer, Qmp) {
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("{:?} is installed (scripts/setup): {e}", cmd.get_program())
        });
        let mut peer = Peer(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            let exited = peer.0.try_wait().unwrap();
            assert!(
                exited.is_none(),
                "{:?} exited: {exited:?}",
                cmd.get_program()
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
        (peer, q)
    }

    /// Waits until it exits (after a `quit`).
    pub fn wait(&mut self) {
        let _ = self.0.wait();
    }
}

impl Drop for Peer {
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
