//! `migrate-set-cache-size` and `query-migrate-cache-size`: the
//! reference's XBZRLE cache-size commands (QEMU 10 removed them in favour
//! of the `xbzrle-cache-size` parameter, which they set and read). The
//! value is rounded down to a power of two and checked as QEMU 2.8 did:
//! no larger than guest RAM, at least a page.

use ipc_proto::FlatError;
use serde::Deserialize;

use crate::machine::migration::settings;
use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, Empty, QapiType, SchemaType};

/// Arguments of `migrate-set-cache-size`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCacheSizeArgs {
    /// The cache size in bytes.
    pub value: i64,
}

impl QapiType for SetCacheSizeArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrateSetCacheSizeArgs",
            members: vec![member::<i64>("value")],
        }
    }
}

/// `migrate-set-cache-size`.
pub struct MigrateSetCacheSize;

impl Command for MigrateSetCacheSize {
    const NAME: &'static str = "migrate-set-cache-size";
    const DOC: &'static str = "Set the XBZRLE cache size (bytes, rounded down to a power of \
        two; at least a page, at most guest RAM): the 'xbzrle-cache-size' parameter.";
    type Args = SetCacheSizeArgs;
    type Ret = Empty;

    fn run(args: SetCacheSizeArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        let ram = ctx.machine.config().mem_size;
        let size = settings::cache_size_from_value(args.value, ram).map_err(QmpError::generic)?;
        settings::update(ctx.machine, |s| {
            s.xbzrle_cache_size = size;
            Ok::<(), FlatError>(())
        })
        .map_err(QmpError::from)?;
        Ok(Empty {})
    }
}

/// `query-migrate-cache-size`.
pub struct QueryMigrateCacheSize;

impl Command for QueryMigrateCacheSize {
    const NAME: &'static str = "query-migrate-cache-size";
    const DOC: &'static str = "The XBZRLE cache size in bytes.";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = i64;

    fn run(_args: Empty, ctx: &Ctx<'_>) -> Result<i64> {
        let size = settings::current(ctx.machine).xbzrle_cache_size;
        // `xbzrle-cache-size` may be set up to 2^63 (a power of two of a
        // u64); the reference's reply is an int.
        Ok(i64::try_from(size).unwrap_or(i64::MAX))
    }
}
