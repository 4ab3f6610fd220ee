//! Shared helpers of block-proc's integration tests: temp files, images,
//! starting block-proc standalone or under the IPC channel ([`worker`]),
//! data patterns.

#![allow(dead_code)]

// A path both as the `common` test target and as a module of the others.
#[path = "common/worker.rs"]
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::Command;

use vhost_user_harness::blk::S_OK;
use vhost_user_harness::process::Backend;
use vhost_user_harness::{BlkDevice, BlkOptions, Request};

/// One MiB.
pub const MIB: usize = 1 << 20;

/// The block-proc binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_block-proc"))
}

/// A temp path removed when dropped.
pub struct Tmp(PathBuf);

impl std::ops::Deref for Tmp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Tmp {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Tmp {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A unique temp path for this test process, removed when dropped.
pub fn tmp(name: &str) -> Tmp {
    Tmp(std::env::temp_dir().join(format!("bp-it-{}-{name}", std::process::id())))
}

/// A zero-filled raw image of `size` bytes.
pub fn raw_image(name: &str, size: u64) -> Tmp {
    let p = tmp(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

/// A qcow2 image made by qemu-img.
pub fn qcow2_image(name: &str, size: &str) -> Tmp {
    let p = tmp(name);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg(size)
        .status()
        .unwrap();
    assert!(st.success());
    p
}

/// `qemu-img check` passes.
pub fn qemu_img_check(p: &Path) -> bool {
    Command::new("qemu-img")
        .arg("check")
        .arg("-q")
        .arg(p)
        .status()
        .unwrap()
        .success()
}

/// JSON blockdev options of a raw node over a file.
pub fn raw_json(p: &Path) -> String {
    format!(
        r#"{{"driver":"raw","node-name":"disk0","discard":"unmap","file":{{"driver":"file","filename":"{}"}}}}"#,
        p.display()
    )
}

/// JSON blockdev options of a qcow2 node over a file.
pub fn qcow2_json(p: &Path) -> String {
    format!(
        r#"{{"driver":"qcow2","node-name":"disk0","read-only":false,"discard":"unmap","file":{{"driver":"file","filename":"{}","cache":{{"direct":false}}}}}}"#,
        p.display()
    )
}

/// Start block-proc on `sock` exporting `blockdev`.
pub fn start(sock: &Path, blockdev: &str, extra: &[&str]) -> Backend {
    Backend::block_proc(&bin(), sock, &[blockdev.to_string()], extra).unwrap()
}

/// Connect the harness.
pub fn connect(sock: &Path, num_queues: u16) -> BlkDevice {
    BlkDevice::connect(
        sock,
        BlkOptions {
            num_queues,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Waits (30 s at most) until the harness sees `want` requests of each
/// queue marked in flight in its inflight region; the failure names every
/// state it saw on the way.
pub fn wait_marked(dev: &BlkDevice, want: &[usize]) {
    wait_marks(dev, &format!("{want:?} requests"), |now| now == want);
}

/// Waits (30 s at most) until the marks of each queue in the harness's
/// inflight region satisfy `done` (`what` describes it); returns them. The
/// failure names every state it saw on the way.
pub fn wait_marks(dev: &BlkDevice, what: &str, done: impl Fn(&[usize]) -> bool) -> Vec<usize> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen: Vec<Vec<usize>> = Vec::new();
    loop {
        let now = dev.inflight_marked().unwrap();
        if done(&now) {
            return now;
        }
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {what} marked in flight; marks seen, in order: {seen:?}"
        );
        std::thread::yield_now();
    }
}

/// A deterministic data pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(31) + seed * 7919) % 251) as u8)
        .collect()
}

/// Serves `blockdev` on `sock` with two queues: 16 one-MiB regions acknowledged,
/// then 16 writes in flight per queue when block-proc is SIGKILLed; after
/// the restart every in-flight write is resubmitted and completes, and all
/// 48 regions hold their data.
pub fn sigkill_mid_flight_round(sock: &Path, blockdev: &str) {
    let mut bp = start(sock, blockdev, &["--num-queues", "2"]);
    let mut dev = connect(sock, 2);
    assert!(dev.has_inflight());

    // Acknowledged before the crash.
    for i in 0..16u64 {
        assert_eq!(dev.write(0, i * 2048, &pattern(MIB, i)).unwrap(), S_OK);
    }
    // In flight at the crash: 16 per queue.
    for q in 0..2usize {
        for k in 0..16u64 {
            let i = 16 + q as u64 * 16 + k;
            dev.submit(
                q,
                Request::Write {
                    sector: i * 2048,
                    data: &pattern(MIB, i),
                },
            )
            .unwrap();
        }
        dev.kick(q).unwrap();
    }
    // Kill while the inflight region shows a request being executed.
    let mut marked = vec![0];
    for _ in 0..100_000 {
        marked = dev.inflight_marked().unwrap();
        if marked.iter().sum::<usize>() > 0 {
            break;
        }
    }
    bp.kill();
    eprintln!("inflight marks at the crash: {marked:?}");
    let mut acked = Vec::new();

    let _bp2 = start(sock, blockdev, &["--num-queues", "2"]);
    dev.reconnect().unwrap();
    for q in 0..2usize {
        while dev.pending(q) > 0 {
            acked.extend(dev.wait(q).unwrap());
        }
    }
    assert!(acked.iter().all(|c| c.status == Some(S_OK)));
    assert_eq!(acked.len(), 32);
    for i in 0..48u64 {
        let (st, back) = dev.read(1, i * 2048, MIB as u32).unwrap();
        assert_eq!(st, S_OK);
        assert!(back == pattern(MIB, i), "region {i} lost its data");
    }
}
