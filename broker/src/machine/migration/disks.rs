//! QEMU's inactive block devices during a migration
//! (`bdrv_inactivate_all` / `bdrv_activate_all`): at the switchover the
//! source flushes every disk and releases its image locks, so the target
//! (the same image paths on shared storage) can take them; the target
//! opens its images without locks and takes them when its incoming
//! migration completes. A source whose migration fails or is cancelled
//! after the switchover takes its locks back before the guest runs on.
//!
//! The locks are OFD locks on the broker's own fds
//! ([`crate::machine::images::lock`]), so block-proc neither knows nor
//! replays this state: a block-proc restarted mid-migration gets the same
//! fds, still unlocked.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use ipc_proto::block::BlockRequest;
use ipc_proto::FlatError;

use crate::machine::images::lock;
use crate::machine::{block_state, expect_done, Machine};

/// Flushes every disk (block-proc drains and flushes each node; a
/// restarting block-proc is waited for) and releases every image lock.
pub fn inactivate(m: &Machine) -> Result<(), FlatError> {
    let files = crate::machine::lock(&block_state::state(m)).image_locks();
    if !files.is_empty() {
        m.across_block_restarts(|| {
            m.block_request(BlockRequest::FlushAll)
                .and_then(expect_done)
        })?;
    }
    m.migration.disks_inactive.store(true, Ordering::SeqCst);
    for (name, fd, perms) in &files {
        if perms.is_some() {
            tracing::debug!("migration: image '{name}' released");
            lock::unlock_all(fd.as_fd());
        }
    }
    Ok(())
}

/// Takes every image lock back (QEMU's `bdrv_activate_all`). On a lock
/// another process holds, the locks taken so far stay (a retry with `cont`
/// takes the rest) and the error is QEMU's message.
pub fn activate(m: &Machine) -> Result<(), FlatError> {
    if !m.migration.disks_inactive() {
        return Ok(());
    }
    let files = crate::machine::lock(&block_state::state(m)).image_locks();
    for (name, fd, perms) in &files {
        if let Some(p) = perms {
            lock::lock_image(fd.as_fd(), *p).map_err(|e| {
                tracing::warn!("migration: image '{name}': {e}");
                FlatError::generic(e.to_string())
            })?;
        }
    }
    m.migration.disks_inactive.store(false, Ordering::SeqCst);
    Ok(())
}
