//! The replication wire protocol: how a writer (the target node) and the
//! storage nodes that hold copies of its images talk to each other.
//!
//! This module is a pure codec plus the sans-IO handshake. It owns the byte
//! layout of every message, the frame limits, and the authentication
//! exchange. It knows nothing of sockets, tokio, disks or the replication
//! core: it works on [`bytes::BytesMut`] and typed [`Message`]s, and every
//! malformed input becomes a [`ProtoError`], never a panic. The tokio server
//! and the mirrored backend wrap it.
//!
//! ```text
//!  bytes --decode(buf, limits)--> Ok(Some(Message)) | Ok(None) "need more" | Err(fault)
//!  Message --encode(msg, buf)--> bytes
//!  Message --ClientHandshake/ServerHandshake::step--> Step (send / Done(peer) / Failed)
//! ```
//!
//! # Frame layout
//!
//! All integers are big-endian. Every frame is a 6-byte header and a body.
//! The header is frozen: every protocol version frames this way.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `body_len`: bytes after the header, checked against [`Limits::max_body_len`] before anything is reserved |
//! | 4 | 2 | `opcode` ([`Opcode`]); unknown opcodes decode to [`Message::Unknown`] |
//! | 6 | `body_len` | body, laid out per opcode below |
//!
//! Field types used below: `name` is a `u8` length and that many bytes of
//! an [`ImageName`] or [`NodeId`] (blockmap's validated names); `text` is a
//! `u16` length (at most [`MAX_TEXT_LEN`]) and that many bytes of UTF-8;
//! `rest` is every byte to the end of the body (data, sliced out of the
//! receive buffer without a copy). A body must be consumed exactly: short
//! is [`ProtoError::Truncated`], long is [`ProtoError::TrailingBytes`].
//!
//! ## Handshake (0x00xx)
//!
//! `ClientHello`, `ServerHello` and `Fatal` are **frozen**: every version,
//! past and future, must send and decode exactly these layouts, so that two
//! peers of different versions can still tell each other so.
//!
//! | opcode | message | body |
//! |---|---|---|
//! | 0x0001 | `ClientHello` | magic `b"LOCUSRPL"` (8), version u16, node id `name`, client nonce (32) |
//! | 0x0002 | `ServerHello` | magic (8), version u16, node id `name`, server nonce (32), server proof (32) |
//! | 0x0003 | `ClientProof` | client proof (32) |
//! | 0x0004 | `Accept` | empty |
//! | 0x0005 | `Fatal` | code u16 ([`ErrorCode`]), sender's version u16, message `text` |
//!
//! See [`handshake`](ClientHandshake) for the exchange and what the proofs
//! cover.
//!
//! ## Requests (0x01xx)
//!
//! Every request body but `Ping`'s starts with the same prefix: request id
//! u64, image `name`, writer generation u64 (the fencing token of
//! invariant 4, ARCHITECTURE.md). The request id comes first in every
//! request and response, so a server can answer an unknown opcode with
//! `Unsupported`.
//!
//! | opcode | message | body after the prefix |
//! |---|---|---|
//! | 0x0100 | `Ping` | request id u64 only (no image, no generation) |
//! | 0x0101 | `Read` | offset u64, len u32 |
//! | 0x0102 | `Write` | offset u64, flags u8 (bit 0 FUA, others must be 0), data `rest` |
//! | 0x0103 | `Flush` | empty |
//! | 0x0104 | `WriteZeroes` | offset u64, len u64 |
//! | 0x0105 | `Discard` | offset u64, len u64 |
//! | 0x0106 | `Checksum` | offset u64, len u64, chunk u32 |
//! | 0x0107 | `StreamRange` | offset u64, len u64 |
//!
//! Offsets and lengths are in bytes of the image.
//!
//! ## Responses (0x02xx)
//!
//! | opcode | message | body |
//! |---|---|---|
//! | 0x0200 | `Ok` | request id u64, data `rest` (empty but for `Read`) |
//! | 0x0201 | `Checksums` | request id u64, chunk u32, count u32, count × u64 ([`chunk_checksum`]) |
//! | 0x0202 | `StreamChunk` | request id u64, offset u64, data `rest` |
//! | 0x0203 | `StreamHole` | request id u64, offset u64, len u64 |
//! | 0x0204 | `StreamEnd` | request id u64 |
//! | 0x0205 | `Error` | request id u64, code u16, detail u64 (seen generation for `Fenced`, else 0), message `text` |
//!
//! A `StreamRange` is answered by `StreamChunk`s and `StreamHole`s in offset
//! order, covering the range, then one `StreamEnd` (or an `Error`, which
//! also ends the stream).

mod error;
mod frame;
pub mod handshake;
mod message;

use sha2::{Digest, Sha256};

pub use blockmap::types::{ImageName, NodeId};
pub use error::{ErrorCode, ProtoError};
pub use frame::{decode, encode, Opcode, HEADER_LEN};
pub use handshake::{ClientHandshake, ClusterSecret, HandshakeConfig, ServerHandshake, Step};
pub use message::{
    ClientHello, ClientProof, ErrorReply, Fatal, Message, Op, Request, Response, ServerHello,
    UnknownFrame,
};

/// The protocol version this build speaks. A peer with another version is
/// refused with [`ProtoError::VersionMismatch`] naming both.
pub const PROTOCOL_VERSION: u16 = 1;

/// The 8 bytes every hello starts with; anything else is not our protocol.
pub const MAGIC: [u8; 8] = *b"LOCUSRPL";

/// Largest `text` field (error messages) in bytes. The encoder cuts longer
/// messages at a character boundary; the decoder refuses them.
pub const MAX_TEXT_LEN: usize = 1024;

/// Largest data payload the default limits carry: 16 MiB, four default-size
/// blocks' worth of resync chunk or one large write.
pub const DEFAULT_MAX_DATA: u32 = 16 << 20;

/// Room for the fixed fields around a payload in the default limits: the
/// longest request prefix is 8 + 1 + 128 + 8 bytes, plus at most 9 more.
pub const BODY_OVERHEAD: u32 = 1024;

/// What a receiver accepts. Checked on the header alone, before any memory
/// is reserved for the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `body_len` accepted, in bytes (header excluded).
    pub max_body_len: u32,
}

impl Default for Limits {
    /// 16 MiB of data plus [`BODY_OVERHEAD`].
    fn default() -> Self {
        Limits {
            max_body_len: DEFAULT_MAX_DATA + BODY_OVERHEAD,
        }
    }
}

/// Identifies a request on a connection so responses can come back out of
/// order (pipelining). Chosen by the client; echoed in every response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The writer's fencing token, as every request carries it: the core's
/// [`Generation`](crate::core::Generation), one type on both sides. Storage
/// nodes refuse requests carrying a generation older than one they have
/// seen, with `Fenced`.
pub use crate::core::Generation;

/// 32 random bytes that one side contributes to the handshake. The caller
/// draws them from a CSPRNG; the codec never makes randomness itself, so
/// tests are deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonce(pub [u8; 32]);

/// An HMAC-SHA-256 tag, as carried in `ServerHello` and `ClientProof`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag(pub [u8; 32]);

/// The checksum a `Checksums` response carries for one chunk: the first 8
/// bytes of SHA-256 over the chunk's bytes, read as a big-endian u64. A
/// hole checksums as the zeros it reads as; the last chunk of a range may
/// be short. 64 bits is plenty to find differing chunks between two copies
/// of our own data (not an integrity check against an adversary).
pub fn chunk_checksum(data: &[u8]) -> u64 {
    let digest = Sha256::digest(data);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}
