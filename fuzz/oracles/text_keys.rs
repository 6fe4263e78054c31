//! The oracle of the `text_keys` fuzz target: fuzzes the text key=value codec (RFC 7143 §6.1) and, with the same
//! input, the login state machine (RFC 7143 §6.3, §11.12, §11.13).
//!
//! 1. `parse_text` on the whole input. Oracles: no panic; an accepted
//!    non-empty input ends with a NUL (every pair, the last one included, is
//!    NUL-terminated) and a non-empty input without a final NUL is refused
//!    with `Unterminated`; every accepted pair obeys §6.1 (key of 1..=63
//!    bytes from the key alphabet, value of at most 8192 bytes without
//!    control characters, no key repeated except `TargetName`/
//!    `TargetAddress`); `encode_text` of the pairs parses back to the same
//!    pairs.
//! 2. The input as a login: byte 0 picks the directory (bit 0: discovery
//!    needs CHAP; bit 1: a 1 KiB cap on continued text instead of 64 KiB);
//!    the rest is a sequence of steps `[flags][len lo][len hi][text; len]`
//!    (the last step takes what is left). Flags: bit 0 T, bit 1 C,
//!    bits 2-3 CSG, bits 4-5 NSG, bit 6 Version-min = 1. In a step's text the
//!    value `CHAP_R=?` is replaced by the correct response to the last
//!    challenge (secret of the CHAP targets), so the fuzzer can get past
//!    authentication. Oracles: no panic; a non-zero status is fatal and
//!    carries no text, no T bit and no result; a success has NSG > CSG with
//!    T and NSG = CSG without it; a result comes exactly with T and
//!    NSG = FullFeaturePhase; our own response text parses; once failed or
//!    finished, every further step is fatal with 0x020B; a final (C=0) step
//!    whose text, with what continued steps gathered before it, is non-empty
//!    and does not end with a NUL is fatal with 0x0200 (or 0x0205 when a
//!    first PDU's Version-min is checked before its text).

use std::sync::Arc;

use bytes::Bytes;
use iscsi_target::login::chap::{decode_binary, encode_hex, ChapAlgorithm};
use iscsi_target::login::{
    encode_text, parse_text, ChapCredentials, DiscoveredTarget, LoginInput, LoginMachine,
    LoginOutput, LoginStatus, Stage, TargetAuthInfo, TargetDirectory, TargetLimits, TextError,
};

/// Initiator allowed by the ACL of [`ACL_TARGET`].
const INITIATOR: &str = "iqn.2026-11.test:init";
/// Target without ACL or CHAP, with an alias.
const OPEN_TARGET: &str = "iqn.2026-11.test:open";
/// Target whose ACL admits [`INITIATOR`] only.
const ACL_TARGET: &str = "iqn.2026-11.test:acl";
/// Target requiring one-way CHAP.
const CHAP_TARGET: &str = "iqn.2026-11.test:chap";
/// Target requiring mutual CHAP.
const MUTUAL_TARGET: &str = "iqn.2026-11.test:mutual";
/// CHAP user and secret of every CHAP-protected target (and discovery).
const CHAP_USER: &str = "fuzzuser";
const CHAP_SECRET: &[u8] = b"fuzz-secret-16by";

/// A fixed, in-memory target directory.
struct Directory {
    discovery_chap: bool,
}

fn creds(mutual: bool) -> ChapCredentials {
    ChapCredentials {
        user: CHAP_USER.into(),
        secret: CHAP_SECRET.to_vec(),
        mutual: mutual.then(|| ("fuzztarget".into(), b"target-secret-16".to_vec())),
    }
}

impl TargetDirectory for Directory {
    fn lookup(&self, target_name: &str) -> Option<TargetAuthInfo> {
        let (alias, acl, chap) = match target_name {
            OPEN_TARGET => (Some("open disk".to_owned()), None, None),
            ACL_TARGET => (None, Some(vec![INITIATOR.to_owned()]), None),
            CHAP_TARGET => (None, None, Some(creds(false))),
            MUTUAL_TARGET => (Some("mutual".to_owned()), None, Some(creds(true))),
            _ => return None,
        };
        Some(TargetAuthInfo {
            name: target_name.to_owned(),
            alias,
            acl,
            chap,
            portal_group_tag: 1,
        })
    }

    fn discovery_auth(&self) -> Option<ChapCredentials> {
        self.discovery_chap.then(|| creds(false))
    }

    fn visible_targets(&self, initiator_name: &str) -> Vec<DiscoveredTarget> {
        [OPEN_TARGET, ACL_TARGET, CHAP_TARGET, MUTUAL_TARGET]
            .into_iter()
            .filter(|t| *t != ACL_TARGET || initiator_name == INITIATOR)
            .map(|t| DiscoveredTarget {
                name: t.to_owned(),
                portals: Vec::new(),
            })
            .collect()
    }
}

fn check_parse(data: &[u8]) {
    let parsed = parse_text(data);
    if data.last().is_some_and(|&b| b != 0) {
        assert!(
            matches!(parsed, Err(TextError::Unterminated { .. })),
            "unterminated last pair not refused: {parsed:?}"
        );
        return;
    }
    let Ok(pairs) = parsed else {
        return;
    };
    for (i, (k, v)) in pairs.iter().enumerate() {
        assert!((1..=63).contains(&k.len()), "key length {}", k.len());
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+@_".contains(&b)),
            "bad key {k:?}"
        );
        assert!(v.len() <= 8192, "value of {} bytes", v.len());
        assert!(!v.chars().any(char::is_control), "control char in {v:?}");
        if k != "TargetName" && k != "TargetAddress" {
            assert!(
                pairs[..i].iter().all(|(p, _)| p != k),
                "duplicate key {k} accepted"
            );
        }
    }
    let again = parse_text(&encode_text(&pairs)).expect("encoded pairs parse");
    assert_eq!(again, pairs, "parse(encode(pairs)) != pairs");
}

/// The last CHAP challenge the target sent.
#[derive(Default)]
struct Challenge {
    alg: Option<ChapAlgorithm>,
    id: Option<u8>,
    challenge: Option<Vec<u8>>,
}

impl Challenge {
    fn update(&mut self, pairs: &[(String, String)]) {
        for (k, v) in pairs {
            match k.as_str() {
                "CHAP_A" => {
                    self.alg = match v.as_str() {
                        "5" => Some(ChapAlgorithm::Md5),
                        "7" => Some(ChapAlgorithm::Sha256),
                        _ => None,
                    }
                }
                "CHAP_I" => self.id = v.parse().ok(),
                "CHAP_C" => self.challenge = decode_binary(v),
                _ => {}
            }
        }
    }

    /// `text` with `CHAP_R=?` replaced by the correct response, if known.
    fn fill(&self, text: &[u8]) -> Bytes {
        let (Some(alg), Some(id), Some(c)) = (self.alg, self.id, &self.challenge) else {
            return Bytes::copy_from_slice(text);
        };
        let answer = format!("CHAP_R={}", encode_hex(&alg.response(id, CHAP_SECRET, c)));
        let mut out = Vec::with_capacity(text.len() + answer.len());
        for (i, item) in text.split(|&b| b == 0).enumerate() {
            if i > 0 {
                out.push(0);
            }
            if item == b"CHAP_R=?" {
                out.extend_from_slice(answer.as_bytes());
            } else {
                out.extend_from_slice(item);
            }
        }
        out.into()
    }
}

fn check_output(out: &LoginOutput, was_done: bool) {
    let status = LoginStatus {
        class: out.status_class,
        detail: out.status_detail,
    };
    if was_done {
        assert!(out.fatal, "step after the end was not fatal");
        assert_eq!(status, LoginStatus::INVALID_DURING_LOGIN);
    }
    if out.status_class != 0 || out.status_detail != 0 {
        assert!(out.fatal, "failure status {status:?} not fatal");
        assert!(!out.transit && out.done.is_none() && out.text.is_empty());
        assert_eq!(out.csg, out.nsg);
        return;
    }
    assert!(!out.fatal, "success status yet fatal");
    if out.transit {
        assert!(out.nsg > out.csg, "T=1 with NSG {:?} <= CSG", out.nsg);
    } else {
        assert_eq!(out.nsg, out.csg, "T=0 with NSG != CSG");
    }
    assert_ne!(out.csg, Stage::FullFeature, "response CSG is FullFeature");
    assert_eq!(
        out.done.is_some(),
        out.transit && out.nsg == Stage::FullFeature,
        "result without a move to full feature, or the reverse"
    );
    let pairs = parse_text(&out.text).expect("our response text parses");
    assert!(!pairs.is_empty() || out.text.is_empty());
}

fn run_login(data: &[u8]) {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let dir = Arc::new(Directory {
        discovery_chap: cfg & 1 != 0,
    });
    let limits = TargetLimits {
        max_text_len: if cfg & 2 != 0 { 1024 } else { 64 * 1024 },
        ..TargetLimits::default()
    };
    let mut m = LoginMachine::new(dir, limits);
    let mut chap = Challenge::default();
    let mut ended = false;
    // Text gathered by continued (C=1) steps the machine accepted.
    let mut gathered: Vec<u8> = Vec::new();
    while let Some((&flags, tail)) = rest.split_first() {
        let len = match tail {
            [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => tail.len(),
        };
        let tail = tail.get(2..).unwrap_or_default();
        let (text, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        let input = LoginInput {
            transit: flags & 1 != 0,
            cont: flags & 2 != 0,
            csg: (flags >> 2) & 3,
            nsg: (flags >> 4) & 3,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            cid: 1,
            version_max: 0,
            version_min: (flags >> 6) & 1,
            text: chap.fill(text),
        };
        // Version-min is checked on every PDU before the first stage.
        let first = m.stage().is_none();
        let out = m.step(&input);
        check_output(&out, ended);
        if !ended {
            gathered.extend_from_slice(&input.text);
            if !input.cont {
                if gathered.last().is_some_and(|&b| b != 0) {
                    let status = (out.status_class, out.status_detail);
                    assert!(
                        out.fatal && (status == (2, 0) || (first && status == (2, 5))),
                        "unterminated login text accepted: {status:?}"
                    );
                }
                gathered.clear();
            }
        }
        if out.fatal {
            assert!(m.is_failed() && m.stage().is_none());
            ended = true;
        } else if out.done.is_some() {
            assert!(m.is_full_feature());
            assert_eq!(m.stage(), Some(Stage::FullFeature));
            ended = true;
        } else {
            // A continued first PDU leaves the machine before its first stage.
            if !input.cont || m.stage().is_some() {
                assert_eq!(m.stage(), Some(out.nsg), "machine stage != response NSG");
            }
            if let Ok(pairs) = parse_text(&out.text) {
                chap.update(&pairs);
            }
        }
    }
}

/// Runs one input through the oracles; panics when one fails.
pub fn check(data: &[u8]) {
    check_parse(data);
    run_login(data);
}
