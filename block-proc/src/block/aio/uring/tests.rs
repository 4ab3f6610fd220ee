//! The ring against a real file: round trips buffered and with O_DIRECT,
//! short reads at end of file, the restrictions, and the fallback when
//! `io_uring_setup` is refused.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use super::*;
use crate::block::aio::{AioError, Engine};
use crate::block::iobuf::AlignedBuf;
use ipc_proto::block::BlockdevAio;

/// A file on the disk (a tmpfs refuses O_DIRECT) under the target dir.
fn image(name: &str, len: u64, direct: bool) -> (File, PathBuf) {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tmp"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("uring-{}-{name}", std::process::id()));
    File::create(&path).unwrap().set_len(len).unwrap();
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    (o.open(&path).unwrap(), path)
}

fn iov(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

fn target(f: &File, op: HostOp) -> Target {
    Target {
        fd: f.as_raw_fd(),
        op,
        hold: None,
    }
}

/// Push one request and wait for it.
fn run(ring: &mut Ring<u32>, t: Target, v: Vec<libc::iovec>) -> io::Result<()> {
    // SAFETY: the buffers behind `v` outlive this call, which waits for
    // the request.
    unsafe { ring.push(t, v, 7) };
    ring.submit().unwrap();
    let mut out = Vec::new();
    ring.wait_all(&mut out);
    assert_eq!(out.len(), 1);
    let (tok, r) = out.pop().unwrap();
    assert_eq!(tok, 7);
    r
}

fn round_trip(direct: bool) {
    let (f, path) = image(&format!("rt-{direct}"), 1 << 20, direct);
    let mut ring = Ring::<u32>::new(f.as_raw_fd()).unwrap();
    let mut a = AlignedBuf::new(8192).unwrap();
    let mut b = AlignedBuf::new(4096).unwrap();
    a.as_mut_slice().fill(0x11);
    b.as_mut_slice().fill(0x22);
    // Two iovecs in one write, at 64 KiB.
    let v = vec![iov(&mut a.as_mut_slice()[..4096]), iov(b.as_mut_slice())];
    run(&mut ring, target(&f, HostOp::Writev { offset: 65536 }), v).unwrap();
    run(&mut ring, target(&f, HostOp::Datasync), Vec::new()).unwrap();
    let mut back = AlignedBuf::new(8192).unwrap();
    let v = vec![iov(back.as_mut_slice())];
    run(&mut ring, target(&f, HostOp::Readv { offset: 65536 }), v).unwrap();
    assert!(back.as_slice()[..4096].iter().all(|&x| x == 0x11));
    assert!(back.as_slice()[4096..].iter().all(|&x| x == 0x22));
    // Punch the range out: it reads back as zeroes and frees the blocks.
    let blocks = f.metadata().unwrap().blocks();
    let hole = HostOp::PunchHole {
        offset: 65536,
        len: 8192,
    };
    run(&mut ring, target(&f, hole), Vec::new()).unwrap();
    assert!(f.metadata().unwrap().blocks() < blocks);
    let v = vec![iov(back.as_mut_slice())];
    run(&mut ring, target(&f, HostOp::Readv { offset: 65536 }), v).unwrap();
    assert!(back.as_slice().iter().all(|&x| x == 0));
    drop(ring);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn ring_write_flush_read_discard_round_trip_buffered() {
    round_trip(false);
}

#[test]
fn ring_write_flush_read_discard_round_trip_o_direct() {
    round_trip(true);
}

#[test]
fn ring_runs_many_requests_at_once_and_returns_each_token() {
    let (f, path) = image("many", 4 << 20, true);
    let mut ring = Ring::<u32>::new(f.as_raw_fd()).unwrap();
    // More than the ring holds at once: the rest waits in the backlog.
    let n = RING_ENTRIES * 3;
    let mut bufs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::new(4096).unwrap()).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        b.as_mut_slice().fill(i as u8);
        let t = target(
            &f,
            HostOp::Writev {
                offset: i as u64 * 4096,
            },
        );
        // SAFETY: `bufs` outlives the wait below.
        unsafe { ring.push(t, vec![iov(b.as_mut_slice())], i as u32) };
    }
    ring.submit().unwrap();
    let mut out = Vec::new();
    ring.wait_all(&mut out);
    let bad: Vec<_> = out
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(t, _)| *t)
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let mut toks: Vec<u32> = out.iter().map(|(t, _)| *t).collect();
    toks.sort_unstable();
    assert_eq!(toks, (0..n).collect::<Vec<_>>());
    let back = std::fs::read(&path).unwrap();
    assert!(back[4096 * 200..4096 * 201].iter().all(|&x| x == 200));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn ring_read_past_end_of_file_zero_fills() {
    let (f, path) = image("eof", 4096, false);
    f.write_all_at(&[0xaa; 4096], 0).unwrap();
    let mut ring = Ring::<u32>::new(f.as_raw_fd()).unwrap();
    let mut back = vec![0xffu8; 8192];
    let v = vec![iov(&mut back)];
    run(&mut ring, target(&f, HostOp::Readv { offset: 0 }), v).unwrap();
    assert!(back[..4096].iter().all(|&x| x == 0xaa));
    assert!(back[4096..].iter().all(|&x| x == 0));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn ring_refuses_a_request_on_an_fd_it_did_not_register() {
    let (f, path) = image("reg", 4096, false);
    let (g, path2) = image("other", 4096, false);
    let mut ring = Ring::<u32>::new(f.as_raw_fd()).unwrap();
    let e = run(&mut ring, target(&g, HostOp::Datasync), Vec::new()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(path2).unwrap();
}

/// Push a raw SQE past the wrapper and return its CQE result.
fn raw_result(ring: &mut Ring<u32>, e: squeue::Entry) -> i32 {
    // SAFETY: the entries in these tests point at no memory.
    unsafe { ring.ring.submission().push(&e.user_data(99)) }.unwrap();
    ring.ring.submit_and_wait(1).unwrap();
    let c = ring.ring.completion().next().unwrap();
    assert_eq!(c.user_data(), 99);
    c.result()
}

#[test]
fn restricted_ring_refuses_other_operations_unfixed_files_and_registration() {
    let (f, path) = image("restrict", 4096, false);
    let mut ring = Ring::<u32>::new(f.as_raw_fd()).unwrap();
    let eacces = -libc::EACCES;
    // An allowed op on a raw fd (no IOSQE_FIXED_FILE).
    let raw = opcode::Fsync::new(types::Fd(f.as_raw_fd())).build();
    assert_eq!(raw_result(&mut ring, raw), eacces);
    // Operations the file driver never uses, even on the fixed file.
    let nop = opcode::Nop::new().build().flags(squeue::Flags::FIXED_FILE);
    assert_eq!(raw_result(&mut ring, nop), eacces);
    let path_c = c"/etc/passwd";
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path_c.as_ptr()).build();
    assert_eq!(raw_result(&mut ring, open), eacces);
    // No registration after the ring is enabled.
    let e = ring.ring.submitter().register_files(&[0]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    // The allowed op on the fixed file still works.
    let ok = opcode::Fsync::new(types::Fixed(0)).build();
    assert_eq!(raw_result(&mut ring, ok), 0);
    std::fs::remove_file(path).unwrap();
}

/// Run `f` on a thread whose seccomp filter answers `io_uring_setup`
/// with EPERM (as a host that forbids io_uring does).
fn without_io_uring<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    std::thread::scope(|s| {
        s.spawn(|| {
            let rules = [(libc::SYS_io_uring_setup, vec![])].into_iter().collect();
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
                std::env::consts::ARCH.try_into().unwrap(),
            )
            .unwrap();
            let prog: BpfProgram = filter.try_into().unwrap();
            seccompiler::apply_filter(&prog).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn refused_io_uring_setup_falls_back_to_threads_or_fails_an_explicit_aio_io_uring() {
    let (f, path) = image("fallback", 4096, false);
    let fd = f.as_raw_fd();
    let (probe, ring, default, explicit) = without_io_uring(|| {
        (
            probe().map_err(|e| e.raw_os_error()),
            Ring::<u32>::new(fd).err().and_then(|e| e.raw_os_error()),
            Engine::resolve(None, true).unwrap(),
            Engine::resolve(Some(BlockdevAio::IoUring), true)
                .map_err(|e| (matches!(e, AioError::IoUring(_)), e.to_string())),
        )
    });
    assert_eq!(probe, Err(Some(libc::EPERM)));
    assert_eq!(ring, Some(libc::EPERM));
    assert_eq!(default, Engine::Threads);
    assert_eq!(
        explicit,
        Err((
            true,
            "Unable to use io_uring: failed to init linux io_uring ring: Operation not permitted"
                .into()
        ))
    );
    // The same process, outside that thread, has io_uring.
    assert!(self::probe().is_ok());
    std::fs::remove_file(path).unwrap();
}
