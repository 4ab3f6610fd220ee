//! `query-migrate` (QEMU 10's `MigrationInfo`, built in
//! [`crate::machine::migration::info`]) and the `MIGRATION` /
//! `MIGRATION_PASS` events (sent only with the `events` capability).

use crate::machine::migration::info::{MigrationInfo, RamInfo, XbzrleInfo};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx, Registry};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// QEMU's `MigrationStatus` values.
pub struct MigrationStatusEnum;

impl QapiType for MigrationStatusEnum {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "MigrationStatus",
            values: vec![
                "none",
                "setup",
                "cancelling",
                "cancelled",
                "active",
                "postcopy-active",
                "postcopy-paused",
                "postcopy-recover-setup",
                "postcopy-recover",
                "completed",
                "failed",
                "colo",
                "pre-switchover",
                "device",
                "wait-unplug",
            ],
        }
    }
}

impl QapiType for RamInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrationStats",
            members: vec![
                member::<u64>("transferred"),
                member::<u64>("remaining"),
                member::<u64>("total"),
                member::<u64>("duplicate"),
                member::<u64>("normal"),
                member::<u64>("normal-bytes"),
                member::<u64>("dirty-pages-rate"),
                member::<f64>("mbps"),
                member::<u64>("dirty-sync-count"),
                member::<u64>("postcopy-requests"),
                member::<u64>("page-size"),
                member::<u64>("multifd-bytes"),
                member::<u64>("pages-per-second"),
                member::<u64>("precopy-bytes"),
                member::<u64>("downtime-bytes"),
                member::<u64>("postcopy-bytes"),
                member::<u64>("dirty-sync-missed-zero-copy"),
            ],
        }
    }
}

impl QapiType for XbzrleInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "XBZRLECacheStats",
            members: vec![
                member::<u64>("cache-size"),
                member::<u64>("bytes"),
                member::<u64>("pages"),
                member::<u64>("cache-miss"),
                member::<f64>("cache-miss-rate"),
                member::<f64>("encoding-rate"),
                member::<u64>("overflow"),
            ],
        }
    }
}

impl QapiType for MigrationInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MigrationInfo",
            members: vec![
                optional::<MigrationStatusEnum>("status"),
                optional::<RamInfo>("ram"),
                optional::<XbzrleInfo>("xbzrle-cache"),
                optional::<u64>("total-time"),
                optional::<u64>("expected-downtime"),
                optional::<u64>("downtime"),
                optional::<u64>("setup-time"),
                optional::<String>("error-desc"),
                optional::<Vec<serde_json::Value>>("socket-address"),
            ],
        }
    }
}

/// `query-migrate`.
pub struct QueryMigrate;

impl Command for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    const DOC: &'static str = "Return the state of the outgoing migration (or, on a target, \
        the incoming one): status, times, RAM statistics, xbzrle-cache with the xbzrle \
        capability, error-desc after a failure; {} if none ever ran.";
    type Args = Empty;
    type Ret = MigrationInfo;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<MigrationInfo> {
        Ok(crate::machine::migration::query(ctx.machine))
    }
}

/// Data of `MIGRATION`.
pub struct MigrationEventData;

impl QapiType for MigrationEventData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MIGRATION_arg",
            members: vec![member::<MigrationStatusEnum>("status")],
        }
    }
}

/// Data of `MIGRATION_PASS`.
pub struct MigrationPassData;

impl QapiType for MigrationPassData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "MIGRATION_PASS_arg",
            members: vec![member::<i64>("pass")],
        }
    }
}

/// Registers the live-migration commands of this folder and their events.
pub fn register(r: &mut Registry) {
    r.register::<super::migrate::Migrate>();
    r.register::<super::migrate::MigrateCancel>();
    r.register::<super::incoming::MigrateIncoming>();
    r.register::<QueryMigrate>();
    r.event::<MigrationEventData>(
        "MIGRATION",
        "A migration's status changed (with the `events` capability).",
    );
    r.event::<MigrationPassData>(
        "MIGRATION_PASS",
        "A migration began a new dirty-RAM pass (with the `events` capability).",
    );
}
