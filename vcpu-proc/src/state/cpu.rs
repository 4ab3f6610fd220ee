//! One vCPU's architectural state, as KVM reads and writes it, and its
//! `vcpu` section (`docs/vmstate-format.md`).
//!
//! The order of a restore follows what KVM needs (and what Firecracker and
//! QEMU do): the TSC rate first (KVM scales the TSC to it), sregs before regs (the mode decides how RIP/RSP are taken),
//! MSRs with the TSC first, the LAPIC before `MSR_IA32_TSC_DEADLINE` (KVM
//! drops a deadline armed while the LAPIC timer is not in TSC-deadline
//! mode), then events (a pending exception or NMI), MP state, debug regs.

use ipc_proto::vmstate::{Reader, Section, VmStateError, Writer};
use kvm_bindings::KVM_MAX_MSR_ENTRIES;
use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use zerocopy::{FromBytes, IntoBytes};

use super::{kvm, msr_list, Result, StateError};

/// `MSR_IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `MSR_IA32_TSC_DEADLINE`.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// An MSR's index and value.
pub type Msr = (u32, u64);

/// One vCPU's state.
pub struct VcpuState {
    /// Possible-CPU slot.
    pub slot: u32,
    /// The guest's TSC rate in kHz (`KVM_GET_TSC_KHZ`).
    pub tsc_khz: u32,
    /// General registers.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87/SSE/AVX state (the legacy 4 KiB XSAVE area).
    pub xsave: kvm_xsave,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, SMIs; interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// DR0-3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// (index, value) of every saveable MSR this vCPU could read.
    pub msrs: Vec<(u32, u64)>,
}

impl Clone for VcpuState {
    fn clone(&self) -> Self {
        VcpuState {
            // `kvm_xsave` ends in a zero-length array, so it has no `Clone`;
            // the fixed region is all of its contents.
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            msrs: self.msrs.clone(),
            ..*self
        }
    }
}

/// The MSRs KVM says a VMM should save (`KVM_GET_MSR_INDEX_LIST`).
pub fn saved_msr_indices(kvm_fd: &Kvm) -> Result<Vec<u32>> {
    let list = kvm_fd
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(list.as_slice().to_vec())
}

/// Reads `indices` from `vcpu`, leaving out those this vCPU refuses (an MSR
/// KVM lists may belong to a feature its CPUID does not have).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>> {
    let mut wanted: Vec<u32> = indices.to_vec();
    let mut read = Vec::with_capacity(wanted.len());
    // Each round reads up to KVM's list size, until the first refused
    // MSR, which is dropped.
    while !wanted.is_empty() {
        let chunk = wanted.len().min(KVM_MAX_MSR_ENTRIES);
        let entries: Vec<kvm_msr_entry> = wanted[..chunk]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(&entries)?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        read.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        let skip = (n + 1).min(chunk);
        wanted.drain(..skip);
    }
    Ok(read)
}

fn write_msrs(vcpu: &VcpuFd, msrs: &[(u32, u64)]) -> Result<()> {
    msrs.chunks(KVM_MAX_MSR_ENTRIES)
        .try_for_each(|chunk| write_msr_chunk(vcpu, chunk))
}

fn write_msr_chunk(vcpu: &VcpuFd, msrs: &[(u32, u64)]) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let done = vcpu
        .set_msrs(&msr_list(&entries)?)
        .map_err(kvm("KVM_SET_MSRS"))?;
    if done != entries.len() {
        return Err(StateError::Msrs {
            what: "KVM_SET_MSRS",
            done,
            wanted: entries.len(),
            first_refused: entries[done].index,
        });
    }
    Ok(())
}

impl VcpuState {
    /// Reads the state of `vcpu` (parked) in slot `slot`.
    pub fn capture(slot: u32, vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self> {
        Ok(VcpuState {
            slot,
            tsc_khz: vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?,
            regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            msrs: read_msrs(vcpu, msr_indices)?,
        })
    }

    /// Writes this state into `vcpu` (parked), in the order the module doc
    /// gives.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<()> {
        // The guest calibrated against this rate; on another host (or CPU)
        // KVM scales the TSC to it, before the TSC value is written. A
        // host that cannot scale refuses, and the restore fails.
        if vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))? != self.tsc_khz {
            vcpu.set_tsc_khz(self.tsc_khz)
                .map_err(kvm("KVM_SET_TSC_KHZ"))?;
        }
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        // SAFETY: `self.xsave` is a whole `kvm_xsave` (4 KiB). KVM reads
        // more only for dynamically enabled XSTATE features (AMX), which a
        // process must request with ARCH_REQ_XCOMP_GUEST_PERM; vcpu-proc
        // never does, so the guest's XSAVE state fits 4 KiB.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        let (deadline, mut rest): (Vec<Msr>, Vec<Msr>) = self
            .msrs
            .iter()
            .partition(|(i, _)| *i == MSR_IA32_TSC_DEADLINE);
        // The TSC first: KVM derives other TSC-relative MSRs from it.
        rest.sort_by_key(|(i, _)| *i != MSR_IA32_TSC);
        write_msrs(vcpu, &rest)?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        write_msrs(vcpu, &deadline)?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))
    }

    /// The `vcpu` section payload.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::new();
        w.u32(self.slot).u32(self.tsc_khz);
        w.blob(self.regs.as_bytes())?;
        w.blob(self.sregs.as_bytes())?;
        w.blob(self.xsave.as_bytes())?;
        w.blob(self.xcrs.as_bytes())?;
        w.blob(self.lapic.as_bytes())?;
        w.blob(self.events.as_bytes())?;
        w.blob(self.mp_state.as_bytes())?;
        w.blob(self.debugregs.as_bytes())?;
        let n = u32::try_from(self.msrs.len()).map_err(|_| VmStateError::TooLarge("MSRs"))?;
        w.u32(n);
        for &(index, value) in &self.msrs {
            w.u32(index).u64(value);
        }
        Ok(w.finish())
    }

    /// Reads a `vcpu` section.
    pub fn decode(s: &Section<'_>) -> Result<Self> {
        let mut r = Reader::new(s.payload);
        let slot = r.u32("vcpu slot")?;
        let tsc_khz = r.u32("TSC rate")?;
        let state = VcpuState {
            slot,
            tsc_khz,
            regs: kvm_struct(s, &mut r, "kvm_regs")?,
            sregs: kvm_struct(s, &mut r, "kvm_sregs")?,
            xsave: kvm_struct(s, &mut r, "kvm_xsave")?,
            xcrs: kvm_struct(s, &mut r, "kvm_xcrs")?,
            lapic: kvm_struct(s, &mut r, "kvm_lapic_state")?,
            events: kvm_struct(s, &mut r, "kvm_vcpu_events")?,
            mp_state: kvm_struct(s, &mut r, "kvm_mp_state")?,
            debugregs: kvm_struct(s, &mut r, "kvm_debugregs")?,
            msrs: {
                let n = r.u32("MSR count")?;
                // Each entry is 12 bytes: a count the payload cannot hold is
                // refused before anything is allocated for it.
                if u64::from(n) * 12 != r.remaining() as u64 {
                    return Err(s
                        .malformed(format!(
                            "{n} MSRs announced, {} bytes of MSRs present",
                            r.remaining()
                        ))
                        .into());
                }
                (0..n)
                    .map(|_| Ok((r.u32("MSR index")?, r.u64("MSR value")?)))
                    .collect::<std::result::Result<Vec<_>, VmStateError>>()?
            },
        };
        Ok(state)
    }
}

/// A KVM structure stored as a blob of exactly its size.
pub(crate) fn kvm_struct<T: FromBytes>(
    s: &Section<'_>,
    r: &mut Reader<'_>,
    name: &'static str,
) -> Result<T> {
    let blob = r.blob(name)?;
    T::read_from_bytes(blob).map_err(|_| {
        s.malformed(format!(
            "{name} is {} bytes, expected {}",
            blob.len(),
            std::mem::size_of::<T>()
        ))
        .into()
    })
}
