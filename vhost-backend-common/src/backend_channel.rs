//! The backend→frontend channel (`VHOST_USER_PROTOCOL_F_BACKEND_REQ`):
//! a backend takes the socket the frontend passes with
//! `SET_BACKEND_REQ_FD` and sends `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`
//! on it when its config space changes (block-proc: a node's size;
//! net-proc: a NIC's link state).
//!
//! Written by hand: the `vhost` crate (0.18) hands the backend the channel
//! only as its opaque `Backend`, whose senders cover shared objects and
//! shared memory but not CONFIG_CHANGE_MSG. So the export reads
//! `SET_BACKEND_REQ_FD` itself (peeked before the crate's handler) and
//! writes the 12-byte message header here.

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recv, recvmsg, sendmsg, ControlMessageOwned, MsgFlags};

/// `VHOST_USER_SET_BACKEND_REQ_FD`.
pub const SET_BACKEND_REQ_FD: u32 = 21;
/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flags: protocol version 1.
pub(crate) const VERSION: u32 = 0x1;
/// Header flags: a reply.
const REPLY: u32 = 0x4;
/// Header flags: the sender wants a REPLY_ACK.
pub(crate) const NEED_REPLY: u32 = 0x8;

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed.
    #[error("backend channel: {0}")]
    Io(#[from] std::io::Error),
    /// recvmsg failed.
    #[error("backend channel: {0}")]
    Sys(#[from] nix::Error),
    /// A message is not what its header says, or was cut short.
    #[error("backend channel: {0}")]
    Malformed(&'static str),
}

/// The request code of the next message on `stream`, without taking it.
pub fn peek_code(stream: &UnixStream) -> Option<u32> {
    let mut hdr = [0u8; 12];
    match recv(stream.as_raw_fd(), &mut hdr, MsgFlags::MSG_PEEK) {
        Ok(12) => Some(u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]])),
        _ => None,
    }
}

/// Takes the `SET_BACKEND_REQ_FD` message at the head of `stream`: the
/// channel it carries, and whether the frontend wants a REPLY_ACK.
pub fn take_request(stream: &UnixStream) -> Result<(UnixStream, bool), ChannelError> {
    let mut hdr = [0u8; 12];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut hdr)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS gave us this fd; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    if msg.bytes != 12 {
        return Err(ChannelError::Malformed("short header"));
    }
    let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if size != 0 {
        return Err(ChannelError::Malformed("unexpected payload"));
    }
    let fd = fd.ok_or(ChannelError::Malformed("no file descriptor"))?;
    Ok((UnixStream::from(fd), flags & NEED_REPLY != 0))
}

/// Answers a REPLY_ACK for `SET_BACKEND_REQ_FD` (`ok` or a failure).
pub fn ack(stream: &UnixStream, ok: bool) -> Result<(), ChannelError> {
    reply_ack(stream, SET_BACKEND_REQ_FD, ok)
}

/// Answers a REPLY_ACK for a request with code `code` the export took
/// itself (`ok` or a failure).
pub fn reply_ack(mut stream: &UnixStream, code: u32, ok: bool) -> Result<(), ChannelError> {
    let mut m = [0u8; 20];
    m[0..4].copy_from_slice(&code.to_le_bytes());
    m[4..8].copy_from_slice(&(VERSION | REPLY).to_le_bytes());
    m[8..12].copy_from_slice(&8u32.to_le_bytes());
    m[12..20].copy_from_slice(&u64::from(!ok).to_le_bytes());
    stream.write_all(&m)?;
    Ok(())
}

/// Sends CONFIG_CHANGE_MSG without blocking (no reply asked: a frontend
/// that does not read its channel never holds the backend up).
pub fn send_config_change(channel: &UnixStream) -> Result<(), ChannelError> {
    let mut m = [0u8; 12];
    m[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    let iov = [std::io::IoSlice::new(&m)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    let n = sendmsg::<()>(channel.as_raw_fd(), &iov, &[], flags, None)?;
    if n != m.len() {
        return Err(ChannelError::Malformed("short CONFIG_CHANGE_MSG write"));
    }
    Ok(())
}
