//! What a `blockdev-add` tree asks the broker to open: every `file` node
//! with its mode and locks, and every qcow2 node whose backing chain comes
//! from its image header.

use ipc_proto::block::{BlockdevOptions, BlockdevRef, OnOffAuto};

use super::lock::Perms;

/// Errors in a tree's options; `Display` is QEMU's message.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// `force-share=on` on a writable node.
    #[error("force-share=on can only be used with read-only images")]
    ForceShareWritable,
}

/// One `file` node of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUse {
    /// `filename`.
    pub filename: String,
    /// Read-only (its own `read-only` or a read-only parent's).
    pub read_only: bool,
    /// `cache.direct`.
    pub direct: bool,
    /// The locks to take, or `None` with `locking=off`.
    pub locks: Option<Perms>,
}

/// Where a qcow2 node with a header backing chain keeps its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainTop {
    /// An inline `file` node with this filename.
    File {
        /// The filename.
        filename: String,
        /// Whether backing files get locks (the image file's `locking`).
        locking: bool,
    },
    /// An existing node (by name).
    Node(String),
}

/// Common options a child inherits.
#[derive(Clone, Copy)]
struct Inherited {
    read_only: bool,
    force_share: bool,
    /// Below a qcow2 node's `backing`.
    backing: bool,
}

macro_rules! common {
    ($o:expr, $p:expr) => {
        Inherited {
            read_only: $p.read_only || $o.read_only.unwrap_or(false),
            force_share: $p.force_share || $o.force_share.unwrap_or(false),
            backing: $p.backing,
        }
    };
}

/// Every `file` node defined in `o` (inline children included).
pub fn file_uses(o: &BlockdevOptions) -> Result<Vec<FileUse>, TreeError> {
    let mut out = Vec::new();
    let top = Inherited {
        read_only: false,
        force_share: false,
        backing: false,
    };
    collect(o, top, &mut out, &mut Vec::new())?;
    Ok(out)
}

/// The qcow2 nodes of `o` whose backing chain the broker must read (those
/// without a `backing` member), by where their image is.
pub fn chain_tops(o: &BlockdevOptions) -> Vec<ChainTop> {
    let mut tops = Vec::new();
    let top = Inherited {
        read_only: false,
        force_share: false,
        backing: false,
    };
    // Option errors are reported by file_uses; this walk only lists.
    let _ = collect(o, top, &mut Vec::new(), &mut tops);
    tops
}

fn collect(
    o: &BlockdevOptions,
    parent: Inherited,
    out: &mut Vec<FileUse>,
    tops: &mut Vec<ChainTop>,
) -> Result<(), TreeError> {
    let child =
        |r: Option<&BlockdevRef>, inh, out: &mut Vec<FileUse>, tops: &mut Vec<ChainTop>| match r {
            Some(BlockdevRef::Definition(d)) => collect(d, inh, out, tops),
            Some(BlockdevRef::Reference(_)) | None => Ok(()),
        };
    match o {
        BlockdevOptions::File(f) => {
            let inh = common!(f, parent);
            if inh.force_share && !inh.read_only {
                return Err(TreeError::ForceShareWritable);
            }
            let locks = match f.locking.unwrap_or(OnOffAuto::Auto) {
                OnOffAuto::Off => None,
                OnOffAuto::On | OnOffAuto::Auto => {
                    Some(match (inh.backing, inh.read_only, inh.force_share) {
                        (true, _, _) => Perms::BACKING,
                        (false, false, _) => Perms::WRITER,
                        (false, true, false) => Perms::READER,
                        (false, true, true) => Perms::SHARED_READER,
                    })
                }
            };
            out.push(FileUse {
                filename: f.filename.clone(),
                read_only: inh.read_only,
                direct: f.cache.and_then(|c| c.direct).unwrap_or(false),
                locks,
            });
            Ok(())
        }
        BlockdevOptions::Raw(r) => child(r.file.as_ref(), common!(r, parent), out, tops),
        BlockdevOptions::Qcow2(q) => {
            let inh = common!(q, parent);
            child(q.file.as_ref(), inh, out, tops)?;
            match &q.backing {
                None => match &q.file {
                    Some(BlockdevRef::Definition(d)) => {
                        if let BlockdevOptions::File(f) = &**d {
                            tops.push(ChainTop::File {
                                filename: f.filename.clone(),
                                locking: f.locking != Some(OnOffAuto::Off),
                            });
                        }
                    }
                    Some(BlockdevRef::Reference(n)) => tops.push(ChainTop::Node(n.clone())),
                    None => {}
                },
                Some(b) => {
                    let backing = Inherited {
                        read_only: true,
                        backing: true,
                        ..inh
                    };
                    child(b.as_ref(), backing, out, tops)?;
                }
            }
            Ok(())
        }
        BlockdevOptions::NullCo(_) => Ok(()),
        BlockdevOptions::Quorum(q) => {
            let inh = common!(q, parent);
            for c in &q.children {
                child(Some(c), inh, out, tops)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: serde_json::Value) -> BlockdevOptions {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn modes_and_locks_follow_the_tree() {
        let o = opts(
            serde_json::json!({"driver": "qcow2", "node-name": "q", "read-only": true,
            "file": {"driver": "file", "filename": "/a", "locking": "off"}}),
        );
        let u = file_uses(&o).unwrap();
        assert_eq!(u[0].filename, "/a");
        assert!(u[0].read_only);
        assert_eq!(u[0].locks, None);
        assert_eq!(
            chain_tops(&o),
            [ChainTop::File {
                filename: "/a".into(),
                locking: false
            }]
        );
        let o = opts(serde_json::json!({"driver": "raw", "node-name": "r",
            "file": {"driver": "file", "filename": "/b"}}));
        assert_eq!(file_uses(&o).unwrap()[0].locks, Some(Perms::WRITER));
        assert!(chain_tops(&o).is_empty());
        let mut o = opts(serde_json::json!({"driver": "qcow2", "node-name": "q", "file": "f0"}));
        assert_eq!(chain_tops(&o), [ChainTop::Node("f0".into())]);
        // `"backing": null` (the QMP layer turns JSON null into this).
        if let BlockdevOptions::Qcow2(q) = &mut o {
            q.backing = Some(None);
        }
        assert!(chain_tops(&o).is_empty());
    }

    #[test]
    fn force_share_needs_read_only() {
        let o = opts(serde_json::json!({"driver": "file", "node-name": "f",
            "filename": "/a", "force-share": true}));
        assert_eq!(
            file_uses(&o).unwrap_err().to_string(),
            "force-share=on can only be used with read-only images"
        );
        let o = opts(serde_json::json!({"driver": "file", "node-name": "f",
            "filename": "/a", "force-share": true, "read-only": true}));
        assert_eq!(file_uses(&o).unwrap()[0].locks, Some(Perms::SHARED_READER));
    }
}
