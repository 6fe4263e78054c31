//! Transport-independent SCSI target (SAM-5, SPC-4, SBC-3).
//!
//! This module owns CDB parsing, command execution against a
//! [`drbd_like_sync::storage::BlockBackend`], sense data, unit attentions and
//! reservations. It knows nothing about iSCSI: the transport hands in a
//! [`ScsiRequest`] with all Data-Out already collected and gets back a
//! [`ScsiResponse`] with status, sense, Data-In and the residual. SCSI
//! failures are always a `ScsiResponse` with CHECK CONDITION (the
//! vhost-device-scsi pattern), never a Rust error.
//!
//! Layout: `opcodes` (the one table: CDB validation, transfer lengths,
//! reservation classes, REPORT SUPPORTED OPERATION CODES), `target` (LUN
//! map, residuals, resets), `lu` (per-LU state, dispatch), `gate` (task
//! attributes: the task set's admission order), and one file per
//! command family: `inquiry`, `rw`, `thin`, `mode`, `pr`, `xcopy`,
//! `sanitize`.
//!
//! Contract with the transport:
//! - `lun` is the decoded LUN number ([`lun_from_wire`]);
//! - `Nexus::initiator_port` must identify the I_T nexus across sessions
//!   (initiator name plus ISID): persistent reservations are keyed by it
//!   and the relative port;
//! - task attributes are honoured per LU (`gate`, SAM-5 §8.6): one task
//!   set shared by every nexus (Control mode page TST=000b), so an ORDERED
//!   task starts after every task that arrived at the LU before it, from
//!   any nexus, and before every later one; HEAD OF QUEUE starts at once,
//!   ahead of waiting tasks; SIMPLE tasks run in any order among themselves
//!   (QUEUE ALGORITHM MODIFIER 1). A command arrives when the transport
//!   calls [`ScsiTarget::submit`] (or first polls
//!   [`ScsiTarget::execute`]), so a transport that starts commands in
//!   CmdSN order gets that order;
//! - ABORT TASK / PREEMPT AND ABORT are the transport's (drop the response,
//!   or the future: a dropped future gives up its place in the task set);
//! - for block writes whose expected length is shorter than the CDB's
//!   transfer length, only the Data-Out that arrived is written and the
//!   overflow is reported (FCP-4 option a); parameter lists cut short are
//!   refused with INVALID FIELD IN COMMAND INFORMATION UNIT.

use bytes::Bytes;

mod cdb;
mod gate;
mod inquiry;
mod lu;
mod mode;
pub mod opcodes;
mod pr;
mod rw;
mod sanitize;
pub mod sense;
mod target;
mod thin;
mod xcopy;

pub use lu::{naa_from, LogicalUnit, LunConfig, LunError, DEFAULT_SANITIZE_RATE};
pub use sense::Sense;
pub use target::ScsiTarget;

/// The I_T nexus a command arrived on (SAM-5 4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexus {
    /// Transport-unique id of the nexus (e.g. the session id).
    pub id: u64,
    /// Initiator port name, e.g. `"iqn.1994-05.com.example:x,i,0x23d000000001"`.
    pub initiator_port: String,
    /// SPC-4 7.6.4 TransportID of the initiator port, pre-encoded by the transport.
    pub transport_id: Bytes,
    /// Relative target port identifier (SPC-4 7.8.6.7) the nexus uses.
    pub relative_port: u16,
}

/// Task attribute (SAM-5 8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    /// SIMPLE.
    Simple,
    /// ORDERED.
    Ordered,
    /// HEAD OF QUEUE.
    HeadOfQueue,
    /// ACA.
    Aca,
}

/// One SCSI command as delivered by the transport (SAM-5 5.1 Execute Command).
#[derive(Debug, Clone)]
pub struct ScsiRequest {
    /// Logical unit number (decoded, see [`lun_from_wire`]).
    pub lun: u64,
    /// The CDB.
    pub cdb: Bytes,
    /// Expected data transfer length in bytes (RFC 7143 11.3.4), either direction.
    pub expected_len: u32,
    /// All Data-Out collected by the transport, `len <= expected_len`.
    pub data_out: Bytes,
    /// Task attribute.
    pub attr: TaskAttr,
    /// The transport can send READ data straight from a backing file
    /// ([`ScsiResponse::data_in_file`]); false when it must see the bytes,
    /// for example to compute a data digest.
    pub zero_copy: bool,
}

/// SCSI status byte (SAM-5 5.3). Unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScsiStatus(pub u8);

impl ScsiStatus {
    /// GOOD.
    pub const GOOD: ScsiStatus = ScsiStatus(0x00);
    /// CHECK CONDITION; sense data accompanies it.
    pub const CHECK_CONDITION: ScsiStatus = ScsiStatus(0x02);
    /// CONDITION MET (PRE-FETCH with IMMED=0 and resources available).
    pub const CONDITION_MET: ScsiStatus = ScsiStatus(0x04);
    /// BUSY.
    pub const BUSY: ScsiStatus = ScsiStatus(0x08);
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: ScsiStatus = ScsiStatus(0x18);
    /// TASK SET FULL.
    pub const TASK_SET_FULL: ScsiStatus = ScsiStatus(0x28);
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: ScsiStatus = ScsiStatus(0x30);
    /// TASK ABORTED.
    pub const TASK_ABORTED: ScsiStatus = ScsiStatus(0x40);
}

/// Residual relative to the expected data transfer length (SAM-5 5.1,
/// RFC 7143 11.4.5): `Underflow(n)` when n fewer bytes than expected were
/// transferred, `Overflow(n)` when the command wanted n more bytes than
/// the expected length allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// Transfer length equals the expected length.
    None,
    /// Fewer bytes than expected.
    Underflow(u32),
    /// More bytes than expected (the excess was not transferred).
    Overflow(u32),
}

/// The outcome of a command (SAM-5 5.1).
#[derive(Debug, Clone)]
pub struct ScsiResponse {
    /// Status byte.
    pub status: ScsiStatus,
    /// Full sense data (fixed format, SPC-4 4.5.3) when `status` is CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// Data-In, already truncated to the expected length.
    pub data_in: Bytes,
    /// Data-In as a range of the backing file instead of `data_in` (which
    /// is then empty), also truncated; only when the request allowed
    /// `zero_copy`. The transport sends it from the page cache.
    pub data_in_file: Option<drbd_like_sync::storage::FileRange>,
    /// Residual against the expected length.
    pub residual: Residual,
}

impl ScsiResponse {
    /// CHECK CONDITION with `sense` and no data, for failures a transport
    /// detects before the command reaches the SCSI layer.
    pub fn check_condition(sense: Sense) -> Self {
        ScsiResponse {
            status: ScsiStatus::CHECK_CONDITION,
            sense: Some(sense.to_bytes()),
            data_in: Bytes::new(),
            data_in_file: None,
            residual: Residual::None,
        }
    }

    /// Decoded (key, asc, ascq) of the sense data, if any.
    pub fn sense_triple(&self) -> Option<(u8, u8, u8)> {
        let s = self.sense.as_ref()?;
        sense::parse_triple(s)
    }
}

/// Decode the 8-byte LUN field of a transport (SAM-5 4.6) into a LUN
/// number: peripheral device addressing (`00b`) and flat space (`01b`)
/// are supported; other formats map to `u64::MAX` (never configured).
pub fn lun_from_wire(raw: [u8; 8]) -> u64 {
    match raw[0] >> 6 {
        0 if raw[0] == 0 => u64::from(raw[1]),
        1 => (u64::from(raw[0] & 0x3f) << 8) | u64::from(raw[1]),
        _ => u64::MAX,
    }
}

/// Encode a LUN number for the wire (SAM-5 4.6): peripheral addressing
/// below 256, flat space addressing up to 16383.
pub fn lun_to_wire(lun: u64) -> [u8; 8] {
    let mut out = [0u8; 8];
    if lun < 256 {
        out[1] = lun as u8;
    } else {
        out[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        out[1] = lun as u8;
    }
    out
}
