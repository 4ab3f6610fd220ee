//! CPU hotplug: `query-hotpluggable-cpus`, and `device_add` / `device_del`
//! of a CPU (`driver=<model>-x86_64-cpu` with socket-id/die-id/core-id/
//! thread-id), checked with QEMU's classes and messages (its
//! `x86_cpu_pre_plug` and `pc_cpu_unplug_request_cb`). vcpu-proc plugs
//! the vCPU and asks the guest through the ACPI CPU hotplug registers;
//! which slots are taken is kept in [`crate::machine::cpu_slots`].

use ipc_proto::vcpu::VcpuRequest;
use ipc_proto::FlatError;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::commands::machine::CpuInstanceProperties;
use crate::machine::cpu_slots::{self, boot_qom_path};
use crate::machine::{expect_vcpu_done, Machine};
use crate::qmp::error::Result;
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, Empty, QapiType, SchemaType};

/// The QOM type suffix of x86 CPUs.
const CPU_TYPE_SUFFIX: &str = "-x86_64-cpu";

/// One entry of `query-hotpluggable-cpus` (QEMU's HotpluggableCPU).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HotpluggableCpu {
    /// The CPU's QOM type (what `device_add` takes as `driver`).
    #[serde(rename = "type")]
    pub cpu_type: String,
    /// vCPUs per entry (1: bulkhead plugs threads one at a time, as pc).
    pub vcpus_count: i64,
    /// Its place in the topology (what `device_add` takes).
    pub props: CpuInstanceProperties,
    /// The QOM path of the CPU in this slot, if one is plugged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qom_path: Option<String>,
}

impl QapiType for HotpluggableCpu {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "HotpluggableCPU",
            members: vec![
                member::<String>("type"),
                member::<i64>("vcpus-count"),
                member::<CpuInstanceProperties>("props"),
                optional::<String>("qom-path"),
            ],
        }
    }
}

fn no_hotplug() -> FlatError {
    FlatError::generic("machine does not support hot-plugging CPUs")
}

/// `query-hotpluggable-cpus`.
pub struct QueryHotpluggableCpus;

impl Command for QueryHotpluggableCpus {
    const NAME: &'static str = "query-hotpluggable-cpus";
    const DOC: &'static str = "Return every possible CPU slot (-smp maxcpus): its type, \
        topology properties and, when a CPU is plugged there, its QOM path.";
    const BROKER_ONLY: bool = true;
    type Args = Empty;
    type Ret = Vec<HotpluggableCpu>;

    fn run(_: Empty, ctx: &Ctx<'_>) -> Result<Vec<HotpluggableCpu>> {
        let m = ctx.machine;
        if m.config().machine == crate::cli::MachineType::None {
            return Err(no_hotplug().into());
        }
        let t = m.config().topology;
        let cpu_type = expected_type(m);
        let slots = cpu_slots::lock(m);
        // QEMU lists the slots from the last to the first.
        Ok((0..t.max_cpus)
            .rev()
            .map(|slot| HotpluggableCpu {
                cpu_type: cpu_type.clone(),
                vcpus_count: 1,
                props: CpuInstanceProperties::of(&t, slot),
                qom_path: slots
                    .get(slot)
                    .filter(|_| slots.is_plugged(slot))
                    .map(|r| r.qom_path.clone()),
            })
            .collect())
    }
}

/// The QOM path of the CPU with `cpu-index` `slot`.
pub fn qom_path(m: &Machine, slot: u32) -> String {
    cpu_slots::lock(m)
        .get(slot)
        .map_or_else(|| boot_qom_path(slot), |r| r.qom_path.clone())
}

fn expected_type(m: &Machine) -> String {
    format!("{}{CPU_TYPE_SUFFIX}", m.config().cpu_model_name)
}

/// Whether `driver` is one of bulkhead's CPU types.
pub fn is_cpu_type(driver: &str) -> bool {
    driver.strip_suffix(CPU_TYPE_SUFFIX).is_some_and(|model| {
        crate::cli::cpu::MODELS
            .iter()
            .any(|(name, _)| *name == model)
    })
}

/// Whether a disk or a CPU already carries device id `id`.
fn id_taken(m: &Machine, id: &str) -> bool {
    let disks = m.devices.lock().unwrap_or_else(|p| p.into_inner());
    disks.devices().iter().any(|d| d.spec.id == id) || cpu_slots::lock(m).has_id(id)
}

/// For `device_add` of a disk: QEMU's duplicate-id error if a CPU has it.
pub fn check_id_free_of_cpus(m: &Machine, props: &Map<String, Value>) -> Result<()> {
    match props.get("id") {
        Some(Value::String(id)) if cpu_slots::lock(m).has_id(id) => {
            Err(FlatError::generic(format!("Duplicate device ID '{id}'")).into())
        }
        _ => Ok(()),
    }
}

/// An int32 topology property: `None` when absent or negative (QEMU's
/// "not set").
fn topo_prop(props: &Map<String, Value>, key: &str) -> std::result::Result<Option<u32>, FlatError> {
    let Some(v) = props.get(key) else {
        return Ok(None);
    };
    let n = v.as_i64().ok_or_else(|| {
        FlatError::generic(format!(
            "Invalid parameter type for '{key}', expected: integer"
        ))
    })?;
    let n = i32::try_from(n)
        .map_err(|_| FlatError::generic(format!("Parameter '{key}' expects int32")))?;
    Ok(u32::try_from(n).ok())
}

/// `device_add` of a CPU; `None` if `driver` is not a CPU type.
pub fn device_add(m: &Machine, props: &Map<String, Value>) -> Option<Result<()>> {
    let driver = props.get("driver").and_then(Value::as_str)?;
    if !is_cpu_type(driver) {
        return None;
    }
    Some(add(m, driver, props).map_err(Into::into))
}

fn add(
    m: &Machine,
    driver: &str,
    props: &Map<String, Value>,
) -> std::result::Result<(), FlatError> {
    if m.config().machine == crate::cli::MachineType::None {
        return Err(no_hotplug());
    }
    let id = match props.get("id") {
        None => None,
        Some(Value::String(id)) if crate::machine::devices::spec::id_wellformed(id) => {
            Some(id.clone())
        }
        Some(Value::String(_)) => {
            return Err(FlatError::generic("Parameter 'id' expects an identifier"))
        }
        Some(_) => {
            return Err(FlatError::generic(
                "Invalid parameter type for 'id', expected: string",
            ))
        }
    };
    if let Some(id) = &id {
        if id_taken(m, id) {
            return Err(FlatError::generic(format!("Duplicate device ID '{id}'")));
        }
    }
    for k in props.keys() {
        match k.as_str() {
            "driver" | "id" | "socket-id" | "die-id" | "module-id" | "core-id" | "thread-id" => {}
            other => {
                return Err(FlatError::generic(format!(
                    "Property '{driver}.{other}' not found"
                )))
            }
        }
    }
    let get = |k| topo_prop(props, k);
    let (socket, die, module, core, thread) = (
        get("socket-id")?,
        get("die-id")?,
        get("module-id")?,
        get("core-id")?,
        get("thread-id")?,
    );
    let expected = expected_type(m);
    if driver != expected {
        return Err(FlatError::generic(format!(
            "Invalid CPU type, expected cpu type: '{expected}'"
        )));
    }
    let t = m.config().topology;
    let slot = cpu_slots::slot_of(&t, socket, die, module, core, thread)?;
    {
        let mut slots = cpu_slots::lock(m);
        if slots.get(slot).is_some() {
            return Err(FlatError::generic(format!(
                "CPU[{slot}] with APIC ID {} exists",
                t.apic_id(slot)
            )));
        }
        slots.reserve(slot, id);
    }
    let r = m
        .vcpu_request(VcpuRequest::PlugCpu { slot })
        .and_then(expect_vcpu_done);
    cpu_slots::lock(m).finish(slot, r.is_ok());
    r
}

/// `device_del` of a CPU (by id or QOM path); `None` if no CPU has that
/// name. The guest is asked; `DEVICE_DELETED` follows its eject.
pub fn device_del(m: &Machine, name: &str) -> Option<Result<()>> {
    let slot = cpu_slots::lock(m).find(name)?;
    // QEMU's `qdev_unplug` refuses before the hotplug handler looks.
    let migrating = crate::machine::migration::refuse_hotplug_while_migrating(
        m,
        crate::machine::migration::NO_DEVICE_DEL,
    );
    if let Err(e) = migrating {
        return Some(Err(e.into()));
    }
    if slot == 0 {
        return Some(Err(FlatError::generic("Boot CPU is unpluggable").into()));
    }
    let r = m
        .vcpu_request(VcpuRequest::UnplugCpu { slot })
        .and_then(expect_vcpu_done);
    Some(r.map_err(Into::into))
}

/// QEMU's ACPISlotType.
pub struct AcpiSlotType;

impl QapiType for AcpiSlotType {
    fn schema() -> SchemaType {
        SchemaType::Enum {
            name: "ACPISlotType",
            values: vec!["DIMM", "CPU"],
        }
    }
}

/// QEMU's ACPIOSTInfo.
pub struct AcpiOstInfo;

impl QapiType for AcpiOstInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "ACPIOSTInfo",
            members: vec![
                optional::<String>("device"),
                member::<String>("slot"),
                member::<AcpiSlotType>("slot-type"),
                member::<i64>("source"),
                member::<i64>("status"),
            ],
        }
    }
}

/// Data of `ACPI_DEVICE_OST`.
pub struct AcpiDeviceOstData;

impl QapiType for AcpiDeviceOstData {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "ACPI_DEVICE_OST_arg",
            members: vec![member::<AcpiOstInfo>("info")],
        }
    }
}

/// Registers the commands and events of this module.
pub fn register(r: &mut crate::qmp::registry::Registry) {
    r.register::<QueryHotpluggableCpus>();
    r.event::<AcpiDeviceOstData>(
        "ACPI_DEVICE_OST",
        "The guest's _OST for a hot-plugged or unplugged CPU.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bulkheads_cpu_models_are_cpu_drivers() {
        assert!(is_cpu_type("qemu64-x86_64-cpu"));
        assert!(is_cpu_type("host-x86_64-cpu"));
        assert!(!is_cpu_type("Haswell-x86_64-cpu"));
        assert!(!is_cpu_type("x86_64-cpu"));
        assert!(!is_cpu_type("virtio-blk-device"));
    }

    #[test]
    fn topology_properties_must_be_integers() {
        let mut p = Map::new();
        p.insert("socket-id".into(), Value::from("x"));
        p.insert("core-id".into(), Value::from(-1));
        assert_eq!(
            topo_prop(&p, "socket-id").unwrap_err().desc,
            "Invalid parameter type for 'socket-id', expected: integer"
        );
        assert_eq!(topo_prop(&p, "core-id").unwrap(), None);
        assert_eq!(topo_prop(&p, "thread-id").unwrap(), None);
    }
}
