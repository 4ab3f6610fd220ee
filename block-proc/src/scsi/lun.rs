//! One logical unit's state: its medium (a node, or none), tray, the
//! guest's lock, the unit attention waiting to be reported and the media
//! event waiting for GET EVENT STATUS NOTIFICATION. The broker changes it
//! with [`Lun::medium_op`]; the guest with START STOP UNIT and PREVENT
//! ALLOW MEDIUM REMOVAL, which are reported back as [`ScsiEvent`]s; such a
//! command completes only once its event is written to the broker's link,
//! and a broker `OpenTray` on a tray the guest locked is refused.
//!
//! A medium change is reported as QEMU's scsi-cd does: UNIT ATTENTION
//! 06/3A/00 (medium not present) first, then, once that was reported,
//! 06/28/00 (medium may have changed); and a "new media" event.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipc_proto::block::BlockEvent;
use ipc_proto::scsi::{MediumOp, ScsiEvent, ScsiLunConfig, ScsiLunKind};

use super::cdb::op;
use super::sense::{self, Sense};
use super::ScsiError;
use crate::block::Node;
use crate::vhost::export::ExportEvent;

/// What GET EVENT STATUS NOTIFICATION reports next in the media class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// MEC_NEW_MEDIA: a medium was loaded (the tray closed).
    NewMedia,
    /// MEC_MEDIA_REMOVAL: the medium was taken away (the tray opened).
    MediaRemoval,
}

/// The mutable state of a logical unit.
#[derive(Default)]
pub struct LunState {
    /// The medium.
    pub medium: Option<Arc<Node>>,
    /// The tray is open.
    pub tray_open: bool,
    /// The guest prevents medium removal.
    pub locked: bool,
    /// The unit attention the next command reports.
    pub unit_attention: Option<Sense>,
    /// After the pending unit attention is reported, report 06/28/00.
    pub media_changed: bool,
    /// The media event GESN reports next.
    pub media_event: Option<MediaEvent>,
    /// The host asked the guest to eject (MEC_EJECT_REQUESTED).
    pub eject_request: bool,
}

/// Where a LUN reports what the guest changed.
#[derive(Clone)]
pub struct Notifier {
    /// The export's id.
    pub export_id: String,
    /// The server's event channel.
    pub events: Option<Sender<ExportEvent>>,
}

/// How long a guest command waits for its event to reach the broker's
/// link (only a stuck link takes this long; the command completes then,
/// and the broker's replay holds the state it last knew).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Notifier {
    /// Sends `e` and returns once it is written to the broker's link (or
    /// the link is gone): the guest's command completes only after its
    /// event, so the broker never decides on a lock the guest has already
    /// changed, and a SIGKILL after the completion cannot lose the event.
    fn send(&self, e: ScsiEvent) {
        let Some(tx) = &self.events else {
            return;
        };
        let (written, done) = mpsc::channel();
        if tx
            .send(ExportEvent::Acked(BlockEvent::Scsi(e), written))
            .is_err()
        {
            return;
        }
        if let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(DELIVERY_TIMEOUT) {
            tracing::warn!(
                "SCSI event of export {} not delivered in {:?}",
                self.export_id,
                DELIVERY_TIMEOUT
            );
        }
    }
}

/// One logical unit.
pub struct Lun {
    /// Its configuration (the medium fields as given at creation).
    pub cfg: ScsiLunConfig,
    state: Mutex<LunState>,
    notifier: Notifier,
}

impl Lun {
    /// A LUN as `cfg` describes it, with `medium` (the node `cfg` names)
    /// in it. No unit attention is pending: after a block-proc restart
    /// the broker recreates the same state, which the guest must not see
    /// as a change.
    pub fn new(cfg: ScsiLunConfig, medium: Option<Arc<Node>>, notifier: Notifier) -> Self {
        let state = LunState {
            medium,
            tray_open: cfg.tray_open && cfg.kind == ScsiLunKind::Cd,
            locked: cfg.locked,
            ..LunState::default()
        };
        Lun {
            cfg,
            state: Mutex::new(state),
            notifier,
        }
    }

    /// The state, locked.
    pub fn state(&self) -> MutexGuard<'_, LunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True for an MMC drive.
    pub fn is_cd(&self) -> bool {
        self.cfg.kind == ScsiLunKind::Cd
    }

    /// Logical block size.
    pub fn block_size(&self) -> u64 {
        u64::from(self.cfg.logical_block_size.max(512))
    }

    /// The medium when the unit is ready (a medium in, tray closed); else
    /// the NOT READY sense.
    pub fn ready(&self) -> Result<Arc<Node>, Sense> {
        let st = self.state();
        match (&st.medium, st.tray_open) {
            (Some(m), false) => Ok(m.clone()),
            (Some(_), true) => Err(sense::NO_MEDIUM_TRAY_OPEN),
            (None, open) => Err(Sense::no_medium(open)),
        }
    }

    /// The medium when the unit is ready and no unit attention waits (the
    /// command may then skip the checks of [`super::commands::execute`]).
    pub fn ready_without_attention(&self) -> Option<Arc<Node>> {
        let st = self.state();
        match (&st.medium, st.tray_open, st.unit_attention) {
            (Some(m), false, None) => Some(m.clone()),
            _ => None,
        }
    }

    /// The unit attention `opcode` must report instead of running, if
    /// any (taking it). INQUIRY, REPORT LUNS, GET CONFIGURATION and GET
    /// EVENT STATUS NOTIFICATION never report one (SPC-4, MMC-6); REQUEST
    /// SENSE reports it as its data ([`Lun::take_sense`]).
    pub fn take_unit_attention(&self, opcode: u8) -> Option<Sense> {
        match opcode {
            op::INQUIRY
            | op::REPORT_LUNS
            | op::GET_CONFIGURATION
            | op::GET_EVENT_STATUS_NOTIFICATION
            | op::REQUEST_SENSE => None,
            _ => Self::take_ua(&mut self.state()),
        }
    }

    fn take_ua(st: &mut LunState) -> Option<Sense> {
        let ua = st.unit_attention.take()?;
        if st.media_changed {
            st.media_changed = false;
            st.unit_attention = Some(sense::MEDIUM_CHANGED);
        }
        Some(ua)
    }

    /// REQUEST SENSE's data: the pending unit attention (taken), else the
    /// drive's NOT READY condition, else NO SENSE.
    pub fn take_sense(&self) -> Sense {
        let mut st = self.state();
        if let Some(ua) = Self::take_ua(&mut st) {
            return ua;
        }
        match (&st.medium, st.tray_open) {
            (Some(_), false) => sense::NO_SENSE,
            (Some(_), true) => sense::NO_MEDIUM_TRAY_OPEN,
            (None, open) => Sense::no_medium(open),
        }
    }

    /// A bus reset or LOGICAL UNIT RESET: UNIT ATTENTION 06/29/00.
    pub fn reset(&self) {
        let mut st = self.state();
        st.unit_attention = Some(sense::RESET);
        st.media_changed = false;
    }

    /// The tray moved (host or guest); a load gives the guest QEMU's
    /// two-step unit attention and a new-media event, an unload a
    /// removal event.
    fn tray_moved(st: &mut LunState, open: bool) {
        st.tray_open = open;
        st.unit_attention = Some(sense::UNIT_ATTENTION_NO_MEDIUM);
        st.media_changed = !open;
        st.media_event = Some(if open {
            MediaEvent::MediaRemoval
        } else {
            MediaEvent::NewMedia
        });
        st.eject_request = false;
    }

    /// The guest's START STOP UNIT with LoEj: open (`!start`) or close the
    /// tray. Refused while locked (with the sense QEMU gives).
    pub fn guest_load_eject(&self, start: bool) -> Result<(), Sense> {
        let moved = {
            let mut st = self.state();
            if !start && !st.tray_open && st.locked {
                return Err(if st.medium.is_some() {
                    sense::ILLEGAL_REQ_REMOVAL_PREVENTED
                } else {
                    sense::NOT_READY_REMOVAL_PREVENTED
                });
            }
            let moved = st.tray_open == start;
            if moved {
                st.tray_open = !start;
                st.eject_request = false;
                if start && st.medium.is_some() {
                    st.media_event = Some(MediaEvent::NewMedia);
                }
            }
            moved
        };
        if moved {
            self.notifier.send(ScsiEvent::TrayMoved {
                export_id: self.notifier.export_id.clone(),
                device_id: self.cfg.device_id.clone(),
                open: !start,
            });
        }
        Ok(())
    }

    /// The guest's PREVENT ALLOW MEDIUM REMOVAL.
    pub fn guest_lock(&self, locked: bool) {
        let changed = {
            let mut st = self.state();
            let changed = st.locked != locked;
            st.locked = locked;
            changed
        };
        if changed && self.is_cd() {
            self.notifier.send(ScsiEvent::LockChanged {
                export_id: self.notifier.export_id.clone(),
                device_id: self.cfg.device_id.clone(),
                locked,
            });
        }
    }

    /// The broker's change. `node` is the node of an [`MediumOp::Insert`]
    /// (looked up by the caller, which also acquired it). Returns the
    /// medium taken out (to release) by [`MediumOp::Remove`].
    pub fn medium_op(
        &self,
        op: &MediumOp,
        node: Option<Arc<Node>>,
    ) -> Result<Option<Arc<Node>>, ScsiError> {
        let id = || self.cfg.device_id.clone();
        if !self.is_cd() {
            return Err(ScsiError::NotRemovable(id()));
        }
        let mut st = self.state();
        match op {
            MediumOp::OpenTray => {
                if !st.tray_open {
                    if st.locked {
                        // The broker's lock lagged the guest's (its event
                        // is on the way): refuse as QEMU's do_open_tray
                        // does without force, asking the guest to eject.
                        st.eject_request = true;
                        return Err(ScsiError::Locked(id()));
                    }
                    Self::tray_moved(&mut st, true);
                }
                Ok(None)
            }
            MediumOp::CloseTray => {
                if st.tray_open {
                    Self::tray_moved(&mut st, false);
                }
                Ok(None)
            }
            MediumOp::Remove => {
                if !st.tray_open {
                    return Err(ScsiError::TrayClosed(id()));
                }
                Ok(st.medium.take())
            }
            MediumOp::Insert { node_name } => {
                if !st.tray_open {
                    return Err(ScsiError::TrayClosed(id()));
                }
                if st.medium.is_some() {
                    return Err(ScsiError::HasMedium(id()));
                }
                let node = node.ok_or_else(|| ScsiError::NoSuchNode(node_name.clone()))?;
                st.medium = Some(node);
                Ok(None)
            }
            MediumOp::EjectRequest => {
                st.eject_request = true;
                Ok(None)
            }
            MediumOp::SetLocked(l) => {
                st.locked = *l;
                Ok(None)
            }
        }
    }

    /// Give the medium back (the export stops).
    pub fn take_medium(&self) -> Option<Arc<Node>> {
        self.state().medium.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::null::NullDriver;

    /// A CD whose events go to the returned receiver (the server's event
    /// thread in block-proc).
    fn cd() -> (Arc<Lun>, mpsc::Receiver<ExportEvent>) {
        let (tx, rx) = mpsc::channel();
        let cfg = ScsiLunConfig {
            device_id: "cd0".into(),
            target: 0,
            lun: 0,
            kind: ScsiLunKind::Cd,
            node_name: Some("n".into()),
            writable: false,
            tray_open: false,
            locked: false,
            serial: "S".into(),
            logical_block_size: 2048,
        };
        let node = Arc::new(Node::new(
            "n".into(),
            Box::new(NullDriver::new(1 << 20)),
            false,
        ));
        let notifier = Notifier {
            export_id: "scsi0".into(),
            events: Some(tx),
        };
        (Arc::new(Lun::new(cfg, Some(node), notifier)), rx)
    }

    /// Runs `change` on another thread (a queue thread): it must not
    /// return before its event was written; returns the event.
    fn waits_for_delivery(
        lun: &Arc<Lun>,
        rx: &mpsc::Receiver<ExportEvent>,
        change: fn(&Lun),
    ) -> ScsiEvent {
        let (ret_tx, returned) = mpsc::channel();
        let l = lun.clone();
        let t = std::thread::spawn(move || {
            change(&l);
            let _ = ret_tx.send(());
        });
        let Ok(ExportEvent::Acked(BlockEvent::Scsi(ev), written)) = rx.recv() else {
            panic!("no acknowledged SCSI event");
        };
        assert_eq!(
            returned.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "the command completed before its event was on the broker's link"
        );
        written.send(()).unwrap();
        returned.recv().unwrap();
        t.join().unwrap();
        ev
    }

    #[test]
    fn the_guests_lock_and_eject_complete_only_once_their_events_are_written() {
        let (l, rx) = cd();
        let ev = waits_for_delivery(&l, &rx, |l| l.guest_lock(true));
        assert!(matches!(ev, ScsiEvent::LockChanged { locked: true, .. }));
        let ev = waits_for_delivery(&l, &rx, |l| l.guest_lock(false));
        assert!(matches!(ev, ScsiEvent::LockChanged { locked: false, .. }));
        let ev = waits_for_delivery(&l, &rx, |l| l.guest_load_eject(false).unwrap());
        assert!(matches!(ev, ScsiEvent::TrayMoved { open: true, .. }));
        // A link that is gone does not hold the guest up.
        drop(rx);
        l.guest_lock(true);
        assert!(l.state().locked);
    }
}
