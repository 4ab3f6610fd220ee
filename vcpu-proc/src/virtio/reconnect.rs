//! Surviving a backend crash.
//!
//! While a backend runs, a [`Watcher`] thread polls its socket for hang-up
//! (it never reads: replies belong to the requester). When the socket
//! hangs up — the backend died, or a request found the stream broken and
//! shut it down — the link is marked down and a
//! [`VirtioEvent::Disconnected`] goes to vcpu-proc's owner, which asks the
//! broker for a restarted backend. The device stays on the guest's bus the
//! whole time: the guest's kicks collect in the ioeventfds, its config
//! reads are answered from the cached config space.
//!
//! When the new connected socket arrives, `VirtioMmioDevice::reconnect`
//! replays the whole session: SET_OWNER, features, protocol features, and
//! if the driver had the device live: SET_FEATURES, SET_MEM_TABLE from the
//! guest memfd, SET_INFLIGHT_FD with the region kept from the first start,
//! and per enabled queue SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE. The base
//! is the used index read from guest memory (what QEMU restores when it
//! cannot ask a dead backend for GET_VRING_BASE, "virtio_queue_restore_
//! last_avail_idx"); the backend adds the heads its inflight region still
//! marks as in flight and resubmits them. Finally the call eventfd is
//! pulsed (a completion whose interrupt the dead backend never sent) and
//! so is every kick eventfd (a kick the dead backend read but never acted
//! on: the guest would otherwise wait forever for a request the new
//! backend has no reason to look at).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vm_memory::{Bytes, GuestAddress};

use super::VirtioEvent;
use crate::memory::GuestMemoryMmap;

/// Connection state shared by a device and its watchers.
#[derive(Debug, Default)]
pub struct LinkState {
    /// Bumped on every (re)connection; a watcher only acts for its own.
    pub generation: u64,
    /// The current connection is believed to be alive.
    pub connected: bool,
}

/// The shared, lockable link state.
pub type Link = Arc<Mutex<LinkState>>;

/// Locks `link`, surviving a poisoned lock.
pub fn lock(link: &Link) -> std::sync::MutexGuard<'_, LinkState> {
    link.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a new connection up; returns its generation.
pub fn link_up(link: &Link) -> u64 {
    let mut s = lock(link);
    s.generation += 1;
    s.connected = true;
    s.generation
}

/// A thread watching one connection's socket for hang-up.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<EventFd>,
    handle: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Watches `socket` (connection `generation` of device `id`).
    pub fn start(
        id: String,
        socket: UnixStream,
        generation: u64,
        link: Link,
        events: Sender<VirtioEvent>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vu-watch-{id}"))
            .spawn(move || {
                if wait_hangup(&socket, &st) {
                    let mut s = lock(&link);
                    if s.generation == generation && s.connected {
                        s.connected = false;
                        drop(s);
                        tracing::warn!("vhost-user device {id}: backend disconnected");
                        let _ = events.send(VirtioEvent::Disconnected { id });
                    }
                }
            })?;
        Ok(Watcher {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Blocks until `socket` hangs up (true) or `stop` fires (false).
fn wait_hangup(socket: &UnixStream, stop: &EventFd) -> bool {
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::from_bits_retain(libc::POLLRDHUP)),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                if fired(&fds[1]) {
                    return false;
                }
                if fired(&fds[0]) {
                    return true;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// True when `fd` reported any event. nix reports revents holding bits it
/// has no name for (POLLRDHUP) as `None`: that counts as an event.
fn fired(fd: &PollFd<'_>) -> bool {
    fd.revents().is_none_or(|r| !r.is_empty())
}

/// The used index the driver last saw published on the ring at `used`
/// (guest physical); the avail position a restarted backend continues
/// from before adding its inflight heads.
pub fn used_index(mem: &GuestMemoryMmap, used: u64) -> Option<u16> {
    let addr = used.checked_add(2)?;
    mem.read_obj::<u16>(GuestAddress(addr)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn watcher_reports_a_peer_hangup_once() {
        let (a, b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let (tx, rx) = channel();
        let w = Watcher::start("d0".into(), a, g, link.clone(), tx).unwrap();
        drop(b);
        let ev = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        assert_eq!(ev, VirtioEvent::Disconnected { id: "d0".into() });
        drop(w);
        assert!(!lock(&link).connected);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn stale_watcher_does_not_mark_a_newer_connection_down() {
        let (a, b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let (tx, rx) = channel();
        let w = Watcher::start("d0".into(), a, g, link.clone(), tx).unwrap();
        link_up(&link);
        drop(b);
        drop(w);
        assert!(lock(&link).connected);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn stopped_watcher_reports_nothing() {
        let (a, _b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let (tx, rx) = channel();
        drop(Watcher::start("d0".into(), a, g, link.clone(), tx).unwrap());
        assert!(rx.try_recv().is_err());
        assert!(lock(&link).connected);
    }
}
