//! `migrate-incoming` (after `-incoming defer`) and `-incoming URI` at
//! start-up, with QEMU 10's checks and messages: the state moves to
//! `setup` before the transport is set up, so a failed bind or a missing
//! fd leaves it there and a second attempt is refused, as QEMU does.

use serde::Deserialize;

use crate::machine::migration::incoming::{self, Source};
use crate::machine::migration::transport::Listening;
use crate::machine::migration::uri::{self, MigrationUri};
use crate::machine::{lock, Machine};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{optional, Empty, QapiType, SchemaType};

/// Arguments of `migrate-incoming`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MigrateIncomingArgs {
    /// `unix:PATH`, `tcp:HOST:PORT` or `fd:NAME`.
    pub uri: Option<String>,
    /// End the broker if the incoming migration fails (default true).
    pub exit_on_error: Option<bool>,
}

impl QapiType for MigrateIncomingArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrateIncomingArgs",
            members: vec![optional::<String>("uri"), optional::<bool>("exit-on-error")],
        }
    }
}

/// `migrate-incoming`.
pub struct MigrateIncoming;

impl Command for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    const DOC: &'static str = "Start the incoming migration of a VM started with -incoming \
        defer: listen at uri `unix:PATH` or `tcp:HOST:PORT` (one connection is accepted), or \
        read from `fd:NAME` (getfd). exit-on-error (default true) ends the broker if the \
        migration fails.";
    type Args = MigrateIncomingArgs;
    type Ret = Empty;

    fn run(a: MigrateIncomingArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        if lock(&m.migration.inc).started {
            return Err(QmpError::generic(
                "The incoming migration has already been started",
            ));
        }
        if m.config().incoming.is_none() || !waiting_for_incoming(m)? {
            return Err(QmpError::generic(
                "'-incoming' was not specified on the command line",
            ));
        }
        let Some(text) = a.uri else {
            return Err(QmpError::generic(
                "need either 'uri' or 'channels' argument",
            ));
        };
        let parsed = uri::parse(&text).map_err(|e| QmpError::generic(e.to_string()))?;
        incoming::prepare(m, a.exit_on_error.unwrap_or(true))?;
        let source = match parsed {
            MigrationUri::Fd(name) => Source::Connected(super::migrate::named_fd(ctx, &name)?),
            other @ (MigrationUri::Unix(_) | MigrationUri::Tcp { .. }) => Source::Listen(
                Listening::bind(&other).map_err(|e| QmpError::generic(e.to_string()))?,
            ),
        };
        incoming::start(m, source)?;
        Ok(Empty {})
    }
}

/// Whether the VM is in `inmigrate` (QEMU refuses `migrate-incoming`
/// otherwise, e.g. after a device-state load and `cont`).
fn waiting_for_incoming(m: &Machine) -> Result<bool> {
    let state = m.query_status()?.status;
    Ok(incoming::awaiting(m) || state == ipc_proto::vcpu::RunState::Inmigrate)
}

/// Errors of `-incoming URI` at start-up (QEMU prints
/// `-incoming URI: MESSAGE` and exits with status 1).
#[derive(Debug, thiserror::Error)]
#[error("-incoming {uri}: {message}")]
pub struct StartupError {
    /// The URI as given.
    pub uri: String,
    /// QEMU's message.
    pub message: String,
}

/// `-incoming URI` (not `defer`): listens before the QMP clients are
/// served a VM, as QEMU. `fd:N` takes an inherited fd by number.
pub fn listen_at_startup(m: &Machine) -> std::result::Result<(), StartupError> {
    let Some(text) = m.config().incoming.clone().filter(|u| u != "defer") else {
        return Ok(());
    };
    let fail = |message: String| StartupError {
        uri: text.clone(),
        message,
    };
    let parsed = uri::parse(&text).map_err(|e| fail(e.to_string()))?;
    incoming::prepare(m, true).map_err(|e| fail(e.desc))?;
    let source = match parsed {
        MigrationUri::Fd(number) => Source::Connected(inherited_fd(&number).map_err(fail)?),
        other @ (MigrationUri::Unix(_) | MigrationUri::Tcp { .. }) => {
            Source::Listen(Listening::bind(&other).map_err(|e| fail(e.to_string()))?)
        }
    };
    incoming::start(m, source).map_err(|e| fail(e.desc))
}

/// `-incoming fd:N`: the inherited socket `N` (QEMU's message when `N` is
/// not a number or not an open fd).
fn inherited_fd(text: &str) -> std::result::Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    let bad = || format!("Invalid file descriptor number '{text}'");
    let n: i32 = text.parse().map_err(|_| bad())?;
    if n < 3 {
        return Err(bad());
    }
    // SAFETY: F_GETFD only reads the flags of fd n, if it is open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(bad());
    }
    let st = nix::sys::stat::fstat(
        // SAFETY: n is open (checked above) for the duration of the call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(n) },
    )
    .map_err(|_| bad())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("fd {n} is not a socket"));
    }
    // SAFETY: fd n is open, inherited, named by the user for this use
    // only, and nothing else in the broker owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
}
