//! The iSCSI PDU codec (RFC 7143 §11): typed PDUs, their encoding, and the
//! framing that cuts a byte stream into PDUs.
//!
//! This module owns wire layout only. It knows nothing of sockets, sessions or
//! SCSI: it works on `&[u8]` and `BytesMut`, and every malformed input becomes a
//! typed [`PduError`] or [`FrameError`], never a panic. The flow is:
//!
//! ```text
//!  bytes --framing::decode_frame--> RawPdu --Pdu::decode--> Pdu (typed)
//!  Pdu --Pdu::encode--> [header Bytes, data Bytes, pad+digest Bytes] --> writev
//! ```

mod async_msg;
mod bhs;
mod data;
pub mod digest;
mod framing;
mod login;
mod logout;
mod nop;
mod opcode;
mod r2t;
mod reject;
mod scsi;
mod serial;
mod snack;
mod text;
mod tmf;

use bytes::{BufMut, Bytes, BytesMut};

pub use async_msg::{AsyncEvent, AsyncMessage};
pub use bhs::{BhsBytes, Common, BHS_LEN};
pub use data::{DataIn, DataOut};
pub use framing::{decode_frame, FrameError, FrameLimits, RawPdu};
pub use login::{LoginFlags, LoginRequest, LoginResponse};
pub use logout::{LogoutRequest, LogoutResponse};
pub use nop::{NopIn, NopOut};
pub use opcode::Opcode;
pub use r2t::R2t;
pub use reject::{Reject, RejectReason};
pub use scsi::{Residual, ScsiCommand, ScsiResponse, TaskAttr};
pub use serial::SeqNum;
pub use snack::SnackRequest;
pub use text::{TextRequest, TextResponse};
pub use tmf::{TaskMgmtRequest, TaskMgmtResponse, TmfFunction, TmfResponseCode};

/// Initiator Task Tag (RFC 7143 §11.2.1.8). 0xffffffff is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Itt(pub u32);

impl Itt {
    /// The reserved tag.
    pub const RESERVED: Itt = Itt(0xffff_ffff);
}

/// Target Transfer Tag (RFC 7143 §11.7.4). 0xffffffff means "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ttt(pub u32);

impl Ttt {
    /// The reserved tag.
    pub const RESERVED: Ttt = Ttt(0xffff_ffff);
}

/// A malformed PDU. Each variant maps to a defined answer on the wire (see the
/// session layer): a Reject PDU, or closing the connection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PduError {
    /// The header ended before a field it must carry.
    #[error("PDU header truncated")]
    Truncated,
    /// An opcode RFC 7143 does not define.
    #[error("reserved opcode {0:#04x}")]
    ReservedOpcode(u8),
    /// An AHS whose declared length runs past TotalAHSLength.
    #[error("malformed AHS: {0}")]
    BadAhs(&'static str),
}

impl<E> From<nom::Err<E>> for PduError {
    fn from(_: nom::Err<E>) -> Self {
        PduError::Truncated
    }
}

/// A typed Basic Header Segment, one variant per PDU type.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

/// An Additional Header Segment (RFC 7143 §11.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ahs {
    /// AHSType: 1 extended CDB, 2 expected bidirectional read data length.
    pub ahs_type: u8,
    /// The AHS-specific byte (reserved in both AHS types RFC 7143 defines).
    pub specific: u8,
    /// The AHS payload after the AHS-specific byte, without padding. On the
    /// wire AHSLength counts the AHS-specific byte too, so it is
    /// `data.len() + 1` (RFC 7143 §11.2.2.2: "excluding AHSType and AHSLength").
    pub data: Bytes,
}

impl Ahs {
    /// AHSType of an Extended CDB AHS.
    pub const EXTENDED_CDB: u8 = 1;
    /// AHSType of an Expected Bidirectional Read Data Length AHS.
    pub const BIDI_READ_LENGTH: u8 = 2;

    /// Splits a TotalAHSLength area into AHSs (RFC 7143 §11.2.2.1).
    pub fn parse_all(mut area: &[u8]) -> Result<Vec<Ahs>, PduError> {
        let mut out = Vec::new();
        while !area.is_empty() {
            if area.len() < 4 {
                return Err(PduError::BadAhs("AHS header truncated"));
            }
            // AHSLength covers the AHS-specific byte and the payload, but not
            // the AHSLength and AHSType fields (RFC 7143 §11.2.2.2), so an AHS
            // occupies 3 + AHSLength bytes, padded to a multiple of 4.
            let len = usize::from(u16::from_be_bytes([area[0], area[1]]));
            if len == 0 {
                return Err(PduError::BadAhs("AHSLength 0 has no AHS-specific byte"));
            }
            let padded = (3 + len + 3) & !3;
            if padded > area.len() {
                return Err(PduError::BadAhs("AHSLength runs past TotalAHSLength"));
            }
            out.push(Ahs {
                ahs_type: area[2],
                specific: area[3],
                data: Bytes::copy_from_slice(&area[4..3 + len]),
            });
            area = &area[padded..];
        }
        Ok(out)
    }

    fn encoded_len(&self) -> usize {
        4 + ((self.data.len() + 3) & !3)
    }

    fn encode(&self, out: &mut BytesMut) {
        // AHSLength is 16 bits and counts the AHS-specific byte; callers build
        // AHSs from CDBs (at most 260 bytes).
        out.put_u16((self.data.len() + 1) as u16);
        out.put_u8(self.ahs_type);
        out.put_u8(self.specific);
        out.put_slice(&self.data);
        out.put_bytes(0, pad_len(self.data.len()));
    }
}

/// Whether header and data digests are in use on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// CRC32C HeaderDigest.
    pub header: bool,
    /// CRC32C DataDigest.
    pub data: bool,
}

/// A whole PDU: typed header, AHSs and data segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    /// The typed BHS.
    pub bhs: Bhs,
    /// Additional header segments.
    pub ahs: Vec<Ahs>,
    /// The data segment, without padding.
    pub data: Bytes,
}

/// Padding that brings `len` to a multiple of 4 (RFC 7143 §11.2.3).
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Data segments smaller than this are copied into the header buffer, so a
/// small PDU goes out as one iovec.
const INLINE_DATA: usize = 1024;

impl Pdu {
    /// A PDU with no AHS.
    pub fn new(bhs: Bhs, data: Bytes) -> Self {
        Pdu {
            bhs,
            ahs: Vec::new(),
            data,
        }
    }

    /// Decodes a framed PDU into its typed form.
    pub fn decode(raw: &RawPdu) -> Result<Pdu, PduError> {
        let (rest, c) = Common::parse(&raw.bhs)?;
        let bhs = match c.opcode {
            Opcode::NOP_OUT => Bhs::NopOut(NopOut::decode(&c, rest)?),
            Opcode::SCSI_COMMAND => Bhs::ScsiCommand(ScsiCommand::decode(&c, rest)?),
            Opcode::TASK_MGMT_REQUEST => Bhs::TaskMgmtRequest(TaskMgmtRequest::decode(&c, rest)?),
            Opcode::LOGIN_REQUEST => Bhs::LoginRequest(LoginRequest::decode(&c, rest)?),
            Opcode::TEXT_REQUEST => Bhs::TextRequest(TextRequest::decode(&c, rest)?),
            Opcode::DATA_OUT => Bhs::DataOut(DataOut::decode(&c, rest)?),
            Opcode::LOGOUT_REQUEST => Bhs::LogoutRequest(LogoutRequest::decode(&c, rest)?),
            Opcode::SNACK_REQUEST => Bhs::SnackRequest(SnackRequest::decode(&c, rest)?),
            Opcode::NOP_IN => Bhs::NopIn(NopIn::decode(&c, rest)?),
            Opcode::SCSI_RESPONSE => Bhs::ScsiResponse(ScsiResponse::decode(&c, rest)?),
            Opcode::TASK_MGMT_RESPONSE => {
                Bhs::TaskMgmtResponse(TaskMgmtResponse::decode(&c, rest)?)
            }
            Opcode::LOGIN_RESPONSE => Bhs::LoginResponse(LoginResponse::decode(&c, rest)?),
            Opcode::TEXT_RESPONSE => Bhs::TextResponse(TextResponse::decode(&c, rest)?),
            Opcode::DATA_IN => Bhs::DataIn(DataIn::decode(&c, rest)?),
            Opcode::LOGOUT_RESPONSE => Bhs::LogoutResponse(LogoutResponse::decode(&c, rest)?),
            Opcode::R2T => Bhs::R2t(R2t::decode(&c, rest)?),
            Opcode::ASYNC_MESSAGE => Bhs::AsyncMessage(AsyncMessage::decode(&c, rest)?),
            Opcode::REJECT => Bhs::Reject(Reject::decode(&c, rest)?),
            Opcode(other) => return Err(PduError::ReservedOpcode(other)),
        };
        Ok(Pdu {
            bhs,
            ahs: Ahs::parse_all(&raw.ahs)?,
            data: raw.data.clone(),
        })
    }

    fn header_writer(&self) -> bhs::BhsWriter {
        match &self.bhs {
            Bhs::NopOut(p) => p.encode(),
            Bhs::ScsiCommand(p) => p.encode(),
            Bhs::TaskMgmtRequest(p) => p.encode(),
            Bhs::LoginRequest(p) => p.encode(),
            Bhs::TextRequest(p) => p.encode(),
            Bhs::DataOut(p) => p.encode(),
            Bhs::LogoutRequest(p) => p.encode(),
            Bhs::SnackRequest(p) => p.encode(),
            Bhs::NopIn(p) => p.encode(),
            Bhs::ScsiResponse(p) => p.encode(),
            Bhs::TaskMgmtResponse(p) => p.encode(),
            Bhs::LoginResponse(p) => p.encode(),
            Bhs::TextResponse(p) => p.encode(),
            Bhs::DataIn(p) => p.encode(),
            Bhs::LogoutResponse(p) => p.encode(),
            Bhs::R2t(p) => p.encode(),
            Bhs::AsyncMessage(p) => p.encode(),
            Bhs::Reject(p) => p.encode(),
        }
    }

    /// The 48 header bytes as they go on the wire (lengths filled in).
    pub fn bhs_bytes(&self) -> BhsBytes {
        let ahs_len: usize = self.ahs.iter().map(Ahs::encoded_len).sum();
        self.header_writer().finish(ahs_len, self.data.len())
    }

    /// Encodes the PDU as a few buffers for one vectored write: the header
    /// (BHS, AHS, header digest, and small data inline), then the data segment
    /// without copying it, then its padding and data digest.
    ///
    /// The caller guarantees that `data` fits the peer's
    /// MaxRecvDataSegmentLength (at most 2^24-1 bytes).
    pub fn encode(&self, digests: Digests, out: &mut Vec<Bytes>) {
        let ahs_len: usize = self.ahs.iter().map(Ahs::encoded_len).sum();
        let inline = self.data.len() <= INLINE_DATA;
        let mut buf = BytesMut::with_capacity(
            BHS_LEN + ahs_len + 8 + if inline { self.data.len() + 4 } else { 0 },
        );
        self.put_header(&mut buf, ahs_len, self.data.len(), digests);
        if self.data.is_empty() {
            out.push(buf.freeze());
            return;
        }
        let pad = [0u8; 4];
        let pad = &pad[..pad_len(self.data.len())];
        let data_digest = digests
            .data
            .then(|| digest::crc32c_append(digest::crc32c(&self.data), pad));
        if inline {
            buf.put_slice(&self.data);
            buf.put_slice(pad);
            if let Some(d) = data_digest {
                buf.put_slice(&digest::to_wire(d));
            }
            out.push(buf.freeze());
        } else {
            out.push(buf.freeze());
            out.push(self.data.clone());
            if !pad.is_empty() || data_digest.is_some() {
                let mut tail = BytesMut::with_capacity(8);
                tail.put_slice(pad);
                if let Some(d) = data_digest {
                    tail.put_slice(&digest::to_wire(d));
                }
                out.push(tail.freeze());
            }
        }
    }

    /// Encodes the header of a PDU whose data segment of `data_len` bytes
    /// the caller sends itself (zero-copy Data-In from a file): BHS, AHS
    /// and header digest, with DataSegmentLength set to `data_len`. The
    /// caller then sends the data and [`pad_len`]`(data_len)` zero bytes.
    /// `self.data` is ignored; a data digest cannot be had this way, so the
    /// connection must not have negotiated one (RFC 7143 §13.1).
    pub fn encode_header_for(&self, data_len: usize, digests: Digests) -> Bytes {
        debug_assert!(!digests.data, "no data digest over external data");
        let ahs_len: usize = self.ahs.iter().map(Ahs::encoded_len).sum();
        let mut buf = BytesMut::with_capacity(BHS_LEN + ahs_len + 4);
        self.put_header(&mut buf, ahs_len, data_len, digests);
        buf.freeze()
    }

    /// BHS (with DataSegmentLength `data_len`), AHS and header digest.
    fn put_header(&self, buf: &mut BytesMut, ahs_len: usize, data_len: usize, digests: Digests) {
        buf.put_slice(&self.header_writer().finish(ahs_len, data_len));
        for ahs in &self.ahs {
            ahs.encode(buf);
        }
        if digests.header {
            buf.put_slice(&digest::to_wire(digest::crc32c(buf)));
        }
    }

    /// Encodes into one contiguous buffer (tests and tools).
    pub fn to_vec(&self, digests: Digests) -> Vec<u8> {
        let mut parts = Vec::new();
        self.encode(digests, &mut parts);
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }
}
