//! Login transcripts as open-iscsi (usr/login.c) sends them: key order and
//! values of `iscsi_make_login_pdu` / `fill_op_params_text`, checked against
//! what its response parser accepts.

#[path = "login_common.rs"]
mod common;

use common::*;
use iscsi_target::login::{Digest, LoginOutput, SessionType, Stage};

/// open-iscsi's leading-connection identity keys.
fn identity(target: &str) -> Vec<(&'static str, String)> {
    vec![
        ("InitiatorName", INITIATOR.into()),
        ("InitiatorAlias", "node1".into()),
        ("TargetName", target.into()),
        ("SessionType", "Normal".into()),
    ]
}

/// open-iscsi's operational offer for a normal session (default iscsid.conf).
fn op_keys(header_digest: &str) -> Vec<(&'static str, String)> {
    [
        ("HeaderDigest", header_digest),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "16776192"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
    ]
    .iter()
    .map(|(k, v)| (*k, v.to_string()))
    .collect()
}

fn text(list: &[(&'static str, String)]) -> bytes::Bytes {
    let v: Vec<(&str, &str)> = list.iter().map(|(k, v)| (*k, v.as_str())).collect();
    kv(&v)
}

fn check_final(out: &LoginOutput) {
    assert_ok(out);
    assert!(out.transit);
    assert_eq!(out.csg, Stage::Operational);
    assert_eq!(out.nsg, Stage::FullFeature);
    open_iscsi_accepts(out, false);
}

#[test]
fn no_auth_normal_session_in_one_pdu() {
    let mut m = machine();
    let mut keys = identity(OPEN_TARGET);
    keys.extend(op_keys("None"));
    let out = m.step(&req(1, 3, true, text(&keys)));
    check_final(&out);
    let p = pairs(&out);
    assert_eq!(get(&p, "TargetPortalGroupTag").as_deref(), Some("1"));
    assert_eq!(get(&p, "TargetAlias").as_deref(), Some("open disk"));
    assert_eq!(
        get(&p, "MaxRecvDataSegmentLength").as_deref(),
        Some("262144")
    );
    assert_eq!(get(&p, "InitialR2T").as_deref(), Some("No"));
    assert_eq!(get(&p, "MaxBurstLength").as_deref(), Some("1048576"));
    assert_eq!(get(&p, "IFMarker").as_deref(), Some("No"));
    assert!(m.is_full_feature());

    let r = out.done.expect("login finished");
    assert_eq!(r.session_type, SessionType::Normal);
    assert_eq!(r.initiator_name, INITIATOR);
    assert_eq!(r.initiator_alias.as_deref(), Some("node1"));
    assert_eq!(r.target_name.as_deref(), Some(OPEN_TARGET));
    assert_eq!(r.target_alias.as_deref(), Some("open disk"));
    assert_eq!(r.portal_group_tag, Some(1));
    assert_eq!(r.isid, [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01]);
    let sp = r.params;
    assert_eq!(sp.initiator_mrdsl, 262_144);
    assert_eq!(sp.target_mrdsl, 262_144);
    assert_eq!(sp.max_burst_length, 1_048_576);
    assert_eq!(sp.first_burst_length, 262_144);
    assert!(!sp.initial_r2t);
    assert!(sp.immediate_data);
    assert_eq!(sp.max_outstanding_r2t, 1);
    assert_eq!(sp.default_time2wait, 2);
    assert_eq!(sp.default_time2retain, 0);
    assert_eq!(sp.header_digest, Digest::None);
}

#[test]
fn crc32c_header_digest_preference() {
    let mut m = machine();
    let mut keys = identity(OPEN_TARGET);
    keys.extend(op_keys("CRC32C,None"));
    let out = m.step(&req(1, 3, true, text(&keys)));
    check_final(&out);
    assert_eq!(get(&pairs(&out), "HeaderDigest").as_deref(), Some("CRC32C"));
    assert_eq!(out.done.unwrap().params.header_digest, Digest::Crc32c);
}

/// Runs open-iscsi's CHAP security stage and returns after the T=1 response.
fn chap_security(
    m: &mut iscsi_target::login::LoginMachine,
    target: &str,
    chap_a: &str,
    mutual: bool,
) -> LoginOutput {
    let mut first = identity(target);
    first.push(("AuthMethod", "CHAP".into()));
    let out = m.step(&req(0, 0, false, text(&first)));
    assert_ok(&out);
    open_iscsi_accepts(&out, true);
    assert!(!out.transit);
    assert_eq!(out.csg, Stage::Security);
    let p = pairs(&out);
    assert_eq!(get(&p, "AuthMethod").as_deref(), Some("CHAP"));
    assert!(get(&p, "TargetPortalGroupTag").is_some());

    let out = m.step(&req(0, 0, false, kv(&[("CHAP_A", chap_a)])));
    assert_ok(&out);
    open_iscsi_accepts(&out, true);
    let p = pairs(&out);
    let alg = get(&p, "CHAP_A").unwrap();
    let expected_alg = if chap_a.split(',').any(|a| a == "7") {
        "7"
    } else {
        "5"
    };
    assert_eq!(alg, expected_alg);
    let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
    let challenge = unhex(&get(&p, "CHAP_C").unwrap());
    assert_eq!(challenge.len(), if alg == "7" { 32 } else { 16 });

    let resp = format!(
        "0x{}",
        hex::encode(chap_response(&alg, id, SECRET, &challenge))
    );
    let my_challenge = [0x5au8; 16];
    let my_id = 0x33u8;
    let mut keys: Vec<(&str, String)> = vec![("CHAP_N", USER.into()), ("CHAP_R", resp)];
    if mutual {
        keys.push(("CHAP_I", my_id.to_string()));
        keys.push(("CHAP_C", format!("0x{}", hex::encode(my_challenge))));
    }
    let out = m.step(&req(0, 1, true, text(&keys)));
    assert_ok(&out);
    open_iscsi_accepts(&out, true);
    assert!(out.transit, "authenticated: move on");
    assert_eq!((out.csg, out.nsg), (Stage::Security, Stage::Operational));
    let p = pairs(&out);
    if mutual {
        assert_eq!(get(&p, "CHAP_N").as_deref(), Some(TARGET_USER));
        let want = chap_response(&alg, my_id, TARGET_SECRET, &my_challenge);
        assert_eq!(unhex(&get(&p, "CHAP_R").unwrap()), want);
    } else {
        assert!(get(&p, "CHAP_R").is_none());
    }
    out
}

fn op_stage(m: &mut iscsi_target::login::LoginMachine) {
    let out = m.step(&req(1, 3, true, text(&op_keys("None"))));
    check_final(&out);
    // The TPGT went out in the first (security) response, not again.
    assert!(get(&pairs(&out), "TargetPortalGroupTag").is_none());
    let r = out.done.unwrap();
    assert_eq!(r.initiator_name, INITIATOR);
    assert_eq!(r.params.target_mrdsl, 262_144);
}

#[test]
fn chap_md5_one_way() {
    let mut m = machine();
    chap_security(&mut m, CHAP_TARGET, "5", false);
    op_stage(&mut m);
}

#[test]
fn chap_sha256_preferred_from_7_6_5() {
    let mut m = machine();
    chap_security(&mut m, CHAP_TARGET, "7,6,5", false);
    op_stage(&mut m);
}

#[test]
fn chap_sha256_from_8_7_6_5_mutual() {
    let mut m = machine();
    chap_security(&mut m, MUTUAL_TARGET, "8,7,6,5", true);
    op_stage(&mut m);
}

#[test]
fn chap_md5_mutual() {
    let mut m = machine();
    chap_security(&mut m, MUTUAL_TARGET, "5", true);
    op_stage(&mut m);
}

#[test]
fn tpgt_of_chap_target_is_returned() {
    let mut m = machine();
    let mut first = identity(CHAP_TARGET);
    first.push(("AuthMethod", "CHAP,None".into()));
    let out = m.step(&req(0, 1, true, text(&first)));
    assert_ok(&out);
    assert!(!out.transit, "CHAP still to do");
    assert_eq!(
        get(&pairs(&out), "TargetPortalGroupTag").as_deref(),
        Some("7")
    );
}

#[test]
fn discovery_straight_from_security_to_full_feature() {
    // open-iscsi discovery with default digests/MRDSL: CSG=0 -> NSG=3.
    let mut m = machine();
    let out = m.step(&req(
        0,
        3,
        true,
        kv(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ]),
    ));
    assert_ok(&out);
    open_iscsi_accepts(&out, true);
    assert!(out.transit);
    assert_eq!((out.csg, out.nsg), (Stage::Security, Stage::FullFeature));
    assert_eq!(get(&pairs(&out), "AuthMethod").as_deref(), Some("None"));
    let r = out.done.unwrap();
    assert_eq!(r.session_type, SessionType::Discovery);
    assert_eq!(r.target_name, None);
    assert_eq!(r.portal_group_tag, None);
    assert_eq!(r.params.target_mrdsl, 8192, "never declared: RFC default");
}

#[test]
fn discovery_through_operational_stage() {
    // open-iscsi discovery without auth and with a non-default MRDSL.
    let mut m = machine();
    let out = m.step(&req(
        1,
        3,
        true,
        kv(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxRecvDataSegmentLength", "32768"),
        ]),
    ));
    check_final(&out);
    assert!(get(&pairs(&out), "TargetPortalGroupTag").is_none());
    let r = out.done.unwrap();
    assert_eq!(r.params.initiator_mrdsl, 32_768);
}

#[test]
fn discovery_with_chap() {
    let mut m = machine_with(Some(creds(false)));
    let out = m.step(&req(
        0,
        0,
        false,
        kv(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "CHAP"),
        ]),
    ));
    assert_ok(&out);
    let out = m.step(&req(0, 0, false, kv(&[("CHAP_A", "5")])));
    let p = pairs(&out);
    let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
    let c = unhex(&get(&p, "CHAP_C").unwrap());
    let r = format!("0x{}", hex::encode(chap_response("5", id, SECRET, &c)));
    let out = m.step(&req(0, 3, true, kv(&[("CHAP_N", USER), ("CHAP_R", &r)])));
    assert_ok(&out);
    assert_eq!(out.nsg, Stage::FullFeature);
    assert!(out.done.is_some());
}
