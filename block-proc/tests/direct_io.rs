//! `cache.direct=on`: files opened with `O_DIRECT`, aligned requests going
//! straight to guest memory and unaligned ones through aligned bounce
//! buffers, for the file driver alone and for raw and qcow2 exports.
//! Files live in cargo's per-test temp directory, on the disk (a tmpfs
//! `/tmp` would refuse `O_DIRECT`).

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use block_proc::block::file::FileDriver;
use block_proc::block::iobuf::{self, AlignedBuf};
use block_proc::block::Driver;
use common::*;
use vhost_user_harness::blk::S_OK;

fn disk_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bp-direct-{}-{name}", std::process::id()))
}

#[test]
fn direct_file_driver_handles_unaligned_requests_through_bounce_buffers() {
    let path = disk_path("driver.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let d = FileDriver::new(f, "x".into(), true).unwrap();
    let mut data = vec![0x5au8; 700];
    d.write(&[iobuf::slice_of(&mut data)], 4000).unwrap();
    let mut aligned = AlignedBuf::new(8192).unwrap();
    d.read(&[iobuf::slice_of(aligned.as_mut_slice())], 0)
        .unwrap();
    let a = aligned.as_slice();
    assert!(a[..4000].iter().all(|&b| b == 0));
    assert!(a[4000..4700].iter().all(|&b| b == 0x5a));
    assert!(a[4700..].iter().all(|&b| b == 0));
    let mut back = vec![0u8; 700];
    d.read(&[iobuf::slice_of(&mut back)], 4000).unwrap();
    assert_eq!(back, vec![0x5au8; 700]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn direct_io_export_serves_aligned_and_unaligned_requests() {
    let img = disk_path("export.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let sock = tmp("direct.sock");
    let json = format!(
        r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    let bp = start(&sock, &json, &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.write(0, 8, &pattern(8192, 3)).unwrap(), S_OK);
    assert_eq!(dev.write(0, 1, &pattern(512, 4)).unwrap(), S_OK);
    assert_eq!(dev.read(0, 8, 8192).unwrap().1, pattern(8192, 3));
    assert_eq!(dev.read(0, 1, 512).unwrap().1, pattern(512, 4));
    drop(dev);
    drop(bp);
    std::fs::remove_file(img).unwrap();
}

#[test]
fn direct_io_qcow2_export_round_trips_data() {
    let img = disk_path("export.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let sock = tmp("directq.sock");
    let json = format!(
        r#"{{"driver":"qcow2","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    let mut bp = start(&sock, &json, &[]);
    let mut dev = connect(&sock, 1);
    assert_eq!(dev.write(0, 8, &pattern(8192, 5)).unwrap(), S_OK);
    assert_eq!(dev.write(0, 3, &pattern(512, 6)).unwrap(), S_OK);
    assert_eq!(dev.read(0, 8, 8192).unwrap().1, pattern(8192, 5));
    assert_eq!(dev.read(0, 3, 512).unwrap().1, pattern(512, 6));
    drop(dev);
    bp.kill();
    assert!(qemu_img_check(&img));
    std::fs::remove_file(img).unwrap();
}
