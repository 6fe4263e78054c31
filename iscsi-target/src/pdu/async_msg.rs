//! Asynchronous Message (RFC 7143 §11.9): target-initiated events such as
//! "please log out" on shutdown.

use super::bhs::{u16be, u32be, u8be, BhsWriter, Common};
use super::{PduError, SeqNum};
use crate::pdu::opcode::Opcode;

/// AsyncEvent codes (RFC 7143 §11.9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent(pub u8);

impl AsyncEvent {
    /// A SCSI asynchronous event (sense data in the data segment).
    pub const SCSI: AsyncEvent = AsyncEvent(0);
    /// The target requests a logout; Parameter3 is the time limit in seconds.
    pub const LOGOUT_REQUEST: AsyncEvent = AsyncEvent(1);
    /// The target will drop this connection.
    pub const DROP_CONNECTION: AsyncEvent = AsyncEvent(2);
    /// The target will drop all connections of the session.
    pub const DROP_SESSION: AsyncEvent = AsyncEvent(3);
    /// The target requests parameter renegotiation.
    pub const RENEGOTIATE: AsyncEvent = AsyncEvent(4);
}

/// Asynchronous Message (RFC 7143 §11.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    /// LUN (for SCSI events).
    pub lun: u64,
    /// StatSN.
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
    /// The event.
    pub event: AsyncEvent,
    /// Vendor code (event 255).
    pub vcode: u8,
    /// Parameter1..3 (meaning depends on the event).
    pub params: [u16; 3],
}

impl AsyncMessage {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, _) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (rest, event) = u8be(rest)?;
        let (rest, vcode) = u8be(rest)?;
        let (rest, p1) = u16be(rest)?;
        let (rest, p2) = u16be(rest)?;
        let (_, p3) = u16be(rest)?;
        Ok(AsyncMessage {
            lun: c.lun,
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
            event: AsyncEvent(event),
            vcode,
            params: [p1, p2, p3],
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::ASYNC_MESSAGE, false, 0x80)
            .u64(8, self.lun)
            .u32(16, 0xffff_ffff)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
            .u8(36, self.event.0)
            .u8(37, self.vcode)
            .u16(38, self.params[0])
            .u16(40, self.params[1])
            .u16(42, self.params[2])
    }
}
