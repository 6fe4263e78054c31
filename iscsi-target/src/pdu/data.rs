//! SCSI Data-Out and Data-In PDUs (RFC 7143 §11.7, §11.8).

use super::bhs::{u32be, BhsWriter, Common};
use super::scsi::Residual;
use super::{Itt, PduError, SeqNum, Ttt};
use crate::pdu::opcode::Opcode;

/// SCSI Data-Out (RFC 7143 §11.7): write data, unsolicited or answering an R2T.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOut {
    /// F: the last PDU of this sequence.
    pub final_: bool,
    /// LUN.
    pub lun: u64,
    /// ITT of the command.
    pub itt: Itt,
    /// TTT of the R2T answered, or 0xffffffff for unsolicited data.
    pub ttt: Ttt,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
    /// DataSN within the sequence.
    pub data_sn: u32,
    /// Offset of this payload in the command's data buffer.
    pub buffer_offset: u32,
}

impl DataOut {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, _) = u32be(rest)?;
        let (rest, exp_stat_sn) = u32be(rest)?;
        let (rest, _) = u32be(rest)?;
        let (rest, data_sn) = u32be(rest)?;
        let (_, buffer_offset) = u32be(rest)?;
        Ok(DataOut {
            final_: c.flags & 0x80 != 0,
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            exp_stat_sn: SeqNum(exp_stat_sn),
            data_sn,
            buffer_offset,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::DATA_OUT, false, u8::from(self.final_) << 7)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(28, self.exp_stat_sn.0)
            .u32(36, self.data_sn)
            .u32(40, self.buffer_offset)
    }
}

/// SCSI Data-In (RFC 7143 §11.8): read data, optionally with the status
/// collapsed into the last PDU (S bit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataIn {
    /// F: the last PDU of this sequence.
    pub final_: bool,
    /// A: acknowledge requested (ERL > 0 only).
    pub ack: bool,
    /// Residual (valid only with the S bit).
    pub residual: Residual,
    /// S: status is carried in this PDU.
    pub status: Option<u8>,
    /// LUN (with the A bit) or 0.
    pub lun: u64,
    /// ITT of the command.
    pub itt: Itt,
    /// TTT (0xffffffff unless A is set).
    pub ttt: Ttt,
    /// StatSN (only meaningful with S).
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
    /// DataSN.
    pub data_sn: u32,
    /// Offset of this payload in the command's buffer.
    pub buffer_offset: u32,
}

impl DataIn {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, stat_sn) = u32be(rest)?;
        let (rest, exp_cmd_sn) = u32be(rest)?;
        let (rest, max_cmd_sn) = u32be(rest)?;
        let (rest, data_sn) = u32be(rest)?;
        let (rest, buffer_offset) = u32be(rest)?;
        let (_, residual) = u32be(rest)?;
        let has_status = c.flags & 0x01 != 0;
        Ok(DataIn {
            final_: c.flags & 0x80 != 0,
            ack: c.flags & 0x40 != 0,
            residual: Residual::from_bits(c.flags, residual),
            status: has_status.then_some(c.b3),
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            stat_sn: SeqNum(stat_sn),
            exp_cmd_sn: SeqNum(exp_cmd_sn),
            max_cmd_sn: SeqNum(max_cmd_sn),
            data_sn,
            buffer_offset,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        let flags = u8::from(self.final_) << 7
            | u8::from(self.ack) << 6
            | self.residual.flag_bits()
            | u8::from(self.status.is_some());
        BhsWriter::new(Opcode::DATA_IN, false, flags)
            .u8(3, self.status.unwrap_or(0))
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(24, self.stat_sn.0)
            .u32(28, self.exp_cmd_sn.0)
            .u32(32, self.max_cmd_sn.0)
            .u32(36, self.data_sn)
            .u32(40, self.buffer_offset)
            .u32(44, self.residual.count())
    }
}
