//! block-proc under the IPC control channel, as the broker drives it: the
//! spawned worker and a blocking request/reply call that keeps events aside.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};

use ipc_proto::block::{BlockEvent, BlockReply, BlockRequest, BlockdevOptions, FileFd};
use ipc_proto::envelope::{BrokerMsg, WorkerMsg};
use ipc_proto::worker::BrokerChannel;
use ipc_proto::{FlatError, WorkerKind};
use vhost_user_harness::{BlkDevice, BlkOptions};

/// The broker's end of the control channel.
pub type Chan = BrokerChannel<BlockRequest, BlockReply, BlockEvent>;

/// A running block-proc and the broker's end of its channel; killed on drop.
pub struct Worker {
    pub child: Child,
    pub chan: Chan,
    pub next: u64,
    /// Events received while waiting for replies.
    pub events: Vec<BlockEvent>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts block-proc on a socketpair control channel, sandboxed, and
/// completes the handshake.
pub fn spawn() -> Worker {
    let (broker, worker) = UnixStream::pair().unwrap();
    nix::fcntl::fcntl(
        &worker,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&worker);
    let child = Command::new(super::bin())
        .arg("--control-fd")
        .arg(fd.to_string())
        // Sandboxed as under the broker (the tests run as root).
        .args(["--sandbox-uid", "61002"])
        .spawn()
        .unwrap();
    drop(worker);
    let (chan, hello) = ipc_proto::worker::accept(broker, WorkerKind::Block).unwrap();
    assert_eq!(hello.pid, child.id());
    Worker {
        child,
        chan,
        next: 1,
        events: Vec::new(),
    }
}

impl Worker {
    /// Node `disk0` of `img` from the blockdev options `json` (the image's fd
    /// passed with it), exported as `id`; the image's file.
    pub fn export_node(&mut self, img: &std::path::Path, id: &str, json: &str) -> std::fs::File {
        let options: BlockdevOptions = serde_json::from_str(json).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .unwrap();
        let files = vec![FileFd {
            filename: img.display().to_string(),
            fd_index: 0,
        }];
        let add = BlockRequest::AddNode { options, files };
        assert_eq!(self.call(add, &[file.as_fd()]), Ok(BlockReply::Done));
        let export = BlockRequest::AddExport {
            id: id.into(),
            node_name: "disk0".into(),
            num_queues: 1,
            writable: true,
            serial: "x".into(),
            logical_block_size: 512,
        };
        assert_eq!(self.call(export, &[]), Ok(BlockReply::Done));
        file
    }

    /// Hands export `id` one end of a new socketpair and sets the harness
    /// up on the other.
    pub fn attach(&mut self, id: &str, num_queues: u16) -> BlkDevice {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let req = BlockRequest::AttachExportConnection { id: id.into() };
        assert_eq!(self.call(req, &[theirs.as_fd()]), Ok(BlockReply::Done));
        drop(theirs);
        let opts = BlkOptions {
            num_queues,
            ..Default::default()
        };
        BlkDevice::from_stream(ours, opts).unwrap()
    }

    /// Sends `body` with `fds` and waits for its reply, keeping events
    /// that come first in `events`.
    pub fn call(
        &mut self,
        body: BlockRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<BlockReply, FlatError> {
        let id = self.next;
        self.next += 1;
        self.chan
            .send(&BrokerMsg::Request { id, body }, fds)
            .unwrap();
        loop {
            match self.chan.recv().unwrap().0 {
                WorkerMsg::Reply { id: rid, result } => {
                    assert_eq!(rid, id);
                    return result;
                }
                WorkerMsg::Event(e) => self.events.push(e),
            }
        }
    }
}
