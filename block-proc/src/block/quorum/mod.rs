//! The `quorum` driver: one node over N children holding the same data.
//! Reads in `quorum` mode read every child and vote on the content
//! ([`vote`]); children that fail or are outvoted are reported with
//! `QUORUM_REPORT_BAD`, a read no content wins fails with
//! `QUORUM_FAILURE` and EIO. `fifo` reads the first child that succeeds.
//! Writes, zero writes and flushes go to every child and succeed when at
//! least `vote-threshold` children succeed. `x-blockdev-change` adds and
//! removes children at run time ([`QuorumDriver::add_child`],
//! [`QuorumDriver::remove_child`]); a request in flight holds the child
//! list, so a change waits for it (the change's drain).
//!
//! - [`config`]: the options, checked with QEMU's messages.
//! - [`vote`]: the read vote (pure, unit tested).

pub mod change;
pub mod config;
pub mod error;
pub mod vote;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};

use ipc_proto::block::{BlockEvent, ImageInfo, QuorumOptions, QuorumReadPattern, QuorumReportBad};

use super::graph::strerror;
use super::{iobuf, Bufs, Driver, Node};
use crate::vhost::export::ExportEvent;
pub use config::Config;
pub use error::QuorumError;
use vote::{sectors, vote, vote_error, Outcome};

/// One child: its name under the quorum (`children.N`) and its node.
#[derive(Clone)]
pub struct Child {
    /// `children.N`.
    pub name: String,
    /// The child node.
    pub node: Arc<Node>,
}

/// The children and the index the next added child is named after
/// (QEMU's `next_child_index`).
struct Layout {
    children: Vec<Child>,
    next_index: u32,
}

/// A quorum node.
pub struct QuorumDriver {
    node_name: String,
    cfg: Config,
    /// The options the user gave besides the children, as QEMU lists them
    /// in the node's `json:` file name (sorted, QEMU's spacing).
    shown: Vec<(&'static str, String)>,
    size: u64,
    layout: RwLock<Layout>,
    events: Mutex<Option<Sender<ExportEvent>>>,
}

/// The operation a `QUORUM_REPORT_BAD` is about (QEMU `QuorumOpType`).
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Flush,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
        }
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl QuorumDriver {
    /// A quorum named `node_name` over `children` (already checked by
    /// [`Config::check`] against `o` and of one size, `size`); events go
    /// to `events`.
    pub fn new(
        node_name: String,
        o: &QuorumOptions,
        cfg: Config,
        children: Vec<Arc<Node>>,
        size: u64,
        events: Option<Sender<ExportEvent>>,
    ) -> Self {
        let next_index = u32::try_from(children.len()).unwrap_or(u32::MAX);
        let children = children
            .into_iter()
            .enumerate()
            .map(|(i, node)| Child {
                name: format!("children.{i}"),
                node,
            })
            .collect();
        let mut shown = Vec::new();
        let flag = |b: bool| if b { "true" } else { "false" }.to_string();
        if let Some(b) = o.blkverify {
            shown.push(("blkverify", flag(b)));
        }
        if let Some(p) = o.read_pattern {
            let p = match p {
                QuorumReadPattern::Quorum => "quorum",
                QuorumReadPattern::Fifo => "fifo",
            };
            shown.push(("read-pattern", format!("\"{p}\"")));
        }
        if let Some(b) = o.rewrite_corrupted {
            shown.push(("rewrite-corrupted", flag(b)));
        }
        shown.push(("vote-threshold", cfg.threshold.to_string()));
        QuorumDriver {
            node_name,
            cfg,
            shown,
            size,
            layout: RwLock::new(Layout {
                children,
                next_index,
            }),
            events: Mutex::new(events),
        }
    }

    fn children_now(&self) -> Vec<Child> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .children
            .clone()
    }

    fn emit(&self, ev: BlockEvent) {
        let tx = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(ExportEvent::Block(ev));
        }
    }

    fn report_bad(&self, op: Op, offset: u64, len: u64, child: &str, err: Option<&io::Error>) {
        let (sector, sectors_count) = sectors(offset, len);
        tracing::warn!(
            "quorum '{}': child '{child}' bad on {} at sector {sector}+{sectors_count}{}",
            self.node_name,
            op.as_str(),
            err.map(|e| format!(": {e}")).unwrap_or_default()
        );
        self.emit(BlockEvent::QuorumReportBad(QuorumReportBad {
            op: op.as_str().into(),
            error: err.map(strerror),
            node_name: child.to_string(),
            sector,
            sectors_count,
        }));
    }

    fn report_failure(&self, offset: u64, len: u64) {
        let (sector, sectors_count) = sectors(offset, len);
        tracing::warn!(
            "quorum '{}': no quorum at sector {sector}+{sectors_count}",
            self.node_name
        );
        self.emit(BlockEvent::QuorumFailure {
            reference: self.node_name.clone(),
            sector,
            sectors_count,
        });
    }

    fn read_quorum(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let layout = self.layout.read().unwrap_or_else(|p| p.into_inner());
        let len = iobuf::total_len(bufs);
        // Aligned buffers: an O_DIRECT child reads into them without a
        // bounce copy.
        let mut datas: Vec<Option<iobuf::AlignedBuf>> = Vec::with_capacity(layout.children.len());
        let mut errors = Vec::new();
        for c in &layout.children {
            let mut buf = iobuf::AlignedBuf::new(len)?;
            let r = c.node.read(
                &[iobuf::slice_of(&mut buf.as_mut_slice()[..len])],
                offset,
                len as u64,
            );
            match r {
                Ok(()) => datas.push(Some(buf)),
                Err(e) => {
                    self.report_bad(Op::Read, offset, len as u64, &c.node.name, Some(&e));
                    errors.push(errno(&e));
                    datas.push(None);
                }
            }
        }
        let reads: Vec<Option<&[u8]>> = datas
            .iter()
            .map(|d| d.as_ref().map(|b| &b.as_slice()[..len]))
            .collect();
        if reads.iter().filter(|r| r.is_some()).count() < self.cfg.threshold {
            self.report_failure(offset, len as u64);
            return Err(io::Error::from_raw_os_error(vote_error(&errors)));
        }
        if self.cfg.blkverify {
            if let [Some(a), Some(b)] = reads[..] {
                if let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) {
                    // QEMU exits here; a worker answers the request with
                    // an error instead and keeps serving.
                    tracing::error!(
                        "quorum: offset={offset} bytes={len} contents mismatch at offset {}",
                        offset + at as u64
                    );
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
        match vote(&reads, self.cfg.threshold) {
            Outcome::NoQuorum => {
                self.report_failure(offset, len as u64);
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            Outcome::Winner { winner, losers } => {
                let good = reads[winner].unwrap_or_default();
                iobuf::scatter(bufs, good);
                for &l in &losers {
                    let name = &layout.children[l].node.name;
                    self.report_bad(Op::Read, offset, len as u64, name, None);
                }
                if self.cfg.rewrite_corrupted && !losers.is_empty() {
                    let mut copy = iobuf::AlignedBuf::new(len)?;
                    copy.as_mut_slice()[..len].copy_from_slice(good);
                    for &l in &losers {
                        let child = &layout.children[l].node;
                        // A correction attempt: its failure changes
                        // nothing for this read (as in QEMU).
                        let data = [iobuf::slice_of(&mut copy.as_mut_slice()[..len])];
                        if let Err(e) = child.write(&data, offset, len as u64) {
                            tracing::warn!("quorum: rewriting '{}': {e}", child.name);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn read_fifo(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let len = iobuf::total_len(bufs) as u64;
        let mut last = io::Error::from_raw_os_error(libc::EIO);
        for c in self.children_now() {
            match c.node.read(bufs, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.report_bad(Op::Read, offset, len, &c.node.name, Some(&e));
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Runs a data-modifying request on every child; it succeeds if at
    /// least the threshold did.
    fn write_all(
        &self,
        offset: u64,
        len: u64,
        f: &dyn Fn(&Node) -> io::Result<()>,
    ) -> io::Result<()> {
        let layout = self.layout.read().unwrap_or_else(|p| p.into_inner());
        let mut errors = Vec::new();
        for c in &layout.children {
            if let Err(e) = f(&c.node) {
                self.report_bad(Op::Write, offset, len, &c.node.name, Some(&e));
                errors.push(errno(&e));
            }
        }
        if layout.children.len() - errors.len() < self.cfg.threshold {
            self.report_failure(offset, len);
            return Err(io::Error::from_raw_os_error(vote_error(&errors)));
        }
        Ok(())
    }

    /// The `children.N` names, in child order.
    pub fn child_names(&self) -> Vec<String> {
        self.children_now().into_iter().map(|c| c.name).collect()
    }

    /// The child named `name`, if any.
    pub fn child(&self, name: &str) -> Option<Child> {
        self.children_now().into_iter().find(|c| c.name == name)
    }

    /// `blkverify=on` (no child can be added).
    pub fn is_blkverify(&self) -> bool {
        self.cfg.blkverify
    }

    /// The name the next added child gets.
    pub fn next_child_name(&self) -> String {
        let l = self.layout.read().unwrap_or_else(|p| p.into_inner());
        format!("children.{}", l.next_index)
    }

    /// `x-blockdev-change` removing child `name` (which exists), once in
    /// flight requests are done; the caller releases the returned node.
    pub fn remove_child(&self, name: &str) -> Result<Arc<Node>, QuorumError> {
        let mut l = self.layout.write().unwrap_or_else(|p| p.into_inner());
        let Some(i) = l.children.iter().position(|c| c.name == name) else {
            return Err(QuorumError::NoSuchChild {
                parent: self.node_name.clone(),
                child: name.to_owned(),
            });
        };
        if l.children.len() <= self.cfg.threshold {
            return Err(QuorumError::BelowThreshold(self.cfg.threshold));
        }
        if l.next_index > 0 && name == format!("children.{}", l.next_index - 1) {
            l.next_index -= 1;
        }
        Ok(l.children.remove(i).node)
    }

    /// `x-blockdev-change` adding `node` (the caller checked it has no
    /// parent and makes no cycle, and acquires it); returns its name.
    pub fn add_child(&self, node: Arc<Node>, quorum_ro: bool) -> Result<String, QuorumError> {
        if self.cfg.blkverify {
            return Err(QuorumError::BlkverifyAdd);
        }
        if !quorum_ro && node.read_only {
            return Err(QuorumError::ReadOnlyChild(node.name.clone()));
        }
        if node.size() != self.size {
            return Err(QuorumError::ChildSize {
                node: node.name.clone(),
                quorum: self.node_name.clone(),
                size: node.size(),
                expected: self.size,
            });
        }
        let mut l = self.layout.write().unwrap_or_else(|p| p.into_inner());
        if l.next_index == u32::MAX {
            return Err(QuorumError::TooMany);
        }
        let name = format!("children.{}", l.next_index);
        l.next_index += 1;
        l.children.push(Child {
            name: name.clone(),
            node,
        });
        Ok(name)
    }

    /// A mirror's pivot with `replaces`: node `old` gives its place (and
    /// child name) to `new`, once requests in flight are done; the caller
    /// moves the references.
    pub fn replace_child(&self, old: &str, new: Arc<Node>) -> Result<(), QuorumError> {
        let mut l = self.layout.write().unwrap_or_else(|p| p.into_inner());
        let c = l
            .children
            .iter_mut()
            .find(|c| c.node.name == old)
            .ok_or_else(|| QuorumError::NoSuchChild {
                parent: self.node_name.clone(),
                child: old.to_owned(),
            })?;
        c.node = new;
        Ok(())
    }

    /// Restores the child names and next index a replay must reproduce.
    pub fn set_child_names(&self, names: Vec<String>, next_index: u32) -> Result<(), QuorumError> {
        let mut l = self.layout.write().unwrap_or_else(|p| p.into_inner());
        if names.len() != l.children.len() {
            return Err(QuorumError::NamesMismatch {
                quorum: self.node_name.clone(),
                has: l.children.len(),
                given: names.len(),
            });
        }
        for (c, n) in l.children.iter_mut().zip(names) {
            c.name = n;
        }
        l.next_index = next_index;
        Ok(())
    }
}

/// The bucket QEMU's `QDict` puts `key` in; a QDict lists its members in
/// bucket order, which is the order of the members in QEMU's `json:` file
/// names (the hash is QEMU's `qdict.c` one, so our names read the same).
fn qdict_bucket(key: &str) -> u32 {
    let mut v = 0x238F_13AFu32.wrapping_mul(key.len() as u32);
    for (i, b) in key.bytes().enumerate() {
        v = v.wrapping_add(u32::from(b) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(v).wrapping_add(12345) % 512
}

impl Driver for QuorumDriver {
    fn drv(&self) -> &'static str {
        "quorum"
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        match self.cfg.read_pattern {
            QuorumReadPattern::Quorum => self.read_quorum(bufs, offset),
            QuorumReadPattern::Fifo => self.read_fifo(bufs, offset),
        }
    }
    fn write(&self, bufs: Bufs<'_, '_>, offset: u64) -> io::Result<()> {
        let len = iobuf::total_len(bufs) as u64;
        self.write_all(offset, len, &|n| n.write(bufs, offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.write_all(offset, len, &|n| n.write_zeroes(offset, len, unmap))
    }
    fn flush(&self) -> io::Result<()> {
        let children = self.children_now();
        let mut errors = Vec::new();
        for c in &children {
            if let Err(e) = c.node.flush() {
                self.report_bad(Op::Flush, 0, 0, &c.node.name, Some(&e));
                errors.push(errno(&e));
            }
        }
        if children.len() - errors.len() < self.cfg.threshold {
            return Err(io::Error::from_raw_os_error(vote_error(&errors)));
        }
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        // QEMU's quorum has no discard: the request succeeds and no child
        // discards (one that did alone would then be outvoted).
        Ok(())
    }
    fn image_info(&self) -> ImageInfo {
        let kids: Vec<String> = self
            .children_now()
            .iter()
            .map(|c| {
                let i = c.node.driver.image_info();
                let file = format!(
                    "{{\"driver\": \"file\", \"filename\": {}}}",
                    serde_json::Value::String(i.filename.clone())
                );
                match c.node.driver.drv() {
                    "file" => file,
                    drv => format!("{{\"driver\": \"{drv}\", \"file\": {file}}}"),
                }
            })
            .collect();
        let mut members: Vec<(&str, String)> = self.shown.clone();
        members.push(("children", format!("[{}]", kids.join(", "))));
        members.push(("driver", "\"quorum\"".into()));
        members.sort_by_key(|(k, _)| qdict_bucket(k));
        let body: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        ImageInfo {
            filename: format!("json:{{{}}}", body.join(", ")),
            format: "quorum".into(),
            virtual_size: self.size,
            // QEMU: a node with neither its own files nor a `file` child.
            actual_size: Some(0),
            cluster_size: None,
            backing_filename: None,
            backing_image: None,
            format_specific: None,
        }
    }
    fn children(&self) -> Vec<String> {
        self.children_now()
            .into_iter()
            .map(|c| c.node.name.clone())
            .collect()
    }
    fn as_quorum(&self) -> Option<&QuorumDriver> {
        Some(self)
    }
}
