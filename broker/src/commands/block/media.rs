//! The removable-medium commands: `blockdev-open-tray`,
//! `blockdev-close-tray`, `blockdev-remove-medium`,
//! `blockdev-insert-medium` (and their `x-` names of the reference),
//! `blockdev-change-medium` and `eject`, with QEMU's order of checks,
//! messages and `DEVICE_TRAY_MOVED` events. The rules are in
//! [`crate::machine::media`]; this module finds the drive, runs a plan's
//! steps through block-proc and commits each.

use ipc_proto::block::{BlockRequest, BlockdevOptions};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::machine::devices::scsi;
use crate::machine::media::{self, Lun, MediumError, Plan};
use crate::machine::{block_state, lock, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx, Registry};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// What a `device`/`id` pair names.
enum Target {
    /// A SCSI drive.
    Lun(Lun),
    /// A block device without removable media (a virtio-blk disk).
    Fixed,
}

/// QEMU's `qmp_get_blk` over the SCSI drives and the virtio-blk disks.
fn resolve(m: &Machine, device: Option<&str>, id: Option<&str>) -> Result<Target> {
    if let Some(l) = scsi::find_lun(m, device, id)? {
        return Ok(Target::Lun(l));
    }
    let disks = crate::machine::devices::block_devices(m);
    let found = match (device, id) {
        (Some(name), None) => disks
            .iter()
            .any(|(_, drive)| !name.is_empty() && super::backend_name(m, drive) == name),
        (None, Some(id)) => {
            let bare = id.strip_prefix("/machine/peripheral/").unwrap_or(id);
            disks.iter().any(|(qdev, _)| qdev == bare)
        }
        (Some(_), Some(_)) | (None, None) => false,
    };
    if found {
        Ok(Target::Fixed)
    } else {
        Err(scsi::not_a_block_device(m, device, id).into())
    }
}

/// Applies every tray or lock change of the guest that block-proc has
/// reported before now: a round trip on the block link, whose reader
/// applies events in the order they come, before this reply. QEMU decides
/// on the live lock; without this a command sent right after the guest
/// locked the tray could find the report still unread.
fn settle_guest_changes(m: &Machine) {
    if !lock(&m.media).any_exported() {
        return;
    }
    if let Err(e) = m.block_request(BlockRequest::Ping) {
        // The command's own requests will fail the same way.
        tracing::debug!(
            "block-proc did not answer before a tray command: {}",
            e.desc
        );
    }
}

/// The name QEMU's messages use: whichever of `device` and `id` was given.
fn given<'a>(device: &'a Option<String>, id: &'a Option<String>) -> &'a str {
    device.as_deref().or(id.as_deref()).unwrap_or_default()
}

fn medium_error(e: MediumError) -> QmpError {
    QmpError::generic(e.to_string())
}

/// Runs `plan`'s steps on drive `lun` (block-proc first, once the
/// controller's export exists), committing each and emitting its event;
/// then answers with the plan's error, if any. Call it with the media
/// change lock held.
fn apply(m: &Machine, lun: &Lun, plan: Plan) -> Result<()> {
    let id = &lun.config.device_id;
    for step in plan.steps {
        if lock(&m.media).exported(&lun.controller) {
            let req = BlockRequest::ScsiMedium {
                export_id: scsi::export_id(&lun.controller),
                device_id: id.clone(),
                op: step.op.clone(),
            };
            // A worker restarted meanwhile got the state before this step
            // (it is committed only once done): the step is sent again.
            m.across_block_restarts(|| crate::machine::expect_done(m.block_request(req.clone())?))?;
        }
        lock(&m.media).commit(id, &step.op);
        scsi::refresh_export_record(m, &lun.controller);
        if let Some(open) = step.tray_moved {
            media::tray_moved(m, &lun.backend_name, id, open);
        }
    }
    match plan.error {
        Some(e) => Err(medium_error(e)),
        None => Ok(()),
    }
}

/// The drive `id` as it is now (after earlier steps of a command).
fn current(m: &Machine, id: &str) -> Result<Lun> {
    lock(&m.media)
        .lun(id)
        .cloned()
        .ok_or_else(|| QmpError::from(scsi::not_a_block_device(m, None, Some(id))))
}

/// QEMU's `do_open_tray`; `Ok(false)` when the guest locked the tray and
/// was asked to eject (QEMU's `-EINPROGRESS`).
fn open_tray(m: &Machine, lun: &Lun, name: &str, force: bool) -> Result<bool> {
    let mut plan = Plan::default();
    media::plan_open(lun, name, force, &mut plan).map_err(medium_error)?;
    let locked = plan.error.is_some();
    match apply(m, lun, plan) {
        Err(_) if locked => Ok(false),
        other => other.map(|()| true),
    }
}

/// QEMU's `blockdev_remove_medium`: takes the medium out; a medium the
/// drive opened itself is closed.
fn remove_medium(m: &Machine, lun: &Lun, name: &str) -> Result<()> {
    let mut plan = Plan::default();
    media::plan_remove(lun, name, &mut plan).map_err(medium_error)?;
    let old = lun
        .config
        .node_name
        .clone()
        .filter(|_| !plan.steps.is_empty());
    if let Some(n) = &old {
        let ro = {
            let shared = block_state::state(m);
            let st = lock(&shared);
            st.find(n).map(crate::machine::devices::node_read_only)
        };
        lock(&m.media).set_last_read_only(&lun.config.device_id, ro.unwrap_or(true));
    }
    apply(m, lun, plan)?;
    if let Some(n) = old.filter(|_| lun.owns_medium) {
        lock(&m.media).set_owns_medium(&lun.config.device_id, false);
        scsi::drop_owned_node(m, &n);
    }
    Ok(())
}

/// QEMU's `qmp_blockdev_insert_medium` checks of the node.
fn check_insertable(m: &Machine, node: &str) -> Result<()> {
    let exists = lock(&block_state::state(m)).find(node).is_some();
    if !exists {
        return Err(QmpError::generic(format!("Node '{node}' not found")));
    }
    if scsi::node_has_backend(m, node) {
        return Err(QmpError::generic(format!(
            "Node '{node}' is already in use"
        )));
    }
    Ok(())
}

fn insert_medium(m: &Machine, lun: &Lun, node: &str) -> Result<()> {
    let mut plan = Plan::default();
    media::plan_insert(lun, node, &mut plan).map_err(medium_error)?;
    apply(m, lun, plan)
}

fn close_tray(m: &Machine, lun: &Lun, name: &str) -> Result<()> {
    let mut plan = Plan::default();
    media::plan_close(lun, name, &mut plan).map_err(medium_error)?;
    apply(m, lun, plan)
}

/// Runs `f` on the drive named by `device`/`id` with the media change
/// lock held; a virtio-blk disk gets QEMU's "not removable".
fn with_lun<T>(
    m: &Machine,
    device: &Option<String>,
    id: &Option<String>,
    f: impl FnOnce(&Lun, &str) -> Result<T>,
) -> Result<T> {
    let ops = lock(&m.media).ops();
    let _ops = lock(&ops);
    settle_guest_changes(m);
    let name = given(device, id);
    match resolve(m, device.as_deref(), id.as_deref())? {
        Target::Lun(l) => f(&l, name),
        Target::Fixed => Err(medium_error(MediumError::NotRemovable(name.to_owned()))),
    }
}

/// Arguments naming a drive, with `force`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrayArgs {
    /// Block backend name (deprecated for `id`).
    #[serde(default)]
    pub device: Option<String>,
    /// The guest device's id or QOM path.
    #[serde(default)]
    pub id: Option<String>,
    /// Open even if the guest locked the tray.
    #[serde(default)]
    pub force: Option<bool>,
}

impl QapiType for TrayArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevOpenTrayArgs",
            members: vec![
                optional::<String>("device"),
                optional::<String>("id"),
                optional::<bool>("force"),
            ],
        }
    }
}

/// Arguments naming a drive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceArgs {
    /// Block backend name (deprecated for `id`).
    #[serde(default)]
    pub device: Option<String>,
    /// The guest device's id or QOM path.
    #[serde(default)]
    pub id: Option<String>,
}

impl QapiType for DeviceArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevCloseTrayArgs",
            members: vec![optional::<String>("device"), optional::<String>("id")],
        }
    }
}

/// `blockdev-open-tray`.
pub struct BlockdevOpenTray;

impl Command for BlockdevOpenTray {
    const NAME: &'static str = "blockdev-open-tray";
    const DOC: &'static str = "Open a drive's tray (a guest lock asks the guest to eject \
        unless force is given).";
    type Args = TrayArgs;
    type Ret = Empty;

    fn run(a: TrayArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let force = a.force.unwrap_or(false);
        with_lun(ctx.machine, &a.device, &a.id, |l, name| {
            open_tray(ctx.machine, l, name, force)
        })?;
        Ok(Empty {})
    }
}

/// `blockdev-close-tray`.
pub struct BlockdevCloseTray;

impl Command for BlockdevCloseTray {
    const NAME: &'static str = "blockdev-close-tray";
    const DOC: &'static str = "Close a drive's tray (loading its medium, if any).";
    type Args = DeviceArgs;
    type Ret = Empty;

    fn run(a: DeviceArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        with_lun(ctx.machine, &a.device, &a.id, |l, name| {
            close_tray(ctx.machine, l, name)
        })?;
        Ok(Empty {})
    }
}

/// `eject`: open the tray and take the medium out.
pub struct Eject;

impl Command for Eject {
    const NAME: &'static str = "eject";
    const DOC: &'static str = "Eject a drive's medium (a guest lock refuses unless force).";
    type Args = TrayArgs;
    type Ret = Empty;

    fn run(a: TrayArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let force = a.force.unwrap_or(false);
        with_lun(m, &a.device, &a.id, |l, name| {
            let mut plan = Plan::default();
            media::plan_open(l, name, force, &mut plan).map_err(medium_error)?;
            apply(m, l, plan)?;
            remove_medium(m, &current(m, &l.config.device_id)?, name)
        })?;
        Ok(Empty {})
    }
}

/// `blockdev-remove-medium` (QEMU 10: `id` only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveMediumArgs {
    /// The guest device's id or QOM path.
    pub id: String,
}

impl QapiType for RemoveMediumArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevRemoveMediumArgs",
            members: vec![member::<String>("id")],
        }
    }
}

fn remove_cmd(m: &Machine, device: Option<String>, id: Option<String>) -> Result<Empty> {
    with_lun(m, &device, &id, |l, name| remove_medium(m, l, name))?;
    Ok(Empty {})
}

/// `blockdev-remove-medium`.
pub struct BlockdevRemoveMedium;

impl Command for BlockdevRemoveMedium {
    const NAME: &'static str = "blockdev-remove-medium";
    const DOC: &'static str = "Take the medium out of a drive whose tray is open.";
    type Args = RemoveMediumArgs;
    type Ret = Empty;

    fn run(a: RemoveMediumArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        remove_cmd(ctx.machine, None, Some(a.id))
    }
}

/// `x-blockdev-remove-medium`: the reference's name (`device` or `id`).
pub struct XBlockdevRemoveMedium;

impl Command for XBlockdevRemoveMedium {
    const NAME: &'static str = "x-blockdev-remove-medium";
    const DOC: &'static str = "Old name of blockdev-remove-medium (device or id).";
    type Args = DeviceArgs;
    type Ret = Empty;

    fn run(a: DeviceArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        remove_cmd(ctx.machine, a.device, a.id)
    }
}

/// `blockdev-insert-medium` (QEMU 10: `id` only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InsertMediumArgs {
    /// The guest device's id or QOM path.
    pub id: String,
    /// The node to insert.
    pub node_name: String,
}

impl QapiType for InsertMediumArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevInsertMediumArgs",
            members: vec![member::<String>("id"), member::<String>("node-name")],
        }
    }
}

/// `x-blockdev-insert-medium` (`device` or `id`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct XInsertMediumArgs {
    /// Block backend name.
    #[serde(default)]
    pub device: Option<String>,
    /// The guest device's id or QOM path.
    #[serde(default)]
    pub id: Option<String>,
    /// The node to insert.
    pub node_name: String,
}

impl QapiType for XInsertMediumArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "x-blockdev-insert-medium-arg",
            members: vec![
                optional::<String>("device"),
                optional::<String>("id"),
                member::<String>("node-name"),
            ],
        }
    }
}

fn insert_cmd(
    m: &Machine,
    device: Option<String>,
    id: Option<String>,
    node: &str,
) -> Result<Empty> {
    let ops = lock(&m.media).ops();
    let _ops = lock(&ops);
    settle_guest_changes(m);
    let target = resolve(m, device.as_deref(), id.as_deref())?;
    check_insertable(m, node)?;
    match target {
        Target::Lun(l) => insert_medium(m, &l, node)?,
        Target::Fixed => return Err(medium_error(MediumError::InsertNotRemovable)),
    }
    Ok(Empty {})
}

/// `blockdev-insert-medium`.
pub struct BlockdevInsertMedium;

impl Command for BlockdevInsertMedium {
    const NAME: &'static str = "blockdev-insert-medium";
    const DOC: &'static str = "Insert a node as the medium of an empty drive whose tray is open.";
    type Args = InsertMediumArgs;
    type Ret = Empty;

    fn run(a: InsertMediumArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        insert_cmd(ctx.machine, None, Some(a.id), &a.node_name)
    }
}

/// `x-blockdev-insert-medium`: the reference's name.
pub struct XBlockdevInsertMedium;

impl Command for XBlockdevInsertMedium {
    const NAME: &'static str = "x-blockdev-insert-medium";
    const DOC: &'static str = "Old name of blockdev-insert-medium (device or id).";
    type Args = XInsertMediumArgs;
    type Ret = Empty;

    fn run(a: XInsertMediumArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        insert_cmd(ctx.machine, a.device, a.id, &a.node_name)
    }
}

/// QEMU's `BlockdevChangeReadOnlyMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadOnlyMode {
    /// As the current (or last) medium.
    Retain,
    /// Read-only.
    ReadOnly,
    /// Read-write.
    ReadWrite,
}

impl QapiType for ReadOnlyMode {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevChangeReadOnlyMode",
            values: vec!["retain", "read-only", "read-write"],
        }
    }
}

/// Arguments of `blockdev-change-medium`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChangeMediumArgs {
    /// Block backend name (deprecated for `id`).
    #[serde(default)]
    pub device: Option<String>,
    /// The guest device's id or QOM path.
    #[serde(default)]
    pub id: Option<String>,
    /// The new image.
    pub filename: String,
    /// Its format (probed as raw or qcow2 when absent).
    #[serde(default)]
    pub format: Option<String>,
    /// Open the tray even if the guest locked it.
    #[serde(default)]
    pub force: Option<bool>,
    /// Read-only mode of the new medium.
    #[serde(default)]
    pub read_only_mode: Option<ReadOnlyMode>,
}

impl QapiType for ChangeMediumArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevChangeMediumArgs",
            members: vec![
                optional::<String>("device"),
                optional::<String>("id"),
                member::<String>("filename"),
                optional::<String>("format"),
                optional::<bool>("force"),
                optional::<ReadOnlyMode>("read-only-mode"),
            ],
        }
    }
}

/// The format of `filename` when none is given: qcow2 if it carries the
/// qcow2 magic, else raw (QEMU probes the same way for these two).
fn probe_format(filename: &str) -> &'static str {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let is_qcow2 = std::fs::File::open(filename)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"QFI\xfb";
    if is_qcow2 {
        "qcow2"
    } else {
        "raw"
    }
}

/// Opens `filename` as a node of the drive's own (`#mediumNNN`, its
/// file child named the same way, as QEMU names both).
fn open_medium(
    m: &Machine,
    filename: &str,
    format: Option<&str>,
    read_only: bool,
) -> Result<String> {
    let taken = lock(&block_state::state(m)).node_names();
    let name = lock(&m.media).auto_node_name(&taken);
    let file_name = lock(&m.media).auto_node_name(&taken);
    let format = format.unwrap_or_else(|| probe_format(filename));
    let mut map = Map::new();
    map.insert("driver".into(), Value::from(format));
    map.insert("node-name".into(), Value::from(name.clone()));
    map.insert("read-only".into(), Value::Bool(read_only));
    map.insert(
        "file".into(),
        json!({"driver": "file", "node-name": file_name, "filename": filename,
            "read-only": read_only}),
    );
    super::validate_options(&map, "").map_err(QmpError::generic)?;
    let options: BlockdevOptions = serde_json::from_value(Value::Object(map))
        .map_err(|e| QmpError::generic(format!("Invalid parameter: {e}")))?;
    m.across_block_restarts(|| block_state::add_own_node(m, options.clone()).map_err(|e| e.error))?;
    Ok(name)
}

/// `blockdev-change-medium`.
pub struct BlockdevChangeMedium;

impl Command for BlockdevChangeMedium {
    const NAME: &'static str = "blockdev-change-medium";
    const DOC: &'static str = "Replace a drive's medium by an image file: open tray, \
        remove, insert, close tray.";
    type Args = ChangeMediumArgs;
    type Ret = Empty;

    fn run(a: ChangeMediumArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let ops = lock(&m.media).ops();
        let _ops = lock(&ops);
        settle_guest_changes(m);
        let name = given(&a.device, &a.id).to_owned();
        let target = resolve(m, a.device.as_deref(), a.id.as_deref())?;
        let read_only = match (a.read_only_mode.unwrap_or(ReadOnlyMode::Retain), &target) {
            (ReadOnlyMode::ReadOnly, _) => true,
            (ReadOnlyMode::ReadWrite, _) => false,
            (ReadOnlyMode::Retain, Target::Lun(l)) => lock(&m.media).retained_read_only(m, l),
            (ReadOnlyMode::Retain, Target::Fixed) => false,
        };
        let node = open_medium(m, &a.filename, a.format.as_deref(), read_only)?;
        let lun = match target {
            Target::Lun(l) => l,
            Target::Fixed => {
                scsi::drop_owned_node(m, &node);
                return Err(medium_error(MediumError::NotRemovable(name)));
            }
        };
        let id = lun.config.device_id.clone();
        let swapped = (|| -> Result<()> {
            // As it is now: the guest may have locked it while the image
            // was opened.
            let lun = current(m, &id)?;
            let mut plan = Plan::default();
            media::plan_open(&lun, &name, a.force.unwrap_or(false), &mut plan)
                .map_err(medium_error)?;
            apply(m, &lun, plan)?;
            remove_medium(m, &current(m, &id)?, &name)?;
            insert_medium(m, &current(m, &id)?, &node)?;
            lock(&m.media).set_owns_medium(&id, true);
            Ok(())
        })();
        if let Err(e) = swapped {
            scsi::drop_owned_node(m, &node);
            return Err(e);
        }
        close_tray(m, &current(m, &id)?, &name)?;
        Ok(Empty {})
    }
}

/// `DEVICE_TRAY_MOVED`'s data.
pub struct TrayMovedData;

impl QapiType for TrayMovedData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DEVICE_TRAY_MOVED_arg",
            members: vec![
                member::<String>("device"),
                member::<String>("id"),
                member::<bool>("tray-open"),
            ],
        }
    }
}

/// Registers the commands and their event.
pub fn register(r: &mut Registry) {
    r.register::<BlockdevOpenTray>();
    r.register::<BlockdevCloseTray>();
    r.register::<BlockdevRemoveMedium>();
    r.register::<XBlockdevRemoveMedium>();
    r.register::<BlockdevInsertMedium>();
    r.register::<XBlockdevInsertMedium>();
    r.register::<BlockdevChangeMedium>();
    r.register::<Eject>();
    r.event::<TrayMovedData>(
        "DEVICE_TRAY_MOVED",
        "A drive's tray moved (tray-open tells where it is now).",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::devices::scsi::test_machine_with_cd;

    fn tray_events(sub: &crate::qmp::events::Subscription) -> Vec<Value> {
        sub.rx
            .try_iter()
            .map(|e| serde_json::from_str::<Value>(&e).unwrap())
            .filter(|e| e["event"] == "DEVICE_TRAY_MOVED")
            .collect()
    }

    #[test]
    fn before_the_export_exists_a_change_is_desired_state_with_its_event() {
        let m = test_machine_with_cd(false);
        let sub = m.events().subscribe();
        let lun = lock(&m.media).lun("cd0").cloned().unwrap();
        assert!(open_tray(&m, &lun, "cd0", false).unwrap());
        assert!(lock(&m.media).lun("cd0").unwrap().config.tray_open);
        assert_eq!(tray_events(&sub).len(), 1);
    }

    #[test]
    fn a_step_block_proc_did_not_carry_out_is_not_committed() {
        // The export exists but no block-proc answers.
        let m = test_machine_with_cd(true);
        let sub = m.events().subscribe();
        let lun = lock(&m.media).lun("cd0").cloned().unwrap();
        assert!(open_tray(&m, &lun, "cd0", false).is_err());
        let now = lock(&m.media).lun("cd0").unwrap().config.clone();
        assert_eq!(now, lun.config, "the desired state ran ahead of block-proc");
        assert!(tray_events(&sub).is_empty());
    }
}
