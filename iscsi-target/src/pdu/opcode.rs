//! iSCSI opcodes (RFC 7143 §11.2.1.2), kept as a newtype so that reserved and
//! unknown codes survive decoding and can be answered with a Reject PDU.

/// A 6-bit iSCSI opcode. Unknown values are kept, not mapped away.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Opcode(pub u8);

impl Opcode {
    /// NOP-Out (initiator).
    pub const NOP_OUT: Opcode = Opcode(0x00);
    /// SCSI Command (initiator).
    pub const SCSI_COMMAND: Opcode = Opcode(0x01);
    /// SCSI Task Management Function Request (initiator).
    pub const TASK_MGMT_REQUEST: Opcode = Opcode(0x02);
    /// Login Request (initiator).
    pub const LOGIN_REQUEST: Opcode = Opcode(0x03);
    /// Text Request (initiator).
    pub const TEXT_REQUEST: Opcode = Opcode(0x04);
    /// SCSI Data-Out (initiator).
    pub const DATA_OUT: Opcode = Opcode(0x05);
    /// Logout Request (initiator).
    pub const LOGOUT_REQUEST: Opcode = Opcode(0x06);
    /// SNACK Request (initiator).
    pub const SNACK_REQUEST: Opcode = Opcode(0x10);
    /// NOP-In (target).
    pub const NOP_IN: Opcode = Opcode(0x20);
    /// SCSI Response (target).
    pub const SCSI_RESPONSE: Opcode = Opcode(0x21);
    /// SCSI Task Management Function Response (target).
    pub const TASK_MGMT_RESPONSE: Opcode = Opcode(0x22);
    /// Login Response (target).
    pub const LOGIN_RESPONSE: Opcode = Opcode(0x23);
    /// Text Response (target).
    pub const TEXT_RESPONSE: Opcode = Opcode(0x24);
    /// SCSI Data-In (target).
    pub const DATA_IN: Opcode = Opcode(0x25);
    /// Logout Response (target).
    pub const LOGOUT_RESPONSE: Opcode = Opcode(0x26);
    /// Ready To Transfer (target).
    pub const R2T: Opcode = Opcode(0x31);
    /// Asynchronous Message (target).
    pub const ASYNC_MESSAGE: Opcode = Opcode(0x32);
    /// Reject (target).
    pub const REJECT: Opcode = Opcode(0x3f);

    /// Whether an initiator may send this opcode (RFC 7143 §11.2.1.2).
    pub fn is_initiator(self) -> bool {
        matches!(self.0, 0x00..=0x06 | 0x10)
    }
}
