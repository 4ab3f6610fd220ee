//! The broker ↔ net-proc channel.
//!
//! net-proc serves vhost-user-net backends ("NIC exports") bound to
//! netdevs. It opens nothing itself: a TAP netdev is one fd per queue the
//! broker opened on `/dev/net/tun` (or the user passed), handed over with
//! [`NetRequest::AddTapNetdev`]. A NIC export has no socket: each
//! frontend connection is one end of a socketpair the broker creates and
//! passes with [`NetRequest::AttachNicConnection`] (as block-proc's
//! `AttachExportConnection`), the other end going to vcpu-proc.
//!
//! Restart: the broker keeps every TAP fd and every export it created and
//! replays them, in creation order, into a restarted net-proc, then hands
//! every NIC a fresh socketpair; the frontend reconnects. Net state that
//! the guest changes (a MAC written through the config space) is reported
//! with [`NetEvent::MacChanged`] so the broker can replay it too.

use serde::{Deserialize, Serialize};

/// A NIC export's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// The NIC (device) id.
    pub id: String,
    /// The netdev (a TAP added with [`NetRequest::AddTapNetdev`]) the NIC
    /// is bound to.
    pub netdev: String,
    /// The MAC address in the config space.
    pub mac: [u8; 6],
    /// Number of rx/tx queue pairs (1 unless multiqueue).
    pub queue_pairs: u16,
    /// The MTU advertised with `VIRTIO_NET_F_MTU`, if any.
    pub mtu: Option<u16>,
    /// Initial link state (the `STATUS` field's LINK_UP bit).
    pub link_up: bool,
}

/// Counters of one NIC export (since net-proc started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStats {
    /// Frames the guest sent that reached the netdev.
    pub tx_packets: u64,
    /// Bytes of those frames (without the vnet header).
    pub tx_bytes: u64,
    /// Guest frames dropped (link down, netdev refused them).
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Bytes of those frames (without the vnet header).
    pub rx_bytes: u64,
    /// Frames from the netdev dropped (no rx buffers, buffers too small,
    /// link down).
    pub rx_dropped: u64,
    /// Descriptor chains refused as malformed (bad length, bounds or
    /// direction, loops).
    pub bad_chains: u64,
}

/// Requests the broker sends to net-proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetRequest {
    /// Answer with [`NetReply::Alive`] (supervisor health check).
    Ping,
    /// Trace points: their states, or the states the broker wants
    /// (with `to_file`, the frame's first fd is the trace file).
    Trace(crate::trace::TraceRequest),
    /// A TAP netdev: the frame's fds are its queues' TAP fds (at least
    /// one; one per queue pair of a multiqueue TAP).
    AddTapNetdev {
        /// The netdev id.
        id: String,
        /// The TAP was opened with `IFF_VNET_HDR`: frames carry a virtio
        /// net header, offloads can be passed through.
        vnet_hdr: bool,
    },
    /// Remove a netdev no NIC is bound to.
    RemoveNetdev {
        /// The netdev id.
        id: String,
    },
    /// Create a vhost-user-net export (no fd: connections come with
    /// [`NetRequest::AttachNicConnection`]).
    AddNic(NicSpec),
    /// Remove a NIC export (its frontend is disconnected).
    RemoveNic {
        /// The NIC id.
        id: String,
    },
    /// Serve the connected socket attached as fd 0 as a frontend
    /// connection of NIC `id`.
    AttachNicConnection {
        /// The NIC id.
        id: String,
    },
    /// Set a NIC's link state; a connected frontend that gave a backend
    /// channel is told the config space changed.
    SetLink {
        /// The NIC id.
        id: String,
        /// True: up.
        up: bool,
    },
    /// A NIC's counters.
    QueryStats {
        /// The NIC id.
        id: String,
    },
    /// A switch request (see [`crate::rocker`]).
    Rocker(crate::rocker::RockerRequest),
    /// A netdev joining a NIC to a switch port, without a host side (no
    /// fds): the NIC on it is a port of the switch listing it, frames go
    /// ring to ring inside net-proc.
    AddSwitchPortNetdev {
        /// The netdev id.
        id: String,
    },
    /// Announce NIC `id`'s MAC once (QEMU's `qemu_announce_self` round,
    /// after a migration or for `announce-self`): a 60-byte RARP frame
    /// from `mac` to the broadcast address goes out the NIC's netdev as
    /// if the guest had sent it (into the TAP, or into the switch port).
    Announce {
        /// The NIC id.
        id: String,
        /// The MAC announced (the NIC's `mac=`, as QEMU's).
        mac: [u8; 6],
    },
    // The test-only variants come last, so a worker built without the
    // test hooks decodes every other variant alike.
    /// Test hooks only: run an escape attempt inside the sandboxed worker
    /// (answered by [`NetReply::EscapeOutcome`], or not at all: seccomp
    /// kills the worker).
    #[cfg(feature = "test-hooks")]
    TestEscape(crate::escape::Escape),
}

/// Replies of net-proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetReply {
    /// net-proc is alive and serving.
    Alive,
    /// Answer to a `Trace` request: the process's trace points.
    Trace(crate::trace::TraceReply),
    /// The request was carried out.
    Done,
    /// Answer to [`NetRequest::QueryStats`].
    Stats(NicStats),
    /// Answer to [`NetRequest::Rocker`].
    Rocker(crate::rocker::RockerReply),
    // Test-only variants last, as in the request enum.
    /// Answer to [`NetRequest::TestEscape`].
    #[cfg(feature = "test-hooks")]
    EscapeOutcome(crate::escape::Outcome),
}

/// Events net-proc reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetEvent {
    /// A backend's link changed state.
    LinkChanged {
        /// The netdev id.
        id: String,
        /// True when up.
        up: bool,
    },
    /// The guest wrote a new MAC into a NIC's config space.
    MacChanged {
        /// The NIC id.
        id: String,
        /// The new MAC.
        mac: [u8; 6],
    },
    /// A NIC's frontend connected.
    NicConnected {
        /// The NIC id.
        id: String,
    },
    /// A NIC's frontend disconnected.
    NicDisconnected {
        /// The NIC id.
        id: String,
    },
}
