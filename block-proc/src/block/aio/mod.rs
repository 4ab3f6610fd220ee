//! The I/O engines of the `file` driver (QEMU's `aio=` option).
//!
//! - [`Engine::Threads`]: the driver's blocking `preadv`/`pwritev` calls,
//!   run by the queue thread (a lone request) or by the queue's pool of I/O
//!   threads (`vhost/queue.rs`). Always available; the fallback.
//! - [`Engine::IoUring`]: one ring per queue ([`uring::Ring`]), created by
//!   the queue thread, with the image fd registered and the ring restricted
//!   to the four operations below. Each request is submitted as soon as
//!   the queue thread has parsed it; completions are reaped in batches.
//! - No `aio`: io_uring for `O_DIRECT` files when the process can set up
//!   a ring, else threads ([`Engine::resolve`] says why).
//! - `aio=native` (Linux AIO) is refused with QEMU's message for a build
//!   without it: io_uring is the faster asynchronous engine on every
//!   kernel that has Linux AIO and io_uring, and mapping `native` onto
//!   io_uring would be a lie.
//!
//! The engine never sees a request that needs a bounce buffer or a
//! read-modify-write: the `file` driver hands it only the I/O it can run
//! as it is ([`Target`]); everything else goes through the driver's
//! synchronous path on the thread pool.

pub mod uring;

use std::any::Any;
use std::io;
use std::os::fd::RawFd;

use ipc_proto::block::BlockdevAio;

use super::Bufs;

/// Why an `aio=` setting cannot be used, with QEMU's messages.
#[derive(Debug, thiserror::Error)]
pub enum AioError {
    /// `aio=native` on a file opened without `O_DIRECT`.
    #[error("aio=native was specified, but it requires cache.direct=on, which was not specified.")]
    NativeNeedsDirect,
    /// `aio=native`: Linux AIO is not built in.
    #[error("aio=native was specified, but is not supported in this build.")]
    NativeUnsupported,
    /// `aio=io_uring` on a host (or in a sandbox) without io_uring.
    #[error("Unable to use io_uring: failed to init linux io_uring ring: {}", crate::block::graph::strerror(.0))]
    IoUring(#[source] io::Error),
}

/// The engine a `file` node runs its I/O with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Blocking calls on the queue's threads.
    Threads,
    /// A restricted io_uring per queue.
    IoUring,
}

impl Engine {
    /// The engine for the `aio` option of a file opened with `O_DIRECT`
    /// (`direct`) or not. No option: the faster one measured
    /// (`scripts/bench-blk`): with `O_DIRECT`, io_uring when this process
    /// can set one up; through the page cache the thread pool, because
    /// io_uring's buffered reads ran at a fraction of the pool's speed
    /// there (fio's io_uring too).
    pub fn resolve(aio: Option<BlockdevAio>, direct: bool) -> Result<Engine, AioError> {
        match aio {
            None => Ok(if direct && uring::probe().is_ok() {
                Engine::IoUring
            } else {
                Engine::Threads
            }),
            Some(BlockdevAio::Threads) => Ok(Engine::Threads),
            Some(BlockdevAio::IoUring) => {
                uring::probe().map_err(AioError::IoUring)?;
                Ok(Engine::IoUring)
            }
            Some(BlockdevAio::Native) if !direct => Err(AioError::NativeNeedsDirect),
            Some(BlockdevAio::Native) => Err(AioError::NativeUnsupported),
        }
    }

    /// QEMU's name of the engine.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Threads => "threads",
            Engine::IoUring => "io_uring",
        }
    }

    /// The `file` driver's dispatch: `op` on `fd` as one host I/O for this
    /// engine, when the engine runs I/O asynchronously and the driver can
    /// run `op` without a bounce buffer (`as_is`). None: the driver's
    /// synchronous path runs it.
    pub fn target(self, fd: RawFd, op: &Op<'_, '_>, as_is: bool) -> Option<Target> {
        if self == Engine::Threads || !as_is {
            return None;
        }
        let host = match *op {
            Op::Read { offset, .. } => HostOp::Readv { offset },
            Op::Write { offset, .. } => HostOp::Writev { offset },
            Op::Flush => HostOp::Datasync,
            Op::Discard { offset, len } => HostOp::PunchHole { offset, len },
        };
        Some(Target {
            fd,
            op: host,
            hold: None,
        })
    }
}

/// A request as the block layer sees it, before a driver maps it.
#[derive(Clone, Copy)]
pub enum Op<'a, 'b> {
    /// Fill `bufs` from `offset`.
    Read {
        /// Destination buffers.
        bufs: Bufs<'a, 'b>,
        /// Byte offset in the node.
        offset: u64,
    },
    /// Write `bufs` at `offset`.
    Write {
        /// Source buffers.
        bufs: Bufs<'a, 'b>,
        /// Byte offset in the node.
        offset: u64,
    },
    /// Make written data durable.
    Flush,
    /// Discard a range (advisory).
    Discard {
        /// Byte offset in the node.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// What kind of request an [`Op`] is (for accounting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read.
    Read,
    /// A write.
    Write,
    /// A flush.
    Flush,
    /// A discard.
    Discard,
}

impl Op<'_, '_> {
    /// The op's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Op::Read { .. } => Kind::Read,
            Op::Write { .. } => Kind::Write,
            Op::Flush => Kind::Flush,
            Op::Discard { .. } => Kind::Discard,
        }
    }

    /// Map the op's offset (a format's window onto its child).
    pub fn shifted(self, by: u64) -> Option<Self> {
        Some(match self {
            Op::Read { bufs, offset } => Op::Read {
                bufs,
                offset: offset.checked_add(by)?,
            },
            Op::Write { bufs, offset } => Op::Write {
                bufs,
                offset: offset.checked_add(by)?,
            },
            Op::Flush => Op::Flush,
            Op::Discard { offset, len } => Op::Discard {
                offset: offset.checked_add(by)?,
                len,
            },
        })
    }
}

/// One host operation on an image fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOp {
    /// `preadv` at the offset; a read past end of file zero-fills.
    Readv {
        /// Byte offset in the file.
        offset: u64,
    },
    /// `pwritev` at the offset.
    Writev {
        /// Byte offset in the file.
        offset: u64,
    },
    /// `fdatasync`.
    Datasync,
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`; unsupported counts as done
    /// (discard is advisory).
    PunchHole {
        /// Byte offset in the file.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// Where a request goes: the image fd and the host operation, plus
/// anything the driver wants held until the I/O completes (a range-lock
/// guard), dropped with the completion.
pub struct Target {
    /// The image fd (the one the ring has registered).
    pub fd: RawFd,
    /// The operation.
    pub op: HostOp,
    /// Held until completion.
    pub hold: Option<Box<dyn Any + Send>>,
}

/// What a node tells a queue about its asynchronous engine: the engine
/// and the fd a ring should register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAio {
    /// The engine of the `file` node under the export.
    pub engine: Engine,
    /// Its fd.
    pub fd: RawFd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_without_direct_is_refused_with_qemus_message() {
        let e = Engine::resolve(Some(BlockdevAio::Native), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "aio=native was specified, but it requires cache.direct=on, which was not specified."
        );
        let e = Engine::resolve(Some(BlockdevAio::Native), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "aio=native was specified, but is not supported in this build."
        );
    }

    #[test]
    fn threads_is_taken_as_asked_and_default_is_io_uring_only_with_o_direct() {
        assert_eq!(
            Engine::resolve(Some(BlockdevAio::Threads), true).unwrap(),
            Engine::Threads
        );
        let expect = if uring::probe().is_ok() {
            Engine::IoUring
        } else {
            Engine::Threads
        };
        assert_eq!(Engine::resolve(None, true).unwrap(), expect);
        assert_eq!(Engine::resolve(None, false).unwrap(), Engine::Threads);
        assert_eq!(
            Engine::resolve(Some(BlockdevAio::IoUring), false).unwrap(),
            expect
        );
    }

    #[test]
    fn threads_engine_never_takes_a_request_and_io_uring_only_as_is() {
        let op = Op::Flush;
        assert!(Engine::Threads.target(3, &op, true).is_none());
        assert!(Engine::IoUring.target(3, &op, false).is_none());
        let t = Engine::IoUring
            .target(3, &Op::Discard { offset: 8, len: 4 }, true)
            .unwrap();
        assert_eq!(t.op, HostOp::PunchHole { offset: 8, len: 4 });
        let shifted = Op::Discard { offset: 8, len: 4 }.shifted(100).unwrap();
        assert!(matches!(
            shifted,
            Op::Discard {
                offset: 108,
                len: 4
            }
        ));
        assert!(Op::Discard {
            offset: u64::MAX,
            len: 1
        }
        .shifted(1)
        .is_none());
    }
}
