//! A NIC on an external vhost-user backend announcing its MAC after a
//! migration (or on `announce-self`): the frontend asks the backend to
//! broadcast the RARP (VHOST_USER_SEND_RARP, QEMU's
//! `vhost_user_migration_done`), since the NIC's frames never pass
//! through bulkhead. A request on the session thread like the others.
//!
//! QEMU sends nothing when the guest acked VIRTIO_NET_F_GUEST_ANNOUNCE
//! (its virtio-net model then asks the guest to announce itself through
//! the config space). bulkhead's frontend does not raise that request —
//! the backend owns the config space and the control queue — so the
//! backend is asked in every case; a guest that also announces only
//! repeats the news.

use super::{request_failed, VhostUserDevice};
use crate::virtio::session::Pending;
use crate::virtio::vhost_user::{Connection, VhostUserError};

impl VhostUserDevice {
    /// Posts SEND_RARP for `mac`; None when the device has no connected
    /// backend. The result says whether the backend took it (a backend
    /// without VHOST_USER_PROTOCOL_F_RARP refuses: MissingFeature).
    pub fn send_rarp(&self, mac: [u8; 6]) -> Option<Pending<Result<(), VhostUserError>>> {
        let session = self.live_session()?;
        let id = self.id.clone();
        Some(session.post("SEND_RARP", move |conn: &mut Connection| {
            let r = conn.send_rarp(mac);
            if let Err(e) = &r {
                if e.connection_lost() {
                    request_failed(&id, conn, e);
                }
            }
            r
        }))
    }
}
