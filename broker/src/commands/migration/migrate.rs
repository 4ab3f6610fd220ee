//! `migrate` and `migrate_cancel` with QEMU 10's arguments, checks (in
//! QEMU's order: the URI, `resume`, then the state) and messages. The
//! connection is made by the broker on a thread
//! ([`crate::machine::migration::outgoing`]); as in QEMU a refused
//! connection is a `failed` migration seen in `query-migrate`, not a
//! `migrate` error. `detach` is accepted and, as in QEMU, changes nothing:
//! `migrate` always returns once the migration started.

use ipc_proto::vcpu::RunState;
use serde::Deserialize;

use crate::machine::migration::incoming;
use crate::machine::migration::outgoing::{self, Destination};
use crate::machine::migration::uri::{self, MigrationUri};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{optional, Empty, QapiType, SchemaType};

/// Arguments of `migrate` (QEMU 10 dropped the reference's `blk` and
/// `inc`: they get QEMU's "Parameter 'blk' is unexpected").
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MigrateArgs {
    /// `unix:PATH`, `tcp:HOST:PORT` or `fd:NAME`.
    pub uri: Option<String>,
    /// Accepted for compatibility; ignored, as by QEMU.
    pub detach: Option<bool>,
    /// Resume a paused postcopy migration (bulkhead has none).
    pub resume: Option<bool>,
}

impl QapiType for MigrateArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrateArgs",
            members: vec![
                optional::<String>("uri"),
                optional::<bool>("detach"),
                optional::<bool>("resume"),
            ],
        }
    }
}

/// `migrate`.
pub struct Migrate;

impl Command for Migrate {
    const NAME: &'static str = "migrate";
    const DOC: &'static str = "Migrate the running VM to another bulkhead (or QEMU-compatible \
        peer speaking bulkhead's stream) at uri `unix:PATH`, `tcp:HOST:PORT` or `fd:NAME` \
        (a socket passed with getfd). Returns once started; follow it with query-migrate or \
        the MIGRATION events (capability `events`). Disks on shared storage are flushed and \
        their image locks released at the switchover.";
    type Args = MigrateArgs;
    type Ret = Empty;

    fn run(a: MigrateArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        let Some(text) = a.uri else {
            return Err(QmpError::generic(
                "need either 'uri' or 'channels' argument",
            ));
        };
        let parsed = uri::parse(&text).map_err(|e| QmpError::generic(e.to_string()))?;
        if a.resume == Some(true) {
            return Err(QmpError::generic(
                "Cannot resume if there is no paused migration",
            ));
        }
        // Hotplugs in progress end first; later ones see the migration.
        let _gate = m.migration.device_set.migration_start();
        if outgoing::is_running(crate::machine::lock(&m.migration.out).status) {
            return Err(QmpError::generic(outgoing::IN_PROGRESS));
        }
        let state = m.query_status()?.status;
        if incoming::awaiting(m) {
            return Err(QmpError::generic(
                "Guest is waiting for an incoming migration",
            ));
        }
        match state {
            RunState::Inmigrate => {
                return Err(QmpError::generic(
                    "Guest is waiting for an incoming migration",
                ))
            }
            RunState::Postmigrate => {
                return Err(QmpError::generic(
                    "Can't migrate the vm that was paused due to previous migration",
                ))
            }
            RunState::Debug
            | RunState::InternalError
            | RunState::IoError
            | RunState::Paused
            | RunState::Prelaunch
            | RunState::FinishMigrate
            | RunState::RestoreVm
            | RunState::Running
            | RunState::SaveVm
            | RunState::Shutdown
            | RunState::Suspended
            | RunState::Watchdog
            | RunState::GuestPanicked
            | RunState::Colo => {}
        }
        crate::machine::migration::attach_devices_before_first_run(m)?;
        let dest = match parsed {
            MigrationUri::Fd(name) => {
                let fd = ctx.session.take_named_fd(&name);
                Destination::Named(name, fd)
            }
            other @ (MigrationUri::Unix(_) | MigrationUri::Tcp { .. }) => {
                Destination::Connect(other)
            }
        };
        outgoing::start(m, dest)?;
        Ok(Empty {})
    }
}

/// The session's `getfd` fd called `name` (QEMU's `monitor_get_fd`).
pub fn named_fd(ctx: &Ctx<'_>, name: &str) -> Result<std::os::fd::OwnedFd> {
    ctx.session.take_named_fd(name).ok_or_else(|| {
        QmpError::generic(format!("File descriptor named '{name}' has not been found"))
    })
}

/// `migrate_cancel`.
pub struct MigrateCancel;

impl Command for MigrateCancel {
    const NAME: &'static str = "migrate_cancel";
    const DOC: &'static str = "Cancel the outgoing migration: the VM keeps (or goes back to) \
        running here, with its disks. Does nothing when no migration runs.";
    type Args = Empty;
    type Ret = Empty;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Empty> {
        outgoing::cancel(ctx.machine)?;
        Ok(Empty {})
    }
}
