//! net-proc under its control channel as the broker drives it, a host TAP
//! and the harness as the NIC's frontend.
#![allow(dead_code)]

pub mod tap;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use ipc_proto::net::{NetEvent, NetReply, NetRequest, NicSpec, NicStats};
use ipc_proto::WorkerKind;
use vhost_user_harness::worker::ControlledWorker;
use vhost_user_harness::{NetDevice, NetOptions};

/// The test NIC's MAC.
pub const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

vhost_user_harness::controlled_worker!(
    /// A running net-proc; killed on drop.
    Worker,
    NetRequest,
    NetReply,
    NetEvent
);

/// Starts net-proc sandboxed on a socketpair control channel.
pub fn spawn() -> Worker {
    let bin = Path::new(env!("CARGO_BIN_EXE_net-proc"));
    Worker(ControlledWorker::spawn(bin, WorkerKind::Net, 61003).unwrap())
}

impl Worker {
    /// Adds TAP netdev `id` over `fds`.
    pub fn add_tap(&mut self, id: &str, fds: &[OwnedFd], vnet_hdr: bool) {
        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let req = NetRequest::AddTapNetdev {
            id: id.into(),
            vnet_hdr,
        };
        assert_eq!(self.call(req, &b), Ok(NetReply::Done));
    }

    /// Adds NIC `id` on `netdev`.
    pub fn add_nic(&mut self, id: &str, netdev: &str, queue_pairs: u16) {
        let spec = NicSpec {
            id: id.into(),
            netdev: netdev.into(),
            mac: MAC,
            queue_pairs,
            mtu: Some(9000),
            link_up: true,
        };
        assert_eq!(self.call(NetRequest::AddNic(spec), &[]), Ok(NetReply::Done));
    }

    /// A fresh connection to NIC `id`: the frontend's end.
    pub fn connection(&mut self, id: &str) -> UnixStream {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let req = NetRequest::AttachNicConnection { id: id.into() };
        assert_eq!(self.call(req, &[theirs.as_fd()]), Ok(NetReply::Done));
        ours
    }

    /// Connects the harness to NIC `id`.
    pub fn attach(&mut self, id: &str, opts: NetOptions) -> NetDevice {
        let s = self.connection(id);
        NetDevice::from_stream(s, opts).unwrap()
    }

    /// NIC `id`'s counters.
    pub fn stats(&mut self, id: &str) -> NicStats {
        match self.call(NetRequest::QueryStats { id: id.into() }, &[]) {
            Ok(NetReply::Stats(s)) => s,
            r => panic!("{r:?}"),
        }
    }

    /// Still alive and answering.
    pub fn ping(&mut self) {
        assert_eq!(self.call(NetRequest::Ping, &[]), Ok(NetReply::Alive));
    }
}
