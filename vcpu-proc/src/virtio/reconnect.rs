//! Surviving a backend crash or hang.
//!
//! While a backend runs, a [`Watcher`] thread polls its socket for hang-up
//! (it never reads: replies belong to the session thread, see
//! `session.rs`) and enforces the request deadline: when the session
//! thread has been waiting for one reply longer than
//! [`super::session::REQUEST_DEADLINE`], the watcher shuts the socket down,
//! which ends the blocked request with an error. When the socket hangs up
//! — the backend died, a request found the stream broken, or the deadline
//! passed — the link is marked down, the rings as they are at that moment
//! checked (see [`LinkState::ambiguous_at_loss`]) and a
//! [`VirtioEvent::Disconnected`] goes to vcpu-proc's owner, which asks the
//! broker for a new backend. The device stays on the guest's bus the whole
//! time: the guest's kicks collect in the ioeventfds, its config reads are
//! answered from the cached config space.
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
//!
//! Resuming from the used index is exact only when the completed requests
//! are exactly the avail positions before it. The new backend makes it
//! exact if it gets the inflight region of the old one (it resubmits what
//! is marked there). Without one, it is exact when nothing was outstanding
//! when the old backend went away, or one request was and every
//! completion still visible in the used ring matches the avail ring
//! position for position (a driver with one request at a time). Otherwise
//! (several outstanding, or completions out of order) some requests past
//! the used index may have completed and some before it may not: resuming
//! would complete a request twice and lose another. The device then does
//! not resume its rings; it reports DEVICE_NEEDS_RESET so that the driver
//! starts it again (QEMU resumes from the used index regardless).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vm_memory::{Bytes, GuestAddress};

use super::session::Busy;
use super::VirtioEvent;
use crate::memory::GuestMemoryMmap;

/// Connection state shared by a device and its watchers.
#[derive(Debug, Default)]
pub struct LinkState {
    /// Bumped on every (re)connection; a watcher only acts for its own.
    pub generation: u64,
    /// The current connection is believed to be alive.
    pub connected: bool,
    /// Rings of the live queues (avail, used; guest physical), for the
    /// snapshot taken when the backend goes away.
    pub rings: Vec<RingAddrs>,
    /// Whether resuming some live ring from its used index could complete
    /// a request twice, as the rings were when the last connection was
    /// lost (see [`ambiguous`]); None while connected or when the loss
    /// was not seen by a watcher.
    pub ambiguous_at_loss: Option<bool>,
}

/// Where one live queue's rings are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Queue size.
    pub size: u16,
    /// Available ring (guest physical).
    pub avail: u64,
    /// Used ring (guest physical).
    pub used: u64,
}

/// True when resuming some ring in `rings` from its used index could
/// complete a request twice (or never) for a backend that kept no
/// inflight record: more than one request outstanding, or one and a
/// completion in the used ring that does not match the avail ring at the
/// same position.
pub fn ambiguous(mem: &GuestMemoryMmap, rings: &[RingAddrs]) -> bool {
    rings.iter().any(|r| ring_ambiguous(mem, r))
}

fn ring_ambiguous(mem: &GuestMemoryMmap, r: &RingAddrs) -> bool {
    let (Some(avail), Some(used)) = (avail_index(mem, r.avail), used_index(mem, r.used)) else {
        return true;
    };
    match avail.wrapping_sub(used) {
        0 => false,
        1 => {
            let n = r.size.max(1);
            // Positions whose slots still hold their entries in both
            // rings: the last n - 1 completions (fewer on a young ring).
            let back = (n - 1).min(used);
            (1..=back).any(|k| {
                let pos = used.wrapping_sub(k) % n;
                let a = mem.read_obj::<u16>(GuestAddress(r.avail + 4 + 2 * u64::from(pos)));
                let u = mem.read_obj::<u32>(GuestAddress(r.used + 4 + 8 * u64::from(pos)));
                !matches!((a, u), (Ok(a), Ok(u)) if u32::from(a) == u)
            })
        }
        _ => true,
    }
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
    s.ambiguous_at_loss = None;
    s.generation
}

/// The generation the next [`link_up`] will give (for a watcher started
/// before the handshake: it reports nothing until the link is up).
pub fn next_generation(link: &Link) -> u64 {
    lock(link).generation + 1
}

/// What a watcher needs besides its socket.
#[derive(Debug, Clone)]
pub struct WatchParams {
    /// Device id (for events and logs).
    pub id: String,
    /// Connection generation the watcher acts for.
    pub generation: u64,
    /// The device's link state.
    pub link: Link,
    /// Where the disconnection event goes.
    pub events: Sender<VirtioEvent>,
    /// The session thread's current request, for the deadline.
    pub busy: Arc<Busy>,
    /// Guest memory, for the ring snapshot at the loss.
    pub mem: GuestMemoryMmap,
}

/// A thread watching one connection's socket for hang-up.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<EventFd>,
    handle: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Watches `socket` for the connection described by `p`.
    pub fn start(socket: UnixStream, p: WatchParams) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vu-watch-{}", p.id))
            .spawn(move || {
                if !wait_hangup(&socket, &st, &p.id, &p.busy) {
                    return;
                }
                loop {
                    let mut s = lock(&p.link);
                    if s.generation < p.generation {
                        // Hung up before the device took the connection:
                        // report once it has (or stop if it never does).
                        drop(s);
                        if stopped_within(&st, Duration::from_millis(10)) {
                            return;
                        }
                        continue;
                    }
                    if s.generation == p.generation && s.connected {
                        s.connected = false;
                        s.ambiguous_at_loss = Some(ambiguous(&p.mem, &s.rings));
                        drop(s);
                        tracing::warn!("vhost-user device {}: backend disconnected", p.id);
                        let _ = p.events.send(VirtioEvent::Disconnected { id: p.id });
                    }
                    return;
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

/// Blocks until `socket` hangs up (true) or `stop` fires (false). A
/// request of the session thread that outlives its deadline hangs the
/// socket up.
fn wait_hangup(socket: &UnixStream, stop: &EventFd, id: &str, busy: &Busy) -> bool {
    loop {
        let timeout = match busy.remaining() {
            Ok(None) => PollTimeout::NONE,
            Ok(Some(left)) => {
                // Round up: a poll that wakes a little early would spin.
                let ms = left.as_millis().saturating_add(1);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
            Err(op) => {
                tracing::warn!(
                    "vhost-user device {id}: the backend did not answer {op} within {:?}; hanging up",
                    super::session::REQUEST_DEADLINE
                );
                let _ = socket.shutdown(std::net::Shutdown::Both);
                PollTimeout::NONE
            }
        };
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::from_bits_retain(libc::POLLRDHUP)),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(busy.wake_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {
                if fired(&fds[1]) {
                    return false;
                }
                if fired(&fds[0]) {
                    return true;
                }
                if fired(&fds[2]) {
                    busy.clear_wake();
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// True when `stop` fires within `wait`.
fn stopped_within(stop: &EventFd, wait: Duration) -> bool {
    let mut fds = [PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// True when `fd` reported any event. nix reports revents holding bits it
/// has no name for (POLLRDHUP) as `None`: that counts as an event.
fn fired(fd: &PollFd<'_>) -> bool {
    fd.revents().is_none_or(|r| !r.is_empty())
}

/// The avail index the driver last published on the ring at `avail`
/// (guest physical).
pub fn avail_index(mem: &GuestMemoryMmap, avail: u64) -> Option<u16> {
    let addr = avail.checked_add(2)?;
    mem.read_obj::<u16>(GuestAddress(addr)).ok()
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
    use std::sync::mpsc::{channel, Receiver};
    use std::time::Instant;
    use vm_memory::Bytes;

    const WAIT: Duration = Duration::from_secs(30);

    fn mem() -> GuestMemoryMmap {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(1 << 20).unwrap();
        crate::memory::map_guest_memory(f, 1 << 20).unwrap()
    }

    struct Watched {
        watcher: Watcher,
        busy: Arc<Busy>,
        link: Link,
        rx: Receiver<VirtioEvent>,
    }

    fn watch(a: UnixStream, generation: u64, link: &Link, mem: GuestMemoryMmap) -> Watched {
        let (tx, rx) = channel();
        let busy = Arc::new(Busy::new().unwrap());
        let watcher = Watcher::start(
            a,
            WatchParams {
                id: "d0".into(),
                generation,
                link: link.clone(),
                events: tx,
                busy: busy.clone(),
                mem,
            },
        )
        .unwrap();
        Watched {
            watcher,
            busy,
            link: link.clone(),
            rx,
        }
    }

    #[test]
    fn watcher_reports_a_peer_hangup_once() {
        let (a, b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let w = watch(a, g, &link, mem());
        drop(b);
        let ev = w.rx.recv_timeout(WAIT).unwrap();
        assert_eq!(ev, VirtioEvent::Disconnected { id: "d0".into() });
        drop(w.watcher);
        assert!(!lock(&link).connected);
        assert!(w.rx.try_recv().is_err());
    }

    #[test]
    fn stale_watcher_does_not_mark_a_newer_connection_down() {
        let (a, b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let w = watch(a, g, &link, mem());
        link_up(&link);
        drop(b);
        drop(w.watcher);
        assert!(lock(&link).connected);
        assert!(w.rx.try_recv().is_err());
    }

    #[test]
    fn stopped_watcher_reports_nothing() {
        let (a, _b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let w = watch(a, g, &link, mem());
        drop(w.watcher);
        assert!(w.rx.try_recv().is_err());
        assert!(lock(&w.link).connected);
    }

    #[test]
    fn a_request_past_its_deadline_hangs_the_socket_up_and_is_reported() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let w = watch(a, g, &link, mem());
        let t = Instant::now();
        w.busy.begin("GET_CONFIG");
        let ev = w.rx.recv_timeout(WAIT).unwrap();
        assert_eq!(ev, VirtioEvent::Disconnected { id: "d0".into() });
        assert!(t.elapsed() >= super::super::session::REQUEST_DEADLINE);
        // The backend's end sees the hang-up.
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut b, &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_request_that_ends_in_time_keeps_the_connection() {
        let (a, _b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let g = link_up(&link);
        let w = watch(a, g, &link, mem());
        w.busy.begin("GET_CONFIG");
        w.busy.end();
        assert!(w
            .rx
            .recv_timeout(super::super::session::REQUEST_DEADLINE * 2)
            .is_err());
        assert!(lock(&link).connected);
    }

    const RING: RingAddrs = RingAddrs {
        size: 4,
        avail: 0x1000,
        used: 0x2000,
    };

    /// Sets ring `RING` up: `avail` heads published, `used` heads
    /// completed (in that order).
    fn ring(m: &GuestMemoryMmap, avail: &[u16], used: &[u16]) {
        for (i, h) in avail.iter().enumerate() {
            let slot = (i % 4) as u64;
            m.write_obj(*h, GuestAddress(RING.avail + 4 + 2 * slot))
                .unwrap();
        }
        m.write_obj(avail.len() as u16, GuestAddress(RING.avail + 2))
            .unwrap();
        for (i, h) in used.iter().enumerate() {
            let slot = (i % 4) as u64;
            m.write_obj(u32::from(*h), GuestAddress(RING.used + 4 + 8 * slot))
                .unwrap();
        }
        m.write_obj(used.len() as u16, GuestAddress(RING.used + 2))
            .unwrap();
    }

    #[test]
    fn rings_are_ambiguous_only_when_resuming_could_repeat_a_request() {
        let m = mem();
        let cases: [(&[u16], &[u16], bool); 6] = [
            (&[], &[], false),
            (&[0, 1, 2], &[0, 1, 2], false),
            // One outstanding after in-order completions (head reused).
            (&[0, 0, 0, 0, 0], &[0, 0, 0, 0], false),
            (&[0, 1, 2], &[0, 1], false),
            // B (head 1) completed before A (head 0).
            (&[0, 1], &[1], true),
            // Two outstanding: which of them a backend took is unknown.
            (&[0, 1, 2], &[0], true),
        ];
        for (avail, used, want) in cases {
            ring(&m, avail, used);
            assert_eq!(
                ambiguous(&m, &[RING]),
                want,
                "avail {avail:?} used {used:?}"
            );
        }
    }

    #[test]
    fn the_loss_notes_whether_resuming_would_be_ambiguous() {
        let m = mem();
        ring(&m, &[0, 1], &[1]);
        let link: Link = Arc::default();
        let idle_ring = RingAddrs {
            size: 4,
            avail: 0x3000,
            used: 0x4000,
        };
        for (rings, want) in [(vec![idle_ring], false), (vec![idle_ring, RING], true)] {
            let (a, b) = UnixStream::pair().unwrap();
            let g = link_up(&link);
            lock(&link).rings = rings;
            let w = watch(a, g, &link, m.clone());
            drop(b);
            w.rx.recv_timeout(WAIT).unwrap();
            assert_eq!(lock(&link).ambiguous_at_loss, Some(want));
        }
    }

    #[test]
    fn a_hangup_before_the_link_is_up_is_reported_once_it_is() {
        let (a, b) = UnixStream::pair().unwrap();
        let link: Link = Arc::default();
        let w = watch(a, next_generation(&link), &link, mem());
        drop(b);
        assert!(w.rx.recv_timeout(Duration::from_millis(200)).is_err());
        link_up(&link);
        let ev = w.rx.recv_timeout(WAIT).unwrap();
        assert_eq!(ev, VirtioEvent::Disconnected { id: "d0".into() });
    }
}
