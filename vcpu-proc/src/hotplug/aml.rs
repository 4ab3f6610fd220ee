//! The DSDT part of CPU hotplug, as QEMU's `build_cpus_aml` shapes it:
//! `\_SB.PRES` owns the register block (fields CPEN/CINS/CRMV/CEJ0/CCMD,
//! CSEL/CDAT) and its lock; `\_SB.CPUS` (ACPI0010) holds one processor
//! device `Cxxx` (ACPI0007, `_UID` = slot) per possible CPU with `_STA`,
//! `_MAT`, `_EJ0` (not for the boot CPU) and `_OST`, and the methods CSTA,
//! CEJ0, CTFY, COST and CSCN (the scan the GED's `_EVT` calls on a CPU
//! hotplug event: Notify(Cxxx, 1) for inserted CPUs, Notify(Cxxx, 3) for
//! eject requests).

use acpi_tables::aml;
use acpi_tables::Aml;

use super::registers::REG_LEN;
use crate::layout;

const PRES: &str = "\\_SB_.PRES";
const LOCK: &str = "\\_SB_.PRES.CPLK";
const SEL: &str = "\\_SB_.PRES.CSEL";
const ENABLED: &str = "\\_SB_.PRES.CPEN";
const CMD: &str = "\\_SB_.PRES.CCMD";
const DATA: &str = "\\_SB_.PRES.CDAT";
const INS: &str = "\\_SB_.PRES.CINS";
const RMV: &str = "\\_SB_.PRES.CRMV";
const EJ: &str = "\\_SB_.PRES.CEJ0";
/// The scan method the GED calls.
pub const SCAN_METHOD: &str = "\\_SB_.CPUS.CSCN";

fn p(s: &str) -> aml::Path {
    aml::Path::new(s)
}

fn register_device(out: &mut Vec<u8>) {
    let base = layout::CPU_HOTPLUG_PORT;
    let len = REG_LEN as usize;
    let base_usize = usize::from(base);
    aml::Device::new(
        p(PRES),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A06")),
            &aml::Name::new("_UID".into(), &"CPU Hotplug resources"),
            &aml::Mutex::new("CPLK".into(), 0),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::IO::new(base, base, 1, REG_LEN as u8)]),
            ),
            &aml::OpRegion::new(
                "PRST".into(),
                aml::OpRegionSpace::SystemIO,
                &base_usize,
                &len,
            ),
            &aml::Field::new(
                "PRST".into(),
                aml::FieldAccessType::Byte,
                aml::FieldLockRule::NoLock,
                aml::FieldUpdateRule::WriteAsZeroes,
                vec![
                    aml::FieldEntry::Reserved(32),
                    aml::FieldEntry::Named(*b"CPEN", 1),
                    aml::FieldEntry::Named(*b"CINS", 1),
                    aml::FieldEntry::Named(*b"CRMV", 1),
                    aml::FieldEntry::Named(*b"CEJ0", 1),
                    aml::FieldEntry::Reserved(4),
                    aml::FieldEntry::Named(*b"CCMD", 8),
                ],
            ),
            &aml::Field::new(
                "PRST".into(),
                aml::FieldAccessType::DWord,
                aml::FieldLockRule::NoLock,
                aml::FieldUpdateRule::Preserve,
                vec![
                    aml::FieldEntry::Named(*b"CSEL", 32),
                    aml::FieldEntry::Reserved(32),
                    aml::FieldEntry::Named(*b"CDAT", 32),
                ],
            ),
        ],
    )
    .to_aml_bytes(out);
}

/// `Cxxx` of slot `i`.
fn cpu_name(i: usize) -> String {
    format!("C{:03X}", i & 0xfff)
}

fn cpu_device(out: &mut Vec<u8>, i: usize, apic_id: u32) {
    let uid = i as u32;
    // _MAT: the MADT entry of this CPU, enabled (what it is once present).
    let mat = aml::BufferData::new(vec![0, 8, i as u8, apic_id as u8, 1, 0, 0, 0]);
    let sta_call = aml::MethodCall::new(p("\\_SB_.CPUS.CSTA"), vec![&uid]);
    let sta_ret = aml::Return::new(&sta_call);
    let sta = aml::Method::new("_STA".into(), 0, true, vec![&sta_ret]);
    let ej_call = aml::MethodCall::new(p("\\_SB_.CPUS.CEJ0"), vec![&uid]);
    let ej = aml::Method::new("_EJ0".into(), 1, false, vec![&ej_call]);
    let (a0, a1, a2) = (aml::Arg(0), aml::Arg(1), aml::Arg(2));
    let ost_call = aml::MethodCall::new(p("\\_SB_.CPUS.COST"), vec![&uid, &a0, &a1, &a2]);
    let ost = aml::Method::new("_OST".into(), 3, true, vec![&ost_call]);
    let hid = aml::Name::new("_HID".into(), &"ACPI0007");
    let uid_name = aml::Name::new("_UID".into(), &uid);
    let mat_name = aml::Name::new("_MAT".into(), &mat);
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid_name, &sta, &mat_name];
    if i != 0 {
        children.push(&ej);
    }
    children.push(&ost);
    aml::Device::new(cpu_name(i).as_str().into(), children).to_aml_bytes(out);
}

fn cpus_methods() -> Vec<u8> {
    let mut out = Vec::new();
    let (zero, one) = (aml::ZERO, aml::ONE);
    let (a0, a1, a2) = (aml::Arg(0), aml::Arg(1), aml::Arg(2));
    let (l0, l1) = (aml::Local(0), aml::Local(1));
    let acquire = aml::Acquire::new(p(LOCK), 0xffff);
    let release = aml::Release::new(p(LOCK));
    let (sel, enabled, cmd, data) = (p(SEL), p(ENABLED), p(CMD), p(DATA));
    let (ins, rmv, ej) = (p(INS), p(RMV), p(EJ));

    // CSTA(uid): 0xF if the CPU is present, else 0.
    let st_sel = aml::Store::new(&sel, &a0);
    let st_zero = aml::Store::new(&l0, &zero);
    let fifteen = 0xfu8;
    let st_f = aml::Store::new(&l0, &fifteen);
    let is_en = aml::Equal::new(&enabled, &one);
    let if_en = aml::If::new(&is_en, vec![&st_f]);
    let ret = aml::Return::new(&l0);
    aml::Method::new(
        "CSTA".into(),
        1,
        true,
        vec![&acquire, &st_sel, &st_zero, &if_en, &release, &ret],
    )
    .to_aml_bytes(&mut out);

    // CEJ0(uid): eject.
    let st_ej = aml::Store::new(&ej, &one);
    aml::Method::new(
        "CEJ0".into(),
        1,
        true,
        vec![&acquire, &st_sel, &st_ej, &release],
    )
    .to_aml_bytes(&mut out);

    // COST(uid, event, status, info): _OST into the OST registers.
    let (ev_cmd, st_cmd) = (1u8, 2u8);
    let c1 = aml::Store::new(&cmd, &ev_cmd);
    let d1 = aml::Store::new(&data, &a1);
    let c2 = aml::Store::new(&cmd, &st_cmd);
    let d2 = aml::Store::new(&data, &a2);
    aml::Method::new(
        "COST".into(),
        4,
        true,
        vec![&acquire, &st_sel, &c1, &d1, &c2, &d2, &release],
    )
    .to_aml_bytes(&mut out);

    // CSCN: while a CPU has an event, notify it and clear the event.
    let (dev_check, eject_req) = (1u8, 3u8);
    let next = aml::Store::new(&cmd, &zero);
    let clear_loop = aml::Store::new(&l1, &zero);
    let set_loop = aml::Store::new(&l1, &one);
    let n_ins = aml::MethodCall::new(p("\\_SB_.CPUS.CTFY"), vec![&data, &dev_check]);
    let clr_ins = aml::Store::new(&ins, &one);
    let is_ins = aml::Equal::new(&ins, &one);
    let if_ins = aml::If::new(&is_ins, vec![&n_ins, &clr_ins, &set_loop]);
    let n_rmv = aml::MethodCall::new(p("\\_SB_.CPUS.CTFY"), vec![&data, &eject_req]);
    let clr_rmv = aml::Store::new(&rmv, &one);
    let is_rmv = aml::Equal::new(&rmv, &one);
    let if_rmv = aml::If::new(&is_rmv, vec![&n_rmv, &clr_rmv, &set_loop]);
    let else_rmv = aml::Else::new(vec![&if_rmv]);
    let looping = aml::Equal::new(&l1, &one);
    let lp = aml::While::new(&looping, vec![&clear_loop, &next, &if_ins, &else_rmv]);
    aml::Method::new(
        "CSCN".into(),
        0,
        true,
        vec![&acquire, &set_loop, &lp, &release],
    )
    .to_aml_bytes(&mut out);
    out
}

fn notify_method(apic_ids: &[u32]) -> Vec<u8> {
    // CTFY(uid, event): Notify(Cxxx, event) for the CPU with that uid.
    let names: Vec<aml::Path> = (0..apic_ids.len())
        .map(|i| cpu_name(i).as_str().into())
        .collect();
    let uids: Vec<u32> = (0..apic_ids.len() as u32).collect();
    let (a0, a1) = (aml::Arg(0), aml::Arg(1));
    let notifies: Vec<aml::Notify> = names.iter().map(|n| aml::Notify::new(n, &a1)).collect();
    let eqs: Vec<aml::Equal> = uids.iter().map(|u| aml::Equal::new(&a0, u)).collect();
    let ifs: Vec<aml::If> = eqs
        .iter()
        .zip(&notifies)
        .map(|(e, n)| aml::If::new(e, vec![n]))
        .collect();
    let body: Vec<&dyn Aml> = ifs.iter().map(|i| i as &dyn Aml).collect();
    let mut out = Vec::new();
    aml::Method::new("CTFY".into(), 2, false, body).to_aml_bytes(&mut out);
    out
}

/// The AML of the register device and of `\_SB.CPUS` for possible CPUs
/// with `apic_ids` (slot order).
pub fn cpus_aml(apic_ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    register_device(&mut out);
    let mut body = Vec::new();
    body.extend_from_slice(&notify_method(apic_ids));
    body.extend_from_slice(&cpus_methods());
    for (i, id) in apic_ids.iter().enumerate() {
        cpu_device(&mut body, i, *id);
    }
    let hid = aml::Name::new("_HID".into(), &"ACPI0010");
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A05"));
    let raw = RawAml(body);
    aml::Device::new(p("\\_SB_.CPUS"), vec![&hid, &cid, &raw]).to_aml_bytes(&mut out);
    out
}

/// Already-encoded AML spliced into a parent's body.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_possible_cpu_gets_a_device_and_only_non_boot_ones_eject() {
        let a = cpus_aml(&[0, 1, 2, 3]);
        let has = |s: &[u8]| a.windows(s.len()).filter(|w| *w == s).count();
        assert_eq!(has(b"ACPI0007"), 4);
        assert_eq!(has(b"ACPI0010"), 1);
        assert_eq!(has(b"_EJ0"), 3);
        for n in [b"CSCN", b"CSTA", b"CTFY", b"COST", b"CPLK", b"PRST"] {
            assert!(has(n) > 0, "{}", String::from_utf8_lossy(n));
        }
    }
}
