//! Text key=value codec for Login and Text PDU data segments.
//!
//! Owns the byte-level syntax of RFC 7143 §6.1 ("Text Format"): a data
//! segment is a sequence of `key=value` strings, each terminated by one NUL
//! byte. It knows nothing about what keys mean (that is `keys.rs` and
//! `negotiate.rs`) nor about PDUs or sockets; the connection layer hands it
//! the data segment as declared by DataSegmentLength (the 0-3 pad bytes are
//! not part of it). Every pair, the last one included, must end with its
//! NUL; extra NULs between pairs are skipped.
//!
//! Every function here is a fuzz target: input-derived data never panics.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest key name, in bytes (RFC 7143 §6.1: "key-name ... up to 63 bytes").
pub const MAX_KEY_LEN: usize = 63;

/// Longest value the codec accepts, in bytes (RFC 7143 §6.1: 8192 bytes is
/// the upper bound of any text value; individual keys are tighter, see
/// [`crate::login::keys`]).
pub const MAX_VALUE_LEN: usize = 8192;

/// Default cap on text accumulated over a chain of continued PDUs (C bit).
pub const DEFAULT_TEXT_CAP: usize = 64 * 1024;

/// Keys that may legitimately appear more than once in one data segment:
/// SendTargets responses list several targets and several addresses
/// (RFC 7143 Appendix C).
const REPEATABLE_KEYS: &[&str] = &["TargetName", "TargetAddress"];

/// A malformed text data segment (RFC 7143 §6.1). Each variant maps to a
/// login failure with status 0x0200 (initiator error) or a Reject PDU in
/// full-feature phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The data segment does not end with a NUL: its last `key=value` pair
    /// is unterminated (RFC 7143 §6.1: "Every key=value pair, including the
    /// last or only pair in a LTDS, MUST be followed by one null").
    #[error("last text pair at byte {offset} has no terminating NUL")]
    Unterminated {
        /// Byte offset of the unterminated pair in the data segment.
        offset: usize,
    },
    /// A `key=value` string had no `=`.
    #[error("text pair without '=' at byte {offset}")]
    MissingEquals {
        /// Byte offset of the pair in the data segment.
        offset: usize,
    },
    /// The key was empty.
    #[error("empty key at byte {offset}")]
    EmptyKey {
        /// Byte offset of the pair in the data segment.
        offset: usize,
    },
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key of {len} bytes exceeds {MAX_KEY_LEN}")]
    KeyTooLong {
        /// Length of the offending key.
        len: usize,
    },
    /// The value is longer than [`MAX_VALUE_LEN`].
    #[error("value of key {key} is {len} bytes, more than {MAX_VALUE_LEN}")]
    ValueTooLong {
        /// The key whose value is too long.
        key: String,
        /// Length of the offending value.
        len: usize,
    },
    /// The key holds a byte outside RFC 7143 §6.1's key-name alphabet
    /// (letters, digits, `.`, `-`, `+`, `@`, `_`).
    #[error("invalid character in key at byte {offset}")]
    InvalidKeyChar {
        /// Byte offset of the pair in the data segment.
        offset: usize,
    },
    /// The value is not UTF-8 or holds a control character.
    #[error("invalid value for key {key}")]
    InvalidValue {
        /// The key whose value is malformed.
        key: String,
    },
    /// A key appeared twice in one data segment (RFC 7143 §6.2).
    #[error("key {key} appears more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// Continued text grew beyond the accumulator's cap.
    #[error("continued text exceeds {cap} bytes")]
    TooLong {
        /// The cap in bytes.
        cap: usize,
    },
}

fn valid_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// Parses a text data segment into `(key, value)` pairs, in order
/// (RFC 7143 §6.1).
///
/// `data` is the data segment as declared (no padding). An empty segment
/// holds no pairs. Tolerates empty strings between NULs. Rejects a
/// non-empty segment whose last byte is not NUL (an unterminated last
/// pair, RFC 7143 §6.1), a pair without `=`, keys longer than 63 bytes or with characters
/// outside the key alphabet, values longer than 8192 bytes, non-UTF-8 or
/// control characters in values, and a key repeated in the same segment
/// (except `TargetName`/`TargetAddress`, which SendTargets responses repeat).
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    if data.last().is_some_and(|&b| b != 0) {
        let offset = data.iter().rposition(|&b| b == 0).map_or(0, |p| p + 1);
        return Err(TextError::Unterminated { offset });
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut offset = 0usize;
    for item in data.split(|&b| b == 0) {
        let start = offset;
        offset = offset.saturating_add(item.len()).saturating_add(1);
        if item.is_empty() {
            continue;
        }
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::MissingEquals { offset: start })?;
        let (key, rest) = item.split_at(eq);
        let value = rest.get(1..).unwrap_or_default();
        if key.is_empty() {
            return Err(TextError::EmptyKey { offset: start });
        }
        if key.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong { len: key.len() });
        }
        if !key.iter().all(|&b| valid_key_byte(b)) {
            return Err(TextError::InvalidKeyChar { offset: start });
        }
        // The key alphabet is ASCII, so this cannot fail; map it anyway.
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| TextError::InvalidKeyChar { offset: start })?;
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong {
                key,
                len: value.len(),
            });
        }
        let value = match std::str::from_utf8(value) {
            Ok(v) if !v.chars().any(char::is_control) => v.to_owned(),
            _ => return Err(TextError::InvalidValue { key }),
        };
        if !REPEATABLE_KEYS.contains(&key.as_str()) && out.iter().any(|(k, _)| *k == key) {
            return Err(TextError::DuplicateKey { key });
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Encodes `(key, value)` pairs as `key=value\0...` (RFC 7143 §6.1).
///
/// The caller supplies valid keys and values (they come from our own
/// negotiation); no validation is done here.
pub fn encode_text<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Bytes {
    let len: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut buf = BytesMut::with_capacity(len);
    for (k, v) in pairs {
        buf.put_slice(k.as_ref().as_bytes());
        buf.put_u8(b'=');
        buf.put_slice(v.as_ref().as_bytes());
        buf.put_u8(0);
    }
    buf.freeze()
}

/// Splits an encoded text response into chunks of at most `max` bytes, for
/// sending over several PDUs with the C bit (RFC 7143 §11.11.2, §11.13.2).
/// A key=value pair may straddle two chunks; the receiver reassembles.
/// `max == 0` is treated as 1.
pub fn chunk_text(data: &Bytes, max: usize) -> Vec<Bytes> {
    let max = max.max(1);
    if data.is_empty() {
        return vec![Bytes::new()];
    }
    let mut out = Vec::with_capacity(data.len().div_ceil(max));
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + max).min(data.len());
        out.push(data.slice(pos..end));
        pos = end;
    }
    out
}

/// Gathers text over a chain of PDUs with the C (continue) bit set
/// (RFC 7143 §11.12.3, §11.10.2), up to a total size cap.
///
/// Push each PDU's data segment; when a PDU arrives with C=0, call
/// [`TextAccumulator::finish`] to take the whole text.
#[derive(Debug, Clone)]
pub struct TextAccumulator {
    buf: BytesMut,
    cap: usize,
}

impl TextAccumulator {
    /// A new, empty accumulator holding at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            cap,
        }
    }

    /// True when no continued text is pending.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends one PDU's data segment. Fails (and keeps nothing) when the
    /// total would exceed the cap.
    pub fn push(&mut self, data: &[u8]) -> Result<(), TextError> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            self.buf.clear();
            return Err(TextError::TooLong { cap: self.cap });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Appends the final PDU's data segment and returns the whole text,
    /// leaving the accumulator empty.
    pub fn finish(&mut self, data: &[u8]) -> Result<Bytes, TextError> {
        self.push(data)?;
        Ok(self.buf.split().freeze())
    }
}

impl Default for TextAccumulator {
    fn default() -> Self {
        Self::new(DEFAULT_TEXT_CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terminated_pairs() {
        let a = parse_text(b"A=1\0B=two\0").unwrap();
        assert_eq!(a[1], ("B".into(), "two".into()));
    }

    #[test]
    fn rejects_an_unterminated_last_pair() {
        assert_eq!(
            parse_text(b"A=1\0B=two"),
            Err(TextError::Unterminated { offset: 4 })
        );
        assert_eq!(
            parse_text(b"A=1"),
            Err(TextError::Unterminated { offset: 0 })
        );
        // Even a pair that would be malformed anyway: the missing NUL is
        // found first.
        assert_eq!(
            parse_text(b"A=1\0\0junk"),
            Err(TextError::Unterminated { offset: 5 })
        );
        // An empty segment holds no pairs and stays valid.
        assert_eq!(parse_text(b""), Ok(Vec::new()));
    }

    #[test]
    fn tolerates_padding_and_empty_values() {
        let p = parse_text(b"SendTargets=\0\0\0\0").unwrap();
        assert_eq!(p, vec![("SendTargets".into(), String::new())]);
        assert!(parse_text(b"").unwrap().is_empty());
    }

    #[test]
    fn value_may_contain_equals() {
        let p = parse_text(b"CHAP_C=0bYWJj==\0").unwrap();
        assert_eq!(p[0].1, "0bYWJj==");
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            parse_text(b"A=1\0novalue\0"),
            Err(TextError::MissingEquals { offset: 4 })
        ));
        assert!(matches!(
            parse_text(b"=x\0"),
            Err(TextError::EmptyKey { .. })
        ));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert!(matches!(
            parse_text(long_key.as_bytes()),
            Err(TextError::KeyTooLong { len: 64 })
        ));
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(parse_text(ok_key.as_bytes()).is_ok());
        let long_val = format!("K={}\0", "v".repeat(8193));
        assert!(matches!(
            parse_text(long_val.as_bytes()),
            Err(TextError::ValueTooLong { len: 8193, .. })
        ));
        assert!(matches!(
            parse_text(b"K=\xff\xfe\0"),
            Err(TextError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse_text(b"K=a\x01b\0"),
            Err(TextError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse_text(b"K y=1\0"),
            Err(TextError::InvalidKeyChar { .. })
        ));
        assert!(matches!(
            parse_text(b"A=1\0A=1\0"),
            Err(TextError::DuplicateKey { .. })
        ));
        assert!(parse_text(b"TargetAddress=a\0TargetAddress=b\0").is_ok());
    }

    #[test]
    fn encode_round_trips() {
        let pairs = vec![("HeaderDigest", "None"), ("MaxBurstLength", "262144")];
        let bytes = encode_text(&pairs);
        assert_eq!(&bytes[..], b"HeaderDigest=None\0MaxBurstLength=262144\0");
        let back = parse_text(&bytes).unwrap();
        assert_eq!(back[1], ("MaxBurstLength".into(), "262144".into()));
    }

    #[test]
    fn accumulator_caps_and_joins() {
        let mut acc = TextAccumulator::new(10);
        acc.push(b"A=12").unwrap();
        let all = acc.finish(b"34\0").unwrap();
        assert_eq!(&all[..], b"A=1234\0");
        assert!(acc.is_empty());
        acc.push(b"123456").unwrap();
        assert_eq!(acc.push(b"12345"), Err(TextError::TooLong { cap: 10 }));
        assert!(acc.is_empty());
    }

    #[test]
    fn chunks_cover_input() {
        let data = Bytes::from_static(b"0123456789");
        let c = chunk_text(&data, 4);
        assert_eq!(c.len(), 3);
        assert_eq!(c.concat(), b"0123456789".to_vec());
        assert_eq!(chunk_text(&Bytes::new(), 4).len(), 1);
    }
}
