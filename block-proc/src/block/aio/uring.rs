//! One io_uring per queue, on the `io-uring` crate.
//!
//! The ring is created disabled, the image fd is registered (slot 0), the
//! ring is restricted (`IORING_REGISTER_RESTRICTIONS`) to `READV`,
//! `WRITEV`, `FSYNC` and `FALLOCATE` on registered files only (every SQE
//! must carry `IOSQE_FIXED_FILE`, no other flag) with no `io_uring_register`
//! operation allowed afterwards, and only then enabled. So the ring can
//! read, write, sync and punch holes in the image it was given and do
//! nothing else — not open, connect, or touch another fd — whatever a
//! compromised block-proc writes into its submission queue.
//!
//! Requests are pushed with a caller token; [`Ring::reap`] returns the
//! finished ones. Short transfers are resubmitted for the rest, a read at
//! end of file zero-fills, `EINTR`/`EAGAIN` resubmit, and an unsupported
//! hole punch counts as done (discard is advisory).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring};

use super::{HostOp, Target};

/// Submission-queue entries of a queue's ring; the completion queue has
/// twice as many, and no more requests than that are in the kernel at once.
pub const RING_ENTRIES: u32 = 128;

/// Most iovecs one request may have (the kernel's `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

const ALLOWED_OPS: [u8; 4] = [
    opcode::Readv::CODE,
    opcode::Writev::CODE,
    opcode::Fsync::CODE,
    opcode::Fallocate::CODE,
];

/// Create a ring of `entries`, restricted, with `fds` registered.
fn restricted(entries: u32, fds: &[RawFd]) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_r_disabled().setup_cqsize(entries * 2);
    // Completions run when the queue thread enters the kernel instead of
    // interrupting it, and only that thread submits. Kernels before 6.0
    // refuse these flags: then the ring goes without them.
    let mut fast = b.clone();
    fast.setup_coop_taskrun().setup_single_issuer();
    let ring = match fast.build(entries) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => b.build(entries)?,
        Err(e) => return Err(e),
    };
    let sub = ring.submitter();
    if !fds.is_empty() {
        sub.register_files(fds)?;
    }
    let fixed = squeue::Flags::FIXED_FILE.bits();
    let mut res: Vec<Restriction> = ALLOWED_OPS
        .iter()
        .map(|&op| Restriction::sqe_op(op))
        .collect();
    res.push(Restriction::sqe_flags_required(fixed));
    res.push(Restriction::sqe_flags_allowed(fixed));
    sub.register_restrictions(&mut res)?;
    sub.register_enable_rings()?;
    Ok(ring)
}

/// Whether this process can set up a restricted ring (io_uring compiled
/// in, not disabled by `kernel.io_uring_disabled`, allowed by seccomp,
/// restrictions supported).
pub fn probe() -> io::Result<()> {
    restricted(1, &[]).map(drop)
}

struct Pending<T> {
    op: HostOp,
    iov: Vec<libc::iovec>,
    /// First iovec not yet fully transferred.
    first: usize,
    /// Bytes transferred so far.
    done: u64,
    token: T,
    _hold: Option<Box<dyn std::any::Any + Send>>,
}

/// A queue's ring and the requests it runs; `T` is the caller's token.
pub struct Ring<T> {
    ring: IoUring,
    slots: Vec<Option<Pending<T>>>,
    free: Vec<usize>,
    /// Slots waiting for room in the kernel.
    backlog: VecDeque<usize>,
    /// Slots in the kernel (submitted or queued in the SQ).
    in_kernel: usize,
    /// Finished without reaching the kernel (empty transfers).
    ready: Vec<(T, io::Result<()>)>,
    registered: RawFd,
}

impl<T> Ring<T> {
    /// A restricted ring for the image `fd`.
    pub fn new(fd: RawFd) -> io::Result<Self> {
        Ok(Ring {
            ring: restricted(RING_ENTRIES, &[fd])?,
            slots: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
            in_kernel: 0,
            ready: Vec::new(),
            registered: fd,
        })
    }

    /// The image fd the ring has registered (requests for another fd
    /// fail with EBADF).
    pub fn registered_fd(&self) -> RawFd {
        self.registered
    }

    /// Requests pushed and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Queue a request; it reaches the kernel at the next [`Ring::submit`].
    ///
    /// # Safety
    ///
    /// The memory every iovec points at must stay valid (and, for reads,
    /// writable) until this request comes back from [`Ring::reap`] or
    /// [`Ring::wait_all`], or the ring is dropped (which waits for it).
    pub unsafe fn push(&mut self, target: Target, iov: Vec<libc::iovec>, token: T) {
        if target.fd != self.registered {
            self.ready
                .push((token, Err(io::Error::from_raw_os_error(libc::EBADF))));
            return;
        }
        let rw = matches!(target.op, HostOp::Readv { .. } | HostOp::Writev { .. });
        if rw && iov.len() > MAX_IOVECS {
            self.ready
                .push((token, Err(io::Error::from_raw_os_error(libc::EINVAL))));
            return;
        }
        if rw && iov.iter().all(|v| v.iov_len == 0) {
            self.ready.push((token, Ok(())));
            return;
        }
        let p = Pending {
            op: target.op,
            iov,
            first: 0,
            done: 0,
            token,
            _hold: target.hold,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(p);
                i
            }
            None => {
                self.slots.push(Some(p));
                self.slots.len() - 1
            }
        };
        self.backlog.push_back(idx);
        self.fill();
    }

    /// Move backlog entries into the SQ while there is room.
    fn fill(&mut self) {
        let cap = (RING_ENTRIES * 2) as usize;
        while self.in_kernel < cap {
            let Some(&idx) = self.backlog.front() else {
                return;
            };
            let Some(entry) = self
                .slots
                .get(idx)
                .and_then(Option::as_ref)
                .map(|p| sqe(p, idx))
            else {
                self.backlog.pop_front();
                continue;
            };
            // SAFETY: the entry points at iovecs owned by the slot, which
            // stays in `self.slots` until its completion is reaped; the
            // buffers they point at are valid per `push`'s contract.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_err() {
                // SQ full: hand what is queued to the kernel and retry.
                if self.ring.submit().is_err() {
                    return;
                }
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    return;
                }
            }
            self.backlog.pop_front();
            self.in_kernel += 1;
        }
    }

    /// Hand queued requests to the kernel (one `io_uring_enter`).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ overflow pending: the caller reaps, then we retry.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Append the finished requests to `out` (does not block); hand what
    /// they made ready (resubmissions, backlog) to the kernel.
    pub fn reap(&mut self, out: &mut Vec<(T, io::Result<()>)>) {
        self.collect(out);
        let _ = self.submit();
    }

    /// [`Ring::reap`] without the submission.
    fn collect(&mut self, out: &mut Vec<(T, io::Result<()>)>) {
        out.append(&mut self.ready);
        let mut cqes = Vec::new();
        for c in self.ring.completion() {
            cqes.push((c.user_data(), c.result()));
        }
        for (ud, res) in cqes {
            self.in_kernel = self.in_kernel.saturating_sub(1);
            let Ok(idx) = usize::try_from(ud) else {
                continue;
            };
            if let Some(done) = self.finish(idx, res) {
                out.push(done);
            }
        }
        self.fill();
    }

    /// Apply one CQE to its slot: the finished request, or None when the
    /// rest was resubmitted.
    fn finish(&mut self, idx: usize, res: i32) -> Option<(T, io::Result<()>)> {
        let p = self.slots.get_mut(idx)?.as_mut()?;
        let result = if res < 0 {
            let err = -res;
            if err == libc::EINTR || err == libc::EAGAIN {
                self.backlog.push_back(idx);
                return None;
            }
            if err == libc::EOPNOTSUPP && matches!(p.op, HostOp::PunchHole { .. }) {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(err))
            }
        } else {
            match p.op {
                HostOp::Readv { .. } | HostOp::Writev { .. } => {
                    let write = matches!(p.op, HostOp::Writev { .. });
                    let n = usize::try_from(res).unwrap_or(0);
                    if n == 0 {
                        if write {
                            Err(io::Error::from_raw_os_error(libc::ENOSPC))
                        } else {
                            zero_rest(p);
                            Ok(())
                        }
                    } else if advance(p, n) {
                        self.backlog.push_back(idx);
                        return None;
                    } else {
                        Ok(())
                    }
                }
                HostOp::Datasync | HostOp::PunchHole { .. } => Ok(()),
            }
        };
        let p = self.slots.get_mut(idx)?.take()?;
        self.free.push(idx);
        Some((p.token, result))
    }

    /// Wait until every request pushed has finished; append them to `out`.
    pub fn wait_all(&mut self, out: &mut Vec<(T, io::Result<()>)>) {
        out.append(&mut self.ready);
        while self.in_flight() > 0 {
            // One io_uring_enter submits what is queued and waits.
            self.collect(out);
            if self.in_flight() == 0 {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    tracing::error!("io_uring wait failed: {e}; failing queued requests");
                    // Requests already in the kernel cannot be waited
                    // for any more; the ring fd's release cancels them.
                    self.fail_backlog(out, e);
                    return;
                }
            }
        }
    }

    /// Fail the requests that never reached the kernel.
    fn fail_backlog(&mut self, out: &mut Vec<(T, io::Result<()>)>, e: io::Error) {
        while let Some(idx) = self.backlog.pop_back() {
            if let Some(p) = self.slots.get_mut(idx).and_then(Option::take) {
                self.free.push(idx);
                let err = io::Error::new(e.kind(), e.to_string());
                out.push((p.token, Err(err)));
            }
        }
    }

    /// Waits for every request still in flight; their results are dropped.
    fn drain_on_drop(&mut self) {
        let mut sink = Vec::new();
        self.wait_all(&mut sink);
    }
}

impl<T> AsRawFd for Ring<T> {
    /// The ring fd: readable when completions are waiting.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // The kernel may still write into the callers' buffers: wait.
        self.drain_on_drop();
    }
}

/// The SQE for the rest of slot `idx`.
fn sqe<T>(p: &Pending<T>, idx: usize) -> squeue::Entry {
    let file = types::Fixed(0);
    let rest = &p.iov[p.first..];
    let cnt = u32::try_from(rest.len()).unwrap_or(u32::MAX);
    let e = match p.op {
        HostOp::Readv { offset } => opcode::Readv::new(file, rest.as_ptr(), cnt)
            .offset(offset + p.done)
            .build(),
        HostOp::Writev { offset } => opcode::Writev::new(file, rest.as_ptr(), cnt)
            .offset(offset + p.done)
            .build(),
        HostOp::Datasync => opcode::Fsync::new(file)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
        HostOp::PunchHole { offset, len } => opcode::Fallocate::new(file, len)
            .offset(offset)
            .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            .build(),
    };
    e.user_data(idx as u64)
}

/// Account `n` bytes transferred; true when some remain.
fn advance<T>(p: &mut Pending<T>, mut n: usize) -> bool {
    p.done += n as u64;
    while n > 0 && p.first < p.iov.len() {
        let v = &mut p.iov[p.first];
        if n >= v.iov_len {
            n -= v.iov_len;
            p.first += 1;
        } else {
            // SAFETY: n < iov_len, so the advanced pointer stays inside
            // the buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            n = 0;
        }
    }
    while p.first < p.iov.len() && p.iov[p.first].iov_len == 0 {
        p.first += 1;
    }
    p.first < p.iov.len()
}

/// A read hit end of file: the rest reads as zeroes.
fn zero_rest<T>(p: &mut Pending<T>) {
    for v in &p.iov[p.first..] {
        // SAFETY: the iovec points at writable memory of iov_len bytes,
        // valid until completion per `Ring::push`'s contract.
        unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
    }
}

#[cfg(test)]
mod tests;
