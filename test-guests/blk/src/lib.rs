//! Driver code of the `blk` test guests: a virtio-mmio virtio-blk driver
//! ([`virtio`], [`blk`]) and the sector patterns ([`pattern`]).
//!
//! - `blk`: one pass of write, flush, read back and verify over
//!   [`blk::SECTORS`] sectors, then the verdict.
//! - `blk-loop`: the same pass forever (`pass N ok` after each), for chaos
//!   tests that kill the block backend meanwhile.

#![no_std]

pub mod blk;
pub mod pattern;
pub mod virtio;
