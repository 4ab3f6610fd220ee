//! The controller's targets: finding the logical unit a request
//! addresses, what a target answers for a LUN it does not have (REPORT
//! LUNS, INQUIRY with peripheral qualifier 3, LUN NOT SUPPORTED), and
//! running one request-queue or control-queue chain end to end.

use std::sync::Arc;

use super::cdb::{op, Cdb};
use super::commands::{self, Io, Outcome, STATUS_CHECK_CONDITION, STATUS_GOOD};
use super::lun::Lun;
use super::sense::{self, Sense};
use super::virtio::{self, resp, tmf, CmdResp, CMD_REQ_LEN, CMD_RESP_LEN};
use crate::block::iobuf;
use crate::virtio_blk::Completion;
use crate::vring::{Desc, Mem};

/// The logical units of one controller.
pub struct Targets {
    luns: Vec<Arc<Lun>>,
}

/// What a LUN field addresses.
enum Addressed<'a> {
    /// An existing logical unit.
    Lun(&'a Arc<Lun>),
    /// An existing target, a LUN it does not have.
    TargetOnly(u8),
    /// Nothing.
    Nothing,
}

fn completion(used_len: usize, response: u8) -> Completion {
    Completion {
        used_len: u32::try_from(used_len).unwrap_or(u32::MAX),
        status: Some(response),
        failure: None,
    }
}

impl Targets {
    /// The controller's units.
    pub fn new(luns: Vec<Arc<Lun>>) -> Self {
        Targets { luns }
    }

    /// Every unit.
    pub fn luns(&self) -> &[Arc<Lun>] {
        &self.luns
    }

    /// The unit with QMP id `device_id`.
    pub fn by_id(&self, device_id: &str) -> Option<&Arc<Lun>> {
        self.luns.iter().find(|l| l.cfg.device_id == device_id)
    }

    fn address(&self, lun: &[u8]) -> Addressed<'_> {
        let Some((t, l)) = virtio::decode_lun(lun) else {
            return Addressed::Nothing;
        };
        if let Some(u) = self
            .luns
            .iter()
            .find(|u| u.cfg.target == t && u.cfg.lun == l)
        {
            return Addressed::Lun(u);
        }
        if self.luns.iter().any(|u| u.cfg.target == t) {
            return Addressed::TargetOnly(t);
        }
        Addressed::Nothing
    }

    /// REPORT LUNS of `target`: LUN 0 always (SPC-4), then the others.
    fn report_luns(&self, target: u8, cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Outcome {
        let alloc = cdb.be(6, 4);
        if cdb.byte(2) > 2 || alloc < 16 {
            return sense::INVALID_FIELD.into();
        }
        let mut luns: Vec<u16> = self
            .luns
            .iter()
            .filter(|u| u.cfg.target == target)
            .map(|u| u.cfg.lun)
            .collect();
        luns.push(0);
        luns.sort_unstable();
        luns.dedup();
        let mut b = vec![0u8; 8];
        let len = u32::try_from(luns.len() * 8).unwrap_or(0);
        b[..4].copy_from_slice(&len.to_be_bytes());
        for l in luns {
            b.extend_from_slice(&virtio::encode_lun(l));
        }
        io.reply(&b, alloc)
    }

    /// A command to a LUN the target does not have.
    fn absent_lun(cdb: &Cdb<'_>, io: &Io<'_, '_>) -> Outcome {
        match cdb.opcode() {
            op::INQUIRY if cdb.byte(1) & 1 == 0 && cdb.byte(2) == 0 => {
                let mut b = [0u8; 36];
                b[0] = 0x7f; // qualifier 3, type 0x1f: no unit here
                b[2] = 0x05;
                b[3] = 0x12;
                b[4] = 31;
                io.reply(&b, cdb.be(3, 2))
            }
            op::REQUEST_SENSE => {
                io.reply(&sense::LUN_NOT_SUPPORTED.fixed(), u64::from(cdb.byte(4)))
            }
            _ => sense::LUN_NOT_SUPPORTED.into(),
        }
    }

    /// Run one request-queue chain.
    pub fn command(&self, mem: &Mem, descs: &[Desc]) -> Completion {
        let Some(f) = virtio::frame(mem, descs, CMD_REQ_LEN, CMD_RESP_LEN) else {
            ipc_proto::warn_limited!("virtio-scsi: request without room for a response dropped");
            return completion(0, resp::FAILURE);
        };
        let in_len = iobuf::total_len(&f.data_in);
        let answer = |response: u8, status: u8, sense: &[u8], written: usize| {
            let resid = u32::try_from(in_len - written.min(in_len)).unwrap_or(u32::MAX);
            virtio::write_cmd_resp(
                &f.resp,
                &CmdResp {
                    response,
                    status,
                    sense,
                    resid,
                },
            );
            completion(CMD_RESP_LEN + written, response)
        };
        if f.header.len() < CMD_REQ_LEN {
            ipc_proto::warn_limited!("virtio-scsi: request header too short");
            return answer(resp::FAILURE, 0, &[], 0);
        }
        let io = Io {
            data_in: &f.data_in,
            data_out: &f.data_out,
        };
        let cdb_bytes = &f.header[19..CMD_REQ_LEN];
        let outcome = match self.address(&f.header[..8]) {
            Addressed::Nothing => return answer(resp::BAD_TARGET, 0, &[], 0),
            Addressed::Lun(l) => match Cdb::parse(cdb_bytes) {
                Ok(c) if c.opcode() == op::REPORT_LUNS => self.report_luns(l.cfg.target, &c, &io),
                _ => commands::execute(l, cdb_bytes, &io),
            },
            Addressed::TargetOnly(t) => match Cdb::parse(cdb_bytes) {
                Ok(c) if c.opcode() == op::REPORT_LUNS => self.report_luns(t, &c, &io),
                Ok(c) => Self::absent_lun(&c, &io),
                Err(s) => s.into(),
            },
        };
        let check = |s: Sense| answer(resp::OK, STATUS_CHECK_CONDITION, &s.fixed(), 0);
        match outcome {
            Outcome::Good { data_in } => answer(resp::OK, STATUS_GOOD, &[], data_in),
            Outcome::Check(s) => check(s),
            Outcome::IoError(failure) => {
                let mut c = check(sense::IO_ERROR);
                c.failure = Some(failure);
                c
            }
            Outcome::Overrun => answer(resp::OVERRUN, 0, &[], 0),
        }
    }

    /// Run one control-queue chain.
    pub fn control(&self, mem: &Mem, descs: &[Desc]) -> Completion {
        // The type decides the layout; read it with a 4-byte header first.
        let Some(f) = virtio::frame(mem, descs, 24, 1) else {
            ipc_proto::warn_limited!(
                "virtio-scsi: control request without a response byte dropped"
            );
            return completion(0, resp::FAILURE);
        };
        let ty = f
            .header
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match ty {
            Some(virtio::T_TMF) if f.header.len() >= 24 => {
                let sub = u32::from_le_bytes([f.header[4], f.header[5], f.header[6], f.header[7]]);
                let r = self.task_management(sub, &f.header[8..16]);
                iobuf::scatter(&f.resp, &[r]);
                completion(1, r)
            }
            Some(virtio::T_AN_QUERY | virtio::T_AN_SUBSCRIBE) => {
                // struct virtio_scsi_ctrl_an_resp: event_actual (none
                // supported), response.
                let Some(f) = virtio::frame(mem, descs, 16, 5) else {
                    return completion(0, resp::FAILURE);
                };
                if f.header.len() < 16 {
                    iobuf::scatter(&f.resp, &[0, 0, 0, 0, resp::FAILURE]);
                    return completion(5, resp::FAILURE);
                }
                iobuf::scatter(&f.resp, &[0, 0, 0, 0, resp::OK]);
                completion(5, resp::OK)
            }
            _ => {
                ipc_proto::warn_limited!("virtio-scsi: bad control request {ty:?}");
                iobuf::scatter(&f.resp, &[resp::FAILURE]);
                completion(1, resp::FAILURE)
            }
        }
    }

    /// A task management function. Commands run to completion before
    /// their chain is released, so there is never a task to abort: the
    /// aborts and queries complete, resets give the units a unit
    /// attention (06/29/00).
    fn task_management(&self, subtype: u32, lun: &[u8]) -> u8 {
        let unit = match self.address(lun) {
            Addressed::Lun(l) => l,
            Addressed::TargetOnly(_) => return resp::INCORRECT_LUN,
            Addressed::Nothing => return resp::BAD_TARGET,
        };
        match subtype {
            tmf::ABORT_TASK
            | tmf::ABORT_TASK_SET
            | tmf::CLEAR_TASK_SET
            | tmf::QUERY_TASK
            | tmf::QUERY_TASK_SET => resp::FUNCTION_COMPLETE,
            tmf::LOGICAL_UNIT_RESET => {
                unit.reset();
                resp::FUNCTION_COMPLETE
            }
            tmf::I_T_NEXUS_RESET => {
                let t = unit.cfg.target;
                self.luns
                    .iter()
                    .filter(|u| u.cfg.target == t)
                    .for_each(|u| u.reset());
                resp::FUNCTION_COMPLETE
            }
            tmf::CLEAR_ACA => resp::FUNCTION_REJECTED,
            _ => resp::FUNCTION_REJECTED,
        }
    }
}
