//! SCSI Command and SCSI Response PDUs (RFC 7143 §11.3, §11.4).

use super::bhs::{u32be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum};
use crate::pdu::opcode::Opcode;

/// Task attributes (RFC 7143 §11.3.1.2, SAM-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttr {
    /// Untagged (0), treated as Simple.
    Untagged,
    /// Simple (1).
    Simple,
    /// Ordered (2).
    Ordered,
    /// Head of queue (3).
    HeadOfQueue,
    /// ACA (4).
    Aca,
    /// A reserved value (5-7), kept.
    Reserved(u8),
}

impl TaskAttr {
    fn from_bits(b: u8) -> Self {
        match b & 7 {
            0 => TaskAttr::Untagged,
            1 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            4 => TaskAttr::Aca,
            r => TaskAttr::Reserved(r),
        }
    }

    fn bits(self) -> u8 {
        match self {
            TaskAttr::Untagged => 0,
            TaskAttr::Simple => 1,
            TaskAttr::Ordered => 2,
            TaskAttr::HeadOfQueue => 3,
            TaskAttr::Aca => 4,
            TaskAttr::Reserved(r) => r & 7,
        }
    }
}

/// SCSI Command (RFC 7143 §11.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    /// The I bit: immediate delivery, CmdSN not advanced.
    pub immediate: bool,
    /// The F bit: no unsolicited Data-Out follows.
    pub final_: bool,
    /// The R bit: data flows to the initiator.
    pub read: bool,
    /// The W bit: data flows to the target.
    pub write: bool,
    /// Task attribute.
    pub attr: TaskAttr,
    /// The 8-byte LUN field (SAM-5 format).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: Itt,
    /// Expected Data Transfer Length in bytes.
    pub expected_len: u32,
    /// CmdSN.
    pub cmd_sn: SeqNum,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
    /// The 16-byte CDB field; a longer CDB continues in an Extended-CDB AHS.
    pub cdb: [u8; 16],
}

impl ScsiCommand {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, expected_len) = u32be(rest)?;
        let (rest, cmd_sn) = u32be(rest)?;
        let (rest, exp_stat_sn) = u32be(rest)?;
        let cdb: [u8; 16] = rest.try_into().map_err(|_| PduError::Truncated)?;
        Ok(ScsiCommand {
            immediate: c.immediate,
            final_: c.flags & 0x80 != 0,
            read: c.flags & 0x40 != 0,
            write: c.flags & 0x20 != 0,
            attr: TaskAttr::from_bits(c.flags),
            lun: c.lun,
            itt: Itt(c.itt),
            expected_len,
            cmd_sn: SeqNum(cmd_sn),
            exp_stat_sn: SeqNum(exp_stat_sn),
            cdb,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        let flags = u8::from(self.final_) << 7
            | u8::from(self.read) << 6
            | u8::from(self.write) << 5
            | self.attr.bits();
        BhsWriter::new(Opcode::SCSI_COMMAND, self.immediate, flags)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.expected_len)
            .u32(24, self.cmd_sn.0)
            .u32(28, self.exp_stat_sn.0)
            .bytes(32, &self.cdb)
    }
}

/// Residual over- or underflow as reported in SCSI Response and Data-In
/// (RFC 7143 §11.4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residual {
    /// The transfer length matched the expected length.
    #[default]
    None,
    /// The initiator expected more than was transferred (U bit).
    Underflow(u32),
    /// The command wanted more than the initiator expected (O bit).
    Overflow(u32),
}

impl Residual {
    /// The O and U flag bits as in byte 1 of SCSI Response / Data-In.
    pub fn flag_bits(self) -> u8 {
        match self {
            Residual::None => 0,
            Residual::Overflow(_) => 0x04,
            Residual::Underflow(_) => 0x02,
        }
    }

    /// The ResidualCount field.
    pub fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Underflow(n) | Residual::Overflow(n) => n,
        }
    }

    pub(crate) fn from_bits(flags: u8, count: u32) -> Self {
        if flags & 0x04 != 0 {
            Residual::Overflow(count)
        } else if flags & 0x02 != 0 {
            Residual::Underflow(count)
        } else {
            Residual::None
        }
    }
}

/// SCSI Response (RFC 7143 §11.4). The data segment carries SenseLength (2
/// bytes) followed by the sense data, when there is sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    /// Bidirectional read residual bits (o, u) as they appear in byte 1.
    pub bidi_flags: u8,
    /// The main residual.
    pub residual: Residual,
    /// iSCSI response code (0 = command completed at target).
    pub response: u8,
    /// SCSI status.
    pub status: u8,
    /// Initiator Task Tag.
    pub itt: Itt,
    /// SNACK tag.
    pub snack_tag: u32,
    /// StatSN.
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
    /// ExpDataSN: number of Data-In PDUs sent for this command.
    pub exp_data_sn: u32,
    /// Bidirectional read residual count.
    pub bidi_residual: u32,
}

impl ScsiResponse {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, snack_tag) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (rest, exp_data_sn) = u32be(rest)?;
        let (rest, bidi_residual) = u32be(rest)?;
        let (_, residual) = u32be(rest)?;
        Ok(ScsiResponse {
            bidi_flags: c.flags & 0x18,
            residual: Residual::from_bits(c.flags, residual),
            response: c.b2,
            status: c.b3,
            itt: Itt(c.itt),
            snack_tag,
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
            exp_data_sn,
            bidi_residual,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        let flags = 0x80 | (self.bidi_flags & 0x18) | self.residual.flag_bits();
        BhsWriter::new(Opcode::SCSI_RESPONSE, false, flags)
            .u8(2, self.response)
            .u8(3, self.status)
            .u32(16, self.itt.0)
            .u32(20, self.snack_tag)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
            .u32(36, self.exp_data_sn)
            .u32(40, self.bidi_residual)
            .u32(44, self.residual.count())
    }
}
