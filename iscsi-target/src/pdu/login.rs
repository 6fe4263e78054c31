//! Login Request and Login Response PDUs (RFC 7143 §11.12, §11.13). The text
//! keys they carry are negotiated in `crate::login`; this file is layout only.

use super::bhs::{u16be, u32be, u8be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum};
use crate::pdu::opcode::Opcode;

/// The T, C, CSG and NSG fields of byte 1 of a login PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginFlags {
    /// T: the sender wants to move to the next stage.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub cont: bool,
    /// Current stage (0 security, 1 operational, 3 full feature).
    pub csg: u8,
    /// Next stage.
    pub nsg: u8,
}

impl LoginFlags {
    fn from_byte(b: u8) -> Self {
        LoginFlags {
            transit: b & 0x80 != 0,
            cont: b & 0x40 != 0,
            csg: (b >> 2) & 3,
            nsg: b & 3,
        }
    }

    fn byte(self) -> u8 {
        u8::from(self.transit) << 7 | u8::from(self.cont) << 6 | (self.csg & 3) << 2 | self.nsg & 3
    }
}

/// Login Request (RFC 7143 §11.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    /// Stage flags.
    pub flags: LoginFlags,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// Initiator part of the session id.
    pub isid: [u8; 6],
    /// Target-assigned session identifying handle (0 for a new session).
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: Itt,
    /// Connection id.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: SeqNum,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
}

impl LoginRequest {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, cid) = u16be(rest)?;
        let (rest, _) = u16be(rest)?;
        let (rest, cmd_sn) = u32be(rest)?;
        let (_, exp_stat_sn) = u32be(rest)?;
        let l = c.lun.to_be_bytes();
        Ok(LoginRequest {
            flags: LoginFlags::from_byte(c.flags),
            version_max: c.b2,
            version_min: c.b3,
            isid: [l[0], l[1], l[2], l[3], l[4], l[5]],
            tsih: u16::from_be_bytes([l[6], l[7]]),
            itt: Itt(c.itt),
            cid,
            cmd_sn: SeqNum(cmd_sn),
            exp_stat_sn: SeqNum(exp_stat_sn),
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::LOGIN_REQUEST, true, self.flags.byte())
            .u8(2, self.version_max)
            .u8(3, self.version_min)
            .bytes(8, &self.isid)
            .u16(14, self.tsih)
            .u32(16, self.itt.0)
            .u16(20, self.cid)
            .u32(24, self.cmd_sn.0)
            .u32(28, self.exp_stat_sn.0)
    }
}

/// Login Response (RFC 7143 §11.13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    /// Stage flags.
    pub flags: LoginFlags,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID, echoed.
    pub isid: [u8; 6],
    /// TSIH (set on the final response of a leading login).
    pub tsih: u16,
    /// Initiator Task Tag, echoed.
    pub itt: Itt,
    /// StatSN.
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
    /// Status-Class (RFC 7143 §11.13.5).
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
}

impl LoginResponse {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, _) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (rest, status_class) = u8be(rest)?;
        let (_, status_detail) = u8be(rest)?;
        let l = c.lun.to_be_bytes();
        Ok(LoginResponse {
            flags: LoginFlags::from_byte(c.flags),
            version_max: c.b2,
            version_active: c.b3,
            isid: [l[0], l[1], l[2], l[3], l[4], l[5]],
            tsih: u16::from_be_bytes([l[6], l[7]]),
            itt: Itt(c.itt),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
            status_class,
            status_detail,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::LOGIN_RESPONSE, false, self.flags.byte())
            .u8(2, self.version_max)
            .u8(3, self.version_active)
            .bytes(8, &self.isid)
            .u16(14, self.tsih)
            .u32(16, self.itt.0)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
            .u8(36, self.status_class)
            .u8(37, self.status_detail)
    }
}
