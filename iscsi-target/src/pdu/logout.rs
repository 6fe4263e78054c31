//! Logout Request and Logout Response (RFC 7143 §11.14, §11.15).

use super::bhs::{u16be, u32be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum};
use crate::pdu::opcode::Opcode;

/// Logout Request (RFC 7143 §11.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    /// The I bit.
    pub immediate: bool,
    /// Reason: 0 close session, 1 close connection, 2 remove connection for
    /// recovery; others kept as sent.
    pub reason: u8,
    /// Initiator Task Tag.
    pub itt: Itt,
    /// CID of the connection to close (reasons 1 and 2).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: SeqNum,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
}

impl LogoutRequest {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, cid) = u16be(rest)?;
        let (rest, _) = u16be(rest)?;
        let (rest, cmd_sn) = u32be(rest)?;
        let (_, exp_stat_sn) = u32be(rest)?;
        Ok(LogoutRequest {
            immediate: c.immediate,
            reason: c.flags & 0x7f,
            itt: Itt(c.itt),
            cid,
            cmd_sn: SeqNum(cmd_sn),
            exp_stat_sn: SeqNum(exp_stat_sn),
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(
            Opcode::LOGOUT_REQUEST,
            self.immediate,
            0x80 | self.reason & 0x7f,
        )
        .u32(16, self.itt.0)
        .u16(20, self.cid)
        .u32(24, self.cmd_sn.0)
        .u32(28, self.exp_stat_sn.0)
    }
}

/// Logout Response (RFC 7143 §11.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    /// 0 closed successfully, 1 CID not found, 2 recovery not supported,
    /// 3 cleanup failed.
    pub response: u8,
    /// ITT of the request.
    pub itt: Itt,
    /// StatSN.
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
    /// Time2Wait (seconds).
    pub time2wait: u16,
    /// Time2Retain (seconds).
    pub time2retain: u16,
}

impl LogoutResponse {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, _) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (rest, _) = u32be(rest)?;
        let (rest, time2wait) = u16be(rest)?;
        let (_, time2retain) = u16be(rest)?;
        Ok(LogoutResponse {
            response: c.b2,
            itt: Itt(c.itt),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
            time2wait,
            time2retain,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::LOGOUT_RESPONSE, false, 0x80)
            .u8(2, self.response)
            .u32(16, self.itt.0)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
            .u16(40, self.time2wait)
            .u16(42, self.time2retain)
    }
}
