//! QEMU's self-announcement (`net/announce.c`): after an incoming
//! migration completes, and on `announce-self`, every NIC's MAC is
//! announced several times with growing gaps, so the switches on the way
//! learn where the guest lives now. A round announces each NIC once (in
//! creation order, QEMU's `qemu_foreach_nic`); the first round is at
//! once, the gap after round k (from 1) is `initial + (k - 1) * step` ms,
//! `max` when that is larger or negative.
//!
//! How a NIC is announced depends on who carries its frames:
//! - a net-proc NIC (TAP or switch port): net-proc sends QEMU's RARP frame
//!   out its netdev (`NetRequest::Announce`);
//! - a NIC on an external `-netdev vhost-user` backend: vcpu-proc asks the
//!   backend (VHOST_USER_SEND_RARP, `VcpuRequest::SendRarp`); a backend
//!   without VHOST_USER_PROTOCOL_F_RARP cannot, which is logged once per
//!   NIC, as QEMU prints "Vhost user backend fails to broadcast fake RARP".
//!
//! The MAC is the NIC's `mac=` (or QEMU's default), as QEMU's
//! `nic->conf->macaddr`. A NIC whose link is down sends nothing, as in
//! QEMU. The timers are named: `announce-self` with an `id` replaces the
//! running timer of that id (QEMU's named timers, "" without one); the
//! incoming migration's timer is a timer of its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ipc_proto::net::{NetReply, NetRequest};
use ipc_proto::vcpu::VcpuRequest;
use ipc_proto::FlatError;

use super::devices::Backend;
use super::{lock, Machine};

/// QEMU's `AnnounceParameters` (times in ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    /// Gap after the first round.
    pub initial: i64,
    /// Largest gap.
    pub max: i64,
    /// Rounds (0: none).
    pub rounds: u64,
    /// Growth of the gap per round.
    pub step: i64,
    /// Only the NICs of these ids (all when None).
    pub interfaces: Option<Vec<String>>,
}

impl AnnounceParams {
    /// The gap after round `k` (from 1), QEMU's `qemu_announce_timer_step`.
    pub fn gap_after(&self, k: u64) -> Duration {
        let k = i64::try_from(k).unwrap_or(i64::MAX);
        let gap = (k - 1)
            .checked_mul(self.step)
            .and_then(|x| x.checked_add(self.initial))
            .filter(|g| (0..=self.max).contains(g))
            .unwrap_or(self.max);
        Duration::from_millis(u64::try_from(gap).unwrap_or(0))
    }

    fn covers(&self, nic: &str) -> bool {
        self.interfaces
            .as_ref()
            .is_none_or(|l| l.iter().any(|n| n == nic))
    }
}

/// Which timer: the incoming migration's, or `announce-self`'s of an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TimerName {
    /// The one after an incoming migration.
    Migration,
    /// `announce-self`'s (`""` without an `id`).
    Named(String),
}

#[derive(Debug, Default)]
struct Timers {
    /// The generation each timer runs under; a thread whose generation
    /// is no longer its timer's stops.
    running: HashMap<TimerName, u64>,
    next: u64,
}

/// The running announcement timers of a machine.
#[derive(Debug, Default)]
pub struct Announcer {
    timers: Mutex<Timers>,
    changed: Condvar,
    /// NICs whose backend could not announce (logged once each).
    warned: Mutex<HashSet<String>>,
}

impl Announcer {
    fn current(&self, name: &TimerName, generation: u64) -> bool {
        lock(&self.timers).running.get(name) == Some(&generation)
    }

    /// Waits `gap`, or less if the timer was replaced; true if it still
    /// runs.
    fn wait(&self, name: &TimerName, generation: u64, gap: Duration) -> bool {
        let deadline = std::time::Instant::now() + gap;
        let mut t = lock(&self.timers);
        loop {
            if t.running.get(name) != Some(&generation) {
                return false;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return true;
            }
            t = self
                .changed
                .wait_timeout(t, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn finish(&self, name: &TimerName, generation: u64) {
        let mut t = lock(&self.timers);
        if t.running.get(name) == Some(&generation) {
            t.running.remove(name);
        }
    }
}

/// Starts (or restarts) timer `name` with `params`: the first round runs
/// on the timer's thread at once. Zero rounds only stop the timer.
pub fn start(m: &Machine, name: TimerName, params: AnnounceParams) -> Result<(), FlatError> {
    let a = &m.announce;
    let generation = {
        let mut t = lock(&a.timers);
        t.next += 1;
        let g = t.next;
        if params.rounds == 0 {
            t.running.remove(&name);
        } else {
            t.running.insert(name.clone(), g);
        }
        g
    };
    a.changed.notify_all();
    if params.rounds == 0 {
        return Ok(());
    }
    let me = m
        .arc()
        .ok_or_else(|| FlatError::generic("the VM is shutting down"))?;
    std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || run(&me, &name, generation, &params))
        .map_err(|e| FlatError::generic(format!("cannot start the announcement: {e}")))?;
    Ok(())
}

fn run(m: &Machine, name: &TimerName, generation: u64, params: &AnnounceParams) {
    for k in 1..=params.rounds {
        if !m.announce.current(name, generation) || m.is_ending() {
            return;
        }
        round(m, params);
        if k == params.rounds || !m.announce.wait(name, generation, params.gap_after(k)) {
            break;
        }
    }
    m.announce.finish(name, generation);
}

/// A NIC to announce and how.
enum Nic {
    /// net-proc carries its frames.
    NetProc { id: String, mac: [u8; 6] },
    /// An external vhost-user backend does.
    External { id: String, mac: [u8; 6] },
}

fn nics(m: &Machine, params: &AnnounceParams) -> Vec<Nic> {
    // The devices' lock before the netdevs' (the order `device_add` takes).
    let found: Vec<(String, [u8; 6], bool)> = lock(&m.devices)
        .devices()
        .iter()
        .filter(|d| d.ready && d.spec.netdev.is_some() && params.covers(&d.spec.id))
        .filter_map(|d| {
            let net_proc = match &d.backend {
                Backend::Nic { .. } => true,
                Backend::External { .. } => false,
                Backend::Export { .. } | Backend::Scsi { .. } => return None,
            };
            Some((d.spec.id.clone(), d.spec.mac?, net_proc))
        })
        .collect();
    let netdevs = lock(&m.netdevs);
    found
        .into_iter()
        .filter_map(|(id, mac, net_proc)| {
            if !net_proc {
                return Some(Nic::External { id, mac });
            }
            netdevs
                .nic(&id)
                .filter(|n| n.link_up)
                .map(|_| Nic::NetProc { id, mac })
        })
        .collect()
}

/// One round: every NIC announced once.
fn round(m: &Machine, params: &AnnounceParams) {
    for nic in nics(m, params) {
        let (id, r) = match nic {
            Nic::NetProc { id, mac } => {
                let req = NetRequest::Announce {
                    id: id.clone(),
                    mac,
                };
                let r = match crate::machine::netdevs::worker::request_if_running(m, req) {
                    // A restarting net-proc misses this round, not the next.
                    None => Ok(()),
                    Some(Ok(NetReply::Done)) => Ok(()),
                    Some(Ok(
                        other @ (NetReply::Alive
                        | NetReply::Trace(_)
                        | NetReply::Stats(_)
                        | NetReply::Rocker(_)),
                    )) => Err(super::unexpected_reply(&other)),
                    #[cfg(feature = "test-hooks")]
                    Some(Ok(other @ NetReply::EscapeOutcome(_))) => {
                        Err(super::unexpected_reply(&other))
                    }
                    Some(Err(e)) => Err(e),
                };
                (id, r)
            }
            Nic::External { id, mac } => {
                let r = m
                    .vcpu_request(VcpuRequest::SendRarp {
                        id: id.clone(),
                        mac,
                    })
                    .and_then(super::expect_vcpu_done);
                (id, r)
            }
        };
        if let Err(e) = r {
            if lock(&m.announce.warned).insert(id.clone()) {
                tracing::warn!("NIC '{id}' could not announce its MAC: {}", e.desc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(initial: i64, max: i64, rounds: u64, step: i64) -> AnnounceParams {
        AnnounceParams {
            initial,
            max,
            rounds,
            step,
            interfaces: None,
        }
    }

    #[test]
    fn qemus_default_gaps_grow_by_step_from_initial() {
        let p = params(50, 550, 5, 100);
        let gaps: Vec<u64> = (1..5).map(|k| p.gap_after(k).as_millis() as u64).collect();
        assert_eq!(gaps, [50, 150, 250, 350]);
    }

    #[test]
    fn gaps_past_max_or_below_zero_are_max() {
        let p = params(400, 550, 5, 100);
        assert_eq!(p.gap_after(3), Duration::from_millis(550));
        let p = params(-500, 300, 5, 100);
        assert_eq!(p.gap_after(1), Duration::from_millis(300));
        assert_eq!(p.gap_after(7), Duration::from_millis(100));
        let p = params(10, -1, 5, 100);
        assert_eq!(p.gap_after(1), Duration::ZERO);
        let p = params(i64::MAX, 550, 5, i64::MAX);
        assert_eq!(p.gap_after(3), Duration::from_millis(550));
    }

    #[test]
    fn interfaces_name_the_nics_announced() {
        let mut p = params(0, 0, 1, 1);
        assert!(p.covers("nic0"));
        p.interfaces = Some(vec!["nic1".into()]);
        assert!(!p.covers("nic0"));
        assert!(p.covers("nic1"));
    }
}
