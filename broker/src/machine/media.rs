//! The removable media of the SCSI drives (`scsi-cd`, `scsi-hd`): the
//! desired medium, tray and guest lock of every logical unit, and QEMU's
//! tray rules (`do_open_tray`, `blockdev_remove_medium`,
//! `qmp_blockdev_insert_anon_medium`, `qmp_blockdev_close_tray`) as a
//! pure state machine.
//!
//! A command plans its changes on a copy of a drive's state ([`Plan`]):
//! each step is the [`MediumOp`] block-proc must carry out, the drive's
//! state after it, and the `DEVICE_TRAY_MOVED` it causes. The command
//! helper ([`crate::commands::block::media`]) sends the steps in order and
//! commits each step's state once block-proc has done it, so the desired
//! state never runs ahead of the worker; it is what a restarted block-proc
//! gets back (the controller's `AddScsiExport` carries it). What the guest
//! changes (START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL) comes back as
//! [`ScsiEvent`]s ([`on_event`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ipc_proto::scsi::{MediumOp, ScsiEvent, ScsiExportSpec, ScsiLunConfig, ScsiLunKind};
use serde_json::json;

use super::{lock, Machine};

/// Why a tray or medium change is refused (QEMU's messages; `device` is
/// the name the user gave: the `id`, or the backend name of `device`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediumError {
    /// The drive has no removable medium (`scsi-hd`).
    #[error("Device '{0}' is not removable")]
    NotRemovable(String),
    /// The guest locked the medium and `force` was not given: the guest
    /// was asked to eject.
    #[error(
        "Device '{0}' is locked and force was not specified, wait for tray to open and try again"
    )]
    Locked(String),
    /// Removing needs an open tray.
    #[error("Tray of device '{0}' is not open")]
    TrayClosed(String),
    /// Inserting needs an open tray (QEMU names no device here).
    #[error("Tray of the device is not open")]
    InsertTrayClosed,
    /// Inserting needs an empty drive.
    #[error("There already is a medium in the device")]
    MediumPresent,
    /// Inserting into a device without removable media.
    #[error("Device is not removable")]
    InsertNotRemovable,
}

/// One logical unit of a controller, as the broker wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    /// The controller's device id (`scsi0`).
    pub controller: String,
    /// The block backend name QEMU gives it: the `-drive` id, or "".
    pub backend_name: String,
    /// Medium, tray, lock and identity, as sent in `AddScsiExport`.
    pub config: ScsiLunConfig,
    /// The medium node goes away when it is taken out (a node the drive
    /// opened itself: `blockdev-change-medium`'s or a `-drive`'s).
    pub owns_medium: bool,
    /// Whether the last medium was read-only (`read-only-mode=retain` on
    /// an empty drive; QEMU keeps its root state).
    pub last_read_only: bool,
}

impl Lun {
    fn removable(&self) -> bool {
        self.config.kind == ScsiLunKind::Cd
    }
}

/// One change: what block-proc is told, the drive's state once it has
/// done it, and the tray event it causes (`Some(open)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The request for block-proc.
    pub op: MediumOp,
    /// The drive's state after the step.
    pub after: ScsiLunConfig,
    /// `DEVICE_TRAY_MOVED`'s `tray-open`, if the tray moves.
    pub tray_moved: Option<bool>,
}

/// A command's changes, and the error it answers with after them (QEMU
/// sends the guest an eject request and then refuses a locked eject).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The changes, in order.
    pub steps: Vec<Step>,
    /// The error to answer with once the steps are done.
    pub error: Option<MediumError>,
}

/// What `op` changes in a drive's state.
fn apply_op(cfg: &mut ScsiLunConfig, op: &MediumOp) {
    match op {
        MediumOp::OpenTray => cfg.tray_open = true,
        MediumOp::CloseTray => cfg.tray_open = false,
        MediumOp::Remove => cfg.node_name = None,
        MediumOp::Insert { node_name } => cfg.node_name = Some(node_name.clone()),
        MediumOp::EjectRequest => {}
        MediumOp::SetLocked(l) => cfg.locked = *l,
    }
}

impl Plan {
    fn push(&mut self, cfg: &mut ScsiLunConfig, op: MediumOp, tray_moved: Option<bool>) {
        apply_op(cfg, &op);
        self.steps.push(Step {
            op,
            after: cfg.clone(),
            tray_moved,
        });
    }
}

/// QEMU's `do_open_tray`: opens the tray unless the guest locked it; a
/// lock makes it ask the guest to eject, and `force` then unlocks and
/// opens regardless. Appends to `plan`; a locked drive without `force`
/// sets [`MediumError::Locked`].
pub fn plan_open(lun: &Lun, name: &str, force: bool, plan: &mut Plan) -> Result<(), MediumError> {
    if !lun.removable() {
        return Err(MediumError::NotRemovable(name.to_owned()));
    }
    let mut cfg = plan
        .steps
        .last()
        .map_or(lun.config.clone(), |s| s.after.clone());
    if cfg.tray_open {
        return Ok(());
    }
    if cfg.locked {
        plan.push(&mut cfg, MediumOp::EjectRequest, None);
        if !force {
            plan.error = Some(MediumError::Locked(name.to_owned()));
            return Ok(());
        }
        // scsi-cd's eject request callback drops the lock when forced.
        plan.push(&mut cfg, MediumOp::SetLocked(false), None);
    }
    plan.push(&mut cfg, MediumOp::OpenTray, Some(true));
    Ok(())
}

/// QEMU's `qmp_blockdev_close_tray`.
pub fn plan_close(lun: &Lun, name: &str, plan: &mut Plan) -> Result<(), MediumError> {
    if !lun.removable() {
        return Err(MediumError::NotRemovable(name.to_owned()));
    }
    let mut cfg = plan
        .steps
        .last()
        .map_or(lun.config.clone(), |s| s.after.clone());
    if cfg.tray_open {
        plan.push(&mut cfg, MediumOp::CloseTray, Some(false));
    }
    Ok(())
}

/// QEMU's `blockdev_remove_medium` (an empty drive: nothing to do).
pub fn plan_remove(lun: &Lun, name: &str, plan: &mut Plan) -> Result<(), MediumError> {
    if !lun.removable() {
        return Err(MediumError::NotRemovable(name.to_owned()));
    }
    let mut cfg = plan
        .steps
        .last()
        .map_or(lun.config.clone(), |s| s.after.clone());
    if !cfg.tray_open {
        return Err(MediumError::TrayClosed(name.to_owned()));
    }
    if cfg.node_name.is_some() {
        plan.push(&mut cfg, MediumOp::Remove, None);
    }
    Ok(())
}

/// QEMU's `qmp_blockdev_insert_anon_medium` (the node is checked by the
/// caller: it exists and no other device uses it).
pub fn plan_insert(lun: &Lun, node: &str, plan: &mut Plan) -> Result<(), MediumError> {
    if !lun.removable() {
        return Err(MediumError::InsertNotRemovable);
    }
    let mut cfg = plan
        .steps
        .last()
        .map_or(lun.config.clone(), |s| s.after.clone());
    if !cfg.tray_open {
        return Err(MediumError::InsertTrayClosed);
    }
    if cfg.node_name.is_some() {
        return Err(MediumError::MediumPresent);
    }
    let op = MediumOp::Insert {
        node_name: node.to_owned(),
    };
    plan.push(&mut cfg, op, None);
    Ok(())
}

/// The broker's SCSI drives. Lock order: `Machine::media` before
/// `Machine::devices` where both are held.
#[derive(Debug, Default)]
pub struct MediaState {
    luns: Vec<Lun>,
    /// Controllers whose export block-proc has (made at their first
    /// connection; until then changes are desired state only).
    exported: HashSet<String>,
    /// Serialises medium changes (held across their worker requests).
    ops: Arc<Mutex<()>>,
    /// Numbers the nodes the drives open themselves (`#mediumNNN`).
    next_node: u64,
    /// The ids of the block devices (virtio-blk disks and these drives) in
    /// creation order: `query-block`'s order.
    block_order: Vec<String>,
}

impl MediaState {
    /// The drives, in creation order.
    pub fn luns(&self) -> &[Lun] {
        &self.luns
    }

    /// Drive `id`.
    pub fn lun(&self, id: &str) -> Option<&Lun> {
        self.luns.iter().find(|l| l.config.device_id == id)
    }

    /// Adds a drive.
    pub fn add(&mut self, lun: Lun) {
        self.note_block_device(&lun.config.device_id);
        self.luns.push(lun);
    }

    /// Forgets drive `id`.
    pub fn remove(&mut self, id: &str) -> Option<Lun> {
        self.forget_block_device(id);
        let i = self.luns.iter().position(|l| l.config.device_id == id)?;
        Some(self.luns.remove(i))
    }

    /// Records that block device `id` was created (after the others).
    pub fn note_block_device(&mut self, id: &str) {
        self.forget_block_device(id);
        self.block_order.push(id.to_owned());
    }

    /// Forgets block device `id` (deleted).
    pub fn forget_block_device(&mut self, id: &str) {
        self.block_order.retain(|x| x != id);
    }

    /// Where block device `id` comes in creation order.
    pub fn block_position(&self, id: &str) -> usize {
        self.block_order
            .iter()
            .position(|x| x == id)
            .unwrap_or(usize::MAX)
    }

    /// The drive whose medium is node `name`, if any.
    pub fn user_of(&self, name: &str) -> Option<&Lun> {
        self.luns
            .iter()
            .find(|l| l.config.node_name.as_deref() == Some(name))
    }

    /// The export of `controller` (with `queues` request queues) as it
    /// should be now.
    pub fn export_spec(&self, controller: &str, export_id: &str, queues: u16) -> ScsiExportSpec {
        ScsiExportSpec {
            id: export_id.to_owned(),
            num_request_queues: queues,
            luns: self
                .luns
                .iter()
                .filter(|l| l.controller == controller)
                .map(|l| l.config.clone())
                .collect(),
        }
    }

    /// Whether block-proc has any controller's export (the guest can
    /// change a tray or lock).
    pub fn any_exported(&self) -> bool {
        !self.exported.is_empty()
    }

    /// Whether block-proc has `controller`'s export.
    pub fn exported(&self, controller: &str) -> bool {
        self.exported.contains(controller)
    }

    /// Records whether block-proc has `controller`'s export.
    pub fn set_exported(&mut self, controller: &str, yes: bool) {
        if yes {
            self.exported.insert(controller.to_owned());
        } else {
            self.exported.remove(controller);
        }
    }

    /// The lock serialising medium changes.
    pub fn ops(&self) -> Arc<Mutex<()>> {
        self.ops.clone()
    }

    /// A fresh name for a node a drive opens itself, not in `taken`.
    pub fn auto_node_name(&mut self, taken: &[String]) -> String {
        loop {
            self.next_node += 1;
            // Not `#block`: block-proc names inline children so.
            let n = format!("#medium{:03}", self.next_node);
            if !taken.contains(&n) {
                return n;
            }
        }
    }

    /// Commits a step block-proc carried out on drive `id` (only what the
    /// step changes: the guest may have moved the lock meanwhile).
    pub fn commit(&mut self, id: &str, op: &MediumOp) {
        if let Some(l) = self.luns.iter_mut().find(|l| l.config.device_id == id) {
            apply_op(&mut l.config, op);
        }
    }

    /// Records whether drive `id`'s medium (about to go) was read-only.
    pub fn set_last_read_only(&mut self, id: &str, ro: bool) {
        if let Some(l) = self.luns.iter_mut().find(|l| l.config.device_id == id) {
            l.last_read_only = ro;
        }
    }

    /// `read-only-mode=retain` for drive `lun`: as its medium, or as its
    /// last medium when empty (read-only if it never had one).
    pub fn retained_read_only(&self, m: &Machine, lun: &Lun) -> bool {
        match &lun.config.node_name {
            Some(n) => {
                let shared = super::block_state::state(m);
                let st = lock(&shared);
                st.find(n)
                    .map_or(lun.last_read_only, super::devices::node_read_only)
            }
            None => lun.last_read_only,
        }
    }

    /// Sets whether drive `id` owns its medium node.
    pub fn set_owns_medium(&mut self, id: &str, owns: bool) {
        if let Some(l) = self.luns.iter_mut().find(|l| l.config.device_id == id) {
            l.owns_medium = owns;
        }
    }
}

/// What the guest changed: the desired state follows it (a restarted
/// block-proc gets it back), and a moved tray is reported as QEMU does.
pub fn on_event(m: &Machine, e: ScsiEvent) {
    let (device_id, change) = match e {
        ScsiEvent::TrayMoved {
            device_id, open, ..
        } => (device_id, Change::Tray(open)),
        ScsiEvent::LockChanged {
            device_id, locked, ..
        } => (device_id, Change::Lock(locked)),
    };
    let backend = {
        let mut st = lock(&m.media);
        let Some(l) = st.luns.iter_mut().find(|l| l.config.device_id == device_id) else {
            tracing::warn!("SCSI event for an unknown drive '{device_id}'");
            return;
        };
        match change {
            Change::Tray(open) if l.config.tray_open == open => return,
            Change::Tray(open) => l.config.tray_open = open,
            Change::Lock(locked) if l.config.locked == locked => return,
            Change::Lock(locked) => l.config.locked = locked,
        }
        (l.controller.clone(), l.backend_name.clone())
    };
    crate::machine::devices::scsi::refresh_export_record(m, &backend.0);
    if let Change::Tray(open) = change {
        tray_moved(m, &backend.1, &device_id, open);
    }
}

#[derive(Clone, Copy)]
enum Change {
    Tray(bool),
    Lock(bool),
}

/// Emits `DEVICE_TRAY_MOVED` for drive `id` (backend name `backend`).
pub fn tray_moved(m: &Machine, backend: &str, id: &str, open: bool) {
    m.events().emit(
        "DEVICE_TRAY_MOVED",
        Some(json!({"device": backend, "id": id, "tray-open": open})),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cd(node: Option<&str>, tray_open: bool, locked: bool) -> Lun {
        Lun {
            controller: "scsi0".into(),
            backend_name: String::new(),
            config: ScsiLunConfig {
                device_id: "cd0".into(),
                target: 0,
                lun: 0,
                kind: ScsiLunKind::Cd,
                node_name: node.map(String::from),
                writable: false,
                tray_open,
                locked,
                serial: String::new(),
                logical_block_size: 2048,
            },
            owns_medium: false,
            last_read_only: true,
        }
    }

    fn ops(p: &Plan) -> Vec<MediumOp> {
        p.steps.iter().map(|s| s.op.clone()).collect()
    }

    fn events(p: &Plan) -> Vec<bool> {
        p.steps.iter().filter_map(|s| s.tray_moved).collect()
    }

    #[test]
    fn opening_a_closed_unlocked_tray_opens_it_with_one_event() {
        let mut p = Plan::default();
        plan_open(&cd(Some("m0"), false, false), "cd0", false, &mut p).unwrap();
        assert_eq!(ops(&p), [MediumOp::OpenTray]);
        assert_eq!(events(&p), [true]);
        assert!(p.steps[0].after.tray_open);
        assert_eq!(p.error, None);
    }

    #[test]
    fn opening_an_open_tray_is_a_no_op() {
        let mut p = Plan::default();
        plan_open(&cd(None, true, true), "cd0", false, &mut p).unwrap();
        assert!(p.steps.is_empty());
        assert_eq!(p.error, None);
    }

    #[test]
    fn a_locked_tray_asks_the_guest_and_refuses_without_force() {
        let mut p = Plan::default();
        plan_open(&cd(Some("m0"), false, true), "cd0", false, &mut p).unwrap();
        assert_eq!(ops(&p), [MediumOp::EjectRequest]);
        assert!(events(&p).is_empty());
        assert_eq!(
            p.error.unwrap().to_string(),
            "Device 'cd0' is locked and force was not specified, wait for tray to open \
             and try again"
        );
    }

    #[test]
    fn force_unlocks_and_opens_a_locked_tray() {
        let mut p = Plan::default();
        plan_open(&cd(Some("m0"), false, true), "cd0", true, &mut p).unwrap();
        assert_eq!(
            ops(&p),
            [
                MediumOp::EjectRequest,
                MediumOp::SetLocked(false),
                MediumOp::OpenTray
            ]
        );
        let last = &p.steps[2].after;
        assert!(last.tray_open && !last.locked);
        assert_eq!(events(&p), [true]);
        assert_eq!(p.error, None);
    }

    #[test]
    fn a_disk_is_not_removable_for_any_tray_command() {
        let mut hd = cd(Some("d"), false, false);
        hd.config.kind = ScsiLunKind::Hd;
        let mut p = Plan::default();
        let msg = "Device 'hd0' is not removable";
        assert_eq!(
            plan_open(&hd, "hd0", true, &mut p).unwrap_err().to_string(),
            msg
        );
        assert_eq!(plan_close(&hd, "hd0", &mut p).unwrap_err().to_string(), msg);
        assert_eq!(
            plan_remove(&hd, "hd0", &mut p).unwrap_err().to_string(),
            msg
        );
        assert_eq!(
            plan_insert(&hd, "n", &mut p).unwrap_err().to_string(),
            "Device is not removable"
        );
        assert!(p.steps.is_empty());
    }

    #[test]
    fn closing_moves_only_an_open_tray() {
        let mut p = Plan::default();
        plan_close(&cd(None, false, false), "cd0", &mut p).unwrap();
        assert!(p.steps.is_empty());
        plan_close(&cd(None, true, false), "cd0", &mut p).unwrap();
        assert_eq!(ops(&p), [MediumOp::CloseTray]);
        assert_eq!(events(&p), [false]);
    }

    #[test]
    fn removing_needs_an_open_tray_and_is_a_no_op_when_empty() {
        let mut p = Plan::default();
        assert_eq!(
            plan_remove(&cd(Some("m0"), false, false), "cd0", &mut p)
                .unwrap_err()
                .to_string(),
            "Tray of device 'cd0' is not open"
        );
        plan_remove(&cd(None, true, false), "cd0", &mut p).unwrap();
        assert!(p.steps.is_empty());
        plan_remove(&cd(Some("m0"), true, false), "cd0", &mut p).unwrap();
        assert_eq!(ops(&p), [MediumOp::Remove]);
        assert_eq!(p.steps[0].after.node_name, None);
        assert!(events(&p).is_empty(), "a drive with a tray: no event");
    }

    #[test]
    fn inserting_needs_an_open_empty_tray() {
        let mut p = Plan::default();
        assert_eq!(
            plan_insert(&cd(None, false, false), "m1", &mut p).unwrap_err(),
            MediumError::InsertTrayClosed
        );
        assert_eq!(
            plan_insert(&cd(Some("m0"), true, false), "m1", &mut p)
                .unwrap_err()
                .to_string(),
            "There already is a medium in the device"
        );
        plan_insert(&cd(None, true, false), "m1", &mut p).unwrap();
        assert_eq!(
            ops(&p),
            [MediumOp::Insert {
                node_name: "m1".into()
            }]
        );
    }

    #[test]
    fn change_medium_is_open_remove_insert_close_with_two_events() {
        let lun = cd(Some("m0"), false, false);
        let mut p = Plan::default();
        plan_open(&lun, "cd0", false, &mut p).unwrap();
        plan_remove(&lun, "cd0", &mut p).unwrap();
        plan_insert(&lun, "#medium001", &mut p).unwrap();
        plan_close(&lun, "cd0", &mut p).unwrap();
        assert_eq!(
            ops(&p),
            [
                MediumOp::OpenTray,
                MediumOp::Remove,
                MediumOp::Insert {
                    node_name: "#medium001".into()
                },
                MediumOp::CloseTray
            ]
        );
        assert_eq!(events(&p), [true, false]);
        let end = &p.steps[3].after;
        assert_eq!(end.node_name.as_deref(), Some("#medium001"));
        assert!(!end.tray_open);
    }

    #[test]
    fn auto_node_names_skip_taken_ones() {
        let mut st = MediaState::default();
        assert_eq!(st.auto_node_name(&[]), "#medium001");
        assert_eq!(st.auto_node_name(&["#medium002".into()]), "#medium003");
    }

    #[test]
    fn the_export_carries_only_its_controllers_drives_with_their_state() {
        let mut st = MediaState::default();
        st.add(cd(Some("m0"), false, true));
        let mut other = cd(None, true, false);
        other.controller = "scsi1".into();
        other.config.device_id = "cd1".into();
        st.add(other);
        let spec = st.export_spec("scsi0", "device.scsi0", 2);
        assert_eq!(spec.luns.len(), 1);
        assert_eq!(spec.luns[0].device_id, "cd0");
        assert!(spec.luns[0].locked);
        assert_eq!(spec.num_request_queues, 2);
        assert_eq!(st.user_of("m0").unwrap().config.device_id, "cd0");
    }
}
