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

/// The byte every page of a [`Record::Pages`] in `sample()` holds.
fn fill(gpa: u64) -> u8 {
    match gpa {
        0x2000 => 0xab,
        0x4000 => 0x11,
        _ => 0x5a,
    }
}

/// A complete stream: every record kind once (XBZRLE too), runs of one
/// and of several pages.
fn sample() -> Vec<u8> {
    let mut w = StreamWriter::start(Vec::new(), &header()).unwrap();
    w.pass(1).unwrap();
    w.zero_pages(0x1000, 1).unwrap();
    w.pages(0x2000, &[0xab; PS]).unwrap();
    w.pages((1 << 32) + 0x1000, &[0x5a; PS]).unwrap();
    w.xbzrle(0x3000, &[1, 2, 3]).unwrap();
    w.pages_with(0x4000, 3, |v: &mut Vec<u8>, len| {
        v.extend(std::iter::repeat_n(0x11, len));
        Ok(())
    })
    .unwrap();
    w.zero_pages(0x8000, 8).unwrap();
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
        if let Record::Pages { gpa, count } = rec {
            let mut bytes = vec![0u8; count as usize * PS];
            r.read_pages(&mut bytes)?;
            assert!(bytes.iter().all(|&b| b == fill(gpa)));
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
            Record::ZeroPages {
                gpa: 0x1000,
                count: 1
            },
            Record::Pages {
                gpa: 0x2000,
                count: 1
            },
            Record::Pages {
                gpa: (1 << 32) + 0x1000,
                count: 1
            },
            Record::Xbzrle {
                gpa: 0x3000,
                len: 3
            },
            Record::Pages {
                gpa: 0x4000,
                count: 3
            },
            Record::ZeroPages {
                gpa: 0x8000,
                count: 8
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
        patch(8, &1u32.to_le_bytes()),
        Err(StreamError::Version(1))
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
        "migration stream format version 9 is not supported (this build reads 2)"
    );
}

/// The header of `sample()` (two regions).
const HEADER_LEN: usize = 24 + 32;

fn with_records(records: &[u8]) -> Vec<u8> {
    let mut b = sample()[..HEADER_LEN].to_vec();
    b.extend_from_slice(records);
    b
}

/// A record of `kind` at `gpa`: a run of `count` pages (with their
/// bytes for a page record), an XBZRLE delta of one byte.
fn page_record(kind: u8, gpa: u64, count: u32) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(&gpa.to_le_bytes());
    match kind {
        KIND_XBZRLE => b.extend_from_slice(&1u32.to_le_bytes()),
        _ => b.extend_from_slice(&count.to_le_bytes()),
    }
    let payload = match kind {
        KIND_PAGES => count as usize * PS,
        KIND_XBZRLE => 1,
        _ => 0,
    };
    b.resize(b.len() + payload, 0);
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
        for kind in [KIND_ZERO_PAGES, KIND_PAGES, KIND_XBZRLE] {
            let err = read_all(&with_records(&page_record(kind, gpa, 1))).unwrap_err();
            assert!(
                matches!(err, StreamError::PageOutside { gpa: g, pages: 1, offset } if g == gpa && offset == HEADER_LEN as u64),
                "{gpa:#x} kind {kind}: {err:?}"
            );
        }
    }
}

#[test]
fn runs_past_their_region_or_of_bad_length_are_refused() {
    // Region 0 is 16 pages from 0, region 1 two pages from 4 GiB.
    for (gpa, count) in [
        (0xf000, 2),             // one page past region 0
        (0, 17),                 // all of region 0 and one more
        ((1 << 32) + 0x1000, 2), // past region 1
        ((1 << 32) - 0x1000, 3), // across the hole into region 1
        (0x1000, MAX_RUN),       // long enough, but past region 0
    ] {
        for kind in [KIND_ZERO_PAGES, KIND_PAGES] {
            let err = read_all(&with_records(&page_record(kind, gpa, count))).unwrap_err();
            assert!(
                matches!(err, StreamError::PageOutside { gpa: g, pages, .. } if g == gpa && pages == count),
                "{gpa:#x}+{count} kind {kind}: {err:?}"
            );
        }
    }
    for count in [0, MAX_RUN + 1, u32::MAX] {
        for kind in [KIND_ZERO_PAGES, KIND_PAGES] {
            let mut r = vec![kind];
            r.extend(0u64.to_le_bytes());
            r.extend(count.to_le_bytes());
            let err = read_all(&with_records(&r)).unwrap_err();
            assert!(
                matches!(err, StreamError::RunLength { count: c, offset } if c == count && offset == HEADER_LEN as u64),
                "{count} kind {kind}: {err:?}"
            );
        }
    }
    // Whole runs inside a region are fine.
    let mut ok = page_record(KIND_ZERO_PAGES, 0, 16);
    ok.extend(page_record(KIND_PAGES, 1 << 32, 2));
    ok.push(KIND_END_OF_RAM);
    assert!(matches!(
        read_all_lenient(&with_records(&ok)),
        Err(StreamError::Truncated {
            what: "a record kind",
            ..
        })
    ));
}

#[test]
fn page_bytes_must_be_read_whole_before_the_next_record() {
    let bytes = with_records(&page_record(KIND_PAGES, 0x2000, 2));
    let mut r = StreamReader::open(&bytes[..]).unwrap();
    let mut page = vec![0u8; PS];
    assert_eq!(
        r.next(&mut page).unwrap(),
        Record::Pages {
            gpa: 0x2000,
            count: 2
        }
    );
    // The next record before the bytes: refused.
    assert!(matches!(
        r.next(&mut page),
        Err(StreamError::PagesPending(0x2000))
    ));
    // A buffer of the wrong size: refused, nothing read.
    let mut short = vec![0u8; PS];
    assert!(matches!(
        r.read_pages(&mut short),
        Err(StreamError::PagesLength {
            have: 4096,
            want: 8192
        })
    ));
    let mut two = vec![1u8; 2 * PS];
    r.read_pages(&mut two).unwrap();
    assert!(two.iter().all(|&b| b == 0));
    assert_eq!(r.offset(), bytes.len() as u64);
    // Nothing is due any more.
    assert!(matches!(
        r.read_pages(&mut two),
        Err(StreamError::PagesLength { want: 0, .. })
    ));
}

#[test]
fn a_run_cut_short_inside_its_bytes_is_truncated() {
    let mut rec = page_record(KIND_PAGES, 0x2000, 4);
    rec.truncate(rec.len() - 1);
    let err = read_all(&with_records(&rec)).unwrap_err();
    assert!(
        matches!(err, StreamError::Truncated { what: "the pages", offset } if offset == HEADER_LEN as u64 + 13),
        "{err:?}"
    );
}

#[test]
fn the_writer_refuses_runs_no_reader_accepts() {
    let mut w = StreamWriter::start(Vec::new(), &header()).unwrap();
    let at = w.written();
    assert!(matches!(
        w.zero_pages(0, 0),
        Err(StreamError::RunLength { count: 0, offset }) if offset == at
    ));
    assert!(matches!(
        w.zero_pages(0, MAX_RUN + 1),
        Err(StreamError::RunLength { .. })
    ));
    assert!(matches!(
        w.pages(0, &[0u8; 100]),
        Err(StreamError::PagesLength { have: 100, .. })
    ));
    assert!(matches!(
        w.pages(0, &[]),
        Err(StreamError::RunLength { count: 0, .. })
    ));
    assert!(matches!(
        w.pages_with(0, MAX_RUN + 1, |_, _| Ok(())),
        Err(StreamError::RunLength { .. })
    ));
    // Nothing of a refused record was written.
    assert_eq!(w.written(), at);
    assert_eq!(w.get_mut().len() as u64, at);
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
    eor_then_page.extend(page_record(KIND_PAGES, 0, 1));
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

#[test]
fn every_single_byte_corruption_reads_without_a_panic() {
    let good = sample();
    for at in 0..good.len() {
        for v in [0u8, 1, 0x80, 0xff] {
            let mut b = good.clone();
            b[at] = v;
            // Either an error or a stream (a page byte changed); never a
            // panic, and a stream that ends reads all its bytes.
            if let Ok(records) = read_all_lenient(&b) {
                assert_eq!(records.last(), Some(&Record::End));
            }
        }
    }
}

/// `read_all` without the page-content check of the sample.
fn read_all_lenient(bytes: &[u8]) -> Result<Vec<Record>> {
    let mut r = StreamReader::open(bytes)?;
    let mut page = vec![0u8; PS];
    let mut out = Vec::new();
    loop {
        let rec = r.next(&mut page)?;
        if let Record::Pages { count, .. } = rec {
            r.read_pages(&mut vec![0u8; count as usize * PS])?;
        }
        let end = rec == Record::End;
        out.push(rec);
        if end {
            return Ok(out);
        }
    }
}
