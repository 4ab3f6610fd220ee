//! The desired dirty bitmaps: one record per bitmap (node, name,
//! granularity, persistence, recording) with the memory that holds its
//! content. The broker creates that memory (a sealed memfd) and block-proc
//! maps it and marks guest writes in it before submitting them, so a
//! SIGKILLed block-proc loses nothing: [`replay_on`] attaches the same
//! memory to its successor, after the nodes and before the exports (no
//! guest write can arrive before the bitmaps are back). Every write the
//! guest saw complete is in the count after the restart.
//!
//! Bitmaps stored in a qcow2 image are attached when the node is added
//! ([`load_image_bitmaps`]); block-proc writes the persistent ones back
//! when the node closes.

use std::os::fd::{AsFd, OwnedFd};

use ipc_proto::bitmaps::{BitmapReply, BitmapRequest, BitmapSource};
use ipc_proto::block::{BlockReply, BlockRequest, BlockdevOptions};
use ipc_proto::FlatError;

use super::block_state::{state, walk_post_order};
use super::{lock, unexpected_reply, BlockLink, Machine};

/// One dirty bitmap the user created or an image held.
pub struct BitmapRecord {
    /// Node name.
    pub node: String,
    /// Bitmap name.
    pub name: String,
    /// Granularity in bytes.
    pub granularity: u32,
    /// Stored in the image.
    pub persistent: bool,
    /// Marks guest writes.
    pub recording: bool,
    /// Loaded with the in-use flag set.
    pub inconsistent: bool,
    /// The content (shared with block-proc).
    memory: OwnedFd,
}

impl BitmapRecord {
    fn attach(&self, source: BitmapSource) -> BitmapRequest {
        BitmapRequest::Attach {
            node: self.node.clone(),
            name: self.name.clone(),
            granularity: self.granularity,
            persistent: self.persistent,
            recording: self.recording,
            inconsistent: self.inconsistent,
            source,
        }
    }
}

/// The desired bitmaps, oldest first.
#[derive(Default)]
pub struct Bitmaps {
    list: Vec<BitmapRecord>,
}

impl Bitmaps {
    /// Whether there is none (queries then skip asking block-proc).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Drops the bitmaps of the nodes `names` (deleted nodes).
    pub fn forget_nodes(&mut self, names: &[String]) {
        self.list.retain(|b| !names.contains(&b.node));
    }
}

/// The most bitmap memory the broker creates for one bitmap (the size
/// comes from block-proc): 8 GiB, a 32 TiB disk at 512-byte granularity.
const MAX_BITMAP_BYTES: u64 = 8 << 30;

/// Bitmap memory of `bytes`: a memfd sealed at that size, so block-proc
/// can neither shrink it (its successor's mapping would fault) nor grow it.
fn bitmap_memory(bytes: u64) -> Result<OwnedFd, FlatError> {
    if bytes > MAX_BITMAP_BYTES {
        return Err(FlatError::generic(
            "Too much space will be occupied by the bitmap. Use larger granularity",
        ));
    }
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fail = |e: nix::Error| FlatError::generic(format!("cannot create bitmap memory: {e}"));
    let fd = memfd_create(
        c"bulkhead-dirty-bitmap",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(fail)?;
    let len = i64::try_from(bytes).map_err(|_| FlatError::generic("bitmap too large"))?;
    nix::unistd::ftruncate(&fd, len).map_err(fail)?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(fail)?;
    Ok(fd)
}

fn bitmap_reply(r: BlockReply) -> Result<BitmapReply, FlatError> {
    match r {
        BlockReply::Bitmap(r) => Ok(r),
        other @ (BlockReply::Done
        | BlockReply::NeedFiles { .. }
        | BlockReply::Nodes(_)
        | BlockReply::Stats(_)
        | BlockReply::Trace(_)
        | BlockReply::Snapshot(_)) => Err(unexpected_reply(&other)),
    }
}

fn done(r: BitmapReply) -> Result<(), FlatError> {
    match r {
        BitmapReply::Done => Ok(()),
        other @ (BitmapReply::Sized { .. } | BitmapReply::List(_) | BitmapReply::Found(_)) => {
            Err(unexpected_reply(&other))
        }
    }
}

fn send(
    m: &Machine,
    req: BitmapRequest,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<BitmapReply, FlatError> {
    bitmap_reply(m.block_request_with_fds(BlockRequest::Bitmap(req), fds)?)
}

fn sized(r: BitmapReply) -> Result<(String, u32, u64), FlatError> {
    match r {
        BitmapReply::Sized {
            node,
            granularity,
            bytes,
        } => Ok((node, granularity, bytes)),
        other @ (BitmapReply::Done | BitmapReply::List(_) | BitmapReply::Found(_)) => {
            Err(unexpected_reply(&other))
        }
    }
}

/// What `block-dirty-bitmap-add` asks for.
pub struct AddBitmap {
    /// Node name (a `-drive` id is its node's name).
    pub node: String,
    /// Bitmap name.
    pub name: String,
    /// Granularity; None: the node's default.
    pub granularity: Option<u32>,
    /// Stored in the image.
    pub persistent: bool,
    /// Created not recording.
    pub disabled: bool,
}

/// `block-dirty-bitmap-add`.
pub fn add(m: &Machine, a: &AddBitmap) -> Result<(), FlatError> {
    let shared = state(m);
    let ops = lock(&shared).ops();
    let _ops = lock(&ops);
    let check = BitmapRequest::Check {
        node: a.node.clone(),
        name: a.name.clone(),
        granularity: a.granularity,
        persistent: a.persistent,
    };
    let (node, granularity, bytes) = sized(send(m, check, &[])?)?;
    let rec = BitmapRecord {
        node,
        name: a.name.clone(),
        granularity,
        persistent: a.persistent,
        recording: !a.disabled,
        inconsistent: false,
        memory: bitmap_memory(bytes)?,
    };
    done(send(
        m,
        rec.attach(BitmapSource::Empty),
        &[rec.memory.as_fd()],
    )?)?;
    lock(&shared).bitmaps.list.push(rec);
    Ok(())
}

/// A request on existing bitmaps, applied in block-proc and then to the
/// records (`update`), serialised with graph changes and replays.
pub fn change(
    m: &Machine,
    req: BitmapRequest,
    update: impl FnOnce(&mut Bitmaps),
) -> Result<(), FlatError> {
    let shared = state(m);
    let ops = lock(&shared).ops();
    let _ops = lock(&ops);
    done(send(m, req, &[])?)?;
    update(&mut lock(&shared).bitmaps);
    Ok(())
}

/// `block-dirty-bitmap-remove`.
pub fn remove(m: &Machine, node: &str, name: &str) -> Result<(), FlatError> {
    let node = node.to_string();
    let req = BitmapRequest::Remove {
        node: node.clone(),
        name: name.to_string(),
    };
    change(m, req, |b| {
        b.list.retain(|r| !(r.node == node && r.name == name));
    })
}

/// `block-dirty-bitmap-enable` / `-disable`.
pub fn set_recording(
    m: &Machine,
    node: &str,
    name: &str,
    recording: bool,
) -> Result<(), FlatError> {
    let node = node.to_string();
    let req = BitmapRequest::SetRecording {
        node: node.clone(),
        name: name.to_string(),
        recording,
    };
    change(m, req, |b| {
        for r in b
            .list
            .iter_mut()
            .filter(|r| r.node == node && r.name == name)
        {
            r.recording = recording;
        }
    })
}

/// `block-dirty-bitmap-clear`.
pub fn clear(m: &Machine, node: &str, name: &str) -> Result<(), FlatError> {
    let req = BitmapRequest::Clear {
        node: node.to_string(),
        name: name.to_string(),
    };
    change(m, req, |_| {})
}

/// `block-dirty-bitmap-merge`: sources given as (node, name).
pub fn merge(
    m: &Machine,
    node: &str,
    target: &str,
    sources: Vec<(String, String)>,
) -> Result<(), FlatError> {
    let req = BitmapRequest::Merge {
        node: node.to_string(),
        target: target.to_string(),
        sources: sources
            .into_iter()
            .map(|(n, name)| ipc_proto::bitmaps::BitmapRef { node: n, name })
            .collect(),
    };
    change(m, req, |_| {})
}

/// Every bitmap with its count, from block-proc (waits for a restart).
pub fn query(m: &Machine) -> Result<Vec<ipc_proto::bitmaps::BitmapInfo>, FlatError> {
    if lock(&state(m)).bitmaps.is_empty() {
        return Ok(Vec::new());
    }
    match bitmap_reply(m.block_query(BlockRequest::Bitmap(BitmapRequest::Query))?.1)? {
        BitmapReply::List(l) => Ok(l),
        other @ (BitmapReply::Done | BitmapReply::Sized { .. } | BitmapReply::Found(_)) => {
            Err(unexpected_reply(&other))
        }
    }
}

/// After a node tree was added: attaches the bitmaps its qcow2 images
/// hold (called with the graph-change lock held). A bitmap whose data
/// cannot be read is attached as inconsistent, as QEMU shows it.
pub fn load_image_bitmaps(m: &Machine, options: &BlockdevOptions) {
    let mut qcow2 = Vec::new();
    let _ = walk_post_order::<()>(options, &mut |o| {
        if let (BlockdevOptions::Qcow2(_), Some(n)) = (o, o.node_name()) {
            qcow2.push(n.to_string());
        }
        Ok(())
    });
    for node in qcow2 {
        let found = match send(m, BitmapRequest::ImageBitmaps { node: node.clone() }, &[]) {
            Ok(BitmapReply::Found(f)) => f,
            Ok(other @ (BitmapReply::Done | BitmapReply::Sized { .. } | BitmapReply::List(_))) => {
                tracing::warn!("{}", unexpected_reply(&other).desc);
                continue;
            }
            Err(e) => {
                tracing::warn!("bitmaps of '{node}' not loaded: {}", e.desc);
                continue;
            }
        };
        for f in found {
            if let Err(e) = load_one(m, &node, &f) {
                tracing::warn!("bitmap '{}' of '{node}' not loaded: {}", f.name, e.desc);
            }
        }
    }
}

fn load_one(m: &Machine, node: &str, f: &ipc_proto::bitmaps::ImageBitmap) -> Result<(), FlatError> {
    let check = BitmapRequest::Check {
        node: node.to_string(),
        name: f.name.clone(),
        granularity: Some(f.granularity),
        persistent: false,
    };
    let (node, granularity, bytes) = sized(send(m, check, &[])?)?;
    let mut rec = BitmapRecord {
        node,
        name: f.name.clone(),
        granularity,
        persistent: true,
        recording: f.auto && !f.in_use,
        inconsistent: f.in_use,
        memory: bitmap_memory(bytes)?,
    };
    if let Err(e) = send(m, rec.attach(BitmapSource::Image), &[rec.memory.as_fd()]).and_then(done) {
        tracing::warn!(
            "bitmap '{}' of '{}': {}; marked inconsistent",
            rec.name,
            rec.node,
            e.desc
        );
        rec.inconsistent = true;
        rec.recording = false;
        rec.memory = bitmap_memory(bytes)?;
        done(send(
            m,
            rec.attach(BitmapSource::Image),
            &[rec.memory.as_fd()],
        )?)?;
    }
    lock(&state(m)).bitmaps.list.push(rec);
    Ok(())
}

/// Attaches every desired bitmap to a restarted block-proc reached through
/// `link`, with the memory that kept its content (after the nodes, before
/// the exports).
pub fn replay_on(m: &Machine, link: &BlockLink) -> Result<(), FlatError> {
    let records: Vec<(BlockRequest, OwnedFd)> = {
        let shared = state(m);
        let st = lock(&shared);
        st.bitmaps
            .list
            .iter()
            .map(|r| {
                let fd = r.memory.try_clone().map_err(|e| {
                    FlatError::generic(format!("cannot pass bitmap '{}' again: {e}", r.name))
                })?;
                Ok((BlockRequest::Bitmap(r.attach(BitmapSource::Keep)), fd))
            })
            .collect::<Result<_, FlatError>>()?
    };
    for (req, fd) in records {
        done(bitmap_reply(link.request(req, &[fd.as_fd()])?)?)?;
    }
    Ok(())
}
