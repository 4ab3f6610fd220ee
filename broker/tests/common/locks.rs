//! Image locks as another process sees them (QEMU's OFD lock bytes).

use std::os::fd::AsRawFd;
use std::path::Path;

use serde_json::{json, Value};

/// Whether some process holds an OFD (or POSIX) lock on `byte` of `img`.
pub fn held(img: &Path, byte: i64) -> bool {
    let f = std::fs::File::open(img).unwrap();
    // SAFETY: flock is plain data; all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: valid fd and flock for the call.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(r, 0);
    fl.l_type != libc::F_UNLCK as libc::c_short
}

/// A `qcow2` node over a `file` node of `img`.
pub fn qcow2_over(node: &str, img: &Path) -> Value {
    json!({"driver": "qcow2", "node-name": node,
           "file": {"driver": "file", "node-name": format!("{node}-file"), "filename": img}})
}
