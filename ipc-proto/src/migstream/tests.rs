//! The stream codec: round trip, every truncation, bad headers and bad
//! records.

use super::*;

const PS: usize = 4096;

fn layout() -> Layout {
    Layout {
        page_size: 4096,
        regions: vec![
            Region {
                start: 0,
                len: 0x10000,
            },
            Region {
                start: 1 << 32,
                len: 0x2000,
            },
        ],
    }
}

fn header() -> Header {
    Header {
        flags: FLAG_ACK,
        layout: layout(),
    }
}

/// A complete stream: every record kind once (XBZRLE too).
fn sample() -> Vec<u8> {
    let mut w = StreamWriter::start(Vec::new(), &header()).unwrap();
    w.pass(1).unwrap();
    w.zero_page(0x1000).unwrap();
    w.page(0x2000, &[0xab; PS]).unwrap();
    w.page((1 << 32) + 0x1000, &[0x5a; PS]).unwrap();
    w.xbzrle(0x3000, &[1, 2, 3]).unwrap();
    w.pass(2).unwrap();
    w.end_of_ram().unwrap();
    w.device_state(b"state bytes").unwrap();
    w.end().unwrap();
    assert_eq!(w.written() as usize, w.get_mut().len());
    std::mem::take(w.get_mut())
}

fn read_all(bytes: &[u8]) -> Result<Vec<Record>> {
    let mut r = StreamReader::open(bytes)?;
    let mut page = vec![0u8; PS];
    let mut out = Vec::new();
    loop {
        let rec = r.next(&mut page)?;
        if let Record::Page { gpa } = rec {
            assert!(page
                .iter()
                .all(|&b| b == if gpa == 0x2000 { 0xab } else { 0x5a }));
        }
        let end = rec == Record::End;
        out.push(rec);
        if end {
            return Ok(out);
        }
    }
}

#[test]
fn a_stream_round_trips_record_by_record() {
    let bytes = sample();
    let r = StreamReader::open(&bytes[..]).unwrap();
    assert_eq!(r.header(), &header());
    assert!(r.header().wants_ack());
    assert_eq!(
        read_all(&bytes).unwrap(),
        vec![
            Record::Pass { count: 1 },
            Record::ZeroPage { gpa: 0x1000 },
            Record::Page { gpa: 0x2000 },
            Record::Page {
                gpa: (1 << 32) + 0x1000
            },
            Record::Xbzrle {
                gpa: 0x3000,
                len: 3
            },
            Record::Pass { count: 2 },
            Record::EndOfRam,
            Record::DeviceState(b"state bytes".to_vec()),
            Record::End,
        ]
    );
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample();
    for n in 0..bytes.len() {
        match read_all(&bytes[..n]) {
            Err(StreamError::Truncated { .. }) => {}
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

#[test]
fn bad_headers_are_refused_with_their_reason() {
    let good = sample();
    let patch = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        StreamReader::open(&b[..]).map(|_| ())
    };
    assert!(matches!(patch(0, b"X"), Err(StreamError::Magic)));
    assert!(matches!(
        patch(8, &2u32.to_le_bytes()),
        Err(StreamError::Version(2))
    ));
    assert!(matches!(
        patch(12, &3u32.to_le_bytes()),
        Err(StreamError::Flags(3))
    ));
    assert!(matches!(
        patch(16, &2048u32.to_le_bytes()),
        Err(StreamError::PageSize(2048))
    ));
    assert!(matches!(
        patch(20, &0u32.to_le_bytes()),
        Err(StreamError::RegionCount(0))
    ));
    assert!(matches!(
        patch(20, &u32::MAX.to_le_bytes()),
        Err(StreamError::RegionCount(u32::MAX))
    ));
    // Region 0: unaligned start, zero length, wrapping end.
    assert!(matches!(
        patch(24, &1u64.to_le_bytes()),
        Err(StreamError::BadRegion { start: 1, .. })
    ));
    assert!(matches!(
        patch(32, &0u64.to_le_bytes()),
        Err(StreamError::BadRegion { len: 0, .. })
    ));
    assert!(matches!(
        patch(40, &(u64::MAX - 0xfff).to_le_bytes()),
        Err(StreamError::BadRegion { .. })
    ));
    // Region 1 starting inside region 0.
    assert!(matches!(
        patch(40, &0x8000u64.to_le_bytes()),
        Err(StreamError::BadRegion { start: 0x8000, .. })
    ));
    assert_eq!(
        patch(8, &9u32.to_le_bytes()).unwrap_err().to_string(),
        "migration stream format version 9 is not supported (this build reads 1)"
    );
}

/// The header of `sample()` (two regions).
const HEADER_LEN: usize = 24 + 32;

fn with_records(records: &[u8]) -> Vec<u8> {
    let mut b = sample()[..HEADER_LEN].to_vec();
    b.extend_from_slice(records);
    b
}

fn page_record(kind: u8, gpa: u64) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(&gpa.to_le_bytes());
    b.extend_from_slice(&[0u8; PS]);
    b
}

#[test]
fn pages_outside_guest_ram_or_unaligned_are_refused() {
    for gpa in [
        0x10000,            // just past region 0
        0x1001,             // unaligned
        (1 << 32) + 0x2000, // just past region 1
        (1 << 32) - 0x1000, // the hole
        !0xfffu64,          // far away
        (1 << 32) + 0x1800, // unaligned in region 1
    ] {
        for kind in [KIND_ZERO_PAGE, KIND_PAGE, KIND_XBZRLE] {
            let err = read_all(&with_records(&page_record(kind, gpa))).unwrap_err();
            assert!(
                matches!(err, StreamError::PageOutside { gpa: g, offset } if g == gpa && offset == HEADER_LEN as u64),
                "{gpa:#x} kind {kind}: {err:?}"
            );
        }
    }
}

#[test]
fn unknown_records_are_refused() {
    for kind in [0u8, 8, 0xff] {
        assert!(matches!(
            read_all(&with_records(&[kind])),
            Err(StreamError::UnknownRecord { kind: k, .. }) if k == kind
        ));
    }
}

#[test]
fn records_out_of_order_are_refused() {
    let mut eor_then_page = vec![KIND_END_OF_RAM];
    eor_then_page.extend(page_record(KIND_PAGE, 0));
    let mut pass_after_ram = vec![KIND_END_OF_RAM, KIND_PASS];
    pass_after_ram.extend(3u64.to_le_bytes());
    let mut state_twice = vec![KIND_END_OF_RAM, KIND_DEVICE_STATE];
    state_twice.extend(0u64.to_le_bytes());
    state_twice.push(KIND_DEVICE_STATE);
    for (records, name) in [
        (vec![KIND_DEVICE_STATE], "device state"),
        (vec![KIND_END], "end"),
        (vec![KIND_END_OF_RAM, KIND_END_OF_RAM], "end of RAM"),
        (vec![KIND_END_OF_RAM, KIND_END], "end"),
        (eor_then_page, "page"),
        (pass_after_ram, "pass"),
        (state_twice, "device state"),
    ] {
        match read_all(&with_records(&records)) {
            Err(StreamError::OutOfOrder { record, .. }) => assert_eq!(record, name),
            other => panic!("{records:?}: {other:?}"),
        }
    }
}

#[test]
fn a_huge_device_state_is_refused_without_allocating() {
    let mut r = vec![KIND_END_OF_RAM, KIND_DEVICE_STATE];
    r.extend(u64::MAX.to_le_bytes());
    assert!(matches!(
        read_all(&with_records(&r)),
        Err(StreamError::StateTooLarge { len: u64::MAX })
    ));
    // Within the limit but longer than the stream: truncated, having
    // read only what arrived.
    let mut r = vec![KIND_END_OF_RAM, KIND_DEVICE_STATE];
    r.extend(MAX_DEVICE_STATE.to_le_bytes());
    r.extend([1, 2, 3]);
    assert!(matches!(
        read_all(&with_records(&r)),
        Err(StreamError::Truncated {
            what: "the device state",
            ..
        })
    ));
}

#[test]
fn bad_xbzrle_lengths_are_refused() {
    for len in [0u32, PS as u32 + 1, u32::MAX] {
        let mut r = vec![KIND_XBZRLE];
        r.extend(0u64.to_le_bytes());
        r.extend(len.to_le_bytes());
        r.extend([0u8; 16]);
        assert!(matches!(
            read_all(&with_records(&r)),
            Err(StreamError::DeltaLength { len: l }) if l == len
        ));
    }
}

#[test]
fn a_page_buffer_smaller_than_a_page_is_an_error() {
    let bytes = sample();
    let mut r = StreamReader::open(&bytes[..]).unwrap();
    let mut small = [0u8; 16];
    assert!(matches!(
        r.next(&mut small),
        Err(StreamError::Buffer {
            have: 16,
            want: 4096
        })
    ));
}

#[test]
fn a_writer_refuses_a_layout_no_reader_accepts() {
    let mut h = header();
    h.layout.regions.clear();
    assert!(matches!(
        StreamWriter::start(Vec::new(), &h),
        Err(StreamError::RegionCount(0))
    ));
}

#[test]
fn layout_queries() {
    let l = layout();
    assert_eq!(l.total(), 0x12000);
    assert!(l.holds_page(0xf000));
    assert!(!l.holds_page(0x10000));
    assert!(l.holds_page((1 << 32) + 0x1000));
    assert_eq!(
        l.to_string(),
        "page size 4096: 0x0+0x10000 0x100000000+0x2000"
    );
}
