//! The Basic Header Segment layout shared by every PDU (RFC 7143 §11.2.1):
//! the 48-byte header, its common fields, and small nom helpers that the
//! per-PDU parsers build on.
//!
//! Layout of the first 20 bytes, common to all PDUs:
//!
//! ```text
//!  byte 0      : .|I| opcode (6 bits)
//!  byte 1      : F + opcode-specific flags
//!  bytes 2-3   : opcode-specific
//!  byte 4      : TotalAHSLength (4-byte words)
//!  bytes 5-7   : DataSegmentLength (bytes, without padding)
//!  bytes 8-15  : LUN or opcode-specific (ISID+TSIH for login)
//!  bytes 16-19 : Initiator Task Tag
//!  bytes 20-47 : opcode-specific
//! ```

use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u24, be_u32, be_u64, be_u8};
use nom::IResult;

use super::opcode::Opcode;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// The raw 48 header bytes.
pub type BhsBytes = [u8; BHS_LEN];

/// The fields every BHS carries, as RFC 7143 §11.2.1 lays them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    /// The I (immediate delivery) bit.
    pub immediate: bool,
    /// The opcode.
    pub opcode: Opcode,
    /// Byte 1: the F bit and opcode-specific flags.
    pub flags: u8,
    /// Bytes 2 and 3, opcode-specific.
    pub b2: u8,
    /// Byte 3.
    pub b3: u8,
    /// TotalAHSLength in 4-byte words.
    pub total_ahs_words: u8,
    /// DataSegmentLength in bytes (without padding).
    pub data_len: u32,
    /// Bytes 8-15 (the LUN for most PDUs).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
}

impl Common {
    /// Parses the common 20 bytes; the rest (28 bytes) is left to the caller.
    pub fn parse(input: &[u8]) -> IResult<&[u8], Common> {
        let (input, b0) = be_u8(input)?;
        let (input, flags) = be_u8(input)?;
        let (input, b2) = be_u8(input)?;
        let (input, b3) = be_u8(input)?;
        let (input, total_ahs_words) = be_u8(input)?;
        let (input, data_len) = be_u24(input)?;
        let (input, lun) = be_u64(input)?;
        let (input, itt) = be_u32(input)?;
        Ok((
            input,
            Common {
                immediate: b0 & 0x40 != 0,
                opcode: Opcode(b0 & 0x3f),
                flags,
                b2,
                b3,
                total_ahs_words,
                data_len,
                lun,
                itt,
            },
        ))
    }

    /// Reads only the opcode byte of a header.
    pub fn opcode_of(bhs: &BhsBytes) -> Opcode {
        Opcode(bhs[0] & 0x3f)
    }

    /// Total AHS length in bytes, from a raw header.
    pub fn ahs_len_of(bhs: &BhsBytes) -> usize {
        usize::from(bhs[4]) * 4
    }

    /// DataSegmentLength in bytes, from a raw header.
    pub fn data_len_of(bhs: &BhsBytes) -> u32 {
        u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
    }
}

/// Writer of a 48-byte header at fixed offsets.
pub struct BhsWriter {
    buf: BhsBytes,
}

impl BhsWriter {
    /// Starts a header with byte 0 (I bit and opcode) and byte 1 (flags).
    pub fn new(opcode: Opcode, immediate: bool, flags: u8) -> Self {
        let mut buf = [0u8; BHS_LEN];
        buf[0] = opcode.0 & 0x3f | if immediate { 0x40 } else { 0 };
        buf[1] = flags;
        BhsWriter { buf }
    }

    /// Sets one byte.
    pub fn u8(mut self, at: usize, v: u8) -> Self {
        self.buf[at] = v;
        self
    }

    /// Sets a big-endian u16.
    pub fn u16(mut self, at: usize, v: u16) -> Self {
        self.buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
        self
    }

    /// Sets a big-endian u32.
    pub fn u32(mut self, at: usize, v: u32) -> Self {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
        self
    }

    /// Sets a big-endian u64.
    pub fn u64(mut self, at: usize, v: u64) -> Self {
        self.buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
        self
    }

    /// Copies raw bytes.
    pub fn bytes(mut self, at: usize, v: &[u8]) -> Self {
        self.buf[at..at + v.len()].copy_from_slice(v);
        self
    }

    /// The finished header, with TotalAHSLength and DataSegmentLength set.
    pub fn finish(mut self, ahs_len: usize, data_len: usize) -> BhsBytes {
        // Both lengths were bounded by the encoder's callers; the wire fields
        // are 8 and 24 bits wide.
        self.buf[4] = (ahs_len / 4) as u8;
        let dl = (data_len as u32).to_be_bytes();
        self.buf[5..8].copy_from_slice(&dl[1..4]);
        self.buf
    }
}

/// nom: skips `n` reserved bytes.
pub fn reserved(n: usize) -> impl Fn(&[u8]) -> IResult<&[u8], ()> {
    move |i| take(n)(i).map(|(i, _)| (i, ()))
}

/// nom: a big-endian u16.
pub fn u16be(i: &[u8]) -> IResult<&[u8], u16> {
    be_u16(i)
}

/// nom: a big-endian u32.
pub fn u32be(i: &[u8]) -> IResult<&[u8], u32> {
    be_u32(i)
}

/// nom: one byte.
pub fn u8be(i: &[u8]) -> IResult<&[u8], u8> {
    be_u8(i)
}
