//! Trace points: each process declares its points once in its own
//! `trace.rs` with [`trace_points!`](crate::trace_points) (name, argument
//! names, per-vCPU or not) and fires them with
//! [`trace_point!`](crate::trace_point). A disabled point costs one
//! relaxed atomic load at its call site (its arguments are not even
//! evaluated); an enabled one writes `name arg=value ...` through the log
//! (target `bulkhead::trace`) or, with `-trace file=`, to the trace file
//! the broker opened and passed down ([`sink`]).
//!
//! The broker holds the desired state (which points are enabled, on which
//! vCPUs) and sets it in every process with [`wire::TraceRequest`]; each
//! worker answers it with [`serve`].
//!
//! - [`pattern`]: QEMU's name patterns (`*`, `?`).
//! - [`wire`]: the trace request and reply every channel carries.
//! - [`sink`]: where enabled points are written.

pub mod pattern;
pub mod sink;
pub mod wire;

use std::fmt::Debug;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::FlatError;
pub use wire::{EnabledPoint, PointState, TraceReply, TraceRequest, VcpuMask};

/// Errors of applying a trace state in a process.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The broker named a point this process does not have.
    #[error("{process} has no trace point '{name}'")]
    UnknownPoint {
        /// The process.
        process: &'static str,
        /// The name asked for.
        name: String,
    },
    /// `to_file` was set but no fd came with the request.
    #[error("no trace file passed with the request")]
    MissingFile,
}

impl From<TraceError> for FlatError {
    fn from(e: TraceError) -> Self {
        FlatError::generic(e.to_string())
    }
}

/// One trace point: its declaration and its state. Declared by
/// [`trace_points!`](crate::trace_points), never by hand.
#[derive(Debug)]
pub struct TracePoint {
    process: &'static str,
    name: &'static str,
    args: &'static [&'static str],
    per_vcpu: bool,
    /// Enabled (for a per-vCPU point: on at least one vCPU). The only
    /// thing a call site reads while the point is disabled.
    enabled: AtomicBool,
    vcpus: [AtomicU64; 4],
}

impl TracePoint {
    /// A disabled point of `process` called `name` with `args`.
    pub const fn new(
        process: &'static str,
        name: &'static str,
        args: &'static [&'static str],
        per_vcpu: bool,
    ) -> Self {
        TracePoint {
            process,
            name,
            args,
            per_vcpu,
            enabled: AtomicBool::new(false),
            vcpus: [const { AtomicU64::new(0) }; 4],
        }
    }

    /// The point's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The names of its arguments (after the vCPU of a per-vCPU point).
    pub fn args(&self) -> &'static [&'static str] {
        self.args
    }

    /// True for a per-vCPU point.
    pub fn per_vcpu(&self) -> bool {
        self.per_vcpu
    }

    /// Whether the point is enabled (anywhere): one relaxed load.
    #[inline(always)]
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether the point is enabled on `vcpu`.
    pub fn on_vcpu(&self, vcpu: u32) -> bool {
        self.mask().has(vcpu)
    }

    /// Where the point is enabled.
    pub fn mask(&self) -> VcpuMask {
        VcpuMask(std::array::from_fn(|i| {
            self.vcpus[i].load(Ordering::Relaxed)
        }))
    }

    fn set(&self, mask: VcpuMask) {
        for (slot, word) in self.vcpus.iter().zip(mask.0) {
            slot.store(word, Ordering::Relaxed);
        }
        self.enabled.store(!mask.is_empty(), Ordering::Relaxed);
    }

    /// Writes one firing of the point (called by the generated `emit`
    /// once the state was checked): `name vcpu=N arg=value ...`.
    pub fn write(&self, vcpu: Option<u32>, values: &[&dyn Debug]) {
        sink::write(self.process, self.name, self.args, vcpu, values);
    }

    fn state(&self) -> PointState {
        PointState {
            name: self.name.to_owned(),
            per_vcpu: self.per_vcpu,
            vcpus: self.mask(),
        }
    }
}

/// The points of `points` and their states, in declaration order.
pub fn states(points: &[&TracePoint]) -> Vec<PointState> {
    points.iter().map(|p| p.state()).collect()
}

/// Enables exactly `enabled` among `points` (every other point disabled).
/// Every name is checked before anything changes.
pub fn apply(points: &[&TracePoint], enabled: &[EnabledPoint]) -> Result<(), TraceError> {
    if let Some(unknown) = enabled
        .iter()
        .find(|e| !points.iter().any(|p| p.name == e.name))
    {
        return Err(TraceError::UnknownPoint {
            process: points.first().map_or("this process", |p| p.process),
            name: unknown.name.clone(),
        });
    }
    for p in points {
        let mask = enabled
            .iter()
            .find(|e| e.name == p.name)
            .map_or(VcpuMask::NONE, |e| {
                if p.per_vcpu {
                    e.vcpus
                } else {
                    VcpuMask::ALL
                }
            });
        p.set(mask);
    }
    Ok(())
}

/// Answers a trace request in a worker: `points` are its own
/// (`crate::trace::POINTS`), `fds` came with the request.
pub fn serve(
    points: &[&TracePoint],
    req: TraceRequest,
    fds: Vec<OwnedFd>,
) -> Result<TraceReply, FlatError> {
    match req {
        TraceRequest::Query => {}
        TraceRequest::Apply { enabled, to_file } => {
            let file = if to_file {
                Some(fds.into_iter().next().ok_or(TraceError::MissingFile)?)
            } else {
                None
            };
            apply(points, &enabled)?;
            if let Some(fd) = file {
                sink::set_file(std::fs::File::from(fd));
            }
        }
    }
    Ok(TraceReply::Points(states(points)))
}

/// Declares a process's trace points, once, in its `trace.rs`:
///
/// ```ignore
/// ipc_proto::trace_points! {
///     process "block-proc";
///     /// A request taken from a virtqueue.
///     point virtio_blk_request(export, queue, sector);
///     /// A KVM exit for port I/O (per vCPU: `emit` takes the vCPU first).
///     vcpu kvm_exit_io(port, size);
/// }
/// ```
///
/// Each point becomes a module holding its `POINT` and an `emit` function
/// with one parameter per argument (so a call site with the wrong number
/// of arguments does not compile), and `POINTS` lists them all.
#[macro_export]
macro_rules! trace_points {
    (process $proc:literal; $( $(#[$doc:meta])* $kind:ident $name:ident ( $($arg:ident),* $(,)? ); )* ) => {
        $( $crate::__trace_point!($proc, [$(#[$doc])*] $kind $name ($($arg),*)); )*
        /// Every trace point of this process, in declaration order.
        pub static POINTS: &[&$crate::trace::TracePoint] = &[$(&$name::POINT),*];
    };
}

/// One point of [`trace_points!`](crate::trace_points).
#[doc(hidden)]
#[macro_export]
macro_rules! __trace_point {
    ($proc:literal, [$(#[$doc:meta])*] point $name:ident ($($arg:ident),*)) => {
        $(#[$doc])*
        pub mod $name {
            /// The point and its state.
            pub static POINT: $crate::trace::TracePoint = $crate::trace::TracePoint::new(
                $proc, stringify!($name), &[$(stringify!($arg)),*], false);
            /// Writes one firing (`trace_point!` checked that it is enabled).
            #[cold]
            #[inline(never)]
            pub fn emit($($arg: &dyn ::core::fmt::Debug),*) {
                POINT.write(None, &[$($arg),*]);
            }
        }
    };
    ($proc:literal, [$(#[$doc:meta])*] vcpu $name:ident ($($arg:ident),*)) => {
        $(#[$doc])*
        pub mod $name {
            /// The point and its state.
            pub static POINT: $crate::trace::TracePoint = $crate::trace::TracePoint::new(
                $proc, stringify!($name), &[$(stringify!($arg)),*], true);
            /// Writes one firing on `vcpu` if the point is enabled there.
            #[cold]
            #[inline(never)]
            pub fn emit(vcpu: &dyn $crate::trace::VcpuIndex, $($arg: &dyn ::core::fmt::Debug),*) {
                let vcpu = vcpu.index();
                if POINT.on_vcpu(vcpu) {
                    POINT.write(Some(vcpu), &[$($arg),*]);
                }
            }
        }
    };
}

/// Fires a trace point declared with
/// [`trace_points!`](crate::trace_points):
/// `trace_point!(trace::virtio_blk_request(export, queue, sector))`; a
/// per-vCPU point takes the vCPU index first. The arguments are evaluated
/// only when the point is enabled.
#[macro_export]
macro_rules! trace_point {
    ($($m:ident)::+ ( $($arg:expr),* $(,)? )) => {
        if $($m)::+::POINT.is_enabled() {
            $($m)::+::emit($(&$arg),*)
        }
    };
}

/// A vCPU index as call sites hold it (`u8`, `u32`, `usize`).
pub trait VcpuIndex {
    /// The index (saturated past `u32::MAX`).
    fn index(&self) -> u32;
}

macro_rules! vcpu_index {
    ($($t:ty),*) => {$(
        impl VcpuIndex for $t {
            fn index(&self) -> u32 {
                u32::try_from(*self).unwrap_or(u32::MAX)
            }
        }
    )*};
}
vcpu_index!(u8, u16, u32, u64, usize);

#[cfg(test)]
mod tests;
