//! Unit tests for CHAP: algorithm choice, binary values, verification.

use super::*;

fn creds(mutual: bool) -> ChapCredentials {
    ChapCredentials {
        user: "alice".into(),
        secret: b"initiator-secret-123".to_vec(),
        mutual: mutual.then(|| ("target-user".to_owned(), b"target-secret-4567".to_vec())),
    }
}

fn value<'a>(out: &'a [(String, String)], k: &str) -> &'a str {
    out.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap()
}

#[test]
fn algorithm_preference() {
    assert_eq!(select_algorithm("5"), Some(ChapAlgorithm::Md5));
    assert_eq!(select_algorithm("7,6,5"), Some(ChapAlgorithm::Sha256));
    assert_eq!(select_algorithm("8,7,6,5"), Some(ChapAlgorithm::Sha256));
    assert_eq!(select_algorithm("5,7"), Some(ChapAlgorithm::Sha256));
    assert_eq!(select_algorithm("6,8"), None);
    assert_eq!(select_algorithm("junk"), None);
}

#[test]
fn md5_known_answer_rfc1994() {
    // Independently computed with the md-5 crate: MD5(id || secret || challenge).
    let id = 0x2a;
    let secret = b"secret";
    let challenge = [0x01u8, 0x02, 0x03, 0x04];
    let mut h = md5::Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    let want = h.finalize().to_vec();
    assert_eq!(ChapAlgorithm::Md5.response(id, secret, &challenge), want);
    // Fixed vector: MD5 of the single byte 0x00 (id 0, empty secret and challenge).
    assert_eq!(
        hex::encode(ChapAlgorithm::Md5.response(0, b"", &[])),
        "93b885adfe0da089cdf634904fd59f71"
    );
}

#[test]
fn sha256_known_answer() {
    // SHA-256 of the single byte 0x00.
    assert_eq!(
        hex::encode(ChapAlgorithm::Sha256.response(0, b"", &[])),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
}

#[test]
fn binary_values() {
    assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 255]));
    assert_eq!(decode_binary("0X102"), Some(vec![1, 2]), "odd digits");
    assert_eq!(decode_binary("0bAQL/"), Some(vec![1, 2, 255]));
    assert_eq!(decode_binary("0bYWJjZA=="), Some(b"abcd".to_vec()));
    assert_eq!(decode_binary("0bYWJjZA"), Some(b"abcd".to_vec()));
    assert_eq!(decode_binary("0x"), None);
    assert_eq!(decode_binary("0xzz"), None);
    assert_eq!(decode_binary("0b!!"), None);
    assert_eq!(decode_binary("0bA"), None);
    assert_eq!(decode_binary("1234"), None);
    assert_eq!(encode_hex(&[0xab, 0x01]), "0xab01");
}

#[test]
fn constant_time_compare() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}

fn challenge_of(out: &[(String, String)]) -> (u8, Vec<u8>) {
    let id: u8 = value(out, "CHAP_I").parse().unwrap();
    let c = decode_binary(value(out, "CHAP_C")).unwrap();
    (id, c)
}

#[test]
fn one_way_md5_exchange() {
    let c = creds(false);
    let mut s = ChapServer::new();
    let out = s
        .step(
            &ChapKeys {
                a: Some("5".into()),
                ..Default::default()
            },
            &c,
        )
        .unwrap();
    assert_eq!(value(&out, "CHAP_A"), "5");
    let (id, chal) = challenge_of(&out);
    assert_eq!(chal.len(), 16);
    let mut h = md5::Md5::new();
    h.update([id]);
    h.update(&c.secret);
    h.update(&chal);
    let resp = h.finalize();
    let keys = ChapKeys {
        n: Some("alice".into()),
        r: Some(format!("0x{}", hex::encode(resp))),
        ..Default::default()
    };
    let out = s.step(&keys, &c).unwrap();
    assert!(out.is_empty());
    assert!(s.is_done());
}

#[test]
fn sha256_exchange_with_base64_response_and_mutual() {
    let c = creds(true);
    let mut s = ChapServer::new();
    let out = s
        .step(
            &ChapKeys {
                a: Some("7,6,5".into()),
                ..Default::default()
            },
            &c,
        )
        .unwrap();
    assert_eq!(value(&out, "CHAP_A"), "7");
    let (id, chal) = challenge_of(&out);
    assert_eq!(chal.len(), 32);
    let mut h = Sha256::new();
    h.update([id]);
    h.update(&c.secret);
    h.update(&chal);
    let resp = h.finalize();
    let b64 = base64ish(&resp);
    let my_chal = [9u8; 20];
    let keys = ChapKeys {
        n: Some("alice".into()),
        r: Some(format!("0b{b64}")),
        i: Some("77".into()),
        c: Some(encode_hex(&my_chal)),
        ..Default::default()
    };
    let out = s.step(&keys, &c).unwrap();
    assert_eq!(value(&out, "CHAP_N"), "target-user");
    let mut h = Sha256::new();
    h.update([77u8]);
    h.update(b"target-secret-4567");
    h.update(my_chal);
    assert_eq!(
        value(&out, "CHAP_R"),
        format!("0x{}", hex::encode(h.finalize()))
    );
}

/// Minimal independent base64 encoder for the test.
fn base64ish(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn after_challenge(c: &ChapCredentials) -> (ChapServer, u8, Vec<u8>) {
    let mut s = ChapServer::new();
    let out = s
        .step(
            &ChapKeys {
                a: Some("5".into()),
                ..Default::default()
            },
            c,
        )
        .unwrap();
    let (id, chal) = challenge_of(&out);
    (s, id, chal)
}

fn good_r(c: &ChapCredentials, id: u8, chal: &[u8]) -> String {
    encode_hex(&ChapAlgorithm::Md5.response(id, &c.secret, chal))
}

#[test]
fn failures() {
    let c = creds(false);
    // wrong secret
    let (mut s, id, chal) = after_challenge(&c);
    let bad = encode_hex(&ChapAlgorithm::Md5.response(id, b"wrong", &chal));
    let k = ChapKeys {
        n: Some("alice".into()),
        r: Some(bad),
        ..Default::default()
    };
    assert_eq!(s.step(&k, &c), Err(ChapError::WrongResponse));
    // wrong user
    let (mut s, id, chal) = after_challenge(&c);
    let k = ChapKeys {
        n: Some("bob".into()),
        r: Some(good_r(&c, id, &chal)),
        ..Default::default()
    };
    assert_eq!(s.step(&k, &c), Err(ChapError::WrongUser));
    // mutual requested but not configured
    let (mut s, id, chal) = after_challenge(&c);
    let k = ChapKeys {
        n: Some("alice".into()),
        r: Some(good_r(&c, id, &chal)),
        i: Some("1".into()),
        c: Some("0x0102030405060708".into()),
        ..Default::default()
    };
    assert_eq!(s.step(&k, &c), Err(ChapError::MutualNotConfigured));
    // reflection
    let cm = creds(true);
    let (mut s, id, chal) = after_challenge(&cm);
    let k = ChapKeys {
        n: Some("alice".into()),
        r: Some(good_r(&cm, id, &chal)),
        i: Some("1".into()),
        c: Some(encode_hex(&chal)),
        ..Default::default()
    };
    assert_eq!(s.step(&k, &cm), Err(ChapError::Reflection));
    // CHAP_I without CHAP_C, bad CHAP_I
    let (mut s, id, chal) = after_challenge(&cm);
    let mut k = ChapKeys {
        n: Some("alice".into()),
        r: Some(good_r(&cm, id, &chal)),
        i: Some("1".into()),
        ..Default::default()
    };
    assert_eq!(s.step(&k, &cm), Err(ChapError::MissingKey("CHAP_C")));
    let (mut s, _, _) = after_challenge(&cm);
    k.i = Some("256".into());
    k.c = Some("0x01".into());
    assert_eq!(s.step(&k, &cm), Err(ChapError::BadValue("CHAP_I")));
    // unsupported algorithm
    let mut s = ChapServer::new();
    assert!(matches!(
        s.step(
            &ChapKeys {
                a: Some("6".into()),
                ..Default::default()
            },
            &c
        ),
        Err(ChapError::NoCommonAlgorithm(_))
    ));
    // response before challenge
    let mut s = ChapServer::new();
    let k = ChapKeys {
        n: Some("alice".into()),
        r: Some("0x00".into()),
        ..Default::default()
    };
    assert!(s.step(&k, &c).is_err());
    // response is not binary
    let (mut s, _, _) = after_challenge(&c);
    let k = ChapKeys {
        n: Some("alice".into()),
        r: Some("hello".into()),
        ..Default::default()
    };
    assert_eq!(s.step(&k, &c), Err(ChapError::BadValue("CHAP_R")));
}

#[test]
fn debug_hides_secrets() {
    let s = format!("{:?}", creds(true));
    assert!(!s.contains("initiator-secret"));
    assert!(!s.contains("target-secret"));
    assert!(s.contains("alice"));
}
