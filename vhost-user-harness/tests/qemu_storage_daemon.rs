//! The harness is a correct vhost-user-blk frontend: it drives
//! qemu-storage-daemon (QEMU's own backend) through the same requests the
//! block-proc tests use.

use std::path::PathBuf;

use vhost_user_harness::blk::{S_OK, S_UNSUPP};
use vhost_user_harness::process::Backend;
use vhost_user_harness::{BlkDevice, BlkOptions, Request};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("harness-qsd-{}-{name}", std::process::id()))
}

/// Removes a file when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(31) + seed * 7919) % 251) as u8)
        .collect()
}

fn qsd(name: &str, size: u64, queues: u16) -> (Backend, PathBuf, PathBuf) {
    let img = tmp(&format!("{name}.raw"));
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let sock = tmp(&format!("{name}.sock"));
    let b = Backend::qsd(
        &sock,
        &[
            format!("driver=file,node-name=f,filename={}", img.display()),
            "driver=raw,node-name=d,file=f,discard=unmap".into(),
        ],
        "d",
        queues,
        true,
    )
    .unwrap();
    (b, sock, img)
}

#[test]
fn harness_round_trips_data_through_qemu_storage_daemon() {
    let (_b, sock, img) = qsd("rt", 8 << 20, 2);
    let _cleanup = Cleanup(img.clone());
    let mut dev = BlkDevice::connect(
        &sock,
        BlkOptions {
            num_queues: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(dev.capacity().unwrap(), (8 << 20) / 512);
    for q in 0..2usize {
        let data = pattern(65536, q as u64);
        assert_eq!(dev.write(q, q as u64 * 1024, &data).unwrap(), S_OK);
        let (st, back) = dev.read(1 - q, q as u64 * 1024, 65536).unwrap();
        assert_eq!(st, S_OK);
        assert_eq!(back, data);
    }
    assert_eq!(dev.flush(0).unwrap(), S_OK);
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(
        &on_disk[1024 * 512..1024 * 512 + 65536],
        &pattern(65536, 1)[..]
    );
}

#[test]
fn harness_pipelines_requests_and_gets_id_from_qemu_storage_daemon() {
    let (_b, sock, img) = qsd("pipe", 8 << 20, 1);
    let _cleanup = Cleanup(img);
    let mut dev = BlkDevice::connect(&sock, BlkOptions::default()).unwrap();
    for k in 0..32u64 {
        dev.submit(
            0,
            Request::Write {
                sector: k * 8,
                data: &pattern(4096, k),
            },
        )
        .unwrap();
    }
    dev.kick(0).unwrap();
    let mut done = 0;
    while done < 32 {
        for c in dev.wait(0).unwrap() {
            assert_eq!(c.status, Some(S_OK));
            done += 1;
        }
    }
    for k in 0..32u64 {
        assert_eq!(dev.read(0, k * 8, 4096).unwrap().1, pattern(4096, k));
    }
    let (st, _) = dev.get_id(0).unwrap();
    assert!(st == S_OK || st == S_UNSUPP);
    let c = dev
        .run(
            0,
            Request::WriteZeroes {
                sector: 0,
                num: 8,
                unmap: false,
            },
        )
        .unwrap();
    assert_eq!(c.status, Some(S_OK));
    assert!(dev.read(0, 0, 4096).unwrap().1.iter().all(|&b| b == 0));
}
