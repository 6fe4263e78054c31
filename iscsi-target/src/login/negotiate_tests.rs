//! Unit tests for the operational key responder rules.

use super::*;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(out: &'a [(String, String)], k: &str) -> Option<&'a str> {
    out.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn normal() -> Negotiator {
    Negotiator::new(TargetLimits::default(), SessionType::Normal)
}

#[test]
fn result_functions_follow_rfc() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "8"),
            ("ErrorRecoveryLevel", "2"),
            ("DataPDUInOrder", "No"),
            ("DataSequenceInOrder", "No"),
        ]))
        .unwrap();
    assert_eq!(get(&out, "InitialR2T"), Some("No"), "OR: No|No");
    assert_eq!(get(&out, "ImmediateData"), Some("Yes"), "AND: Yes&Yes");
    assert_eq!(get(&out, "MaxBurstLength"), Some("1048576"), "min");
    assert_eq!(get(&out, "FirstBurstLength"), Some("262144"));
    assert_eq!(get(&out, "DefaultTime2Wait"), Some("2"), "max(0, 2)");
    assert_eq!(get(&out, "DefaultTime2Retain"), Some("0"), "min(0, 20)");
    assert_eq!(get(&out, "MaxOutstandingR2T"), Some("1"));
    assert_eq!(get(&out, "MaxConnections"), Some("1"));
    assert_eq!(get(&out, "ErrorRecoveryLevel"), Some("0"));
    assert_eq!(get(&out, "DataPDUInOrder"), Some("Yes"), "OR with our Yes");
    assert_eq!(get(&out, "DataSequenceInOrder"), Some("Yes"));
    let p = n.params();
    assert!(!p.initial_r2t);
    assert_eq!(p.max_burst_length, 1_048_576);
    assert_eq!(p.default_time2retain, 0);
    assert_eq!(p.max_outstanding_r2t, 1);
}

#[test]
fn unnegotiated_keys_keep_rfc_defaults_not_target_preferences() {
    let n = normal();
    let p = n.params();
    assert!(p.initial_r2t, "RFC default Yes even though we prefer No");
    assert_eq!(p.max_burst_length, 262_144);
    assert_eq!(p.first_burst_length, 65_536);
    assert_eq!(p.initiator_mrdsl, 8192);
    assert_eq!(p.target_mrdsl, 8192);
    assert_eq!(p.default_time2retain, 20);
}

#[test]
fn and_or_with_target_preferences() {
    let limits = TargetLimits {
        immediate_data: false,
        initial_r2t: true,
        ..TargetLimits::default()
    };
    let mut n = Negotiator::new(limits, SessionType::Normal);
    let out = n
        .negotiate(&pairs(&[("ImmediateData", "Yes"), ("InitialR2T", "No")]))
        .unwrap();
    assert_eq!(get(&out, "ImmediateData"), Some("No"));
    assert_eq!(get(&out, "InitialR2T"), Some("Yes"));
}

#[test]
fn first_burst_clamped_to_max_burst() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[
            ("FirstBurstLength", "262144"),
            ("MaxBurstLength", "65536"),
        ]))
        .unwrap();
    assert_eq!(get(&out, "MaxBurstLength"), Some("65536"));
    assert_eq!(get(&out, "FirstBurstLength"), Some("65536"));
    assert_eq!(n.params().first_burst_length, 65_536);
}

#[test]
fn digests_pick_first_supported_in_initiator_order() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None,CRC32C"),
        ]))
        .unwrap();
    assert_eq!(get(&out, "HeaderDigest"), Some("CRC32C"));
    assert_eq!(get(&out, "DataDigest"), Some("None"));
    assert_eq!(n.params().header_digest, Digest::Crc32c);

    let limits = TargetLimits {
        header_digest: DigestPolicy::Crc32cOnly,
        data_digest: DigestPolicy::NoneOnly,
        ..TargetLimits::default()
    };
    let mut n = Negotiator::new(limits, SessionType::Normal);
    let out = n
        .negotiate(&pairs(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "md5,CRC32C"),
        ]))
        .unwrap();
    assert_eq!(get(&out, "HeaderDigest"), Some("Reject"));
    assert_eq!(get(&out, "DataDigest"), Some("Reject"));
    assert_eq!(n.params().header_digest, Digest::None);
}

#[test]
fn out_of_range_and_malformed_values_are_rejected() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[
            ("MaxBurstLength", "511"),
            ("FirstBurstLength", "16777216"),
            ("ErrorRecoveryLevel", "3"),
            ("MaxConnections", "0"),
            ("InitialR2T", "yes"),
            ("DefaultTime2Wait", "3601"),
            ("MaxOutstandingR2T", "abc"),
        ]))
        .unwrap();
    for (_, v) in &out {
        assert_eq!(v, "Reject");
    }
    assert_eq!(out.len(), 7);
    assert_eq!(n.params(), &SessionParams::default());
}

#[test]
fn hex_numbers_accepted() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[("MaxBurstLength", "0x10000")]))
        .unwrap();
    assert_eq!(get(&out, "MaxBurstLength"), Some("65536"));
}

#[test]
fn unknown_vendor_obsolete_and_misplaced_keys() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[
            ("X-com.example.Foo", "1"),
            ("X#42", "1"),
            ("FancyKey", "1"),
            ("IFMarker", "No"),
            ("OFMarker", "Yes"),
            ("OFMarkInt", "2048~8192"),
            ("IFMarkInt", "2048"),
            ("SendTargets", "All"),
            ("TaskReporting", "ResponseFence,RFC3720"),
            ("iSCSIProtocolLevel", "2"),
        ]))
        .unwrap();
    assert_eq!(get(&out, "X-com.example.Foo"), Some("NotUnderstood"));
    assert_eq!(get(&out, "X#42"), Some("NotUnderstood"));
    assert_eq!(get(&out, "FancyKey"), Some("NotUnderstood"));
    assert_eq!(get(&out, "IFMarker"), Some("No"));
    assert_eq!(get(&out, "OFMarker"), Some("No"));
    assert_eq!(get(&out, "OFMarkInt"), Some("Reject"));
    assert_eq!(get(&out, "IFMarkInt"), Some("Reject"));
    assert_eq!(get(&out, "SendTargets"), Some("Reject"));
    assert_eq!(get(&out, "TaskReporting"), Some("RFC3720"));
    assert_eq!(get(&out, "iSCSIProtocolLevel"), Some("1"));
    assert_eq!(n.params().protocol_level, 1);
    let out = n.negotiate(&pairs(&[("TaskReporting2", "x")])).unwrap();
    assert_eq!(out.len(), 1);
    // A key only a target may send is a protocol error, not a Reject.
    assert!(matches!(
        normal().negotiate(&pairs(&[("TargetAlias", "me")])),
        Err(NegotiationError::TargetOnlyKey(_))
    ));
}

#[test]
fn task_reporting_without_rfc3720_is_rejected() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[("TaskReporting", "FastAbort")]))
        .unwrap();
    assert_eq!(get(&out, "TaskReporting"), Some("Reject"));
}

#[test]
fn discovery_session_answers_irrelevant_for_normal_only_keys() {
    let mut n = Negotiator::new(TargetLimits::default(), SessionType::Discovery);
    let out = n
        .negotiate(&pairs(&[
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("HeaderDigest", "None"),
            ("DefaultTime2Wait", "2"),
        ]))
        .unwrap();
    for (k, v) in &out[..8] {
        assert_eq!(v, "Irrelevant", "{k}");
    }
    assert_eq!(get(&out, "HeaderDigest"), Some("None"));
    assert_eq!(get(&out, "DefaultTime2Wait"), Some("2"));
}

#[test]
fn key_sent_twice_across_pdus_is_an_error() {
    let mut n = normal();
    n.negotiate(&pairs(&[("MaxBurstLength", "65536")])).unwrap();
    assert_eq!(
        n.negotiate(&pairs(&[("MaxBurstLength", "65536")])),
        Err(NegotiationError::Duplicate("MaxBurstLength".into()))
    );
    let mut n = normal();
    n.negotiate(&pairs(&[("X-foo", "1")])).unwrap();
    assert!(n.negotiate(&pairs(&[("X-foo", "1")])).is_err());
}

#[test]
fn mrdsl_is_declarative_in_both_directions() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[("MaxRecvDataSegmentLength", "65536")]))
        .unwrap();
    assert!(out.is_empty(), "declarations are not answered");
    assert_eq!(n.params().initiator_mrdsl, 65_536);
    assert_eq!(
        n.take_declaration(),
        Some(("MaxRecvDataSegmentLength".into(), "262144".into()))
    );
    assert_eq!(n.take_declaration(), None, "declared once");
    assert_eq!(n.params().target_mrdsl, 262_144);

    for bad in ["511", "16777216", "x"] {
        let mut n = normal();
        assert!(matches!(
            n.negotiate(&pairs(&[("MaxRecvDataSegmentLength", bad)])),
            Err(NegotiationError::InvalidDeclaration { .. })
        ));
    }
}

#[test]
fn identity_and_security_keys_are_left_to_the_machine() {
    let mut n = normal();
    let out = n
        .negotiate(&pairs(&[
            ("InitiatorName", "iqn.x"),
            ("TargetName", "iqn.y"),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
            ("CHAP_A", "5"),
        ]))
        .unwrap();
    assert!(out.is_empty());
}

#[test]
fn over_long_value_is_rejected() {
    let mut n = normal();
    let long = "1".repeat(300);
    let out = n.negotiate(&pairs(&[("MaxBurstLength", &long)])).unwrap();
    assert_eq!(get(&out, "MaxBurstLength"), Some("Reject"));
}
