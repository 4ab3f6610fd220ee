//! Life-cycle and vCPU commands: they reach vcpu-proc through
//! [`crate::machine::Machine`].

use ipc_proto::vcpu::{RunState, VcpuReply, VcpuRequest};
use serde::{Deserialize, Serialize};

use crate::machine::{expect_vcpu_done, unexpected_reply};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

fn vcpu_done(ctx: &Ctx<'_>, req: VcpuRequest) -> Result<Empty> {
    ctx.machine.vcpu_request(req).and_then(expect_vcpu_done)?;
    Ok(Empty {})
}

/// Reply of `query-name`.
#[derive(Debug, Serialize)]
pub struct NameInfo {
    /// The `-name`, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl QapiType for NameInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "NameInfo",
            members: vec![optional::<String>("name")],
        }
    }
}

/// `query-name`.
pub struct QueryName;

impl Command for QueryName {
    const NAME: &'static str = "query-name";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Return the guest name given with -name (absent if none).";
    type Args = Empty;
    type Ret = NameInfo;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<NameInfo> {
        Ok(NameInfo {
            name: ctx.machine.name().map(String::from),
        })
    }
}

/// QEMU's RunState enum.
pub struct RunStateEnum;

impl QapiType for RunStateEnum {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "RunState",
            values: RunState::ALL.iter().map(|s| s.as_str()).collect(),
        }
    }
}

/// Reply of `query-status` (QEMU 10's: `singlestep` was removed in 10.0).
#[derive(Debug, Serialize)]
pub struct StatusInfo {
    /// The run state.
    pub status: &'static str,
    /// True when the vCPUs run.
    pub running: bool,
}

impl QapiType for StatusInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "StatusInfo",
            members: vec![member::<RunStateEnum>("status"), member::<bool>("running")],
        }
    }
}

/// `query-status`.
pub struct QueryStatus;

impl Command for QueryStatus {
    const NAME: &'static str = "query-status";
    const DOC: &'static str = "Return the VM's run status (asked of the vCPU worker; \
        internal-error once it has died).";
    type Args = Empty;
    type Ret = StatusInfo;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<StatusInfo> {
        let s = ctx.machine.query_status()?;
        Ok(StatusInfo {
            status: s.status.as_str(),
            running: s.running,
        })
    }
}

/// `stop`.
pub struct Stop;

impl Command for Stop {
    const NAME: &'static str = "stop";
    const DOC: &'static str = "Pause the vCPUs (emits STOP if they were running).";
    type Args = Empty;
    type Ret = Empty;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Empty> {
        super::dump::refuse_while_dumping(ctx)?;
        // QEMU: during an incoming migration, `stop` clears autostart.
        if crate::machine::migration::incoming::set_autostart_while_running(ctx.machine, false) {
            return Ok(Empty {});
        }
        vcpu_done(ctx, VcpuRequest::Stop)
    }
}

/// `cont`.
pub struct Cont;

impl Command for Cont {
    const NAME: &'static str = "cont";
    const DOC: &'static str = "Resume the vCPUs (emits RESUME); also starts a VM created with -S.";
    type Args = Empty;
    type Ret = Empty;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Empty> {
        super::dump::refuse_while_dumping(ctx)?;
        // QEMU: in `inmigrate`, `cont` only turns autostart on (the
        // broker's during an incoming migration, else vcpu-proc's run
        // state's); otherwise a VM after a migration or a device-state
        // load takes its disks back before it runs.
        let m = ctx.machine;
        if crate::machine::migration::incoming::set_autostart_while_running(m, true) {
            return Ok(Empty {});
        }
        if m.query_status()?.status == ipc_proto::vcpu::RunState::Inmigrate {
            return vcpu_done(ctx, VcpuRequest::Cont);
        }
        crate::machine::migration::disks::activate(m)?;
        vcpu_done(ctx, VcpuRequest::Cont)
    }
}

/// `quit`.
pub struct Quit;

impl Command for Quit {
    const NAME: &'static str = "quit";
    const DOC: &'static str = "End the VM and the broker (emits SHUTDOWN, reason host-qmp-quit). \
        The reply is sent before the connection closes.";
    type Args = Empty;
    type Ret = Empty;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Empty> {
        ctx.machine.request_quit();
        Ok(Empty {})
    }
}

/// `system_reset`.
pub struct SystemReset;

impl Command for SystemReset {
    const NAME: &'static str = "system_reset";
    const DOC: &'static str = "Reset the machine (emits RESET, reason host-qmp-system-reset).";
    type Args = Empty;
    type Ret = Empty;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Empty> {
        // A reset would reload guest RAM under a running dump (QEMU 10
        // aborts there); refused like stop/cont.
        super::dump::refuse_while_dumping(ctx)?;
        vcpu_done(ctx, VcpuRequest::SystemReset)
    }
}

/// `system_powerdown`.
pub struct SystemPowerdown;

impl Command for SystemPowerdown {
    const NAME: &'static str = "system_powerdown";
    const DOC: &'static str = "Press the ACPI power button (emits POWERDOWN); the guest decides \
        whether to shut down.";
    type Args = Empty;
    type Ret = Empty;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Empty> {
        vcpu_done(ctx, VcpuRequest::SystemPowerdown)
    }
}

/// QEMU's CpuInstanceProperties (the members x86 reports).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInstanceProperties {
    /// Socket.
    pub socket_id: i64,
    /// Die within the socket (QEMU reports it with more than one die).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub die_id: Option<i64>,
    /// Core within the die.
    pub core_id: i64,
    /// Thread within the core.
    pub thread_id: i64,
}

impl CpuInstanceProperties {
    /// The properties of possible-CPU `slot` in topology `t`.
    pub fn of(t: &ipc_proto::cpu_topology::CpuTopology, slot: u32) -> Self {
        let ids = t.ids(slot);
        CpuInstanceProperties {
            socket_id: i64::from(ids.socket),
            die_id: (t.dies > 1).then_some(i64::from(ids.die)),
            core_id: i64::from(ids.core),
            thread_id: i64::from(ids.thread),
        }
    }
}

impl QapiType for CpuInstanceProperties {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CpuInstanceProperties",
            members: vec![
                optional::<i64>("node-id"),
                optional::<i64>("socket-id"),
                optional::<i64>("die-id"),
                optional::<i64>("core-id"),
                optional::<i64>("thread-id"),
            ],
        }
    }
}

/// QEMU's SysEmuTarget (the one bulkhead emulates).
pub struct SysEmuTarget;

impl QapiType for SysEmuTarget {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "SysEmuTarget",
            values: vec!["x86_64"],
        }
    }
}

/// One entry of `query-cpus-fast` (QEMU's CpuInfoFast).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    /// Index of the vCPU.
    pub cpu_index: i64,
    /// Its QOM path.
    pub qom_path: String,
    /// Host thread id of its thread.
    pub thread_id: i64,
    /// Topology.
    pub props: CpuInstanceProperties,
    /// Always "x86_64".
    pub target: &'static str,
}

impl QapiType for CpuInfoFast {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CpuInfoFast",
            members: vec![
                member::<i64>("cpu-index"),
                member::<String>("qom-path"),
                member::<i64>("thread-id"),
                member::<CpuInstanceProperties>("props"),
                member::<SysEmuTarget>("target"),
            ],
        }
    }
}

/// `query-cpus-fast`.
pub struct QueryCpusFast;

impl Command for QueryCpusFast {
    const NAME: &'static str = "query-cpus-fast";
    const DOC: &'static str = "Return every vCPU: index, QOM path, host thread id, topology.";
    type Args = Empty;
    type Ret = Vec<CpuInfoFast>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<CpuInfoFast>> {
        let cpus = match ctx.machine.vcpu_request(VcpuRequest::QueryCpus)? {
            VcpuReply::Cpus(c) => c,
            other @ (VcpuReply::Done
            | VcpuReply::Status(_)
            | VcpuReply::Trace(_)
            | VcpuReply::DumpStarted { .. }
            | VcpuReply::DumpProgress { .. }
            | VcpuReply::Migration(_)) => return Err(unexpected_reply(&other).into()),
        };
        // vcpu-proc knows its threads' ids in its own pid namespace only.
        let pid = ctx.machine.vcpu_pid();
        let topology = ctx.machine.config().topology;
        cpus.into_iter()
            .map(|c| {
                let host = pid.and_then(|p| crate::machine::host_tids::host_tid(p, c.thread_id));
                let thread_id = host.ok_or_else(|| {
                    QmpError::generic(format!("vCPU {} has no thread any more", c.cpu_index))
                })?;
                Ok(CpuInfoFast {
                    cpu_index: i64::from(c.cpu_index),
                    qom_path: crate::commands::cpu_hotplug::qom_path(ctx.machine, c.cpu_index),
                    thread_id,
                    props: CpuInstanceProperties::of(&topology, c.cpu_index),
                    target: "x86_64",
                })
            })
            .collect()
    }
}

/// Arguments of `cpu`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CpuArgs {
    /// The CPU's index.
    pub index: i64,
}

impl QapiType for CpuArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CpuArgs",
            members: vec![member::<i64>("index")],
        }
    }
}

/// `cpu`.
pub struct Cpu;

impl Command for Cpu {
    const NAME: &'static str = "cpu";
    const DOC: &'static str = "Set the session's default CPU (indexes as query-cpus-fast reports).";
    type Args = CpuArgs;
    type Ret = Empty;

    fn run(args: CpuArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        match u32::try_from(args.index) {
            Ok(i) if ctx.machine.cpu_present(i) => {
                ctx.session.set_default_cpu(i);
                Ok(Empty {})
            }
            _ => Err(QmpError::generic("Invalid CPU index")),
        }
    }
}
