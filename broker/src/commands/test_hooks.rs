//! `x-bulkhead-test-escape`: asks a sandboxed worker to try one escape
//! (open a host file, execve, an outside socket, ptrace the broker, a
//! forbidden syscall) and reports what came of it. Compiled only with the
//! broker's `test-hooks` feature, which release builds never enable; the
//! workers must be built with theirs too.
//!
//! An attempt the sandbox refuses with an errno returns
//! `{"outcome": "blocked", "errno": N}`. One that seccomp traps kills the
//! worker: the command fails (the channel closed) and the broker's usual
//! worker-exit handling follows (event, restart or guest crash).

use ipc_proto::block::{BlockReply, BlockRequest};
use ipc_proto::vcpu::{VcpuReply, VcpuRequest};
use ipc_proto::FlatError;
use sandbox::escape::{Escape, Outcome};
use serde::{Deserialize, Serialize};

use crate::machine::unexpected_reply;
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, QapiType, SchemaType};

/// The worker that makes the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestWorker {
    /// vcpu-proc.
    Vcpu,
    /// block-proc.
    Block,
}

impl QapiType for TestWorker {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "XBulkheadTestWorker",
            values: vec!["vcpu", "block"],
        }
    }
}

/// The escape to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestAttempt {
    /// Open `/etc/passwd`.
    OpenHostFile,
    /// Execute `/bin/sh`.
    Execve,
    /// Connect an `AF_INET` socket to an outside address.
    InetSocket,
    /// `PTRACE_ATTACH` to the broker.
    Ptrace,
    /// `mount`.
    ForbiddenSyscall,
}

impl QapiType for TestAttempt {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "XBulkheadTestAttempt",
            values: vec![
                "open-host-file",
                "execve",
                "inet-socket",
                "ptrace",
                "forbidden-syscall",
            ],
        }
    }
}

impl TestAttempt {
    fn escape(self) -> Escape {
        match self {
            TestAttempt::OpenHostFile => Escape::OpenHostFile,
            TestAttempt::Execve => Escape::Execve,
            TestAttempt::InetSocket => Escape::InetSocket,
            TestAttempt::Ptrace => Escape::Ptrace {
                pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            },
            TestAttempt::ForbiddenSyscall => Escape::ForbiddenSyscall,
        }
    }
}

/// Arguments of `x-bulkhead-test-escape`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TestEscapeArgs {
    /// Which worker.
    pub worker: TestWorker,
    /// What to try.
    pub attempt: TestAttempt,
}

impl QapiType for TestEscapeArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "XBulkheadTestEscapeArgs",
            members: vec![
                member::<TestWorker>("worker"),
                member::<TestAttempt>("attempt"),
            ],
        }
    }
}

/// Reply of `x-bulkhead-test-escape`.
#[derive(Debug, Serialize)]
pub struct TestEscapeResult {
    /// `blocked` or `escaped`.
    pub outcome: &'static str,
    /// The errno the sandbox refused the attempt with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i64>,
}

impl QapiType for TestEscapeResult {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "XBulkheadTestEscapeResult",
            members: vec![member::<String>("outcome"), optional::<i64>("errno")],
        }
    }
}

impl From<Outcome> for TestEscapeResult {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Blocked(errno) => TestEscapeResult {
                outcome: "blocked",
                errno: Some(i64::from(errno)),
            },
            Outcome::Escaped => TestEscapeResult {
                outcome: "escaped",
                errno: None,
            },
        }
    }
}

/// Turns a worker's plain reply to `TestEscape` back into its outcome.
fn outcome<R: std::fmt::Debug>(
    reply: std::result::Result<Option<R>, FlatError>,
) -> Result<TestEscapeResult> {
    match reply {
        Ok(None) => Ok(Outcome::Escaped.into()),
        Ok(Some(other)) => Err(unexpected_reply(&other).into()),
        Err(e) => match Outcome::from_reply_error(&e.desc) {
            Some(o) => Ok(o.into()),
            None => Err(QmpError::from(e)),
        },
    }
}

/// `x-bulkhead-test-escape`.
pub struct XTestEscape;

impl Command for XTestEscape {
    const NAME: &'static str = "x-bulkhead-test-escape";
    const DOC: &'static str = "Test builds only: make a sandboxed worker try one escape \
        and report whether the sandbox refused it (a trapped syscall kills the worker).";
    type Args = TestEscapeArgs;
    type Ret = TestEscapeResult;

    fn run(args: TestEscapeArgs, ctx: &Ctx<'_>) -> Result<TestEscapeResult> {
        let e = args.attempt.escape();
        match args.worker {
            TestWorker::Vcpu => outcome(ctx.machine.vcpu_request(VcpuRequest::TestEscape(e)).map(
                |r| match r {
                    VcpuReply::Done => None,
                    other @ (VcpuReply::Status(_)
                    | VcpuReply::Cpus(_)
                    | VcpuReply::Trace(_)
                    | VcpuReply::DumpStarted { .. }
                    | VcpuReply::DumpProgress { .. }
                    | VcpuReply::Migration(_)) => Some(other),
                },
            )),
            TestWorker::Block => outcome(
                ctx.machine
                    .block_request(BlockRequest::TestEscape(e))
                    .map(|r| match r {
                        BlockReply::Done => None,
                        other @ (BlockReply::NeedFiles { .. }
                        | BlockReply::Nodes(_)
                        | BlockReply::Stats(_)
                        | BlockReply::Trace(_)
                        | BlockReply::Bitmap(_)
                        | BlockReply::Snapshot(_)) => Some(other),
                    }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_reply_becomes_its_errno_and_other_errors_stay_errors() {
        let blocked = Outcome::Blocked(libc::EACCES).into_reply().unwrap_err();
        let r = outcome::<VcpuReply>(Err(blocked)).unwrap();
        assert_eq!(
            (r.outcome, r.errno),
            ("blocked", Some(i64::from(libc::EACCES)))
        );
        let r = outcome::<VcpuReply>(Ok(None)).unwrap();
        assert_eq!((r.outcome, r.errno), ("escaped", None));
        assert!(outcome::<VcpuReply>(Err(FlatError::generic("channel closed"))).is_err());
    }
}
