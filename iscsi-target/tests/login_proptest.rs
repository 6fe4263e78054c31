//! Property tests: the text codec and the login machine never panic on any
//! input, round-trip valid text, and keep their output invariants.

#[path = "login_common.rs"]
mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use iscsi_target::login::discovery::TextRequestContext;
use iscsi_target::login::{
    encode_text, parse_text, text_request, LoginInput, SessionType, Stage, TextAccumulator,
};
use proptest::prelude::*;

/// Text that looks like login keys often enough to get past the parser.
fn texty() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        Just("InitiatorName".to_owned()),
        Just("TargetName".to_owned()),
        Just("SessionType".to_owned()),
        Just("AuthMethod".to_owned()),
        Just("CHAP_A".to_owned()),
        Just("CHAP_N".to_owned()),
        Just("CHAP_R".to_owned()),
        Just("CHAP_I".to_owned()),
        Just("CHAP_C".to_owned()),
        Just("MaxBurstLength".to_owned()),
        Just("FirstBurstLength".to_owned()),
        Just("HeaderDigest".to_owned()),
        Just("MaxRecvDataSegmentLength".to_owned()),
        Just("SendTargets".to_owned()),
        "[A-Za-z_.#-]{1,70}",
    ];
    let value = prop_oneof![
        Just(INITIATOR.to_owned()),
        Just(OPEN_TARGET.to_owned()),
        Just(CHAP_TARGET.to_owned()),
        Just("CHAP,None".to_owned()),
        Just("None".to_owned()),
        Just("Discovery".to_owned()),
        Just("7,5".to_owned()),
        Just("0x0011".to_owned()),
        Just("0bAA==".to_owned()),
        "[0-9]{0,12}",
        ".{0,40}",
    ];
    let pair = (key, value, any::<u8>()).prop_map(|(k, v, sep)| {
        let mut b = Vec::new();
        b.extend_from_slice(k.as_bytes());
        if sep != 0 {
            b.push(b'=');
        }
        b.extend_from_slice(v.as_bytes());
        b.push(0);
        b
    });
    prop_oneof![
        proptest::collection::vec(pair, 0..12).prop_map(|v| v.concat()),
        proptest::collection::vec(any::<u8>(), 0..600),
    ]
}

fn input() -> impl Strategy<Value = LoginInput> {
    (
        any::<bool>(),
        any::<bool>(),
        0u8..4,
        0u8..4,
        any::<u16>(),
        0u8..2,
        texty(),
    )
        .prop_map(|(transit, cont, csg, nsg, tsih, vmin, text)| LoginInput {
            transit,
            cont,
            csg,
            nsg,
            isid: [1, 2, 3, 4, 5, 6],
            tsih,
            cid: 0,
            version_max: vmin,
            version_min: vmin,
            text: Bytes::from(text),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_text_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_text(&data);
    }

    #[test]
    fn parse_texty_never_panics(data in texty()) {
        if let Ok(pairs) = parse_text(&data) {
            // Whatever parsed re-encodes and parses to the same pairs.
            let again = parse_text(&encode_text(&pairs)).unwrap();
            prop_assert_eq!(again, pairs);
        }
    }

    #[test]
    fn valid_pairs_round_trip(
        map in proptest::collection::btree_map("[A-Za-z][A-Za-z0-9._@+-]{0,62}", "[ -~]{0,100}", 0..10)
    ) {
        let pairs: Vec<(String, String)> = map.into_iter().collect();
        let parsed = parse_text(&encode_text(&pairs)).unwrap();
        prop_assert_eq!(parsed, pairs);
    }

    #[test]
    fn accumulator_respects_cap(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut acc = TextAccumulator::new(1000);
        let mut total = 0usize;
        for c in &chunks {
            match acc.push(c) {
                Ok(()) => { total += c.len(); prop_assert!(total <= 1000); }
                Err(_) => { prop_assert!(total + c.len() > 1000); total = 0; }
            }
        }
    }

    #[test]
    fn login_machine_never_panics_and_keeps_invariants(inputs in proptest::collection::vec(input(), 1..8)) {
        let mut m = machine_with(Some(creds(true)));
        let mut finished = false;
        for i in &inputs {
            let out = m.step(i);
            if out.status_class != 0 {
                prop_assert!(out.fatal);
                prop_assert!(!out.transit);
                prop_assert!(out.done.is_none());
                prop_assert!(out.text.is_empty());
            } else {
                prop_assert!(!finished, "no success after the login ended");
                prop_assert!(out.csg != Stage::FullFeature);
                if out.transit {
                    prop_assert!(out.nsg > out.csg);
                    prop_assert!(i.transit, "target transits only when asked");
                } else {
                    prop_assert_eq!(out.nsg, out.csg);
                }
                prop_assert_eq!(out.done.is_some(), out.transit && out.nsg == Stage::FullFeature);
                if let Some(r) = &out.done {
                    prop_assert!(r.params.first_burst_length <= r.params.max_burst_length);
                    finished = true;
                }
                prop_assert!(parse_text(&out.text).is_ok());
            }
        }
    }

    #[test]
    fn text_request_never_panics(data in texty(), discovery in any::<bool>()) {
        let dir = FakeDir { discovery_chap: None };
        let ctx = TextRequestContext {
            session_type: if discovery { SessionType::Discovery } else { SessionType::Normal },
            initiator_name: INITIATOR,
            target_name: (!discovery).then_some(OPEN_TARGET),
        };
        if let Ok(out) = text_request(ctx, &data, &dir) {
            prop_assert!(parse_text(&out).is_ok());
        }
    }
}

#[test]
fn machine_is_usable_behind_arc_dyn() {
    // The directory is shared; the machine is per connection.
    let dir: Arc<dyn iscsi_target::login::TargetDirectory> = Arc::new(FakeDir {
        discovery_chap: None,
    });
    let mut a = iscsi_target::login::LoginMachine::new(dir.clone(), Default::default());
    let mut b = iscsi_target::login::LoginMachine::new(dir, Default::default());
    let text = kv(&[("InitiatorName", INITIATOR), ("TargetName", OPEN_TARGET)]);
    assert!(a.step(&req(1, 3, true, text.clone())).done.is_some());
    assert!(b.step(&req(1, 3, true, text)).done.is_some());
}
