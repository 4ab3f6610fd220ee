//! Length-prefixed frames over a Unix stream socket, with file descriptors
//! attached through `SCM_RIGHTS`.
//!
//! A frame is an 8-byte header (`u32` payload length, `u32` fd count, both
//! little-endian) followed by the payload. The fds travel with the header's
//! bytes. The receiver checks both counts against the limits before it
//! reads or allocates anything, so a peer cannot make it allocate more than
//! [`MAX_FRAME`] bytes, and frames never read past their own end (so fds of
//! the next frame are never lost).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The largest payload a frame may carry.
pub const MAX_FRAME: usize = crate::codec::MAX_MESSAGE;
/// The most file descriptors one frame may carry.
pub const MAX_FDS: usize = 16;
/// Size of the frame header.
pub const HEADER_LEN: usize = 8;

/// Errors of sending or receiving frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The frame announces more payload than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    /// The frame carries more fds than [`MAX_FDS`].
    #[error("frame carries {0} file descriptors, limit is {MAX_FDS}")]
    TooManyFds(usize),
    /// The fds received do not match the count announced in the header.
    #[error("frame announced {announced} file descriptors but {received} arrived")]
    FdMismatch {
        /// Count in the header.
        announced: usize,
        /// Count that arrived.
        received: usize,
    },
    /// The socket failed.
    #[error("socket I/O failed")]
    Io(#[source] io::Error),
}

/// Result of frame operations.
pub type Result<T> = std::result::Result<T, FrameError>;

impl FrameError {
    /// True when the connection is unusable afterwards (every error except
    /// none: framing errors desynchronise the stream, so all are fatal for
    /// the connection, but none is fatal for the process).
    pub fn is_closed(&self) -> bool {
        matches!(self, FrameError::Closed)
    }
}

/// Sends one frame with `payload` and `fds` on `sock`.
pub fn send_frame(sock: &UnixStream, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len()));
    }
    if fds.len() > MAX_FDS {
        return Err(FrameError::TooManyFds(fds.len()));
    }
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(&header), IoSlice::new(payload)];
    let total = HEADER_LEN + payload.len();
    let sent = loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    };
    if sent < total {
        // The fds went with the first byte; the rest is plain data.
        let mut rest = Vec::with_capacity(total - sent);
        rest.extend_from_slice(&header);
        rest.extend_from_slice(payload);
        (&*sock).write_all(&rest[sent..]).map_err(FrameError::Io)?;
    }
    Ok(())
}

/// Receives one frame from `sock`: its payload and the fds that came with it.
pub fn recv_frame(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < HEADER_LEN {
        let n = recv_with_fds(sock, &mut header[got..], &mut fds)?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated
            });
        }
        got += n;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let nfds = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if nfds > MAX_FDS {
        return Err(FrameError::TooManyFds(nfds));
    }
    if fds.len() != nfds {
        return Err(FrameError::FdMismatch {
            announced: nfds,
            received: fds.len(),
        });
    }
    let mut payload = vec![0u8; len];
    (&*sock)
        .read_exact(&mut payload)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    Ok((payload, fds))
}

/// One `recvmsg` into `buf`, collecting any fds into `fds` (close-on-exec).
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    };
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let bytes = msg.bytes;
    for c in msg.cmsgs().map_err(|e| FrameError::Io(e.into()))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for us
                // (SCM_RIGHTS); nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if truncated {
        return Err(FrameError::TooManyFds(fds.len() + 1));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Seek;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn frame_round_trip_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile();
        f.write_all(b"hello").unwrap();
        send_frame(&a, b"payload", &[f.as_fd()]).unwrap();
        let (payload, fds) = recv_frame(&b).unwrap();
        assert_eq!(payload, b"payload");
        assert_eq!(fds.len(), 1);
        let mut g = File::from(fds.into_iter().next().unwrap());
        g.rewind().unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn consecutive_frames_keep_their_own_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile();
        send_frame(&a, b"one", &[f.as_fd(), f.as_fd()]).unwrap();
        send_frame(&a, b"two", &[]).unwrap();
        send_frame(&a, b"three", &[f.as_fd()]).unwrap();
        let counts: Vec<(Vec<u8>, usize)> = (0..3)
            .map(|_| recv_frame(&b).map(|(p, f)| (p, f.len())).unwrap())
            .collect();
        assert_eq!(
            counts,
            vec![
                (b"one".to_vec(), 2),
                (b"two".to_vec(), 0),
                (b"three".to_vec(), 1)
            ]
        );
    }

    #[test]
    fn oversized_frame_header_is_rejected_without_allocating() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&(u32::MAX).to_le_bytes()).unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        assert!(matches!(recv_frame(&b), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&10u32.to_le_bytes()).unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        a.write_all(b"abc").unwrap();
        drop(a);
        assert!(matches!(recv_frame(&b), Err(FrameError::Truncated)));
    }

    #[test]
    fn truncated_header_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[1, 2, 3]).unwrap();
        drop(a);
        assert!(matches!(recv_frame(&b), Err(FrameError::Truncated)));
    }

    #[test]
    fn clean_close_is_reported_as_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv_frame(&b), Err(FrameError::Closed)));
    }

    #[test]
    fn fd_count_mismatch_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        a.write_all(&2u32.to_le_bytes()).unwrap();
        assert!(matches!(
            recv_frame(&b),
            Err(FrameError::FdMismatch {
                announced: 2,
                received: 0
            })
        ));
    }

    #[test]
    fn too_many_fds_are_refused_by_the_sender() {
        let (a, _b) = UnixStream::pair().unwrap();
        let f = tempfile();
        let fds: Vec<_> = (0..MAX_FDS + 1).map(|_| f.as_fd()).collect();
        assert!(matches!(
            send_frame(&a, b"x", &fds),
            Err(FrameError::TooManyFds(_))
        ));
    }

    #[test]
    fn large_frame_round_trips() {
        let (a, b) = UnixStream::pair().unwrap();
        let payload = vec![0x5au8; MAX_FRAME];
        let t = std::thread::spawn(move || send_frame(&a, &payload, &[]).unwrap());
        let (got, _) = recv_frame(&b).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), MAX_FRAME);
        assert!(got.iter().all(|&x| x == 0x5a));
    }

    fn tempfile() -> File {
        let fd = nix::sys::memfd::memfd_create(c"frame-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        File::from(fd)
    }
}
