//! The `qcow2` driver, on the `imago` crate (built with its `sync` feature,
//! so every imago call is a plain blocking call).
//!
//! The image file comes from the `file` child node (its fd is duplicated
//! for imago). Backing files named in the image header are never opened by
//! path: they must be among the files the broker passed; a missing one is
//! reported as [`Qcow2Error::NeedFiles`] so the broker can open and re-send.
//!
//! Crash-only: block-proc may be SIGKILLed at any time, and a write the
//! guest saw acknowledged must survive that (the page cache keeps the file
//! data, but imago caches L2 tables and refcount blocks in memory). So
//! every modifying request that may change metadata (a write that is not a
//! pure overwrite of allocated clusters, a discard, write zeroes) writes
//! imago's dirty metadata back to the file before it completes (`flush`, no
//! fsync). A pure overwrite may have found its clusters mapped only in
//! imago's cache, by another request that has not written that back yet;
//! so while any metadata-changing request is between its change and its
//! write-back, overwrites write the metadata back too (see
//! `Qcow2Driver::unflushed`).
//! Only a host crash needs the guest's FLUSH (fdatasync).
//! imago can still leave a table entry in the file before the refcount of
//! the cluster it points at; a writable open first repairs such refcounts
//! (`qcow2_repair`), so a restart never allocates a referenced cluster.
//!
//! Over an `O_DIRECT` file imago bounces unaligned requests through
//! buffers of its own; such a request is cut into pieces of at most
//! [`BOUNCE_CHUNK`] bytes, each moved under a permit of the node's
//! [`BouncePermits`], so the node's bounce memory stays within the same
//! budget as the `file` driver's.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, StorageOpenOptions};
use ipc_proto::block::{BlockdevOptions, BlockdevRef, ImageInfo};

use super::bounce::{BouncePermits, BOUNCE_CHUNK};
use super::iobuf;
use super::{Bufs, Driver, Node};

type ImgFile = super::counted_storage::Counted;

/// Errors opening a qcow2 image.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// Files that must be opened by the broker first.
    #[error("missing backing files: {0:?}")]
    NeedFiles(Vec<String>),
    /// The image could not be opened (QEMU-like message).
    #[error("{0}")]
    Open(String),
}

/// Result of qcow2 operations.
pub type Result<T> = std::result::Result<T, Qcow2Error>;

/// A qcow2 node.
pub struct Qcow2Driver {
    img: RwLock<FormatAccess<ImgFile>>,
    child: Arc<Node>,
    /// Virtual size (changed by `block_resize`).
    size: AtomicU64,
    filename: String,
    backing: RwLock<Option<String>>,
    /// Opened writable, with `O_DIRECT`.
    mode: (bool, bool),
    /// Copies of the files the node was opened with (its backing chain),
    /// to reopen the image when a stream rewrites its backing link.
    chain_files: Vec<(String, File)>,
    /// Request alignment (offset and length) and buffer alignment below
    /// which imago bounces (1 without `O_DIRECT`).
    align: (usize, usize),
    /// Bounce budget of unaligned requests (imago allocates the buffers).
    permits: BouncePermits,
    /// Metadata-changing requests that have started and not yet written
    /// imago's metadata back. An overwrite completing while this is not
    /// zero may depend on their unwritten mappings, so it flushes too.
    unflushed: AtomicUsize,
    /// The backing image is the one the header names (not an inline
    /// definition).
    backing_from_header: bool,
}

/// Counts a metadata-changing request in [`Qcow2Driver::unflushed`] from
/// before its change until its write-back is done.
struct Unflushed<'a>(&'a AtomicUsize);

impl<'a> Unflushed<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Unflushed(n)
    }
}

impl Drop for Unflushed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn open_err(e: io::Error) -> Qcow2Error {
    let msg = e.to_string();
    if msg.contains("magic") || msg.contains("not in qcow2") {
        return Qcow2Error::Open("Image is not in qcow2 format".into());
    }
    Qcow2Error::Open(format!("Could not open image: {msg}"))
}

fn storage(file: File, name: &str, writable: bool, direct: bool) -> Result<ImgFile> {
    let opts = StorageOpenOptions::new()
        .filename(name)
        .write(writable)
        .direct(direct);
    imago::file::File::from_open_file(file, opts)
        .map(ImgFile::new)
        .map_err(open_err)
}

/// Resolve a backing file name as QEMU does: relative to the image's
/// directory.
pub fn resolve_backing(image: &str, backing: &str) -> String {
    if backing.starts_with('/') {
        return backing.to_string();
    }
    match Path::new(image).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(backing).display().to_string(),
        _ => backing.to_string(),
    }
}

/// Whether the file starts with the qcow2 magic (read through an aligned
/// buffer, so it works on `O_DIRECT` files too).
fn is_qcow2(file: &File) -> bool {
    let Ok(mut buf) = super::iobuf::AlignedBuf::new(super::iobuf::DIRECT_ALIGN) else {
        return false;
    };
    let b = buf.as_mut_slice();
    std::os::unix::fs::FileExt::read_at(file, b, 0).is_ok_and(|n| n >= 4) && b[..4] == *b"QFI\xfb"
}

/// Open one image of a backing chain (read-only), recursively.
fn open_backing(
    name: &str,
    format: Option<&str>,
    files: &mut HashMap<String, File>,
) -> Result<FormatAccess<ImgFile>> {
    let Some(file) = files.remove(name) else {
        return Err(Qcow2Error::NeedFiles(vec![name.to_string()]));
    };
    let qcow = match format {
        Some("qcow2") => true,
        Some(_) => false,
        None => is_qcow2(&file),
    };
    if qcow {
        super::qcow2_header::check_file(&file).map_err(Qcow2Error::Open)?;
    }
    let st = storage(file, name, false, false)?;
    if !qcow {
        let raw = Raw::open_image(st, false).map_err(open_err)?;
        return Ok(FormatAccess::new(raw));
    }
    let mut q: Qcow2<ImgFile> = Qcow2::open_image(st, false).map_err(open_err)?;
    attach_backing(&mut q, name, files)?;
    Ok(FormatAccess::new(q))
}

/// Where a qcow2 node's backing image comes from.
pub enum BackingSource<'a> {
    /// Named by the image header (the broker passes the chain it read).
    Header,
    /// `"backing": null`: none.
    None,
    /// An inline definition (`"backing": {...}`), opened read-only from
    /// the files the broker passed for it.
    Inline(&'a BlockdevOptions),
}

/// The filename of an inline backing definition's image, and its format.
fn inline_image(def: &BlockdevOptions) -> Result<(&str, bool)> {
    let unsupported = || {
        Qcow2Error::Open(
            "Backing nodes must be defined inline as file, raw or qcow2 over a file node".into(),
        )
    };
    fn file_of(r: &Option<BlockdevRef>) -> Option<&str> {
        match r {
            Some(BlockdevRef::Definition(d)) => match &**d {
                BlockdevOptions::File(f) => Some(f.filename.as_str()),
                BlockdevOptions::Raw(_)
                | BlockdevOptions::Qcow2(_)
                | BlockdevOptions::NullCo(_)
                | BlockdevOptions::Quorum(_) => None,
            },
            Some(BlockdevRef::Reference(_)) | None => None,
        }
    }
    match def {
        BlockdevOptions::File(f) => Ok((&f.filename, false)),
        BlockdevOptions::Raw(r) if r.offset.is_none() && r.size.is_none() => {
            Ok((file_of(&r.file).ok_or_else(unsupported)?, false))
        }
        BlockdevOptions::Qcow2(q) => Ok((file_of(&q.file).ok_or_else(unsupported)?, true)),
        BlockdevOptions::Raw(_) | BlockdevOptions::NullCo(_) | BlockdevOptions::Quorum(_) => {
            Err(unsupported())
        }
    }
}

/// Opens an inline backing definition (read-only), with its own backing
/// as it says.
fn open_inline(
    def: &BlockdevOptions,
    files: &mut HashMap<String, File>,
) -> Result<FormatAccess<ImgFile>> {
    let (name, qcow) = inline_image(def)?;
    let source = match def {
        BlockdevOptions::Qcow2(q) => match &q.backing {
            None => BackingSource::Header,
            Some(None) => BackingSource::None,
            Some(Some(BlockdevRef::Definition(d))) => BackingSource::Inline(d),
            Some(Some(BlockdevRef::Reference(_))) => {
                return Err(Qcow2Error::Open(
                    "Backing nodes given by reference are not supported; define them inline".into(),
                ))
            }
        },
        BlockdevOptions::File(_)
        | BlockdevOptions::Raw(_)
        | BlockdevOptions::NullCo(_)
        | BlockdevOptions::Quorum(_) => BackingSource::None,
    };
    if !qcow {
        return open_backing(name, Some("raw"), files);
    }
    let Some(file) = files.remove(name) else {
        return Err(Qcow2Error::NeedFiles(vec![name.to_string()]));
    };
    super::qcow2_header::check_file(&file).map_err(Qcow2Error::Open)?;
    let st = storage(file, name, false, false)?;
    let mut q: Qcow2<ImgFile> = Qcow2::open_image(st, false).map_err(open_err)?;
    set_backing(&mut q, name, source, files)?;
    Ok(FormatAccess::new(q))
}

/// Gives `q` (the image `name`) its backing image from `source`; returns
/// the backing file's name.
fn set_backing(
    q: &mut Qcow2<ImgFile>,
    name: &str,
    source: BackingSource<'_>,
    files: &mut HashMap<String, File>,
) -> Result<Option<String>> {
    match source {
        BackingSource::Header => {
            let b = q.implicit_backing_file().cloned();
            attach_backing(q, name, files)?;
            Ok(b)
        }
        BackingSource::None => {
            q.set_data_file(None);
            q.set_backing(None);
            Ok(None)
        }
        BackingSource::Inline(def) => {
            if q.requires_external_data_file() {
                return Err(Qcow2Error::Open(
                    "External data files are not supported".into(),
                ));
            }
            q.set_data_file(None);
            let b = inline_image(def)?.0.to_owned();
            q.set_backing(Some(open_inline(def, files)?));
            Ok(Some(b))
        }
    }
}

fn attach_backing(
    q: &mut Qcow2<ImgFile>,
    name: &str,
    files: &mut HashMap<String, File>,
) -> Result<()> {
    if q.requires_external_data_file() {
        return Err(Qcow2Error::Open(
            "External data files are not supported".into(),
        ));
    }
    q.set_data_file(None);
    let backing = match q.implicit_backing_file() {
        Some(b) => {
            let path = resolve_backing(name, b);
            let fmt = q.implicit_backing_format().cloned();
            Some(open_backing(&path, fmt.as_deref(), files)?)
        }
        None => None,
    };
    q.set_backing(backing);
    Ok(())
}

/// Whether writing `[offset, offset + len)` only overwrites clusters that
/// are already allocated and writable in the top image (no metadata
/// change).
fn overwrites_in_place(img: &FormatAccess<ImgFile>, offset: u64, len: u64) -> bool {
    let (mut off, end) = (offset, offset.saturating_add(len));
    while off < end {
        match img.get_mapping(off, end - off) {
            Ok((imago::Mapping::Raw { writable: true, .. }, n)) if n > 0 => off += n,
            _ => return false,
        }
    }
    true
}

impl Qcow2Driver {
    /// Open the image held by the `file` node `child`, its backing image
    /// from `backing` (files from `files`).
    pub fn open(
        child: Arc<Node>,
        file: File,
        filename: &str,
        writable: bool,
        direct: bool,
        backing: BackingSource<'_>,
        files: &mut HashMap<String, File>,
    ) -> Result<Self> {
        if !is_qcow2(&file) {
            return Err(Qcow2Error::Open("Image is not in qcow2 format".into()));
        }
        super::qcow2_header::check_file(&file).map_err(Qcow2Error::Open)?;
        if writable {
            // A killed block-proc may have left references to clusters
            // whose refcount imago had not written yet (see qcow2_repair).
            let n = super::qcow2_repair::repair_refcounts(&file)
                .map_err(|e| Qcow2Error::Open(format!("Could not open image: {e}")))?;
            if n > 0 {
                tracing::warn!("{filename}: repaired {n} missing qcow2 refcounts");
            }
        }
        let chain_files = files
            .iter()
            .filter_map(|(n, f)| Some((n.clone(), f.try_clone().ok()?)))
            .collect();
        let st = storage(file, filename, writable, direct)?.counted_at(child.clone());
        let mut q: Qcow2<ImgFile> = Qcow2::open_image(st, writable).map_err(open_err)?;
        let backing_from_header = !matches!(backing, BackingSource::Inline(_));
        let backing = set_backing(&mut q, filename, backing, files)?;
        let img = FormatAccess::new(q);
        let size = img.size();
        let align = (img.req_align(), img.mem_align());
        Ok(Qcow2Driver {
            img: RwLock::new(img),
            child,
            size: AtomicU64::new(size),
            filename: filename.to_string(),
            backing: RwLock::new(backing),
            mode: (writable, direct),
            chain_files,
            unflushed: AtomicUsize::new(0),
            backing_from_header,
            align,
            permits: BouncePermits::default(),
        })
    }

    /// `block_resize` through imago: growing maps the new range as zeroes
    /// when a backing file could show through (QEMU zero-fills it too),
    /// shrinking discards what lies past the new end. Under the image's
    /// write lock, so no request runs meanwhile; the new size is in the
    /// header, so a restarted block-proc reads it back.
    fn resize_image(&self, new_size: u64) -> std::result::Result<(), String> {
        if !self.mode.0 {
            return Err(format!(
                "Cannot resize qcow2 image '{}': it is read-only",
                self.filename
            ));
        }
        if self.snapshots() > 0 {
            // QEMU 10 resizes them (each snapshot keeps its own size);
            // imago does not know internal snapshots, whose clusters a
            // resize could free or rewrite.
            return Err(format!(
                "Cannot resize qcow2 image '{}': it has internal snapshots, which \
                 bulkhead's qcow2 driver does not resize",
                self.filename
            ));
        }
        let failed = |e: io::Error| {
            format!(
                "Failed to resize qcow2 image '{}': {}",
                self.filename,
                super::graph::strerror(&e)
            )
        };
        let mut img = self.img.write().map_err(|_| failed(Self::lock_err()))?;
        let has_backing = self.backing.read().map_or(true, |b| b.is_some());
        let mode = if has_backing {
            imago::format::PreallocateMode::Zero
        } else {
            imago::format::PreallocateMode::None
        };
        img.resize(new_size, mode).map_err(failed)?;
        img.flush().map_err(failed)?;
        img.sync().map_err(failed)?;
        self.size.store(img.size(), Ordering::Release);
        Ok(())
    }

    /// Internal snapshots in the image (`nb_snapshots` of its header).
    fn snapshots(&self) -> u32 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        match self.child.driver.as_file() {
            Some(f) if f.read_exact_at(&mut b, 60).is_ok() => u32::from_be_bytes(b),
            _ => 0,
        }
    }

    fn lock_err() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }

    /// Whether imago would bounce this request (`O_DIRECT` and unaligned).
    fn bounces(&self, bufs: Bufs<'_, '_>, offset: u64) -> bool {
        let (req, mem) = self.align;
        let len = iobuf::total_len(bufs);
        !(offset.is_multiple_of(req as u64)
            && len.is_multiple_of(req.max(mem))
            && iobuf::aligned(bufs, mem))
    }

    /// Run `op` on the request, or, when imago would bounce it, on pieces
    /// of at most [`BOUNCE_CHUNK`] bytes each under a bounce permit, so
    /// the bounce memory of this node stays within its budget.
    fn in_pieces(
        &self,
        bufs: Bufs<'_, '_>,
        offset: u64,
        op: impl Fn(Bufs<'_, '_>, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.bounces(bufs, offset) {
            return op(bufs, offset);
        }
        let mut off = offset;
        for piece in iobuf::split(bufs, BOUNCE_CHUNK) {
            let _permit = self.permits.acquire();
            op(&piece, off)?;
            off += iobuf::total_len(&piece) as u64;
        }
        Ok(())
    }

    fn read_piece(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let mut v = IoVectorMut::with_capacity(bufs.len());
        for b in bufs {
            // SAFETY: the slice covers guest (or test) memory that stays mapped
            // for this call; the guest does not access a buffer it handed to
            // the device until the request completes.
            let s = unsafe { std::slice::from_raw_parts_mut(b.ptr_guard_mut().as_ptr(), b.len()) };
            v.push_ioslice(IoSliceMut::new(s));
        }
        let img = self.img.read().map_err(|_| Self::lock_err())?;
        img.readv(v, offset)
    }

    fn write_piece(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let mut v = IoVector::with_capacity(bufs.len());
        for b in bufs {
            // SAFETY: as in read_piece; the device only reads these bytes.
            let s = unsafe { std::slice::from_raw_parts(b.ptr_guard().as_ptr(), b.len()) };
            v.push_ioslice(IoSlice::new(s));
        }
        let img = self.img.read().map_err(|_| Self::lock_err())?;
        if overwrites_in_place(&img, offset, v.len()) {
            img.writev(v, offset)?;
            // This request changed no metadata, but the mapping it used
            // may be another request's, not yet written back: then write
            // it back before completing (SeqCst pairs with the increment
            // made before that request changed the mapping).
            if self.unflushed.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            return img.flush();
        }
        let _pending = Unflushed::new(&self.unflushed);
        img.writev(v, offset)?;
        img.flush()
    }
}

impl Driver for Qcow2Driver {
    fn drv(&self) -> &'static str {
        "qcow2"
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn resize(&self, new_size: u64) -> std::result::Result<(), String> {
        self.resize_image(new_size)
    }
    fn read(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        self.in_pieces(bufs, offset, |b, o| self.read_piece(b, o))
    }
    fn write(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        self.in_pieces(bufs, offset, |b, o| self.write_piece(b, o))
    }
    fn flush(&self) -> io::Result<()> {
        let img = self.img.read().map_err(|_| Self::lock_err())?;
        img.flush()?;
        img.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut img = self.img.write().map_err(|_| Self::lock_err())?;
        match img.discard_to_any(offset, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            r => r,
        }?;
        img.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            let mut img = self.img.write().map_err(|_| Self::lock_err())?;
            img.discard_to_zero(offset, len)?;
            return img.flush();
        }
        let img = self.img.read().map_err(|_| Self::lock_err())?;
        let _pending = Unflushed::new(&self.unflushed);
        img.write_zeroes(offset, len)?;
        img.flush()
    }
    fn image_info(&self) -> ImageInfo {
        let c = self.child.driver.image_info();
        let header = self
            .child
            .driver
            .as_file()
            .and_then(super::qcow2_info::read);
        ImageInfo {
            filename: self.filename.clone(),
            format: "qcow2".into(),
            virtual_size: self.size(),
            actual_size: c.actual_size,
            cluster_size: header.as_ref().map(|h| h.0),
            backing_filename: self.backing.read().ok().and_then(|b| b.clone()),
            backing_image: None,
            format_specific: header.map(|h| ipc_proto::block::FormatSpecific::Qcow2(h.1)),
        }
    }
    fn children(&self) -> Vec<String> {
        vec![self.child.name.clone()]
    }
    fn as_qcow2(&self) -> Option<&Qcow2Driver> {
        Some(self)
    }
}

/// Where the data of a range of a qcow2 node comes from, for a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Allocated in the top image (data, zeroes or compressed).
    Top,
    /// From backing image number `n` (1: the top's backing).
    Backing(usize),
    /// Nowhere: reads as zeroes.
    Unallocated,
}

impl Qcow2Driver {
    /// The backing chain's file names, the top's backing first, as the
    /// headers name them (resolved against each image's directory).
    pub fn chain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = self.filename.clone();
        let mut next = self.backing.read().ok().and_then(|b| b.clone());
        while let Some(b) = next.take() {
            let path = resolve_backing(&cur, &b);
            if out.contains(&path) {
                break;
            }
            out.push(path.clone());
            next = self
                .chain_files
                .iter()
                .find(|(n, _)| *n == path)
                .and_then(|(_, f)| super::qcow2_backing::backing_name(f).ok().flatten());
            cur = path;
        }
        out
    }

    /// Whether chain file `path` holds a qcow2 image.
    pub fn chain_is_qcow2(&self, path: &str) -> bool {
        self.chain_files
            .iter()
            .find(|(n, _)| n == path)
            .is_some_and(|(_, f)| is_qcow2(f))
    }

    /// Where `[offset, offset + len)` starts being mapped, and for how many
    /// bytes that holds.
    pub fn allocation(&self, offset: u64, len: u64) -> io::Result<(Allocation, u64)> {
        let img = self.img.read().map_err(|_| Self::lock_err())?;
        let mut layer: &FormatAccess<ImgFile> = &img;
        let (mut off, mut max, mut depth) = (offset, len, 0usize);
        loop {
            let (m, n) = layer.get_shallow_mapping(off, max)?;
            let n = n.min(max);
            match m {
                imago::ShallowMapping::Raw { .. }
                | imago::ShallowMapping::Zero { explicit: true, .. }
                | imago::ShallowMapping::Special { .. } => {
                    let a = if depth == 0 {
                        Allocation::Top
                    } else {
                        Allocation::Backing(depth)
                    };
                    return Ok((a, n.max(1)));
                }
                imago::ShallowMapping::Indirect {
                    layer: l,
                    offset: o,
                    ..
                } => {
                    layer = l;
                    off = o;
                    max = n;
                    depth += 1;
                }
                imago::ShallowMapping::Zero {
                    explicit: false, ..
                }
                | imago::ShallowMapping::Eof { .. } => {
                    return Ok((Allocation::Unallocated, if n == 0 { max } else { n }));
                }
                // imago's enum is non-exhaustive: a mapping this version
                // does not know is data of this layer (copy it).
                _ => {
                    let a = if depth == 0 {
                        Allocation::Top
                    } else {
                        Allocation::Backing(depth)
                    };
                    return Ok((a, n.max(1)));
                }
            }
        }
    }

    /// Rewrites the image's backing link to `backing` (the name written
    /// into the header, its resolved path among the chain's files, its
    /// format), or none, and reopens the image on it. The caller has
    /// copied into the top everything it would lose.
    pub fn set_backing_file(&self, backing: Option<(&str, &str, &str)>) -> io::Result<()> {
        let mut img = self.img.write().map_err(|_| Self::lock_err())?;
        img.flush()?;
        img.sync()?;
        let file = self
            .child
            .driver
            .as_file()
            .ok_or_else(|| io::Error::other("the image is not on a file node"))?;
        super::qcow2_backing::write_backing(file, backing.map(|(n, _, f)| (n, f)))?;
        let (writable, direct) = self.mode;
        let st = storage(file.try_clone()?, &self.filename, writable, direct)
            .map_err(|e| io::Error::other(e.to_string()))?
            .counted_at(self.child.clone());
        let mut q: Qcow2<ImgFile> = Qcow2::open_image(st, writable)?;
        let mut files: HashMap<String, File> = HashMap::new();
        for (n, f) in &self.chain_files {
            files.insert(n.clone(), f.try_clone()?);
        }
        let source = match backing {
            None => BackingSource::None,
            Some(_) => BackingSource::Header,
        };
        if let Some((name, path, _)) = backing {
            // The header's name may be written differently from the path
            // the broker opened: make the resolved name find that file.
            let resolved = resolve_backing(&self.filename, name);
            if resolved != path {
                if let Some(f) = files.remove(path) {
                    files.insert(resolved, f);
                }
            }
        }
        let name = set_backing(&mut q, &self.filename, source, &mut files)
            .map_err(|e| io::Error::other(e.to_string()))?;
        *img = FormatAccess::new(q);
        if let Ok(mut b) = self.backing.write() {
            *b = name;
        }
        Ok(())
    }
}

impl Qcow2Driver {
    /// Whether the node was opened writable.
    pub fn writable(&self) -> bool {
        self.mode.0
    }

    /// The image file (for reading metadata imago does not know, such
    /// as the snapshot table).
    pub fn image_file(&self) -> Option<&File> {
        self.child.driver.as_file()
    }

    /// Runs `f` on the image file with imago's metadata written back and
    /// no request inside imago (the caller has drained the node), then
    /// opens the image afresh, so no cache of imago's keeps metadata `f`
    /// changed (imago cannot reload a header whose snapshot fields
    /// changed). Keeps the backing the node had: none, or the header's;
    /// a node given an inline backing definition is refused.
    pub fn rewrite_metadata<T, E: From<io::Error>>(
        &self,
        f: impl FnOnce(&File) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut img = self.img.write().map_err(|_| Self::lock_err())?;
        let backing = self.backing.read().map_err(|_| Self::lock_err())?.clone();
        if backing.is_some() && !self.backing_from_header {
            return Err(io::Error::other(
                "the node's backing was defined inline (only a header-named backing is kept \
                 across internal snapshot changes)",
            )
            .into());
        }
        // Written back, not synced: `f` syncs before anything depends on
        // the order of these writes and its own.
        img.flush()?;
        let file = self
            .child
            .driver
            .as_file()
            .ok_or_else(|| io::Error::other("the image is not on a file node"))?;
        // imago's writable open clears the autoclear bits (the bitmaps
        // extension's among them): keep them as they were.
        let autoclear = crate::block::qcow2_repair::read_span(file, 88, 8)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let out = f(file);
        match self.reopen(file, backing.is_some()) {
            Ok(q) => *img = q,
            Err(e) => {
                // The old instance's caches may describe metadata `f`
                // replaced: serving I/O from them could corrupt the image.
                // End as a SIGKILL would (which leaves the image sound,
                // see `crate::snapshots`); the broker restarts block-proc
                // and it opens the image afresh.
                tracing::error!(
                    "reopening {} after a metadata change failed: {e}",
                    self.filename
                );
                std::process::abort();
            }
        }
        if self.mode.0 && super::qcow2_header::is_v3(file) {
            crate::block::qcow2_repair::write_span(file, 88, &autoclear)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        out
    }
}

impl Qcow2Driver {
    /// A fresh imago instance on `file`, with the header's backing or
    /// none.
    fn reopen(&self, file: &File, with_backing: bool) -> io::Result<FormatAccess<ImgFile>> {
        let (writable, direct) = self.mode;
        let st = storage(file.try_clone()?, &self.filename, writable, direct)
            .map_err(|e| io::Error::other(e.to_string()))?
            .counted_at(self.child.clone());
        let mut q: Qcow2<ImgFile> = Qcow2::open_image(st, writable)?;
        let mut files: HashMap<String, File> = HashMap::new();
        for (n, f) in &self.chain_files {
            files.insert(n.clone(), f.try_clone()?);
        }
        let source = if with_backing {
            BackingSource::Header
        } else {
            BackingSource::None
        };
        set_backing(&mut q, &self.filename, source, &mut files)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(FormatAccess::new(q))
    }
}

impl Drop for Qcow2Driver {
    fn drop(&mut self) {
        if let Ok(img) = self.img.read() {
            if let Err(e) = img.flush() {
                tracing::warn!("flushing qcow2 image {} failed: {e}", self.filename);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_resolve_relative_to_image_directory() {
        assert_eq!(
            resolve_backing("/img/top.qcow2", "base.raw"),
            "/img/base.raw"
        );
        assert_eq!(resolve_backing("/img/top.qcow2", "/abs/b"), "/abs/b");
        assert_eq!(resolve_backing("top.qcow2", "b"), "b");
    }
}
