//! The desired I/O limits of the block devices, kept beside the block
//! graph in [`super::block_state`] and replayed into a restarted
//! block-proc: throttle group memberships and limits
//! (`block_set_io_throttle`, `-drive throttling.*`) and write thresholds
//! (`block-set-write-threshold`, cleared here when block-proc reports
//! the threshold crossed, as it is there).

use std::collections::BTreeMap;

use ipc_proto::block::{BlockReply, BlockRequest, ThrottleConfig};
use ipc_proto::FlatError;

use super::{block_state, lock, BlockLink, Machine};

/// One device's throttling: its group and the group's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// Throttle group name.
    pub group: String,
    /// The group's limits (the last set by any member, as in QEMU).
    pub config: ThrottleConfig,
}

/// Desired limits.
#[derive(Debug, Default)]
pub struct Limits {
    /// Throttled devices by qdev id.
    devices: BTreeMap<String, Throttle>,
    /// `-drive throttling.*` by drive id, taken by the device that uses
    /// the drive.
    drives: BTreeMap<String, Throttle>,
    /// Write thresholds by node name (never 0).
    thresholds: BTreeMap<String, u64>,
}

/// The export id of device `id` (as the device helper names it).
pub fn export_id(device: &str) -> String {
    format!("device.{device}")
}

impl Limits {
    /// Device `id`'s throttling, with its group's current limits.
    pub fn throttle(&self, device: &str) -> Option<Throttle> {
        let t = self.devices.get(device)?;
        Some(t.clone())
    }

    /// The write threshold of `node` (0: none).
    pub fn threshold(&self, node: &str) -> u64 {
        self.thresholds.get(node).copied().unwrap_or(0)
    }

    /// Record `-drive`'s throttling for drive `id`.
    pub fn set_drive(&mut self, drive: &str, t: Throttle) {
        self.drives.insert(drive.to_string(), t);
    }

    /// Record device `id` in group `t.group` with its limits (which are
    /// now every member's), or (None) not throttled.
    pub fn set_device(&mut self, device: &str, t: Option<Throttle>) {
        match t {
            Some(t) => {
                for other in self.devices.values_mut() {
                    if other.group == t.group {
                        other.config = t.config;
                    }
                }
                self.devices.insert(device.to_string(), t);
            }
            None => {
                self.devices.remove(device);
            }
        }
    }

    /// Record a write threshold (0 clears it).
    pub fn set_threshold(&mut self, node: &str, threshold: u64) {
        if threshold == 0 {
            self.thresholds.remove(node);
        } else {
            self.thresholds.insert(node.to_string(), threshold);
        }
    }

    /// Forget the thresholds of deleted nodes.
    pub fn forget_nodes(&mut self, node: &str, children: &[String]) {
        self.thresholds.remove(node);
        for c in children {
            self.thresholds.remove(c);
        }
    }

    /// Forget device `id` (its export is gone).
    pub fn forget_device(&mut self, device: &str) {
        self.devices.remove(device);
    }

    /// The requests that bring a fresh block-proc to these limits, each
    /// with the record it comes from.
    fn requests(&self) -> Vec<(Record, BlockRequest)> {
        let throttles = self.devices.iter().map(|(d, t)| {
            let req = BlockRequest::SetThrottle {
                id: export_id(d),
                group: t.group.clone(),
                config: Some(t.config),
            };
            (Record::Device(d.clone()), req)
        });
        let thresholds = self.thresholds.iter().map(|(n, &t)| {
            let req = BlockRequest::SetWriteThreshold {
                node_name: n.clone(),
                threshold: t,
            };
            (Record::Threshold(n.clone()), req)
        });
        throttles.chain(thresholds).collect()
    }

    fn forget(&mut self, r: &Record) {
        match r {
            Record::Device(d) => self.forget_device(d),
            Record::Threshold(n) => self.set_threshold(n, 0),
        }
    }
}

/// Which record a replayed request comes from.
#[derive(Debug)]
enum Record {
    Device(String),
    Threshold(String),
}

fn done(r: BlockReply) -> Result<(), FlatError> {
    crate::machine::expect_done(r)
}

/// Sends `req` to block-proc (waiting for a restarting one), expecting
/// `Done`.
pub fn send(m: &Machine, req: BlockRequest) -> Result<(), FlatError> {
    m.across_block_restarts(|| m.block_request(req.clone()).and_then(done))
}

/// After the export of device `id` (using `drive`) was created: takes the
/// drive's `-drive throttling.*` if the device has no throttling yet, and
/// applies the device's throttling. A failure is logged: the next replay
/// applies it.
pub fn export_added(m: &Machine, device: &str, drive: &str) {
    let t = {
        let shared = block_state::state(m);
        let mut st = lock(&shared);
        let l = &mut st.limits;
        if !l.devices.contains_key(device) {
            if let Some(t) = l.drives.get(drive).cloned() {
                l.set_device(device, Some(t));
            }
        }
        l.throttle(device)
    };
    let Some(t) = t else { return };
    let req = BlockRequest::SetThrottle {
        id: export_id(device),
        group: t.group,
        config: Some(t.config),
    };
    if let Err(e) = m.block_request(req).and_then(done) {
        tracing::warn!("device {device}: throttling not applied yet: {}", e.desc);
    }
}

/// Brings a restarted block-proc (through `link`, after its nodes and
/// exports) to the recorded limits. A limit the worker refuses (its node
/// or export is gone) is logged and forgotten rather than failing the
/// restart; a dead link fails it, as the node replay does.
pub fn replay_on(m: &Machine, link: &BlockLink) -> Result<(), FlatError> {
    let reqs = lock(&block_state::state(m)).limits.requests();
    for (rec, r) in reqs {
        if let Err(e) = link.request(r, &[]).and_then(done) {
            if link.is_broken() {
                return Err(e);
            }
            tracing::warn!("limit not restored, forgotten: {rec:?}: {}", e.desc);
            lock(&block_state::state(m)).limits.forget(&rec);
        }
    }
    Ok(())
}

/// block-proc reported the threshold of `node` crossed: it is cleared
/// there, so here too.
pub fn threshold_crossed(m: &Machine, node: &str) {
    lock(&block_state::state(m)).limits.set_threshold(node, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_config_set_by_one_member_is_every_members_and_replayed() {
        let mut l = Limits::default();
        let mut c = ThrottleConfig::default();
        c.buckets[0].avg = 100;
        let t = |g: &str, c| Throttle {
            group: g.into(),
            config: c,
        };
        l.set_device("a", Some(t("g", c)));
        l.set_device("b", Some(t("h", c)));
        c.buckets[0].avg = 200;
        l.set_device("c", Some(t("g", c)));
        assert_eq!(l.throttle("a").unwrap().config.buckets[0].avg, 200);
        assert_eq!(l.throttle("b").unwrap().config.buckets[0].avg, 100);
        l.set_threshold("n", 4096);
        let reqs: Vec<BlockRequest> = l.requests().into_iter().map(|(_, r)| r).collect();
        assert_eq!(reqs.len(), 4);
        assert!(reqs.contains(&BlockRequest::SetWriteThreshold {
            node_name: "n".into(),
            threshold: 4096
        }));
        l.set_threshold("n", 0);
        l.forget_device("a");
        assert_eq!(l.requests().len(), 2);
    }
}
