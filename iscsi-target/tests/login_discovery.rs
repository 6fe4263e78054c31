//! Discovery end to end at the logic level: a discovery login followed by
//! SendTargets Text Requests (RFC 7143 Appendix C), ACL-filtered, and
//! SendTargets in a normal session.

#[path = "login_common.rs"]
mod common;

use common::*;
use iscsi_target::login::discovery::TextRequestContext;
use iscsi_target::login::text::chunk_text;
use iscsi_target::login::{parse_text, text_request, SessionType};

fn discovery_login(initiator: &str) -> iscsi_target::login::LoginResult {
    let mut m = machine();
    let out = m.step(&req(
        0,
        3,
        true,
        kv(&[
            ("InitiatorName", initiator),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ]),
    ));
    assert_ok(&out);
    out.done.expect("discovery login completes")
}

#[test]
fn send_targets_all_after_discovery_login() {
    let r = discovery_login(INITIATOR);
    let dir = FakeDir {
        discovery_chap: None,
    };
    let ctx = TextRequestContext {
        session_type: r.session_type,
        initiator_name: &r.initiator_name,
        target_name: r.target_name.as_deref(),
    };
    let out = text_request(ctx, b"SendTargets=All\0", &dir).unwrap();
    let p = parse_text(&out).unwrap();
    let want: Vec<(String, String)> = [
        ("TargetName", OPEN_TARGET),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetAddress", "[::1]:3260,1"),
        ("TargetName", ACL_TARGET),
        ("TargetAddress", "127.0.0.1:3261,2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(p, want);

    // Long answers are split for C-bit Text Responses and reassemble.
    let chunks = chunk_text(&out, 32);
    assert!(chunks.len() > 1);
    assert!(chunks.iter().all(|c| c.len() <= 32));
    assert_eq!(chunks.concat(), out.to_vec());
}

#[test]
fn acl_filters_send_targets() {
    let r = discovery_login(OTHER_INITIATOR);
    let dir = FakeDir {
        discovery_chap: None,
    };
    let ctx = TextRequestContext {
        session_type: SessionType::Discovery,
        initiator_name: &r.initiator_name,
        target_name: None,
    };
    let p = parse_text(&text_request(ctx, b"SendTargets=All\0", &dir).unwrap()).unwrap();
    let names: Vec<&str> = p
        .iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(names, vec![OPEN_TARGET]);
    // Asking for the hidden target by name gives nothing.
    let out = text_request(ctx, format!("SendTargets={ACL_TARGET}\0").as_bytes(), &dir).unwrap();
    assert!(out.is_empty());
}

#[test]
fn send_targets_in_normal_session() {
    let dir = FakeDir {
        discovery_chap: None,
    };
    let ctx = TextRequestContext {
        session_type: SessionType::Normal,
        initiator_name: INITIATOR,
        target_name: Some(OPEN_TARGET),
    };
    let p = parse_text(&text_request(ctx, b"SendTargets=\0", &dir).unwrap()).unwrap();
    assert_eq!(p[0], ("TargetName".into(), OPEN_TARGET.into()));
    assert_eq!(p.len(), 3);
    let p = parse_text(&text_request(ctx, b"SendTargets=All\0", &dir).unwrap()).unwrap();
    assert_eq!(p, vec![("SendTargets".into(), "Reject".into())]);
    let p =
        parse_text(&text_request(ctx, b"X-vendor.thing=7\0MaxBurstLength=512\0", &dir).unwrap())
            .unwrap();
    assert_eq!(p[0].1, "NotUnderstood");
    assert_eq!(p[1].1, "Reject");
}
