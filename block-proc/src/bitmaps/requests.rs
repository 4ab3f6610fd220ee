//! The broker's [`BitmapRequest`]s against the node graph, with QEMU's
//! checks in QEMU's order and its messages.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipc_proto::bitmaps::{BitmapInfo, BitmapReply, BitmapRequest, BitmapSource, ImageBitmap};
use ipc_proto::FlatError;

use super::bitmap::{words_for, DirtyBitmap};
use super::qcow2_ext::{self, FLAG_AUTO};
use super::shm::SharedWords;
use crate::block::{Graph, Node};

type Result<T> = std::result::Result<T, FlatError>;

fn err(m: impl Into<String>) -> FlatError {
    FlatError::generic(m)
}

/// QEMU's `block_dirty_bitmap_lookup`: the node, then the bitmap.
fn lookup(graph: &Graph, node: &str, name: &str) -> Result<(Arc<Node>, Arc<DirtyBitmap>)> {
    let n = graph
        .get(node)
        .ok_or_else(|| err(format!("Node '{node}' not found")))?;
    let b = n
        .bitmaps
        .find(name)
        .ok_or_else(|| err(format!("Dirty bitmap '{name}' not found")))?;
    Ok((n, b))
}

/// What [`check`] lets through (QEMU's `BDRV_BITMAP_*` check flags).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allow {
    /// Anything but busy, read-only or inconsistent (`DEFAULT`).
    Nothing,
    /// Read-only bitmaps too (`ALLOW_RO`).
    ReadOnly,
    /// Inconsistent bitmaps too (`BUSY | RO`: removal).
    Inconsistent,
}

/// QEMU's `bdrv_dirty_bitmap_check` (no job holds a bitmap here, so none
/// is busy).
fn check(b: &DirtyBitmap, allow: Allow) -> Result<()> {
    if b.readonly && allow != Allow::ReadOnly {
        return Err(err(format!(
            "Bitmap '{}' is readonly and cannot be modified",
            b.name
        )));
    }
    if b.inconsistent && allow != Allow::Inconsistent {
        return Err(err(format!(
            "Bitmap '{}' is inconsistent and cannot be used",
            b.name
        )));
    }
    Ok(())
}

/// QEMU's default granularity: the cluster size within 4 KiB..64 KiB, or
/// 64 KiB for nodes without clusters.
fn default_granularity(node: &Node) -> u32 {
    node.bitmaps.with_image(|d| match d {
        Some(d) => (1u32 << d.cluster_bits).clamp(4096, 65536),
        None => 65536,
    })
}

/// QEMU's `bdrv_can_store_new_dirty_bitmap` for qcow2.
fn check_persistent(node: &Node, name: &str, granularity: u32) -> Result<()> {
    let size = node.size();
    node.bitmaps.with_image(|d| {
        let Some(d) = d else {
            return Err(err(format!(
                "Can't store persistent bitmaps to {}: Operation not supported",
                node.name
            )));
        };
        let why = if d.version < 3 {
            Some("Cannot store dirty bitmaps in qcow2 v2 files".to_string())
        } else if node.bitmaps.all().iter().filter(|b| b.persistent).count()
            >= qcow2_ext::MAX_BITMAPS
        {
            Some("Maximum number of persistent bitmaps is already reached".into())
        } else {
            let bytes = size.div_ceil(u64::from(granularity)).div_ceil(8);
            if bytes > qcow2_ext::MAX_PHYS_SIZE || bytes > 0x800_0000u64 << d.cluster_bits {
                Some("Too much space will be occupied by the bitmap. Use larger granularity".into())
            } else if name.len() > qcow2_ext::MAX_NAME {
                Some(format!(
                    "Name length exceeds maximum ({} characters)",
                    qcow2_ext::MAX_NAME
                ))
            } else {
                None
            }
        };
        match why {
            Some(w) => Err(err(format!(
                "Can't make bitmap '{name}' persistent in '{}': {w}",
                node.name
            ))),
            None => Ok(()),
        }
    })
}

/// Handles one bitmap request; `fds` holds the memory of an `Attach`.
pub fn handle(graph: &Graph, req: BitmapRequest, fds: Vec<OwnedFd>) -> Result<BitmapReply> {
    match req {
        BitmapRequest::Check {
            node,
            name,
            granularity,
            persistent,
        } => {
            if name.is_empty() {
                return Err(err("Bitmap name cannot be empty"));
            }
            let n = graph.get(&node).ok_or_else(|| {
                err(format!(
                    "Cannot find device='{node}' nor node-name='{node}'"
                ))
            })?;
            let g = match granularity {
                Some(g) if g < 512 || !g.is_power_of_two() => {
                    return Err(err("Granularity must be power of 2 and at least 512"))
                }
                Some(g) => g,
                None => default_granularity(&n),
            };
            if persistent {
                check_persistent(&n, &name, g)?;
            }
            if n.bitmaps.find(&name).is_some() {
                return Err(err(format!("Bitmap already exists: {name}")));
            }
            if name.len() > qcow2_ext::MAX_NAME {
                return Err(err(format!("Bitmap name too long: {name}")));
            }
            Ok(BitmapReply::Sized {
                node: n.name.clone(),
                granularity: g,
                bytes: words_for(n.size(), g) * 8,
            })
        }
        BitmapRequest::Attach {
            node,
            name,
            granularity,
            persistent,
            recording,
            inconsistent,
            source,
        } => {
            let n = graph
                .get(&node)
                .ok_or_else(|| err(format!("Node '{node}' not found")))?;
            if n.bitmaps.find(&name).is_some() {
                return Err(err(format!("Bitmap already exists: {name}")));
            }
            if granularity < 512 || !granularity.is_power_of_two() {
                return Err(err("Granularity must be power of 2 and at least 512"));
            }
            let fd = fds
                .into_iter()
                .next()
                .ok_or_else(|| err("no memory passed for the bitmap"))?;
            let size = n.size();
            let words = usize::try_from(words_for(size, granularity))
                .map_err(|_| err("bitmap too large"))?;
            let mem = SharedWords::map(&fd, words)
                .map_err(|e| err(format!("cannot map the memory of bitmap '{name}': {e}")))?;
            let mut b =
                DirtyBitmap::new(name.clone(), granularity, size, persistent, recording, mem);
            b.inconsistent = inconsistent;
            // QEMU marks the bitmaps it loads from a read-only image so.
            b.readonly = persistent
                && n.read_only
                && n.bitmaps
                    .with_image(|d| d.is_some_and(|d| d.entry(&name).is_some()));
            match source {
                BitmapSource::Empty | BitmapSource::Keep => {}
                BitmapSource::Image if inconsistent => {}
                BitmapSource::Image => n.bitmaps.with_image(|d| match d {
                    Some(d) => d.load(&name, &b).map_err(|e| err(e.to_string())),
                    None => Err(err(format!("'{node}' has no bitmaps in its image"))),
                })?,
            }
            n.bitmaps.attach(Arc::new(b));
            Ok(BitmapReply::Done)
        }
        BitmapRequest::Remove { node, name } => {
            let (n, b) = lookup(graph, &node, &name)?;
            check(&b, Allow::Inconsistent)?;
            n.bitmaps.remove(&name);
            Ok(BitmapReply::Done)
        }
        BitmapRequest::Clear { node, name } => {
            let (_, b) = lookup(graph, &node, &name)?;
            check(&b, Allow::Nothing)?;
            b.clear();
            Ok(BitmapReply::Done)
        }
        BitmapRequest::SetRecording {
            node,
            name,
            recording,
        } => {
            let (_, b) = lookup(graph, &node, &name)?;
            check(&b, Allow::ReadOnly)?;
            b.set_recording(recording);
            Ok(BitmapReply::Done)
        }
        BitmapRequest::Merge {
            node,
            target,
            sources,
        } => {
            let (_, t) = lookup(graph, &node, &target)?;
            check(&t, Allow::Nothing)?;
            let mut srcs = Vec::with_capacity(sources.len());
            for s in &sources {
                let (_, b) = lookup(graph, &s.node, &s.name)?;
                check(&b, Allow::ReadOnly)?;
                if b.size != t.size {
                    return Err(err(format!(
                        "Bitmaps are of different sizes (destination size is {}, source size is {}) and can't be merged",
                        t.size, b.size
                    )));
                }
                srcs.push(b);
            }
            for s in srcs {
                t.merge_from(&s);
            }
            Ok(BitmapReply::Done)
        }
        BitmapRequest::Query => {
            let mut out = Vec::new();
            for n in graph.all() {
                for b in n.bitmaps.all() {
                    out.push(BitmapInfo {
                        node: n.name.clone(),
                        name: b.name.clone(),
                        granularity: b.granularity,
                        count: b.count(),
                        recording: b.recording(),
                        persistent: b.persistent,
                        inconsistent: b.inconsistent,
                    });
                }
            }
            Ok(BitmapReply::List(out))
        }
        BitmapRequest::ImageBitmaps { node } => {
            let n = graph
                .get(&node)
                .ok_or_else(|| err(format!("Node '{node}' not found")))?;
            let found = n.bitmaps.with_image(|d| {
                d.map(|d| {
                    d.entries
                        .iter()
                        .map(|e| ImageBitmap {
                            name: e.name.clone(),
                            granularity: 1u32 << e.granularity_bits,
                            auto: e.flags & FLAG_AUTO != 0,
                            in_use: d.in_use_at_open(&e.name),
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
            });
            Ok(BitmapReply::Found(found))
        }
    }
}
