//! The request loop of net-proc.

use std::sync::mpsc;
use std::sync::Arc;

use ipc_proto::net::{NetEvent, NetReply, NetRequest};
use ipc_proto::worker::WorkerChannel;
use ipc_proto::{trace_point, BrokerMsg, ChannelError, FlatError, WorkerMsg};

use crate::nics::Nics;
use crate::rocker::Switches;
use crate::trace;

fn in_switch(netdev: &str, switch: &str) -> FlatError {
    FlatError::generic(format!("netdev '{netdev}' is a port of switch {switch}"))
}

/// Serves requests until the broker closes the channel (a clean end).
pub fn serve(chan: WorkerChannel<NetRequest, NetReply, NetEvent>) -> Result<(), ChannelError> {
    let chan = Arc::new(chan);
    let (tx, rx) = mpsc::channel::<NetEvent>();
    let ev_chan = chan.clone();
    std::thread::spawn(move || {
        for ev in rx {
            if ev_chan.send(&WorkerMsg::Event(ev), &[]).is_err() {
                return;
            }
        }
    });
    let mut nics = Nics::new(tx);
    let mut switches = Switches::default();
    loop {
        let (msg, fds) = match chan.recv() {
            Ok(m) => m,
            Err(e) if e.is_closed() => return Ok(()),
            Err(e) => return Err(e),
        };
        match msg {
            BrokerMsg::Request { id, body } => {
                trace_point!(trace::net_ipc_request(id, body));
                let result = match body {
                    NetRequest::Ping => Ok(NetReply::Alive),
                    NetRequest::Trace(t) => {
                        ipc_proto::trace::serve(crate::trace::POINTS, t, fds).map(NetReply::Trace)
                    }
                    NetRequest::Rocker(r) => switches
                        .handle(r, &mut |id| nics.switch_port(id))
                        .map(NetReply::Rocker)
                        .map_err(Into::into),
                    #[cfg(feature = "test-hooks")]
                    NetRequest::TestEscape(e) => {
                        Ok(NetReply::EscapeOutcome(sandbox::escape::attempt(e)))
                    }
                    NetRequest::AddTapNetdev { id, vnet_hdr } => nics.add_tap(id, vnet_hdr, fds),
                    NetRequest::RemoveNetdev { id } => match switches.using(&id) {
                        Some(sw) => Err(in_switch(&id, sw)),
                        None => nics.remove_netdev(&id),
                    },
                    NetRequest::AddNic(spec) => match switches.using(&spec.netdev) {
                        Some(sw) if !nics.is_switch_port(&spec.netdev) => {
                            Err(in_switch(&spec.netdev, sw))
                        }
                        Some(_) | None => nics.add_nic(spec),
                    },
                    NetRequest::AddSwitchPortNetdev { id } => nics.add_switch_port(id, fds),
                    NetRequest::RemoveNic { id } => nics.remove_nic(&id),
                    NetRequest::AttachNicConnection { id } => nics.attach(&id, fds),
                    NetRequest::SetLink { id, up } => nics.set_link(&id, up),
                    NetRequest::QueryStats { id } => nics.stats(&id),
                    NetRequest::Announce { id, mac } => nics.announce(&id, mac),
                };
                trace_point!(trace::net_ipc_reply(id, result.is_ok()));
                chan.send(&WorkerMsg::Reply { id, result }, &[])?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use ipc_proto::Channel;

    use super::*;

    #[test]
    fn ping_is_answered_and_eof_ends_cleanly() {
        let (a, b) = UnixStream::pair().unwrap();
        let broker: Channel<BrokerMsg<NetRequest>, WorkerMsg<NetReply, NetEvent>> = Channel::new(a);
        let worker = Channel::new(b);
        let t = std::thread::spawn(move || serve(worker));
        broker
            .send(
                &BrokerMsg::Request {
                    id: 3,
                    body: NetRequest::Ping,
                },
                &[],
            )
            .unwrap();
        assert_eq!(
            broker.recv().unwrap().0,
            WorkerMsg::Reply {
                id: 3,
                result: Ok(NetReply::Alive)
            }
        );
        drop(broker);
        assert!(t.join().unwrap().is_ok());
    }
}
