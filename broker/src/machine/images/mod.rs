//! What the broker opens on a VM's behalf, and how (issue 14.1, 13.4).
//!
//! block-proc never opens a path; the broker does, and decides what may be
//! opened:
//! - files the user named (`-blockdev`, `-drive`, `blockdev-add`): opened
//!   as asked; their directories become the VM's image directories;
//! - backing files: only those of a chain the broker read itself from the
//!   image headers ([`chain`]), and only inside the VM's image directories
//!   (those of the images the user named, plus `-x-bulkhead-image-dir`)
//!   ([`policy`]); a name block-proc asks for that is not in that chain is
//!   refused and logged;
//! - never a FIFO, socket, character device or a file on /proc or /sys, and
//!   no backing file that is a device node; every open is non-blocking
//!   until the type is known ([`open`]);
//! - with `-run-with user=`, every open runs with that identity's fsuid and
//!   fsgid, so file permissions apply as they would to QEMU under libvirt's
//!   DAC driver ([`open::Identity`]).
//!
//! Every image file then carries QEMU's OFD lock bytes ([`lock`]), held on
//! the broker's open file description, so they survive block-proc restarts
//! and go away when the node is deleted or the broker ends.

pub mod chain;
pub mod files;
pub mod lock;
pub mod open;
pub mod policy;
pub mod tree;
