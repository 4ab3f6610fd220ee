//! One type per QMP command, each declared once (name, arguments, return,
//! doc, flags, handler: see [`crate::qmp::registry::Command`]), and the
//! events the broker emits. [`registry`] lists them all; dispatch,
//! validation, `query-commands` and `query-qmp-schema` derive from it.
//!
//! - [`control`]: the protocol itself (negotiation, version, introspection).
//! - [`machine`]: the VM's life cycle and vCPUs.
//! - [`events`]: the event declarations.
//! - [`introspection`]: what the machine is (`query-uuid`).
//! - [`qom`]: QOM types and objects as libvirt probes them.
//! - [`hmp`]: `human-monitor-command` (HMP through QMP).
//! - [`fdsets`]: fd passing (`getfd`, `add-fd`, fd sets).
//! - [`dump`]: `dump-guest-memory`, `query-dump` and its capability.
//! - [`device`]: `device_add` / `device_del` and the device events.
//! - [`net`]: `netdev_add`/`netdev_del`, `set_link`, `query-rx-filter`.
//! - [`trace`]: `trace-event-get-state` / `trace-event-set-state`.
//! - [`gic`]: `query-gic-capabilities` (none on x86).
//! - [`rocker`]: the host-side switches (`query-rocker*`).
//! - [`cpu_hotplug`]: `query-hotpluggable-cpus`, `device_add`/`device_del` of CPUs.
//! - [`test_hooks`] (feature `test-hooks`, never in release builds):
//!   escape attempts inside the sandboxed workers.

pub mod block;
pub mod chardev;
pub mod control;
pub mod cpu_hotplug;
pub mod device;
pub mod dump;
pub mod events;
pub mod fdsets;
pub mod gic;
pub mod hmp;
pub mod hmp_media;
pub mod introspection;
pub mod machine;
pub mod migration;
pub mod net;
pub mod qom;
pub mod rocker;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod trace;

use crate::qmp::registry::Registry;

/// Every command and event of the broker.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<control::QmpCapabilities>();
    r.register::<control::QueryVersion>();
    r.register::<control::QueryCommands>();
    r.register::<control::QueryQmpSchema>();
    r.register::<control::Ping>();
    r.register::<machine::QueryName>();
    r.register::<machine::QueryStatus>();
    r.register::<machine::Stop>();
    r.register::<machine::Cont>();
    r.register::<machine::Quit>();
    r.register::<machine::SystemReset>();
    r.register::<machine::SystemPowerdown>();
    r.register::<machine::QueryCpusFast>();
    r.register::<machine::Cpu>();
    r.register::<migration::MigrateSetCapabilities>();
    r.register::<chardev::QueryChardev>();
    r.register::<introspection::QueryUuid>();
    r.register::<introspection::QueryTarget>();
    r.register::<introspection::QueryKvm>();
    r.register::<introspection::QueryMachines>();
    r.register::<introspection::QueryCpuDefinitions>();
    r.register::<introspection::QueryCpuModelExpansion>();
    r.register::<introspection::QueryIothreads>();
    r.register::<introspection::QueryTpmModels>();
    r.register::<introspection::QueryTpmTypes>();
    r.register::<introspection::QuerySevCapabilities>();
    r.register::<introspection::QueryMigrateCapabilities>();
    r.register::<introspection::QueryCommandLineOptions>();
    r.register::<hmp::HumanMonitorCommand>();
    r.register::<qom::QomListTypes>();
    r.register::<qom::DeviceListProperties>();
    r.register::<qom::QomListProperties>();
    r.register::<qom::QomList>();
    r.register::<qom::QomGet>();
    r.register::<rocker::QueryRocker>();
    r.register::<rocker::QueryRockerPorts>();
    r.register::<rocker::QueryRockerOfDpaFlows>();
    r.register::<rocker::QueryRockerOfDpaGroups>();
    r.register::<block::BlockdevAdd>();
    r.register::<block::BlockdevDel>();
    r.register::<block::XBlockdevDel>();
    r.register::<block::QueryNamedBlockNodes>();
    r.register::<block::QueryBlockstats>();
    r.register::<block::QueryBlock>();
    r.register::<block::BlockSetIoThrottle>();
    r.register::<block::BlockSetWriteThreshold>();
    r.register::<block::BlockResize>();
    r.register::<block::BlockdevSnapshotInternalSync>();
    r.register::<block::BlockdevSnapshotDeleteInternalSync>();
    r.event::<block::WriteThresholdData>(
        "BLOCK_WRITE_THRESHOLD",
        "A write went past a node's write threshold (now cleared).",
    );
    r.register::<block::BlockDirtyBitmapAddCmd>();
    r.register::<block::BlockDirtyBitmapRemove>();
    r.register::<block::BlockDirtyBitmapClear>();
    r.register::<block::BlockDirtyBitmapEnable>();
    r.register::<block::BlockDirtyBitmapDisable>();
    r.register::<block::BlockDirtyBitmapMergeCmd>();
    block::jobs::register(&mut r);
    block::quorum::register(&mut r);
    block::media::register(&mut r);
    r.register::<device::DeviceAdd>();
    r.register::<device::DeviceDel>();
    cpu_hotplug::register(&mut r);
    r.register::<fdsets::GetFd>();
    r.register::<fdsets::CloseFd>();
    r.register::<fdsets::AddFd>();
    r.register::<fdsets::RemoveFd>();
    r.register::<fdsets::QueryFdsets>();
    r.register::<trace::TraceEventGetState>();
    r.register::<trace::TraceEventSetState>();
    r.register::<gic::QueryGicCapabilities>();
    r.register::<dump::DumpGuestMemory>();
    r.register::<dump::QueryDump>();
    r.register::<dump::QueryDumpGuestMemoryCapability>();
    r.register::<migration::devices_state::XenSaveDevicesState>();
    r.register::<migration::devices_state::XenLoadDevicesState>();
    #[cfg(feature = "test-hooks")]
    r.register::<test_hooks::XTestEscape>();
    events::declare(&mut r);
    device::declare_events(&mut r);
    net::register(&mut r);
    dump::declare_events(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_without_duplicates_and_has_the_protocol_commands() {
        let r = registry();
        for name in [
            "qmp_capabilities",
            "query-version",
            "query-commands",
            "query-qmp-schema",
            "quit",
        ] {
            assert!(r.get(name).is_some(), "{name} missing");
        }
        assert!(r.get("qmp_capabilities").unwrap().in_negotiation);
        assert_eq!(r.commands().iter().filter(|c| c.in_negotiation).count(), 1);
        assert!(r.get("__org.bulkhead_ping").unwrap().allow_oob);
    }

    #[test]
    fn every_command_has_a_doc() {
        for c in registry().commands() {
            assert!(!c.doc.is_empty(), "{} has no doc", c.name);
        }
    }
}
