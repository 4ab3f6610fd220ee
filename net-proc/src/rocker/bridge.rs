//! The switch's own controller: it programs the OF-DPA tables the way
//! Linux's rocker driver (`rocker_ofdpa.c`) does for ports enslaved to one
//! bridge without VLAN filtering: an ingress-port entry sending every
//! physical port to the VLAN table; per port a VLAN entry giving untagged
//! frames the bridge's internal VLAN (0xf00 for the first bridge, as the
//! driver's internal VLANs); per port an L2 interface group (pop VLAN); a
//! flood group listing them and a bridging default entry pointing at it;
//! and a bridging entry per learned source MAC (exact VLAN + destination
//! MAC → the L2 interface group of the port it was seen on), aged out
//! after `ageing` without traffic from that MAC.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ipc_proto::rocker::{Flow, FlowAction, FlowKey, FlowMask, Group};

use super::of_dpa::{self, Packet, Tables, Verdict};

/// The first internal VLAN (Linux's `ROCKER_INTERNAL_VLAN_ID_BASE`).
pub const INTERNAL_VLAN_BASE: u16 = 0xf00;

// Linux's OF-DPA priorities.
const PRIORITY_IG_PORT: u32 = 1;
const PRIORITY_VLAN: u32 = 1;
const PRIORITY_BRIDGING_DFLT: u32 = 1;
const PRIORITY_BRIDGING_LEARNED: u32 = 3;

/// A learned MAC: its flow's cookie, port, and when it was last a source.
#[derive(Debug, Clone, Copy)]
struct Learned {
    cookie: u64,
    pport: u32,
    seen: Instant,
}

/// One bridge over ports `1..=ports`, with its tables.
#[derive(Debug)]
pub struct Bridge {
    tables: Tables,
    vlan: u16,
    ageing: Duration,
    next_cookie: u64,
    learned: HashMap<(u16, [u8; 6]), Learned>,
}

impl Bridge {
    /// A bridge over physical ports `1..=ports`, in internal VLAN `vlan`.
    pub fn new(ports: u32, vlan: u16, ageing: Duration) -> Bridge {
        let mut b = Bridge {
            tables: Tables::default(),
            vlan,
            ageing,
            next_cookie: 0,
            learned: HashMap::new(),
        };
        b.program(ports);
        b
    }

    fn cookie(&mut self) -> u64 {
        let c = self.next_cookie;
        self.next_cookie += 1;
        c
    }

    fn add(&mut self, key: FlowKey, mask: FlowMask, action: FlowAction) -> u64 {
        let cookie = self.cookie();
        self.tables.add_flow(Flow {
            cookie,
            hits: 0,
            key,
            mask,
            action,
        });
        cookie
    }

    fn program(&mut self, ports: u32) {
        let vlan = self.vlan;
        // Physical ports are 1..0xffff: match the upper half zero.
        self.add(
            FlowKey {
                priority: PRIORITY_IG_PORT,
                tbl_id: of_dpa::TBL_INGRESS_PORT,
                in_pport: Some(0),
                ..FlowKey::default()
            },
            FlowMask {
                in_pport: Some(0xffff_0000),
                ..FlowMask::default()
            },
            FlowAction {
                goto_tbl: Some(of_dpa::TBL_VLAN),
                ..FlowAction::default()
            },
        );
        let mut members = Vec::new();
        for pport in 1..=ports {
            self.add(
                FlowKey {
                    priority: PRIORITY_VLAN,
                    tbl_id: of_dpa::TBL_VLAN,
                    in_pport: Some(pport),
                    vlan_id: Some(0),
                    ..FlowKey::default()
                },
                FlowMask {
                    vlan_id: Some(0xffff),
                    ..FlowMask::default()
                },
                FlowAction {
                    goto_tbl: Some(of_dpa::TBL_TERM_MAC),
                    new_vlan_id: Some(vlan),
                    ..FlowAction::default()
                },
            );
            let id = of_dpa::l2_interface_group_id(vlan, pport);
            self.tables.add_group(Group {
                id,
                group_type: of_dpa::GROUP_L2_INTERFACE,
                vlan_id: Some(vlan),
                pport: Some(pport),
                out_pport: Some(pport),
                pop_vlan: Some(1),
                ..Group::default()
            });
            members.push(id);
        }
        let flood = of_dpa::l2_flood_group_id(vlan, 0);
        self.tables.add_group(Group {
            id: flood,
            group_type: of_dpa::GROUP_L2_FLOOD,
            vlan_id: Some(vlan),
            index: Some(0),
            group_ids: Some(members),
            ..Group::default()
        });
        self.add(
            FlowKey {
                priority: PRIORITY_BRIDGING_DFLT,
                tbl_id: of_dpa::TBL_BRIDGING,
                vlan_id: Some(vlan),
                eth_dst: Some([0; 6]),
                ..FlowKey::default()
            },
            FlowMask {
                eth_dst: Some([0; 6]),
                ..FlowMask::default()
            },
            FlowAction {
                goto_tbl: Some(of_dpa::TBL_ACL_POLICY),
                group_id: Some(flood),
                ..FlowAction::default()
            },
        );
    }

    /// The tables (for queries).
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Forwards one frame that came in on `in_pport`: learns its source
    /// MAC, then runs the pipeline. `None`: not an Ethernet frame.
    pub fn forward(&mut self, frame: &[u8], in_pport: u32, now: Instant) -> Option<Verdict> {
        let mut out = Vec::new();
        let vlan = self.forward_into(frame, in_pport, now, &mut out)?;
        Some(Verdict {
            vlan,
            out_pports: out,
        })
    }

    /// [`Bridge::forward`] with the output ports into `out` (no allocation
    /// once it has grown): None when `frame` is not an Ethernet frame,
    /// else the VLAN it was classified into (None: dropped).
    pub fn forward_into(
        &mut self,
        frame: &[u8],
        in_pport: u32,
        now: Instant,
        out: &mut Vec<u32>,
    ) -> Option<Option<u16>> {
        out.clear();
        let pkt = Packet::parse(frame, in_pport)?;
        let vlan = self.tables.process_into(&pkt, out);
        if let Some(vlan) = vlan {
            self.learn(vlan, pkt.eth_src, in_pport, now);
        }
        Some(vlan)
    }

    /// Records that `mac` was seen on `pport` in `vlan` (a new bridging
    /// entry, or the old one moved to the new port). Multicast sources
    /// are not learned.
    fn learn(&mut self, vlan: u16, mac: [u8; 6], pport: u32, now: Instant) {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return;
        }
        if let Some(l) = self.learned.get_mut(&(vlan, mac)) {
            l.seen = now;
            if l.pport == pport {
                return;
            }
            let old = l.cookie;
            self.tables.remove_flow(old);
            self.learned.remove(&(vlan, mac));
        }
        let cookie = self.add(
            FlowKey {
                priority: PRIORITY_BRIDGING_LEARNED,
                tbl_id: of_dpa::TBL_BRIDGING,
                vlan_id: Some(vlan),
                eth_dst: Some(mac),
                ..FlowKey::default()
            },
            FlowMask::default(),
            FlowAction {
                goto_tbl: Some(of_dpa::TBL_ACL_POLICY),
                group_id: Some(of_dpa::l2_interface_group_id(vlan, pport)),
                ..FlowAction::default()
            },
        );
        self.learned.insert(
            (vlan, mac),
            Learned {
                cookie,
                pport,
                seen: now,
            },
        );
    }

    /// Removes learned entries not refreshed for the ageing time; returns
    /// how many.
    pub fn age(&mut self, now: Instant) -> usize {
        let ageing = self.ageing;
        let old: Vec<_> = self
            .learned
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.seen) >= ageing)
            .map(|(k, l)| (*k, l.cookie))
            .collect();
        for (k, cookie) in &old {
            self.learned.remove(k);
            self.tables.remove_flow(*cookie);
        }
        old.len()
    }
}
