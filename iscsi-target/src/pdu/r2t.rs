//! Ready To Transfer (RFC 7143 §11.8 R2T): the target solicits write data.

use super::bhs::{u32be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum, Ttt};
use crate::pdu::opcode::Opcode;

/// R2T (RFC 7143 §11.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2t {
    /// LUN.
    pub lun: u64,
    /// ITT of the command.
    pub itt: Itt,
    /// Target Transfer Tag the Data-Out must echo.
    pub ttt: Ttt,
    /// StatSN (the next one; not advanced).
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
    /// R2TSN within the command.
    pub r2t_sn: u32,
    /// Offset of the solicited range.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length (at most MaxBurstLength).
    pub desired_len: u32,
}

impl R2t {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (rest, r2t_sn) = u32be(rest)?;
        let (rest, buffer_offset) = u32be(rest)?;
        let (_, desired_len) = u32be(rest)?;
        Ok(R2t {
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
            r2t_sn,
            buffer_offset,
            desired_len,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::R2T, false, 0x80)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
            .u32(36, self.r2t_sn)
            .u32(40, self.buffer_offset)
            .u32(44, self.desired_len)
    }
}
