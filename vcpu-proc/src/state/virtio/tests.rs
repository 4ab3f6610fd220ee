use super::*;

fn regs(status: u32) -> TransportRegs {
    TransportRegs {
        device_type: 2,
        device_features_sel: 1,
        driver_features_sel: 1,
        driver_features: 1 << 32 | 1 << 9,
        queue_sel: 1,
        queues: vec![
            QueueConfig {
                size: 128,
                ready: true,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
            },
            QueueConfig::default(),
        ],
        status,
        interrupt_status: 2,
        config_generation: 7,
        shm_sel: 0,
    }
}

/// A device the driver was setting up (not live).
fn idle() -> DeviceState {
    DeviceState {
        id: "disk0".into(),
        slot: 3,
        regs: regs(0xb),
        vrings: None,
    }
}

/// A live device whose queue 0 took 300 buffers (44 wrapped past 65535)
/// and completed all but 2.
fn live() -> DeviceState {
    DeviceState {
        id: "disk0".into(),
        slot: 3,
        regs: regs(0xf),
        vrings: Some(VringState {
            acked_features: 1 << 32 | 1 << 9,
            protocol_features: 0x8203,
            queues: vec![
                QueueVring {
                    last_avail: 44,
                    used: 42,
                },
                QueueVring::default(),
            ],
        }),
    }
}

fn section(payload: &[u8]) -> Section<'_> {
    Section {
        id: SectionId::VirtioMmio,
        version: 2,
        payload,
    }
}

/// Offset of queue `q`'s entry in a 2-queue version 2 payload.
fn queue_at(p: &[u8], q: usize) -> usize {
    p.len() - (2 - q) * QUEUE_LEN
}

fn malformed(p: &[u8]) -> String {
    DeviceState::decode(&section(p)).unwrap_err().to_string()
}

#[test]
fn a_transport_section_round_trips_live_or_not() {
    for d in [idle(), live()] {
        let s = d.encode().unwrap();
        assert_eq!(DeviceState::decode(&section(&s.payload)).unwrap(), d);
    }
}

#[test]
fn the_section_is_written_at_version_2() {
    assert_eq!(SectionId::VirtioMmio.version(), 2);
}

/// The version 1 payload of `d`'s registers, as the version 1 writer
/// laid it out.
fn v1_payload(d: &DeviceState) -> Vec<u8> {
    let r = &d.regs;
    let mut w = Writer::new();
    w.blob(d.id.as_bytes()).unwrap();
    w.u32(d.slot)
        .u32(r.device_type)
        .u32(r.device_features_sel)
        .u32(r.driver_features_sel)
        .u64(r.driver_features)
        .u32(r.queue_sel)
        .u32(r.status)
        .u32(r.interrupt_status)
        .u32(r.config_generation)
        .u32(r.shm_sel)
        .u32(r.queues.len() as u32);
    for q in &r.queues {
        w.u32(u32::from(q.size))
            .u32(u32::from(q.ready))
            .u64(q.desc)
            .u64(q.avail)
            .u64(q.used);
    }
    w.finish()
}

#[test]
fn a_version_1_section_of_a_device_not_live_is_still_read() {
    let p = v1_payload(&idle());
    let s = Section {
        version: 1,
        ..section(&p)
    };
    assert_eq!(DeviceState::decode(&s).unwrap(), idle());
}

#[test]
fn a_version_1_section_of_a_live_device_is_refused_by_its_version() {
    let p = v1_payload(&live());
    let s = Section {
        version: 1,
        ..section(&p)
    };
    let err = DeviceState::decode(&s).unwrap_err().to_string();
    assert!(err.contains("version 1") && err.contains("live"), "{err}");
}

#[test]
fn a_queue_count_the_payload_cannot_hold_is_malformed() {
    let mut p = live().encode().unwrap().payload;
    // The queue count sits right before the two queues.
    let at = queue_at(&p, 0) - 4;
    p[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(malformed(&p).contains("queues announced"));
}

#[test]
fn a_queue_ready_value_other_than_0_or_1_is_malformed() {
    let mut p = idle().encode().unwrap().payload;
    let at = queue_at(&p, 0) + 4;
    p[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    assert!(malformed(&p).contains("ready is 5"));
}

/// Offset of the activated flag (before the two feature words and the
/// queue count).
fn activated_at(p: &[u8]) -> usize {
    queue_at(p, 0) - 4 - 8 - 8 - 4
}

#[test]
fn impossible_vring_states_are_malformed() {
    let enc = |d: &DeviceState| d.encode().unwrap().payload;
    // Activated flag neither 0 nor 1.
    let mut p = enc(&live());
    let at = activated_at(&p);
    p[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
    assert!(malformed(&p).contains("activated is 2"));
    // Activated without DRIVER_OK.
    let mut d = live();
    d.regs.status = 0xb;
    assert!(malformed(&enc(&d)).contains("without DRIVER_OK"));
    // Not activated, yet features or ring indices.
    let mut p = enc(&idle());
    let at = activated_at(&p) + 4;
    p[at..at + 8].copy_from_slice(&1u64.to_le_bytes());
    assert!(malformed(&p).contains("not activated"));
    let mut p = enc(&idle());
    let at = queue_at(&p, 0) + QUEUE_LEN_V1;
    p[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
    assert!(malformed(&p).contains("not live"));
    // A queue that is not ready with indices, on a live device.
    let mut p = enc(&live());
    let at = queue_at(&p, 1) + QUEUE_LEN_V1 + 4;
    p[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    assert!(malformed(&p).contains("not live"));
    // An index above 16 bits.
    let mut p = enc(&live());
    let at = queue_at(&p, 0) + QUEUE_LEN_V1;
    p[at..at + 4].copy_from_slice(&0x1_0000u32.to_le_bytes());
    assert!(malformed(&p).contains("index 65536"));
    // More buffers outstanding than the ring holds (used ahead of avail
    // counts as 65535 outstanding).
    for (last_avail, used) in [(42 + 129, 42), (41, 42)] {
        let mut d = live();
        if let Some(v) = d.vrings.as_mut() {
            v.queues[0] = QueueVring { last_avail, used };
        }
        assert!(
            malformed(&enc(&d)).contains("more than the ring's 128"),
            "{last_avail} {used}"
        );
    }
    // A full ring is possible.
    let mut d = live();
    if let Some(v) = d.vrings.as_mut() {
        v.queues[0] = QueueVring {
            last_avail: 2,
            used: 2u16.wrapping_sub(128),
        };
    }
    assert_eq!(DeviceState::decode(&section(&enc(&d))).unwrap(), d);
    // A live queue whose size is not a power of two.
    let mut d = live();
    d.regs.queues[0].size = 100;
    assert!(malformed(&enc(&d)).contains("size 100"));
}

#[test]
fn every_truncated_transport_section_is_an_error() {
    for d in [idle(), live()] {
        let p = d.encode().unwrap().payload;
        for n in 0..p.len() {
            assert!(
                DeviceState::decode(&section(&p[..n])).is_err(),
                "length {n}"
            );
        }
    }
}
