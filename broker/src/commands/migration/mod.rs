//! The migration commands: one file per concern. `capabilities.rs`
//! `migrate-set-capabilities` / `query-migrate-capabilities`;
//! `parameters.rs` `migrate-set-parameters` / `query-migrate-parameters`;
//! `cache_size.rs` `migrate-set-cache-size` / `query-migrate-cache-size`;
//! `colo.rs` `x-colo-lost-heartbeat`; `devices_state.rs`
//! `xen-save-devices-state` and `xen-load-devices-state`; `migrate.rs`
//! `migrate`, `migrate_cancel`; `incoming.rs` `migrate-incoming` and
//! `-incoming URI`; `query.rs` `query-migrate` and the MIGRATION /
//! MIGRATION_PASS events.

pub mod cache_size;
pub mod capabilities;
pub mod colo;
pub mod devices_state;
pub mod incoming;
pub mod migrate;
pub mod parameters;
pub mod query;

pub use capabilities::MigrateSetCapabilities;
