//! `dump-guest-memory`, `query-dump` and
//! `query-dump-guest-memory-capability`, with QEMU 10's arguments, checks
//! and messages. The broker opens the output (or takes the `getfd` fd, or
//! copies a `/dev/fdset/N` fd) and hands it to vcpu-proc, which writes the ELF core
//! (`vcpu_proc::dump`); [`crate::machine::dump`] keeps the state.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use ipc_proto::vcpu::{DumpFilter, DumpRequest, FdSlot, VcpuReply, VcpuRequest};
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};

use crate::cli::MachineType;
use crate::machine::dump::{DumpQueryResult, IN_PROGRESS};
use crate::machine::fdsets::{parse_fd_number, FdSets};
use crate::machine::images::open::{as_identity, strerror};
use crate::machine::unexpected_reply;
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// The formats bulkhead writes (`query-dump-guest-memory-capability`).
const FORMATS: &[&str] = &["elf"];

/// QEMU's `DumpGuestMemoryFormat`.
pub struct DumpGuestMemoryFormat;

impl QapiType for DumpGuestMemoryFormat {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "DumpGuestMemoryFormat",
            values: vec![
                "elf",
                "kdump-zlib",
                "kdump-lzo",
                "kdump-snappy",
                "kdump-raw-zlib",
                "kdump-raw-lzo",
                "kdump-raw-snappy",
                "win-dmp",
            ],
        }
    }
}

/// Arguments of `dump-guest-memory`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DumpArgs {
    /// Dump virtual mappings (walk the guest's page tables).
    pub paging: bool,
    /// `file:PATH` or `fd:NAME`.
    pub protocol: String,
    /// Run in the background.
    pub detach: Option<bool>,
    /// First guest-physical address.
    pub begin: Option<i64>,
    /// Bytes from `begin`.
    pub length: Option<i64>,
    /// The file format (default elf).
    pub format: Option<String>,
}

impl QapiType for DumpArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DumpGuestMemoryArgs",
            members: vec![
                member::<bool>("paging"),
                member::<String>("protocol"),
                optional::<bool>("detach"),
                optional::<i64>("begin"),
                optional::<i64>("length"),
                optional::<DumpGuestMemoryFormat>("format"),
            ],
        }
    }
}

/// QEMU's `DumpStatus`.
pub struct DumpStatusEnum;

impl QapiType for DumpStatusEnum {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "DumpStatus",
            values: vec!["none", "active", "completed", "failed"],
        }
    }
}

impl QapiType for DumpQueryResult {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DumpQueryResult",
            members: vec![
                member::<DumpStatusEnum>("status"),
                member::<i64>("completed"),
                member::<i64>("total"),
            ],
        }
    }
}

/// Data of `DUMP_COMPLETED`.
pub struct DumpCompletedData;

impl QapiType for DumpCompletedData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DumpCompletedData",
            members: vec![
                member::<DumpQueryResult>("result"),
                optional::<String>("error"),
            ],
        }
    }
}

/// Declares `DUMP_COMPLETED`.
pub fn declare_events(r: &mut crate::qmp::registry::Registry) {
    r.event::<DumpCompletedData>(
        "DUMP_COMPLETED",
        "dump-guest-memory ended (result and, on failure, error).",
    );
}

/// QEMU's refusal of `stop`/`cont` while a dump runs (also used for
/// `system_reset`, which QEMU 10 does not survive during a dump).
pub fn refuse_while_dumping(ctx: &Ctx<'_>) -> Result<()> {
    if ctx.machine.dump.is_active() {
        return Err(QmpError::generic(IN_PROGRESS));
    }
    Ok(())
}

/// The checks QEMU makes before it opens the output, in its order.
fn check_args(a: &DumpArgs) -> Result<()> {
    let format = a.format.as_deref().unwrap_or("elf");
    if format != "elf" && (a.paging || a.begin.is_some() || a.length.is_some()) {
        return Err(QmpError::generic(
            "kdump-compressed format doesn't support paging or filter",
        ));
    }
    match (a.begin, a.length) {
        (Some(_), None) => return Err(QmpError::generic("Parameter 'length' is missing")),
        (None, Some(_)) => return Err(QmpError::generic("Parameter 'begin' is missing")),
        (Some(_), Some(_)) | (None, None) => {}
    }
    // The kdump formats are not written by bulkhead: QEMU's answer when its
    // build lacks the compression library.
    let missing = match format {
        "kdump-zlib" | "kdump-raw-zlib" => Some("kdump-zlib"),
        "kdump-lzo" | "kdump-raw-lzo" => Some("kdump-lzo"),
        "kdump-snappy" | "kdump-raw-snappy" => Some("kdump-snappy"),
        _ => None,
    };
    if let Some(f) = missing {
        return Err(QmpError::generic(format!("{f} is not available now")));
    }
    Ok(())
}

/// Opens `protocol`'s output as QEMU: `fd:NAME` takes the session's
/// `getfd` fd, `file:PATH` creates/truncates the file, mode 0400.
fn open_output(ctx: &Ctx<'_>, protocol: &str) -> Result<OwnedFd> {
    if let Some(name) = protocol.strip_prefix("fd:") {
        return ctx.session.take_named_fd(name).ok_or_else(|| {
            QmpError::generic(format!("File descriptor named '{name}' has not been found"))
        });
    }
    if let Some(path) = protocol.strip_prefix("file:") {
        if let Some(rest) = path.strip_prefix("/dev/fdset/") {
            return open_fdset(path, rest);
        }
        // As the VM's `-run-with user=` identity, like the images.
        let identity = crate::machine::block_state::identity(ctx.machine)?;
        let opened = as_identity(identity, || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o400)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
        })
        .ok_or_else(|| {
            QmpError::generic(format!(
                "Could not create '{path}': cannot take the VM's identity"
            ))
        })?;
        return opened.map(OwnedFd::from).map_err(|e| {
            QmpError::generic(format!("Could not create '{path}': {}", strerror(&e)))
        });
    }
    Err(QmpError::generic(
        "parameter 'protocol' must start with 'file:' or 'fd:'",
    ))
}

/// `file:/dev/fdset/N`: a copy of the set's write-only fd (QEMU matches
/// the access mode of its O_WRONLY|O_CREAT|O_TRUNC open), truncated as
/// QEMU's `qemu_open` does for O_TRUNC.
fn open_fdset(path: &str, id: &str) -> Result<OwnedFd> {
    let id = parse_fd_number(id)
        .ok_or_else(|| QmpError::generic(format!("Could not parse fdset {path}")))?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
    let fd = FdSets::global()
        .dup(id, flags)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    nix::unistd::ftruncate(&fd, 0)
        .map_err(|e| QmpError::generic(format!("Could not create '{path}': {}", e.desc())))?;
    Ok(fd)
}

/// `dump-guest-memory`.
pub struct DumpGuestMemory;

impl Command for DumpGuestMemory {
    const NAME: &'static str = "dump-guest-memory";
    const DOC: &'static str = "Write an ELF core of the guest (RAM as PT_LOAD segments, each \
        vCPU's registers as NT_PRSTATUS and QEMU notes) to protocol `file:PATH` or `fd:NAME`. \
        The VM is stopped (save-vm) during the dump and resumed if it ran. `paging` maps \
        virtual addresses from the guest's page tables; `begin`/`length` limit the \
        guest-physical range; `detach` returns at once (see query-dump, DUMP_COMPLETED). \
        Only the elf format is written.";
    type Args = DumpArgs;
    type Ret = Empty;

    fn run(a: DumpArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let m = ctx.machine;
        if m.dump.is_active() {
            return Err(QmpError::generic(IN_PROGRESS));
        }
        check_args(&a)?;
        let fd = open_output(ctx, &a.protocol)?;
        if a.format.as_deref() == Some("win-dmp") {
            // QEMU's win-dmp reads the guest's vmcoreinfo note; bulkhead has
            // no vmcoreinfo device, so QEMU's answer for that case.
            drop(fd);
            m.dump.begin().map_err(QmpError::generic)?;
            let msg = "win-dump: invalid vmcoreinfo note size";
            m.dump.failed_at_once(m.events(), m.config().mem_size, msg);
            return Err(QmpError::generic(msg));
        }
        if m.config().machine == MachineType::None {
            return Err(QmpError::generic("dump: no guest memory to dump"));
        }
        m.dump.begin().map_err(QmpError::generic)?;
        let req = VcpuRequest::DumpGuestMemory(DumpRequest {
            fd: FdSlot(0),
            paging: a.paging,
            filter: a
                .begin
                .zip(a.length)
                .map(|(begin, length)| DumpFilter { begin, length }),
        });
        let file = File::from(fd);
        match m.vcpu_request_with_fds(req, &[file.as_fd()]) {
            Ok(VcpuReply::DumpStarted { total }) => m.dump.started(total),
            Ok(
                other @ (VcpuReply::Done
                | VcpuReply::Status(_)
                | VcpuReply::Cpus(_)
                | VcpuReply::Trace(_)
                | VcpuReply::DumpProgress { .. }
                | VcpuReply::Migration(_)),
            ) => {
                m.dump.refused();
                return Err(unexpected_reply(&other).into());
            }
            Err(e) => {
                m.dump.refused();
                return Err(e.into());
            }
        }
        drop(file);
        if a.detach == Some(true) {
            return Ok(Empty {});
        }
        m.dump.wait().map_err(QmpError::generic)?;
        Ok(Empty {})
    }
}

/// `query-dump`.
pub struct QueryDump;

impl Command for QueryDump {
    const NAME: &'static str = "query-dump";
    const DOC: &'static str = "Return the state of the last dump-guest-memory: status \
        (none, active, completed, failed), guest memory bytes written and to write.";
    type Args = Empty;
    type Ret = DumpQueryResult;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<DumpQueryResult> {
        Ok(ctx.machine.dump.query(ctx.machine))
    }
}

/// Reply of `query-dump-guest-memory-capability`.
#[derive(Debug, Serialize)]
pub struct DumpGuestMemoryCapability {
    /// The formats `dump-guest-memory` writes.
    pub formats: Vec<&'static str>,
}

impl QapiType for DumpGuestMemoryCapability {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DumpGuestMemoryCapability",
            members: vec![member::<Vec<DumpGuestMemoryFormat>>("formats")],
        }
    }
}

/// `query-dump-guest-memory-capability`.
pub struct QueryDumpGuestMemoryCapability;

impl Command for QueryDumpGuestMemoryCapability {
    const NAME: &'static str = "query-dump-guest-memory-capability";
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "Return the formats dump-guest-memory writes (elf).";
    type Args = Empty;
    type Ret = DumpGuestMemoryCapability;

    fn run(_: Empty, _: &Ctx<'_>) -> Result<DumpGuestMemoryCapability> {
        Ok(DumpGuestMemoryCapability {
            formats: FORMATS.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        format: Option<&str>,
        paging: bool,
        begin: Option<i64>,
        length: Option<i64>,
    ) -> DumpArgs {
        DumpArgs {
            paging,
            protocol: "file:/x".into(),
            detach: None,
            begin,
            length,
            format: format.map(String::from),
        }
    }

    fn msg(r: Result<()>) -> String {
        r.unwrap_err().desc
    }

    #[test]
    fn argument_checks_give_qemu_messages_in_qemu_order() {
        assert_eq!(
            msg(check_args(&args(Some("kdump-lzo"), false, Some(0), None))),
            "kdump-compressed format doesn't support paging or filter"
        );
        assert_eq!(
            msg(check_args(&args(None, false, Some(0), None))),
            "Parameter 'length' is missing"
        );
        assert_eq!(
            msg(check_args(&args(None, false, None, Some(1)))),
            "Parameter 'begin' is missing"
        );
        assert_eq!(
            msg(check_args(&args(
                Some("kdump-raw-snappy"),
                false,
                None,
                None
            ))),
            "kdump-snappy is not available now"
        );
        assert_eq!(
            msg(check_args(&args(Some("kdump-zlib"), false, None, None))),
            "kdump-zlib is not available now"
        );
        assert!(check_args(&args(Some("elf"), true, Some(0), Some(4096))).is_ok());
        assert!(check_args(&args(Some("win-dmp"), false, None, None)).is_ok());
    }
}
