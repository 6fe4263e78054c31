//! Reject PDU (RFC 7143 §11.17): the target refuses a PDU it cannot process.
//! The data segment carries the complete header of the rejected PDU.

use super::bhs::{u32be, BhsWriter, Common};
use super::{PduError, SeqNum};
use crate::pdu::opcode::Opcode;

/// Reject reason codes (RFC 7143 §11.17.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectReason(pub u8);

impl RejectReason {
    /// Data (payload) digest error.
    pub const DATA_DIGEST_ERROR: RejectReason = RejectReason(0x02);
    /// SNACK reject.
    pub const SNACK_REJECT: RejectReason = RejectReason(0x03);
    /// Protocol error (e.g. SNACK for a status already acknowledged).
    pub const PROTOCOL_ERROR: RejectReason = RejectReason(0x04);
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: RejectReason = RejectReason(0x05);
    /// Immediate command reject: too many immediate commands.
    pub const IMMEDIATE_COMMAND_REJECT: RejectReason = RejectReason(0x06);
    /// Task in progress.
    pub const TASK_IN_PROGRESS: RejectReason = RejectReason(0x07);
    /// Invalid data ACK.
    pub const INVALID_DATA_ACK: RejectReason = RejectReason(0x08);
    /// Invalid PDU field.
    pub const INVALID_PDU_FIELD: RejectReason = RejectReason(0x09);
    /// Long operation reject: out of resources.
    pub const LONG_OP_REJECT: RejectReason = RejectReason(0x0a);
    /// Waiting for logout.
    pub const WAITING_FOR_LOGOUT: RejectReason = RejectReason(0x0c);
}

/// Reject (RFC 7143 §11.17).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The reason.
    pub reason: RejectReason,
    /// StatSN.
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
    /// DataSN/R2TSN (data SNACK rejects only), else 0.
    pub data_sn: u32,
}

impl Reject {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, _) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (_, data_sn) = u32be(rest)?;
        Ok(Reject {
            reason: RejectReason(c.b2),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
            data_sn,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::REJECT, false, 0x80)
            .u8(2, self.reason.0)
            .u32(16, 0xffff_ffff)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
            .u32(36, self.data_sn)
    }
}
