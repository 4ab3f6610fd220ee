//! The rules of `trace-event-get-state` / `trace-event-set-state` (QEMU
//! 2.8's `trace/qmp.c`, which the reference describes): the `vcpu`
//! argument is checked first, then an exact name must exist (and with
//! `vcpu` be per-vCPU); a pattern may match nothing. With `vcpu`, only
//! per-vCPU points are selected. Results are listed last point first, as
//! QEMU prepends each one.

use ipc_proto::trace::pattern::{is_pattern, matches};
use ipc_proto::trace::VcpuMask;
use ipc_proto::FlatError;
use serde::Serialize;

use super::PointDesc;

/// QAPI `TraceEventState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// Compiled out (bulkhead has no such points: all are compiled in).
    Unavailable,
    /// Off.
    Disabled,
    /// On.
    Enabled,
}

/// QAPI `TraceEventInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventInfo {
    /// The point's name.
    pub name: String,
    /// Its state (on the asked vCPU, if one was).
    pub state: EventState,
    /// Whether it is per-vCPU.
    pub vcpu: bool,
}

/// Checks the arguments; returns the vCPU index if one was given.
pub fn check(
    points: &[PointDesc],
    name: &str,
    vcpu: Option<i64>,
    cpus: u32,
) -> Result<Option<u32>, FlatError> {
    let vcpu = match vcpu {
        None => None,
        Some(v) => match u32::try_from(v) {
            Ok(i) if i < cpus && i < VcpuMask::CAPACITY => Some(i),
            // QEMU takes the index as an int and prints it with %u.
            _ => {
                return Err(FlatError::generic(format!(
                    "invalid vCPU index {}",
                    v as i32 as u32
                )))
            }
        },
    };
    if !is_pattern(name) {
        let Some(p) = points.iter().find(|p| p.name == name) else {
            return Err(FlatError::generic(format!("unknown event \"{name}\"")));
        };
        if vcpu.is_some() && !p.per_vcpu {
            return Err(FlatError::generic(format!(
                "event \"{name}\" is not vCPU-specific"
            )));
        }
    }
    Ok(vcpu)
}

/// Whether `name` (with `vcpu`) selects point `d`.
pub fn selects(d: &PointDesc, name: &str, vcpu: Option<u32>) -> bool {
    matches(name, &d.name) && (vcpu.is_none() || d.per_vcpu)
}

/// `trace-event-get-state` over `points` (with their current masks).
pub fn get_state(
    points: &[(PointDesc, VcpuMask)],
    name: &str,
    vcpu: Option<i64>,
    cpus: u32,
) -> Result<Vec<EventInfo>, FlatError> {
    let descs: Vec<PointDesc> = points.iter().map(|(d, _)| d.clone()).collect();
    let vcpu = check(&descs, name, vcpu, cpus)?;
    let mut out: Vec<EventInfo> = points
        .iter()
        .filter(|(d, _)| selects(d, name, vcpu))
        .map(|(d, mask)| {
            let on = match vcpu {
                Some(v) => mask.has(v),
                None => !mask.is_empty(),
            };
            EventInfo {
                name: d.name.clone(),
                state: if on {
                    EventState::Enabled
                } else {
                    EventState::Disabled
                },
                vcpu: d.per_vcpu,
            }
        })
        .collect();
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> Vec<(PointDesc, VcpuMask)> {
        let mut on1 = VcpuMask::NONE;
        on1.set(1, true);
        vec![
            (desc("virtio_blk_request", false), VcpuMask::ALL),
            (desc("virtio_blk_complete", false), VcpuMask::NONE),
            (desc("kvm_exit_io_in", true), on1),
        ]
    }

    fn desc(name: &str, per_vcpu: bool) -> PointDesc {
        PointDesc {
            name: name.into(),
            per_vcpu,
        }
    }

    fn names(v: &[EventInfo]) -> Vec<(&str, EventState)> {
        v.iter().map(|e| (e.name.as_str(), e.state)).collect()
    }

    #[test]
    fn pattern_lists_matches_last_declared_first() {
        let r = get_state(&points(), "virtio_blk_*", None, 2).unwrap();
        assert_eq!(
            names(&r),
            [
                ("virtio_blk_complete", EventState::Disabled),
                ("virtio_blk_request", EventState::Enabled)
            ]
        );
    }

    #[test]
    fn pattern_matching_nothing_is_an_empty_list() {
        assert!(get_state(&points(), "nosuch*", None, 2).unwrap().is_empty());
    }

    #[test]
    fn unknown_exact_name_is_qemus_error() {
        let e = get_state(&points(), "nosuch", None, 2).unwrap_err();
        assert_eq!(e.desc, "unknown event \"nosuch\"");
    }

    #[test]
    fn vcpu_with_a_non_vcpu_exact_name_is_the_special_case_error() {
        let e = get_state(&points(), "virtio_blk_request", Some(0), 2).unwrap_err();
        assert_eq!(e.desc, "event \"virtio_blk_request\" is not vCPU-specific");
    }

    #[test]
    fn vcpu_with_a_pattern_selects_only_per_vcpu_points_and_their_state_there() {
        let r = get_state(&points(), "*", Some(1), 2).unwrap();
        assert_eq!(names(&r), [("kvm_exit_io_in", EventState::Enabled)]);
        let r = get_state(&points(), "*", Some(0), 2).unwrap();
        assert_eq!(names(&r), [("kvm_exit_io_in", EventState::Disabled)]);
    }

    #[test]
    fn vcpu_index_is_checked_before_the_name_with_qemus_text() {
        let e = get_state(&points(), "nosuch", Some(2), 2).unwrap_err();
        assert_eq!(e.desc, "invalid vCPU index 2");
        let e = get_state(&points(), "*", Some(-1), 2).unwrap_err();
        assert_eq!(e.desc, "invalid vCPU index 4294967295");
    }

    #[test]
    fn question_mark_alone_is_no_pattern() {
        let e = get_state(&points(), "virtio_blk_reques?", None, 2).unwrap_err();
        assert_eq!(e.desc, "unknown event \"virtio_blk_reques?\"");
        let r = get_state(&points(), "virtio_blk_reques?*", None, 2).unwrap();
        assert_eq!(r.len(), 1);
    }
}
