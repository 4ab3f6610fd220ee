//! Crash recovery of the devices' backends: loss and restore events, and
//! the reconnect rounds — on every hang-up vcpu-proc reports (a block-proc
//! export or an external backend), and after a block-proc restart for the
//! devices on its exports still without a backend — that retry without a
//! deadline with a capped backoff.

use std::os::fd::AsFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ipc_proto::vcpu::{FdSlot, VcpuReply, VcpuRequest};
use serde_json::json;

use super::{bounded, connect, Backend};
use crate::machine::{event_names, lock, unexpected_reply, Machine};

/// Longest pause between two reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(5);
/// A failed reconnection is logged once every this many attempts.
const RECONNECT_LOG_EVERY: u64 = 20;

/// Reports device `id` as having lost its backend (once per outage).
pub fn report_lost(m: &Machine, id: &str) {
    let fresh = {
        let mut st = lock(&m.devices);
        match st.lost.entry(id.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Instant::now());
                true
            }
        }
    };
    if fresh {
        m.events()
            .emit(event_names::DEVICE_BACKEND_LOST, Some(json!({"id": id})));
    }
}

/// block-proc died: every attached device on an export lost its backend
/// (vcpu-proc reports each too; [`reconnect_exports`] catches any it did
/// not).
pub fn on_block_exit(m: &Machine) {
    let ids: Vec<String> = lock(&m.devices)
        .devices
        .iter()
        .filter(|d| {
            d.attached && matches!(d.backend, Backend::Export { .. } | Backend::Scsi { .. })
        })
        .map(|d| d.spec.id.clone())
        .collect();
    for id in ids {
        report_lost(m, &id);
    }
}

/// vcpu-proc saw device `id`'s backend hang up: reconnect it (an export
/// through a fresh socketpair, an external backend at its path). A late
/// report about a connection already replaced is ignored.
pub fn on_disconnected(m: &Arc<Machine>, id: &str) {
    if !lock(&m.devices).conn_lost(id) {
        tracing::debug!("device {id}: a hang-up of an older connection was reported");
        return;
    }
    tracing::warn!("device {id}: vhost-user backend disconnected");
    report_lost(m, id);
    start_round(m, id);
}

/// vcpu-proc has device `id` on a new backend.
pub fn on_reconnected(m: &Machine, id: &str) {
    let since = lock(&m.devices).lost.remove(id);
    let downtime = since.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0);
    tracing::info!("device {id}: vhost-user backend restored after {downtime} ms");
    m.events().emit(
        event_names::DEVICE_BACKEND_RESTORED,
        Some(json!({"id": id, "downtime-ms": downtime})),
    );
}

/// After a block-proc restart and replay: makes sure every attached device
/// on an export that is still without its backend is being reconnected.
pub fn reconnect_exports(m: &Arc<Machine>) {
    let ids: Vec<String> = {
        let st = lock(&m.devices);
        st.devices
            .iter()
            .filter(|d| {
                d.attached && matches!(d.backend, Backend::Export { .. } | Backend::Scsi { .. })
            })
            .filter(|d| st.lost.contains_key(&d.spec.id))
            .map(|d| d.spec.id.clone())
            .collect()
    };
    for id in ids {
        start_round(m, &id);
    }
}

/// After a net-proc restart and replay: makes sure every attached NIC on
/// a net-proc backend that is still without it is being reconnected.
pub fn reconnect_nics(m: &Arc<Machine>) {
    let ids: Vec<String> = {
        let st = lock(&m.devices);
        st.devices
            .iter()
            .filter(|d| d.attached && matches!(d.backend, Backend::Nic { .. }))
            .map(|d| d.spec.id.clone())
            .collect()
    };
    for id in ids {
        // The restart hung every NIC up: reported lost even if vcpu-proc
        // has not said so yet.
        report_lost(m, &id);
        start_round(m, &id);
    }
}

/// Starts the reconnect round of device `id` in a thread of its own,
/// unless one runs already (it checks, when it has connected, that its
/// connection is still up). One round per device at a time: two would
/// take turns replacing each other's connection.
fn start_round(m: &Arc<Machine>, id: &str) {
    {
        let mut st = lock(&m.devices);
        if !st.reconnecting.insert(id.to_owned()) {
            return;
        }
    }
    let weak = Arc::downgrade(m);
    let owned = id.to_owned();
    let r = std::thread::Builder::new()
        .name("vu-reconnect".into())
        .spawn(move || {
            if !reconnect_loop(&weak, &owned) {
                return;
            }
            if let Some(m) = weak.upgrade() {
                lock(&m.devices).reconnecting.remove(&owned);
            }
        });
    if let Err(e) = r {
        tracing::error!("cannot start the reconnect thread: {e}");
        lock(&m.devices).reconnecting.remove(id);
    }
}

/// Connects device `id` again until vcpu-proc accepts the new backend
/// (and that connection is still up; then the round is over and false is
/// returned), or the device, the machine
/// or vcpu-proc is gone. While block-proc restarts, attempts fail at once
/// and are retried.
fn reconnect_loop(weak: &Weak<Machine>, id: &str) -> bool {
    let mut delay = RECONNECT_FIRST_DELAY;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let Some(m) = weak.upgrade() else {
            return true;
        };
        if m.is_ending() || lock(&m.vcpu).is_none() {
            return true;
        }
        let backend = {
            let st = lock(&m.devices);
            match st.devices.iter().find(|d| d.spec.id == id && d.attached) {
                Some(d) => d.backend.clone(),
                None => return true,
            }
        };
        let attempt = connect(&m, id, &backend).and_then(|s| {
            let req = VcpuRequest::ReconnectVhostUser {
                id: id.to_owned(),
                socket: FdSlot(0),
            };
            bounded(&[&s], || m.vcpu_request_with_fds(req, &[s.as_fd()])).map(|r| (r, s))
        });
        match attempt {
            Ok((VcpuReply::Done, s)) => {
                let mut st = lock(&m.devices);
                st.keep_conn(id, &s);
                // A hang-up reported while this round ran was let pass:
                // if it was about this connection, go on.
                if !st.conn_lost(id) {
                    // Under the same lock: a hang-up reported from now on
                    // starts a new round.
                    st.reconnecting.remove(id);
                    return false;
                }
                drop(st);
                report_lost(&m, id);
            }
            Ok((other, _)) => {
                tracing::error!("device {id}: {}", unexpected_reply(&other).desc);
                return true;
            }
            Err(e) => {
                if lock(&m.vcpu).is_none() {
                    return true;
                }
                if attempts % RECONNECT_LOG_EVERY == 1 {
                    tracing::warn!(
                        "device {id}: reconnecting failed (attempt {attempts}), will retry: {}",
                        e.desc
                    );
                }
            }
        }
        drop(m);
        std::thread::sleep(delay);
        delay = (delay * 2).min(RECONNECT_MAX_DELAY);
    }
}
