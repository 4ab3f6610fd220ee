//! Persistent dirty bitmaps in qcow2 images, checked against QEMU's own
//! tools: a bitmap bulkhead stores is listed by `qemu-img info` with its
//! name, granularity and flags, the image stays `qemu-img check` clean,
//! and a bitmap `qemu-img bitmap` / `qemu-io` wrote is loaded with its
//! dirty granules.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::Command;

use block_proc::block::Graph;
use common::*;
use ipc_proto::bitmaps::{BitmapInfo, BitmapReply, BitmapRequest, BitmapSource, ImageBitmap};
use ipc_proto::block::BlockdevOptions;
use vm_memory::VolatileSlice;

fn open(g: &mut Graph, img: &std::path::Path) {
    open_json(g, img, &qcow2_json(img));
}

/// Adds the node of blockdev options `json` over the file `img`.
fn open_json(g: &mut Graph, img: &std::path::Path, json: &str) {
    let o: BlockdevOptions = serde_json::from_str(json).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let files: HashMap<String, File> = [(img.display().to_string(), f)].into();
    g.add(&o, files).unwrap();
}

fn memfd(bytes: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"bm", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(&fd, bytes as i64).unwrap();
    fd
}

fn req(g: &Graph, r: BitmapRequest, fds: Vec<OwnedFd>) -> Result<BitmapReply, String> {
    block_proc::bitmaps::requests::handle(g, r, fds).map_err(|e| e.desc)
}

/// The bitmaps stored in node `disk0`'s image (`ImageBitmaps`).
fn image_bitmaps(g: &Graph) -> Vec<ImageBitmap> {
    let BitmapReply::Found(found) = req(
        g,
        BitmapRequest::ImageBitmaps {
            node: "disk0".into(),
        },
        vec![],
    )
    .unwrap() else {
        panic!()
    };
    found
}

/// `qemu-io ARGS IMG` (its output discarded), which must succeed.
fn qemu_io(img: &std::path::Path, args: &[&str]) {
    let st = Command::new("qemu-io")
        .args(args)
        .arg(img)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// `qemu-img bitmap --add OPTS IMG NAME`, which must succeed.
fn qemu_img_bitmap_add(img: &std::path::Path, name: &str, opts: &[&str]) {
    let st = Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .args(opts)
        .arg(img)
        .arg(name)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `Check` then `Attach` as the broker does.
fn add(g: &Graph, name: &str, granularity: Option<u32>, persistent: bool, source: BitmapSource) {
    let BitmapReply::Sized {
        node,
        granularity,
        bytes,
    } = req(
        g,
        BitmapRequest::Check {
            node: "disk0".into(),
            name: name.into(),
            granularity,
            persistent,
        },
        vec![],
    )
    .unwrap()
    else {
        panic!("Check answers Sized")
    };
    req(
        g,
        BitmapRequest::Attach {
            node,
            name: name.into(),
            granularity,
            persistent,
            recording: true,
            inconsistent: false,
            source,
        },
        vec![memfd(bytes)],
    )
    .unwrap();
}

fn query(g: &Graph) -> Vec<BitmapInfo> {
    match req(g, BitmapRequest::Query, vec![]).unwrap() {
        BitmapReply::List(l) => l,
        other => panic!("{other:?}"),
    }
}

fn write(g: &Graph, offset: u64, len: usize) {
    let n = g.get("disk0").unwrap();
    let mut data = vec![0xa5u8; len];
    // SAFETY: `data` outlives the slice and nothing else accesses it.
    let s = unsafe { VolatileSlice::new(data.as_mut_ptr(), len) };
    n.write(&[s], offset, len as u64).unwrap();
}

fn info_bitmaps(img: &std::path::Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format-specific"]["data"]["bitmaps"].clone()
}

#[test]
fn stored_bitmaps_are_listed_by_qemu_img_and_the_image_stays_clean() {
    let img = qcow2_image("bm-store.qcow2", "64M");
    let mut g = Graph::new();
    open(&mut g, &img);
    add(&g, "incr0", None, true, BitmapSource::Empty);
    add(&g, "fine", Some(4096), true, BitmapSource::Empty);
    add(&g, "temp", None, false, BitmapSource::Empty);
    write(&g, 0, 4096);
    write(&g, 10 << 20, 200 << 10);
    let q = query(&g);
    let count = |n: &str| q.iter().find(|b| b.name == n).unwrap().count;
    assert_eq!(count("incr0"), 5 * 65536);
    assert_eq!(count("fine"), 4096 + (200 << 10));
    req(
        &g,
        BitmapRequest::SetRecording {
            node: "disk0".into(),
            name: "fine".into(),
            recording: false,
        },
        vec![],
    )
    .unwrap();
    g.del("disk0").unwrap();
    drop(g);

    let b = info_bitmaps(&img);
    let list = b.as_array().expect("qemu-img info lists bitmaps");
    assert_eq!(list.len(), 2, "{b}");
    let fine = list.iter().find(|x| x["name"] == "fine").unwrap();
    assert_eq!(fine["granularity"], 4096);
    assert_eq!(fine["flags"], serde_json::json!([]));
    let incr = list.iter().find(|x| x["name"] == "incr0").unwrap();
    assert_eq!(incr["granularity"], 65536);
    assert_eq!(incr["flags"], serde_json::json!(["auto"]));
    assert!(qemu_img_check(&img), "qemu-img check after storing");

    // Reopened: both come back with their counts, and a second store
    // (after more writes) frees the first one's clusters.
    let mut g = Graph::new();
    open(&mut g, &img);
    let found = image_bitmaps(&g);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|f| !f.in_use));
    for f in &found {
        add(&g, &f.name, Some(f.granularity), true, BitmapSource::Image);
    }
    let q = query(&g);
    let count = |n: &str| q.iter().find(|b| b.name == n).unwrap().count;
    assert_eq!(count("incr0"), 5 * 65536);
    assert_eq!(count("fine"), 4096 + (200 << 10));
    write(&g, 30 << 20, 1);
    g.del("disk0").unwrap();
    assert!(
        qemu_img_check(&img),
        "qemu-img check after the second store"
    );
    assert_eq!(info_bitmaps(&img).as_array().unwrap().len(), 2);
}

#[test]
fn a_bitmap_qemu_wrote_is_loaded_with_its_dirty_granules() {
    let img = qcow2_image("bm-load.qcow2", "16M");
    qemu_img_bitmap_add(&img, "from-qemu", &["-g", "65536"]);
    qemu_io(&img, &["-c", "write 1M 64k", "-c", "write 5M 1"]);
    let mut g = Graph::new();
    open(&mut g, &img);
    let found = image_bitmaps(&g);
    assert_eq!(found.len(), 1);
    assert!(found[0].auto && !found[0].in_use);
    add(&g, "from-qemu", Some(65536), true, BitmapSource::Image);
    assert_eq!(query(&g)[0].count, 2 * 65536);
    // While open for writing the image says "in use", as QEMU's does.
    let b = info_bitmaps(&img);
    assert!(
        b[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "in-use"),
        "{b}"
    );
    g.del("disk0").unwrap();
    let b = info_bitmaps(&img);
    assert_eq!(b[0]["flags"], serde_json::json!(["auto"]));
    assert!(qemu_img_check(&img));
}

#[test]
fn removing_the_last_persistent_bitmap_removes_the_extension() {
    let img = qcow2_image("bm-remove.qcow2", "16M");
    Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&img)
        .arg("gone")
        .status()
        .unwrap();
    let mut g = Graph::new();
    open(&mut g, &img);
    add(&g, "gone", Some(65536), true, BitmapSource::Image);
    req(
        &g,
        BitmapRequest::Remove {
            node: "disk0".into(),
            name: "gone".into(),
        },
        vec![],
    )
    .unwrap();
    g.del("disk0").unwrap();
    assert!(info_bitmaps(&img).is_null());
    assert!(qemu_img_check(&img));
}

/// A bitmap on node `node` (not persistent, recording).
fn add_on(g: &Graph, node: &str, name: &str, granularity: u32) {
    let BitmapReply::Sized { node, bytes, .. } = req(
        g,
        BitmapRequest::Check {
            node: node.into(),
            name: name.into(),
            granularity: Some(granularity),
            persistent: false,
        },
        vec![],
    )
    .unwrap() else {
        panic!()
    };
    req(
        g,
        BitmapRequest::Attach {
            node,
            name: name.into(),
            granularity,
            persistent: false,
            recording: true,
            inconsistent: false,
            source: BitmapSource::Empty,
        },
        vec![memfd(bytes)],
    )
    .unwrap();
}

#[test]
fn bitmaps_on_protocol_nodes_see_writes_made_through_their_parents() {
    // raw with an offset over a file: the file's bitmap sees the shifted range.
    let img = raw_image("bm-lower.raw", 4 << 20);
    let mut g = Graph::new();
    let json = format!(
        r#"{{"driver":"raw","node-name":"disk0","offset":1048576,"file":{{"driver":"file","node-name":"f0","filename":"{}"}}}}"#,
        img.display()
    );
    open_json(&mut g, &img, &json);
    add_on(&g, "f0", "under-raw", 65536);
    write(&g, 4096, 512);
    let q = query(&g);
    let b = q.iter().find(|b| b.name == "under-raw").unwrap();
    assert_eq!(b.count, 65536);

    // qcow2 over a file: where a guest write lands is imago's, so the
    // file's bitmap is marked whole rather than missing the write.
    let img = qcow2_image("bm-lower.qcow2", "4M");
    let mut g = Graph::new();
    let json = format!(
        r#"{{"driver":"qcow2","node-name":"disk0","file":{{"driver":"file","node-name":"f0","filename":"{}"}}}}"#,
        img.display()
    );
    open_json(&mut g, &img, &json);
    add_on(&g, "f0", "under-qcow2", 65536);
    assert_eq!(query(&g)[0].count, 0);
    let file_size = std::fs::metadata(&img).unwrap().len();
    write(&g, 0, 512);
    assert_eq!(query(&g)[0].count, file_size.div_ceil(65536) * 65536);
}

#[test]
fn bitmaps_are_stored_and_loaded_through_an_o_direct_file() {
    use std::os::unix::fs::OpenOptionsExt;
    // On the disk: a tmpfs /tmp refuses O_DIRECT.
    let img = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bm-direct-{}.qcow2", std::process::id()));
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("8M")
        .status()
        .unwrap();
    assert!(st.success());
    let json = format!(
        r#"{{"driver":"qcow2","node-name":"disk0","file":{{"driver":"file","filename":"{}","cache":{{"direct":true}}}}}}"#,
        img.display()
    );
    let open_direct = |g: &mut Graph| {
        let o: BlockdevOptions = serde_json::from_str(&json).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&img)
            .unwrap();
        g.add(&o, [(img.display().to_string(), f)].into()).unwrap();
    };
    let mut g = Graph::new();
    open_direct(&mut g);
    add(&g, "d", Some(4096), true, BitmapSource::Empty);
    write(&g, 3 << 20, 8192);
    g.del("disk0").unwrap();
    assert!(qemu_img_check(&img));
    assert_eq!(info_bitmaps(&img)[0]["name"], "d");

    let mut g = Graph::new();
    open_direct(&mut g);
    add(&g, "d", Some(4096), true, BitmapSource::Image);
    assert_eq!(query(&g)[0].count, 8192);
    g.del("disk0").unwrap();
    assert!(qemu_img_check(&img));
    let _ = std::fs::remove_file(&img);
}

#[test]
fn storing_into_a_full_small_cluster_image_adds_refcount_blocks_cleanly() {
    // 512-byte clusters: one refcount block covers 128 KiB; the image
    // qemu-io filled has little room left under its blocks, and 200
    // bitmaps (data, table: 400 clusters) need a new refcount block.
    let img = tmp("bm-small-clusters.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=512"])
        .arg(&img)
        .arg("2M")
        .status()
        .unwrap();
    assert!(st.success());
    qemu_io(&img, &["-c", "write -P 0x5a 0 2M"]);
    let before = std::fs::metadata(&img).unwrap().len();
    let mut g = Graph::new();
    open(&mut g, &img);
    for i in 0..200 {
        add(&g, &format!("b{i}"), Some(512), true, BitmapSource::Empty);
    }
    write(&g, 0, 2 << 20);
    g.del("disk0").unwrap();
    assert!(std::fs::metadata(&img).unwrap().len() > before);
    assert!(qemu_img_check(&img), "qemu-img check after storing");
    let b = info_bitmaps(&img);
    assert_eq!(b.as_array().unwrap().len(), 200);

    let mut g = Graph::new();
    open(&mut g, &img);
    for i in 0..200 {
        add(&g, &format!("b{i}"), Some(512), true, BitmapSource::Image);
    }
    assert!(query(&g).iter().all(|b| b.count == 2 << 20));
    g.del("disk0").unwrap();
    assert!(qemu_img_check(&img), "qemu-img check after storing again");
}

#[test]
fn corrupted_bitmap_metadata_is_refused_or_tolerated_never_a_panic() {
    use block_proc::bitmaps::bitmap::{words_for, DirtyBitmap};
    use block_proc::bitmaps::qcow2_ext::ImageDir;
    use block_proc::bitmaps::shm::SharedWords;
    use std::io::Write;

    // A valid image with two stored bitmaps (one with data), as bytes.
    let img = qcow2_image("bm-mutate.qcow2", "4M");
    for (name, g) in [("a", "65536"), ("b", "512")] {
        qemu_img_bitmap_add(&img, name, &["-g", g]);
    }
    qemu_io(&img, &["-c", "write 0 1M"]);
    let original = std::fs::read(&img).unwrap();
    let dir = ImageDir::read(File::open(&img).unwrap(), false).unwrap();
    assert_eq!(dir.entries.len(), 2);
    // Where the mutations go: the header cluster, the directory and the
    // tables (what the extension code parses).
    let mut spots: Vec<u64> = vec![0];
    spots.extend(dir.entries.iter().map(|e| e.table_offset));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let mut data = original.clone();
        for _ in 0..1 + rnd() % 4 {
            let base = spots[(rnd() % spots.len() as u64) as usize] as usize;
            let at = if base == 0 {
                (rnd() % 1024) as usize
            } else {
                base + (rnd() % 64) as usize
            };
            if at < data.len() {
                data[at] = rnd() as u8;
            }
        }
        let fd =
            nix::sys::memfd::memfd_create(c"mutant", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let mut f = File::from(fd);
        f.write_all(&data).unwrap();
        let Ok(mut d) = ImageDir::read(f.try_clone().unwrap(), true) else {
            continue;
        };
        let _ = d.mark_in_use();
        let mut bitmaps = Vec::new();
        for e in d.entries.clone() {
            let g = 1u32 << e.granularity_bits;
            let words = words_for(4 << 20, g);
            let mem = memfd(words * 8);
            let b = DirtyBitmap::new(
                e.name.clone(),
                g,
                4 << 20,
                true,
                true,
                SharedWords::map(&mem, words as usize).unwrap(),
            );
            let _ = d.load(&e.name, &b);
            bitmaps.push(std::sync::Arc::new(b));
        }
        let _ = d.store(&bitmaps, &[]);
    }
}

#[test]
fn a_failed_blockdev_add_leaves_the_image_bitmaps_as_they_were() {
    let img = qcow2_image("bm-failed-add.qcow2", "4M");
    qemu_img_bitmap_add(&img, "b", &[]);
    // The qcow2 child opens (and marks its bitmaps in use), then the raw
    // parent's window is refused and the whole tree is rolled back.
    let o: BlockdevOptions = serde_json::from_str(&format!(
        r#"{{"driver":"raw","node-name":"top","offset":1048576,"size":8388608,"file":{{"driver":"qcow2","node-name":"disk0","file":{{"driver":"file","filename":"{}"}}}}}}"#,
        img.display()
    ))
    .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut g = Graph::new();
    assert!(g.add(&o, [(img.display().to_string(), f)].into()).is_err());
    drop(g);
    let b = info_bitmaps(&img);
    assert_eq!(b[0]["flags"], serde_json::json!(["auto"]), "{b}");
    assert!(qemu_img_check(&img));
}

#[test]
fn a_stored_bitmap_never_attached_stays_in_the_image_marked_in_use() {
    // As when the broker could not attach it: the guest's writes went
    // untracked, so it must stay, stale (QEMU: inconsistent), not vanish.
    let img = qcow2_image("bm-unattached.qcow2", "4M");
    qemu_img_bitmap_add(&img, "b", &[]);
    let mut g = Graph::new();
    open(&mut g, &img);
    add(&g, "mine", None, true, BitmapSource::Empty);
    write(&g, 0, 4096);
    g.del("disk0").unwrap();
    let b = info_bitmaps(&img);
    let list = b.as_array().unwrap();
    assert_eq!(list.len(), 2, "{b}");
    let old = list.iter().find(|x| x["name"] == "b").unwrap();
    assert_eq!(old["flags"], serde_json::json!(["in-use", "auto"]), "{b}");
    assert!(qemu_img_check(&img));
}
