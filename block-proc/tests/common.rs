//! Shared helpers of block-proc's integration tests: temp files, images,
//! starting block-proc standalone, data patterns.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vhost_user_harness::process::Backend;
use vhost_user_harness::{BlkDevice, BlkOptions};

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

/// A deterministic data pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(31) + seed * 7919) % 251) as u8)
        .collect()
}
