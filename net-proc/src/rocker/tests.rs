//! Unit tests of the pipeline and the bridge controller.

use std::time::{Duration, Instant};

use super::bridge::Bridge;
use super::of_dpa::{self, Packet};

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
const BCAST: [u8; 6] = [0xff; 6];

fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.extend_from_slice(&[0u8; 46]);
    f
}

fn bridge(ports: u32) -> Bridge {
    Bridge::new(ports, 0xf00, Duration::from_secs(300))
}

fn out(b: &mut Bridge, dst: [u8; 6], src: [u8; 6], in_pport: u32, now: Instant) -> Vec<u32> {
    let mut v = b
        .forward(&frame(dst, src), in_pport, now)
        .unwrap()
        .out_pports;
    v.sort_unstable();
    v
}

fn learned(b: &Bridge) -> Vec<([u8; 6], u32, u64)> {
    b.tables()
        .flows(Some(of_dpa::TBL_BRIDGING))
        .into_iter()
        .filter(|f| f.mask.eth_dst.is_none())
        .map(|f| {
            let g = f.action.group_id.unwrap();
            (f.key.eth_dst.unwrap(), g & 0xffff, f.hits)
        })
        .collect()
}

#[test]
fn unknown_and_broadcast_destinations_flood_to_every_other_port() {
    let mut b = bridge(3);
    let now = Instant::now();
    assert_eq!(out(&mut b, BCAST, A, 1, now), vec![2, 3]);
    assert_eq!(out(&mut b, C, B, 2, now), vec![1, 3]);
}

#[test]
fn learned_destinations_go_only_to_their_port_and_count_hits() {
    let mut b = bridge(3);
    let now = Instant::now();
    out(&mut b, BCAST, A, 1, now);
    out(&mut b, BCAST, B, 2, now);
    assert_eq!(out(&mut b, B, A, 1, now), vec![2]);
    assert_eq!(out(&mut b, A, B, 2, now), vec![1]);
    assert_eq!(out(&mut b, A, B, 2, now), vec![1]);
    let mut l = learned(&b);
    l.sort_unstable();
    assert_eq!(l, vec![(A, 1, 2), (B, 2, 1)]);
}

#[test]
fn a_frame_to_a_mac_on_its_own_port_is_not_sent_back() {
    let mut b = bridge(2);
    let now = Instant::now();
    out(&mut b, BCAST, A, 1, now);
    assert_eq!(out(&mut b, A, C, 1, now), Vec::<u32>::new());
}

#[test]
fn a_moved_mac_is_relearned_on_its_new_port() {
    let mut b = bridge(3);
    let now = Instant::now();
    out(&mut b, BCAST, A, 1, now);
    out(&mut b, BCAST, A, 3, now);
    assert_eq!(out(&mut b, A, B, 2, now), vec![3]);
    assert_eq!(learned(&b).iter().filter(|l| l.0 == A).count(), 1);
}

#[test]
fn entries_age_out_after_the_ageing_time_unless_refreshed() {
    let mut b = bridge(2);
    let t0 = Instant::now();
    out(&mut b, BCAST, A, 1, t0);
    out(&mut b, BCAST, B, 2, t0);
    // B refreshes itself as a source; A stays silent.
    out(&mut b, BCAST, B, 2, t0 + Duration::from_secs(200));
    assert_eq!(b.age(t0 + Duration::from_secs(299)), 0);
    assert_eq!(b.age(t0 + Duration::from_secs(300)), 1);
    assert_eq!(learned(&b).iter().map(|l| l.0).collect::<Vec<_>>(), vec![B]);
    // A is unknown again: flooded.
    assert_eq!(out(&mut b, A, B, 2, t0 + Duration::from_secs(301)), vec![1]);
    assert_eq!(b.age(t0 + Duration::from_secs(600)), 0);
    assert_eq!(b.age(t0 + Duration::from_secs(601)), 1);
    assert!(learned(&b).is_empty());
}

#[test]
fn ports_get_the_internal_vlan_and_tagged_frames_are_dropped() {
    let b = bridge(2);
    let vlan = b.tables().flows(Some(of_dpa::TBL_VLAN));
    assert_eq!(vlan.len(), 2);
    for (i, f) in vlan.iter().enumerate() {
        assert_eq!(f.key.in_pport, Some(i as u32 + 1));
        assert_eq!(f.key.vlan_id, Some(0));
        assert_eq!(f.action.new_vlan_id, Some(0xf00));
        assert_eq!(f.action.goto_tbl, Some(of_dpa::TBL_TERM_MAC));
    }
    let mut b = bridge(2);
    let mut tagged = frame(BCAST, A);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    let v = b.forward(&tagged, 1, Instant::now()).unwrap();
    assert_eq!(v.vlan, None);
    assert!(v.out_pports.is_empty());
    assert!(learned(&b).is_empty());
    assert!(b.forward(&[0u8; 10], 1, Instant::now()).is_none());
}

#[test]
fn groups_are_l2_interfaces_per_port_and_one_flood_group_listing_them() {
    let b = bridge(2);
    let ifaces = b.tables().groups(Some(of_dpa::GROUP_L2_INTERFACE));
    let ids: Vec<u32> = ifaces.iter().map(|g| g.id).collect();
    assert_eq!(ids, vec![0x0f00_0001, 0x0f00_0002]);
    for g in &ifaces {
        assert_eq!(g.vlan_id, Some(0xf00));
        assert_eq!(g.out_pport, g.pport);
        assert_eq!(g.pop_vlan, Some(1));
    }
    let flood = b.tables().groups(Some(of_dpa::GROUP_L2_FLOOD));
    assert_eq!(flood.len(), 1);
    assert_eq!(flood[0].id, 0x4f00_0000);
    assert_eq!(flood[0].group_ids, Some(ids));
    assert_eq!(b.tables().groups(None).len(), 3);
    // The reference's example ids: VLAN 3841, port 2.
    assert_eq!(of_dpa::l2_interface_group_id(3841, 2), 251_723_778);
}

#[test]
fn ingress_and_vlan_entries_count_every_frame() {
    let mut b = bridge(2);
    let now = Instant::now();
    for _ in 0..3 {
        out(&mut b, BCAST, A, 1, now);
    }
    let ig = b.tables().flows(Some(of_dpa::TBL_INGRESS_PORT));
    assert_eq!(ig[0].hits, 3);
    assert_eq!(ig[0].mask.in_pport, Some(0xffff_0000));
    let vlan = b.tables().flows(Some(of_dpa::TBL_VLAN));
    assert_eq!((vlan[0].hits, vlan[1].hits), (3, 0));
}

#[test]
fn packets_parse_vlan_tags_and_ipv4_fields() {
    let mut f = frame(B, A);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14 + 1] = 0x10;
    f[14 + 9] = 17;
    f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 1]);
    let p = Packet::parse(&f, 4).unwrap();
    assert_eq!((p.in_pport, p.vlan_id, p.eth_type), (4, 0, 0x0800));
    assert_eq!(p.ip, Some((17, 0x10, [10, 0, 0, 1])));
    let mut key = ipc_proto::rocker::FlowKey {
        ip_dst: Some(([10, 0, 0, 0], 8)),
        ip_proto: Some(17),
        ..Default::default()
    };
    assert!(of_dpa::matches(&p, 0, &key, &Default::default()));
    key.ip_dst = Some(([11, 0, 0, 0], 8));
    assert!(!of_dpa::matches(&p, 0, &key, &Default::default()));
}

#[test]
fn repeated_frames_take_the_cached_walk_count_hits_and_see_a_table_change_at_once() {
    let mut b = bridge(3);
    let now = Instant::now();
    out(&mut b, BCAST, A, 1, now);
    for _ in 0..5 {
        assert_eq!(out(&mut b, A, B, 2, now), vec![1]);
    }
    // One walk and four cached uses: five hits on A's entry.
    assert!(learned(&b).contains(&(A, 1, 5)), "{:?}", learned(&b));
    // A moves to port 3 (its entry is replaced): the next frame for A
    // goes there, not where the cached walk said.
    out(&mut b, BCAST, A, 3, now);
    assert_eq!(out(&mut b, A, B, 2, now), vec![3]);
    assert!(learned(&b).contains(&(A, 3, 1)), "{:?}", learned(&b));
}
