//! SendTargets discovery (RFC 7143 Appendix C, §13.3) and the
//! full-feature-phase Text Request handler (RFC 7143 §11.10, §6.2).
//!
//! Owns the answer text for Text Requests. It does not split the answer
//! into PDUs (see [`super::text::chunk_text`]) and does not track the Target
//! Transfer Tag of a continued exchange; the connection layer does both.

use std::net::SocketAddr;

use bytes::Bytes;

use super::keys::{self, answer, KeyKind, KeyUse};
use super::negotiate::SessionType;
use super::text::{encode_text, parse_text, TextError};
use super::TargetDirectory;

/// One portal of a target: an address and its portal group tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Portal {
    /// IP address and TCP port.
    pub addr: SocketAddr,
    /// TargetPortalGroupTag (RFC 7143 §13.9).
    pub tpgt: u16,
}

impl Portal {
    /// The TargetAddress value `ip:port,tpgt`, IPv6 in brackets
    /// (RFC 7143 §13.8).
    pub fn target_address(&self) -> String {
        match self.addr {
            SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), self.tpgt),
            SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), self.tpgt),
        }
    }
}

/// A target as listed by SendTargets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    /// iSCSI name.
    pub name: String,
    /// Portals; an empty list makes the initiator reuse the current address.
    pub portals: Vec<Portal>,
}

fn list_target(out: &mut Vec<(String, String)>, t: &DiscoveredTarget) {
    out.push(("TargetName".into(), t.name.clone()));
    for p in &t.portals {
        out.push(("TargetAddress".into(), p.target_address()));
    }
}

/// Answers one `SendTargets=<value>` (RFC 7143 Appendix C):
///
/// * `All` in a Discovery session: every visible target;
/// * `<iSCSI name>`: that target if visible (nothing if not);
/// * empty in a Normal session: the session's own target.
///
/// `All` in a Normal session and an empty value in a Discovery session get
/// `SendTargets=Reject`.
pub fn send_targets(
    value: &str,
    session_type: SessionType,
    current_target: Option<&str>,
    visible: &[DiscoveredTarget],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let reject = || vec![("SendTargets".to_owned(), answer::REJECT.to_owned())];
    match (value, session_type) {
        ("All", SessionType::Discovery) => {
            for t in visible {
                list_target(&mut out, t);
            }
        }
        ("All", SessionType::Normal) | ("", SessionType::Discovery) => return reject(),
        ("", SessionType::Normal) => {
            let Some(cur) = current_target else {
                return reject();
            };
            match visible.iter().find(|t| t.name == cur) {
                Some(t) => list_target(&mut out, t),
                None => out.push(("TargetName".into(), cur.to_owned())),
            }
        }
        (name, _) => {
            if let Some(t) = visible.iter().find(|t| t.name == name) {
                list_target(&mut out, t);
            }
        }
    }
    out
}

/// Who is asking, for [`text_request`].
#[derive(Debug, Clone, Copy)]
pub struct TextRequestContext<'a> {
    /// Session type of the session the request arrived on.
    pub session_type: SessionType,
    /// The session's InitiatorName.
    pub initiator_name: &'a str,
    /// The session's TargetName (Normal sessions).
    pub target_name: Option<&'a str>,
}

/// Answers a complete (already reassembled) Text Request data segment in
/// full-feature phase (RFC 7143 §11.10).
///
/// SendTargets is answered per [`send_targets`]; vendor and unknown keys
/// get `NotUnderstood`; declarations (InitiatorAlias) get no answer; any
/// other known key (login-only keys, or renegotiation, which this target
/// does not support) gets `Reject`. A malformed segment is an `Err`, which
/// the connection layer answers with a Reject PDU (RFC 7143 §11.17).
pub fn text_request(
    ctx: TextRequestContext<'_>,
    data: &[u8],
    dir: &dyn TargetDirectory,
) -> Result<Bytes, TextError> {
    let pairs = parse_text(data)?;
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in &pairs {
        match keys::lookup(key) {
            None => out.push((key.clone(), answer::NOT_UNDERSTOOD.into())),
            Some(def) if def.kind == KeyKind::Inquiry => {
                let visible = dir.visible_targets(ctx.initiator_name);
                out.extend(send_targets(
                    value,
                    ctx.session_type,
                    ctx.target_name,
                    &visible,
                ));
            }
            Some(def) if def.name == "InitiatorAlias" && def.usage == KeyUse::All => {}
            Some(_) => out.push((key.clone(), answer::REJECT.into())),
        }
    }
    Ok(encode_text(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::{ChapCredentials, TargetAuthInfo};

    fn targets() -> Vec<DiscoveredTarget> {
        vec![
            DiscoveredTarget {
                name: "iqn.2026-01.io.locus:a".into(),
                portals: vec![
                    Portal {
                        addr: "127.0.0.1:3260".parse().unwrap(),
                        tpgt: 1,
                    },
                    Portal {
                        addr: "[::1]:3261".parse().unwrap(),
                        tpgt: 2,
                    },
                ],
            },
            DiscoveredTarget {
                name: "iqn.2026-01.io.locus:b".into(),
                portals: vec![],
            },
        ]
    }

    struct Dir;
    impl TargetDirectory for Dir {
        fn lookup(&self, _: &str) -> Option<TargetAuthInfo> {
            None
        }
        fn discovery_auth(&self) -> Option<ChapCredentials> {
            None
        }
        fn visible_targets(&self, initiator: &str) -> Vec<DiscoveredTarget> {
            if initiator == "iqn.x:allowed" {
                targets()
            } else {
                vec![]
            }
        }
    }

    #[test]
    fn all_lists_every_target_and_portal() {
        let out = send_targets("All", SessionType::Discovery, None, &targets());
        let want: Vec<(String, String)> = [
            ("TargetName", "iqn.2026-01.io.locus:a"),
            ("TargetAddress", "127.0.0.1:3260,1"),
            ("TargetAddress", "[::1]:3261,2"),
            ("TargetName", "iqn.2026-01.io.locus:b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn named_empty_and_rejects() {
        let t = targets();
        let named = send_targets("iqn.2026-01.io.locus:b", SessionType::Discovery, None, &t);
        assert_eq!(named.len(), 1);
        assert!(send_targets("iqn.nope", SessionType::Discovery, None, &t).is_empty());
        let cur = send_targets("", SessionType::Normal, Some("iqn.2026-01.io.locus:a"), &t);
        assert_eq!(cur.len(), 3);
        assert_eq!(
            send_targets("", SessionType::Discovery, None, &t)[0].1,
            "Reject"
        );
        assert_eq!(
            send_targets("All", SessionType::Normal, Some("x"), &t)[0].1,
            "Reject"
        );
    }

    #[test]
    fn text_request_filters_by_initiator_and_answers_unknown() {
        let ctx = TextRequestContext {
            session_type: SessionType::Discovery,
            initiator_name: "iqn.x:allowed",
            target_name: None,
        };
        let out = text_request(
            ctx,
            b"SendTargets=All\0X-com.foo=1\0HeaderDigest=None\0",
            &Dir,
        )
        .unwrap();
        let pairs = parse_text(&out).unwrap();
        assert_eq!(pairs[0].0, "TargetName");
        assert_eq!(pairs.len(), 6);
        assert_eq!(pairs[4], ("X-com.foo".into(), "NotUnderstood".into()));
        assert_eq!(pairs[5], ("HeaderDigest".into(), "Reject".into()));
        let other = TextRequestContext {
            initiator_name: "iqn.x:other",
            ..ctx
        };
        let out = text_request(other, b"SendTargets=All\0", &Dir).unwrap();
        assert!(out.is_empty(), "ACL hides every target");
        assert!(text_request(ctx, b"broken\0", &Dir).is_err());
    }
}
