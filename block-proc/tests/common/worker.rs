//! block-proc under the IPC control channel, as the broker drives it
//! (the harness's [`ControlledWorker`]), with the requests the tests share.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use ipc_proto::block::{BlockEvent, BlockReply, BlockRequest, BlockdevOptions, FileFd};
use ipc_proto::WorkerKind;
use vhost_user_harness::worker::ControlledWorker;
use vhost_user_harness::{BlkDevice, BlkOptions};

vhost_user_harness::controlled_worker!(
    /// A running block-proc and the broker's end of its channel; killed on
    /// drop.
    Worker,
    BlockRequest,
    BlockReply,
    BlockEvent
);

/// Starts block-proc on a socketpair control channel, sandboxed as under
/// the broker (the tests run as root), and completes the handshake.
pub fn spawn() -> Worker {
    Worker(ControlledWorker::spawn(&super::bin(), WorkerKind::Block, 61002).unwrap())
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
}
