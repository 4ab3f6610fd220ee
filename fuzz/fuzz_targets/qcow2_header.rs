//! Fuzzes opening a qcow2 image through block-proc's driver
//! (`block_proc::block::qcow2::Qcow2Driver::open` over a `file` node,
//! as the node graph does), then reading from it: header, extensions,
//! backing file name, L1/L2 tables and refcount structures all come
//! from the input, written to a memfd.
//!
//! When the image names backing files, they are supplied (as the broker
//! would after `NeedFiles`) as memfds holding the same bytes, so backing
//! chains (including an image that backs itself) are exercised too.
//! Invariant: no panic; reads inside the reported size return.

#![no_main]

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use block_proc::block::file::FileDriver;
use block_proc::block::qcow2::{BackingSource, Qcow2Driver, Qcow2Error};
use block_proc::block::Node;
use libfuzzer_sys::fuzz_target;
use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::VolatileSlice;

const IMAGE: &str = "/fuzz/image.qcow2";
/// Rounds of "open, supply the missing backing files, open again".
const MAX_ROUNDS: usize = 4;
const READ_LEN: u64 = 4096;

fn memfd(data: &[u8]) -> File {
    let fd = memfd_create(c"qcow2-fuzz", MFdFlags::MFD_CLOEXEC).expect("memfd_create");
    let mut file = File::from(fd);
    file.write_all(data).expect("write memfd");
    file
}

fn open(data: &[u8], files: &mut HashMap<String, File>) -> Result<Qcow2Driver, Qcow2Error> {
    let file = memfd(data);
    let child_file = file.try_clone().expect("dup memfd");
    let child = FileDriver::new(child_file, IMAGE.into(), false).expect("file node");
    let child = Arc::new(Node::new("file".into(), Box::new(child), true));
    Qcow2Driver::open(child, file, IMAGE, false, false, BackingSource::Header, files)
}

fn read_some(driver: Qcow2Driver) {
    let node = Node::new("qcow2".into(), Box::new(driver), true);
    let size = node.size();
    if size == 0 {
        return;
    }
    let mut buf = vec![0u8; READ_LEN as usize];
    for off in [0, size / 2, size.saturating_sub(READ_LEN)] {
        let len = READ_LEN.min(size - off);
        let Ok(n) = usize::try_from(len) else {
            continue;
        };
        let slices = [VolatileSlice::from(&mut buf[..n])];
        let _ = node.read(&slices, off, len);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut files = HashMap::new();
    for _ in 0..MAX_ROUNDS {
        match open(data, &mut files) {
            Ok(driver) => {
                read_some(driver);
                return;
            }
            Err(Qcow2Error::NeedFiles(names)) => {
                for name in names {
                    files.insert(name, memfd(data));
                }
            }
            Err(Qcow2Error::Open(_)) => return,
        }
    }
});
