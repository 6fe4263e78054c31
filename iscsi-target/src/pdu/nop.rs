//! NOP-Out and NOP-In (RFC 7143 §11.18, §11.19): pings in both directions,
//! used for keepalive and to learn the peer's sequence numbers.

use super::bhs::{reserved, u32be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum, Ttt};
use crate::pdu::opcode::Opcode;

/// NOP-Out (RFC 7143 §11.18), initiator to target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopOut {
    /// The I bit.
    pub immediate: bool,
    /// The LUN field (echoed, otherwise unused).
    pub lun: u64,
    /// 0xffffffff when this NOP-Out answers a NOP-In; otherwise it asks for one.
    pub itt: Itt,
    /// The TTT of the NOP-In this answers, or 0xffffffff.
    pub ttt: Ttt,
    /// CmdSN.
    pub cmd_sn: SeqNum,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
}

impl NopOut {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, cmd_sn) = u32be(rest)?;
        let (_, exp_stat_sn) = u32be(rest)?;
        Ok(NopOut {
            immediate: c.immediate,
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            cmd_sn: SeqNum(cmd_sn),
            exp_stat_sn: SeqNum(exp_stat_sn),
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::NOP_OUT, self.immediate, 0x80)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(24, self.cmd_sn.0)
            .u32(28, self.exp_stat_sn.0)
    }
}

/// NOP-In (RFC 7143 §11.19), target to initiator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopIn {
    /// The LUN field.
    pub lun: u64,
    /// The ITT of the NOP-Out this answers, or 0xffffffff for a target ping.
    pub itt: Itt,
    /// 0xffffffff, or a tag when the target asks for a NOP-Out answer.
    pub ttt: Ttt,
    /// StatSN (not advanced by a target ping).
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
}

impl NopIn {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (_, ()) = reserved(12)(rest)?;
        Ok(NopIn {
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::NOP_IN, false, 0x80)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
    }
}
