//! The events the broker emits, declared for `query-qmp-schema`: QEMU's
//! own (STOP, RESUME, RESET, SHUTDOWN, POWERDOWN) and bulkhead's
//! downstream extensions (see [`crate::machine::event_names`]).

use crate::machine::event_names;
use crate::qmp::registry::Registry;
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's ShutdownCause enum.
pub struct ShutdownCause;

impl QapiType for ShutdownCause {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "ShutdownCause",
            values: vec![
                "none",
                "host-error",
                "host-qmp-quit",
                "host-qmp-system-reset",
                "host-signal",
                "host-ui",
                "guest-shutdown",
                "guest-reset",
                "guest-panic",
                "subsystem-reset",
                "snapshot-load",
            ],
        }
    }
}

/// Data of RESET and SHUTDOWN.
pub struct CauseData;

impl QapiType for CauseData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "CauseData",
            members: vec![member::<bool>("guest"), member::<ShutdownCause>("reason")],
        }
    }
}

/// Data of `__org.bulkhead_WORKER_EXITED`.
pub struct WorkerExitedData;

impl QapiType for WorkerExitedData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "WorkerExitedData",
            members: vec![
                member::<String>("worker"),
                member::<i64>("pid"),
                optional::<i64>("exit-code"),
                optional::<String>("signal"),
                optional::<String>("syscall"),
                optional::<String>("reason"),
                member::<String>("action"),
            ],
        }
    }
}

/// Data of `__org.bulkhead_WORKER_RESTARTED`.
pub struct WorkerRestartedData;

impl QapiType for WorkerRestartedData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "WorkerRestartedData",
            members: vec![
                member::<String>("worker"),
                member::<i64>("pid"),
                member::<i64>("restarts"),
                member::<i64>("downtime-ms"),
            ],
        }
    }
}

/// Data of `__org.bulkhead_GUEST_CRASHED`.
pub struct GuestCrashedData;

impl QapiType for GuestCrashedData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "GuestCrashedData",
            members: vec![member::<String>("detail")],
        }
    }
}

/// Declares every event in `r`.
pub fn declare(r: &mut Registry) {
    r.event::<Empty>("STOP", "The vCPUs stopped.");
    r.event::<Empty>("RESUME", "The vCPUs resumed.");
    r.event::<CauseData>("RESET", "The machine was reset.");
    r.event::<CauseData>("SHUTDOWN", "The machine shut down (or is about to).");
    r.event::<Empty>("POWERDOWN", "The ACPI power button was pressed.");
    r.event::<WorkerExitedData>(event_names::WORKER_EXITED, "A worker process exited.");
    r.event::<WorkerRestartedData>(
        event_names::WORKER_RESTARTED,
        "A worker was restarted and restored.",
    );
    r.event::<GuestCrashedData>(event_names::GUEST_CRASHED, "The guest crashed.");
}
