//! Sense data (SPC-4 4.5): keys, additional sense codes, and fixed-format
//! encoding with INFORMATION and sense-key-specific field pointers.

use bytes::Bytes;

/// Sense keys (SPC-4 4.5.6 table 27).
pub mod key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// COPY ABORTED.
    pub const COPY_ABORTED: u8 = 0xa;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xb;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xe;
}

/// Fixed-format sense data with the fields this target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (VALID bit set when present).
    pub info: Option<u32>,
    /// Sense-key-specific bytes 15..18 (SKSV is set by the constructor).
    pub sks: Option<[u8; 3]>,
}

impl Sense {
    /// A sense triple without INFORMATION or field pointer.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            sks: None,
        }
    }

    /// Add an INFORMATION field.
    pub const fn with_info(mut self, info: u32) -> Self {
        self.info = Some(info);
        self
    }

    /// INVALID FIELD IN CDB with a field pointer to `byte` (and `bit` if given)
    /// (SPC-4 4.5.2.4.2).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        Sense::invalid_field(true, byte, bit)
    }

    /// INVALID FIELD IN PARAMETER LIST with a field pointer.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        Sense::invalid_field(false, byte, bit)
    }

    const fn invalid_field(cdb: bool, byte: u16, bit: Option<u8>) -> Self {
        let mut b0 = 0x80u8;
        if cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = bit {
            b0 |= 0x08 | (bit & 7);
        }
        let asc = if cdb { 0x24 } else { 0x26 };
        Sense {
            key: key::ILLEGAL_REQUEST,
            asc,
            ascq: 0,
            info: None,
            sks: Some([b0, (byte >> 8) as u8, byte as u8]),
        }
    }

    /// Encode as 18-byte fixed-format sense data (response code 0x70).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        if let Some(info) = self.info {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sks {
            b[15..18].copy_from_slice(&sks);
            b[15] |= 0x80;
        }
        Bytes::copy_from_slice(&b)
    }
}

/// Decode (key, asc, ascq) from fixed or descriptor sense data.
pub fn parse_triple(s: &[u8]) -> Option<(u8, u8, u8)> {
    match s.first()? & 0x7f {
        0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0xf, s[12], s[13])),
        0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0xf, s[2], s[3])),
        _ => None,
    }
}

/// INVALID COMMAND OPERATION CODE (05/20/00).
pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
/// LOGICAL BLOCK ADDRESS OUT OF RANGE (05/21/00).
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
/// INVALID FIELD IN CDB (05/24/00) without a field pointer.
pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
/// LOGICAL UNIT NOT SUPPORTED (05/25/00).
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
/// INVALID FIELD IN PARAMETER LIST (05/26/00).
pub const INVALID_FIELD_IN_PARAM: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
/// PARAMETER LIST LENGTH ERROR (05/1A/00).
pub const PARAM_LIST_LENGTH_ERROR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
/// SAVING PARAMETERS NOT SUPPORTED (05/39/00).
pub const SAVING_PARAMS_UNSUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
/// INVALID FIELD IN COMMAND INFORMATION UNIT (05/0E/03).
pub const INVALID_FIELD_IN_IU: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x0e, 0x03);
/// INVALID RELEASE OF PERSISTENT RESERVATION (05/26/04).
pub const INVALID_RELEASE_OF_PR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04);
/// INSUFFICIENT REGISTRATION RESOURCES (05/55/04).
pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x55, 0x04);
/// TOO MANY SEGMENT DESCRIPTORS / too many UNMAP descriptors (05/26/08 is
/// "TOO MANY SEGMENT DESCRIPTORS"; UNMAP uses INVALID FIELD IN PARAMETER LIST).
pub const TOO_MANY_SEGMENT_DESCRIPTORS: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x08);
/// MISCOMPARE DURING VERIFY OPERATION (0E/1D/00).
pub const MISCOMPARE_VERIFY: Sense = Sense::new(key::MISCOMPARE, 0x1d, 0x00);
/// WRITE PROTECTED (07/27/00).
pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
/// LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS (02/04/1B) (SBC-4 4.11.4).
pub const SANITIZE_IN_PROGRESS: Sense = Sense::new(key::NOT_READY, 0x04, 0x1b);
/// SANITIZE COMMAND FAILED (03/31/03): the LU is in sanitize failure mode
/// (SBC-4 4.11.5).
pub const SANITIZE_FAILED: Sense = Sense::new(key::MEDIUM_ERROR, 0x31, 0x03);
/// SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07).
pub const SPACE_ALLOC_FAILED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x07);
/// UNRECOVERED READ ERROR (03/11/00).
pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
/// WRITE ERROR (03/0C/00).
pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
/// ABORTED COMMAND / DATA PHASE ERROR: the transport could not collect the
/// command's data (e.g. a Data-Out out of sequence).
pub const DATA_PHASE_ERROR: Sense = Sense::new(key::ABORTED_COMMAND, 0x4b, 0x00);
/// INTERNAL TARGET FAILURE (04/44/00).
pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(key::HARDWARE_ERROR, 0x44, 0x00);
/// NO ADDITIONAL SENSE INFORMATION.
pub const NO_SENSE: Sense = Sense::new(key::NO_SENSE, 0, 0);
/// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (06/29/00).
pub const UA_POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
/// BUS DEVICE RESET FUNCTION OCCURRED (06/29/03), after LOGICAL UNIT RESET.
pub const UA_BUS_DEVICE_RESET: (u8, u8) = (0x29, 0x03);
/// MODE PARAMETERS CHANGED (06/2A/01).
pub const UA_MODE_PARAMS_CHANGED: (u8, u8) = (0x2a, 0x01);
/// RESERVATIONS PREEMPTED (06/2A/03).
pub const UA_RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
/// RESERVATIONS RELEASED (06/2A/04).
pub const UA_RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
/// REPORTED LUNS DATA HAS CHANGED (06/3F/0E).
pub const UA_LUNS_CHANGED: (u8, u8) = (0x3f, 0x0e);
/// REGISTRATIONS PREEMPTED (06/2A/05).
pub const UA_REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
