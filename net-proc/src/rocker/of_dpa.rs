//! The OF-DPA pipeline as QEMU's `hw/net/rocker/rocker_of_dpa.c` models
//! it: flow tables (ingress port, VLAN, termination MAC, bridging, ACL
//! policy) walked with `goto-tbl`, an action set written along the way
//! (new VLAN, group), and a group table (L2 interface, L2 flood) that
//! turns the action set into output ports. Hand-written: no crate models
//! OF-DPA.

use std::collections::BTreeMap;

use ipc_proto::rocker::{Flow, FlowAction, FlowKey, FlowMask, Group};

/// Ingress port table.
pub const TBL_INGRESS_PORT: u32 = 0;
/// VLAN table.
pub const TBL_VLAN: u32 = 10;
/// Termination MAC table.
pub const TBL_TERM_MAC: u32 = 20;
/// Bridging table.
pub const TBL_BRIDGING: u32 = 50;
/// ACL policy table.
pub const TBL_ACL_POLICY: u32 = 60;

/// L2 interface group type.
pub const GROUP_L2_INTERFACE: u8 = 0;
/// L2 flood group type.
pub const GROUP_L2_FLOOD: u8 = 4;

/// An L2 interface group's id: type 0, VLAN in bits 16-27, port below.
pub fn l2_interface_group_id(vlan: u16, pport: u32) -> u32 {
    (u32::from(vlan) << 16) & 0x0fff_0000 | (pport & 0xffff)
}

/// An L2 flood group's id: type 4 in bits 28-31, VLAN, index.
pub fn l2_flood_group_id(vlan: u16, index: u32) -> u32 {
    (u32::from(GROUP_L2_FLOOD) << 28) | (u32::from(vlan) << 16) & 0x0fff_0000 | (index & 0xffff)
}

/// The type of a group id.
pub fn group_type(id: u32) -> u8 {
    (id >> 28) as u8
}

/// The fields of a frame the tables match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packet {
    /// The physical port it came in on (1-based).
    pub in_pport: u32,
    /// Its VLAN id: from its 802.1Q tag, 0 when untagged.
    pub vlan_id: u16,
    /// EtherType (inside the tag).
    pub eth_type: u16,
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// IPv4: protocol, TOS, destination.
    pub ip: Option<(u8, u8, [u8; 4])>,
}

impl Packet {
    /// Parses an Ethernet frame; `None` when it is too short to be one.
    pub fn parse(frame: &[u8], in_pport: u32) -> Option<Packet> {
        let mac = |at: usize| -> Option<[u8; 6]> { frame.get(at..at + 6)?.try_into().ok() };
        let be16 = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
        };
        let eth_dst = mac(0)?;
        let eth_src = mac(6)?;
        let mut eth_type = be16(12)?;
        let mut l3 = 14;
        let mut vlan_id = 0;
        if eth_type == 0x8100 {
            vlan_id = be16(14)? & 0x0fff;
            eth_type = be16(16)?;
            l3 = 18;
        }
        let ip = (eth_type == 0x0800)
            .then(|| {
                let h = frame.get(l3..l3 + 20)?;
                Some((h[9], h[1], [h[16], h[17], h[18], h[19]]))
            })
            .flatten();
        Some(Packet {
            in_pport,
            vlan_id,
            eth_type,
            eth_src,
            eth_dst,
            ip,
        })
    }
}

fn mac_match(value: [u8; 6], key: [u8; 6], mask: Option<[u8; 6]>) -> bool {
    let mask = mask.unwrap_or([0xff; 6]);
    (0..6).all(|i| value[i] & mask[i] == key[i] & mask[i])
}

/// `value` matches `key` under `mask` (absent mask: all bits count); an
/// absent value matches only a zero mask.
fn field<T>(value: Option<T>, key: Option<T>, mask: Option<T>, all: T) -> bool
where
    T: Copy + PartialEq + std::ops::BitAnd<Output = T> + Default,
{
    match key {
        None => true,
        Some(k) => {
            let m = mask.unwrap_or(all);
            match value {
                Some(v) => v & m == k & m,
                None => m == T::default(),
            }
        }
    }
}

/// Does `pkt`, in VLAN `vlan`, match `key`/`mask`?
pub fn matches(pkt: &Packet, vlan: u16, key: &FlowKey, mask: &FlowMask) -> bool {
    let ip = pkt.ip;
    field(Some(pkt.in_pport), key.in_pport, mask.in_pport, u32::MAX)
        && field(None, key.tunnel_id, mask.tunnel_id, u32::MAX)
        && field(Some(vlan), key.vlan_id, mask.vlan_id, u16::MAX)
        && key.eth_type.is_none_or(|t| t == pkt.eth_type)
        && key
            .eth_src
            .is_none_or(|k| mac_match(pkt.eth_src, k, mask.eth_src))
        && key
            .eth_dst
            .is_none_or(|k| mac_match(pkt.eth_dst, k, mask.eth_dst))
        && field(ip.map(|i| i.0), key.ip_proto, mask.ip_proto, u8::MAX)
        && field(ip.map(|i| i.1), key.ip_tos, mask.ip_tos, u8::MAX)
        && key.ip_dst.is_none_or(|(addr, len)| {
            ip.is_some_and(|i| {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(len.min(32)))
                    .unwrap_or(0);
                u32::from_be_bytes(i.2) & m == u32::from_be_bytes(addr) & m
            })
        })
}

/// Where a frame goes: the physical ports it is sent out of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The VLAN the frame was classified into (none: dropped at the VLAN
    /// table).
    pub vlan: Option<u16>,
    /// Output ports (never the input port).
    pub out_pports: Vec<u32>,
}

/// The flow and group tables of one switch.
#[derive(Debug, Default)]
pub struct Tables {
    flows: BTreeMap<u64, Flow>,
    groups: BTreeMap<u32, Group>,
    /// Bumped by every change of the tables: older cached walks are stale.
    generation: u64,
    cache: WalkCache,
}

/// Bounds a walk through the tables (a `goto-tbl` loop programmed by
/// mistake cannot spin).
const MAX_HOPS: usize = 8;

/// Slots of the walk cache (a power of two).
const CACHE_SLOTS: usize = 256;

/// What one walk through the tables found for a [`Packet`]: the flows it
/// hit (their counters are counted again on every cached use), the VLAN
/// and the output ports.
#[derive(Debug, Default, Clone)]
struct Walk {
    generation: u64,
    pkt: Packet,
    hit: [u64; MAX_HOPS],
    hits: usize,
    vlan: Option<u16>,
    out: Vec<u32>,
}

/// A direct-mapped cache of walks by packet fields (what OVS calls the
/// microflow cache): the pipeline is walked once per distinct frame
/// header and tables generation, not per frame. Entries are only valid
/// for the tables' current generation.
#[derive(Debug, Default)]
struct WalkCache {
    slots: Vec<Option<Walk>>,
}

impl WalkCache {
    fn slot(pkt: &Packet) -> usize {
        let mac = |m: [u8; 6]| {
            let mut b = [0u8; 8];
            b[..6].copy_from_slice(&m);
            u64::from_le_bytes(b)
        };
        let ip = pkt.ip.map_or(0, |(p, t, a)| {
            u64::from(u32::from_le_bytes(a)) ^ (u64::from(p) << 32) ^ (u64::from(t) << 40)
        });
        let x = mac(pkt.eth_dst)
            ^ mac(pkt.eth_src).rotate_left(24)
            ^ (u64::from(pkt.in_pport) << 48)
            ^ (u64::from(pkt.vlan_id) << 32)
            ^ u64::from(pkt.eth_type).rotate_left(40)
            ^ ip.rotate_left(8);
        // Fibonacci hashing: the multiply spreads every input bit into
        // the top bits.
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize & (CACHE_SLOTS - 1)
    }
}

impl Tables {
    /// Adds or replaces the flow with `flow.cookie`.
    pub fn add_flow(&mut self, flow: Flow) {
        self.generation += 1;
        self.flows.insert(flow.cookie, flow);
    }

    /// Removes the flow with `cookie`.
    pub fn remove_flow(&mut self, cookie: u64) -> Option<Flow> {
        self.generation += 1;
        self.flows.remove(&cookie)
    }

    /// Adds or replaces the group with `group.id`.
    pub fn add_group(&mut self, group: Group) {
        self.generation += 1;
        self.groups.insert(group.id, group);
    }

    /// The flows, all or those of table `tbl`, in cookie order.
    pub fn flows(&self, tbl: Option<u32>) -> Vec<Flow> {
        self.flows
            .values()
            .filter(|f| tbl.is_none_or(|t| f.key.tbl_id == t))
            .copied()
            .collect()
    }

    /// The groups, all or those of type `ty`, in id order.
    pub fn groups(&self, ty: Option<u8>) -> Vec<Group> {
        self.groups
            .values()
            .filter(|g| ty.is_none_or(|t| g.group_type == t))
            .cloned()
            .collect()
    }

    /// The highest-priority flow of table `tbl` matching `pkt` in `vlan`.
    fn lookup(&mut self, tbl: u32, pkt: &Packet, vlan: u16) -> Option<&mut Flow> {
        self.flows
            .values_mut()
            .filter(|f| f.key.tbl_id == tbl && matches(pkt, vlan, &f.key, &f.mask))
            .fold(None, |best: Option<&mut Flow>, f| match best {
                Some(b) if b.key.priority >= f.key.priority => Some(b),
                _ => Some(f),
            })
    }

    /// Runs `pkt` through the pipeline from the ingress port table,
    /// counting hits, and executes the resulting action set.
    pub fn process(&mut self, pkt: &Packet) -> Verdict {
        let mut out = Vec::new();
        let vlan = self.process_into(pkt, &mut out);
        Verdict {
            vlan,
            out_pports: out,
        }
    }

    /// [`Tables::process`] into `out` (cleared first): the VLAN the frame
    /// was classified into (None: dropped at the VLAN table). A frame
    /// whose fields were walked before, with the tables unchanged since,
    /// takes the cached walk (its flows' hits counted as the walk would).
    pub fn process_into(&mut self, pkt: &Packet, out: &mut Vec<u32>) -> Option<u16> {
        out.clear();
        if self.cache.slots.is_empty() {
            self.cache.slots = vec![None; CACHE_SLOTS];
        }
        let slot = WalkCache::slot(pkt);
        if let Some(w) = &self.cache.slots[slot] {
            if w.generation == self.generation && w.pkt == *pkt {
                for cookie in &w.hit[..w.hits] {
                    if let Some(f) = self.flows.get_mut(cookie) {
                        f.hits += 1;
                    }
                }
                out.extend_from_slice(&w.out);
                return w.vlan;
            }
        }
        let mut walk = self.cache.slots[slot].take().unwrap_or_default();
        self.walk(pkt, &mut walk);
        out.extend_from_slice(&walk.out);
        let vlan = walk.vlan;
        self.cache.slots[slot] = Some(walk);
        vlan
    }

    /// Walks the tables for `pkt`, counting hits, into `w`.
    fn walk(&mut self, pkt: &Packet, w: &mut Walk) {
        w.generation = self.generation;
        w.pkt = *pkt;
        w.hits = 0;
        w.vlan = None;
        w.out.clear();
        let mut tbl = TBL_INGRESS_PORT;
        let mut vlan = pkt.vlan_id;
        let mut classified = false;
        let mut group = None;
        for _ in 0..MAX_HOPS {
            let action: Option<FlowAction> = self.lookup(tbl, pkt, vlan).map(|f| {
                f.hits += 1;
                // One flow per hop, at most MAX_HOPS hops.
                if let Some(h) = w.hit.get_mut(w.hits) {
                    *h = f.cookie;
                    w.hits += 1;
                }
                f.action
            });
            let next = match action {
                Some(a) => {
                    if let Some(v) = a.new_vlan_id {
                        vlan = v;
                    }
                    if tbl == TBL_VLAN {
                        classified = true;
                    }
                    if a.group_id.is_some() {
                        group = a.group_id;
                    }
                    a.goto_tbl
                }
                // Misses as QEMU's: VLAN → drop; termination MAC →
                // bridging; bridging → ACL; ACL → execute.
                None => match tbl {
                    TBL_INGRESS_PORT | TBL_VLAN => None,
                    TBL_TERM_MAC => Some(TBL_BRIDGING),
                    TBL_BRIDGING => Some(TBL_ACL_POLICY),
                    _ => None,
                },
            };
            match next {
                Some(t) if t > tbl => tbl = t,
                // Tables only go forward; anything else ends the walk.
                Some(_) | None => break,
            }
        }
        if !classified {
            return;
        }
        if let Some(g) = group {
            self.expand(g, pkt.in_pport, &mut w.out, 0);
        }
        w.vlan = Some(vlan);
    }

    /// Output ports of group `id` (flood members recursively, bounded).
    fn expand(&self, id: u32, in_pport: u32, out: &mut Vec<u32>, depth: usize) {
        let Some(g) = self.groups.get(&id) else {
            return;
        };
        match g.group_type {
            GROUP_L2_FLOOD if depth == 0 => {
                for member in g.group_ids.iter().flatten() {
                    self.expand(*member, in_pport, out, depth + 1);
                }
            }
            GROUP_L2_INTERFACE => {
                if let Some(p) = g.out_pport.filter(|p| *p != in_pport && !out.contains(p)) {
                    out.push(p);
                }
            }
            // Other group types are not programmed by this switch.
            _ => {}
        }
    }
}
