//! Every bad-input case of the login machine, with its Login Response
//! status (RFC 7143 §11.13.5), plus continuation and Reject answers.

#[path = "login_common.rs"]
mod common;

use bytes::Bytes;
use common::*;
use iscsi_target::login::{AuthVerdict, LoginInput, LoginMachine, Stage};

fn normal_first(target: &str) -> Vec<(&'static str, String)> {
    vec![
        ("InitiatorName", INITIATOR.into()),
        ("TargetName", target.into()),
        ("SessionType", "Normal".into()),
    ]
}

fn t(list: &[(&'static str, String)]) -> Bytes {
    let v: Vec<(&str, &str)> = list.iter().map(|(k, v)| (*k, v.as_str())).collect();
    kv(&v)
}

fn one(input: LoginInput) -> iscsi_target::login::LoginOutput {
    machine().step(&input)
}

#[test]
fn missing_initiator_name_is_0207() {
    let out = one(req(1, 3, true, kv(&[("TargetName", OPEN_TARGET)])));
    assert_status(&out, 2, 7);
}

#[test]
fn missing_target_name_in_normal_session_is_0207() {
    let out = one(req(1, 3, true, kv(&[("InitiatorName", INITIATOR)])));
    assert_status(&out, 2, 7);
}

#[test]
fn unknown_target_is_0203() {
    let out = one(req(
        1,
        3,
        true,
        t(&normal_first("iqn.2026-01.io.locus:nope")),
    ));
    assert_status(&out, 2, 3);
}

#[test]
fn acl_denies_other_initiator_with_0202() {
    let out = one(req(
        1,
        3,
        true,
        kv(&[
            ("InitiatorName", OTHER_INITIATOR),
            ("TargetName", ACL_TARGET),
        ]),
    ));
    assert_status(&out, 2, 2);
    let out = one(req(1, 3, true, t(&normal_first(ACL_TARGET))));
    assert_ok(&out);
    assert!(out.done.is_some());
}

#[test]
fn chap_required_but_only_none_offered_is_0201() {
    let mut k = normal_first(CHAP_TARGET);
    k.push(("AuthMethod", "None".into()));
    assert_status(&one(req(0, 1, true, t(&k))), 2, 1);
}

#[test]
fn skipping_security_when_auth_required_is_0201() {
    // Straight to the operational stage.
    assert_status(&one(req(1, 3, true, t(&normal_first(CHAP_TARGET)))), 2, 1);
    // Security stage, but transit without any AuthMethod.
    assert_status(&one(req(0, 1, true, t(&normal_first(CHAP_TARGET)))), 2, 1);
    // Security stage, then jump to the operational stage mid-CHAP.
    let mut m = machine();
    let mut k = normal_first(CHAP_TARGET);
    k.push(("AuthMethod", "CHAP".into()));
    assert_ok(&m.step(&req(0, 0, false, t(&k))));
    assert_status(&m.step(&req(0, 1, true, Bytes::new())), 2, 1);
}

fn chap_to_challenge(target: &str) -> (LoginMachine, u8, Vec<u8>) {
    let mut m = machine();
    let mut k = normal_first(target);
    k.push(("AuthMethod", "CHAP".into()));
    assert_ok(&m.step(&req(0, 0, false, t(&k))));
    let out = m.step(&req(0, 0, false, kv(&[("CHAP_A", "5")])));
    assert_ok(&out);
    let p = pairs(&out);
    let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
    (m, id, unhex(&get(&p, "CHAP_C").unwrap()))
}

#[test]
fn chap_verdicts_are_reported_for_the_throttle() {
    // No verdict before the CHAP response; the name is known from the first
    // PDU on.
    let (mut m, id, c) = chap_to_challenge(CHAP_TARGET);
    assert_eq!(m.auth_verdict(), None);
    assert_eq!(m.initiator_name(), Some(INITIATOR));
    let r = format!("0x{}", hex::encode(chap_response("5", id, b"wrong", &c)));
    assert_status(
        &m.step(&req(0, 1, true, kv(&[("CHAP_N", USER), ("CHAP_R", &r)]))),
        2,
        1,
    );
    assert_eq!(m.auth_verdict(), Some(AuthVerdict::Failed));
    assert_eq!(m.initiator_name(), Some(INITIATOR), "kept past the failure");
    // The step that completes CHAP passes; the next step has no verdict.
    let (mut m, id, c) = chap_to_challenge(CHAP_TARGET);
    let r = format!("0x{}", hex::encode(chap_response("5", id, SECRET, &c)));
    assert_ok(&m.step(&req(0, 1, true, kv(&[("CHAP_N", USER), ("CHAP_R", &r)]))));
    assert_eq!(m.auth_verdict(), Some(AuthVerdict::Passed));
    assert_ok(&m.step(&req(1, 3, true, Bytes::new())));
    assert_eq!(m.auth_verdict(), None);
    // A target without CHAP gives no verdict.
    let mut m = machine();
    let mut k = normal_first(OPEN_TARGET);
    k.push(("AuthMethod", "None".into()));
    assert_ok(&m.step(&req(0, 1, true, t(&k))));
    assert_eq!(m.auth_verdict(), None);
}

#[test]
fn chap_failures_are_0201() {
    // Wrong secret.
    let (mut m, id, c) = chap_to_challenge(CHAP_TARGET);
    let r = format!("0x{}", hex::encode(chap_response("5", id, b"wrong", &c)));
    assert_status(
        &m.step(&req(0, 1, true, kv(&[("CHAP_N", USER), ("CHAP_R", &r)]))),
        2,
        1,
    );
    // Wrong user.
    let (mut m, id, c) = chap_to_challenge(CHAP_TARGET);
    let r = format!("0x{}", hex::encode(chap_response("5", id, SECRET, &c)));
    assert_status(
        &m.step(&req(
            0,
            1,
            true,
            kv(&[("CHAP_N", "mallory"), ("CHAP_R", &r)]),
        )),
        2,
        1,
    );
    // Mutual requested on a one-way target.
    let (mut m, id, c) = chap_to_challenge(CHAP_TARGET);
    let r = format!("0x{}", hex::encode(chap_response("5", id, SECRET, &c)));
    let out = m.step(&req(
        0,
        1,
        true,
        kv(&[
            ("CHAP_N", USER),
            ("CHAP_R", &r),
            ("CHAP_I", "9"),
            ("CHAP_C", "0x00112233445566778899aabbccddeeff"),
        ]),
    ));
    assert_status(&out, 2, 1);
    // Reflected challenge.
    let (mut m, id, c) = chap_to_challenge(MUTUAL_TARGET);
    let r = format!("0x{}", hex::encode(chap_response("5", id, SECRET, &c)));
    let reflected = format!("0x{}", hex::encode(&c));
    let out = m.step(&req(
        0,
        1,
        true,
        kv(&[
            ("CHAP_N", USER),
            ("CHAP_R", &r),
            ("CHAP_I", "9"),
            ("CHAP_C", &reflected),
        ]),
    ));
    assert_status(&out, 2, 1);
}

#[test]
fn unsupported_chap_algorithm_is_0201() {
    let mut m = machine();
    let mut k = normal_first(CHAP_TARGET);
    k.push(("AuthMethod", "CHAP".into()));
    assert_ok(&m.step(&req(0, 0, false, t(&k))));
    assert_status(&m.step(&req(0, 0, false, kv(&[("CHAP_A", "6,8")]))), 2, 1);
}

#[test]
fn chap_keys_without_auth_method_are_0201() {
    let mut k = normal_first(CHAP_TARGET);
    k.push(("CHAP_A", "5".into()));
    assert_status(&one(req(0, 0, false, t(&k))), 2, 1);
}

#[test]
fn bad_stage_fields_are_0200() {
    let k = t(&normal_first(OPEN_TARGET));
    // NSG not after CSG.
    assert_status(&one(req(1, 1, true, k.clone())), 2, 0);
    assert_status(&one(req(1, 0, true, k.clone())), 2, 0);
    // Reserved stage values.
    assert_status(&one(req(2, 3, true, k.clone())), 2, 0);
    assert_status(&one(req(0, 2, true, k.clone())), 2, 0);
    // CSG = FullFeaturePhase.
    assert_status(&one(req(3, 3, false, k.clone())), 2, 0);
    // T and C together.
    let mut both = req(1, 3, true, k.clone());
    both.cont = true;
    assert_status(&one(both), 2, 0);
}

#[test]
fn csg_must_follow_the_negotiated_stage() {
    // Still in security (no T=1 granted), initiator claims operational.
    let mut m = machine();
    let mut k = normal_first(OPEN_TARGET);
    k.push(("AuthMethod", "None".into()));
    let out = m.step(&req(0, 0, false, t(&k)));
    assert_ok(&out);
    assert!(!out.transit);
    assert_eq!(m.stage(), Some(Stage::Security));
    assert_status(&m.step(&req(1, 3, true, Bytes::new())), 2, 0);
    // In operational, going back to security.
    let mut m = machine();
    assert_ok(&m.step(&req(1, 1, false, t(&normal_first(OPEN_TARGET)))));
    assert_status(&m.step(&req(0, 1, true, Bytes::new())), 2, 0);
}

#[test]
fn key_sent_twice_is_0200() {
    // Across PDUs.
    let mut m = machine();
    let mut k = normal_first(OPEN_TARGET);
    k.push(("MaxBurstLength", "65536".into()));
    assert_ok(&m.step(&req(1, 1, false, t(&k))));
    assert_status(
        &m.step(&req(1, 3, true, kv(&[("MaxBurstLength", "65536")]))),
        2,
        0,
    );
    // In one PDU.
    let mut k = normal_first(OPEN_TARGET);
    k.push(("ImmediateData", "Yes".into()));
    k.push(("ImmediateData", "No".into()));
    assert_status(&one(req(1, 3, true, t(&k))), 2, 0);
    // AuthMethod twice.
    let mut m = machine();
    let mut k = normal_first(CHAP_TARGET);
    k.push(("AuthMethod", "CHAP".into()));
    assert_ok(&m.step(&req(0, 0, false, t(&k))));
    assert_status(
        &m.step(&req(0, 0, false, kv(&[("AuthMethod", "CHAP")]))),
        2,
        0,
    );
}

#[test]
fn malformed_text_is_0200() {
    let mut bytes = t(&normal_first(OPEN_TARGET)).to_vec();
    bytes.extend_from_slice(b"NoEqualsSign\0");
    assert_status(&one(req(1, 3, true, Bytes::from(bytes))), 2, 0);
    let mut bytes = t(&normal_first(OPEN_TARGET)).to_vec();
    bytes.extend_from_slice(b"Key=\xff\0");
    assert_status(&one(req(1, 3, true, Bytes::from(bytes))), 2, 0);
}

#[test]
fn invalid_mrdsl_declaration_is_0200() {
    let mut k = normal_first(OPEN_TARGET);
    k.push(("MaxRecvDataSegmentLength", "100".into()));
    assert_status(&one(req(1, 3, true, t(&k))), 2, 0);
}

#[test]
fn unsupported_version_is_0205() {
    let mut r = req(1, 3, true, t(&normal_first(OPEN_TARGET)));
    r.version_min = 1;
    r.version_max = 1;
    assert_status(&one(r), 2, 5);
}

#[test]
fn unknown_session_type_is_0209() {
    let out = one(req(
        1,
        3,
        true,
        kv(&[("InitiatorName", INITIATOR), ("SessionType", "Bogus")]),
    ));
    assert_status(&out, 2, 9);
}

#[test]
fn invalid_initiator_name_is_0200() {
    let out = one(req(
        1,
        3,
        true,
        kv(&[("InitiatorName", "not-an-iqn"), ("TargetName", OPEN_TARGET)]),
    ));
    assert_status(&out, 2, 0);
}

#[test]
fn identity_change_is_0200_but_repeat_is_fine() {
    let mut m = machine();
    assert_ok(&m.step(&req(1, 1, false, t(&normal_first(OPEN_TARGET)))));
    let out = m.step(&req(1, 1, false, kv(&[("TargetName", ACL_TARGET)])));
    assert_status(&out, 2, 0);
    let mut m = machine();
    assert_ok(&m.step(&req(1, 1, false, t(&normal_first(OPEN_TARGET)))));
    assert_ok(&m.step(&req(1, 3, true, t(&normal_first(OPEN_TARGET)))));
}

#[test]
fn security_keys_in_operational_stage_are_0200() {
    let mut k = normal_first(OPEN_TARGET);
    k.push(("AuthMethod", "None".into()));
    assert_status(&one(req(1, 3, true, t(&k))), 2, 0);
}

#[test]
fn login_pdu_after_end_is_020b() {
    let mut m = machine();
    let out = m.step(&req(1, 3, true, t(&normal_first(OPEN_TARGET))));
    assert!(out.done.is_some());
    assert_status(&m.step(&req(1, 3, true, Bytes::new())), 2, 0x0b);
    let mut m = machine();
    assert_status(&m.step(&req(1, 3, true, Bytes::new())), 2, 7);
    assert!(m.is_failed());
    assert_status(&m.step(&req(1, 3, true, Bytes::new())), 2, 0x0b);
}

#[test]
fn invalid_values_get_reject_and_login_goes_on() {
    let mut k = normal_first(OPEN_TARGET);
    k.push(("MaxBurstLength", "100".into()));
    k.push(("ErrorRecoveryLevel", "7".into()));
    k.push(("X-com.example.Thing", "1".into()));
    k.push(("OFMarkInt", "2048~8192".into()));
    let out = one(req(1, 3, true, t(&k)));
    assert_ok(&out);
    let p = pairs(&out);
    assert_eq!(get(&p, "MaxBurstLength").as_deref(), Some("Reject"));
    assert_eq!(get(&p, "ErrorRecoveryLevel").as_deref(), Some("Reject"));
    assert_eq!(
        get(&p, "X-com.example.Thing").as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(get(&p, "OFMarkInt").as_deref(), Some("Reject"));
    let r = out.done.unwrap();
    assert_eq!(r.params.max_burst_length, 262_144, "RFC default kept");
}

#[test]
fn continued_text_is_gathered() {
    let mut m = machine();
    let mut k = normal_first(OPEN_TARGET);
    k.push(("MaxBurstLength", "65536".into()));
    let all = t(&k);
    let (a, b) = all.split_at(20);
    let mut first = req(1, 3, false, Bytes::copy_from_slice(a));
    first.cont = true;
    let out = m.step(&first);
    assert_ok(&out);
    assert!(!out.transit);
    assert!(out.text.is_empty(), "empty response to a continued PDU");
    assert_eq!(out.csg, Stage::Operational);
    assert_eq!(m.stage(), None, "no stage before the first complete PDU");
    let out = m.step(&req(1, 3, true, Bytes::copy_from_slice(b)));
    assert_ok(&out);
    assert_eq!(m.stage(), Some(Stage::FullFeature));
    assert_eq!(
        get(&pairs(&out), "MaxBurstLength").as_deref(),
        Some("65536")
    );
    assert!(out.done.is_some());
}

#[test]
fn continued_text_over_cap_is_0200() {
    let mut m = machine();
    let chunk = Bytes::from(vec![b'a'; 40 * 1024]);
    let mut r = req(1, 1, false, chunk.clone());
    r.cont = true;
    assert_ok(&m.step(&r));
    assert_status(&m.step(&r), 2, 0);
}

/// Found by the `text_keys` fuzz target: an initiator sending a key only a
/// target may send (TargetAlias, TargetPortalGroupTag, TargetAddress) used to
/// get a response with that key twice. It is an initiator error (02/00).
#[test]
fn initiator_sending_target_only_keys_is_an_initiator_error() {
    for key in ["TargetAlias", "TargetPortalGroupTag", "TargetAddress"] {
        let mut m = machine();
        let out = m.step(&req(
            0,
            1,
            true,
            kv(&[
                ("InitiatorName", INITIATOR),
                ("TargetName", OPEN_TARGET),
                ("AuthMethod", "None"),
                (key, "1"),
            ]),
        ));
        assert_status(&out, 2, 0);
        assert!(out.fatal, "{key}");
    }
}
