//! `ResizeNode` (the broker's `block_resize`) on block-proc under its IPC
//! channel, with a vhost-user harness on the node's export: the export's
//! capacity (GET_CONFIG and the request range checks) follows the node's
//! size at once, the file under a raw node is extended or truncated, and
//! the nodes that cannot be resized say why. A frontend that gave a
//! backend channel (`SET_BACKEND_REQ_FD`) gets CONFIG_CHANGE_MSG on it.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::worker::{spawn, Worker};
use common::*;
use ipc_proto::block::{BlockReply, BlockRequest, BlockdevOptions, FileFd};
use ipc_proto::FlatError;
use vhost_user_harness::blk::{S_IOERR, S_OK};
use vhost_user_harness::BlkDevice;

impl Worker {
    /// Node `disk0` from `json` over `img`, exported as `e0`, with a
    /// harness connected to the export.
    fn export(&mut self, json: &str, img: &std::path::Path) -> BlkDevice {
        self.export_node(img, "e0", json);
        self.attach("e0", 1)
    }

    fn resize(&mut self, node: &str, size: u64) -> Result<BlockReply, FlatError> {
        let req = BlockRequest::ResizeNode {
            node_name: node.into(),
            size,
        };
        self.call(req, &[])
    }
}

#[test]
fn growing_a_raw_node_extends_the_file_and_the_export_capacity_at_once() {
    let img = raw_image("grow.raw", 1 << 20);
    let mut w = spawn();
    let mut dev = w.export(&raw_json(&img), &img);
    assert_eq!(dev.capacity().unwrap(), (1 << 20) / 512);
    let data = pattern(4096, 7);
    assert_eq!(dev.write(0, 6000, &data).unwrap(), S_IOERR, "past the end");

    assert_eq!(w.resize("disk0", 4 << 20), Ok(BlockReply::Done));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 << 20);
    assert_eq!(dev.capacity().unwrap(), (4 << 20) / 512, "GET_CONFIG");
    assert_eq!(dev.write(0, 6000, &data).unwrap(), S_OK);
    let (st, back) = dev.read(0, 6000, 4096).unwrap();
    assert_eq!((st, back), (S_OK, data));

    // The file node under it reports the new size too.
    let Ok(BlockReply::Nodes(nodes)) = w.call(BlockRequest::QueryNodes, &[]) else {
        panic!("query")
    };
    for n in &nodes {
        assert_eq!(n.image.virtual_size, 4 << 20, "{}", n.node_name);
    }
}

#[test]
fn shrinking_a_raw_node_truncates_the_file_and_refuses_requests_past_it() {
    let img = raw_image("shrink.raw", 4 << 20);
    let mut w = spawn();
    let mut dev = w.export(&raw_json(&img), &img);
    assert_eq!(w.resize("disk0", 1 << 20), Ok(BlockReply::Done));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 20);
    assert_eq!(dev.capacity().unwrap(), (1 << 20) / 512);
    assert_eq!(dev.read(0, 4096, 512).unwrap().0, S_IOERR);
    assert_eq!(dev.read(0, 2047, 512).unwrap().0, S_OK);
}

#[test]
fn a_qcow2_node_grows_and_its_export_serves_the_new_range() {
    let img = qcow2_image("q.qcow2", "1M");
    let mut w = spawn();
    let mut dev = w.export(&qcow2_json(&img), &img);
    assert_eq!(w.resize("disk0", 4 << 20), Ok(BlockReply::Done));
    assert_eq!(dev.capacity().unwrap(), (4 << 20) / 512);
    let (st, data) = dev.read(0, 8191, 512).unwrap();
    assert_eq!((st, data.iter().all(|b| *b == 0)), (S_OK, true));
    let pattern = vec![0xa5u8; 4096];
    assert_eq!(dev.write(0, 6144, &pattern).unwrap(), S_OK);
    assert_eq!(dev.read(0, 6144, 4096).unwrap(), (S_OK, pattern));
    assert_eq!(dev.read(0, 8192, 512).unwrap().0, S_IOERR);
}

#[test]
fn nodes_that_cannot_resize_say_why_and_stay_usable() {
    let mut w = spawn();
    let e = w.resize("nope", 4 << 20).unwrap_err();
    assert!(e.desc.contains("nope"), "{}", e.desc);

    let raw = raw_image("fixed.raw", 2 << 20);
    let json = format!(
        r#"{{"driver":"raw","node-name":"fixed","size":1048576,"file":{{"driver":"file","filename":"{}"}}}}"#,
        raw.display()
    );
    let options: BlockdevOptions = serde_json::from_str(&json).unwrap();
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&raw)
        .unwrap();
    let files = vec![FileFd {
        filename: raw.display().to_string(),
        fd_index: 0,
    }];
    let add = BlockRequest::AddNode { options, files };
    assert_eq!(w.call(add, &[f.as_fd()]), Ok(BlockReply::Done));
    let e = w.resize("fixed", 4 << 20).unwrap_err();
    assert_eq!(e.desc, "Cannot resize fixed-size raw disks");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 2 << 20);
}

/// A frontend's handler of the backend channel that counts
/// CONFIG_CHANGE_MSGs.
#[derive(Default)]
struct ConfigChanges(u32);

impl vhost::vhost_user::VhostUserFrontendReqHandlerMut for ConfigChanges {
    fn handle_config_change(&mut self) -> vhost::vhost_user::HandlerResult<u64> {
        self.0 += 1;
        Ok(0)
    }
}

type Channel = vhost::vhost_user::FrontendReqHandler<std::sync::Mutex<ConfigChanges>>;

/// A `vhost` crate frontend on a new connection to export `e0`, with
/// CONFIG, REPLY_ACK and BACKEND_REQ acked and the backend channel passed.
fn frontend_with_channel(w: &mut Worker) -> (vhost::vhost_user::Frontend, Channel) {
    use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures as P};
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::VhostBackend;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let req = BlockRequest::AttachExportConnection { id: "e0".into() };
    assert_eq!(w.call(req, &[theirs.as_fd()]), Ok(BlockReply::Done));
    let mut fe = vhost::vhost_user::Frontend::from_stream(ours, 1);
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    fe.set_features(offered).unwrap();
    let p = fe.get_protocol_features().unwrap();
    assert!(p.contains(P::BACKEND_REQ), "{p:?}");
    fe.set_protocol_features(P::CONFIG | P::REPLY_ACK | P::BACKEND_REQ)
        .unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let handler = Channel::new(std::sync::Arc::new(std::sync::Mutex::new(
        ConfigChanges::default(),
    )))
    .unwrap();
    fe.set_backend_request_fd(&handler.get_tx_raw_fd()).unwrap();
    (fe, handler)
}

fn capacity(fe: &mut vhost::vhost_user::Frontend) -> u64 {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::VhostUserFrontend;
    let (_, c) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    u64::from_le_bytes(c[..8].try_into().unwrap())
}

#[test]
fn a_resize_sends_config_change_on_the_backend_channel_also_after_a_reconnection() {
    let img = raw_image("notify.raw", 1 << 20);
    let mut w = spawn();
    let dev = w.export(&raw_json(&img), &img);
    drop(dev);
    let (mut fe, mut channel) = frontend_with_channel(&mut w);
    assert_eq!(capacity(&mut fe), 2048);
    assert_eq!(w.resize("disk0", 2 << 20), Ok(BlockReply::Done));
    channel.handle_request().unwrap();
    assert_eq!(capacity(&mut fe), 4096);

    // A new connection passes a new channel, which the next resize uses.
    drop(fe);
    let (mut fe, mut channel2) = frontend_with_channel(&mut w);
    assert_eq!(w.resize("disk0", 3 << 20), Ok(BlockReply::Done));
    channel2.handle_request().unwrap();
    assert_eq!(capacity(&mut fe), 6144);
    drop(channel);
}
