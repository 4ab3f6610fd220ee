//! Device commands: `device_add` and `device_del` of `virtio-blk-device`
//! (a block-proc export of a node) and `vhost-user-blk` (an external
//! backend from `-chardev`), with QEMU's messages, and the device events.
//! Both are refused while the VM migrates out, as QEMU refuses them.
//! The desired devices live in [`crate::machine::devices`].
//!
//! QEMU's `device_add` takes arbitrary device properties (`'gen': false`),
//! so its arguments are declared as `any` and checked by
//! [`devices::parse_spec`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::machine::{devices, event_names, migration};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx, Registry};
use crate::qmp::schema::{member, optional, Builtin, Empty, QapiType, SchemaType};

/// `device_add`'s arguments: `driver`, `id`, `bus` and device properties.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceAddArgs(pub Map<String, Value>);

impl QapiType for DeviceAddArgs {
    fn schema() -> SchemaType {
        SchemaType::Builtin(Builtin::Any)
    }
}

/// `device_add`.
pub struct DeviceAdd;

impl Command for DeviceAdd {
    const NAME: &'static str = "device_add";
    const DOC: &'static str = "Add a device (virtio-blk-device with drive=NODE, or \
        vhost-user-blk with chardev=ID) while the guest has not run yet (-S, prelaunch); \
        the virtio-mmio bus takes no hotplug. A CPU (driver=MODEL-x86_64-cpu with \
        socket-id/die-id/core-id/thread-id) is hot-plugged while the guest runs.";
    type Args = DeviceAddArgs;
    type Ret = Empty;

    fn run(args: DeviceAddArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        // No `migrate` starts between the check below and the end of the add.
        let _gate = ctx.machine.migration.device_set.hotplug();
        // QEMU refuses any device model while migrating out, before it
        // looks at the properties (an unknown driver is its own error).
        let driver = args.0.get("driver").and_then(Value::as_str);
        if driver.is_some_and(|d| super::cpu_hotplug::is_cpu_type(d) || devices::is_device_model(d))
        {
            migration::refuse_hotplug_while_migrating(ctx.machine, migration::NO_DEVICE_ADD)?;
        }
        if let Some(r) = super::cpu_hotplug::device_add(ctx.machine, &args.0) {
            return r.map(|()| Empty {});
        }
        super::cpu_hotplug::check_id_free_of_cpus(ctx.machine, &args.0)?;
        devices::add(ctx.machine, &args.0)?;
        Ok(Empty {})
    }
}

/// Arguments of `device_del`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDelArgs {
    /// The device id.
    pub id: String,
}

impl QapiType for DeviceDelArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DeviceDelArgs",
            members: vec![member::<String>("id")],
        }
    }
}

/// `device_del`.
pub struct DeviceDel;

impl Command for DeviceDel {
    const NAME: &'static str = "device_del";
    const DOC: &'static str = "Remove a device added before the guest ran (emits \
        DEVICE_DELETED); a device the guest has seen cannot be unplugged. A CPU (by id \
        or QOM path) is ejected by the guest on request, then DEVICE_DELETED.";
    type Args = DeviceDelArgs;
    type Ret = Empty;

    fn run(args: DeviceDelArgs, ctx: &Ctx<'_>) -> Result<Empty> {
        // No `migrate` starts between the check (in the del) and its end.
        let _gate = ctx.machine.migration.device_set.hotplug();
        if let Some(r) = super::cpu_hotplug::device_del(ctx.machine, &args.id) {
            return r.map(|()| Empty {});
        }
        devices::del(ctx.machine, &args.id)?;
        Ok(Empty {})
    }
}

/// Data of `DEVICE_DELETED`.
pub struct DeviceDeletedData;

impl QapiType for DeviceDeletedData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DeviceDeletedData",
            members: vec![optional::<String>("device"), member::<String>("path")],
        }
    }
}

/// Data of `__org.bulkhead_DEVICE_BACKEND_LOST`.
pub struct DeviceBackendLostData;

impl QapiType for DeviceBackendLostData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DeviceBackendLostData",
            members: vec![member::<String>("id")],
        }
    }
}

/// Data of `__org.bulkhead_DEVICE_BACKEND_RESTORED`.
pub struct DeviceBackendRestoredData;

impl QapiType for DeviceBackendRestoredData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "DeviceBackendRestoredData",
            members: vec![member::<String>("id"), member::<i64>("downtime-ms")],
        }
    }
}

/// Declares the device events in `r`.
pub fn declare_events(r: &mut Registry) {
    r.event::<DeviceDeletedData>("DEVICE_DELETED", "A device was removed.");
    r.event::<DeviceBackendLostData>(
        event_names::DEVICE_BACKEND_LOST,
        "A device's vhost-user backend went away; its requests wait.",
    );
    r.event::<DeviceBackendRestoredData>(
        event_names::DEVICE_BACKEND_RESTORED,
        "A device's vhost-user backend is back; requests in flight were resubmitted.",
    );
}
