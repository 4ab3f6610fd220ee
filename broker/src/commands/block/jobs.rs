//! Block jobs over QMP: `block-stream`, `blockdev-mirror`, the
//! `block-job-*` and `job-*` verbs, `query-block-jobs` and `query-jobs`,
//! with QEMU's arguments, checks and messages. The desired state and the
//! status machine are in [`crate::machine::jobs`]; block-proc moves the
//! data (`block-proc/src/jobs/`).

use serde::{Deserialize, Serialize};

use ipc_proto::block_jobs::{JobKind, JobSpec, MirrorSync, OnError};
use ipc_proto::FlatError;

use crate::machine::jobs::{self, JobRecord, Verb};
use crate::machine::{block_state, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's `BlockdevOnError`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockdevOnError {
    /// report.
    Report,
    /// ignore.
    Ignore,
    /// enospc.
    Enospc,
    /// stop.
    Stop,
    /// auto (a device's rerror/werror; a job reports).
    Auto,
}

impl QapiType for BlockdevOnError {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "BlockdevOnError",
            values: vec!["report", "ignore", "enospc", "stop", "auto"],
        }
    }
}

impl BlockdevOnError {
    fn wire(self) -> OnError {
        match self {
            BlockdevOnError::Report | BlockdevOnError::Auto => OnError::Report,
            BlockdevOnError::Ignore => OnError::Ignore,
            BlockdevOnError::Enospc => OnError::Enospc,
            BlockdevOnError::Stop => OnError::Stop,
        }
    }
}

/// QEMU's `MirrorSyncMode`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorSyncMode {
    /// top.
    Top,
    /// full.
    Full,
    /// none.
    None,
    /// incremental (backup only).
    Incremental,
    /// bitmap (backup only).
    Bitmap,
}

impl QapiType for MirrorSyncMode {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "MirrorSyncMode",
            values: vec!["top", "full", "none", "incremental", "bitmap"],
        }
    }
}

/// QEMU's `MirrorCopyMode`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorCopyMode {
    /// Guest writes are copied by the job afterwards (the default).
    Background,
    /// Guest writes go to both synchronously.
    WriteBlocking,
}

impl QapiType for MirrorCopyMode {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "MirrorCopyMode",
            values: vec!["background", "write-blocking"],
        }
    }
}

/// QEMU's `id_wellformed`, for job ids.
fn check_job_id(id: &str) -> std::result::Result<(), FlatError> {
    let mut c = id.chars();
    let ok = c.next().is_some_and(|c| c.is_ascii_alphabetic())
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(FlatError::generic(format!("Invalid job ID '{id}'")))
    }
}

/// QEMU's `bdrv_lookup_bs(device, device)`: the node (devices are named
/// by their node here).
fn lookup(m: &Machine, name: &str) -> std::result::Result<String, FlatError> {
    let st = block_state::state(m);
    let names = crate::machine::lock(&st).node_names();
    if names.iter().any(|n| n == name) {
        Ok(name.to_owned())
    } else {
        Err(FlatError::generic(format!(
            "Cannot find device='{name}' nor node-name='{name}'"
        )))
    }
}

/// The job id: given, or the device's name (QEMU's default).
fn job_id(given: Option<String>, device: &str) -> std::result::Result<String, FlatError> {
    let id = given.unwrap_or_else(|| device.to_owned());
    check_job_id(&id)?;
    Ok(id)
}

/// Refuses a node another job uses, as QEMU does.
pub(super) fn not_busy(m: &Machine, node: &str) -> std::result::Result<(), FlatError> {
    match m.jobs.refuses_del(node) {
        Some(_) => {
            let kind = m
                .jobs
                .list()
                .into_iter()
                .find(|j| j.refuses_del(node).is_some())
                .map_or("mirror", |j| j.kind());
            Err(FlatError::generic(format!(
                "Node '{node}' is busy: block device is in use by block job: {kind}"
            )))
        }
        None => Ok(()),
    }
}

fn speed_of(s: Option<i64>) -> std::result::Result<u64, FlatError> {
    match s {
        Some(v) if v < 0 => Err(FlatError::generic(
            "Parameter 'speed' expects a non-negative value",
        )),
        Some(v) => Ok(v as u64),
        None => Ok(0),
    }
}

/// Arguments of `block-stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockStreamArgs {
    /// Job id (default: the device's name).
    pub job_id: Option<String>,
    /// The top node.
    pub device: String,
    /// The base image's file name.
    pub base: Option<String>,
    /// The base node.
    pub base_node: Option<String>,
    /// The backing file name to write into the top image.
    pub backing_file: Option<String>,
    /// Bytes per second.
    pub speed: Option<i64>,
    /// Error action.
    pub on_error: Option<BlockdevOnError>,
    /// `auto-finalize`.
    pub auto_finalize: Option<bool>,
    /// `auto-dismiss`.
    pub auto_dismiss: Option<bool>,
}

impl QapiType for BlockStreamArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockStreamArgs",
            members: vec![
                optional::<String>("job-id"),
                member::<String>("device"),
                optional::<String>("base"),
                optional::<String>("base-node"),
                optional::<String>("backing-file"),
                optional::<i64>("speed"),
                optional::<BlockdevOnError>("on-error"),
                optional::<bool>("auto-finalize"),
                optional::<bool>("auto-dismiss"),
            ],
        }
    }
}

/// `block-stream`.
pub struct BlockStream;

impl Command for BlockStream {
    const NAME: &'static str = "block-stream";
    const DOC: &'static str =
        "Copy the data of a qcow2 node's backing chain (above base) into it, \
        then make base (or nothing) its backing file.";
    type Args = BlockStreamArgs;
    type Ret = Empty;

    fn run(a: BlockStreamArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        if a.base.is_some() && a.base_node.is_some() {
            return Err(FlatError::generic(
                "'base' and 'base-node' cannot be specified at the same time",
            )
            .into());
        }
        let device = lookup(m, &a.device)?;
        if let Some(b) = &a.base_node {
            // Backing images are not graph nodes here: a node of the
            // graph is never in the chain.
            return Err(FlatError::generic(match lookup(m, b) {
                Ok(_) => format!("Node '{b}' is not a backing image of '{device}'"),
                Err(_) => format!("Cannot find device='' nor node-name='{b}'"),
            })
            .into());
        }
        let id = job_id(a.job_id, &device)?;
        let speed = speed_of(a.speed)?;
        not_busy(m, &device)?;
        let on = a.on_error.unwrap_or(BlockdevOnError::Report).wire();
        let spec = JobSpec {
            id,
            kind: JobKind::Stream {
                node: device,
                base: a.base,
                backing_file: a.backing_file,
                base_format: None,
            },
            speed,
            on_source_error: on,
            on_target_error: on,
            resume: None,
        };
        jobs::create(
            m,
            spec,
            a.auto_finalize.unwrap_or(true),
            a.auto_dismiss.unwrap_or(true),
        )?;
        Ok(Empty {})
    }
}

/// Arguments of `blockdev-mirror`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockdevMirrorArgs {
    /// Job id (default: the device's name).
    pub job_id: Option<String>,
    /// The source node.
    pub device: String,
    /// The target node.
    pub target: String,
    /// The node the target replaces on completion.
    pub replaces: Option<String>,
    /// What to copy.
    pub sync: MirrorSyncMode,
    /// Bytes per second.
    pub speed: Option<i64>,
    /// Dirty tracking granularity.
    pub granularity: Option<u64>,
    /// Copy buffer size.
    pub buf_size: Option<i64>,
    /// Error action for the source.
    pub on_source_error: Option<BlockdevOnError>,
    /// Error action for the target.
    pub on_target_error: Option<BlockdevOnError>,
    /// Copy mode.
    pub copy_mode: Option<MirrorCopyMode>,
    /// `auto-finalize`.
    pub auto_finalize: Option<bool>,
    /// `auto-dismiss`.
    pub auto_dismiss: Option<bool>,
}

impl QapiType for BlockdevMirrorArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockdevMirrorArgs",
            members: vec![
                optional::<String>("job-id"),
                member::<String>("device"),
                member::<String>("target"),
                optional::<String>("replaces"),
                member::<MirrorSyncMode>("sync"),
                optional::<i64>("speed"),
                optional::<u64>("granularity"),
                optional::<i64>("buf-size"),
                optional::<BlockdevOnError>("on-source-error"),
                optional::<BlockdevOnError>("on-target-error"),
                optional::<MirrorCopyMode>("copy-mode"),
                optional::<bool>("auto-finalize"),
                optional::<bool>("auto-dismiss"),
            ],
        }
    }
}

/// QEMU's default dirty granularity of a mirror.
const DEFAULT_GRANULARITY: u64 = 64 << 10;
/// QEMU's default copy buffer.
const DEFAULT_BUF_SIZE: u64 = 16 << 20;

/// `blockdev-mirror`.
pub struct BlockdevMirror;

impl Command for BlockdevMirror {
    const NAME: &'static str = "blockdev-mirror";
    const DOC: &'static str = "Mirror a node into another node added with blockdev-add; \
        block-job-complete then moves the device onto the target.";
    type Args = BlockdevMirrorArgs;
    type Ret = Empty;

    fn run(a: BlockdevMirrorArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let device = lookup(m, &a.device)?;
        let target = lookup(m, &a.target)?;
        let sync = match a.sync {
            MirrorSyncMode::Full => MirrorSync::Full,
            MirrorSyncMode::Top => MirrorSync::Top,
            MirrorSyncMode::None => MirrorSync::None,
            MirrorSyncMode::Incremental => {
                return Err(FlatError::generic("Sync mode 'incremental' not supported").into())
            }
            MirrorSyncMode::Bitmap => {
                return Err(FlatError::generic("Sync mode 'bitmap' not supported").into())
            }
        };
        let granularity = match a.granularity.unwrap_or(0) {
            0 => DEFAULT_GRANULARITY,
            g if !(512..=(64 << 20)).contains(&g) => {
                return Err(FlatError::generic(
                    "Parameter 'granularity' expects a value in range [512B, 64MB]",
                )
                .into())
            }
            g if !g.is_power_of_two() => {
                return Err(
                    FlatError::generic("Parameter 'granularity' expects a power of 2").into(),
                )
            }
            g => g,
        };
        let buf_size = match a.buf_size {
            Some(b) if b < 0 => {
                return Err(FlatError::generic("Invalid parameter 'buf-size'").into())
            }
            Some(0) | None => DEFAULT_BUF_SIZE,
            Some(b) => b as u64,
        };
        if device == target {
            return Err(FlatError::generic("Can't mirror node into itself").into());
        }
        let mut replaces = None;
        if let Some(r) = &a.replaces {
            lookup(m, r).map_err(|_| {
                FlatError::generic(format!("Failed to find node with node-name='{r}'"))
            })?;
            if *r != device {
                // QEMU's quorum rule: only a child of the mirrored quorum
                // that no other parent uses.
                if !crate::machine::quorum_state::can_replace(m, &device, r) {
                    return Err(FlatError::generic(format!(
                        "Cannot replace '{r}' by a node mirrored from '{device}', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data"
                    ))
                    .into());
                }
                replaces = Some(r.clone());
            }
        }
        if let Some(MirrorCopyMode::WriteBlocking) = a.copy_mode {
            return Err(FlatError::generic(
                "copy-mode 'write-blocking' is not supported; use 'background'",
            )
            .into());
        }
        let id = job_id(a.job_id, &device)?;
        let speed = speed_of(a.speed)?;
        not_busy(m, &device)?;
        not_busy(m, &target)?;
        let spec = JobSpec {
            id,
            kind: JobKind::Mirror {
                source: device,
                target,
                sync,
                granularity,
                buf_size,
                replaces,
            },
            speed,
            on_source_error: a.on_source_error.unwrap_or(BlockdevOnError::Report).wire(),
            on_target_error: a.on_target_error.unwrap_or(BlockdevOnError::Report).wire(),
            resume: None,
        };
        jobs::create(
            m,
            spec,
            a.auto_finalize.unwrap_or(true),
            a.auto_dismiss.unwrap_or(true),
        )?;
        Ok(Empty {})
    }
}

/// `device` of the `block-job-*` verbs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceArg {
    /// The job id.
    pub device: String,
}

impl QapiType for DeviceArg {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockJobDeviceArg",
            members: vec![member::<String>("device")],
        }
    }
}

/// Arguments of `block-job-cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CancelArgs {
    /// The job id.
    pub device: String,
    /// Cancel a ready mirror without its last copies.
    pub force: Option<bool>,
}

impl QapiType for CancelArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockJobCancelArgs",
            members: vec![member::<String>("device"), optional::<bool>("force")],
        }
    }
}

/// Arguments of `block-job-set-speed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SetSpeedArgs {
    /// The job id.
    pub device: String,
    /// Bytes per second (0: unlimited).
    pub speed: i64,
}

impl QapiType for SetSpeedArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockJobSetSpeedArgs",
            members: vec![member::<String>("device"), member::<i64>("speed")],
        }
    }
}

/// `id` of the `job-*` verbs (and of block-job-dismiss/-finalize).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IdArg {
    /// The job id.
    pub id: String,
}

impl QapiType for IdArg {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "JobIdArg",
            members: vec![member::<String>("id")],
        }
    }
}

/// A block job verb: QEMU's `find_block_job_locked` (class
/// DeviceNotActive) then the verb.
fn block_verb(m: &Machine, id: &str, verb: Verb, arg: Option<bool>) -> Result<Empty> {
    if !m.jobs.exists(id) {
        return Err(QmpError {
            class: ipc_proto::ErrorClass::DeviceNotActive,
            desc: format!("Block job '{id}' not found"),
        });
    }
    jobs::verb(m, id, verb, arg)?;
    Ok(Empty {})
}

macro_rules! verb_command {
    ($ty:ident, $name:literal, $doc:literal, $args:ty, |$a:ident, $m:ident| $body:expr) => {
        #[doc = $doc]
        pub struct $ty;

        impl Command for $ty {
            const NAME: &'static str = $name;
            const DOC: &'static str = $doc;
            type Args = $args;
            type Ret = Empty;

            fn run($a: $args, ctx: &Ctx<'_>) -> Result<Empty> {
                let $m = ctx.machine;
                $body
            }
        }
    };
}

verb_command!(
    BlockJobPause,
    "block-job-pause",
    "Pause a block job.",
    DeviceArg,
    |a, m| block_verb(m, &a.device, Verb::Pause, None)
);
verb_command!(
    BlockJobResume,
    "block-job-resume",
    "Resume a paused block job.",
    DeviceArg,
    |a, m| block_verb(m, &a.device, Verb::Resume, None)
);
verb_command!(
    BlockJobComplete,
    "block-job-complete",
    "Complete a ready mirror: the device moves onto the target.",
    DeviceArg,
    |a, m| block_verb(m, &a.device, Verb::Complete, None)
);
verb_command!(
    BlockJobCancel,
    "block-job-cancel",
    "Cancel a block job (a ready mirror ends with a consistent copy unless force).",
    CancelArgs,
    |a, m| block_verb(m, &a.device, Verb::Cancel, Some(a.force.unwrap_or(false)))
);
verb_command!(
    BlockJobDismiss,
    "block-job-dismiss",
    "Remove a concluded block job.",
    IdArg,
    |a, m| block_verb(m, &a.id, Verb::Dismiss, None)
);
verb_command!(
    BlockJobFinalize,
    "block-job-finalize",
    "Finalize a pending block job.",
    IdArg,
    |a, m| block_verb(m, &a.id, Verb::Finalize, None)
);
verb_command!(
    BlockJobSetSpeed,
    "block-job-set-speed",
    "Set a block job's speed limit.",
    SetSpeedArgs,
    |a, m| {
        if !m.jobs.exists(&a.device) {
            return Err(QmpError {
                class: ipc_proto::ErrorClass::DeviceNotActive,
                desc: format!("Block job '{}' not found", a.device),
            });
        }
        let speed = speed_of(Some(a.speed))?;
        jobs::set_speed(m, &a.device, speed)?;
        Ok(Empty {})
    }
);
verb_command!(JobPause, "job-pause", "Pause a job.", IdArg, |a, m| {
    jobs::verb(m, &a.id, Verb::Pause, None)?;
    Ok(Empty {})
});
verb_command!(
    JobResume,
    "job-resume",
    "Resume a paused job.",
    IdArg,
    |a, m| {
        jobs::verb(m, &a.id, Verb::Resume, None)?;
        Ok(Empty {})
    }
);
verb_command!(JobCancel, "job-cancel", "Cancel a job.", IdArg, |a, m| {
    jobs::verb(m, &a.id, Verb::Cancel, Some(true))?;
    Ok(Empty {})
});
verb_command!(
    JobComplete,
    "job-complete",
    "Complete a ready job.",
    IdArg,
    |a, m| {
        jobs::verb(m, &a.id, Verb::Complete, None)?;
        Ok(Empty {})
    }
);
verb_command!(
    JobDismiss,
    "job-dismiss",
    "Remove a concluded job.",
    IdArg,
    |a, m| {
        jobs::verb(m, &a.id, Verb::Dismiss, None)?;
        Ok(Empty {})
    }
);
verb_command!(
    JobFinalize,
    "job-finalize",
    "Finalize a pending job.",
    IdArg,
    |a, m| {
        jobs::verb(m, &a.id, Verb::Finalize, None)?;
        Ok(Empty {})
    }
);

/// QEMU's `JobStatus` enum (for the schema).
pub struct JobStatusEnum;

impl QapiType for JobStatusEnum {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "JobStatus",
            values: vec![
                "undefined",
                "created",
                "running",
                "paused",
                "ready",
                "standby",
                "waiting",
                "pending",
                "aborting",
                "concluded",
                "null",
            ],
        }
    }
}

/// QEMU's `BlockJobInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobInfo {
    /// Job type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The job id.
    pub device: String,
    /// Bytes in all.
    pub len: u64,
    /// Bytes done.
    pub offset: u64,
    /// Whether the job is doing I/O right now.
    pub busy: bool,
    /// Paused by the user.
    pub paused: bool,
    /// Speed limit.
    pub speed: u64,
    /// `ok`, `failed`, `nospace`.
    pub io_status: String,
    /// Ready (mirror).
    pub ready: bool,
    /// Status.
    pub status: String,
    /// `auto-finalize`.
    pub auto_finalize: bool,
    /// `auto-dismiss`.
    pub auto_dismiss: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Mirror: whether writes go to the target synchronously (never in
    /// background mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actively_synced: Option<bool>,
}

impl QapiType for BlockJobInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockJobInfo",
            members: vec![
                member::<String>("type"),
                member::<String>("device"),
                member::<i64>("len"),
                member::<i64>("offset"),
                member::<bool>("busy"),
                member::<bool>("paused"),
                member::<i64>("speed"),
                member::<crate::commands::block::BlockDeviceIoStatus>("io-status"),
                member::<bool>("ready"),
                member::<JobStatusEnum>("status"),
                member::<bool>("auto-finalize"),
                member::<bool>("auto-dismiss"),
                optional::<String>("error"),
                optional::<bool>("actively-synced"),
            ],
        }
    }
}

fn block_job_info(j: &JobRecord) -> BlockJobInfo {
    let busy = matches!(
        j.status,
        jobs::Status::Running | jobs::Status::Ready | jobs::Status::Waiting
    ) && !j.user_paused;
    BlockJobInfo {
        kind: j.kind().into(),
        device: j.id().into(),
        len: j.len,
        offset: j.offset,
        busy: busy && j.kind() == "stream" && j.offset < j.len,
        paused: j.user_paused,
        speed: j.spec.speed,
        io_status: j.io_status.into(),
        ready: j.ready && matches!(j.status, jobs::Status::Ready | jobs::Status::Standby),
        status: j.status.as_str().into(),
        auto_finalize: j.auto_finalize,
        auto_dismiss: j.auto_dismiss,
        error: j.error.clone(),
        actively_synced: (j.kind() == "mirror").then_some(false),
    }
}

/// `query-block-jobs`.
pub struct QueryBlockJobs;

impl Command for QueryBlockJobs {
    const NAME: &'static str = "query-block-jobs";
    const DOC: &'static str = "List the block jobs (BlockJobInfo).";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = Vec<BlockJobInfo>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<BlockJobInfo>> {
        Ok(ctx.machine.jobs.list().iter().map(block_job_info).collect())
    }
}

/// QEMU's `JobInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// Job type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Status.
    pub status: String,
    /// Progress so far.
    pub current_progress: u64,
    /// Estimated total.
    pub total_progress: u64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl QapiType for JobInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "JobInfo",
            members: vec![
                member::<String>("id"),
                member::<String>("type"),
                member::<JobStatusEnum>("status"),
                member::<i64>("current-progress"),
                member::<i64>("total-progress"),
                optional::<String>("error"),
            ],
        }
    }
}

/// `query-jobs`.
pub struct QueryJobs;

impl Command for QueryJobs {
    const NAME: &'static str = "query-jobs";
    const DOC: &'static str = "List the jobs (JobInfo).";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = Vec<JobInfo>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<JobInfo>> {
        Ok(ctx
            .machine
            .jobs
            .list()
            .iter()
            .map(|j| JobInfo {
                id: j.id().into(),
                kind: j.kind().into(),
                status: j.status.as_str().into(),
                current_progress: j.offset,
                total_progress: j.len,
                error: j.error.clone(),
            })
            .collect())
    }
}

/// Data of JOB_STATUS_CHANGE.
pub struct JobStatusChangeData;

impl QapiType for JobStatusChangeData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "JobStatusChangeData",
            members: vec![member::<String>("id"), member::<JobStatusEnum>("status")],
        }
    }
}

/// Data of BLOCK_JOB_COMPLETED, _CANCELLED and _READY.
pub struct BlockJobEventData;

impl QapiType for BlockJobEventData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockJobEventData",
            members: vec![
                member::<String>("type"),
                member::<String>("device"),
                member::<i64>("len"),
                member::<i64>("offset"),
                member::<i64>("speed"),
                optional::<String>("error"),
            ],
        }
    }
}

/// Data of BLOCK_JOB_ERROR.
pub struct BlockJobErrorData;

impl QapiType for BlockJobErrorData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockJobErrorData",
            members: vec![
                member::<String>("device"),
                member::<String>("operation"),
                member::<String>("action"),
            ],
        }
    }
}

/// Data of BLOCK_JOB_PENDING.
pub struct BlockJobPendingData;

impl QapiType for BlockJobPendingData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "BlockJobPendingData",
            members: vec![member::<String>("type"), member::<String>("id")],
        }
    }
}

/// Registers the job commands and declares their events.
pub fn register(r: &mut crate::qmp::registry::Registry) {
    r.register::<BlockStream>();
    r.register::<BlockdevMirror>();
    r.register::<BlockJobPause>();
    r.register::<BlockJobResume>();
    r.register::<BlockJobComplete>();
    r.register::<BlockJobCancel>();
    r.register::<BlockJobDismiss>();
    r.register::<BlockJobFinalize>();
    r.register::<BlockJobSetSpeed>();
    r.register::<JobPause>();
    r.register::<JobResume>();
    r.register::<JobCancel>();
    r.register::<JobComplete>();
    r.register::<JobDismiss>();
    r.register::<JobFinalize>();
    r.register::<QueryBlockJobs>();
    r.register::<QueryJobs>();
    r.event::<JobStatusChangeData>("JOB_STATUS_CHANGE", "A job changed status.");
    r.event::<BlockJobEventData>("BLOCK_JOB_COMPLETED", "A block job completed.");
    r.event::<BlockJobEventData>("BLOCK_JOB_CANCELLED", "A block job was cancelled.");
    r.event::<BlockJobEventData>("BLOCK_JOB_READY", "A block job is ready to complete.");
    r.event::<BlockJobErrorData>("BLOCK_JOB_ERROR", "A block job hit an I/O error.");
    r.event::<BlockJobPendingData>("BLOCK_JOB_PENDING", "A block job waits to be finalized.");
}
