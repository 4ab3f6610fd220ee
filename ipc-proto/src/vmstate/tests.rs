use super::*;

fn sample() -> Vec<OwnedSection> {
    vec![
        OwnedSection {
            id: SectionId::Vcpu,
            payload: vec![1, 2, 3, 4, 5],
        },
        OwnedSection {
            id: SectionId::Clock,
            payload: Vec::new(),
        },
        OwnedSection {
            id: SectionId::Irqchip,
            payload: vec![0xaa; 600],
        },
    ]
}

/// Recomputes the checksum after a test edited the contents.
fn reseal(file: &mut [u8]) {
    let n = file.len() - TRAILER_LEN;
    let crc = crc32c::crc32c(&file[..n]);
    file[n..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn sections_round_trip_in_order() {
    let file = encode(&sample()).unwrap();
    let back = decode(&file).unwrap();
    let ids: Vec<SectionId> = back.iter().map(|s| s.id).collect();
    assert_eq!(ids, [SectionId::Vcpu, SectionId::Clock, SectionId::Irqchip]);
    assert_eq!(back[0].payload, [1, 2, 3, 4, 5]);
    assert!(back[1].payload.is_empty());
    assert_eq!(back[2].payload.len(), 600);
    assert!(back.iter().all(|s| s.version == 1));
}

#[test]
fn empty_state_round_trips() {
    let file = encode(&[]).unwrap();
    assert_eq!(file.len(), HEADER_LEN + TRAILER_LEN);
    assert_eq!(decode(&file).unwrap(), []);
}

#[test]
fn wrong_magic_is_refused() {
    let mut file = encode(&sample()).unwrap();
    file[0] = b'X';
    assert_eq!(decode(&file), Err(VmStateError::BadMagic));
}

#[test]
fn another_format_version_is_refused_by_version() {
    let mut file = encode(&sample()).unwrap();
    file[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(
        decode(&file),
        Err(VmStateError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    );
}

#[test]
fn unknown_flags_are_refused() {
    let mut file = encode(&sample()).unwrap();
    file[12..16].copy_from_slice(&4u32.to_le_bytes());
    reseal(&mut file);
    assert_eq!(decode(&file), Err(VmStateError::UnknownFlags(4)));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let file = encode(&sample()).unwrap();
    for n in 0..file.len() {
        let err = decode(&file[..n]).unwrap_err();
        assert!(
            matches!(
                err,
                VmStateError::Truncated { .. } | VmStateError::Checksum { .. }
            ),
            "length {n}: {err:?}"
        );
    }
    assert!(matches!(
        decode(&file[..file.len() - 10]),
        Err(VmStateError::Truncated {
            what: "section payload",
            ..
        })
    ));
}

#[test]
fn a_flipped_payload_bit_fails_the_checksum() {
    let mut file = encode(&sample()).unwrap();
    file[HEADER_LEN + SECTION_HEADER_LEN + 2] ^= 0x10;
    assert!(matches!(decode(&file), Err(VmStateError::Checksum { .. })));
}

#[test]
fn an_unknown_section_is_refused() {
    let mut file = encode(&sample()).unwrap();
    file[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&0x77u32.to_le_bytes());
    reseal(&mut file);
    assert_eq!(decode(&file), Err(VmStateError::UnknownSection(0x77)));
}

#[test]
fn a_newer_section_version_is_refused() {
    let mut file = encode(&sample()).unwrap();
    file[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&9u32.to_le_bytes());
    reseal(&mut file);
    assert_eq!(
        decode(&file),
        Err(VmStateError::SectionVersion {
            section: SectionId::Vcpu,
            found: 9,
            supported: 1
        })
    );
}

#[test]
fn a_section_longer_than_the_file_is_refused_without_allocating() {
    let mut file = encode(&sample()).unwrap();
    file[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut file);
    assert!(matches!(
        decode(&file),
        Err(VmStateError::Truncated {
            what: "section payload",
            needed: u64::MAX,
            ..
        })
    ));
}

#[test]
fn a_huge_section_count_is_refused_as_truncated() {
    let mut file = encode(&sample()).unwrap();
    file[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut file);
    assert!(matches!(
        decode(&file),
        Err(VmStateError::Truncated {
            what: "section header",
            ..
        })
    ));
}

#[test]
fn bytes_between_the_last_section_and_the_checksum_are_refused() {
    let mut file = encode(&sample()).unwrap();
    let n = file.len() - TRAILER_LEN;
    file.splice(n..n, [0u8; 3]);
    reseal(&mut file);
    assert_eq!(decode(&file), Err(VmStateError::TrailingBytes(3)));
}

#[test]
fn cursor_blob_longer_than_the_payload_is_truncated() {
    let mut w = Writer::new();
    w.u32(1000).u64(7);
    let bytes = w.finish();
    let mut r = Reader::new(&bytes);
    assert!(matches!(
        r.blob("blob"),
        Err(VmStateError::Truncated {
            needed: 1000,
            available: 8,
            ..
        })
    ));
}

#[test]
fn cursor_values_round_trip() {
    let mut w = Writer::new();
    w.u32(0xdead_beef).u64(u64::MAX - 1);
    w.blob(b"xyz").unwrap();
    let bytes = w.finish();
    let mut r = Reader::new(&bytes);
    assert_eq!(r.u32("a").unwrap(), 0xdead_beef);
    assert_eq!(r.u64("b").unwrap(), u64::MAX - 1);
    assert_eq!(r.blob("c").unwrap(), b"xyz");
    assert_eq!(r.remaining(), 0);
}
