//! Task Management Function Request and Response (RFC 7143 §11.5, §11.6).

use super::bhs::{u32be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum};
use crate::pdu::opcode::Opcode;

/// The task management function code (RFC 7143 §11.5.1), unknown values kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TmfFunction(pub u8);

impl TmfFunction {
    /// ABORT TASK.
    pub const ABORT_TASK: TmfFunction = TmfFunction(1);
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: TmfFunction = TmfFunction(2);
    /// CLEAR ACA.
    pub const CLEAR_ACA: TmfFunction = TmfFunction(3);
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: TmfFunction = TmfFunction(4);
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: TmfFunction = TmfFunction(5);
    /// TARGET WARM RESET.
    pub const TARGET_WARM_RESET: TmfFunction = TmfFunction(6);
    /// TARGET COLD RESET.
    pub const TARGET_COLD_RESET: TmfFunction = TmfFunction(7);
    /// TASK REASSIGN.
    pub const TASK_REASSIGN: TmfFunction = TmfFunction(8);
}

/// TMF response codes (RFC 7143 §11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TmfResponseCode(pub u8);

impl TmfResponseCode {
    /// Function complete.
    pub const COMPLETE: TmfResponseCode = TmfResponseCode(0);
    /// Task does not exist.
    pub const NO_TASK: TmfResponseCode = TmfResponseCode(1);
    /// LUN does not exist.
    pub const NO_LUN: TmfResponseCode = TmfResponseCode(2);
    /// Task still allegiant.
    pub const STILL_ALLEGIANT: TmfResponseCode = TmfResponseCode(3);
    /// Task allegiance reassignment not supported.
    pub const REASSIGN_UNSUPPORTED: TmfResponseCode = TmfResponseCode(4);
    /// Task management function not supported.
    pub const NOT_SUPPORTED: TmfResponseCode = TmfResponseCode(5);
    /// Function authorization failed.
    pub const AUTH_FAILED: TmfResponseCode = TmfResponseCode(6);
    /// Function rejected.
    pub const REJECTED: TmfResponseCode = TmfResponseCode(255);
}

/// Task Management Function Request (RFC 7143 §11.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    /// The I bit.
    pub immediate: bool,
    /// The function.
    pub function: TmfFunction,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag of this request.
    pub itt: Itt,
    /// Referenced Task Tag (ABORT TASK).
    pub ref_itt: Itt,
    /// CmdSN.
    pub cmd_sn: SeqNum,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
    /// RefCmdSN (ABORT TASK).
    pub ref_cmd_sn: SeqNum,
    /// ExpDataSN.
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ref_itt) = u32be(rest)?;
        let (rest, cmd_sn) = u32be(rest)?;
        let (rest, exp_stat_sn) = u32be(rest)?;
        let (rest, ref_cmd_sn) = u32be(rest)?;
        let (_, exp_data_sn) = u32be(rest)?;
        Ok(TaskMgmtRequest {
            immediate: c.immediate,
            function: TmfFunction(c.flags & 0x7f),
            lun: c.lun,
            itt: Itt(c.itt),
            ref_itt: Itt(ref_itt),
            cmd_sn: SeqNum(cmd_sn),
            exp_stat_sn: SeqNum(exp_stat_sn),
            ref_cmd_sn: SeqNum(ref_cmd_sn),
            exp_data_sn,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(
            Opcode::TASK_MGMT_REQUEST,
            self.immediate,
            0x80 | self.function.0 & 0x7f,
        )
        .u64(8, self.lun)
        .u32(16, self.itt.0)
        .u32(20, self.ref_itt.0)
        .u32(24, self.cmd_sn.0)
        .u32(28, self.exp_stat_sn.0)
        .u32(32, self.ref_cmd_sn.0)
        .u32(36, self.exp_data_sn)
    }
}

/// Task Management Function Response (RFC 7143 §11.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    /// The response code.
    pub response: TmfResponseCode,
    /// ITT of the request.
    pub itt: Itt,
    /// StatSN.
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
}

impl TaskMgmtResponse {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, _) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (_, max_cmd_sn) = u32be(rest)?;
        Ok(TaskMgmtResponse {
            response: TmfResponseCode(c.b2),
            itt: Itt(c.itt),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::TASK_MGMT_RESPONSE, false, 0x80)
            .u8(2, self.response.0)
            .u32(16, self.itt.0)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
    }
}
