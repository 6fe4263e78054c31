//! Text Request and Text Response PDUs (RFC 7143 §11.10, §11.11). The keys
//! they carry are handled in `crate::login`.

use super::bhs::{u32be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum, Ttt};
use crate::pdu::opcode::Opcode;

/// Text Request (RFC 7143 §11.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRequest {
    /// The I bit.
    pub immediate: bool,
    /// F: the last PDU of this text exchange.
    pub final_: bool,
    /// C: text continues in the next PDU.
    pub cont: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: Itt,
    /// Target Transfer Tag (continuation), or 0xffffffff.
    pub ttt: Ttt,
    /// CmdSN.
    pub cmd_sn: SeqNum,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
}

impl TextRequest {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, cmd_sn) = u32be(rest)?;
        let (_, exp_stat_sn) = u32be(rest)?;
        Ok(TextRequest {
            immediate: c.immediate,
            final_: c.flags & 0x80 != 0,
            cont: c.flags & 0x40 != 0,
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            cmd_sn: SeqNum(cmd_sn),
            exp_stat_sn: SeqNum(exp_stat_sn),
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        let flags = u8::from(self.final_) << 7 | u8::from(self.cont) << 6;
        BhsWriter::new(Opcode::TEXT_REQUEST, self.immediate, flags)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(24, self.cmd_sn.0)
            .u32(28, self.exp_stat_sn.0)
    }
}

/// Text Response (RFC 7143 §11.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextResponse {
    /// F: the last response of this exchange.
    pub final_: bool,
    /// C: text continues in the next PDU.
    pub cont: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: Itt,
    /// Target Transfer Tag: 0xffffffff when final, otherwise a continuation tag.
    pub ttt: Ttt,
    /// StatSN.
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
}

impl TextResponse {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (_, max_cmd_sn) = u32be(rest)?;
        Ok(TextResponse {
            final_: c.flags & 0x80 != 0,
            cont: c.flags & 0x40 != 0,
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        let flags = u8::from(self.final_) << 7 | u8::from(self.cont) << 6;
        BhsWriter::new(Opcode::TEXT_RESPONSE, false, flags)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
    }
}
