//! net-proc under its control channel as the broker drives it, a host TAP
//! and the harness as the NIC's frontend.
#![allow(dead_code)]

pub mod tap;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};

use ipc_proto::net::{NetEvent, NetReply, NetRequest, NicSpec, NicStats};
use ipc_proto::worker::BrokerChannel;
use ipc_proto::{BrokerMsg, FlatError, WorkerKind, WorkerMsg};
use vhost_user_harness::{NetDevice, NetOptions};

/// The broker's end of the control channel.
pub type Chan = BrokerChannel<NetRequest, NetReply, NetEvent>;

/// The test NIC's MAC.
pub const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// A running net-proc; killed on drop.
pub struct Worker {
    pub child: Child,
    pub chan: Chan,
    pub next: u64,
    pub events: Vec<NetEvent>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts net-proc sandboxed on a socketpair control channel.
pub fn spawn() -> Worker {
    let (broker, worker) = UnixStream::pair().unwrap();
    nix::fcntl::fcntl(
        &worker,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&worker);
    let child = Command::new(env!("CARGO_BIN_EXE_net-proc"))
        .arg("--control-fd")
        .arg(fd.to_string())
        .args(["--sandbox-uid", "61003"])
        .spawn()
        .unwrap();
    drop(worker);
    let (chan, hello) = ipc_proto::worker::accept(broker, WorkerKind::Net).unwrap();
    assert_eq!(hello.pid, child.id());
    Worker {
        child,
        chan,
        next: 1,
        events: Vec::new(),
    }
}

impl Worker {
    /// One request and its reply (events kept aside).
    pub fn call(
        &mut self,
        body: NetRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<NetReply, FlatError> {
        let id = self.next;
        self.next += 1;
        self.chan
            .send(&BrokerMsg::Request { id, body }, fds)
            .unwrap();
        loop {
            match self.chan.recv().unwrap().0 {
                WorkerMsg::Reply { id: r, result } if r == id => return result,
                WorkerMsg::Reply { .. } => panic!("reply out of order"),
                WorkerMsg::Event(e) => self.events.push(e),
            }
        }
    }

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
