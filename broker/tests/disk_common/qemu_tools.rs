//! QEMU's image tools as the block tests use them: `qemu-img` and
//! `qemu-io` runs, backing chains, comparisons.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd args`, which must succeed; its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `x` as a `&str` argument.
pub fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

/// base ← mid ← top in `dir`, qcow2 images of `size` bytes made with
/// `qemu-img create -b`, all empty.
pub fn qcow2_chain(dir: &Path, size: u64) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join("base.qcow2");
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&base), &size.to_string()],
    );
    for (img, backing) in [(&mid, &base), (&top, &mid)] {
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                p(backing),
                "-F",
                "qcow2",
                p(img),
            ],
        );
    }
    (base, mid, top)
}

/// `qemu-io -c "write -P pattern range"` on the qcow2 `img`.
pub fn qemu_io_write(img: &Path, pattern: u8, range: &str) {
    let cmd = format!("write -P {pattern:#x} {range}");
    run("qemu-io", &["-f", "qcow2", "-c", &cmd, p(img)]);
}

/// The guest-visible contents of the chain under `top`, as raw `flat`.
pub fn flatten(top: &Path, flat: &Path) {
    run("qemu-img", &["convert", "-U", "-O", "raw", p(top), p(flat)]);
}

/// `qemu-img compare` finds `a` and `b` identical.
pub fn assert_qemu_img_compare(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", p(a), p(b)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {a:?} {b:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
