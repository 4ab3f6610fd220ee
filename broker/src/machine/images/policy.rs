//! The directories a VM's backing files may come from.
//!
//! A backing file named in an image header is opened only if the file the
//! kernel resolved (symlinks followed) lies
//! - in the directory of an image the user named (`-blockdev`, `-drive`,
//!   `blockdev-add`) for a node that exists now, or
//! - anywhere below a directory given with `-x-bulkhead-image-dir DIR`.
//!
//! Files the user names are never checked against these directories: the
//! user (the management layer) may name any file, and a backing file
//! anywhere can still be used by naming it explicitly.

use std::path::{Path, PathBuf};

/// Errors of the directory check; `Display` is the reason part of QEMU's
/// `Could not open 'PATH': REASON`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file lies outside every directory the VM may use.
    #[error(
        "Permission denied (outside the directories this VM may use: those of the images it \
         was given, and -x-bulkhead-image-dir)"
    )]
    Outside,
    /// The kernel did not tell where the file is.
    #[error("Permission denied (cannot tell which directory it is in)")]
    Unknown,
}

/// The directories of one VM.
#[derive(Debug, Default, Clone)]
pub struct ImageDirs {
    /// Exact directories (those of images the user named).
    exact: Vec<PathBuf>,
    /// Directory trees (`-x-bulkhead-image-dir`).
    trees: Vec<PathBuf>,
}

impl ImageDirs {
    /// The trees given with `-x-bulkhead-image-dir` (resolved now; a
    /// directory that does not exist allows nothing).
    pub fn with_trees(trees: &[PathBuf]) -> Self {
        ImageDirs {
            exact: Vec::new(),
            trees: trees
                .iter()
                .filter_map(|t| std::fs::canonicalize(t).ok())
                .collect(),
        }
    }

    /// Allows the directory holding `real_path` (a user-named image).
    pub fn allow_dir_of(&mut self, real_path: &Path) {
        if let Some(d) = real_path.parent() {
            if !self.exact.iter().any(|e| e == d) {
                self.exact.push(d.to_path_buf());
            }
        }
    }

    /// Whether a backing file at `real_path` may be used.
    pub fn check(&self, real_path: Option<&Path>) -> Result<(), PolicyError> {
        let p = real_path.ok_or(PolicyError::Unknown)?;
        let dir = p.parent().ok_or(PolicyError::Outside)?;
        if self.exact.iter().any(|e| e == dir) || self.trees.iter().any(|t| p.starts_with(t)) {
            Ok(())
        } else {
            Err(PolicyError::Outside)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_images_directories_and_the_trees_are_allowed() {
        let mut d = ImageDirs::with_trees(&[PathBuf::from("/")]);
        assert!(d.check(Some(Path::new("/a/b"))).is_ok());
        d = ImageDirs::default();
        d.allow_dir_of(Path::new("/vm1/top.qcow2"));
        assert!(d.check(Some(Path::new("/vm1/base.raw"))).is_ok());
        assert!(d.check(Some(Path::new("/vm1/sub/base.raw"))).is_err());
        assert!(d.check(Some(Path::new("/vm2/disk.raw"))).is_err());
        assert!(d.check(None).is_err());
    }
}
