//! Fuzzes what a worker or the broker reads from an IPC channel: the
//! bincode decoding (`ipc_proto::codec::decode`) of every channel message
//! type, and the frame reader (`ipc_proto::frame::recv_frame`) on a
//! `UnixStream` pair whose other end wrote the input.
//!
//! Invariants: no panic; a decoded message re-encodes, decodes again and
//! re-encodes to the same bytes.

#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use ipc_proto::block::{BlockEvent, BlockReply, BlockRequest, BlockdevOptions};
use ipc_proto::codec::{decode, encode};
use ipc_proto::frame::recv_frame;
use ipc_proto::handshake::{Hello, HelloReply};
use ipc_proto::net::{NetEvent, NetReply, NetRequest};
use ipc_proto::vcpu::{VcpuEvent, VcpuReply, VcpuRequest};
use ipc_proto::{BrokerMsg, WorkerMsg};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Larger inputs would fill the socket buffer before anyone reads.
const MAX_SOCKET_INPUT: usize = 64 << 10;

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(msg) = decode::<T>(data) else {
        return;
    };
    let first = encode(&msg).expect("a decoded message encodes");
    let again: T = decode(&first).expect("an encoded message decodes");
    let second = encode(&again).expect("a decoded message encodes");
    assert_eq!(first, second, "encoding is not stable");
}

fn frames(data: &[u8]) {
    let data = &data[..data.len().min(MAX_SOCKET_INPUT)];
    let (mut tx, rx) = UnixStream::pair().expect("socketpair");
    tx.write_all(data).expect("write to socketpair");
    tx.shutdown(Shutdown::Write).expect("shutdown");
    // Every frame needs at least its 8-byte header, so this ends.
    while let Ok((payload, _fds)) = recv_frame(&rx) {
        round_trip::<BrokerMsg<VcpuRequest>>(&payload);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Hello>(data);
    round_trip::<HelloReply>(data);
    round_trip::<BrokerMsg<VcpuRequest>>(data);
    round_trip::<BrokerMsg<BlockRequest>>(data);
    round_trip::<BrokerMsg<NetRequest>>(data);
    round_trip::<WorkerMsg<VcpuReply, VcpuEvent>>(data);
    round_trip::<WorkerMsg<BlockReply, BlockEvent>>(data);
    round_trip::<WorkerMsg<NetReply, NetEvent>>(data);
    round_trip::<BlockdevOptions>(data);
    frames(data);
});
