//! The protocol layer's one error enum, and the stable wire codes that
//! errors travel as.

use super::Opcode;

/// A stable error code on the wire, in `Error` responses and `Fatal`
/// frames. A newtype, so codes from newer peers are kept, not refused.
///
/// Codes below 0x0100 are per-request outcomes; the connection carries on.
/// Codes from 0x0100 are connection faults, sent in a `Fatal` frame before
/// the sender closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request's generation is older than one this copy has seen; the
    /// detail field carries the newest generation seen (invariant 4,
    /// ARCHITECTURE.md). The writer has lost its lease and must stop.
    pub const FENCED: ErrorCode = ErrorCode(0x0001);
    /// The copy's disk is full.
    pub const NO_SPACE: ErrorCode = ErrorCode(0x0002);
    /// The copy's disk failed the I/O.
    pub const IO: ErrorCode = ErrorCode(0x0003);
    /// The range lies (partly) outside the image, or a length is invalid.
    pub const OUT_OF_RANGE: ErrorCode = ErrorCode(0x0004);
    /// This node holds no copy of the named image.
    pub const UNKNOWN_IMAGE: ErrorCode = ErrorCode(0x0005);
    /// The request's opcode or flags are not supported by this node.
    pub const UNSUPPORTED: ErrorCode = ErrorCode(0x0006);
    /// Malformed frame or a message out of place (connection fault).
    pub const PROTOCOL: ErrorCode = ErrorCode(0x0100);
    /// The peers speak different protocol versions (connection fault).
    pub const VERSION_MISMATCH: ErrorCode = ErrorCode(0x0101);
    /// A handshake proof did not verify: wrong cluster secret, or a
    /// replayed or garbled proof (connection fault).
    pub const AUTH_FAILED: ErrorCode = ErrorCode(0x0102);

    /// A short name for logs; `None` for codes this build does not know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::FENCED => "fenced",
            Self::NO_SPACE => "no space",
            Self::IO => "I/O error",
            Self::OUT_OF_RANGE => "out of range",
            Self::UNKNOWN_IMAGE => "unknown image",
            Self::UNSUPPORTED => "unsupported",
            Self::PROTOCOL => "protocol error",
            Self::VERSION_MISMATCH => "version mismatch",
            Self::AUTH_FAILED => "authentication failed",
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#06x})", self.0),
            None => write!(f, "code {:#06x}", self.0),
        }
    }
}

/// Everything that can go wrong in the protocol layer: framing and body
/// faults from [`decode`](super::decode), and handshake outcomes from the
/// handshake machines. After any of these the connection is closed; a
/// handshake machine has already produced the `Fatal` frame to send first,
/// and [`ProtoError::wire_code`] gives the code for other cases.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The header announces a body larger than our limit. Raised on the 6
    /// header bytes alone, before anything is reserved.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLong {
        /// Announced `body_len`.
        len: u32,
        /// Our [`Limits::max_body_len`](super::Limits).
        max: u32,
    },
    /// The body ended before a field its opcode requires.
    #[error("{opcode} body truncated")]
    Truncated {
        /// The frame's opcode.
        opcode: Opcode,
    },
    /// The body is longer than its opcode's fields.
    #[error("{opcode} body has {extra} trailing bytes")]
    TrailingBytes {
        /// The frame's opcode.
        opcode: Opcode,
        /// Bytes left over.
        extra: usize,
    },
    /// A hello did not start with [`MAGIC`](super::MAGIC): not our protocol.
    #[error("bad magic {found:02x?}: the peer does not speak the Locus replication protocol")]
    BadMagic {
        /// The 8 bytes received instead.
        found: [u8; 8],
    },
    /// An image name or node id that blockmap's rules refuse.
    #[error("invalid {what} in {opcode}")]
    BadName {
        /// "image name" or "node id".
        what: &'static str,
        /// The frame's opcode.
        opcode: Opcode,
        /// Why the name is invalid.
        #[source]
        source: Box<blockmap::Error>,
    },
    /// A `text` field longer than [`MAX_TEXT_LEN`](super::MAX_TEXT_LEN) or
    /// not UTF-8.
    #[error("invalid text field in {opcode}: {why}")]
    BadText {
        /// The frame's opcode.
        opcode: Opcode,
        /// "too long" or "not UTF-8".
        why: &'static str,
    },
    /// Reserved flag bits set.
    #[error("reserved flags {flags:#04x} set in {opcode}")]
    BadFlags {
        /// The frame's opcode.
        opcode: Opcode,
        /// The flags byte received.
        flags: u8,
    },
    /// The peer speaks another protocol version. Raised on both sides: by
    /// the side that sees the other's hello, and by the side that receives
    /// the `Fatal` frame saying so.
    #[error(
        "protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}"
    )]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// A proof did not verify (wrong cluster secret, replayed or garbled
    /// proof), or the peer reported that ours did not. Raised on both sides.
    #[error("authentication failed: {0}")]
    AuthFailed(&'static str),
    /// The peer closed the handshake with a `Fatal` frame of another code.
    #[error("peer refused the connection: {code}: {message}")]
    PeerFatal {
        /// The code it sent.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// A message that has no place in the handshake's current state.
    #[error("unexpected {got} during the handshake (in state {state})")]
    Unexpected {
        /// The state the machine was in.
        state: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// `step` was called after the handshake had finished or failed.
    #[error("the handshake is already over")]
    HandshakeOver,
}

impl ProtoError {
    /// The wire code a peer is told in a `Fatal` frame for this error.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            ProtoError::VersionMismatch { .. } => ErrorCode::VERSION_MISMATCH,
            ProtoError::AuthFailed(_) => ErrorCode::AUTH_FAILED,
            ProtoError::PeerFatal { code, .. } => *code,
            _ => ErrorCode::PROTOCOL,
        }
    }
}
