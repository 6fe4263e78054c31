//! Framing: cuts a received byte stream into whole PDUs (RFC 7143 §11.2).
//!
//! The framer enforces the negotiated limits *before* it reserves memory: a
//! DataSegmentLength above our MaxRecvDataSegmentLength is an error as soon as
//! the 48 header bytes are in, so a peer cannot make us allocate 16 MiB by
//! announcing it. "Need more bytes" is `Ok(None)`; only real faults are `Err`.

use bytes::{Buf, Bytes, BytesMut};

use super::bhs::{BhsBytes, Common, BHS_LEN};
use super::{digest, pad_len};

/// The limits and digests in force on a connection, as negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Our MaxRecvDataSegmentLength: the largest data segment we accept.
    pub max_recv_data_segment: u32,
    /// CRC32C HeaderDigest in force.
    pub header_digest: bool,
    /// CRC32C DataDigest in force.
    pub data_digest: bool,
}

impl FrameLimits {
    /// The limits of the login phase: 8192-byte segments and no digests
    /// (RFC 7143 §13.12, §13.1).
    pub const LOGIN: FrameLimits = FrameLimits {
        max_recv_data_segment: 8192,
        header_digest: false,
        data_digest: false,
    };
}

/// A framed PDU whose header digest checked out. Its data digest may not have:
/// RFC 7143 §7.8 answers that with a Reject for this PDU only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPdu {
    /// The 48 header bytes.
    pub bhs: BhsBytes,
    /// The AHS area (TotalAHSLength*4 bytes).
    pub ahs: Bytes,
    /// The data segment without padding or digest.
    pub data: Bytes,
    /// False when DataDigest is in force and the data digest did not match.
    pub data_digest_ok: bool,
}

/// A framing fault. After any of these the byte stream cannot be trusted, so
/// the connection is closed (RFC 7143 §7.8, ErrorRecoveryLevel 0).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// DataSegmentLength exceeds our MaxRecvDataSegmentLength.
    #[error("DataSegmentLength {len} exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong {
        /// Announced length.
        len: u32,
        /// Our limit.
        max: u32,
    },
    /// The header digest did not match.
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest {
        /// Digest on the wire.
        received: u32,
        /// Digest we computed.
        computed: u32,
    },
}

/// Takes one PDU off the front of `buf` if it is complete.
///
/// Returns `Ok(None)` when more bytes are needed; in that case it may reserve
/// room in `buf` for the rest of the PDU, bounded by the limits.
pub fn decode_frame(
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> Result<Option<RawPdu>, FrameError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let mut bhs: BhsBytes = [0; BHS_LEN];
    bhs.copy_from_slice(&buf[..BHS_LEN]);
    let data_len = Common::data_len_of(&bhs);
    if data_len > limits.max_recv_data_segment {
        return Err(FrameError::DataSegmentTooLong {
            len: data_len,
            max: limits.max_recv_data_segment,
        });
    }
    let ahs_len = Common::ahs_len_of(&bhs);
    let hd_len = if limits.header_digest { 4 } else { 0 };
    let data_len = data_len as usize;
    let data_total = if data_len > 0 {
        data_len + pad_len(data_len) + if limits.data_digest { 4 } else { 0 }
    } else {
        0
    };
    let total = BHS_LEN + ahs_len + hd_len + data_total;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if limits.header_digest {
        let at = BHS_LEN + ahs_len;
        let computed = digest::crc32c(&buf[..at]);
        let received = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        if computed != received {
            return Err(FrameError::HeaderDigest { received, computed });
        }
    }
    let mut pdu = buf.split_to(total);
    pdu.advance(BHS_LEN);
    let ahs = pdu.split_to(ahs_len).freeze();
    pdu.advance(hd_len);
    let mut data_digest_ok = true;
    if data_len > 0 && limits.data_digest {
        let covered = data_len + pad_len(data_len);
        let computed = digest::crc32c(&pdu[..covered]);
        let d = &pdu[covered..covered + 4];
        data_digest_ok = computed == u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    }
    pdu.truncate(data_len);
    Ok(Some(RawPdu {
        bhs,
        ahs,
        data: pdu.freeze(),
        data_digest_ok,
    }))
}
