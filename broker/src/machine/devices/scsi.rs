//! The virtio-scsi controller (`virtio-scsi-device`) and its drives
//! (`scsi-cd`, `scsi-hd`).
//!
//! A controller is one virtio-mmio device like a virtio-blk disk, whose
//! backend is one vhost-user-scsi export in block-proc carrying every
//! drive of the controller ([`ScsiExportSpec`]). The drives are not
//! virtio-mmio devices: they live in [`crate::machine::media`] with their
//! medium, tray and lock. The export is made when the controller is first
//! connected (at VM creation or before the first `cont`), so drives added
//! before that, and tray changes made in `prelaunch`, are in it from the
//! start; after that every change goes to block-proc first and the
//! recorded `AddScsiExport` (replayed into a restarted block-proc) is kept
//! equal to the desired state.

use ipc_proto::block::BlockRequest;
use ipc_proto::scsi::{ScsiLunConfig, ScsiLunKind};
use ipc_proto::vcpu::VhostUserKind;
use ipc_proto::{ErrorClass, FlatError};
use serde_json::{json, Map, Value};

use super::spec::{id_wellformed, DeviceSpec, SLOTS};
use super::{generic, Backend};
use crate::machine::media::Lun;
use crate::machine::{block_state, lock, Machine};

/// QEMU's virtio-scsi controller for a virtio-mmio bus.
pub const VIRTIO_SCSI: &str = "virtio-scsi-device";
/// A CD/DVD-ROM drive.
pub const SCSI_CD: &str = "scsi-cd";
/// A disk.
pub const SCSI_HD: &str = "scsi-hd";
/// QEMU's default `virtqueue_size` of virtio-scsi.
const QUEUE_SIZE: u16 = 256;
/// virtio-scsi's largest target (`max_target`).
const MAX_TARGET: u64 = 255;
/// virtio-scsi's largest LUN (`max_lun`).
const MAX_LUN: u64 = 16383;

/// The export id of controller `id` in block-proc.
pub fn export_id(id: &str) -> String {
    format!("device.{id}")
}

/// The frontend kind and vhost-user queue count (request queues plus the
/// control and event queues) vcpu-proc gets for device `spec`.
pub fn frontend(spec: &DeviceSpec) -> (VhostUserKind, u16) {
    if spec.driver == VIRTIO_SCSI {
        (VhostUserKind::Scsi, spec.num_queues.saturating_add(2))
    } else {
        (VhostUserKind::Block, spec.num_queues)
    }
}

fn prop_str(driver: &str, key: &str, v: &Value) -> Result<String, FlatError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(generic(format!(
            "Invalid parameter type for '{driver}.{key}', expected: string"
        ))),
    }
}

fn prop_uint(driver: &str, key: &str, v: &Value, max: u64, bits: u8) -> Result<u64, FlatError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(generic(format!(
            "Property {driver}.{key} doesn't take value {n} (maximum: {max})"
        ))),
        None => Err(generic(format!("Parameter '{key}' expects uint{bits}"))),
    }
}

fn check_id(id: &str) -> Result<(), FlatError> {
    if id.is_empty() {
        return Err(generic(
            "Parameter 'id' is missing (bulkhead needs an id to manage the device)",
        ));
    }
    if !id_wellformed(id) {
        return Err(generic("Parameter 'id' expects an identifier"));
    }
    Ok(())
}

/// Validates a `virtio-scsi-device`'s properties (QEMU's messages).
pub fn parse_controller(props: &Map<String, Value>) -> Result<DeviceSpec, FlatError> {
    let d = VIRTIO_SCSI;
    let mut spec = DeviceSpec {
        id: String::new(),
        driver: VIRTIO_SCSI,
        drive: None,
        chardev: None,
        slot: None,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        serial: String::new(),
        logical_block_size: 512,
        netdev: None,
        mac: None,
        host_mtu: None,
    };
    for (k, v) in props {
        match k.as_str() {
            "driver" => {}
            "id" => spec.id = prop_str(d, k, v)?,
            "bus" => {
                let bus = prop_str(d, k, v)?;
                let slot = bus
                    .strip_prefix("virtio-mmio-bus.")
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n < SLOTS)
                    .ok_or_else(|| generic(format!("Bus '{bus}' not found")))?;
                spec.slot = Some(slot);
            }
            "num_queues" | "num-queues" => {
                spec.num_queues = prop_uint(d, k, v, u64::from(u16::MAX), 32)? as u16
            }
            "virtqueue_size" => spec.queue_size = prop_uint(d, k, v, 1024, 32)? as u16,
            _ => return Err(generic(format!("Property '{d}.{k}' not found"))),
        }
    }
    check_id(&spec.id)?;
    if spec.num_queues == 0 {
        return Err(generic(
            "Invalid number of queues (= 0), must be a positive integer less than 1021.",
        ));
    }
    if !spec.queue_size.is_power_of_two() || spec.queue_size < 2 {
        return Err(generic(format!(
            "invalid virtqueue_size property ({}), must be a power of 2",
            spec.queue_size
        )));
    }
    Ok(spec)
}

/// A `scsi-cd` / `scsi-hd` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// `id`.
    pub id: String,
    /// The kind.
    pub kind: ScsiLunKind,
    /// `drive` (a node name).
    pub drive: Option<String>,
    /// `bus=CONTROLLER.0`'s controller.
    pub bus: Option<String>,
    /// `scsi-id`.
    pub target: Option<u8>,
    /// `lun`.
    pub lun: u16,
    /// `serial`.
    pub serial: String,
}

/// Validates a `scsi-cd` / `scsi-hd`'s properties (QEMU's messages).
pub fn parse_lun(driver: &'static str, props: &Map<String, Value>) -> Result<LunSpec, FlatError> {
    let kind = if driver == SCSI_CD {
        ScsiLunKind::Cd
    } else {
        ScsiLunKind::Hd
    };
    let mut spec = LunSpec {
        id: String::new(),
        kind,
        drive: None,
        bus: None,
        target: None,
        lun: 0,
        serial: String::new(),
    };
    for (k, v) in props {
        match k.as_str() {
            "driver" => {}
            "id" => spec.id = prop_str(driver, k, v)?,
            "drive" => spec.drive = Some(prop_str(driver, k, v)?),
            "bus" => {
                let bus = prop_str(driver, k, v)?;
                let ctrl = bus
                    .strip_suffix(".0")
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| generic(format!("Bus '{bus}' not found")))?;
                spec.bus = Some(ctrl.to_owned());
            }
            "scsi-id" => {
                let n = prop_uint(driver, k, v, u64::from(u32::MAX), 32)?;
                spec.target = Some(
                    u8::try_from(n)
                        .ok()
                        .filter(|t| u64::from(*t) <= MAX_TARGET)
                        .ok_or_else(|| generic(format!("bad scsi device id: {n}")))?,
                );
            }
            "lun" => {
                let n = prop_uint(driver, k, v, u64::from(u32::MAX), 32)?;
                if n > MAX_LUN {
                    return Err(generic(format!("bad scsi device lun: {n}")));
                }
                spec.lun = n as u16;
            }
            "serial" => spec.serial = prop_str(driver, k, v)?,
            // virtio-scsi has one channel.
            "channel" => match prop_uint(driver, k, v, u64::from(u32::MAX), 32)? {
                0 => {}
                n => return Err(generic(format!("bad scsi channel id: {n}"))),
            },
            _ => return Err(generic(format!("Property '{driver}.{k}' not found"))),
        }
    }
    check_id(&spec.id)?;
    if kind == ScsiLunKind::Hd && spec.drive.is_none() {
        return Err(generic("drive property not set"));
    }
    Ok(spec)
}

/// `device_add` / `-device` of a SCSI driver: `None` for another driver.
pub fn add(m: &Machine, props: &Map<String, Value>) -> Option<Result<(), FlatError>> {
    let driver = match props.get("driver").and_then(Value::as_str) {
        Some(SCSI_CD) => SCSI_CD,
        Some(SCSI_HD) => SCSI_HD,
        _ => return None,
    };
    Some(parse_lun(driver, props).and_then(|spec| add_lun(m, &spec)))
}

/// Adds drive `spec` to its controller (before the guest first ran).
fn add_lun(m: &Machine, spec: &LunSpec) -> Result<(), FlatError> {
    let driver = if spec.kind == ScsiLunKind::Cd {
        SCSI_CD
    } else {
        SCSI_HD
    };
    let ops = lock(&m.media).ops();
    let _ops = lock(&ops);
    let dup = lock(&m.media).lun(&spec.id).is_some();
    let (controller, launched) = {
        // QEMU's order: the bus, then the id.
        let st = lock(&m.devices);
        let ctrls: Vec<&super::DeviceRecord> = st
            .devices
            .iter()
            .filter(|d| d.spec.driver == VIRTIO_SCSI && d.ready)
            .collect();
        let ctrl = match &spec.bus {
            Some(b) => ctrls
                .iter()
                .find(|d| d.spec.id == *b)
                .ok_or_else(|| generic(format!("Bus '{b}.0' not found")))?,
            None => ctrls
                .first()
                .ok_or_else(|| generic(format!("No 'SCSI' bus found for device '{driver}'")))?,
        };
        if dup || st.devices.iter().any(|d| d.spec.id == spec.id) {
            return Err(generic(format!("Duplicate device ID '{}'", spec.id)));
        }
        (ctrl.spec.id.clone(), st.launched || ctrl.attached)
    };
    if launched {
        return Err(generic(format!(
            "Bus '{controller}.0' does not support hotplugging"
        )));
    }
    let mut media = lock(&m.media);
    let target = match spec.target {
        Some(t) => t,
        // QEMU's scsi_bus_legacy: the first free target for LUN 0.
        None => (0..=MAX_TARGET as u8)
            .find(|t| {
                !media
                    .luns()
                    .iter()
                    .any(|l| l.controller == controller && l.config.target == *t)
            })
            .ok_or_else(|| generic("no free target"))?,
    };
    if media.luns().iter().any(|l| {
        l.controller == controller && l.config.target == target && l.config.lun == spec.lun
    }) {
        return Err(generic(format!(
            "lun already used by '{}'",
            media
                .luns()
                .iter()
                .find(|l| l.controller == controller
                    && l.config.target == target
                    && l.config.lun == spec.lun)
                .map(|l| l.config.device_id.clone())
                .unwrap_or_default()
        )));
    }
    let (node, writable) = match &spec.drive {
        None => (None, false),
        Some(drive) => {
            let read_only = {
                let shared = block_state::state(m);
                let st = lock(&shared);
                match st.find(drive) {
                    Some(o) => super::node_read_only(o),
                    None => {
                        return Err(generic(format!(
                            "Property '{driver}.drive' can't find value '{drive}'"
                        )))
                    }
                }
            };
            // Drives that only read (CDs) may share a node, as QEMU's
            // permissions allow; a disk may not.
            let disk_user = lock(&m.devices)
                .devices
                .iter()
                .find(|d| matches!(&d.backend, Backend::Export { drive: x, .. } if x == drive))
                .map(|d| d.spec.id.clone());
            let conflict = disk_user.or_else(|| {
                media
                    .luns()
                    .iter()
                    .find(|l| {
                        l.config.node_name.as_deref() == Some(drive.as_str())
                            && (spec.kind == ScsiLunKind::Hd || l.config.kind == ScsiLunKind::Hd)
                    })
                    .map(|l| l.config.device_id.clone())
            });
            if let Some(user) = conflict {
                return Err(generic(format!(
                    "Drive '{drive}' is already in use by device '{user}'"
                )));
            }
            (
                Some(drive.clone()),
                spec.kind == ScsiLunKind::Hd && !read_only,
            )
        }
    };
    let backend_name = node
        .as_deref()
        .map(|n| crate::commands::block::backend_name(m, n))
        .unwrap_or_default();
    let owns_medium = !backend_name.is_empty();
    media.add(Lun {
        controller,
        backend_name,
        config: ScsiLunConfig {
            device_id: spec.id.clone(),
            target,
            lun: spec.lun,
            kind: spec.kind,
            node_name: node,
            writable,
            tray_open: false,
            locked: false,
            serial: spec.serial.clone(),
            logical_block_size: if spec.kind == ScsiLunKind::Cd {
                2048
            } else {
                512
            },
        },
        owns_medium,
        last_read_only: true,
    });
    Ok(())
}

/// The device using node `name` as its drive or medium, if any.
fn node_user(m: &Machine, media: &crate::machine::media::MediaState, name: &str) -> Option<String> {
    if let Some(l) = media.user_of(name) {
        return Some(l.config.device_id.clone());
    }
    lock(&m.devices)
        .devices
        .iter()
        .find(|d| matches!(&d.backend, Backend::Export { drive, .. } if drive == name))
        .map(|d| d.spec.id.clone())
}

/// True if a guest device (a virtio-blk disk or a SCSI drive) or a
/// `-drive` (a block backend of its own in QEMU) uses node `name`.
pub fn node_has_backend(m: &Machine, name: &str) -> bool {
    let media = lock(&m.media);
    node_user(m, &media, name).is_some()
        || crate::commands::block::throttle::drive_ids(m)
            .iter()
            .any(|d| d == name)
}

/// `device_del` of a SCSI drive: `None` if `id` is not one.
pub fn del_lun(m: &Machine, id: &str) -> Option<Result<(), FlatError>> {
    let lun = lock(&m.media).lun(id).cloned()?;
    let ops = lock(&m.media).ops();
    let _ops = lock(&ops);
    let attached = {
        let st = lock(&m.devices);
        st.launched
            || st
                .devices
                .iter()
                .any(|d| d.spec.id == lun.controller && d.attached)
    };
    if attached {
        return Some(Err(generic(format!(
            "Bus '{}.0' does not support hotplugging",
            lun.controller
        ))));
    }
    if let Err(e) = crate::machine::migration::refuse_hotplug_while_migrating(
        m,
        crate::machine::migration::NO_DEVICE_DEL,
    ) {
        return Some(Err(e));
    }
    lock(&m.media).remove(id);
    if lun.owns_medium {
        if let Some(n) = &lun.config.node_name {
            drop_owned_node(m, n);
        }
    }
    deleted_event(m, id);
    Some(Ok(()))
}

/// `device_del` of controller `id` (before it was attached): its drives
/// go with it, children first, as QEMU unrealizes them.
pub fn forget_controller_luns(m: &Machine, id: &str) {
    let luns: Vec<Lun> = lock(&m.media)
        .luns()
        .iter()
        .filter(|l| l.controller == id)
        .cloned()
        .collect();
    for l in luns {
        lock(&m.media).remove(&l.config.device_id);
        if l.owns_medium {
            if let Some(n) = &l.config.node_name {
                drop_owned_node(m, n);
            }
        }
        deleted_event(m, &l.config.device_id);
    }
    lock(&m.media).set_exported(id, false);
}

fn deleted_event(m: &Machine, id: &str) {
    m.events().emit(
        "DEVICE_DELETED",
        Some(json!({"device": id, "path": format!("/machine/peripheral/{id}")})),
    );
}

/// Deletes node `name` that a drive opened itself and no longer uses.
pub fn drop_owned_node(m: &Machine, name: &str) {
    if let Err(e) = block_state::del_node(m, name) {
        tracing::warn!("node {name} of a removed medium stays: {}", e.desc);
    }
}

/// Makes sure block-proc has controller `id`'s export (before its first
/// connection); records it for replay. Holds the media lock of changes.
pub fn ensure_export(m: &Machine, id: &str) -> Result<(), FlatError> {
    // Reconnections (after a block-proc restart, which replays the export)
    // never wait for a medium change in progress.
    if lock(&m.media).exported(id) {
        return Ok(());
    }
    let ops = lock(&m.media).ops();
    let _ops = lock(&ops);
    if lock(&m.media).exported(id) {
        return Ok(());
    }
    let queues = lock(&m.devices)
        .devices
        .iter()
        .find(|d| d.spec.id == id)
        .map(|d| d.spec.num_queues)
        .ok_or_else(|| generic(format!("Device '{id}' not found")))?;
    let spec = lock(&m.media).export_spec(id, &export_id(id), queues);
    // Recorded (for replay) only once made: a restarted worker gets it
    // again here.
    m.across_block_restarts(|| {
        crate::machine::expect_done(m.block_request(BlockRequest::AddScsiExport(spec.clone()))?)
    })?;
    block_state::record_scsi_export(m, spec);
    lock(&m.media).set_exported(id, true);
    Ok(())
}

/// Makes the recorded `AddScsiExport` of `controller` (what a restarted
/// block-proc gets) equal to the desired state again.
pub fn refresh_export_record(m: &Machine, controller: &str) {
    if !lock(&m.media).exported(controller) {
        return;
    }
    let queues = lock(&m.devices)
        .devices
        .iter()
        .find(|d| d.spec.id == controller)
        .map(|d| d.spec.num_queues);
    if let Some(q) = queues {
        let spec = lock(&m.media).export_spec(controller, &export_id(controller), q);
        block_state::record_scsi_export(m, spec);
    }
}

/// QEMU's `qmp_get_blk` for the SCSI drives: the drive named by `device`
/// (a backend name) or `id` (device id or QOM path). `Ok(None)`: no SCSI
/// drive has that name (the caller looks further).
pub fn find_lun(
    m: &Machine,
    device: Option<&str>,
    id: Option<&str>,
) -> Result<Option<Lun>, FlatError> {
    let media = lock(&m.media);
    Ok(match (device, id) {
        (Some(name), None) => media
            .luns()
            .iter()
            .find(|l| !name.is_empty() && l.backend_name == name)
            .cloned(),
        (None, Some(id)) => {
            let bare = id.strip_prefix("/machine/peripheral/").unwrap_or(id);
            media.lun(bare).cloned()
        }
        (Some(_), Some(_)) | (None, None) => {
            return Err(generic("Need exactly one of 'device' and 'id'"))
        }
    })
}

/// The error for a name that is no block device: `id` names a device
/// without one (a controller, a vhost-user disk), or nothing.
pub fn not_a_block_device(m: &Machine, device: Option<&str>, id: Option<&str>) -> FlatError {
    if let Some(id) = id {
        let bare = id.strip_prefix("/machine/peripheral/").unwrap_or(id);
        if lock(&m.devices).devices.iter().any(|d| d.spec.id == bare) {
            return generic("Device does not have a block device backend");
        }
    }
    FlatError {
        class: ErrorClass::DeviceNotFound,
        desc: format!("Device '{}' not found", device.or(id).unwrap_or_default()),
    }
}

/// A machine without workers (for unit tests), with controller scsi0 and
/// an empty, closed, unlocked CD cd0 on it; `exported`: block-proc is
/// taken to have the controller's export.
#[cfg(test)]
pub(crate) fn test_machine_with_cd(exported: bool) -> std::sync::Arc<Machine> {
    use std::sync::Arc;
    let props = |v: Value| v.as_object().cloned().unwrap_or_default();
    let (tx, _rx) = std::sync::mpsc::channel();
    let cfg = crate::cli::Config {
        worker_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let m = Machine::new(
        cfg,
        crate::workers::spawn::WorkerSandbox::Off,
        Arc::new(crate::qmp::events::EventBus::new()),
        crate::workers::supervisor::Supervisor::start().unwrap(),
        tx,
    );
    let spec = parse_controller(&props(json!({"driver": VIRTIO_SCSI, "id": "scsi0"}))).unwrap();
    lock(&m.devices).devices.push(super::DeviceRecord {
        spec,
        backend: Backend::Scsi {
            export_id: export_id("scsi0"),
        },
        slot: 0,
        attached: true,
        ready: true,
    });
    let mut media = lock(&m.media);
    media.add(Lun {
        controller: "scsi0".into(),
        backend_name: String::new(),
        config: ScsiLunConfig {
            device_id: "cd0".into(),
            target: 0,
            lun: 0,
            kind: ScsiLunKind::Cd,
            node_name: None,
            writable: false,
            tray_open: false,
            locked: false,
            serial: String::new(),
            logical_block_size: 2048,
        },
        owns_medium: false,
        last_read_only: true,
    });
    media.set_exported("scsi0", exported);
    drop(media);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::media::on_event;
    use ipc_proto::scsi::ScsiEvent;

    fn machine_with_cd() -> std::sync::Arc<Machine> {
        test_machine_with_cd(true)
    }

    fn recorded(m: &Machine) -> ScsiLunConfig {
        let shared = block_state::state(m);
        let st = lock(&shared);
        let spec = st
            .exports()
            .iter()
            .find_map(|e| match &e.request {
                BlockRequest::AddScsiExport(s) => Some(s.clone()),
                _ => None,
            })
            .expect("the export is recorded");
        spec.luns[0].clone()
    }

    #[test]
    fn guest_tray_and_lock_changes_become_desired_state_and_one_event() {
        let m = machine_with_cd();
        let events = m.events().subscribe();
        let tray = |open| ScsiEvent::TrayMoved {
            export_id: export_id("scsi0"),
            device_id: "cd0".into(),
            open,
        };
        on_event(&m, tray(true));
        // Reported again (e.g. by a restarted backend): no second event.
        on_event(&m, tray(true));
        on_event(
            &m,
            ScsiEvent::LockChanged {
                export_id: export_id("scsi0"),
                device_id: "cd0".into(),
                locked: true,
            },
        );
        let cd = lock(&m.media).lun("cd0").unwrap().config.clone();
        assert!(cd.tray_open && cd.locked);
        // What a restarted block-proc gets.
        assert_eq!(recorded(&m), cd);
        let got: Vec<Value> = events
            .rx
            .try_iter()
            .map(|e| serde_json::from_str::<Value>(&e).unwrap())
            .collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["event"], "DEVICE_TRAY_MOVED");
        assert_eq!(
            got[0]["data"],
            json!({"device": "", "id": "cd0", "tray-open": true})
        );
        // An unknown drive is logged, not fatal.
        on_event(
            &m,
            ScsiEvent::LockChanged {
                export_id: export_id("scsi0"),
                device_id: "cd9".into(),
                locked: true,
            },
        );
    }

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_controller_takes_both_queue_spellings_and_a_slot() {
        for k in ["num_queues", "num-queues"] {
            let s = parse_controller(&props(json!({"driver": VIRTIO_SCSI, "id": "scsi0",
                k: "4", "bus": "virtio-mmio-bus.2"})))
            .unwrap();
            assert_eq!((s.num_queues, s.slot), (4, Some(2)));
            assert_eq!(frontend(&s), (VhostUserKind::Scsi, 6));
        }
        let e = parse_controller(&props(
            json!({"driver": VIRTIO_SCSI, "id": "s", "drive": "x"}),
        ))
        .unwrap_err();
        assert_eq!(e.desc, "Property 'virtio-scsi-device.drive' not found");
        let e = parse_controller(&props(json!({"driver": VIRTIO_SCSI, "id": "s",
            "num_queues": 0})))
        .unwrap_err();
        assert!(e.desc.starts_with("Invalid number of queues"), "{}", e.desc);
    }

    #[test]
    fn drives_parse_with_bus_target_and_lun() {
        let s = parse_lun(
            SCSI_CD,
            &props(json!({"driver": "scsi-cd", "id": "cd0", "drive": "m0",
            "bus": "scsi0.0", "scsi-id": "3", "lun": 2})),
        )
        .unwrap();
        assert_eq!(s.bus.as_deref(), Some("scsi0"));
        assert_eq!((s.target, s.lun), (Some(3), 2));
        assert_eq!(s.kind, ScsiLunKind::Cd);
        let empty = parse_lun(SCSI_CD, &props(json!({"driver": "scsi-cd", "id": "cd1"}))).unwrap();
        assert_eq!(empty.drive, None, "a CD drive may be empty");
    }

    #[test]
    fn bad_drive_properties_give_qemu_messages() {
        let err = |d, v| parse_lun(d, &props(v)).unwrap_err().desc;
        assert_eq!(
            err(SCSI_HD, json!({"driver": "scsi-hd", "id": "hd0"})),
            "drive property not set"
        );
        assert_eq!(
            err(
                SCSI_CD,
                json!({"driver": "scsi-cd", "id": "cd0", "lun": 20000})
            ),
            "bad scsi device lun: 20000"
        );
        assert_eq!(
            err(
                SCSI_CD,
                json!({"driver": "scsi-cd", "id": "cd0", "scsi-id": 256})
            ),
            "bad scsi device id: 256"
        );
        assert_eq!(
            err(
                SCSI_CD,
                json!({"driver": "scsi-cd", "id": "cd0", "bus": "scsi0"})
            ),
            "Bus 'scsi0' not found"
        );
        assert_eq!(
            err(
                SCSI_CD,
                json!({"driver": "scsi-cd", "id": "cd0", "channel": 1})
            ),
            "bad scsi channel id: 1"
        );
        assert_eq!(
            err(SCSI_CD, json!({"driver": "scsi-cd", "id": "cd0", "foo": 1})),
            "Property 'scsi-cd.foo' not found"
        );
    }
}
