//! Fuzzes the live-migration stream reader
//! (`ipc_proto::migstream::StreamReader`), which reads what a migration
//! source sends into the target's guest RAM.
//!
//! Invariants: no panic; a stream that reads to its end record is
//! canonical: the records written again give the same bytes.

#![no_main]

use ipc_proto::migstream::{Record, StreamReader, StreamWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = StreamReader::open(data) else {
        return;
    };
    let header = r.header().clone();
    let mut w = StreamWriter::start(Vec::new(), &header).expect("a read header writes");
    let mut page = vec![0u8; header.layout.page_size as usize];
    loop {
        let Ok(rec) = r.next(&mut page) else {
            return;
        };
        match &rec {
            Record::ZeroPages { gpa, count } => w.zero_pages(*gpa, *count),
            Record::Pages { gpa, count } => {
                // At most MAX_RUN pages, checked by the reader.
                let mut bytes = vec![0u8; *count as usize * page.len()];
                if r.read_pages(&mut bytes).is_err() {
                    return;
                }
                w.pages(*gpa, &bytes)
            }
            Record::Xbzrle { gpa, len } => w.xbzrle(*gpa, &page[..*len]),
            Record::Pass { count } => w.pass(*count),
            Record::EndOfRam => w.end_of_ram(),
            Record::DeviceState(s) => w.device_state(s),
            Record::End => w.end(),
        }
        .expect("writing to a Vec");
        if rec == Record::End {
            break;
        }
    }
    let consumed = r.offset() as usize;
    assert_eq!(
        w.get_mut().as_slice(),
        &data[..consumed],
        "a stream read to its end re-encodes differently"
    );
});
