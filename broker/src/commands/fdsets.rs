//! File descriptor passing, as QEMU: `getfd`/`closefd` keep an fd passed
//! with SCM_RIGHTS under a name in the session; `add-fd`/`remove-fd`/
//! `query-fdsets` manage the broker-wide fd sets
//! ([`crate::machine::fdsets`]) that `/dev/fdset/N` file names open.

use serde::{Deserialize, Serialize};

use crate::machine::fdsets::{FdSets, FdsetError};
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's message when a command needs an fd and none came with it.
const NO_FD: &str = "No file descriptor supplied via SCM_RIGHTS";

impl From<FdsetError> for QmpError {
    fn from(e: FdsetError) -> Self {
        QmpError::generic(e.to_string())
    }
}

/// Arguments of `getfd` and `closefd`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FdNameArgs {
    /// The fd's name in the session.
    pub fdname: String,
}

impl QapiType for FdNameArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "FdNameArgs",
            members: vec![member::<String>("fdname")],
        }
    }
}

/// `getfd`.
pub struct GetFd;

impl Command for GetFd {
    const NAME: &'static str = "getfd";
    const DOC: &'static str = "Receive a file descriptor passed with this message (SCM_RIGHTS) \
        and keep it in the session under `fdname`, replacing (and closing) an fd of the same \
        name. The name must not start with a digit.";
    type Args = FdNameArgs;
    type Ret = Empty;

    fn run(args: FdNameArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let fd = ctx.fds.take().ok_or_else(|| QmpError::generic(NO_FD))?;
        if args.fdname.starts_with(|c: char| c.is_ascii_digit()) {
            // `fd` is closed on return, as QEMU closes it.
            return Err(QmpError::generic(
                "Parameter 'fdname' expects a name not starting with a digit",
            ));
        }
        ctx.session.put_named_fd(&args.fdname, fd);
        Ok(Empty {})
    }
}

/// `closefd`.
pub struct CloseFd;

impl Command for CloseFd {
    const NAME: &'static str = "closefd";
    const DOC: &'static str = "Close the file descriptor the session received with getfd \
        under `fdname`.";
    type Args = FdNameArgs;
    type Ret = Empty;

    fn run(args: FdNameArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        match ctx.session.take_named_fd(&args.fdname) {
            Some(fd) => {
                drop(fd);
                Ok(Empty {})
            }
            None => Err(QmpError::generic(format!(
                "File descriptor named '{}' not found",
                args.fdname
            ))),
        }
    }
}

/// Arguments of `add-fd`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AddFdArgs {
    /// The set to add to (created if needed); a new set when absent.
    pub fdset_id: Option<i64>,
    /// Free text kept with the fd and shown by `query-fdsets`.
    pub opaque: Option<String>,
}

impl QapiType for AddFdArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "AddFdArgs",
            members: vec![optional::<i64>("fdset-id"), optional::<String>("opaque")],
        }
    }
}

/// Reply of `add-fd` (QEMU's AddfdInfo).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AddfdInfo {
    /// The fd's number in the broker.
    pub fd: i64,
    /// The set it went into.
    pub fdset_id: i64,
}

impl QapiType for AddfdInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "AddfdInfo",
            members: vec![member::<i64>("fdset-id"), member::<i64>("fd")],
        }
    }
}

/// `add-fd`.
pub struct AddFd;

impl Command for AddFd {
    const NAME: &'static str = "add-fd";
    const DOC: &'static str = "Add the file descriptor passed with this message (SCM_RIGHTS) \
        to fd set `fdset-id` (or to a new set with the lowest free id). `/dev/fdset/N` then \
        opens a copy of it wherever a file name is accepted.";
    type Args = AddFdArgs;
    type Ret = AddfdInfo;

    fn run(args: AddFdArgs, ctx: &Ctx<'_>) -> Result<AddfdInfo> {
        let fd = ctx.fds.take().ok_or_else(|| QmpError::generic(NO_FD))?;
        let added = FdSets::global().add(fd, args.fdset_id, args.opaque)?;
        Ok(AddfdInfo {
            fd: added.fd,
            fdset_id: added.fdset_id,
        })
    }
}

/// Arguments of `remove-fd`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RemoveFdArgs {
    /// The set.
    pub fdset_id: i64,
    /// The fd to remove; every fd of the set when absent.
    pub fd: Option<i64>,
}

impl QapiType for RemoveFdArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "RemoveFdArgs",
            members: vec![member::<i64>("fdset-id"), optional::<i64>("fd")],
        }
    }
}

/// `remove-fd`.
pub struct RemoveFd;

impl Command for RemoveFd {
    const NAME: &'static str = "remove-fd";
    const DOC: &'static str = "Close fd `fd` of fd set `fdset-id`, or all of the set's fds; \
        a set without fds disappears. Copies already opened through /dev/fdset/N stay valid.";
    type Args = RemoveFdArgs;
    type Ret = Empty;

    fn run(args: RemoveFdArgs, _: &Ctx<'_>) -> Result<Empty> {
        FdSets::global().remove(args.fdset_id, args.fd)?;
        Ok(Empty {})
    }
}

/// One fd of `query-fdsets` (QEMU's FdsetFdInfo).
#[derive(Debug, Serialize)]
pub struct FdsetFdInfo {
    /// The fd's number in the broker.
    pub fd: i64,
    /// The text given with `add-fd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opaque: Option<String>,
}

impl QapiType for FdsetFdInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "FdsetFdInfo",
            members: vec![member::<i64>("fd"), optional::<String>("opaque")],
        }
    }
}

/// One set of `query-fdsets` (QEMU's FdsetInfo).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FdsetInfo {
    /// Its fds, oldest first.
    pub fds: Vec<FdsetFdInfo>,
    /// The set's id.
    pub fdset_id: i64,
}

impl QapiType for FdsetInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "FdsetInfo",
            members: vec![member::<i64>("fdset-id"), member::<Vec<FdsetFdInfo>>("fds")],
        }
    }
}

/// `query-fdsets`.
pub struct QueryFdsets;

impl Command for QueryFdsets {
    const NAME: &'static str = "query-fdsets";
    const DOC: &'static str = "List the fd sets (highest id first) and their fds.";
    type Args = Empty;
    type Ret = Vec<FdsetInfo>;

    fn run(_: Empty, _: &Ctx<'_>) -> Result<Vec<FdsetInfo>> {
        Ok(FdSets::global()
            .query()
            .into_iter()
            .map(|s| FdsetInfo {
                fdset_id: s.fdset_id,
                fds: s
                    .fds
                    .into_iter()
                    .map(|f| FdsetFdInfo {
                        fd: f.fd,
                        opaque: f.opaque,
                    })
                    .collect(),
            })
            .collect())
    }
}
