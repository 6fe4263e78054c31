//! Framing: cuts a byte stream into frames and frames into typed messages.
//!
//! Owns the 6-byte header, the opcode table and the field readers. The
//! length limit is checked on the header alone, before any memory is
//! reserved for the body, so a peer cannot make us allocate by announcing
//! a large frame. "Need more bytes" is `Ok(None)` and consumes nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::message::Message;
use super::{Limits, ProtoError, MAX_TEXT_LEN};

/// Bytes in a frame header: `body_len` u32 and `opcode` u16.
pub const HEADER_LEN: usize = 6;

/// A frame's opcode. A newtype, so frames of opcodes this build does not
/// know are kept as [`Message::Unknown`] rather than refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opcode(pub u16);

/// The opcode table: each opcode's constant and name. `Opcode::name` and
/// the decoder's dispatch in `message.rs` both follow it.
macro_rules! opcodes {
    ($($(#[$m:meta])* $c:ident = $v:literal, $n:literal;)*) => {
        impl Opcode {
            $($(#[$m])* pub const $c: Opcode = Opcode($v);)*

            /// The message name, or `None` for an opcode this build does
            /// not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($v => Some($n),)*
                    _ => None,
                }
            }
        }
    };
}

opcodes! {
    /// Client's first message (frozen layout).
    CLIENT_HELLO = 0x0001, "ClientHello";
    /// Server's answer to the hello (frozen layout).
    SERVER_HELLO = 0x0002, "ServerHello";
    /// Client's proof of the secret.
    CLIENT_PROOF = 0x0003, "ClientProof";
    /// Server accepts the connection.
    ACCEPT = 0x0004, "Accept";
    /// Connection fault, sent before closing (frozen layout).
    FATAL = 0x0005, "Fatal";
    /// Liveness probe, answered with `Ok`.
    PING = 0x0100, "Ping";
    /// Read a range.
    READ = 0x0101, "Read";
    /// Write data at an offset.
    WRITE = 0x0102, "Write";
    /// Flush the copy to stable storage.
    FLUSH = 0x0103, "Flush";
    /// Write zeroes over a range.
    WRITE_ZEROES = 0x0104, "WriteZeroes";
    /// Deallocate a range.
    DISCARD = 0x0105, "Discard";
    /// Checksum a range chunk by chunk.
    CHECKSUM = 0x0106, "Checksum";
    /// Stream a range's data and holes (resync).
    STREAM_RANGE = 0x0107, "StreamRange";
    /// Success, with data for `Read`.
    OK = 0x0200, "Ok";
    /// Per-chunk checksums.
    CHECKSUMS = 0x0201, "Checksums";
    /// A data chunk of a stream.
    STREAM_CHUNK = 0x0202, "StreamChunk";
    /// A hole in a stream.
    STREAM_HOLE = 0x0203, "StreamHole";
    /// End of a stream.
    STREAM_END = 0x0204, "StreamEnd";
    /// A request failed.
    ERROR = 0x0205, "Error";
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "opcode {:#06x}", self.0),
        }
    }
}

/// Takes one message off the front of `buf` if a whole frame is there.
///
/// Returns `Ok(None)` when more bytes are needed; `buf` is then unchanged
/// except that room for the rest of the frame may be reserved, bounded by
/// `limits`. On `Ok(Some(_))` exactly the frame's bytes are consumed and
/// data payloads (`Write`, `Ok`, `StreamChunk`) share the buffer's memory
/// instead of being copied. On `Err` the stream cannot be trusted any more
/// and the connection must be closed; the frame may or may not have been
/// consumed. Never panics.
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Message>, ProtoError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    // The limit is checked before `reserve`: an announced length alone must
    // never make us allocate.
    if len > limits.max_body_len {
        return Err(ProtoError::FrameTooLong {
            len,
            max: limits.max_body_len,
        });
    }
    let opcode = Opcode(u16::from_be_bytes([buf[4], buf[5]]));
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    Message::decode_body(opcode, frame.freeze()).map(Some)
}

/// Appends `msg` as one frame to `out`.
///
/// Payloads are copied into `out` (one contiguous buffer per message). The
/// caller keeps payloads within the peer's limits; text fields longer than
/// [`MAX_TEXT_LEN`] are cut at a character boundary.
///
/// # Panics
///
/// If the body exceeds `u32::MAX` bytes (a payload of 4 GiB).
pub fn encode(msg: &Message, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    out.put_u16(msg.opcode().0);
    msg.encode_body(out);
    let body = out.len() - start - HEADER_LEN;
    let body = u32::try_from(body).expect("frame body exceeds u32::MAX bytes");
    out[start..start + 4].copy_from_slice(&body.to_be_bytes());
}

/// Reads the fields of one frame body. Every read checks the remaining
/// length first, so a short body is [`ProtoError::Truncated`], not a panic.
pub(super) struct Reader {
    buf: Bytes,
    opcode: Opcode,
}

impl Reader {
    /// A reader over `body`, naming `opcode` in its errors.
    pub(super) fn new(opcode: Opcode, body: Bytes) -> Self {
        Reader { buf: body, opcode }
    }

    /// The frame's opcode.
    pub(super) fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn need(&self, n: usize) -> Result<(), ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated {
                opcode: self.opcode,
            });
        }
        Ok(())
    }

    pub(super) fn u8(&mut self) -> Result<u8, ProtoError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, ProtoError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32, ProtoError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub(super) fn u64(&mut self) -> Result<u64, ProtoError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    /// `N` bytes into an array (magic, nonces, tags).
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        self.need(N)?;
        let mut a = [0u8; N];
        self.buf.copy_to_slice(&mut a);
        Ok(a)
    }

    /// `n` bytes, sharing the frame's memory.
    pub(super) fn bytes(&mut self, n: usize) -> Result<Bytes, ProtoError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// True when `n` more bytes are there (for counted arrays, checked
    /// before the `Vec` is sized).
    pub(super) fn has(&self, n: usize) -> bool {
        self.buf.len() >= n
    }

    /// A `name` field: u8 length and the bytes, as a UTF-8 string. The
    /// caller validates it as an image name or node id.
    pub(super) fn name(&mut self) -> Result<String, ProtoError> {
        let len = usize::from(self.u8()?);
        let raw = self.bytes(len)?;
        // blockmap's names are ASCII; non-UTF-8 is caught here and the rest
        // by the caller's validation.
        String::from_utf8(raw.to_vec()).map_err(|_| ProtoError::BadText {
            opcode: self.opcode,
            why: "name not UTF-8",
        })
    }

    /// A `text` field: u16 length (at most [`MAX_TEXT_LEN`]) and UTF-8.
    pub(super) fn text(&mut self) -> Result<String, ProtoError> {
        let len = usize::from(self.u16()?);
        if len > MAX_TEXT_LEN {
            return Err(ProtoError::BadText {
                opcode: self.opcode,
                why: "too long",
            });
        }
        let raw = self.bytes(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtoError::BadText {
            opcode: self.opcode,
            why: "not UTF-8",
        })
    }

    /// Every byte left, sharing the frame's memory.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Ends the body: any byte left over is [`ProtoError::TrailingBytes`].
    pub(super) fn finish(self) -> Result<(), ProtoError> {
        if !self.buf.is_empty() {
            return Err(ProtoError::TrailingBytes {
                opcode: self.opcode,
                extra: self.buf.len(),
            });
        }
        Ok(())
    }
}

/// Writes a `name` field. Names are blockmap-validated, so at most 128
/// bytes; the u8 length cannot overflow.
pub(super) fn put_name(out: &mut BytesMut, name: &str) {
    debug_assert!(name.len() <= usize::from(u8::MAX));
    out.put_u8(name.len() as u8);
    out.put_slice(name.as_bytes());
}

/// Writes a `text` field, cut to [`MAX_TEXT_LEN`] bytes at a character
/// boundary.
pub(super) fn put_text(out: &mut BytesMut, text: &str) {
    let mut end = text.len().min(MAX_TEXT_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&text.as_bytes()[..end]);
}
