//! Migration's desired state in the broker: the parameters and
//! capabilities `migrate-set-parameters` / `migrate-set-capabilities` /
//! `migrate-set-cache-size` set (`settings.rs`), and vcpu-proc's
//! migration events turned into QMP events and phase changes.

use ipc_proto::migration::MigrationEvent;

use super::Machine;

pub mod settings;

/// The broker's migration state (one per machine).
#[derive(Debug, Default)]
pub struct MigrationState {
    /// Parameters and capabilities.
    pub settings: std::sync::Mutex<settings::MigrationSettings>,
}

/// vcpu-proc reported `ev`.
pub fn on_event(m: &Machine, ev: MigrationEvent) {
    let _ = m;
    tracing::warn!("migration event without a migration: {ev:?}");
}
