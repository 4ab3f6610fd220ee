//! The trace messages every channel carries (`Trace` in each request and
//! reply enum): the broker learns a worker's points and their states, and
//! sets the states it wants (its desired state, replayed into a restarted
//! worker).

use serde::{Deserialize, Serialize};

/// Which vCPUs a per-vCPU point is enabled on: one bit per vCPU index
/// (bulkhead has at most 256 vCPUs). A point that is not per-vCPU is
/// enabled when any bit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VcpuMask(pub [u64; 4]);

impl VcpuMask {
    /// No vCPU: disabled.
    pub const NONE: VcpuMask = VcpuMask([0; 4]);
    /// Every vCPU (and a point that is not per-vCPU: enabled).
    pub const ALL: VcpuMask = VcpuMask([u64::MAX; 4]);
    /// The highest vCPU index a mask can hold, plus one.
    pub const CAPACITY: u32 = 256;

    /// True if no bit is set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// True if `vcpu`'s bit is set (false past [`VcpuMask::CAPACITY`]).
    pub fn has(&self, vcpu: u32) -> bool {
        let Some(w) = self.0.get((vcpu / 64) as usize) else {
            return false;
        };
        w & (1 << (vcpu % 64)) != 0
    }

    /// Sets or clears `vcpu`'s bit (nothing past [`VcpuMask::CAPACITY`]).
    pub fn set(&mut self, vcpu: u32, on: bool) {
        if let Some(w) = self.0.get_mut((vcpu / 64) as usize) {
            if on {
                *w |= 1 << (vcpu % 64);
            } else {
                *w &= !(1 << (vcpu % 64));
            }
        }
    }
}

/// A point the broker wants enabled, and on which vCPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnabledPoint {
    /// The point's name.
    pub name: String,
    /// The vCPUs (a point that is not per-vCPU: [`VcpuMask::ALL`]).
    pub vcpus: VcpuMask,
}

/// A trace request (one variant of every channel's request enum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceRequest {
    /// Answer with every point of the process and its state.
    Query,
    /// Enable exactly these points (every other point of the process is
    /// disabled); answered with the points as [`TraceRequest::Query`].
    /// With `to_file`, the frame's first fd is where enabled points are
    /// written from now on (`-trace file=`), instead of the log.
    Apply {
        /// The points to enable.
        enabled: Vec<EnabledPoint>,
        /// The frame carries the trace file's fd.
        to_file: bool,
    },
}

/// One point of a process and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointState {
    /// The name (unique across every process).
    pub name: String,
    /// Per-vCPU (QEMU's `vcpu` property).
    pub per_vcpu: bool,
    /// Where it is enabled (empty: disabled).
    pub vcpus: VcpuMask,
}

/// A trace reply (one variant of every channel's reply enum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceReply {
    /// The process's points, in declaration order.
    Points(Vec<PointState>),
}
