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

    /// The unit a LUN field addresses, if it exists.
    pub fn lun_at(&self, lun: &[u8]) -> Option<&Arc<Lun>> {
        match self.address(lun) {
            Addressed::Lun(l) => Some(l),
            Addressed::TargetOnly(_) | Addressed::Nothing => None,
        }
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
        let addressed = self.address(&f.header[..8]);
        let device = match &addressed {
            Addressed::Lun(l) => l.cfg.device_id.as_str(),
            Addressed::TargetOnly(_) | Addressed::Nothing => "",
        };
        let outcome = match addressed {
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
        let (response, status, key) = match &outcome {
            Outcome::Good { .. } => (resp::OK, STATUS_GOOD, (0, 0, 0)),
            Outcome::Check(s) => (resp::OK, STATUS_CHECK_CONDITION, (s.key, s.asc, s.ascq)),
            Outcome::IoError(_) => {
                let s = sense::IO_ERROR;
                (resp::OK, STATUS_CHECK_CONDITION, (s.key, s.asc, s.ascq))
            }
            Outcome::Overrun => (resp::OVERRUN, STATUS_GOOD, (0, 0, 0)),
        };
        ipc_proto::trace_point!(crate::trace::scsi_command(
            device,
            cdb_bytes[0],
            response,
            status,
            key
        ));
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

#[cfg(test)]
mod tests {
    use ipc_proto::scsi::{ScsiLunConfig, ScsiLunKind};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::block::null::NullDriver;
    use crate::block::Node;
    use crate::scsi::lun::Notifier;
    use crate::vring::VRING_DESC_F_WRITE;

    const HDR: u64 = 0x100;
    const RESP: u64 = 0x1000;
    const DATA: u64 = 0x2000;

    fn targets() -> Targets {
        let unit = |target, lun, id: &str| {
            let cfg = ScsiLunConfig {
                device_id: id.into(),
                target,
                lun,
                kind: ScsiLunKind::Cd,
                node_name: Some("n".into()),
                writable: false,
                tray_open: false,
                locked: false,
                serial: String::new(),
                logical_block_size: 2048,
            };
            let node = Arc::new(Node::new(
                "n".into(),
                Box::new(NullDriver::new(1 << 20)),
                true,
            ));
            let n = Notifier {
                export_id: "scsi0".into(),
                events: None,
            };
            Arc::new(Lun::new(cfg, Some(node), n))
        };
        Targets::new(vec![unit(0, 0, "cd0"), unit(2, 300, "cd1")])
    }

    fn d(addr: u64, len: u32, w: bool) -> Desc {
        Desc {
            addr,
            len,
            flags: if w { VRING_DESC_F_WRITE } else { 0 },
            next: 0,
        }
    }

    /// Run `cdb` at (target, lun) with `room` bytes of data-in; the
    /// completion, response code, status, sense key/asc and the data.
    fn cmd(
        t: &Targets,
        target: u8,
        lun: u16,
        cdb: &[u8],
        room: u32,
    ) -> (Completion, [u8; 4], Vec<u8>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut h = [0u8; CMD_REQ_LEN];
        h[0] = 1;
        h[1] = target;
        h[2] = 0x40 | (lun >> 8) as u8;
        h[3] = lun as u8;
        h[19..19 + cdb.len()].copy_from_slice(cdb);
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let mut descs = vec![
            d(HDR, CMD_REQ_LEN as u32, false),
            d(RESP, CMD_RESP_LEN as u32, true),
        ];
        if room > 0 {
            descs.push(d(DATA, room, true));
        }
        let c = t.command(&mem, &descs);
        let mut r = [0u8; CMD_RESP_LEN];
        mem.read_slice(&mut r, GuestAddress(RESP)).unwrap();
        let mut data = vec![0u8; room as usize];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        (c, [r[11], r[10], r[14], r[24]], data)
    }

    #[test]
    fn inquiry_through_the_chain_answers_good_with_data_and_residual() {
        let t = targets();
        let (c, r, data) = cmd(&t, 0, 0, &[0x12, 0, 0, 0, 36, 0], 64);
        assert_eq!(r, [resp::OK, STATUS_GOOD, 0, 0]);
        assert_eq!(c.used_len as usize, CMD_RESP_LEN + 36);
        assert_eq!(data[0], 5);
    }

    #[test]
    fn absent_targets_and_luns_answer_as_qemu() {
        let t = targets();
        assert_eq!(cmd(&t, 1, 0, &[0], 0).1[0], resp::BAD_TARGET);
        // Target 2 exists (LUN 300): LUN 0 there is absent.
        let (_, r, data) = cmd(&t, 2, 0, &[0x12, 0, 0, 0, 36, 0], 36);
        assert_eq!((r[1], data[0]), (STATUS_GOOD, 0x7f));
        assert_eq!(
            cmd(&t, 2, 0, &[0], 0).1,
            [resp::OK, STATUS_CHECK_CONDITION, 5, 0x25]
        );
        // REPORT LUNS lists LUN 0 and 300 at target 2.
        let (_, r, data) = cmd(&t, 2, 0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], 64);
        assert_eq!(r[1], STATUS_GOOD);
        assert_eq!(
            &data[..24],
            &[0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0x2c, 0, 0, 0, 0, 0, 0]
        );
        // An allocation length under 16 is invalid.
        assert_eq!(
            cmd(&t, 0, 0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8).1[3],
            0x24
        );
    }

    #[test]
    fn a_logical_unit_reset_leaves_a_unit_attention() {
        let t = targets();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut req = [0u8; 24];
        req[4] = tmf::LOGICAL_UNIT_RESET as u8;
        req[8] = 1;
        mem.write_slice(&req, GuestAddress(HDR)).unwrap();
        let c = t.control(&mem, &[d(HDR, 24, false), d(RESP, 1, true)]);
        assert_eq!((c.used_len, c.status), (1, Some(resp::FUNCTION_COMPLETE)));
        assert_eq!(
            cmd(&t, 0, 0, &[0], 0).1,
            [resp::OK, STATUS_CHECK_CONDITION, 6, 0x29]
        );
        assert_eq!(cmd(&t, 0, 0, &[0], 0).1, [resp::OK, STATUS_GOOD, 0, 0]);
    }

    #[test]
    fn short_headers_fail_and_chains_without_a_response_area_are_dropped() {
        let t = targets();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let c = t.command(
            &mem,
            &[d(HDR, 20, false), d(RESP, CMD_RESP_LEN as u32, true)],
        );
        assert_eq!(c.status, Some(resp::FAILURE));
        let c = t.command(
            &mem,
            &[d(HDR, CMD_REQ_LEN as u32, false), d(RESP, 100, true)],
        );
        assert_eq!(c.used_len, 0);
        let c = t.command(
            &mem,
            &[d(HDR, CMD_REQ_LEN as u32, false), d(1 << 40, 200, true)],
        );
        assert_eq!(c.used_len, 0);
    }

    #[test]
    fn random_chains_and_cdbs_never_panic() {
        let t = targets();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut h = [0u8; CMD_REQ_LEN];
            h.iter_mut().for_each(|b| *b = rnd() as u8);
            h[0] = 1;
            h[1] = (rnd() % 3) as u8;
            h[2] = 0;
            h[3] = 0;
            mem.write_slice(&h, GuestAddress(HDR)).unwrap();
            let n = (rnd() % 5) as usize;
            let mut descs: Vec<Desc> = (0..n)
                .map(|_| Desc {
                    addr: rnd() % (1 << 20),
                    len: match rnd() % 3 {
                        0 => rnd() as u32,
                        _ => (rnd() % 8192) as u32,
                    },
                    flags: (rnd() % 4) as u16,
                    next: 0,
                })
                .collect();
            if i % 2 == 0 {
                descs.insert(0, d(HDR, CMD_REQ_LEN as u32, false));
                descs.insert(1, d(RESP, CMD_RESP_LEN as u32, true));
            }
            let c = if i % 7 == 0 {
                t.control(&mem, &descs)
            } else {
                t.command(&mem, &descs)
            };
            assert!(c.used_len as usize <= 1 << 20);
        }
    }
}
