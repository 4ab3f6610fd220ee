//! The files of one new node tree: the user-named files opened and locked,
//! and the backing chains the broker read from the image headers, each
//! file checked against the VM's image directories and locked as QEMU
//! locks backing files.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use ipc_proto::block::BlockdevOptions;

use super::chain::{self, ChainError};
use super::lock::{self, LockError, Perms};
use super::open::{self, Identity, OpenError, Purpose};
use super::policy::ImageDirs;
use super::tree::{self, ChainTop, TreeError};

/// Errors of opening a tree's files; `Display` is QEMU's message.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A user-named file could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An image is locked by another process.
    #[error("{error}")]
    Locked {
        /// QEMU's message.
        error: LockError,
        /// The image's filename (for QEMU's hint).
        filename: String,
    },
    /// A backing chain could not be read or opened.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The options are inconsistent.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

impl FilesError {
    /// QEMU's hint line, printed after the message on the command line.
    pub fn hint(&self) -> Option<String> {
        match self {
            FilesError::Locked { filename, .. } => {
                Some(format!("Is another process using the image [{filename}]?"))
            }
            FilesError::Open(_) | FilesError::Chain(_) | FilesError::Tree(_) => None,
        }
    }
}

/// An existing `file` node a new qcow2 node refers to by name: its
/// filename, a copy of its fd and whether it takes locks.
pub struct ExistingFile {
    /// `filename`.
    pub filename: String,
    /// A copy of the broker's fd (same open file description).
    pub fd: OwnedFd,
    /// `locking` is not `off`.
    pub locking: bool,
}

/// What the broker opened for a tree.
pub struct TreeFiles {
    /// Every file by the name block-proc knows it by (user-named files
    /// first, then backing files).
    pub files: Vec<(String, OwnedFd)>,
    /// The backing file names the broker read (the only names block-proc
    /// may ask for).
    pub chain: Vec<String>,
    /// Real paths of the user-named files (their directories become the
    /// VM's image directories).
    pub named: Vec<PathBuf>,
}

/// How to open: the VM's identity and directories.
pub struct Opener<'a> {
    /// `-run-with user=`'s identity, if any.
    pub identity: Option<Identity>,
    /// The directories backing files may come from.
    pub dirs: ImageDirs,
    /// Existing file nodes referenced by name.
    pub existing: &'a HashMap<String, ExistingFile>,
    /// Open without taking image locks (QEMU's inactive nodes: a
    /// migration target before it takes over, a source after the
    /// switchover); [`crate::machine::migration::disks`] takes them later.
    pub inactive: bool,
}

impl Opener<'_> {
    /// Opens the user-named files of `o`, then the backing chains of its
    /// qcow2 nodes. On error every file opened so far is closed (and its
    /// locks dropped).
    pub fn open_tree(mut self, o: &BlockdevOptions) -> Result<TreeFiles, FilesError> {
        let mut out = TreeFiles {
            files: Vec::new(),
            chain: Vec::new(),
            named: Vec::new(),
        };
        let mut ids = HashMap::new();
        for u in tree::file_uses(o)? {
            if out.files.iter().any(|(n, _)| *n == u.filename) {
                continue;
            }
            let f = open::open_image(
                &u.filename,
                u.read_only,
                u.direct,
                Purpose::Named,
                self.identity,
            )?;
            if let Some(p) = u.locks.filter(|_| !self.inactive) {
                lock::lock_image(f.fd.as_fd(), p).map_err(|error| FilesError::Locked {
                    error,
                    filename: u.filename.clone(),
                })?;
            }
            if let Some(p) = &f.real_path {
                self.dirs.allow_dir_of(p);
                out.named.push(p.clone());
            }
            ids.insert(u.filename.clone(), f.dev_ino);
            out.files.push((u.filename, f.fd));
        }
        for top in tree::chain_tops(o) {
            let (name, fd, locking, id) = match top {
                ChainTop::File { filename, locking } => {
                    let Some((_, fd)) = out.files.iter().find(|(n, _)| *n == filename) else {
                        continue;
                    };
                    let id = ids.get(&filename).copied().unwrap_or_default();
                    (filename, fd.try_clone().map_err(chain_io)?, locking, id)
                }
                ChainTop::Node(node) => match self.existing.get(&node) {
                    Some(e) => {
                        let id = dev_ino(&e.fd);
                        (
                            e.filename.clone(),
                            e.fd.try_clone().map_err(chain_io)?,
                            e.locking,
                            id,
                        )
                    }
                    // Not a file node: block-proc refuses it with QEMU's message.
                    None => continue,
                },
            };
            let links = chain::walk(&name, fd.as_fd(), id, &mut |b| {
                self.open_backing(&name, b, locking)
            })?;
            for l in links {
                out.chain.push(l.name.clone());
                if !out.files.iter().any(|(n, _)| *n == l.name) {
                    out.files.push((l.name, l.fd));
                }
            }
        }
        Ok(out)
    }

    /// Opens backing file `name` of image `top` read-only, if the policy
    /// allows it; a refusal is logged.
    fn open_backing(
        &self,
        top: &str,
        name: &str,
        locking: bool,
    ) -> Result<(OwnedFd, (u64, u64)), String> {
        let refuse = |why: String| {
            tracing::warn!("refused backing file '{name}' of image '{top}': {why}");
            why
        };
        let f = open::open_image(name, true, false, Purpose::Backing, self.identity)
            .map_err(|e| refuse(e.to_string()))?;
        self.dirs
            .check(f.real_path.as_deref())
            .map_err(|e| refuse(format!("Could not open '{name}': {e}")))?;
        if locking && !self.inactive {
            lock::lock_image(f.fd.as_fd(), Perms::BACKING).map_err(|e| e.to_string())?;
        }
        Ok((f.fd, f.dev_ino))
    }
}

fn chain_io(e: std::io::Error) -> ChainError {
    ChainError::Read(open::strerror(&e))
}

fn dev_ino(fd: &OwnedFd) -> (u64, u64) {
    nix::sys::stat::fstat(fd)
        .map(|s| (s.st_dev, s.st_ino))
        .unwrap_or_default()
}
