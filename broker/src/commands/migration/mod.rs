//! The migration commands: one file per concern. `capabilities.rs`
//! `migrate-set-capabilities`; `migrate.rs` `migrate`, `migrate_cancel`;
//! `incoming.rs` `migrate-incoming` and `-incoming URI`; `query.rs`
//! `query-migrate` and the MIGRATION / MIGRATION_PASS events.

pub mod capabilities;
pub mod incoming;
pub mod migrate;
pub mod query;

pub use capabilities::MigrateSetCapabilities;
