//! The NICs announce themselves on the target of a migration, as QEMU's
//! `qemu_announce_self`: a host process reading the target's TAP sees the
//! RARP frames from the NIC's MAC, as many as `announce-rounds`, with the
//! gaps growing by `announce-step`; the source's TAP sees none.
//! `announce-self` sends more rounds, only to the NICs it names. Two
//! brokers as processes; needs /dev/kvm and root (TAPs).

mod common;
mod disk_common;
mod net_common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use common::migration::{start_vm, wait_migration, Guest};
use common::{Bulkhead, Qmp, TempDir};
use net_common::{bound_packet_socket, Tap};
use serde_json::json;

/// RARP's EtherType.
const ETH_P_RARP: u16 = 0x8035;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// QEMU's announcement frame (`announce_self_create`) for `mac`.
fn qemu_rarp(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x80, 0x35, 0, 1, 0x08, 0, 6, 4, 0, 3]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.resize(60, 0);
    f
}

/// `SIOCGSTAMP` (`linux/sockios.h`; not in the `libc` crate): the
/// kernel's arrival time of the last frame `recv` returned.
const SIOCGSTAMP: libc::c_ulong = 0x8906;

/// The RARP frames arriving on a TAP, with when the kernel received them
/// (not when this loop read them: frames that queued while the test was
/// still waiting for the migration keep their own times).
fn rarps_for(sock: &OwnedFd, d: Duration) -> Vec<(Duration, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let end = Instant::now() + d;
    while Instant::now() < end {
        // SAFETY: recv into our buffer (the socket times out every 100 ms).
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if let Ok(n) = usize::try_from(n) {
            let mut tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            };
            // SAFETY: SIOCGSTAMP writes one timeval into `tv`.
            let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSTAMP, &mut tv) };
            assert_eq!(r, 0, "SIOCGSTAMP: {}", std::io::Error::last_os_error());
            let at = Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
            got.push((at, buf[..n].to_vec()));
        }
    }
    got
}

/// The `dirty` guest, idle until stopped, with a NIC `nic0` (MAC
/// [`MAC`]) on TAP `tap` (the guest leaves it alone).
fn vm_with_nic(dir: &Path, name: &str, tap: &Tap, extra: &[&str]) -> Bulkhead {
    let netdev = format!("tap,id=n0,ifname={},script=no,downscript=no", tap.name);
    let mut args = vec![
        "-netdev",
        netdev.as_str(),
        "-device",
        "virtio-net-device,netdev=n0,id=nic0,mac=52:54:00:12:34:56",
    ];
    args.extend_from_slice(extra);
    start_vm(dir, name, Guest::IdleDirty, &args)
}

fn gaps(frames: &[(Duration, Vec<u8>)]) -> Vec<Duration> {
    frames.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[test]
fn the_target_announces_the_nics_mac_on_its_tap_after_the_migration() {
    let dir = TempDir::new();
    let src_tap = Tap::create("as");
    let dst_tap = Tap::create("ad");
    let path = dir.0.join("mig.sock");
    let incoming = format!("unix:{}", path.display());
    let src = vm_with_nic(&dir.0, "src", &src_tap, &[]);
    let dst = vm_with_nic(&dir.0, "dst", &dst_tap, &["-incoming", &incoming, "-S"]);
    let mut s = src.client();
    let mut d = dst.client();
    // The target's parameters rule its announcement (QEMU reads them
    // there): 3 rounds, gaps of 100 then 200 ms.
    let params = json!({"announce-rounds": 3, "announce-initial": 100,
                        "announce-step": 100, "announce-max": 1000});
    assert_eq!(
        d.execute("migrate-set-parameters", params),
        json!({"return": {}})
    );
    let p = d.ok("query-migrate-parameters");
    assert_eq!(
        (&p["announce-rounds"], &p["announce-step"]),
        (&json!(3), &json!(100))
    );
    let on_dst = bound_packet_socket(&dst_tap.name, ETH_P_RARP);
    let on_src = bound_packet_socket(&src_tap.name, ETH_P_RARP);
    assert_eq!(
        s.execute("migrate", json!({"uri": incoming})),
        json!({"return": {}})
    );
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    wait_migration(&mut d, &["completed", "failed"]);

    let frames = rarps_for(&on_dst, Duration::from_millis(1500));
    assert_eq!(frames.len(), 3, "{frames:?}");
    for (_, f) in &frames {
        assert_eq!(f, &qemu_rarp(MAC));
    }
    // Lower bounds only (a loaded host delays, never hastens, a round).
    let g = gaps(&frames);
    assert!(g[0] >= Duration::from_millis(80), "{g:?}");
    assert!(g[1] >= Duration::from_millis(180), "{g:?}");
    assert!(rarps_for(&on_src, Duration::from_millis(200)).is_empty());

    // announce-self: more rounds, only for the NICs named.
    let r = d.execute(
        "announce-self",
        json!({"initial": 20, "max": 50, "rounds": 2, "step": 10, "interfaces": ["nic0"],
               "id": "a"}),
    );
    assert_eq!(r, json!({"return": {}}));
    let frames = rarps_for(&on_dst, Duration::from_millis(600));
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames.iter().all(|(_, f)| f == &qemu_rarp(MAC)));
    let r = d.execute(
        "announce-self",
        json!({"initial": 20, "max": 50, "rounds": 2, "step": 10, "interfaces": ["other"]}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert!(rarps_for(&on_dst, Duration::from_millis(400)).is_empty());
    // QEMU's argument checks: all four numbers are needed.
    let r = d.execute(
        "announce-self",
        json!({"initial": 20, "max": 50, "rounds": 2}),
    );
    assert_eq!(
        Qmp::error_of(&r),
        ("GenericError".into(), "Parameter 'step' is missing".into())
    );
    let r = d.execute("migrate-set-parameters", json!({"announce-step": 0}));
    assert_eq!(
        Qmp::error_of(&r).1,
        "Parameter 'announce_step' expects a value between 0 and 10000"
    );
}
