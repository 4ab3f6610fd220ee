//! qcow2 internal snapshots (`blockdev-snapshot-internal-sync`,
//! `blockdev-snapshot-delete-internal-sync`, the `snapshots` of the node
//! queries). Written by hand: imago 0.2 neither reads nor writes the
//! snapshot table. imago does honour the COPIED flags this clears, so
//! guest writes after a snapshot copy the shared L2 tables and data
//! clusters (refcount > 1) instead of overwriting them.
//!
//! - [`table`]: the snapshot table's format.
//! - [`commit`]: the metadata transaction, one header write that a
//!   SIGKILL cannot split.
//!
//! A request drains the node (no guest request in flight), writes imago's
//! metadata back, changes the file, and reopens imago on it
//! ([`crate::block::qcow2::Qcow2Driver::rewrite_metadata`]). The broker
//! keeps nothing: the snapshots are in the image.

pub mod commit;
pub mod table;

use std::time::Instant;

use ipc_proto::envelope::FlatError;
use ipc_proto::snapshots::{SnapshotInfo, SnapshotReply, SnapshotRequest};

use crate::bitmaps::qcow2_ext::ExtError;
use crate::block::graph::Graph;
use crate::block::qcow2_repair::RepairError;
use crate::block::Node;

/// Errors of snapshot operations.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the image failed (the text as QEMU's
    /// `strerror`, without Rust's "(os error N)").
    #[error("{}", errno_text(.0))]
    Io(#[from] std::io::Error),
    /// The image's metadata is not what the specification allows.
    #[error("qcow2 image is corrupt: {0}")]
    Corrupt(String),
    /// The operation is not possible on this image.
    #[error("{0}")]
    Failed(String),
}

impl From<RepairError> for SnapshotError {
    fn from(e: RepairError) -> Self {
        match e {
            RepairError::Io(e) => SnapshotError::Io(e),
            RepairError::Corrupt(m) => SnapshotError::Corrupt(m),
        }
    }
}

impl From<ExtError> for SnapshotError {
    fn from(e: ExtError) -> Self {
        match e {
            ExtError::Io(e) => SnapshotError::Io(e),
            ExtError::Corrupt(m) => SnapshotError::Corrupt(m),
            ExtError::NoSpace => {
                SnapshotError::Failed("no room in the refcount table for the snapshot".into())
            }
        }
    }
}

fn errno_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) if e.raw_os_error().is_some() => s[..i].to_string(),
        _ => s,
    }
}

/// Result of snapshot operations.
pub type Result<T> = std::result::Result<T, SnapshotError>;

fn no_hook(_: &'static str) -> Result<()> {
    Ok(())
}

/// The snapshots of a node as queries list them: a writable qcow2 node's
/// (QEMU's `bdrv_can_snapshot` is false for a read-only node), else none.
pub fn list(node: &Node) -> Vec<SnapshotInfo> {
    let Some(q) = node.driver.as_qcow2() else {
        return Vec::new();
    };
    if node.read_only || !q.writable() {
        return Vec::new();
    }
    let Some(file) = q.image_file() else {
        return Vec::new();
    };
    match commit::Header::read(file).and_then(|h| commit::read_table(file, &h)) {
        Ok((t, _)) => t.iter().map(table::Snapshot::info).collect(),
        Err(e) => {
            ipc_proto::warn_limited!("snapshot table of '{}' unreadable: {e}", node.name);
            Vec::new()
        }
    }
}

/// Answers a snapshot request, with QEMU's messages.
pub fn handle(
    graph: &Graph,
    req: SnapshotRequest,
) -> std::result::Result<SnapshotReply, FlatError> {
    match req {
        SnapshotRequest::Create {
            node,
            device,
            name,
            date,
            vm_clock_nsec,
        } => {
            let n = find(graph, &node)?;
            if n.read_only {
                return Err(FlatError::generic(format!(
                    "Device '{device}' is read only"
                )));
            }
            let Some(q) = n.driver.as_qcow2() else {
                return Err(FlatError::generic(format!(
                    "Block format '{}' used by device '{device}' does not support internal snapshots",
                    n.driver.drv()
                )));
            };
            if name.is_empty() {
                return Err(FlatError::generic("Name is empty"));
            }
            let failed = |e: SnapshotError| {
                FlatError::generic(format!(
                    "Failed to create snapshot '{name}' on device '{device}': {e}"
                ))
            };
            let exists = q.image_file().is_some_and(|f| {
                commit::Header::read(f)
                    .and_then(|h| commit::read_table(f, &h))
                    .is_ok_and(|(t, _)| {
                        table::find(&t, None, Some(&name))
                            .is_some_and(|i| (t[i].date_sec, t[i].date_nsec) != date)
                    })
            });
            if exists {
                return Err(FlatError::generic(format!(
                    "Snapshot with name '{name}' already exists on device '{device}'"
                )));
            }
            let _drained = n.hooks.drain();
            let start = Instant::now();
            q.rewrite_metadata(|file| {
                let (entries, _) = commit::read_table(file, &commit::Header::read(file)?)?;
                if let Some(i) = table::find(&entries, None, Some(&name)) {
                    // The broker's retry after a restart: already done.
                    if (entries[i].date_sec, entries[i].date_nsec) == date {
                        return Ok(Ok(()));
                    }
                    return Ok(Err(FlatError::generic(format!(
                        "Snapshot with name '{name}' already exists on device '{device}'"
                    ))));
                }
                let sn = table::Snapshot {
                    l1_offset: 0,
                    l1_size: 0,
                    id: String::new(),
                    name: name.clone(),
                    date_sec: date.0,
                    date_nsec: date.1,
                    vm_clock_nsec,
                    vm_state_size: 0,
                    disk_size: None,
                    icount: Some(u64::MAX),
                    extra_rest: Vec::new(),
                };
                commit::create(file, sn, &mut no_hook).map(|_| Ok(()))
            })
            .map_err(failed)??;
            tracing::info!(
                "snapshot '{name}' of '{node}' created in {:?}",
                start.elapsed()
            );
            Ok(SnapshotReply::Created)
        }
        SnapshotRequest::Delete {
            node,
            device,
            id,
            name,
        } => {
            let n = find(graph, &node)?;
            let unsupported =
                || FlatError::generic("Failed to get a snapshot list: Operation not supported");
            let q = n.driver.as_qcow2().ok_or_else(unsupported)?;
            let file = q.image_file().ok_or_else(unsupported)?;
            let not_found = || {
                FlatError::generic(format!(
                    "Snapshot with id '{}' and name '{}' does not exist on device '{device}'",
                    id.as_deref().unwrap_or("null"),
                    name.as_deref().unwrap_or("null")
                ))
            };
            let listed = commit::Header::read(file)
                .and_then(|h| commit::read_table(file, &h))
                .map_err(|e| FlatError::generic(format!("Failed to get a snapshot list: {e}")))?;
            if table::find(&listed.0, id.as_deref(), name.as_deref()).is_none() {
                return Err(not_found());
            }
            if n.read_only || !q.writable() {
                return Err(FlatError::generic(
                    "Failed to remove snapshot from snapshot list: Operation not permitted",
                ));
            }
            let _drained = n.hooks.drain();
            let sn = q
                .rewrite_metadata(|file| {
                    let (entries, _) = commit::read_table(file, &commit::Header::read(file)?)?;
                    match table::find(&entries, id.as_deref(), name.as_deref()) {
                        Some(i) => commit::delete(file, i, &mut no_hook).map(Some),
                        None => Ok(None),
                    }
                })
                .map_err(|e: SnapshotError| {
                    FlatError::generic(format!("Failed to remove snapshot from snapshot list: {e}"))
                })?
                .ok_or_else(not_found)?;
            Ok(SnapshotReply::Deleted(sn.info()))
        }
    }
}

fn find(graph: &Graph, node: &str) -> std::result::Result<std::sync::Arc<Node>, FlatError> {
    graph.get(node).ok_or_else(|| {
        FlatError::generic(format!(
            "Cannot find device='{node}' nor node-name='{node}'"
        ))
    })
}

#[cfg(test)]
mod tests;
