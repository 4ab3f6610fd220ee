//! HMP through QMP (`human-monitor-command`): the same command lines give
//! the same text from bulkhead and from QEMU 10 (both `-M none -S`, the
//! machine both have without a guest), and the life-cycle commands act.
//! Needs /dev/kvm and qemu-system-x86_64.

mod common;

use common::Bulkhead;
use serde_json::{json, Value};

fn hmp(q: &mut common::Qmp, line: &str) -> String {
    q.ok_with("human-monitor-command", json!({"command-line": line}))
}

trait OkWith {
    fn ok_with(&mut self, name: &str, args: Value) -> String;
}

impl OkWith for common::Qmp {
    fn ok_with(&mut self, name: &str, args: Value) -> String {
        let r = self.execute(name, args);
        r["return"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned()
    }
}

/// QEMU 10's answers to `lines` on `-M none -S -name vm1` over QMP stdio.
fn qemu_hmp(lines: &[&str]) -> Vec<String> {
    let cmds: Vec<Value> = lines
        .iter()
        .map(|l| json!({"execute": "human-monitor-command", "arguments": {"command-line": l}}))
        .collect();
    common::qemu::replies(&["-M", "none", "-S", "-name", "vm1"], &cmds)
        .iter()
        .map(|r| {
            r["return"]
                .as_str()
                .unwrap_or_else(|| panic!("QEMU: {r}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn hmp_texts_match_qemu_on_the_same_command_lines() {
    let lines = [
        "info status",
        "info name",
        "foo",
        "info foo",
        "info commands",
        "help stop",
        "help info status",
        "stop",
        "info status",
    ];
    let b = Bulkhead::start(&["-M", "none", "-S", "-name", "vm1"]);
    let mut q = b.client();
    let ours: Vec<String> = lines.iter().map(|l| hmp(&mut q, l)).collect();
    let help_status = "info status  -- show the current VM status (running|paused)\r\n";
    assert_eq!(ours[0], "VM status: paused (prelaunch)\r\n");
    assert_eq!(ours[6], help_status);
    assert_eq!(ours, qemu_hmp(&lines));
}

#[test]
fn hmp_life_cycle_commands_act_and_report_like_qemu() {
    let b = Bulkhead::start(&[]);
    let mut q = b.client();
    assert_eq!(hmp(&mut q, "info status"), "VM status: running\r\n");
    assert_eq!(hmp(&mut q, "stop"), "");
    q.event("STOP");
    assert_eq!(hmp(&mut q, "info status"), "VM status: paused\r\n");
    assert_eq!(hmp(&mut q, "c"), "");
    q.event("RESUME");
    let cpus = hmp(&mut q, "info cpus");
    let tid = q.ok("query-cpus-fast")[0]["thread-id"].as_i64().unwrap();
    assert_eq!(cpus, format!("* CPU #0: thread_id={tid}\r\n"));
    assert!(hmp(&mut q, "info version").starts_with("10.0.0 (bulkhead "));
    assert_eq!(hmp(&mut q, "system_reset"), "");
    q.event("RESET");
    assert_eq!(hmp(&mut q, "quit"), "");
    let mut b = b;
    assert!(b.wait_exit().success());
}
