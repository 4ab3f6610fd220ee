//! `trace-event-get-state` and `trace-event-set-state`: the trace points
//! of every process (broker, vcpu-proc, block-proc), answered by the
//! broker over all of them (`machine::trace_state`).

use serde::Deserialize;

use crate::machine::trace_state::query::{self, EventInfo};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QAPI `TraceEventState`.
pub struct EventStateEnum;

impl QapiType for EventStateEnum {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "TraceEventState",
            values: vec!["unavailable", "disabled", "enabled"],
        }
    }
}

impl QapiType for EventInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "TraceEventInfo",
            members: vec![
                member::<String>("name"),
                member::<EventStateEnum>("state"),
                member::<bool>("vcpu"),
            ],
        }
    }
}

/// Arguments of `trace-event-get-state`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GetStateArgs {
    /// A name or a pattern (`*`).
    pub name: String,
    /// Only per-vCPU points, their state on this vCPU.
    pub vcpu: Option<i64>,
}

impl QapiType for GetStateArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "GetStateArgs",
            members: vec![member::<String>("name"), optional::<i64>("vcpu")],
        }
    }
}

/// `trace-event-get-state`.
pub struct TraceEventGetState;

impl Command for TraceEventGetState {
    const NAME: &'static str = "trace-event-get-state";
    const DOC: &'static str = "Query the state of the trace points whose names match a pattern, \
        in every process; with vcpu, only per-vCPU points, on that vCPU.";
    type Args = GetStateArgs;
    type Ret = Vec<EventInfo>;

    fn run(args: GetStateArgs, ctx: &Ctx<'_>) -> Result<Vec<EventInfo>> {
        let points = ctx.machine.trace_points();
        Ok(query::get_state(
            &points,
            &args.name,
            args.vcpu,
            ctx.machine.cpu_count(),
        )?)
    }
}

/// Arguments of `trace-event-set-state`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetStateArgs {
    /// A name or a pattern (`*`).
    pub name: String,
    /// Enable or disable.
    pub enable: bool,
    /// Ignore points that cannot be changed (bulkhead's points all can:
    /// none is compiled out, so nothing is ever refused for it).
    pub ignore_unavailable: Option<bool>,
    /// Only per-vCPU points, on this vCPU.
    pub vcpu: Option<i64>,
}

impl QapiType for SetStateArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "SetStateArgs",
            members: vec![
                member::<String>("name"),
                member::<bool>("enable"),
                optional::<bool>("ignore-unavailable"),
                optional::<i64>("vcpu"),
            ],
        }
    }
}

/// `trace-event-set-state`.
pub struct TraceEventSetState;

impl Command for TraceEventSetState {
    const NAME: &'static str = "trace-event-set-state";
    const DOC: &'static str = "Enable or disable the trace points whose names match a pattern, \
        in every process (kept for restarted workers); with vcpu, only per-vCPU points, on \
        that vCPU.";
    type Args = SetStateArgs;
    type Ret = Empty;

    fn run(args: SetStateArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        ctx.machine.trace_set(&args.name, args.enable, args.vcpu)?;
        Ok(Empty {})
    }
}
