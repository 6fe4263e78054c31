//! The one opcode table (SPC-4 / SBC-3): it drives CDB validation (length
//! and CDB usage masks, SPC-4 6.35.3), the data-transfer length used for
//! residuals, the reservation class of each command (SPC-4 5.13.1), and
//! REPORT SUPPORTED OPERATION CODES / REPORT SUPPORTED TASK MANAGEMENT
//! FUNCTIONS.

use bytes::Bytes;

use super::cdb::{be16, be32, u8_at};
use super::sense::{self, Sense};

/// How a command transfers data, for residual accounting (SAM-5 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfer {
    /// No data phase.
    None,
    /// Data-In; the residual follows from the data produced.
    In,
    /// Data-Out of `len` logical blocks, the length field at `off` of `size` bytes.
    Blocks {
        /// Offset of the TRANSFER LENGTH field.
        off: u8,
        /// Width of the field in bytes (1, 2 or 4).
        size: u8,
    },
    /// WRITE(6): one-byte length where 0 means 256 blocks.
    Blocks6,
    /// COMPARE AND WRITE: 2 x NUMBER OF LOGICAL BLOCKS.
    Caw,
    /// WRITE SAME: one block unless NDOB.
    WriteSame,
    /// VERIFY: Data-Out only when BYTCHK is set (01b: the whole range, 11b: one block).
    Verify {
        /// Offset of the VERIFICATION LENGTH field.
        off: u8,
        /// Width of the field in bytes.
        size: u8,
    },
    /// Data-Out parameter list whose length field is at `off` of `size` bytes.
    Param {
        /// Offset of the PARAMETER LIST LENGTH field.
        off: u8,
        /// Width of the field in bytes.
        size: u8,
    },
}

/// Reservation class of a command (SPC-4 5.13.1 table 42, SBC-3 4.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrClass {
    /// Allowed in the presence of any reservation.
    Allowed,
    /// Reads medium or state: conflicts with Exclusive Access types.
    Read,
    /// Modifies medium or state: conflicts with every type.
    Write,
    /// PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE: handled by their own rules.
    Own,
}

/// One row of the opcode table.
#[derive(Debug)]
pub struct OpInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action (in CDB byte 1 bits 4..0) when the opcode has them.
    pub sa: Option<u8>,
    /// Command name for logs.
    pub name: &'static str,
    /// CDB usage data: bit set = bit may be set (SPC-4 6.35.3). Its length
    /// is the CDB length.
    pub usage: &'static [u8],
    /// Data transfer.
    pub xfer: Xfer,
    /// Reservation class.
    pub pr: PrClass,
    /// Allowed while another I_T nexus holds a RESERVE(6)/(10) reservation (SPC-2 5.5.1).
    pub legacy_ok: bool,
    /// Executed at target level even for an unknown LUN.
    pub no_lun: bool,
}

const fn op(
    opcode: u8,
    sa: Option<u8>,
    name: &'static str,
    usage: &'static [u8],
    xfer: Xfer,
    pr: PrClass,
) -> OpInfo {
    OpInfo {
        opcode,
        sa,
        name,
        usage,
        xfer,
        pr,
        legacy_ok: false,
        no_lun: false,
    }
}

const fn free(mut o: OpInfo) -> OpInfo {
    o.legacy_ok = true;
    o
}

const fn nolun(mut o: OpInfo) -> OpInfo {
    o.legacy_ok = true;
    o.no_lun = true;
    o
}

use PrClass::{Allowed, Own, Read, Write};

const B10: Xfer = Xfer::Blocks { off: 7, size: 2 };
const B12: Xfer = Xfer::Blocks { off: 6, size: 4 };
const B16: Xfer = Xfer::Blocks { off: 10, size: 4 };

/// Operation codes (SPC-4 / SBC-3).
pub mod code {
    #![allow(missing_docs)]
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const SANITIZE: u8 = 0x48;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    /// SERVICE ACTION IN(16) service actions.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
    pub const SA_REPORT_SUPPORTED_TMF: u8 = 0x0d;
    /// SANITIZE service actions (SBC-4 5.30); CRYPTO ERASE (03h) is not
    /// supported: nothing is stored encrypted.
    pub const SA_SANITIZE_OVERWRITE: u8 = 0x01;
    pub const SA_SANITIZE_BLOCK_ERASE: u8 = 0x02;
    pub const SA_SANITIZE_EXIT_FAILURE_MODE: u8 = 0x1f;
}

use code::*;

/// The table. Order is the order of REPORT SUPPORTED OPERATION CODES.
#[rustfmt::skip]
pub static OPCODES: &[OpInfo] = &[
    op(TEST_UNIT_READY, None, "TEST UNIT READY", &[0x00, 0, 0, 0, 0, 0], Xfer::None, Allowed),
    nolun(op(REQUEST_SENSE, None, "REQUEST SENSE", &[0x03, 0x01, 0, 0, 0xff, 0], Xfer::In, Allowed)),
    op(READ_6, None, "READ(6)", &[0x08, 0x1f, 0xff, 0xff, 0xff, 0], Xfer::In, Read),
    op(WRITE_6, None, "WRITE(6)", &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0], Xfer::Blocks6, Write),
    nolun(op(INQUIRY, None, "INQUIRY", &[0x12, 0x01, 0xff, 0xff, 0xff, 0], Xfer::In, Allowed)),
    op(MODE_SELECT_6, None, "MODE SELECT(6)", &[0x15, 0x11, 0, 0, 0xff, 0], Xfer::Param { off: 4, size: 1 }, Write),
    op(RESERVE_6, None, "RESERVE(6)", &[0x16, 0, 0, 0, 0, 0], Xfer::None, Own),
    free(op(RELEASE_6, None, "RELEASE(6)", &[0x17, 0, 0, 0, 0, 0], Xfer::None, Own)),
    op(MODE_SENSE_6, None, "MODE SENSE(6)", &[0x1a, 0x08, 0xff, 0xff, 0xff, 0], Xfer::In, Read),
    op(START_STOP_UNIT, None, "START STOP UNIT", &[0x1b, 0x01, 0, 0x0f, 0xf7, 0], Xfer::None, Write),
    op(READ_CAPACITY_10, None, "READ CAPACITY(10)", &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0], Xfer::In, Allowed),
    op(READ_10, None, "READ(10)", &[0x28, 0x1e, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0], Xfer::In, Read),
    op(WRITE_10, None, "WRITE(10)", &[0x2a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0], B10, Write),
    op(WRITE_VERIFY_10, None, "WRITE AND VERIFY(10)", &[0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0], B10, Write),
    op(VERIFY_10, None, "VERIFY(10)", &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0], Xfer::Verify { off: 7, size: 2 }, Read),
    op(PRE_FETCH_10, None, "PRE-FETCH(10)", &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0], Xfer::None, Read),
    op(READ_DEFECT_DATA_10, None, "READ DEFECT DATA(10)", &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0], Xfer::In, Read),
    op(SYNCHRONIZE_CACHE_10, None, "SYNCHRONIZE CACHE(10)", &[0x35, 0x06, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0], Xfer::None, Write),
    op(WRITE_SAME_10, None, "WRITE SAME(10)", &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0], Xfer::WriteSame, Write),
    op(UNMAP, None, "UNMAP", &[0x42, 0, 0, 0, 0, 0, 0x3f, 0xff, 0xff, 0], Xfer::Param { off: 7, size: 2 }, Write),
    op(SANITIZE, Some(SA_SANITIZE_OVERWRITE), "SANITIZE / OVERWRITE", &SANITIZE_ROW, SANITIZE_XFER, Write),
    op(SANITIZE, Some(SA_SANITIZE_BLOCK_ERASE), "SANITIZE / BLOCK ERASE", &SANITIZE_ROW, SANITIZE_XFER, Write),
    op(SANITIZE, Some(SA_SANITIZE_EXIT_FAILURE_MODE), "SANITIZE / EXIT FAILURE MODE", &SANITIZE_ROW, SANITIZE_XFER, Write),
    op(MODE_SELECT_10, None, "MODE SELECT(10)", &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0], Xfer::Param { off: 7, size: 2 }, Write),
    op(RESERVE_10, None, "RESERVE(10)", &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], Xfer::None, Own),
    free(op(RELEASE_10, None, "RELEASE(10)", &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], Xfer::None, Own)),
    op(MODE_SENSE_10, None, "MODE SENSE(10)", &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0], Xfer::In, Read),
    op(PERSISTENT_RESERVE_IN, Some(0x00), "PERSISTENT RESERVE IN / READ KEYS", &PRIN_ROW, Xfer::In, Own),
    op(PERSISTENT_RESERVE_IN, Some(0x01), "PERSISTENT RESERVE IN / READ RESERVATION", &PRIN_ROW, Xfer::In, Own),
    op(PERSISTENT_RESERVE_IN, Some(0x02), "PERSISTENT RESERVE IN / REPORT CAPABILITIES", &PRIN_ROW, Xfer::In, Own),
    op(PERSISTENT_RESERVE_IN, Some(0x03), "PERSISTENT RESERVE IN / READ FULL STATUS", &PRIN_ROW, Xfer::In, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x00), "PERSISTENT RESERVE OUT / REGISTER", &PROUT_ROW, PROUT_XFER, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x01), "PERSISTENT RESERVE OUT / RESERVE", &PROUT_ROW, PROUT_XFER, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x02), "PERSISTENT RESERVE OUT / RELEASE", &PROUT_ROW, PROUT_XFER, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x03), "PERSISTENT RESERVE OUT / CLEAR", &PROUT_ROW, PROUT_XFER, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x04), "PERSISTENT RESERVE OUT / PREEMPT", &PROUT_ROW, PROUT_XFER, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x05), "PERSISTENT RESERVE OUT / PREEMPT AND ABORT", &PROUT_ROW, PROUT_XFER, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x06), "PERSISTENT RESERVE OUT / REGISTER AND IGNORE EXISTING KEY", &PROUT_ROW, PROUT_XFER, Own),
    op(PERSISTENT_RESERVE_OUT, Some(0x07), "PERSISTENT RESERVE OUT / REGISTER AND MOVE", &PROUT_ROW, PROUT_XFER, Own),
    op(EXTENDED_COPY, Some(0x00), "EXTENDED COPY(LID1)", &[0x83, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::Param { off: 10, size: 4 }, Write),
    op(RECEIVE_COPY_RESULTS, Some(0x00), "RECEIVE COPY RESULTS / COPY STATUS", &[0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Allowed),
    op(RECEIVE_COPY_RESULTS, Some(0x03), "RECEIVE COPY RESULTS / OPERATING PARAMETERS", &[0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Allowed),
    op(READ_16, None, "READ(16)", &[0x88, 0x1e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], Xfer::In, Read),
    op(COMPARE_AND_WRITE, None, "COMPARE AND WRITE", &[0x89, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x3f, 0], Xfer::Caw, Write),
    op(WRITE_16, None, "WRITE(16)", &[0x8a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], B16, Write),
    op(ORWRITE_16, None, "ORWRITE(16)", &[0x8b, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], B16, Write),
    op(WRITE_VERIFY_16, None, "WRITE AND VERIFY(16)", &[0x8e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], B16, Write),
    op(VERIFY_16, None, "VERIFY(16)", &[0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], Xfer::Verify { off: 10, size: 4 }, Read),
    op(PRE_FETCH_16, None, "PRE-FETCH(16)", &[0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], Xfer::None, Read),
    op(SYNCHRONIZE_CACHE_16, None, "SYNCHRONIZE CACHE(16)", &[0x91, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], Xfer::None, Write),
    op(WRITE_SAME_16, None, "WRITE SAME(16)", &[0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], Xfer::WriteSame, Write),
    op(WRITE_ATOMIC_16, None, "WRITE ATOMIC(16)", &[0x9c, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0x3f, 0], Xfer::Blocks { off: 12, size: 2 }, Write),
    op(SERVICE_ACTION_IN_16, Some(SA_READ_CAPACITY_16), "READ CAPACITY(16)", &[0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0], Xfer::In, Allowed),
    op(SERVICE_ACTION_IN_16, Some(SA_GET_LBA_STATUS), "GET LBA STATUS", &[0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Read),
    nolun(op(REPORT_LUNS, None, "REPORT LUNS", &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Allowed)),
    free(op(MAINTENANCE_IN, Some(SA_REPORT_TARGET_PORT_GROUPS), "REPORT TARGET PORT GROUPS", &[0xa3, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Allowed)),
    free(op(MAINTENANCE_IN, Some(SA_REPORT_SUPPORTED_OPCODES), "REPORT SUPPORTED OPERATION CODES", &[0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Allowed)),
    free(op(MAINTENANCE_IN, Some(SA_REPORT_SUPPORTED_TMF), "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", &[0xa3, 0x1f, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Allowed)),
    op(READ_12, None, "READ(12)", &[0xa8, 0x1e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], Xfer::In, Read),
    op(WRITE_12, None, "WRITE(12)", &[0xaa, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], B12, Write),
    op(WRITE_VERIFY_12, None, "WRITE AND VERIFY(12)", &[0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], B12, Write),
    op(VERIFY_12, None, "VERIFY(12)", &[0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0], Xfer::Verify { off: 6, size: 4 }, Read),
    op(READ_DEFECT_DATA_12, None, "READ DEFECT DATA(12)", &[0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], Xfer::In, Read),
];

/// SANITIZE (SBC-4 5.30): IMMED, AUSE, SERVICE ACTION; PARAMETER LIST LENGTH.
const SANITIZE_ROW: [u8; 10] = [0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0];
const SANITIZE_XFER: Xfer = Xfer::Param { off: 7, size: 2 };
const PROUT_XFER: Xfer = Xfer::Param { off: 5, size: 4 };
const PROUT_ROW: [u8; 10] = [0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0];
const PRIN_ROW: [u8; 10] = [0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0];

/// Result of looking a CDB up in [`OPCODES`].
#[derive(Debug)]
pub enum Lookup {
    /// A supported command.
    Found(&'static OpInfo),
    /// Unsupported operation code (05/20/00).
    UnknownOpcode,
    /// Supported opcode with an unsupported service action (05/24/00, byte 1).
    UnknownServiceAction,
}

/// Whether an opcode carries a service action in byte 1.
pub fn has_service_action(opcode: u8) -> bool {
    OPCODES.iter().any(|o| o.opcode == opcode && o.sa.is_some())
}

/// Index of the first table row of each opcode (`u16::MAX`: unsupported).
fn first_row() -> &'static [u16; 256] {
    static INDEX: std::sync::OnceLock<[u16; 256]> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut idx = [u16::MAX; 256];
        for (i, o) in OPCODES.iter().enumerate().rev() {
            idx[usize::from(o.opcode)] = i as u16;
        }
        idx
    })
}

/// Find the table row for `opcode` / `sa` (`sa` ignored for opcodes without).
pub fn find(opcode: u8, sa: u8) -> Lookup {
    // Rows of one opcode are contiguous; start at the first one (O(1) for
    // the READ/WRITE hot path instead of a scan of the whole table).
    let start = match first_row()[usize::from(opcode)] {
        u16::MAX => return Lookup::UnknownOpcode,
        i => usize::from(i),
    };
    let mut seen = false;
    for o in &OPCODES[start..] {
        if o.opcode != opcode {
            break;
        }
        seen = true;
        match o.sa {
            None => return Lookup::Found(o),
            Some(s) if s == sa => return Lookup::Found(o),
            Some(_) => {}
        }
    }
    if seen {
        Lookup::UnknownServiceAction
    } else {
        Lookup::UnknownOpcode
    }
}

/// Look a CDB up and validate it against the usage mask: a short CDB or a
/// bit set outside the mask is INVALID FIELD IN CDB with a field pointer.
pub fn decode(cdb: &[u8]) -> Result<&'static OpInfo, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(sense::INVALID_OPCODE);
    };
    let info = match find(opcode, u8_at(cdb, 1) & 0x1f) {
        Lookup::Found(o) => o,
        Lookup::UnknownOpcode => return Err(sense::INVALID_OPCODE),
        Lookup::UnknownServiceAction => return Err(Sense::invalid_cdb_field(1, Some(4))),
    };
    if cdb.len() < info.usage.len() {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    for (i, (&b, &m)) in cdb.iter().zip(info.usage).enumerate().skip(1) {
        let bad = b & !m;
        if bad != 0 {
            let bit = 7 - bad.leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(i as u16, Some(bit)));
        }
    }
    Ok(info)
}

/// Data-Out length in bytes the CDB asks for (SPDTL for writes).
pub fn data_out_len(info: &OpInfo, cdb: &[u8], block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    match info.xfer {
        Xfer::None | Xfer::In => 0,
        Xfer::Blocks { off, size } => {
            let n = match size {
                2 => u64::from(be16(cdb, off.into())),
                _ => u64::from(be32(cdb, off.into())),
            };
            n * bs
        }
        Xfer::Blocks6 => {
            let n = u64::from(u8_at(cdb, 4));
            if n == 0 {
                256 * bs
            } else {
                n * bs
            }
        }
        Xfer::Verify { off, size } => match (u8_at(cdb, 1) >> 1) & 3 {
            0 | 2 => 0,
            1 => {
                let n = match size {
                    2 => u64::from(be16(cdb, off.into())),
                    _ => u64::from(be32(cdb, off.into())),
                };
                n * bs
            }
            _ => bs,
        },
        Xfer::Caw => 2 * u64::from(u8_at(cdb, 13)) * bs,
        Xfer::WriteSame => {
            if info.opcode == WRITE_SAME_16 && u8_at(cdb, 1) & 1 != 0 {
                0
            } else {
                bs
            }
        }
        Xfer::Param { off, size } => match size {
            1 => u64::from(u8_at(cdb, off.into())),
            2 => u64::from(be16(cdb, off.into())),
            _ => u64::from(be32(cdb, off.into())),
        },
    }
}

fn one_command_descriptor(o: &OpInfo, rctd: bool) -> Vec<u8> {
    let mut d = vec![0u8; 2];
    d[1] = 0x03; // SUPPORT: supported according to the standard
    if rctd {
        d[1] |= 0x80; // CTDP
    }
    d.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
    d.extend_from_slice(o.usage);
    if rctd {
        d.extend_from_slice(&timeouts_descriptor());
    }
    d
}

fn timeouts_descriptor() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a; // DESCRIPTOR LENGTH
    t[4..8].copy_from_slice(&30u32.to_be_bytes()); // nominal seconds
    t[8..12].copy_from_slice(&60u32.to_be_bytes()); // recommended timeout
    t
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35). Returns the full
/// parameter data (the caller truncates to ALLOCATION LENGTH).
pub fn report_supported_opcodes(cdb: &[u8]) -> Result<Bytes, Sense> {
    let rctd = u8_at(cdb, 2) & 0x80 != 0;
    let options = u8_at(cdb, 2) & 0x07;
    let req_op = u8_at(cdb, 3);
    let req_sa = be16(cdb, 4);
    match options {
        0 => {
            let mut out = vec![0u8; 4];
            for o in OPCODES {
                let mut d = [0u8; 8];
                d[0] = o.opcode;
                if let Some(sa) = o.sa {
                    d[2..4].copy_from_slice(&u16::from(sa).to_be_bytes());
                    d[5] |= 0x01; // SERVACTV
                }
                if rctd {
                    d[5] |= 0x02; // CTDP
                }
                d[6..8].copy_from_slice(&(o.usage.len() as u16).to_be_bytes());
                out.extend_from_slice(&d);
                if rctd {
                    out.extend_from_slice(&timeouts_descriptor());
                }
            }
            let len = (out.len() - 4) as u32;
            out[0..4].copy_from_slice(&len.to_be_bytes());
            Ok(out.into())
        }
        1 => {
            if has_service_action(req_op) {
                return Err(Sense::invalid_cdb_field(3, None));
            }
            Ok(match find(req_op, 0) {
                Lookup::Found(o) => one_command_descriptor(o, rctd).into(),
                _ => not_supported(),
            })
        }
        2 | 3 => {
            if options == 2 && !has_service_action(req_op) {
                return Err(Sense::invalid_cdb_field(3, None));
            }
            let found = if has_service_action(req_op) {
                u8::try_from(req_sa).ok().map(|sa| find(req_op, sa))
            } else if req_sa == 0 {
                Some(find(req_op, 0))
            } else {
                None
            };
            Ok(match found {
                Some(Lookup::Found(o)) => one_command_descriptor(o, rctd).into(),
                _ => not_supported(),
            })
        }
        _ => Err(Sense::invalid_cdb_field(2, Some(2))),
    }
}

fn not_supported() -> Bytes {
    // SUPPORT = 001b: not supported; no CDB usage data.
    Bytes::from_static(&[0, 0x01, 0, 0])
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.37): ABORT TASK,
/// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, QUERY TASK,
/// TARGET RESET, and (REPD) the extended format.
pub fn report_supported_tmf(cdb: &[u8]) -> Bytes {
    let repd = u8_at(cdb, 2) & 0x80 != 0;
    // ATS ATSS CACAS CTSS LURS QTS TRS WAKES
    let b0 = 0x80 | 0x40 | 0x10 | 0x08 | 0x04 | 0x02;
    if repd {
        let mut v = vec![0u8; 16];
        v[0] = b0;
        v[3] = 0x0c; // ADDITIONAL DATA LENGTH
        Bytes::from(v)
    } else {
        Bytes::from(vec![b0, 0, 0, 0])
    }
}
