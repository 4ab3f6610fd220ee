//! A typed, blocking channel over a Unix stream socket: frames carry
//! bincode-encoded messages plus fds. Sending and receiving may happen on
//! different threads at once; each direction is serialised by its own lock.

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, CodecError};
use crate::frame::{self, FrameError};

/// Errors of a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Framing failed (closed, truncated, oversized, I/O).
    #[error("framing error")]
    Frame(#[from] FrameError),
    /// The frame's payload is not a valid message.
    #[error("invalid message")]
    Codec(#[from] CodecError),
}

impl ChannelError {
    /// True when the peer closed the connection cleanly.
    pub fn is_closed(&self) -> bool {
        matches!(self, ChannelError::Frame(e) if e.is_closed())
    }
}

/// Result of channel operations.
pub type Result<T> = std::result::Result<T, ChannelError>;

/// A channel that sends `Tx` and receives `Rx`.
#[derive(Debug)]
pub struct Channel<Tx, Rx> {
    sock: UnixStream,
    send_lock: Mutex<()>,
    recv_lock: Mutex<()>,
    _types: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx: Serialize, Rx: DeserializeOwned> Channel<Tx, Rx> {
    /// Wraps a connected stream socket.
    pub fn new(sock: UnixStream) -> Self {
        Channel {
            sock,
            send_lock: Mutex::new(()),
            recv_lock: Mutex::new(()),
            _types: PhantomData,
        }
    }

    /// Sends `msg` with `fds` attached.
    pub fn send(&self, msg: &Tx, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let bytes = codec::encode(msg)?;
        let _guard = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        frame::send_frame(&self.sock, &bytes, fds)?;
        Ok(())
    }

    /// Receives the next message and the fds that came with it.
    pub fn recv(&self) -> Result<(Rx, Vec<OwnedFd>)> {
        let _guard = self.recv_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, fds) = frame::recv_frame(&self.sock)?;
        Ok((codec::decode(&bytes)?, fds))
    }

    /// Shuts the socket down in both directions, waking a blocked `recv`.
    pub fn shutdown(&self) {
        // Ignoring the error: the socket may already be closed by the peer.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// The underlying socket.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }
}

impl<Tx, Rx> AsFd for Channel<Tx, Rx> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<Tx, Rx> AsRawFd for Channel<Tx, Rx> {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BrokerMsg, FlatError, WorkerMsg};

    type BrokerSide = Channel<BrokerMsg<String>, WorkerMsg<u32, bool>>;
    type WorkerSide = Channel<WorkerMsg<u32, bool>, BrokerMsg<String>>;

    #[test]
    fn request_reply_and_event_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let broker = BrokerSide::new(a);
        let worker = WorkerSide::new(b);
        broker
            .send(
                &BrokerMsg::Request {
                    id: 7,
                    body: "status".into(),
                },
                &[],
            )
            .unwrap();
        let (req, _) = worker.recv().unwrap();
        assert_eq!(
            req,
            BrokerMsg::Request {
                id: 7,
                body: "status".into()
            }
        );
        worker.send(&WorkerMsg::Event(true), &[]).unwrap();
        worker
            .send(
                &WorkerMsg::Reply {
                    id: 7,
                    result: Err(FlatError::generic("no")),
                },
                &[],
            )
            .unwrap();
        assert_eq!(broker.recv().unwrap().0, WorkerMsg::Event(true));
        assert_eq!(
            broker.recv().unwrap().0,
            WorkerMsg::Reply {
                id: 7,
                result: Err(FlatError::generic("no"))
            }
        );
    }

    #[test]
    fn garbage_payload_is_a_codec_error_not_a_panic() {
        let (a, b) = UnixStream::pair().unwrap();
        frame::send_frame(&a, &[0xff, 0xff, 0xff, 0xff, 0xff], &[]).unwrap();
        let worker = WorkerSide::new(b);
        assert!(matches!(worker.recv(), Err(ChannelError::Codec(_))));
    }

    #[test]
    fn closed_peer_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let worker = WorkerSide::new(b);
        assert!(worker.recv().unwrap_err().is_closed());
    }
}
