//! The exchange of test frames: rounds of pings with sequence numbers
//! (broadcast, a window of them outstanding), the peers' pings answered,
//! every pong checked (sequence number, pattern, checksum), and the link
//! status changes reported on serial as they come.

use guest_rt::{port, println};

use crate::clock::now_ms;
use crate::frame::{self, Parsed, BROADCAST, PING, PONG};
use crate::virtio_net::{LinkChange, Net, BUF_LEN};

/// Pings per round at most (the bitmap's size).
pub const MAX_ROUND: u32 = 256;
/// Pings per round of the guests that ping forever (`net-loop`,
/// `net-pair`).
pub const ENDLESS_ROUND: u32 = 50;
/// Pings outstanding at most in those rounds.
pub const ENDLESS_WINDOW: u32 = 8;
/// How long an unanswered ping holds their window (ms).
pub const ENDLESS_PATIENCE_MS: u64 = 1000;
const WORDS: usize = (MAX_ROUND / 64) as usize;

/// Counts of one round (or of a whole run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pings sent.
    pub sent: u32,
    /// Distinct pings answered.
    pub received: u32,
    /// Pings never answered.
    pub lost: u32,
    /// Answers to a ping already answered.
    pub duplicate: u32,
    /// Frames of the test EtherType that were damaged.
    pub corrupt: u32,
    /// Answers to pings of an earlier round.
    pub late: u32,
}

impl Stats {
    /// Adds `o` to these counts.
    pub fn add(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicate += o.duplicate;
        self.corrupt += o.corrupt;
        self.late += o.late;
    }

    /// Prints the counts after `what` (`net: WHAT: sent ...`).
    pub fn print(&self, what: impl core::fmt::Display) {
        println!(
            "net: {}: sent {} received {} lost {} duplicate {} corrupt {} late {}",
            what, self.sent, self.received, self.lost, self.duplicate, self.corrupt, self.late
        );
    }
}

/// The exchange over one NIC.
pub struct Exchange {
    net: Net,
    next_seq: u32,
    round_start: u32,
    got: [u64; WORDS],
    round: Stats,
    /// Pings of peers answered.
    pub answered: u32,
    /// Frames of other EtherTypes received.
    pub other: u32,
    /// Link changes seen, and whether each came with a config interrupt.
    pub link_changes: u32,
    /// Link changes that came without a config interrupt.
    pub silent_link_changes: u32,
    tx: [u8; BUF_LEN],
}

impl Exchange {
    /// Starts exchanging on `net`.
    pub fn new(net: Net) -> Self {
        Exchange {
            net,
            next_seq: 0,
            round_start: 0,
            got: [0; WORDS],
            round: Stats::default(),
            answered: 0,
            other: 0,
            link_changes: 0,
            silent_link_changes: 0,
            tx: [0; BUF_LEN],
        }
    }

    /// The NIC.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Sends the frame in `self.tx[..len]`, waiting (while receiving) for
    /// a transmit buffer at most `limit_ms`.
    fn send_tx(&mut self, len: usize, limit_ms: u64, beside: &mut Option<&mut Exchange>) -> bool {
        let start = now_ms();
        let mut frame = [0u8; BUF_LEN];
        frame[..len].copy_from_slice(&self.tx[..len]);
        loop {
            if self.net.send(&frame[..len]) {
                return true;
            }
            if now_ms() - start > limit_ms {
                return false;
            }
            self.pump_beside(beside);
        }
    }

    /// [`Exchange::pump`], and the same for `beside` (another NIC of this
    /// guest, answering our pings).
    fn pump_beside(&mut self, beside: &mut Option<&mut Exchange>) -> bool {
        if let Some(b) = beside.as_deref_mut() {
            b.pump();
        }
        self.pump()
    }

    fn on_frame(&mut self, pkt: &[u8], reply: &mut Option<([u8; 6], u32, usize)>) {
        match frame::parse(pkt) {
            Parsed::Other => self.other += 1,
            Parsed::Corrupt => self.round.corrupt += 1,
            Parsed::Test(f) if f.kind == PING && f.src != self.net.mac => {
                // Answered after the packet buffer is released.
                let n = frame::build_with(&mut self.tx, f.src, self.net.mac, PONG, f.seq, f.data);
                if let Some(n) = n {
                    *reply = Some((f.src, f.seq, n));
                }
            }
            Parsed::Test(f) if f.kind == PONG && f.dst == self.net.mac => {
                if !frame::pattern_ok(f.seq, f.data) {
                    self.round.corrupt += 1;
                    return;
                }
                let k = f.seq.wrapping_sub(self.round_start);
                if f.seq < self.round_start || k >= self.round.sent {
                    self.round.late += 1;
                    return;
                }
                let (w, bit) = ((k / 64) as usize, 1u64 << (k % 64));
                if self.got[w] & bit != 0 {
                    self.round.duplicate += 1;
                } else {
                    self.got[w] |= bit;
                    self.round.received += 1;
                }
            }
            // Our own pings looped back, pongs for another NIC.
            Parsed::Test(_) => self.other += 1,
        }
    }

    /// Handles what arrived (at most one packet) and the link; true if
    /// a packet came.
    pub fn pump(&mut self) -> bool {
        if let Some(change) = self.net.poll_link() {
            self.report(change);
        }
        let mut reply = None;
        let mut pkts = [0u8; BUF_LEN * 2];
        let mut len = 0;
        let came = self.net.recv(&mut |p: &[u8]| {
            let n = p.len().min(pkts.len());
            pkts[..n].copy_from_slice(&p[..n]);
            len = n;
        });
        if came {
            self.on_frame(&pkts[..len], &mut reply);
        }
        if let Some((_, _, n)) = reply {
            let mut frame = [0u8; BUF_LEN];
            frame[..n].copy_from_slice(&self.tx[..n]);
            // A pong that finds no transmit buffer is lost, as on a wire.
            if self.net.send(&frame[..n]) {
                self.answered += 1;
            }
        }
        if !came {
            port::pause();
        }
        came
    }

    fn report(&mut self, change: LinkChange) {
        self.link_changes += 1;
        if !change.interrupt {
            self.silent_link_changes += 1;
        }
        println!(
            "net: link {} ({})",
            if change.up { "up" } else { "down" },
            if change.interrupt {
                "config interrupt"
            } else {
                "status field, no config interrupt"
            }
        );
    }

    /// Runs for `ms` milliseconds answering peers and watching the link.
    pub fn idle(&mut self, ms: u64) {
        let start = now_ms();
        while now_ms() - start < ms {
            self.pump();
        }
    }

    /// Waits at most `ms` for the link to be `up`; true if it is.
    pub fn wait_link(&mut self, up: bool, ms: u64) -> bool {
        let start = now_ms();
        while self.net.link_up() != up && now_ms() - start < ms {
            self.pump();
        }
        self.net.link_up() == up
    }

    /// Sends `count` pings, at most `window` unanswered at a time, and
    /// waits for their answers; a ping unanswered for `patience_ms` no
    /// longer holds the window, and the round ends `patience_ms` after
    /// the last answer.
    pub fn round(&mut self, count: u32, window: u32, patience_ms: u64) -> Stats {
        self.round_beside(count, window, patience_ms, None)
    }

    /// [`Exchange::round`] while `beside` (another NIC of this guest, if
    /// any) answers pings too: a guest whose two NICs ping each other.
    pub fn round_beside(
        &mut self,
        count: u32,
        window: u32,
        patience_ms: u64,
        mut beside: Option<&mut Exchange>,
    ) -> Stats {
        let count = count.min(MAX_ROUND);
        self.round = Stats::default();
        self.round_start = self.next_seq;
        self.got = [0; WORDS];
        let mut progress = now_ms();
        let mut last_received = 0;
        for _ in 0..count {
            while self.round.sent - self.round.received >= window
                && now_ms() - progress < patience_ms
            {
                self.pump_beside(&mut beside);
                if self.round.received != last_received {
                    last_received = self.round.received;
                    progress = now_ms();
                }
            }
            let seq = self.next_seq;
            let Some(n) = frame::build(&mut self.tx, BROADCAST, self.net.mac, PING, seq) else {
                break;
            };
            if !self.send_tx(n, patience_ms, &mut beside) {
                break;
            }
            self.next_seq = self.next_seq.wrapping_add(1);
            self.round.sent += 1;
            progress = now_ms();
            self.pump_beside(&mut beside);
        }
        while self.round.received < self.round.sent && now_ms() - progress < patience_ms {
            self.pump_beside(&mut beside);
            if self.round.received != last_received {
                last_received = self.round.received;
                progress = now_ms();
            }
        }
        self.round.lost = self.round.sent - self.round.received;
        self.round
    }
}
