//! SNACK Request (RFC 7143 §11.16). Locus runs ErrorRecoveryLevel 0, so a
//! SNACK is decoded only to be answered with a Reject.

use super::bhs::{u32be, BhsWriter, Common};
use super::{Itt, PduError, SeqNum, Ttt};
use crate::pdu::opcode::Opcode;

/// SNACK Request (RFC 7143 §11.16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnackRequest {
    /// SNACK type (0 Data/R2T, 1 Status, 2 DataACK, 3 R-Data).
    pub snack_type: u8,
    /// LUN.
    pub lun: u64,
    /// ITT.
    pub itt: Itt,
    /// TTT or SNACK tag.
    pub ttt: Ttt,
    /// ExpStatSN.
    pub exp_stat_sn: SeqNum,
    /// BegRun.
    pub beg_run: u32,
    /// RunLength.
    pub run_length: u32,
}

impl SnackRequest {
    pub(crate) fn decode(c: &Common, rest: &[u8]) -> Result<Self, PduError> {
        let (rest, ttt) = u32be(rest)?;
        let (rest, _) = u32be(rest)?;
        let (rest, exp_stat_sn) = u32be(rest)?;
        let (rest, _) = u32be(rest)?;
        let (rest, _) = u32be(rest)?;
        let (rest, beg_run) = u32be(rest)?;
        let (_, run_length) = u32be(rest)?;
        Ok(SnackRequest {
            snack_type: c.flags & 0x0f,
            lun: c.lun,
            itt: Itt(c.itt),
            ttt: Ttt(ttt),
            exp_stat_sn: SeqNum(exp_stat_sn),
            beg_run,
            run_length,
        })
    }

    pub(crate) fn encode(&self) -> BhsWriter {
        BhsWriter::new(Opcode::SNACK_REQUEST, false, 0x80 | self.snack_type & 0x0f)
            .u64(8, self.lun)
            .u32(16, self.itt.0)
            .u32(20, self.ttt.0)
            .u32(28, self.exp_stat_sn.0)
            .u32(40, self.beg_run)
            .u32(44, self.run_length)
    }
}
