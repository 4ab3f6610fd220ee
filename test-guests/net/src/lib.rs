//! Code of the `net` test guests: a virtio-net driver ([`virtio_net`]),
//! the test frames ([`frame`], shared with the host tests), the
//! exchange ([`exchange`]: pings with sequence numbers, echo of the
//! peers' pings, loss / duplicate / corruption counts, link watching)
//! and the start-up they share ([`start`]: the NIC set up and named).
//!
//! - `net`: a round of pings, then watches the link for a while (a host
//!   test turns it off and on: `set_link`), pings while it is down and a
//!   second round once it is up again; `VERDICT: PASS net` when every
//!   ping of both rounds came back once and intact, and nothing was
//!   answered while the link was down.
//! - `net-loop`: rounds forever with a line of counts after each, for
//!   chaos tests that kill the network backend meanwhile.
//! - `net-pair`: two NICs of one guest pinging each other in turns,
//!   rounds forever with a line of counts per round and pinger (for a
//!   host switch joining the two NICs).
//! - `net-gen`: a traffic generator for benchmarks: on the host's orders
//!   ([`gen_frame`]) it sends frames of a given size as fast as it can, or
//!   counts the ones that arrive, for a given time, and reports the count.

#![no_std]

pub mod clock;
pub mod exchange;
pub mod frame;
pub mod gen_frame;
pub mod start;
pub mod virtio_net;
