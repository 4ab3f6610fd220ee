//! A controller from the broker's [`ScsiExportSpec`]: every unit checked
//! (unique ids and addresses, block sizes, a CD never writable, the media
//! found in the graph) before anything is built.

use std::collections::HashSet;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use ipc_proto::scsi::{ScsiExportSpec, ScsiLunKind};

use super::lun::{Lun, Notifier};
use super::target::Targets;
use super::{ScsiDevice, ScsiError};
use crate::block::Graph;
use crate::vhost::export::ExportEvent;

/// Most request queues of one controller.
pub const MAX_REQUEST_QUEUES: u16 = 64;

/// The controller `spec` describes, its media looked up in `graph`.
pub fn build(
    spec: &ScsiExportSpec,
    graph: &Graph,
    events: Option<Sender<ExportEvent>>,
) -> Result<ScsiDevice, ScsiError> {
    let bad = |m: String| Err(ScsiError::BadSpec(m));
    if spec.num_request_queues == 0 || spec.num_request_queues > MAX_REQUEST_QUEUES {
        return bad(format!(
            "num_queues must be between 1 and {MAX_REQUEST_QUEUES}"
        ));
    }
    let mut ids = HashSet::new();
    let mut addrs = HashSet::new();
    let notifier = Notifier {
        export_id: spec.id.clone(),
        events,
    };
    let mut luns = Vec::with_capacity(spec.luns.len());
    for l in &spec.luns {
        if !ids.insert(l.device_id.as_str()) {
            return bad(format!("duplicate unit '{}'", l.device_id));
        }
        if l.lun > 16383 || !addrs.insert((l.target, l.lun)) {
            return bad(format!(
                "unit '{}': scsi-id {} lun {} is taken or out of range",
                l.device_id, l.target, l.lun
            ));
        }
        match (l.kind, l.logical_block_size) {
            (ScsiLunKind::Cd, 2048) | (ScsiLunKind::Hd, 512 | 4096) => {}
            (ScsiLunKind::Cd | ScsiLunKind::Hd, n) => {
                return bad(format!("unit '{}': logical block size {n}", l.device_id))
            }
        }
        if l.kind == ScsiLunKind::Cd && l.writable {
            return bad(format!("unit '{}': a CD-ROM is read-only", l.device_id));
        }
        let medium = match &l.node_name {
            Some(n) => {
                let node = graph
                    .get(n)
                    .ok_or_else(|| ScsiError::NoSuchNode(n.clone()))?;
                if l.writable && node.read_only {
                    return bad(format!("unit '{}': node '{n}' is read-only", l.device_id));
                }
                Some(node)
            }
            None if l.kind == ScsiLunKind::Hd => {
                return bad(format!("unit '{}': a disk needs a drive", l.device_id))
            }
            None => None,
        };
        luns.push(Arc::new(Lun::new(l.clone(), medium, notifier.clone())));
    }
    Ok(ScsiDevice::new(
        spec.id.clone(),
        spec.num_request_queues,
        Targets::new(luns),
    ))
}
