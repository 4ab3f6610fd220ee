//! Dirty bitmaps on the broker ↔ block-proc channel (carried inside
//! [`crate::block::BlockRequest::Bitmap`] and
//! [`crate::block::BlockReply::Bitmap`]).
//!
//! The broker owns each bitmap's memory: a memfd it creates, sized as
//! block-proc answered to [`BitmapRequest::Check`], and passes as fd 0 of
//! [`BitmapRequest::Attach`]. block-proc maps it shared and sets bits in it
//! before a guest write is submitted, so the content outlives a killed
//! block-proc: the broker attaches the same memfd to the restarted worker
//! ([`BitmapSource::Keep`]) and no acknowledged write is forgotten.
//!
//! Memory layout: little-endian `u64` words, bit `i` (granule `i`, the
//! bytes `i * granularity ..`) is bit `i % 64` of word `i / 64`; byte for
//! byte that is also the qcow2 bitmaps extension's on-disk serialisation.

use serde::{Deserialize, Serialize};

/// A bitmap named by its node and name (`block-dirty-bitmap-merge`'s
/// `{node, name}` sources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapRef {
    /// Node name.
    pub node: String,
    /// Bitmap name.
    pub name: String,
}

/// Where the content of an attached bitmap comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BitmapSource {
    /// A new bitmap: the memfd is fresh (all zero).
    Empty,
    /// A replay after a restart: the memfd holds the content already.
    Keep,
    /// Read the bitmap of this name from the node's qcow2 bitmaps
    /// extension (as found when the node was opened) into the memfd.
    Image,
}

/// Dirty-bitmap requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BitmapRequest {
    /// The checks of `block-dirty-bitmap-add` block-proc can make (node,
    /// name taken, persistence possible); answers [`BitmapReply::Sized`]
    /// with the memfd size to create.
    Check {
        /// Node (or device) name as given.
        node: String,
        /// Bitmap name.
        name: String,
        /// Granularity in bytes; `None`: the node's default.
        granularity: Option<u32>,
        /// `persistent` as given.
        persistent: bool,
    },
    /// Track writes of `node` in the memfd passed as fd 0.
    Attach {
        /// Node name (resolved: what [`BitmapReply::Sized`] named).
        node: String,
        /// Bitmap name.
        name: String,
        /// Granularity in bytes (a power of two, at least 512).
        granularity: u32,
        /// Stored in the image's bitmaps extension when the node closes.
        persistent: bool,
        /// Marks guest writes (`disabled` is `!recording`).
        recording: bool,
        /// Loaded with the in-use flag set: its content is lost.
        inconsistent: bool,
        /// Where the content comes from.
        source: BitmapSource,
    },
    /// `block-dirty-bitmap-remove` (a persistent one leaves the image
    /// when the node is next stored).
    Remove {
        /// Node name.
        node: String,
        /// Bitmap name.
        name: String,
    },
    /// `block-dirty-bitmap-clear`.
    Clear {
        /// Node name.
        node: String,
        /// Bitmap name.
        name: String,
    },
    /// `block-dirty-bitmap-enable` / `-disable`.
    SetRecording {
        /// Node name.
        node: String,
        /// Bitmap name.
        name: String,
        /// New state.
        recording: bool,
    },
    /// `block-dirty-bitmap-merge`: `target |= every source`.
    Merge {
        /// Node of the target.
        node: String,
        /// Target bitmap name.
        target: String,
        /// Sources, resolved to node and name.
        sources: Vec<BitmapRef>,
    },
    /// Every attached bitmap with its dirty count.
    Query,
    /// The bitmaps the node's qcow2 image held when it was opened.
    ImageBitmaps {
        /// Node name.
        node: String,
    },
}

/// One attached bitmap as queries show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapInfo {
    /// Node name.
    pub node: String,
    /// Bitmap name.
    pub name: String,
    /// Granularity in bytes.
    pub granularity: u32,
    /// Dirty bytes (dirty granules times the granularity, as QEMU counts).
    pub count: u64,
    /// Marks guest writes.
    pub recording: bool,
    /// Stored in the image.
    pub persistent: bool,
    /// Loaded with the in-use flag set.
    pub inconsistent: bool,
}

/// One bitmap found in a qcow2 image's bitmaps extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBitmap {
    /// Bitmap name.
    pub name: String,
    /// Granularity in bytes.
    pub granularity: u32,
    /// The `auto` flag: recording when loaded.
    pub auto: bool,
    /// The `in_use` flag was set: the image was not closed cleanly.
    pub in_use: bool,
}

/// Replies to [`BitmapRequest`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BitmapReply {
    /// Done, nothing to return.
    Done,
    /// Answer to `Check`: the resolved node, granularity and memfd size.
    Sized {
        /// Node name (a device name resolved to its node).
        node: String,
        /// Granularity in bytes (the default when none was given).
        granularity: u32,
        /// Bytes of bitmap memory to create.
        bytes: u64,
    },
    /// Answer to `Query`.
    List(Vec<BitmapInfo>),
    /// Answer to `ImageBitmaps`.
    Found(Vec<ImageBitmap>),
}
