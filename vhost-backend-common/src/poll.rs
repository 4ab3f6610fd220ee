//! The wait of an export's serving thread: until one of its sockets is
//! readable, or its stop eventfd fires.

use std::os::fd::{AsFd, BorrowedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;

/// Waits until one of `fds` is readable; returns which ones are, or None
/// when `stop` fires (or polling fails).
pub fn wait(fds: &[BorrowedFd<'_>], stop: &EventFd) -> Option<Vec<bool>> {
    loop {
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        polled.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(_) => {
                let ready: Vec<bool> = polled
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect();
                if ready.last().copied().unwrap_or(true) {
                    return None;
                }
                return Some(ready[..fds.len()].to_vec());
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}
