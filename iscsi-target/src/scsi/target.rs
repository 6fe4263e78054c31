//! The SCSI target device: the LUN map, target-level commands (REPORT
//! LUNS, and INQUIRY / REQUEST SENSE for unknown LUNs), task management
//! resets, and the conversion of handler results into [`ScsiResponse`]
//! with residuals (SAM-5 4.6, 5.1; RFC 7143 11.4.5 for residual semantics).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::cdb::{be32, u8_at};
use super::gate::{self, Ticket};
use super::lu::{request_sense_data, truncate, Ctx, Fail, LogicalUnit, Payload};
use super::opcodes::{self, code::*, Xfer};
use super::sense::{self, Sense};
use super::{lun_to_wire, Nexus, Residual, ScsiRequest, ScsiResponse, ScsiStatus};

/// A SCSI target device with a run-time changeable set of logical units.
#[derive(Debug)]
pub struct ScsiTarget {
    name: String,
    luns: RwLock<BTreeMap<u64, Arc<LogicalUnit>>>,
}

impl ScsiTarget {
    /// A target with no LUNs; `target_name` appears in VPD 0x83 (SCSI name string).
    pub fn new(target_name: &str) -> Self {
        ScsiTarget {
            name: target_name.to_string(),
            luns: RwLock::new(BTreeMap::new()),
        }
    }

    /// The target name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Add or replace a LU. The other LUs queue REPORTED LUNS DATA HAS
    /// CHANGED (06/3F/0E) for their nexuses (SPC-4 6.33).
    pub fn add_lun(&self, lun: u64, lu: Arc<LogicalUnit>) {
        self.luns
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lun, Arc::clone(&lu));
        self.inventory_changed(&lu);
    }

    /// Remove a LU; commands in flight keep their `Arc`. The remaining LUs
    /// queue REPORTED LUNS DATA HAS CHANGED for their nexuses.
    pub fn remove_lun(&self, lun: u64) {
        let gone = self
            .luns
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lun);
        if let Some(gone) = gone {
            self.inventory_changed(&gone);
        }
    }

    fn inventory_changed(&self, except: &Arc<LogicalUnit>) {
        for lu in self.all() {
            if !Arc::ptr_eq(&lu, except) {
                lu.lock().ua_others(None, sense::UA_LUNS_CHANGED);
            }
        }
    }

    /// The LU at `lun`, if any.
    pub fn lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.luns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&lun)
            .cloned()
    }

    /// Configured LUN numbers, ascending.
    pub fn lun_ids(&self) -> Vec<u64> {
        self.luns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Execute one command (SAM-5 5.1). Never panics; every SCSI failure
    /// is a response with CHECK CONDITION or RESERVATION CONFLICT.
    /// Cancel safety: dropping the future may leave a write half done,
    /// as an aborted task may (SAM-5 7.2).
    ///
    /// The command takes its place in its LU's task set when the future is
    /// first polled; a transport that starts commands concurrently uses
    /// [`ScsiTarget::submit`], which takes it at the call.
    pub async fn execute(&self, nexus: &Nexus, req: ScsiRequest) -> ScsiResponse {
        let ticket = self.lun(req.lun).map(|lu| gate::arrive(lu, req.attr));
        self.run(nexus, req, ticket).await
    }

    /// Starts one command: it takes its place in its LU's task set now, in
    /// the order of the calls (SAM-5 §8.6: ORDERED and HEAD OF QUEUE are
    /// ordered by arrival at the LU), and the returned future runs it as
    /// [`ScsiTarget::execute`] does once the task attribute lets it.
    /// Dropping the future before it finishes gives the place up.
    pub fn submit(
        self: &Arc<Self>,
        nexus: Arc<Nexus>,
        req: ScsiRequest,
    ) -> impl std::future::Future<Output = ScsiResponse> + Send + 'static {
        let ticket = self.lun(req.lun).map(|lu| gate::arrive(lu, req.attr));
        let target = Arc::clone(self);
        async move { target.run(&nexus, req, ticket).await }
    }

    /// Waits for the task set to let the command in, then runs it.
    async fn run(
        &self,
        nexus: &Nexus,
        req: ScsiRequest,
        ticket: Option<Ticket<Arc<LogicalUnit>>>,
    ) -> ScsiResponse {
        let entered = match ticket {
            Some(t) => Some(t.enter().await),
            None => None,
        };
        let lu = entered.as_ref().map(|e| e.owner());
        let info = match opcodes::decode(&req.cdb) {
            Ok(i) => i,
            Err(s) => {
                // Unknown LUN takes precedence over an unknown opcode.
                let s = if lu.is_none() {
                    sense::LUN_NOT_SUPPORTED
                } else {
                    s
                };
                return failed(&req, Fail::Check(s), 0);
            }
        };
        let bs = lu.map_or(512, |l| l.block_size);
        let spdtl = opcodes::data_out_len(info, &req.cdb, bs);
        // Data-Out beyond the expected length: the initiator cannot send it
        // (FCP-4 / RFC 7143: option b, no data transferred).
        let edtl = u64::from(req.expected_len);
        match info.xfer {
            // COMPARE AND WRITE and WRITE SAME check their exact Data-Out
            // length themselves, after the write-protect check.
            Xfer::Caw | Xfer::WriteSame => {}
            // Block writes with less Data-Out than the CDB asks for write what
            // arrived and report the overflow (FCP-4 9.4.2 option a).
            Xfer::Blocks { .. } | Xfer::Blocks6 => {}
            // Parameter lists cut short by the expected length: refuse, no
            // data is used (option b).
            _ if spdtl > edtl => {
                let r = Fail::Check(sense::INVALID_FIELD_IN_IU);
                return failed(&req, r, spdtl);
            }
            _ => {}
        }
        let ctx = Ctx {
            nexus,
            req: &req,
            info,
            target_name: &self.name,
            target: self,
        };
        let result = match (lu, info.opcode) {
            (lu, REPORT_LUNS) => {
                if let Some(lu) = lu {
                    lu.lock().clear_ua(nexus.id, sense::UA_LUNS_CHANGED);
                }
                self.report_luns(&req.cdb).map(Payload::Mem)
            }
            (Some(lu), _) => lu.execute(&ctx).await,
            (None, INQUIRY) => super::inquiry::inquiry_no_lun(&req.cdb).map(Payload::Mem),
            (None, REQUEST_SENSE) => Ok(Payload::Mem(request_sense_data(
                &req.cdb,
                sense::LUN_NOT_SUPPORTED,
            ))),
            (None, _) => Err(Fail::Check(sense::LUN_NOT_SUPPORTED)),
        };
        match result {
            Ok(data) => good(&req, info.xfer, data, spdtl),
            Err(f) => failed(&req, f, spdtl),
        }
    }

    /// REPORT LUNS (SPC-4 6.33). SELECT REPORT 0, 1 and 2 all list every LUN.
    fn report_luns(&self, cdb: &[u8]) -> Result<Bytes, Fail> {
        let select = u8_at(cdb, 2);
        if select > 2 {
            return Err(Sense::invalid_cdb_field(2, None).into());
        }
        let alloc = be32(cdb, 6);
        if alloc < 16 {
            return Err(Sense::invalid_cdb_field(6, None).into());
        }
        let ids = self.lun_ids();
        let mut out = Vec::with_capacity(8 + 8 * ids.len());
        out.extend_from_slice(&((ids.len() * 8) as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for id in ids {
            out.extend_from_slice(&lun_to_wire(id));
        }
        Ok(truncate(out.into(), alloc))
    }

    /// A new I_T nexus exists (an iSCSI session logged in): each LU
    /// establishes POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00)
    /// for it (SPC-4 5.14, SAM-5 6.3.1), reported on its first command other
    /// than INQUIRY, REPORT LUNS and REQUEST SENSE. The LU also knows the
    /// nexus from now on, so later reset and reservation UAs reach it even
    /// before it addresses the LU.
    pub fn nexus_created(&self, nexus: &Nexus) {
        for lu in self.all() {
            lu.nexus_created(nexus);
        }
    }

    /// The session is gone: release RESERVE(6)/(10) reservations it held.
    /// Persistent reservations and registrations stay (SPC-4 5.13.1).
    pub fn nexus_lost(&self, nexus_id: u64) {
        for lu in self.all() {
            lu.nexus_lost(nexus_id);
        }
    }

    /// LOGICAL UNIT RESET (SAM-5 7.7): clears RESERVE(6)/(10) and queues a
    /// BUS DEVICE RESET FUNCTION OCCURRED UA for every I_T nexus of the LU,
    /// the requesting one included (SAM-5 6.3.3); PRs stay.
    /// Returns false if the LUN does not exist.
    pub fn lun_reset(&self, lun: u64, by: &Nexus) -> bool {
        tracing::debug!(lun, nexus = by.id, "logical unit reset");
        match self.lun(lun) {
            Some(lu) => {
                lu.reset(None, sense::UA_BUS_DEVICE_RESET);
                true
            }
            None => false,
        }
    }

    /// TARGET (WARM/COLD) RESET (SAM-5 7.10, RFC 7143 11.5.1): every LU is
    /// reset; every nexus still known (the requester included) gets POWER
    /// ON, RESET... (29/00) for a warm reset and POWER ON OCCURRED (29/01)
    /// for a cold one. The transport drops its sessions on a cold reset.
    pub fn target_reset(&self, by: &Nexus, cold: bool) {
        tracing::debug!(nexus = by.id, cold, "target reset");
        let ua = if cold {
            (0x29, 0x01)
        } else {
            sense::UA_POWER_ON_RESET
        };
        for lu in self.all() {
            lu.reset(None, ua);
        }
    }

    /// Flush every LU's backend (graceful shutdown). Errors are logged.
    pub async fn flush_all(&self) {
        for lu in self.all() {
            if let Err(e) = lu.backend.flush().await {
                tracing::warn!(error = %e, serial = %lu.cfg.serial, "flush failed");
            }
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<LogicalUnit>> {
        self.luns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Residual of a Data-Out command: SPDTL against EDTL.
fn out_residual(expected: u32, spdtl: u64) -> Residual {
    let e = u64::from(expected);
    if spdtl > e {
        Residual::Overflow(u32::try_from(spdtl - e).unwrap_or(u32::MAX))
    } else if spdtl < e {
        Residual::Underflow((e - spdtl) as u32)
    } else {
        Residual::None
    }
}

fn good(req: &ScsiRequest, xfer: Xfer, data: Payload, spdtl: u64) -> ScsiResponse {
    let n = match &data {
        Payload::Mem(b) => b.len(),
        Payload::File(r) => r.len(),
    };
    let (keep, residual) = if xfer == Xfer::In || n > 0 {
        let e = req.expected_len as usize;
        if n > e {
            let over = u32::try_from(n - e).unwrap_or(u32::MAX);
            (e, Residual::Overflow(over))
        } else {
            (n, out_residual(req.expected_len, n as u64))
        }
    } else {
        (0, out_residual(req.expected_len, spdtl))
    };
    let (data_in, data_in_file) = match data {
        Payload::Mem(b) => (b.slice(..keep), None),
        Payload::File(r) => (Bytes::new(), Some(r.slice(0, keep))),
    };
    ScsiResponse {
        status: ScsiStatus::GOOD,
        sense: None,
        data_in,
        data_in_file,
        residual,
    }
}

fn failed(req: &ScsiRequest, f: Fail, spdtl: u64) -> ScsiResponse {
    let (status, sense) = match f {
        Fail::Check(s) => (ScsiStatus::CHECK_CONDITION, Some(s.to_bytes())),
        Fail::Conflict => (ScsiStatus::RESERVATION_CONFLICT, None),
        Fail::Aborted => (ScsiStatus::TASK_ABORTED, None),
    };
    ScsiResponse {
        status,
        sense,
        data_in: Bytes::new(),
        data_in_file: None,
        residual: out_residual(req.expected_len, spdtl),
    }
}
