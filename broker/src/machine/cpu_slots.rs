//! Which possible-CPU slots hold a CPU, as the broker answers
//! `query-hotpluggable-cpus` and names CPUs in `query-cpus-fast` and
//! `device_del`: the boot CPUs (`-smp cpus`), then every `device_add`ed
//! CPU with its id until the guest ejects it. vcpu-proc holds the vCPUs
//! themselves; it is not restarted (its death is a guest crash), so this
//! record only follows its replies and `CpuEjected` events.

use std::collections::BTreeMap;

use ipc_proto::cpu_topology::CpuTopology;
use ipc_proto::FlatError;
use serde_json::json;

use super::Machine;

/// The slot record (never held across a worker request).
pub fn lock(m: &Machine) -> std::sync::MutexGuard<'_, CpuSlots> {
    m.cpu_slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// The guest ejected the CPU of `slot`: forget it and emit QEMU's
/// `DEVICE_DELETED`.
pub fn on_ejected(m: &Machine, slot: u32) {
    let Some(rec) = lock(m).remove(slot) else {
        tracing::warn!("vcpu-proc reported an eject of empty CPU slot {slot}");
        return;
    };
    let data = match rec.id {
        Some(id) => json!({"device": id, "path": rec.qom_path}),
        None => json!({"path": rec.qom_path}),
    };
    m.events().emit("DEVICE_DELETED", Some(data));
}

/// One occupied slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecord {
    /// `id` of the `device_add` (None for boot CPUs and anonymous ones).
    pub id: Option<String>,
    /// Its QOM path.
    pub qom_path: String,
    /// Reserved by a `device_add` whose vcpu-proc request is under way.
    pub plugging: bool,
}

/// The occupied slots.
#[derive(Debug, Default)]
pub struct CpuSlots {
    slots: BTreeMap<u32, SlotRecord>,
    next_anon: u32,
}

/// The QOM path of a CPU present at start (`cpu-index` `slot`).
pub fn boot_qom_path(slot: u32) -> String {
    format!("/machine/unattached/device[{slot}]")
}

impl CpuSlots {
    /// Slots `0..cpus` hold the boot CPUs.
    pub fn boot(cpus: u32) -> Self {
        let slots = (0..cpus)
            .map(|i| {
                let rec = SlotRecord {
                    id: None,
                    qom_path: boot_qom_path(i),
                    plugging: false,
                };
                (i, rec)
            })
            .collect();
        CpuSlots {
            slots,
            next_anon: 0,
        }
    }

    /// The record of `slot`, if it holds a CPU (or one being plugged).
    pub fn get(&self, slot: u32) -> Option<&SlotRecord> {
        self.slots.get(&slot)
    }

    /// Whether `slot` holds a plugged CPU (`cpu` command, `query-cpus-fast`).
    pub fn is_plugged(&self, slot: u32) -> bool {
        self.slots.get(&slot).is_some_and(|r| !r.plugging)
    }

    /// Whether a CPU carries device id `id`.
    pub fn has_id(&self, id: &str) -> bool {
        self.slots.values().any(|r| r.id.as_deref() == Some(id))
    }

    /// The slot of the CPU named `name`: a device id or a QOM path.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.slots
            .iter()
            .find(|(_, r)| !r.plugging && (r.id.as_deref() == Some(name) || r.qom_path == name))
            .map(|(s, _)| *s)
    }

    /// Reserves `slot` for a `device_add` with `id`; its QOM path.
    pub fn reserve(&mut self, slot: u32, id: Option<String>) -> String {
        let qom_path = match &id {
            Some(id) => format!("/machine/peripheral/{id}"),
            None => {
                let n = self.next_anon;
                self.next_anon += 1;
                format!("/machine/peripheral-anon/device[{n}]")
            }
        };
        self.slots.insert(
            slot,
            SlotRecord {
                id,
                qom_path: qom_path.clone(),
                plugging: true,
            },
        );
        qom_path
    }

    /// The `device_add` of `slot` succeeded (`true`) or failed.
    pub fn finish(&mut self, slot: u32, ok: bool) {
        if ok {
            if let Some(r) = self.slots.get_mut(&slot) {
                r.plugging = false;
            }
        } else {
            self.slots.remove(&slot);
        }
    }

    /// The guest ejected `slot`: its record, gone.
    pub fn remove(&mut self, slot: u32) -> Option<SlotRecord> {
        self.slots.remove(&slot)
    }
}

/// The guest's `_OST` for the CPU of `slot`: QEMU's `ACPI_DEVICE_OST`.
pub fn on_ost(m: &Machine, slot: u32, source: u32, status: u32) {
    let id = lock(m).get(slot).and_then(|r| r.id.clone());
    let mut info = json!({
        "slot": slot.to_string(),
        "slot-type": "CPU",
        "source": source,
        "status": status,
    });
    if let Some(id) = id {
        info["device"] = json!(id);
    }
    m.events()
        .emit("ACPI_DEVICE_OST", Some(json!({ "info": info })));
}

/// Checks `device_add`'s topology ids with QEMU's messages (its
/// `x86_cpu_pre_plug`) and returns the slot. `None` is an id not given
/// (QEMU's -1).
pub fn slot_of(
    t: &CpuTopology,
    socket: Option<u32>,
    die: Option<u32>,
    module: Option<u32>,
    core: Option<u32>,
    thread: Option<u32>,
) -> Result<u32, FlatError> {
    let check = |name: &str, v: Option<u32>, count: u32, default_zero: bool| match v {
        None if default_zero => Ok(0),
        None => Err(FlatError::generic(format!("CPU {name} is not set"))),
        Some(v) if v > count - 1 => Err(FlatError::generic(format!(
            "Invalid CPU {name}: {v} must be in range 0:{}",
            count - 1
        ))),
        Some(v) => Ok(v),
    };
    let socket = check("socket-id", socket, t.sockets, false)?;
    let die = check("die-id", die, t.dies, t.dies == 1)?;
    check("module-id", module, 1, true)?;
    let core = check("core-id", core, t.cores, false)?;
    let thread = check("thread-id", thread, t.threads, false)?;
    let ids = ipc_proto::cpu_topology::CpuTopoIds {
        socket,
        die,
        core,
        thread,
    };
    t.index_of(ids).ok_or_else(|| {
        FlatError::generic(format!(
            "Invalid CPU [socket: {socket}, die: {die}, module: 0, core: {core}, thread: {thread}] with APIC ID {}, valid index range 0:{}",
            t.apic_id_of(ids),
            t.max_cpus - 1
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<u32, FlatError>) -> String {
        r.unwrap_err().desc
    }

    #[test]
    fn ids_are_checked_in_qemus_order_with_its_messages() {
        let t = CpuTopology::flat(4);
        assert_eq!(
            slot_of(&t, Some(0), None, None, Some(3), Some(0)).unwrap(),
            3
        );
        assert_eq!(
            err(slot_of(&t, None, None, None, None, None)),
            "CPU socket-id is not set"
        );
        assert_eq!(
            err(slot_of(&t, Some(0), None, None, Some(1), None)),
            "CPU thread-id is not set"
        );
        assert_eq!(
            err(slot_of(&t, Some(0), None, None, None, Some(0))),
            "CPU core-id is not set"
        );
        assert_eq!(
            err(slot_of(&t, Some(0), None, None, Some(4), Some(0))),
            "Invalid CPU core-id: 4 must be in range 0:3"
        );
        assert_eq!(
            err(slot_of(&t, Some(1), None, None, Some(1), Some(0))),
            "Invalid CPU socket-id: 1 must be in range 0:0"
        );
        assert_eq!(
            err(slot_of(&t, Some(0), Some(1), None, Some(1), Some(0))),
            "Invalid CPU die-id: 1 must be in range 0:0"
        );
    }

    #[test]
    fn dies_must_be_given_when_there_are_several() {
        let t = CpuTopology {
            max_cpus: 8,
            sockets: 2,
            dies: 2,
            cores: 2,
            threads: 1,
        };
        assert_eq!(
            err(slot_of(&t, Some(0), None, None, Some(1), Some(0))),
            "CPU die-id is not set"
        );
        assert_eq!(
            slot_of(&t, Some(0), Some(1), None, Some(1), Some(0)).unwrap(),
            3
        );
    }

    #[test]
    fn slots_follow_plug_and_eject() {
        let mut s = CpuSlots::boot(1);
        assert!(s.is_plugged(0));
        assert_eq!(s.reserve(2, Some("c2".into())), "/machine/peripheral/c2");
        assert!(!s.is_plugged(2) && s.get(2).is_some());
        s.finish(2, true);
        assert_eq!(s.find("c2"), Some(2));
        assert_eq!(s.find("/machine/unattached/device[0]"), Some(0));
        assert_eq!(s.reserve(3, None), "/machine/peripheral-anon/device[0]");
        s.finish(3, false);
        assert!(s.get(3).is_none());
        assert_eq!(s.remove(2).and_then(|r| r.id), Some("c2".into()));
        assert!(!s.has_id("c2"));
    }
}
