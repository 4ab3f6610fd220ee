//! Crash recovery of the devices' backends: loss and restore events, and
//! the reconnect rounds — after a block-proc restart for the devices on its
//! exports, on a hang-up for external backends — that retry without a
//! deadline with a capped backoff.

use std::os::fd::AsFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ipc_proto::vcpu::{FdSlot, VcpuReply, VcpuRequest};
use serde_json::json;

use super::{bounded, connect, generic, Backend};
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

/// block-proc died: every attached device on an export lost its backend.
pub fn on_block_exit(m: &Machine) {
    let ids: Vec<String> = lock(&m.devices)
        .devices
        .iter()
        .filter(|d| d.attached && matches!(d.backend, Backend::Export { .. }))
        .map(|d| d.spec.id.clone())
        .collect();
    for id in ids {
        report_lost(m, &id);
    }
}

/// vcpu-proc saw device `id`'s backend hang up.
pub fn on_disconnected(m: &Arc<Machine>, id: &str) {
    tracing::warn!("device {id}: vhost-user backend disconnected");
    report_lost(m, id);
    let external = lock(&m.devices)
        .devices
        .iter()
        .find(|d| d.spec.id == id)
        .is_some_and(|d| matches!(d.backend, Backend::External { .. }));
    if external {
        spawn_reconnect(m, vec![id.to_owned()], None);
    }
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

/// After a block-proc restart and replay: reconnects every attached
/// device on an export (in a thread of its own).
pub fn reconnect_exports(m: &Arc<Machine>) {
    let (ids, generation) = {
        let mut st = lock(&m.devices);
        st.generation += 1;
        let ids: Vec<String> = st
            .devices
            .iter()
            .filter(|d| d.attached && matches!(d.backend, Backend::Export { .. }))
            .map(|d| d.spec.id.clone())
            .collect();
        (ids, st.generation)
    };
    if !ids.is_empty() {
        spawn_reconnect(m, ids, Some(generation));
    }
}

/// Reconnects `ids` in a thread; with `generation`, the devices are on
/// block-proc exports and a newer restart takes over.
fn spawn_reconnect(m: &Arc<Machine>, ids: Vec<String>, generation: Option<u64>) {
    let weak = Arc::downgrade(m);
    let r = std::thread::Builder::new()
        .name("vu-reconnect".into())
        .spawn(move || {
            for id in ids {
                reconnect_loop(&weak, &id, generation);
            }
        });
    if let Err(e) = r {
        tracing::error!("cannot start the reconnect thread: {e}");
    }
}

/// Connects device `id` again until vcpu-proc accepts the new backend,
/// the device or the machine is gone, or (for a block-proc export) the
/// block worker is down again: its restart starts a new round.
fn reconnect_loop(weak: &Weak<Machine>, id: &str, generation: Option<u64>) {
    let mut delay = RECONNECT_FIRST_DELAY;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let Some(m) = weak.upgrade() else { return };
        if m.is_ending() {
            return;
        }
        if generation.is_some() && lock(&m.block).is_none() {
            return;
        }
        let backend = {
            let st = lock(&m.devices);
            if generation.is_some_and(|g| g != st.generation) {
                return;
            }
            match st.devices.iter().find(|d| d.spec.id == id) {
                Some(d) => d.backend.clone(),
                None => return,
            }
        };
        let attempt = connect(&backend)
            .map_err(|e| generic(format!("connect: {e}")))
            .and_then(|s| {
                let req = VcpuRequest::ReconnectVhostUser {
                    id: id.to_owned(),
                    socket: FdSlot(0),
                };
                bounded(&[&s], || m.vcpu_request_with_fds(req, &[s.as_fd()]))
            });
        match attempt {
            Ok(VcpuReply::Done) => return,
            Ok(other) => {
                tracing::error!("device {id}: {}", unexpected_reply(&other).desc);
                return;
            }
            Err(e) => {
                if lock(&m.vcpu).is_none() {
                    return;
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
