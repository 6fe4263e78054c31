//! CHAP authentication for the security negotiation stage (RFC 7143
//! §12.1.3, RFC 1994): algorithm selection, challenge generation, response
//! verification and the mutual (target-to-initiator) answer.
//!
//! Owns the CHAP exchange and its binary-value syntax (`0x` hex, `0b`
//! base64, RFC 7143 §6.1). Knows nothing of PDUs or login stages; the
//! login machine feeds it the CHAP_* keys. Every failure maps to login
//! status 0x0201 (authentication failure).
//!
//! Algorithm numbers are IANA "PPP Authentication Algorithms": 5 = MD5
//! (the only one RFC 7143 requires), 6 = SHA-1, 7 = SHA-256, 8 = SHA3-256.
//! open-iscsi offers e.g. `CHAP_A=7,6,5` or `8,7,6,5`; libiscsi offers `5`.
//! We implement 5 and 7 and prefer 7 whenever it is offered.

use md5::Md5;
use rand::RngCore;
use sha2::{Digest as _, Sha256};

/// Longest challenge we accept from an initiator, in bytes (RFC 7143
/// §12.1.3 bounds CHAP_C by the text value limit; 1024 is LIO's bound).
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// CHAP credentials of a target (or of discovery). `Debug` hides secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// The name the initiator must send in CHAP_N.
    pub user: String,
    /// The secret the initiator proves (RFC 7143 §12.1.3).
    pub secret: Vec<u8>,
    /// For mutual CHAP: our CHAP_N and the secret we prove to the initiator.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .field("mutual", &self.mutual.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// A CHAP digest algorithm (CHAP_A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    /// MD5, IANA 5 (RFC 1994).
    Md5,
    /// SHA-256, IANA 7.
    Sha256,
}

impl ChapAlgorithm {
    /// IANA code sent as CHAP_A.
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha256 => 7,
        }
    }

    /// Length of the challenge we generate, bytes (the digest size).
    pub fn challenge_len(self) -> usize {
        self.digest_len()
    }

    /// Digest size, bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }

    /// The CHAP response `H(id || secret || challenge)` (RFC 1994 §4.1).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        match self {
            ChapAlgorithm::Md5 => {
                let mut h = Md5::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
            ChapAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
        }
    }
}

/// Picks the algorithm from the initiator's CHAP_A list: SHA-256 if
/// offered anywhere, else MD5, else `None` (unknown entries are skipped).
pub fn select_algorithm(offer: &str) -> Option<ChapAlgorithm> {
    let codes: Vec<u64> = offer
        .split(',')
        .filter_map(super::keys::parse_number)
        .collect();
    if codes.contains(&7) {
        Some(ChapAlgorithm::Sha256)
    } else if codes.contains(&5) {
        Some(ChapAlgorithm::Md5)
    } else {
        None
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Encodes bytes as an RFC 7143 §6.1 hex binary value (`0x...`, lowercase).
pub fn encode_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Decodes an RFC 7143 §6.1 binary value: `0x`/`0X` hex (an odd digit
/// count has an implied leading zero) or `0b`/`0B` base64. Empty payloads
/// and bad digits give `None`.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() {
            return None;
        }
        if h.len() % 2 == 1 {
            return hex::decode(format!("0{h}")).ok();
        }
        return hex::decode(h).ok();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return decode_base64(b).filter(|d| !d.is_empty());
    }
    None
}

/// Standard base64 (RFC 4648 §4) with optional `=` padding.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Why CHAP failed. Every variant is login status 0x0201.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    /// None of the offered CHAP_A values is supported.
    #[error("no supported CHAP algorithm in {0:?}")]
    NoCommonAlgorithm(String),
    /// A CHAP key arrived out of order.
    #[error("unexpected CHAP key {0}")]
    UnexpectedKey(&'static str),
    /// A required CHAP key is missing.
    #[error("missing CHAP key {0}")]
    MissingKey(&'static str),
    /// A CHAP key's value is malformed.
    #[error("malformed value for {0}")]
    BadValue(&'static str),
    /// CHAP_N does not name the configured user.
    #[error("unknown CHAP user")]
    WrongUser,
    /// CHAP_R does not match.
    #[error("CHAP response mismatch")]
    WrongResponse,
    /// The initiator asked for mutual CHAP but none is configured.
    #[error("mutual CHAP requested but not configured")]
    MutualNotConfigured,
    /// The initiator reflected our own challenge back (RFC 7143 §12.1.3).
    #[error("initiator challenge equals target challenge")]
    Reflection,
}

/// The CHAP keys of one initiator PDU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChapKeys {
    /// CHAP_A.
    pub a: Option<String>,
    /// CHAP_I (mutual).
    pub i: Option<String>,
    /// CHAP_C (mutual).
    pub c: Option<String>,
    /// CHAP_N.
    pub n: Option<String>,
    /// CHAP_R.
    pub r: Option<String>,
}

impl ChapKeys {
    /// True when no CHAP key is present.
    pub fn is_empty(&self) -> bool {
        self.a.is_none()
            && self.i.is_none()
            && self.c.is_none()
            && self.n.is_none()
            && self.r.is_none()
    }
}

/// The target side of a CHAP exchange.
///
/// ```text
///   AwaitAlgorithm --CHAP_A--> AwaitResponse --CHAP_N,CHAP_R[,CHAP_I,CHAP_C]--> Done
///         |                         |
///         +------- any error ------+--> (login fails 0x0201)
/// ```
#[derive(Debug, Clone)]
pub enum ChapServer {
    /// Waiting for the initiator's CHAP_A list.
    AwaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N / CHAP_R.
    AwaitResponse {
        /// Chosen algorithm.
        alg: ChapAlgorithm,
        /// Identifier we sent.
        id: u8,
        /// Challenge we sent.
        challenge: Vec<u8>,
    },
    /// The initiator proved its identity (and we answered mutual CHAP).
    Done,
}

impl ChapServer {
    /// A fresh exchange.
    pub fn new() -> Self {
        ChapServer::AwaitAlgorithm
    }

    /// True once the initiator has authenticated.
    pub fn is_done(&self) -> bool {
        matches!(self, ChapServer::Done)
    }

    /// Feeds one PDU's CHAP keys; returns the keys to send back.
    pub fn step(
        &mut self,
        keys: &ChapKeys,
        creds: &ChapCredentials,
    ) -> Result<Vec<(String, String)>, ChapError> {
        match std::mem::replace(self, ChapServer::Done) {
            ChapServer::AwaitAlgorithm => {
                if keys.n.is_some() || keys.r.is_some() {
                    return Err(ChapError::UnexpectedKey("CHAP_R"));
                }
                let offer = keys.a.as_deref().ok_or(ChapError::MissingKey("CHAP_A"))?;
                let alg = select_algorithm(offer)
                    .ok_or_else(|| ChapError::NoCommonAlgorithm(offer.to_owned()))?;
                let mut rng = rand::thread_rng();
                let mut challenge = vec![0u8; alg.challenge_len()];
                rng.fill_bytes(&mut challenge);
                let mut idb = [0u8; 1];
                rng.fill_bytes(&mut idb);
                let id = idb[0];
                let out = vec![
                    ("CHAP_A".to_owned(), alg.code().to_string()),
                    ("CHAP_I".to_owned(), id.to_string()),
                    ("CHAP_C".to_owned(), encode_hex(&challenge)),
                ];
                *self = ChapServer::AwaitResponse { alg, id, challenge };
                Ok(out)
            }
            ChapServer::AwaitResponse { alg, id, challenge } => {
                if keys.a.is_some() {
                    return Err(ChapError::UnexpectedKey("CHAP_A"));
                }
                verify_and_answer(alg, id, &challenge, keys, creds)
            }
            ChapServer::Done => Err(ChapError::UnexpectedKey("CHAP_*")),
        }
    }
}

impl Default for ChapServer {
    fn default() -> Self {
        Self::new()
    }
}

fn verify_and_answer(
    alg: ChapAlgorithm,
    id: u8,
    challenge: &[u8],
    keys: &ChapKeys,
    creds: &ChapCredentials,
) -> Result<Vec<(String, String)>, ChapError> {
    let name = keys.n.as_deref().ok_or(ChapError::MissingKey("CHAP_N"))?;
    let resp = keys.r.as_deref().ok_or(ChapError::MissingKey("CHAP_R"))?;
    let resp = decode_binary(resp).ok_or(ChapError::BadValue("CHAP_R"))?;
    // Mutual request: both CHAP_I and CHAP_C, or neither.
    let mutual = match (&keys.i, &keys.c) {
        (None, None) => None,
        (Some(i), Some(c)) => {
            let i = super::keys::parse_number(i)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or(ChapError::BadValue("CHAP_I"))?;
            let c = decode_binary(c)
                .filter(|c| c.len() <= MAX_CHALLENGE_LEN)
                .ok_or(ChapError::BadValue("CHAP_C"))?;
            Some((i, c))
        }
        (Some(_), None) => return Err(ChapError::MissingKey("CHAP_C")),
        (None, Some(_)) => return Err(ChapError::MissingKey("CHAP_I")),
    };
    let user_ok = constant_time_eq(name.as_bytes(), creds.user.as_bytes());
    let expected = alg.response(id, &creds.secret, challenge);
    let resp_ok = constant_time_eq(&resp, &expected);
    if !user_ok {
        return Err(ChapError::WrongUser);
    }
    if !resp_ok {
        return Err(ChapError::WrongResponse);
    }
    let Some((their_id, their_challenge)) = mutual else {
        return Ok(Vec::new());
    };
    let (our_name, our_secret) = creds
        .mutual
        .as_ref()
        .ok_or(ChapError::MutualNotConfigured)?;
    if constant_time_eq(&their_challenge, challenge) {
        return Err(ChapError::Reflection);
    }
    let answer = alg.response(their_id, our_secret, &their_challenge);
    Ok(vec![
        ("CHAP_N".to_owned(), our_name.clone()),
        ("CHAP_R".to_owned(), encode_hex(&answer)),
    ])
}

#[cfg(test)]
#[path = "chap_tests.rs"]
mod tests;
