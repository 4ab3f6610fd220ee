//! `human-monitor-command`: QEMU's human monitor (HMP) commands people use
//! most, run through QMP (so `qmp-shell -H` works). Each is carried out by
//! the QMP command it stands for and printed in QEMU's HMP format; any
//! other command line gets QEMU's `unknown command` text.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, QapiType, SchemaType};

/// Arguments of `human-monitor-command`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HmpArgs {
    /// The HMP command line.
    pub command_line: String,
    /// The CPU the command applies to (the session's default otherwise).
    pub cpu_index: Option<i64>,
}

impl QapiType for HmpArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "HmpArgs",
            members: vec![
                member::<String>("command-line"),
                optional::<i64>("cpu-index"),
            ],
        }
    }
}

/// The HMP commands bulkhead has: (name, arguments, help).
const COMMANDS: &[(&str, &str, &str)] = &[
    ("cont|c", "", "resume emulation"),
    ("help|?", "[cmd]", "show the help"),
    (
        "info",
        "[subcommand]",
        "show various information about the system state",
    ),
    ("quit|q", "", "quit the emulator"),
    ("stop|s", "", "stop emulation"),
    ("system_powerdown", "", "send system power down event"),
    ("system_reset", "", "reset the system"),
];

/// Every command's help line, sorted as QEMU's `help`.
fn all_commands() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut all: Vec<_> = COMMANDS
        .iter()
        .chain(super::hmp_media::COMMANDS)
        .copied()
        .collect();
    all.sort_by_key(|(n, ..)| *n);
    all
}

/// The `info` subcommands bulkhead has.
const INFO: &[(&str, &str, &str)] = &[
    (
        "block",
        "",
        "show info of one block device or all block devices",
    ),
    ("blockstats", "", "show block device statistics"),
    ("chardev", "", "show the character devices"),
    ("cpus", "", "show infos for each CPU"),
    ("mtree", "", "show memory tree"),
    ("name", "", "show the current VM name"),
    ("qtree", "", "show device tree"),
    ("status", "", "show the current VM status (running|paused)"),
    ("version", "", "show the version of QEMU"),
];

/// `human-monitor-command`.
pub struct HumanMonitorCommand;

impl Command for HumanMonitorCommand {
    const NAME: &'static str = "human-monitor-command";
    const DOC: &'static str = "Run an HMP command line (info status|version|name|block|\
        blockstats|cpus|chardev|qtree|mtree, stop, cont, system_reset, system_powerdown, eject, change, \
        quit, help) and return its text.";
    type Args = HmpArgs;
    type Ret = String;

    fn run(args: HmpArgs, ctx: &Ctx<'_>) -> Result<String> {
        if let Some(i) = args.cpu_index {
            match u32::try_from(i) {
                Ok(i) if ctx.machine.cpu_present(i) => ctx.session.set_default_cpu(i),
                _ => return Err(QmpError::generic("Invalid CPU index")),
            }
        }
        let line = args.command_line.trim();
        let out = match run_line(line, ctx) {
            Ok(text) => text,
            // HMP prints a failed command's error; the QMP call succeeds.
            Err(e) => format!("Error: {}\n", e.desc),
        };
        Ok(out.replace('\n', "\r\n"))
    }
}

fn qmp(ctx: &Ctx<'_>, name: &str) -> Result<Value> {
    let entry = ctx
        .registry
        .get(name)
        .ok_or_else(|| QmpError::generic(format!("internal: no command {name}")))?;
    entry.call(Map::new(), ctx)
}

fn unknown(line: &str) -> String {
    format!("unknown command: '{line}'\n")
}

fn run_line(line: &str, ctx: &Ctx<'_>) -> Result<String> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let arg = words.next();
    let sub = words.next();
    if let ("help" | "?", Some("info"), Some(what)) = (cmd, arg, sub) {
        return Ok(INFO
            .iter()
            .find(|(n, ..)| *n == what)
            .map(|e| help_list(&[*e], "info "))
            .unwrap_or_default());
    }
    if matches!(cmd, "eject" | "change") {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        if let Some(r) = super::hmp_media::run(cmd, &words, ctx) {
            return r;
        }
    }
    match (cmd, arg) {
        ("", _) => Ok(String::new()),
        ("stop" | "s", None) => qmp(ctx, "stop").map(|_| String::new()),
        ("cont" | "c", None) => qmp(ctx, "cont").map(|_| String::new()),
        ("system_reset", None) => qmp(ctx, "system_reset").map(|_| String::new()),
        ("system_powerdown", None) => qmp(ctx, "system_powerdown").map(|_| String::new()),
        ("quit" | "q", None) => qmp(ctx, "quit").map(|_| String::new()),
        ("help" | "?", None) => Ok(help_list(&all_commands(), "")),
        ("help" | "?", Some("info")) => Ok(help_list(INFO, "info ")),
        ("help" | "?", Some(c)) => Ok(all_commands()
            .iter()
            .find(|(n, ..)| n.split('|').any(|x| x == c))
            .map(|e| help_list(&[*e], ""))
            .unwrap_or_default()),
        ("info", None) => Ok(help_list(INFO, "info ")),
        ("info", Some(what)) => {
            let text = match what {
                "status" => info_status(ctx)?,
                "version" => info_version(ctx)?,
                "name" => info_name(ctx)?,
                "block" => info_block(ctx)?,
                "blockstats" => info_blockstats(ctx)?,
                "cpus" => info_cpus(ctx)?,
                "chardev" => info_chardev(ctx),
                "qtree" => info_qtree(ctx),
                "mtree" => info_mtree(ctx),
                _ => unknown(&format!("info {what}")),
            };
            Ok(text)
        }
        _ => Ok(unknown(line)),
    }
}

fn help_list(list: &[(&str, &str, &str)], prefix: &str) -> String {
    list.iter()
        .map(|(n, a, h)| format!("{prefix}{n} {a} -- {h}\n"))
        .collect()
}

fn info_status(ctx: &Ctx<'_>) -> Result<String> {
    let s = qmp(ctx, "query-status")?;
    let running = s["running"].as_bool().unwrap_or(false);
    let status = s["status"].as_str().unwrap_or("");
    let mut out = format!("VM status: {}", if running { "running" } else { "paused" });
    if !running && status != "paused" {
        out.push_str(&format!(" ({status})"));
    }
    out.push('\n');
    Ok(out)
}

fn info_version(ctx: &Ctx<'_>) -> Result<String> {
    let v = qmp(ctx, "query-version")?;
    let q = &v["qemu"];
    Ok(format!(
        "{}.{}.{} ({})\n",
        q["major"],
        q["minor"],
        q["micro"],
        v["package"].as_str().unwrap_or("")
    ))
}

fn info_name(ctx: &Ctx<'_>) -> Result<String> {
    let n = qmp(ctx, "query-name")?;
    Ok(n["name"]
        .as_str()
        .map(|n| format!("{n}\n"))
        .unwrap_or_default())
}

fn info_block(ctx: &Ctx<'_>) -> Result<String> {
    let devices = qmp(ctx, "query-block")?;
    let mut parts = Vec::new();
    for d in devices.as_array().into_iter().flatten() {
        let dev = d["device"].as_str().unwrap_or("");
        let qdev = d["qdev"].as_str().unwrap_or("");
        // QEMU's line for a drive with a tray.
        let removable = if d["removable"].as_bool().unwrap_or(false) {
            format!(
                "    Removable device: {}locked, tray {}\n",
                if d["locked"].as_bool().unwrap_or(false) {
                    ""
                } else {
                    "not "
                },
                if d["tray_open"].as_bool().unwrap_or(false) {
                    "open"
                } else {
                    "closed"
                }
            )
        } else {
            String::new()
        };
        let Some(i) = d.get("inserted") else {
            parts.push(format!(
                "{dev}: [not inserted]\n    Attached to:      {qdev}\n{removable}"
            ));
            continue;
        };
        let node = i["node-name"].as_str().unwrap_or("");
        let name = match (dev.is_empty(), node.is_empty()) {
            (false, false) => format!("{dev} ({node})"),
            (false, true) => dev.to_owned(),
            (true, _) => node.to_owned(),
        };
        let ro = if i["ro"].as_bool().unwrap_or(false) {
            ", read-only"
        } else {
            ""
        };
        let cache = &i["cache"];
        let mut mode = String::from(if cache["writeback"].as_bool().unwrap_or(true) {
            "writeback"
        } else {
            "writethrough"
        });
        if cache["direct"].as_bool().unwrap_or(false) {
            mode.push_str(", direct");
        }
        if cache["no-flush"].as_bool().unwrap_or(false) {
            mode.push_str(", ignore flushes");
        }
        let mut part = format!(
            "{name}: {} ({}{ro})\n    Attached to:      {qdev}\n{removable}    Cache mode:       {mode}\n",
            i["file"].as_str().unwrap_or(""),
            i["drv"].as_str().unwrap_or(""),
        );
        part.push_str(&io_throttling(i));
        parts.push(part);
    }
    Ok(parts.join("\n"))
}

/// QEMU's `I/O throttling:` line of a throttled device ("" otherwise).
fn io_throttling(i: &Value) -> String {
    let n = |k: &str| i[k].as_i64().unwrap_or(0);
    let rates = ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"];
    if rates.iter().all(|k| n(k) == 0) {
        return String::new();
    }
    let fields = [
        "bps",
        "bps_rd",
        "bps_wr",
        "bps_max",
        "bps_rd_max",
        "bps_wr_max",
        "iops",
        "iops_rd",
        "iops_wr",
        "iops_max",
        "iops_rd_max",
        "iops_wr_max",
        "iops_size",
    ];
    let values: Vec<String> = fields.iter().map(|k| format!("{k}={}", n(k))).collect();
    format!(
        "    I/O throttling:   {} group={}\n",
        values.join(" "),
        i["group"].as_str().unwrap_or("")
    )
}

fn info_blockstats(ctx: &Ctx<'_>) -> Result<String> {
    let stats = qmp(ctx, "query-blockstats")?;
    let mut out = String::new();
    for s in stats.as_array().into_iter().flatten() {
        let name = match s["device"].as_str() {
            Some(d) if !d.is_empty() => d,
            _ => s["node-name"].as_str().unwrap_or(""),
        };
        let st = &s["stats"];
        let n = |k: &str| st[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{name}: rd_bytes={} wr_bytes={} rd_operations={} wr_operations={} \
             flush_operations={} wr_total_time_ns={} rd_total_time_ns={} \
             flush_total_time_ns={} rd_merged={} wr_merged={} idle_time_ns={}\n",
            n("rd_bytes"),
            n("wr_bytes"),
            n("rd_operations"),
            n("wr_operations"),
            n("flush_operations"),
            n("wr_total_time_ns"),
            n("rd_total_time_ns"),
            n("flush_total_time_ns"),
            n("rd_merged"),
            n("wr_merged"),
            n("idle_time_ns"),
        ));
    }
    Ok(out)
}

fn info_cpus(ctx: &Ctx<'_>) -> Result<String> {
    let cpus = qmp(ctx, "query-cpus-fast")?;
    let current = i64::from(ctx.session.default_cpu());
    Ok(cpus
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let i = c["cpu-index"].as_i64().unwrap_or(-1);
            let mark = if i == current { '*' } else { ' ' };
            format!("{mark} CPU #{i}: thread_id={}\n", c["thread-id"])
        })
        .collect())
}

fn info_chardev(ctx: &Ctx<'_>) -> String {
    super::chardev::chardevs(ctx)
        .iter()
        .map(|c| format!("{}: filename={}\n", c.label, c.filename))
        .collect()
}

/// The device tree of bulkhead's microvm (docs/platform.md).
fn info_qtree(ctx: &Ctx<'_>) -> String {
    let mut out = String::from("bus: main-system-bus\n  type System\n");
    if ctx.machine.config().machine == crate::cli::MachineType::None {
        return out;
    }
    out.push_str("  dev: isa-serial, id \"\"\n    iobase = 1016 (0x3f8)\n    irq = 4 (0x4)\n");
    out.push_str("  dev: ioapic, id \"\"\n    mmio 00000000fec00000/0000000000001000\n");
    for (slot, (id, _)) in crate::machine::devices::block_devices(ctx.machine)
        .iter()
        .enumerate()
    {
        let base = 0xd000_0000u64 + 0x1000 * slot as u64;
        out.push_str(&format!(
            "  dev: virtio-mmio, id \"\"\n    mmio {base:016x}/0000000000001000\n    bus: virtio-mmio-bus.{slot}\n      type virtio-mmio-bus\n      dev: virtio-blk-device, id \"{id}\"\n"
        ));
    }
    out
}

/// The guest-physical memory map (docs/platform.md).
fn info_mtree(ctx: &Ctx<'_>) -> String {
    let cfg = ctx.machine.config();
    let mut out = String::from(
        "address-space: memory\n  0000000000000000-ffffffffffffffff (prio 0, i/o): system\n",
    );
    if cfg.machine == crate::cli::MachineType::Microvm {
        let low = cfg.mem_size.min(0xc000_0000);
        out.push_str(&format!(
            "    0000000000000000-{:016x} (prio 0, ram): microvm.ram\n",
            low - 1
        ));
        for slot in 0..crate::machine::devices::block_devices(ctx.machine).len() as u64 {
            let base = 0xd000_0000u64 + 0x1000 * slot;
            out.push_str(&format!(
                "    {base:016x}-{:016x} (prio 0, i/o): virtio-mmio\n",
                base + 0xfff
            ));
        }
        out.push_str("    00000000d0100000-00000000d0100000 (prio 0, i/o): acpi-ged\n");
        out.push_str("    00000000fec00000-00000000fec00fff (prio 0, i/o): kvm-ioapic\n");
        out.push_str("    00000000fee00000-00000000feefffff (prio 4096, i/o): kvm-apic-msi\n");
        if cfg.mem_size > 0xc000_0000 {
            let high = cfg.mem_size - 0xc000_0000;
            out.push_str(&format!(
                "    0000000100000000-{:016x} (prio 0, ram): microvm.ram @{:016x}\n",
                0x1_0000_0000u64 + high - 1,
                0xc000_0000u64
            ));
        }
    }
    out.push_str("\naddress-space: I/O\n  0000000000000000-000000000000ffff (prio 0, i/o): io\n");
    if cfg.machine == crate::cli::MachineType::Microvm {
        out.push_str("    00000000000003f8-00000000000003ff (prio 0, i/o): serial\n");
        out.push_str("    00000000000000f4-00000000000000f4 (prio 0, i/o): isa-debug-exit\n");
    }
    out.push('\n');
    out
}
