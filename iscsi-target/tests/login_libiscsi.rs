//! Login transcripts as libiscsi (lib/login.c, `iscsi_login_async`) sends
//! them. Notable quirks: T=1 already on the AuthMethod offer, NSG bits set
//! while T=0, identity keys sent again in the operational stage, uppercase
//! hex CHAP_R and a 32-byte mutual challenge with MD5.

#[path = "login_common.rs"]
mod common;

use bytes::Bytes;
use common::*;
use iscsi_target::login::{LoginMachine, SessionType, Stage};

fn identity(target: Option<&str>, discovery: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("InitiatorName", INITIATOR.to_owned()),
        ("InitiatorAlias", "libiscsi-test".to_owned()),
    ];
    if let Some(t) = target {
        v.push(("TargetName", t.to_owned()));
    }
    v.push((
        "SessionType",
        if discovery { "Discovery" } else { "Normal" }.to_owned(),
    ));
    v
}

/// libiscsi's operational keys, in its order (after the identity keys).
fn opneg(identity: Vec<(&'static str, String)>) -> Bytes {
    let mut v = identity;
    v.push(("HeaderDigest", "None,CRC32C".into()));
    v.push(("DataDigest", "None".into()));
    v.push(("InitialR2T", "No".into()));
    v.push(("ImmediateData", "Yes".into()));
    v.push(("MaxBurstLength", "262144".into()));
    v.push(("FirstBurstLength", "262144".into()));
    v.push(("DefaultTime2Wait", "2".into()));
    v.push(("DefaultTime2Retain", "0".into()));
    v.push(("MaxOutstandingR2T", "1".into()));
    v.push(("ErrorRecoveryLevel", "0".into()));
    v.push(("IFMarker", "No".into()));
    v.push(("OFMarker", "No".into()));
    v.push(("MaxConnections", "1".into()));
    v.push(("MaxRecvDataSegmentLength", "262144".into()));
    v.push(("DataPDUInOrder", "Yes".into()));
    v.push(("DataSequenceInOrder", "Yes".into()));
    let r: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
    kv(&r)
}

#[test]
fn no_chap_normal_login() {
    let mut m = machine();
    let out = m.step(&req(1, 3, true, opneg(identity(Some(OPEN_TARGET), false))));
    assert_ok(&out);
    assert!(out.transit);
    assert_eq!(out.nsg, Stage::FullFeature);
    let p = pairs(&out);
    assert_eq!(get(&p, "HeaderDigest").as_deref(), Some("None"));
    assert_eq!(get(&p, "FirstBurstLength").as_deref(), Some("262144"));
    assert_eq!(
        get(&p, "MaxRecvDataSegmentLength").as_deref(),
        Some("262144")
    );
    let r = out.done.unwrap();
    assert_eq!(r.params.max_burst_length, 262_144);
    assert_eq!(r.params.first_burst_length, 262_144);
}

fn libiscsi_chap(m: &mut LoginMachine, target: &str, mutual: bool) {
    // OFFER_CHAP: T=1, CSG=0, NSG=1.
    let mut first = identity(Some(target), false);
    first.push(("AuthMethod", "CHAP,None".into()));
    let r: Vec<(&str, &str)> = first.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = m.step(&req(0, 1, true, kv(&r)));
    assert_ok(&out);
    assert!(
        !out.transit,
        "target must hold the stage until CHAP is done"
    );
    assert_eq!(get(&pairs(&out), "AuthMethod").as_deref(), Some("CHAP"));

    // SELECT_ALGORITHM: T=0 but NSG bits still say 1.
    let out = m.step(&req(0, 1, false, kv(&[("CHAP_A", "5")])));
    assert_ok(&out);
    assert!(!out.transit);
    let p = pairs(&out);
    assert_eq!(get(&p, "CHAP_A").as_deref(), Some("5"));
    let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
    let c = unhex(&get(&p, "CHAP_C").unwrap());

    // SEND_RESPONSE: T=1, uppercase hex.
    let resp = format!(
        "0x{}",
        hex::encode_upper(chap_response("5", id, SECRET, &c))
    );
    let target_c = [0xc3u8; 32];
    let mut keys = vec![("CHAP_N", USER.to_owned()), ("CHAP_R", resp)];
    if mutual {
        keys.push(("CHAP_I", "1".into()));
        keys.push(("CHAP_C", format!("0x{}", hex::encode_upper(target_c))));
    }
    let r: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = m.step(&req(0, 1, true, kv(&r)));
    assert_ok(&out);
    assert!(out.transit);
    assert_eq!((out.csg, out.nsg), (Stage::Security, Stage::Operational));
    let p = pairs(&out);
    if mutual {
        // libiscsi insists on CHAP_N and a 16-byte CHAP_R here.
        assert_eq!(get(&p, "CHAP_N").as_deref(), Some(TARGET_USER));
        let r = get(&p, "CHAP_R").unwrap();
        assert_eq!(r.len(), 2 + 32);
        assert_eq!(unhex(&r), chap_response("5", 1, TARGET_SECRET, &target_c));
    }

    // OPNEG: identity keys are sent again.
    let out = m.step(&req(1, 3, true, opneg(identity(Some(target), false))));
    assert_ok(&out);
    assert!(out.transit);
    assert_eq!(out.nsg, Stage::FullFeature);
    let r = out.done.unwrap();
    assert_eq!(r.target_name.as_deref(), Some(target));
}

#[test]
fn chap_one_way() {
    let mut m = machine();
    libiscsi_chap(&mut m, CHAP_TARGET, false);
}

#[test]
fn chap_mutual() {
    let mut m = machine();
    libiscsi_chap(&mut m, MUTUAL_TARGET, true);
}

#[test]
fn user_set_but_target_open_negotiates_none() {
    // libiscsi with a CHAP user against a target without CHAP.
    let mut m = machine();
    let mut first = identity(Some(OPEN_TARGET), false);
    first.push(("AuthMethod", "CHAP,None".into()));
    let r: Vec<(&str, &str)> = first.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = m.step(&req(0, 1, true, kv(&r)));
    assert_ok(&out);
    assert!(out.transit);
    assert_eq!(get(&pairs(&out), "AuthMethod").as_deref(), Some("None"));
    let out = m.step(&req(1, 3, true, opneg(identity(Some(OPEN_TARGET), false))));
    assert_ok(&out);
    assert!(out.done.is_some());
}

#[test]
fn discovery_answers_irrelevant_for_normal_only_keys() {
    let mut m = machine();
    let out = m.step(&req(1, 3, true, opneg(identity(None, true))));
    assert_ok(&out);
    let p = pairs(&out);
    assert_eq!(get(&p, "InitialR2T").as_deref(), Some("Irrelevant"));
    assert_eq!(get(&p, "MaxBurstLength").as_deref(), Some("Irrelevant"));
    assert_eq!(get(&p, "HeaderDigest").as_deref(), Some("None"));
    let r = out.done.unwrap();
    assert_eq!(r.session_type, SessionType::Discovery);
}
