//! Where the block-proc binary is: one file that the integration tests
//! have as `common::block_proc_bin` and the library's tests as
//! `crate::block_proc_bin` (`#[cfg(test)]`, `lib.rs`).

use std::path::{Path, PathBuf};

/// The block-proc binary built beside this test (or `BULKHEAD_BLOCK_PROC`).
pub fn block_proc_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BULKHEAD_BLOCK_PROC") {
        return PathBuf::from(p);
    }
    // <target>/debug/deps/TEST-HASH → <target>/debug/block-proc
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("block-proc"))
        .unwrap();
    assert!(
        p.exists(),
        "this test needs the block-proc binary at {} (run `cargo build -p block-proc` with the same CARGO_TARGET_DIR, or set BULKHEAD_BLOCK_PROC)",
        p.display()
    );
    p
}
