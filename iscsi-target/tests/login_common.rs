//! Shared helpers for the `login_*` integration tests: a fake target
//! directory, Login Request builders and an initiator-side CHAP helper.
//! Included by the other test files with `#[path]`; has no tests itself.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use iscsi_target::login::discovery::{DiscoveredTarget, Portal};
use iscsi_target::login::{
    encode_text, parse_text, ChapCredentials, LoginInput, LoginMachine, LoginOutput,
    TargetAuthInfo, TargetDirectory, TargetLimits,
};
use md5::{Digest, Md5};
use sha2::Sha256;

pub const INITIATOR: &str = "iqn.2004-10.com.ubuntu:01:2d5d9f1e3a7";
pub const OTHER_INITIATOR: &str = "iqn.1994-05.com.redhat:intruder";
pub const OPEN_TARGET: &str = "iqn.2026-01.io.locus:open";
pub const CHAP_TARGET: &str = "iqn.2026-01.io.locus:chap";
pub const MUTUAL_TARGET: &str = "iqn.2026-01.io.locus:mutual";
pub const ACL_TARGET: &str = "iqn.2026-01.io.locus:acl";
pub const USER: &str = "alice";
pub const SECRET: &[u8] = b"alice-secret-0123";
pub const TARGET_USER: &str = "locus-target";
pub const TARGET_SECRET: &[u8] = b"target-secret-9876";

/// A directory with four targets: open, CHAP, mutual CHAP and ACL-limited.
pub struct FakeDir {
    pub discovery_chap: Option<ChapCredentials>,
}

pub fn creds(mutual: bool) -> ChapCredentials {
    ChapCredentials {
        user: USER.into(),
        secret: SECRET.to_vec(),
        mutual: mutual.then(|| (TARGET_USER.to_owned(), TARGET_SECRET.to_vec())),
    }
}

impl TargetDirectory for FakeDir {
    fn lookup(&self, name: &str) -> Option<TargetAuthInfo> {
        let base = TargetAuthInfo {
            name: name.to_owned(),
            alias: None,
            acl: None,
            chap: None,
            portal_group_tag: 1,
        };
        match name {
            OPEN_TARGET => Some(TargetAuthInfo {
                alias: Some("open disk".into()),
                ..base
            }),
            CHAP_TARGET => Some(TargetAuthInfo {
                chap: Some(creds(false)),
                portal_group_tag: 7,
                ..base
            }),
            MUTUAL_TARGET => Some(TargetAuthInfo {
                chap: Some(creds(true)),
                ..base
            }),
            ACL_TARGET => Some(TargetAuthInfo {
                acl: Some(vec![INITIATOR.to_owned()]),
                ..base
            }),
            _ => None,
        }
    }

    fn discovery_auth(&self) -> Option<ChapCredentials> {
        self.discovery_chap.clone()
    }

    fn visible_targets(&self, initiator: &str) -> Vec<DiscoveredTarget> {
        let mut v = vec![DiscoveredTarget {
            name: OPEN_TARGET.into(),
            portals: vec![
                Portal {
                    addr: "127.0.0.1:3260".parse().unwrap(),
                    tpgt: 1,
                },
                Portal {
                    addr: "[::1]:3260".parse().unwrap(),
                    tpgt: 1,
                },
            ],
        }];
        if initiator == INITIATOR {
            v.push(DiscoveredTarget {
                name: ACL_TARGET.into(),
                portals: vec![Portal {
                    addr: "127.0.0.1:3261".parse().unwrap(),
                    tpgt: 2,
                }],
            });
        }
        v
    }
}

pub fn machine() -> LoginMachine {
    machine_with(None)
}

pub fn machine_with(discovery_chap: Option<ChapCredentials>) -> LoginMachine {
    LoginMachine::new(
        Arc::new(FakeDir { discovery_chap }),
        TargetLimits::default(),
    )
}

pub fn kv(pairs: &[(&str, &str)]) -> Bytes {
    encode_text(pairs)
}

/// A Login Request; `nsg` is only meaningful with `transit`.
pub fn req(csg: u8, nsg: u8, transit: bool, text: Bytes) -> LoginInput {
    LoginInput {
        transit,
        cont: false,
        csg,
        nsg,
        isid: [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01],
        tsih: 0,
        cid: 0,
        version_max: 0,
        version_min: 0,
        text,
    }
}

pub fn pairs(out: &LoginOutput) -> Vec<(String, String)> {
    parse_text(&out.text).expect("target text must parse")
}

pub fn get(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

pub fn assert_ok(out: &LoginOutput) {
    assert_eq!(
        (out.status_class, out.status_detail),
        (0, 0),
        "unexpected failure: {out:?}"
    );
    assert!(!out.fatal);
}

pub fn assert_status(out: &LoginOutput, class: u8, detail: u8) {
    assert_eq!(
        (out.status_class, out.status_detail),
        (class, detail),
        "wrong status: {out:?}"
    );
    assert!(out.fatal, "failures close the connection");
    assert!(out.done.is_none());
}

/// Initiator-side CHAP response, computed independently of the target code.
pub fn chap_response(alg: &str, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    match alg {
        "5" => {
            let mut h = Md5::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        "7" => {
            let mut h = Sha256::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        other => panic!("test has no algorithm {other}"),
    }
}

pub fn unhex(v: &str) -> Vec<u8> {
    hex::decode(v.strip_prefix("0x").expect("hex value")).expect("hex digits")
}

/// Keys open-iscsi's `get_op_params_text_keys` accepts in a response; any
/// other key makes it fail the login.
pub const OPEN_ISCSI_OP_KEYS: &[&str] = &[
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "FirstBurstLength",
    "MaxBurstLength",
    "HeaderDigest",
    "DataDigest",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "OFMarker",
    "OFMarkInt",
    "IFMarker",
    "IFMarkInt",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "MaxOutstandingR2T",
    "MaxConnections",
    "ErrorRecoveryLevel",
];

/// Keys open-iscsi accepts in a security-stage response.
pub const OPEN_ISCSI_SEC_KEYS: &[&str] = &[
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
];

/// Checks a response the way open-iscsi's login.c would.
pub fn open_iscsi_accepts(out: &LoginOutput, security: bool) {
    let allowed = if security {
        OPEN_ISCSI_SEC_KEYS
    } else {
        OPEN_ISCSI_OP_KEYS
    };
    for (k, v) in pairs(out) {
        assert!(allowed.contains(&k.as_str()), "open-iscsi rejects key {k}");
        match k.as_str() {
            "MaxOutstandingR2T" | "MaxConnections" => assert_eq!(v, "1", "{k}"),
            "ErrorRecoveryLevel" => assert_eq!(v, "0"),
            _ => {}
        }
    }
}
