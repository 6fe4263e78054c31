//! iSCSI sessions and connections: the login phase driver, the full-feature
//! event loop, Data-Out collection, the CmdSN window, task management, and the
//! registry that enforces session reinstatement (RFC 7143 §4.3, §6.3.5), and
//! the throttle that slows repeated failed authentication.
//!
//! Locus negotiates MaxConnections=1, so a session has exactly one connection
//! and this module treats the two as one. It owns the iSCSI transport; SCSI
//! semantics live in [`crate::scsi`], key negotiation in [`crate::login`].

mod connection;
mod ffp;
mod io;
mod registry;
mod throttle;
mod tmf;
mod window;
mod write_task;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

pub use connection::{serve_connection, ConnectionContext, TargetLookup};
pub use ffp::Ending;
pub use registry::{SessionKey, SessionRegistry};
pub use throttle::{AuthThrottle, BackoffPolicy};
pub use window::{Admission, CmdWindow};
pub use write_task::{DataOutError, R2tRequest, WriteTask};

/// The per-connection values the full-feature phase runs with: the outcome of
/// login negotiation (RFC 7143 §13) plus Locus's own limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnParams {
    /// Our MaxRecvDataSegmentLength: the largest data segment we accept.
    pub max_recv_data_segment_length: u32,
    /// The initiator's MaxRecvDataSegmentLength: the largest we may send.
    pub max_xmit_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    /// Commands admitted at once (the CmdSN window).
    pub queue_depth: u32,
    /// The largest write we buffer (bytes); larger ones are refused.
    pub max_write_buffer: u32,
    /// Idle time before a NOP-In ping.
    pub nop_interval: Duration,
    /// Time a ping may go unanswered before the peer counts as dead.
    pub nop_timeout: Duration,
    /// Time the initiator has to log out after an Async logout request.
    pub logout_grace: Duration,
}

impl Default for ConnParams {
    /// RFC 7143 defaults for the negotiated values; Locus defaults otherwise.
    fn default() -> Self {
        ConnParams {
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            header_digest: false,
            data_digest: false,
            queue_depth: 128,
            max_write_buffer: 32 << 20,
            nop_interval: Duration::from_secs(15),
            nop_timeout: Duration::from_secs(30),
            logout_grace: Duration::from_secs(3),
        }
    }
}

/// Signals a session listens to: a graceful shutdown (send an Async logout
/// request, then close) and an immediate close (session reinstatement).
pub struct SessionControl {
    /// Becomes `true` when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Notified when another login reinstates this session.
    pub kill: Arc<Notify>,
}

/// Answers Text Requests in the full-feature phase (SendTargets, RFC 7143
/// Appendix C). `request` is the raw key=value data; the answer is encoded.
pub trait TextResponder: Send + Sync {
    /// The Text Response data for `request`, or `None` when the request is
    /// malformed (answered with a Reject).
    fn respond(&self, request: &[u8]) -> Option<Bytes>;
}

/// The SCSI view of an iSCSI I_T nexus: the initiator port name
/// `<InitiatorName>,i,0x<ISID>` (RFC 7143 §4.4.1) and its TransportID
/// (SPC-4 §7.6.4.6, format 01b: iSCSI name with ISID, protocol 5).
pub fn iscsi_nexus(id: u64, initiator: &str, isid: [u8; 6]) -> crate::scsi::Nexus {
    let port = format!("{},i,0x{}", initiator, hex::encode(isid));
    let mut tid = Vec::with_capacity(port.len() + 8);
    tid.push(0x40 | 0x05);
    tid.push(0);
    // The name is NUL-terminated and padded to a multiple of 4 bytes.
    let name_len = (port.len() + 1 + 3) & !3;
    tid.extend_from_slice(&(name_len as u16).to_be_bytes());
    tid.extend_from_slice(port.as_bytes());
    tid.resize(4 + name_len, 0);
    crate::scsi::Nexus {
        id,
        initiator_port: port,
        transport_id: Bytes::from(tid),
        relative_port: 1,
    }
}
