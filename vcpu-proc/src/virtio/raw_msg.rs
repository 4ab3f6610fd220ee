//! The two vhost-user requests this frontend writes on the connection's
//! socket itself instead of through the `vhost` crate's `Frontend`
//! (0.18.0, its newest release). Only the session thread uses a
//! connection (`session.rs`), so nothing else is in flight on the socket
//! while one of these runs; the session's watcher bounds them as any
//! other request (it shuts the socket down past the deadline).
//!
//! - **SET_LOG_BASE** with `VHOST_USER_PROTOCOL_F_LOG_SHMFD`: the backend
//!   answers, but backends disagree on the body: rust-vmm's echo the
//!   16-byte `VhostUserLog`, libvhost-user (qemu-storage-daemon's
//!   `vhost-user-blk` export, QEMU's other vhost-user daemons) sends an
//!   8-byte u64, DPDK an empty one. QEMU's frontend reads the header and
//!   then whatever length it gives. The crate reads exactly 16 bytes
//!   (`recv_reply::<VhostUserLog>`), so on libvhost-user's 8-byte reply it
//!   waits for 8 more that never come, and the request hangs until the
//!   deadline drops the backend (rust-vmm/vhost#217, still open): a VM on
//!   qemu-storage-daemon could not migrate. Here the reply is read as
//!   QEMU reads it: its header, then exactly the body the header
//!   announces, whatever its length.
//! - **SEND_RARP** (QEMU's `vhost_user_migration_done`): the crate has
//!   no call for it. No reply, as in QEMU.
//!
//! Both go without NEED_REPLY, as QEMU sends them: with REPLY_ACK a
//! backend would otherwise answer SET_LOG_BASE once (libvhost-user,
//! DPDK) or twice, and SEND_RARP's acknowledgement would be one more
//! message to read.

use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost::vhost_user::Error as ProtocolError;

/// VHOST_USER_SET_LOG_BASE.
const SET_LOG_BASE: u32 = 6;
/// VHOST_USER_SEND_RARP.
const SEND_RARP: u32 = 19;
/// Header flags: protocol version 1.
const VERSION: u32 = 0x1;
/// Header flags: a reply.
const REPLY: u32 = 0x4;
/// The largest reply body read (QEMU's `VHOST_USER_PAYLOAD_SIZE` bounds
/// it the same way); a larger one means the stream is out of step.
const MAX_REPLY_BODY: usize = 4096;

fn socket_error(e: impl Into<std::io::Error>) -> vhost::Error {
    vhost::Error::VhostUserProtocol(ProtocolError::SocketError(e.into()))
}

fn protocol(e: ProtocolError) -> vhost::Error {
    vhost::Error::VhostUserProtocol(e)
}

/// Writes one message: header + `body`, `fd` attached.
fn send(
    stream: &UnixStream,
    request: u32,
    body: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> vhost::Result<()> {
    let size = u32::try_from(body.len()).map_err(|_| protocol(ProtocolError::OversizedMsg))?;
    let mut hdr = [0u8; 12];
    hdr[..4].copy_from_slice(&request.to_le_bytes());
    hdr[4..8].copy_from_slice(&VERSION.to_le_bytes());
    hdr[8..].copy_from_slice(&size.to_le_bytes());
    let iov = [IoSlice::new(&hdr), IoSlice::new(body)];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsg: Vec<ControlMessage<'_>> = raw
        .as_ref()
        .map(|r| ControlMessage::ScmRights(r))
        .into_iter()
        .collect();
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(socket_error)?;
    // A Unix stream socket takes a message this small whole or not at all
    // (a short send would leave the stream out of step).
    if sent != hdr.len() + body.len() {
        return Err(protocol(ProtocolError::PartialMessage));
    }
    Ok(())
}

/// Reads the reply to `request`: its header, then the body it announces.
fn recv_reply(mut stream: &UnixStream, request: u32) -> vhost::Result<()> {
    let mut hdr = [0u8; 12];
    stream.read_exact(&mut hdr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            protocol(ProtocolError::Disconnected)
        } else {
            socket_error(e)
        }
    })?;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (code, flags, size) = (word(0), word(4), word(8));
    if code != request || flags & 0x3 != VERSION || flags & REPLY == 0 {
        return Err(protocol(ProtocolError::InvalidMessage));
    }
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_REPLY_BODY {
        return Err(protocol(ProtocolError::OversizedMsg));
    }
    // Its content is not defined (an echo, a u64, nothing): read, not used.
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            protocol(ProtocolError::PartialMessage)
        } else {
            socket_error(e)
        }
    })
}

/// SET_LOG_BASE with the log's memfd `log` of `size` bytes (offset 0),
/// then its reply, of any length.
pub fn set_log_base(stream: &UnixStream, log: BorrowedFd<'_>, size: u64) -> vhost::Result<()> {
    let mut body = [0u8; 16];
    body[..8].copy_from_slice(&size.to_le_bytes());
    send(stream, SET_LOG_BASE, &body, Some(log))?;
    recv_reply(stream, SET_LOG_BASE)
}

/// SEND_RARP: the backend broadcasts a RARP for `mac`.
pub fn send_rarp(stream: &UnixStream, mac: [u8; 6]) -> vhost::Result<()> {
    let mut body = [0u8; 8];
    body[..6].copy_from_slice(&mac);
    send(stream, SEND_RARP, &body, None)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    use super::*;

    fn header(code: u32, flags: u32, size: u32) -> Vec<u8> {
        [code, flags, size]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// A backend that reads one SET_LOG_BASE (checking it carries an fd)
    /// and replies with `body`, then sends an empty reply more.
    fn backend_replying(peer: UnixStream, body: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = nix::sys::socket::recvmsg::<()>(
                peer.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .unwrap();
            assert_eq!(msg.cmsgs().unwrap().count(), 1, "no log fd");
            let n = msg.bytes;
            let got = buf[..n].to_vec();
            let mut reply = header(SET_LOG_BASE, VERSION | REPLY, body.len() as u32);
            reply.extend_from_slice(&body);
            // A second, empty reply right behind: read whole only if the
            // first one was read to its exact end.
            reply.extend_from_slice(&header(SET_LOG_BASE, VERSION | REPLY, 0));
            (&peer).write_all(&reply).unwrap();
            got
        })
    }

    fn log_fd() -> std::fs::File {
        let fd = nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MFdFlags::empty()).unwrap();
        std::fs::File::from(fd)
    }

    #[test]
    fn set_log_base_takes_replies_of_every_length_backends_send() {
        // DPDK: empty; libvhost-user: a u64; rust-vmm: the VhostUserLog.
        for body in [vec![], vec![7u8; 8], vec![9u8; 16]] {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let backend = backend_replying(theirs, body.clone());
            let log = log_fd();
            set_log_base(&ours, log.as_fd(), 4096).unwrap();
            let sent = backend.join().unwrap();
            assert_eq!(&sent[..12], &header(SET_LOG_BASE, VERSION, 16)[..]);
            assert_eq!(&sent[12..20], &4096u64.to_le_bytes());
            assert_eq!(&sent[20..28], &0u64.to_le_bytes());
            // The stream stays in step: the next message is read whole.
            recv_reply(&ours, SET_LOG_BASE).unwrap();
        }
    }

    #[test]
    fn a_reply_to_another_request_or_a_hang_up_is_an_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&theirs)
            .write_all(&header(SEND_RARP, VERSION | REPLY, 0))
            .unwrap();
        assert!(recv_reply(&ours, SET_LOG_BASE).is_err());
        drop(theirs);
        let e = recv_reply(&ours, SET_LOG_BASE).unwrap_err();
        assert!(matches!(
            e,
            vhost::Error::VhostUserProtocol(ProtocolError::Disconnected)
        ));
    }

    #[test]
    fn send_rarp_carries_the_mac_in_a_u64() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        send_rarp(&ours, mac).unwrap();
        let mut got = [0u8; 20];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got[..12], &header(SEND_RARP, VERSION, 8)[..]);
        assert_eq!(&got[12..18], &mac);
        assert_eq!(&got[18..], &[0, 0]);
    }
}
