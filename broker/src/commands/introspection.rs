//! What the machine is, as libvirt and other tools ask it: `query-uuid`.

use serde::Serialize;

use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// Reply of `query-uuid` (QEMU's UuidInfo).
#[derive(Debug, Serialize)]
pub struct UuidInfo {
    /// The `-uuid`, or the nil UUID without one.
    #[serde(rename = "UUID")]
    pub uuid: String,
}

impl QapiType for UuidInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "UuidInfo",
            members: vec![member::<String>("UUID")],
        }
    }
}

/// `query-uuid`.
pub struct QueryUuid;

impl Command for QueryUuid {
    const NAME: &'static str = "query-uuid";
    const DOC: &'static str = "Return the machine's UUID (-uuid; all zeros without one).";
    type Args = Empty;
    type Ret = UuidInfo;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<UuidInfo> {
        Ok(UuidInfo {
            uuid: ctx
                .machine
                .config()
                .uuid
                .clone()
                .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into()),
        })
    }
}
