//! `cdrom`: finds the first CD-ROM on the first virtio-scsi controller
//! (Bulkhead's virtio-mmio slots, then QEMU microvm's transports) and runs
//! a script the discs themselves drive (see `disc.rs`):
//!
//! 1. wait for the drive to be ready (reporting UNIT ATTENTIONs), READ
//!    CAPACITY(10), read and check every block, print
//!    `cdrom: disc N: tag T, B blocks ok`; a disc flagged LAST ends the
//!    test with `VERDICT: PASS cdrom`;
//! 2. lock the tray (PREVENT ALLOW MEDIUM REMOVAL);
//! 3. poll GET EVENT STATUS NOTIFICATION: on an eject request, unlock and
//!    eject (START STOP UNIT) unless the disc is flagged KEEP_LOCKED; on
//!    new media go back to 1 (the new disc must have another tag). A disc
//!    flagged REREAD is read again between polls (`disc N pass P ok`)
//!    until the first media event, so that a test can disturb the backend
//!    while the guest reads.
//!
//! Every step prints a `cdrom: ...` line; any unexpected answer fails the
//! test with `VERDICT: FAIL cdrom: ...`.

#![no_std]
#![no_main]

mod cd;
mod disc;
mod scsi;

use cd::{Drive, MediaEvent, MediaStatus};
use guest_rt::println;

guest_rt::guest!("cdrom", main);

/// Ticks (10 ms) between two media event polls.
const POLL_TICKS: u32 = 2;

fn main() -> ! {
    let hba = match scsi::Hba::init() {
        Ok(h) => h,
        Err(e) => guest_rt::fail!("virtio-scsi set-up: {:?}", e),
    };
    let mut drive = Drive::find(hba);
    let mut previous: Option<u64> = None;
    for n in 1u32.. {
        drive.wait_ready();
        let (blocks, size) = drive.capacity();
        if size != disc::BLOCK as u32 {
            guest_rt::fail!("block size {} (want {})", size, disc::BLOCK);
        }
        let (tag, flags) = drive.read_disc(blocks);
        println!("cdrom: disc {}: tag {}, {} blocks ok", n, tag, blocks);
        if previous == Some(tag) {
            guest_rt::fail!("new media reported, but the disc is the same (tag {})", tag);
        }
        previous = Some(tag);
        if flags & disc::LAST != 0 {
            break;
        }
        drive.prevent_removal(true);
        println!("cdrom: tray locked");
        let d = Disc {
            n,
            blocks,
            tag,
            flags,
        };
        wait_for_new_media(&mut drive, &d);
    }
    guest_rt::exit::pass()
}

/// The disc in the drive.
struct Disc {
    n: u32,
    blocks: u32,
    tag: u64,
    flags: u64,
}

/// Polls media events until new media is in, answering eject requests
/// (unless the disc is KEEP_LOCKED), reporting tray changes, and reading
/// a REREAD disc again between polls until the first event.
fn wait_for_new_media(drive: &mut Drive, disc: &Disc) {
    let keep_locked = disc.flags & disc::KEEP_LOCKED != 0;
    let mut rereading = disc.flags & disc::REREAD != 0;
    let mut pass = 1;
    let mut last = MediaStatus {
        event: MediaEvent::NoChange,
        tray_open: false,
        present: true,
    };
    loop {
        if rereading {
            pass += 1;
            if drive.read_disc(disc.blocks) != (disc.tag, disc.flags) {
                guest_rt::fail!("disc {} changed without a media event", disc.n);
            }
            println!("cdrom: disc {} pass {} ok", disc.n, pass);
        }
        let Some(st) = drive.media_event() else {
            scsi::sleep_ticks(POLL_TICKS);
            continue;
        };
        if (st.tray_open, st.present) != (last.tray_open, last.present) {
            println!(
                "cdrom: tray {}, medium {}",
                if st.tray_open { "open" } else { "closed" },
                if st.present { "present" } else { "absent" }
            );
        }
        last = st;
        if st.event != MediaEvent::NoChange || st.tray_open || !st.present {
            rereading = false;
        }
        match st.event {
            MediaEvent::NoChange => {}
            MediaEvent::EjectRequest if keep_locked => {
                println!("cdrom: eject request ignored, the tray stays locked");
            }
            MediaEvent::EjectRequest => {
                println!("cdrom: eject request");
                drive.prevent_removal(false);
                println!("cdrom: tray unlocked");
                drive.eject();
                println!("cdrom: ejected");
            }
            MediaEvent::NewMedia => {
                println!("cdrom: new media");
                return;
            }
            MediaEvent::MediaRemoval => println!("cdrom: medium removed"),
            MediaEvent::Other(c) => println!("cdrom: media event {}", c),
        }
        scsi::sleep_ticks(POLL_TICKS);
    }
}
