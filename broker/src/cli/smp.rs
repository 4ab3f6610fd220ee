//! `-smp [cpus=]N[,maxcpus=M][,sockets=S][,dies=D][,modules=1][,clusters=1]
//! [,books=1][,drawers=1][,cores=C][,threads=T]`: QEMU's
//! `machine_parse_smp_config` for a machine with sockets, dies, cores and
//! threads (what bulkhead's CPUID describes), with QEMU's messages. CPUs
//! `cpus..maxcpus` are the hot-pluggable slots.

use ipc_proto::cpu_topology::CpuTopology;

use super::keyval::keyval_pairs;
use super::{CliError, Result, MAX_CPUS};

/// The machine name QEMU's messages carry.
const MACHINE: &str = "microvm";

/// What `-smp` describes: the CPUs present at start and the topology of
/// the possible ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smp {
    /// CPUs present at start.
    pub cpus: u8,
    /// All possible CPUs and their hierarchy.
    pub topology: CpuTopology,
}

impl Default for Smp {
    fn default() -> Self {
        Smp {
            cpus: 1,
            topology: CpuTopology::flat(1),
        }
    }
}

fn plain(msg: impl Into<String>) -> CliError {
    CliError::Plain(msg.into())
}

/// QEMU parses these as `uint64` and stores them in 32 bits, so `-1` is
/// 0xffffffff (printed by QEMU as `-1`).
fn parse_count(key: &str, v: &str) -> Result<u32> {
    let n = if let Some(neg) = v.strip_prefix('-') {
        neg.parse::<u64>().ok().map(|n| 0u64.wrapping_sub(n))
    } else {
        v.parse::<u64>().ok()
    };
    n.map(|n| n as u32)
        .ok_or_else(|| plain(format!("Parameter 'smp.{key}' expects integer")))
}

fn hierarchy(t: &CpuTopology) -> String {
    // QEMU's cpu_hierarchy_to_string for pc (dies and modules supported).
    format!(
        "sockets ({}) * dies ({}) * modules (1) * cores ({}) * threads ({})",
        t.sockets, t.dies, t.cores, t.threads
    )
}

/// Parses `-smp`'s value.
pub fn parse(s: &str) -> Result<Smp> {
    let mut given: [Option<u32>; 10] = [None; 10];
    const KEYS: [&str; 10] = [
        "cpus", "maxcpus", "drawers", "books", "sockets", "dies", "clusters", "modules", "cores",
        "threads",
    ];
    for (k, v) in keyval_pairs("-smp", s, Some("cpus"))? {
        let Some(i) = KEYS.iter().position(|x| *x == k) else {
            return Err(plain(format!("Parameter 'smp.{k}' is unexpected")));
        };
        given[i] = Some(parse_count(&k, &v)?);
    }
    let [cpus, maxcpus, drawers, books, sockets, dies, clusters, modules, cores, threads] = given;
    if given.contains(&Some(0)) {
        return Err(plain(
            "Invalid CPU topology: CPU topology parameters must be greater than zero",
        ));
    }
    for (name, v) in [
        ("drawers", drawers),
        ("books", books),
        ("clusters", clusters),
        // QEMU's pc has modules; bulkhead's CPUID describes none.
        ("modules", modules),
    ] {
        if v.is_some_and(|v| v > 1) {
            return Err(plain(format!(
                "{name} > 1 not supported by this machine's CPU topology"
            )));
        }
    }
    let dies = dies.unwrap_or(1);
    let (mut sockets, mut cores, mut threads) = (
        sockets.unwrap_or(0),
        cores.unwrap_or(0),
        threads.unwrap_or(0),
    );
    let mut maxcpus = maxcpus.unwrap_or(0);
    let cpus = cpus.unwrap_or(0);
    // Computed as QEMU does (cores preferred over sockets since 6.2), with
    // wrapping arithmetic: QEMU's values are unsigned.
    if cpus == 0 && maxcpus == 0 {
        sockets = sockets.max(1);
        cores = cores.max(1);
        threads = threads.max(1);
    } else {
        if maxcpus == 0 {
            maxcpus = cpus;
        }
        if cores == 0 {
            sockets = sockets.max(1);
            threads = threads.max(1);
            cores = maxcpus / sockets.wrapping_mul(dies).wrapping_mul(threads).max(1);
        } else if sockets == 0 {
            threads = threads.max(1);
            sockets = maxcpus / dies.wrapping_mul(cores).wrapping_mul(threads).max(1);
        }
        if threads == 0 {
            threads = maxcpus / sockets.wrapping_mul(dies).wrapping_mul(cores).max(1);
        }
    }
    let total = sockets
        .wrapping_mul(dies)
        .wrapping_mul(cores)
        .wrapping_mul(threads);
    if maxcpus == 0 {
        maxcpus = total;
    }
    let cpus = if cpus == 0 { maxcpus } else { cpus };
    let topology = CpuTopology {
        max_cpus: maxcpus,
        sockets,
        dies,
        cores,
        threads,
    };
    if total != maxcpus {
        return Err(plain(format!(
            "Invalid CPU topology: product of the hierarchy must match maxcpus: {} != maxcpus ({maxcpus})",
            hierarchy(&topology)
        )));
    }
    if maxcpus < cpus {
        return Err(plain(format!(
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: {} == maxcpus ({maxcpus}) < smp_cpus ({cpus})",
            hierarchy(&topology)
        )));
    }
    if maxcpus > u32::from(MAX_CPUS) {
        return Err(plain(format!(
            "Invalid SMP CPUs {}. The max CPUs supported by machine '{MACHINE}' is {MAX_CPUS}",
            maxcpus as i32
        )));
    }
    // The last APIC id must stay below the xAPIC broadcast id (255): no
    // x2APIC-only CPUs.
    if topology.apic_id(maxcpus - 1) >= 255 {
        return Err(plain(format!(
            "APIC ID {} of CPU {} is 255 or more: bulkhead has no x2APIC-only CPUs",
            topology.apic_id(maxcpus - 1),
            maxcpus - 1
        )));
    }
    Ok(Smp {
        cpus: cpus as u8,
        topology,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn plain_counts_are_one_socket_of_cores() {
        let s = parse("4").unwrap();
        assert_eq!(s.cpus, 4);
        assert_eq!(s.topology, CpuTopology::flat(4));
        assert_eq!(parse("cpus=2").unwrap().cpus, 2);
        assert_eq!(parse("1,sockets=1,cores=1,threads=1").unwrap().cpus, 1);
    }

    #[test]
    fn maxcpus_leaves_hotpluggable_slots() {
        let s = parse("1,maxcpus=4").unwrap();
        assert_eq!(s.cpus, 1);
        assert_eq!((s.topology.max_cpus, s.topology.cores), (4, 4));
        // Only maxcpus: every slot present.
        assert_eq!(parse("maxcpus=4").unwrap().cpus, 4);
        let s = parse("2,maxcpus=8,sockets=2,dies=2,cores=2,threads=1").unwrap();
        assert_eq!(
            (s.topology.sockets, s.topology.dies, s.topology.cores),
            (2, 2, 2)
        );
        let s = parse("3,maxcpus=4,cores=2").unwrap();
        assert_eq!((s.topology.sockets, s.topology.cores), (2, 2));
    }

    #[test]
    fn invalid_topologies_get_qemus_messages() {
        assert_eq!(
            err("4,maxcpus=2"),
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: sockets (1) * dies (1) * modules (1) * cores (2) * threads (1) == maxcpus (2) < smp_cpus (4)"
        );
        assert_eq!(
            err("0"),
            "Invalid CPU topology: CPU topology parameters must be greater than zero"
        );
        assert_eq!(
            err("2,sockets=2,cores=2"),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (2) * dies (1) * modules (1) * cores (2) * threads (0) != maxcpus (2)"
        );
        assert_eq!(
            err("2,sockets=2,cores=2,threads=2,maxcpus=4"),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (2) * dies (1) * modules (1) * cores (2) * threads (2) != maxcpus (4)"
        );
        assert_eq!(
            err("1,clusters=2"),
            "clusters > 1 not supported by this machine's CPU topology"
        );
        assert_eq!(err("1,frob=1"), "Parameter 'smp.frob' is unexpected");
        assert_eq!(err("x"), "Parameter 'smp.cpus' expects integer");
        assert_eq!(
            err("1,maxcpus=x"),
            "Parameter 'smp.maxcpus' expects integer"
        );
        assert_eq!(
            err("1,maxcpus=65"),
            "Invalid SMP CPUs 65. The max CPUs supported by machine 'microvm' is 64"
        );
        assert_eq!(
            err("cpus=-1"),
            "Invalid SMP CPUs -1. The max CPUs supported by machine 'microvm' is 64"
        );
    }
}
