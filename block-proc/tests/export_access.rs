//! Who may reach a `--standalone` export: its socket is made mode 0600,
//! and a peer running as another user is hung up on even when the
//! socket's mode lets it connect (`SO_PEERCRED`). (Under the broker an
//! export has no socket at all: see `ipc.rs`.) Needs root, to act as
//! another user.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

/// Connects to `sock` from a forked child running as `uid` (when given),
/// sends GET_FEATURES and reports whether a reply came.
fn reply_as(sock: &std::path::Path, uid: Option<u32>) -> bool {
    // Everything the child needs is prepared here: after fork() in a
    // threaded process only async-signal-safe calls are allowed.
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = sock.as_os_str().as_encoded_bytes();
    assert!(path.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    // VHOST_USER_GET_FEATURES (1), flags: version 1, no payload.
    let hdr: [u8; 12] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    // SAFETY: the child only makes raw system calls on memory prepared
    // above, then _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        // SAFETY: async-signal-safe system calls on `addr`, `hdr` and a
        // stack buffer, all valid for the lengths given.
        nix::unistd::ForkResult::Child => unsafe {
            if let Some(u) = uid {
                let u = libc::c_long::from(u as i32);
                if libc::syscall(libc::SYS_setresgid, u, u, u) != 0
                    || libc::syscall(libc::SYS_setresuid, u, u, u) != 0
                {
                    libc::_exit(10);
                }
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                libc::_exit(11);
            }
            // A refused peer may find the connection closed already.
            if libc::write(fd, hdr.as_ptr().cast(), hdr.len()) != hdr.len() as isize {
                libc::_exit(1);
            }
            let mut buf = [0u8; 20];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::_exit(if n == buf.len() as isize { 0 } else { 1 })
        },
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(_, 0) => true,
                nix::sys::wait::WaitStatus::Exited(_, 1) => false,
                other => panic!("client child: {other:?}"),
            }
        }
    }
}

#[test]
fn standalone_socket_is_private_and_a_peer_of_another_uid_is_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test acts as another user: run it as root"
    );
    let img = raw_image("access.raw", 1 << 20);
    let sock = tmp("access.sock");
    let _bp = start(&sock, &raw_json(&img), &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // Even with the mode loosened, nobody (65534) gets an answer ...
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(!reply_as(&sock, Some(65534)), "uid 65534 was served");
    // ... while our own user does, on the same socket.
    assert!(reply_as(&sock, None), "our own user was not served");
}
