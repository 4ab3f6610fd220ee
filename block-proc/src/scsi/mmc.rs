//! The MMC commands of a CD/DVD drive (and the removable-medium ones a
//! disk answers too): START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, GET
//! CONFIGURATION, GET EVENT STATUS NOTIFICATION (media class), READ TOC.
//! The answers follow QEMU's scsi-cd (`hw/scsi/scsi-disk.c`,
//! `hw/block/cdrom.c`).

use super::cdb::Cdb;
use super::commands::{Io, Outcome};
use super::lun::{Lun, MediaEvent};
use super::sense::{self, Sense};

/// MMC profile: no current profile.
const PROFILE_NONE: u16 = 0x0000;
/// MMC profile: CD-ROM.
const PROFILE_CD_ROM: u16 = 0x0008;
/// MMC profile: DVD-ROM.
const PROFILE_DVD_ROM: u16 = 0x0010;
/// The largest CD (80 minutes of 2048-byte sectors); bigger media are
/// DVDs.
const CD_MAX_BYTES: u64 = 80 * 60 * 75 * 2048;

/// GESN notification class "media".
const GESN_MEDIA: u8 = 4;
/// Media event codes.
const MEC_NO_CHANGE: u8 = 0;
const MEC_EJECT_REQUESTED: u8 = 1;
const MEC_NEW_MEDIA: u8 = 2;
const MEC_MEDIA_REMOVAL: u8 = 3;
/// Media status bits.
const MS_TRAY_OPEN: u8 = 1;
const MS_MEDIA_PRESENT: u8 = 2;

/// START STOP UNIT: with LoEj on a CD, load (Start) or eject; the power
/// condition form and a disk's LoEj change nothing.
pub fn start_stop_unit(lun: &Lun, cdb: &Cdb<'_>) -> Result<Outcome, Sense> {
    let b = cdb.byte(4);
    let (start, loej, power) = (b & 1 != 0, b & 2 != 0, b & 0xf0);
    if power == 0 && loej && lun.is_cd() {
        lun.guest_load_eject(start)?;
    }
    Ok(Outcome::Good { data_in: 0 })
}

/// PREVENT ALLOW MEDIUM REMOVAL.
pub fn prevent_allow(lun: &Lun, cdb: &Cdb<'_>) -> Result<Outcome, Sense> {
    lun.guest_lock(cdb.byte(4) & 1 != 0);
    Ok(Outcome::Good { data_in: 0 })
}

/// GET CONFIGURATION: the profile list (DVD-ROM, CD-ROM), the core
/// feature and the removable medium feature, as QEMU (whatever RT and
/// the starting feature ask).
pub fn get_configuration(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    let current = match lun.ready() {
        Ok(m) if m.size() > CD_MAX_BYTES => PROFILE_DVD_ROM,
        Ok(m) if m.size() > 0 => PROFILE_CD_ROM,
        _ => PROFILE_NONE,
    };
    let mut b = [0u8; 40];
    b[0..4].copy_from_slice(&36u32.to_be_bytes());
    b[6..8].copy_from_slice(&current.to_be_bytes());
    // Feature 0: profile list.
    b[10] = 0x03;
    b[11] = 8;
    b[12..14].copy_from_slice(&PROFILE_DVD_ROM.to_be_bytes());
    b[14] = u8::from(current == PROFILE_DVD_ROM);
    b[16..18].copy_from_slice(&PROFILE_CD_ROM.to_be_bytes());
    b[18] = u8::from(current == PROFILE_CD_ROM);
    // Feature 1: core (SCSI, DBE).
    b[20..22].copy_from_slice(&1u16.to_be_bytes());
    b[22] = 0x08 | 0x03;
    b[23] = 8;
    b[24..28].copy_from_slice(&1u32.to_be_bytes());
    b[28] = 1;
    // Feature 3: removable medium (tray, load, eject, lock).
    b[32..34].copy_from_slice(&3u16.to_be_bytes());
    b[34] = 0x08 | 0x03;
    b[35] = 4;
    b[36] = 0x39;
    Ok(io.reply(&b, cdb.be(7, 2)))
}

/// GET EVENT STATUS NOTIFICATION, polled, media class only.
pub fn event_status(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    if cdb.byte(1) & 1 == 0 {
        // Asynchronous notification is not supported.
        return Err(sense::INVALID_FIELD);
    }
    let mut b = vec![0u8, 0, 0, 1 << GESN_MEDIA];
    if cdb.byte(4) & (1 << GESN_MEDIA) != 0 {
        b[2] = GESN_MEDIA;
        let mut st = lun.state();
        let status = if st.tray_open {
            MS_TRAY_OPEN
        } else if st.medium.is_some() {
            MS_MEDIA_PRESENT
        } else {
            0
        };
        let code = match st.media_event {
            Some(MediaEvent::MediaRemoval) => {
                st.media_event = None;
                MEC_MEDIA_REMOVAL
            }
            Some(MediaEvent::NewMedia) if !st.tray_open => {
                st.media_event = None;
                MEC_NEW_MEDIA
            }
            _ if st.eject_request && !st.tray_open => {
                st.eject_request = false;
                MEC_EJECT_REQUESTED
            }
            _ => MEC_NO_CHANGE,
        };
        b.extend_from_slice(&[code, status, 0, 0]);
    } else {
        // No event available in the classes asked for.
        b[2] = 0x80;
    }
    let len = u16::try_from(b.len() - 4).unwrap_or(0);
    b[..2].copy_from_slice(&len.to_be_bytes());
    Ok(io.reply(&b, cdb.be(7, 2)))
}

/// `lba` as minutes, seconds, frames (with the 2-second lead-in).
fn msf(lba: u64) -> [u8; 4] {
    let l = lba + 150;
    let m = u8::try_from(l / (75 * 60)).unwrap_or(u8::MAX);
    let s = u8::try_from((l / 75) % 60).unwrap_or(0);
    let f = u8::try_from(l % 75).unwrap_or(0);
    [0, m, s, f]
}

fn address(lba: u64, as_msf: bool) -> [u8; 4] {
    if as_msf {
        msf(lba)
    } else {
        u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes()
    }
}

/// READ TOC/PMA/ATIP: format 0 (the TOC: one data track and the
/// lead-out, LBA or MSF) and 1 (session information).
pub fn read_toc(lun: &Lun, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Result<Outcome, Sense> {
    let node = lun.ready()?;
    let blocks = node.size() / 2048;
    let as_msf = cdb.byte(1) & 2 != 0;
    let start_track = cdb.byte(6);
    let out = match cdb.byte(2) & 0x0f {
        0 => {
            if start_track > 1 && start_track != 0xaa {
                return Err(sense::INVALID_FIELD);
            }
            let mut b = vec![0u8, 0, 1, 1];
            if start_track <= 1 {
                b.extend_from_slice(&[0, 0x14, 1, 0]);
                b.extend_from_slice(&address(0, as_msf));
            }
            b.extend_from_slice(&[0, 0x14, 0xaa, 0]);
            b.extend_from_slice(&address(blocks, as_msf));
            let len = u16::try_from(b.len() - 2).unwrap_or(0);
            b[..2].copy_from_slice(&len.to_be_bytes());
            b
        }
        1 => vec![0, 0x0a, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0],
        _ => return Err(sense::INVALID_FIELD),
    };
    Ok(io.reply(&out, cdb.be(7, 2)))
}

#[cfg(test)]
mod tests {
    use ipc_proto::scsi::{MediumOp, ScsiLunKind};

    use super::*;
    use crate::scsi::commands::tests::{lun, run_in};

    const GESN: [u8; 10] = [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];

    #[test]
    fn read_toc_lists_track_one_and_the_lead_out_in_lba_and_msf() {
        let l = lun(ScsiLunKind::Cd, Some(300 * 2048));
        let (_, d) = run_in(&l, &[0x43, 0, 0, 0, 0, 0, 0, 0, 255, 0], 255);
        assert_eq!(
            d,
            vec![0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0, 1, 44]
        );
        let (_, d) = run_in(&l, &[0x43, 2, 0, 0, 0, 0, 0, 0, 255, 0], 255);
        // LBA 0 is 00:02:00, 300 is 00:06:00.
        assert_eq!(&d[8..12], &[0, 0, 2, 0]);
        assert_eq!(&d[16..20], &[0, 0, 6, 0]);
        let (_, d) = run_in(&l, &[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 255, 0], 255);
        assert_eq!(d.len(), 12);
        assert_eq!(
            run_in(&l, &[0x43, 0, 0, 0, 0, 0, 2, 0, 255, 0], 255).0,
            sense::INVALID_FIELD.into()
        );
        assert_eq!(
            run_in(&l, &[0x43, 0, 5, 0, 0, 0, 0, 0, 255, 0], 255).0,
            sense::INVALID_FIELD.into()
        );
        let (_, d) = run_in(&l, &[0x43, 0, 1, 0, 0, 0, 0, 0, 255, 0], 255);
        assert_eq!(d.len(), 12);
    }

    #[test]
    fn get_configuration_reports_the_cd_profile_or_none() {
        let l = lun(ScsiLunKind::Cd, Some(300 * 2048));
        let (o, d) = run_in(&l, &[0x46, 0, 0, 0, 0, 0, 0, 0, 40, 0], 40);
        assert_eq!(o, Outcome::Good { data_in: 40 });
        assert_eq!((d[6], d[7], d[18], d[36]), (0, 8, 1, 0x39));
        let e = lun(ScsiLunKind::Cd, None);
        let (_, d) = run_in(&e, &[0x46, 0, 0, 0, 0, 0, 0, 0, 40, 0], 40);
        assert_eq!((d[6], d[7], d[14], d[18]), (0, 0, 0, 0));
    }

    #[test]
    fn a_medium_change_gives_two_unit_attentions_and_a_new_media_event() {
        let l = lun(ScsiLunKind::Cd, Some(300 * 2048));
        assert_eq!(run_in(&l, &[0], 0).0, Outcome::Good { data_in: 0 });
        l.medium_op(&MediumOp::OpenTray, None).unwrap();
        let (_, d) = run_in(&l, &GESN, 8);
        assert_eq!(
            d,
            vec![0, 4, 4, 0x10, MEC_MEDIA_REMOVAL, MS_TRAY_OPEN, 0, 0]
        );
        let old = l.medium_op(&MediumOp::Remove, None).unwrap();
        assert!(old.is_some());
        let (_, d) = run_in(&l, &GESN, 8);
        assert_eq!(&d[4..6], &[MEC_NO_CHANGE, MS_TRAY_OPEN]);
        let node =
            crate::scsi::commands::tests::lun(ScsiLunKind::Cd, Some(600 * 2048)).take_medium();
        l.medium_op(
            &MediumOp::Insert {
                node_name: "n".into(),
            },
            node,
        )
        .unwrap();
        l.medium_op(&MediumOp::CloseTray, None).unwrap();
        // INQUIRY and GESN do not report the unit attention ...
        assert!(matches!(
            run_in(&l, &[0x12, 0, 0, 0, 36, 0], 36).0,
            Outcome::Good { .. }
        ));
        let (_, d) = run_in(&l, &GESN, 8);
        assert_eq!(&d[4..6], &[MEC_NEW_MEDIA, MS_MEDIA_PRESENT]);
        // ... the next command does: 06/3A/00, then 06/28/00, then ready.
        assert_eq!(
            run_in(&l, &[0], 0).0,
            sense::UNIT_ATTENTION_NO_MEDIUM.into()
        );
        assert_eq!(
            run_in(&l, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 2048).0,
            sense::MEDIUM_CHANGED.into()
        );
        assert_eq!(run_in(&l, &[0], 0).0, Outcome::Good { data_in: 0 });
        let (_, d) = run_in(&l, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        assert_eq!(&d[..4], &599u32.to_be_bytes());
    }

    #[test]
    fn request_sense_reports_a_pending_unit_attention_once() {
        let l = lun(ScsiLunKind::Cd, Some(300 * 2048));
        l.reset();
        let (_, d) = run_in(&l, &[0x03, 0, 0, 0, 18, 0], 18);
        assert_eq!((d[2], d[12], d[13]), (6, 0x29, 0));
        assert_eq!(run_in(&l, &[0], 0).0, Outcome::Good { data_in: 0 });
    }

    #[test]
    fn a_locked_tray_refuses_eject_with_qemus_sense() {
        let l = lun(ScsiLunKind::Cd, Some(300 * 2048));
        assert_eq!(
            run_in(&l, &[0x1e, 0, 0, 0, 1, 0], 0).0,
            Outcome::Good { data_in: 0 }
        );
        assert!(l.state().locked);
        let eject = [0x1b, 0, 0, 0, 0x02, 0];
        assert_eq!(
            run_in(&l, &eject, 0).0,
            sense::ILLEGAL_REQ_REMOVAL_PREVENTED.into()
        );
        assert!(!l.state().tray_open);
        assert_eq!(
            run_in(&l, &[0x1e, 0, 0, 0, 0, 0], 0).0,
            Outcome::Good { data_in: 0 }
        );
        assert_eq!(run_in(&l, &eject, 0).0, Outcome::Good { data_in: 0 });
        assert!(l.state().tray_open);
        assert_eq!(run_in(&l, &[0], 0).0, sense::NO_MEDIUM_TRAY_OPEN.into());
        assert_eq!(
            run_in(&l, &[0x1b, 0, 0, 0, 0x03, 0], 0).0,
            Outcome::Good { data_in: 0 }
        );
        assert_eq!(run_in(&l, &[0], 0).0, Outcome::Good { data_in: 0 });
    }

    #[test]
    fn an_eject_request_is_a_media_event() {
        let l = lun(ScsiLunKind::Cd, Some(300 * 2048));
        l.medium_op(&MediumOp::EjectRequest, None).unwrap();
        let (_, d) = run_in(&l, &GESN, 8);
        assert_eq!(&d[4..6], &[MEC_EJECT_REQUESTED, MS_MEDIA_PRESENT]);
        let (_, d) = run_in(&l, &GESN, 8);
        assert_eq!(&d[4..6], &[MEC_NO_CHANGE, MS_MEDIA_PRESENT]);
        // Asynchronous GESN is refused; no class asked: NEA.
        assert_eq!(
            run_in(&l, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0], 8).0,
            sense::INVALID_FIELD.into()
        );
        let (_, d) = run_in(&l, &[0x4a, 1, 0, 0, 0, 0, 0, 0, 8, 0], 8);
        assert_eq!(d, vec![0, 0, 0x80, 0x10]);
    }

    #[test]
    fn opening_a_tray_the_guest_locked_is_refused_with_qemus_message_and_asks_the_guest() {
        let l = lun(ScsiLunKind::Cd, Some(300 * 2048));
        // The guest locks; the broker, not yet told, asks to open.
        assert_eq!(
            run_in(&l, &[0x1e, 0, 0, 0, 1, 0], 0).0,
            Outcome::Good { data_in: 0 }
        );
        let Err(e) = l.medium_op(&MediumOp::OpenTray, None) else {
            panic!("a locked tray opened");
        };
        assert_eq!(e, crate::scsi::ScsiError::Locked("cd0".into()));
        assert_eq!(
            e.to_string(),
            "Device 'cd0' is locked and force was not specified, wait for tray to open and try again"
        );
        assert!(!l.state().tray_open);
        let (_, d) = run_in(&l, &GESN, 8);
        assert_eq!(&d[4..6], &[MEC_EJECT_REQUESTED, MS_MEDIA_PRESENT]);
        // `force`: the broker unlocks first, then the tray opens.
        l.medium_op(&MediumOp::SetLocked(false), None).unwrap();
        l.medium_op(&MediumOp::OpenTray, None).unwrap();
        assert!(l.state().tray_open);
        // An open tray opens again whatever the lock (nothing moves).
        l.medium_op(&MediumOp::SetLocked(true), None).unwrap();
        l.medium_op(&MediumOp::OpenTray, None).unwrap();
        // Remove needs an open tray, not an unlocked drive (QEMU's rule).
        assert!(l.medium_op(&MediumOp::Remove, None).unwrap().is_some());
    }
}
