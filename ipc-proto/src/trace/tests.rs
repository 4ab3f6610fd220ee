//! Unit tests of the trace registry: declaration, state, per-vCPU masks.

use std::sync::Mutex;

use super::*;

/// The points are statics: tests that change their state take turns.
static STATE: Mutex<()> = Mutex::new(());

fn state() -> std::sync::MutexGuard<'static, ()> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

mod points {
    crate::trace_points! {
        process "test";
        /// A plain point.
        point plain(a, b);
        /// A per-vCPU point.
        vcpu per_cpu(port);
    }
}

#[test]
fn declared_points_list_names_args_and_vcpu_property() {
    let names: Vec<_> = points::POINTS
        .iter()
        .map(|p| (p.name(), p.args(), p.per_vcpu()))
        .collect();
    assert_eq!(
        names,
        [
            ("plain", &["a", "b"][..], false),
            ("per_cpu", &["port"][..], true)
        ]
    );
}

#[test]
fn apply_enables_exactly_the_named_points_and_reports_them() {
    let _turn = state();
    let enabled = [EnabledPoint {
        name: "plain".into(),
        vcpus: VcpuMask::ALL,
    }];
    let reply = serve(
        points::POINTS,
        TraceRequest::Apply {
            enabled: enabled.to_vec(),
            to_file: false,
        },
        Vec::new(),
    )
    .unwrap();
    let TraceReply::Points(states) = reply;
    assert_eq!(states[0].vcpus, VcpuMask::ALL);
    assert!(states[1].vcpus.is_empty());
    assert!(points::plain::POINT.is_enabled());
    assert!(!points::per_cpu::POINT.is_enabled());
    apply(points::POINTS, &[]).unwrap();
    assert!(!points::plain::POINT.is_enabled());
}

#[test]
fn per_vcpu_point_is_enabled_only_on_its_vcpus() {
    let _turn = state();
    let mut mask = VcpuMask::NONE;
    mask.set(2, true);
    apply(
        points::POINTS,
        &[EnabledPoint {
            name: "per_cpu".into(),
            vcpus: mask,
        }],
    )
    .unwrap();
    assert!(points::per_cpu::POINT.is_enabled());
    assert!(points::per_cpu::POINT.on_vcpu(2));
    assert!(!points::per_cpu::POINT.on_vcpu(1));
    crate::trace_point!(points::per_cpu(2u32, 0x3f8));
    apply(points::POINTS, &[]).unwrap();
}

#[test]
fn unknown_point_is_refused_and_changes_nothing() {
    let _turn = state();
    let err = apply(
        points::POINTS,
        &[
            EnabledPoint {
                name: "plain".into(),
                vcpus: VcpuMask::ALL,
            },
            EnabledPoint {
                name: "nosuch".into(),
                vcpus: VcpuMask::ALL,
            },
        ],
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "test has no trace point 'nosuch'");
    assert!(!points::plain::POINT.is_enabled());
}

#[test]
fn apply_with_to_file_but_no_fd_is_refused() {
    let err = serve(
        points::POINTS,
        TraceRequest::Apply {
            enabled: Vec::new(),
            to_file: true,
        },
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(err.desc, "no trace file passed with the request");
}

#[test]
fn call_site_evaluates_arguments_only_when_enabled() {
    let _turn = state();
    let mut evaluated = 0;
    let mut arg = || {
        evaluated += 1;
        7
    };
    crate::trace_point!(points::plain(arg(), 1));
    assert_eq!(evaluated, 0);
}

#[test]
fn line_names_the_point_then_vcpu_then_arguments() {
    let line = sink::format_line("kvm_exit_io", &["port", "size"], Some(1), &[&0x3f8, &1]);
    assert_eq!(line, "kvm_exit_io vcpu=1 port=1016 size=1");
}

#[test]
fn vcpu_mask_sets_and_clears_bits_and_ignores_indexes_past_capacity() {
    let mut m = VcpuMask::NONE;
    m.set(255, true);
    m.set(300, true);
    assert!(m.has(255));
    assert!(!m.has(300));
    m.set(255, false);
    assert!(m.is_empty());
}
