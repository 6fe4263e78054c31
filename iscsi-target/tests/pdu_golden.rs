//! Golden-byte tests: PDUs captured on loopback between libiscsi initiators
//! and tgtd (see `tests/fixtures/README.md`) must frame, decode to the field
//! values the capture shows, and re-encode to the identical bytes.
//!
//! Each fixture holds one TCP connection and direction, one PDU per line, in
//! wire order. Login PDUs never carry digests (RFC 7143 §13.1); in the
//! `hdigest` capture every later PDU carries a CRC32C header digest.

use bytes::{Bytes, BytesMut};
use iscsi_target::pdu::digest::crc32c;
use iscsi_target::pdu::{
    decode_frame, Bhs, Digests, FrameError, FrameLimits, Itt, LoginFlags, Opcode, Pdu, RawPdu,
    Residual, SeqNum, TaskAttr, Ttt, BHS_LEN,
};

/// Every fixture, by name, with whether HeaderDigest=CRC32C was negotiated.
const FIXTURES: &[(&str, &str, bool)] = &[
    (
        "discovery.c0.ini",
        include_str!("fixtures/discovery.c0.ini.hex"),
        false,
    ),
    (
        "discovery.c0.tgt",
        include_str!("fixtures/discovery.c0.tgt.hex"),
        false,
    ),
    (
        "inquiry.c0.ini",
        include_str!("fixtures/inquiry.c0.ini.hex"),
        false,
    ),
    (
        "inquiry.c0.tgt",
        include_str!("fixtures/inquiry.c0.tgt.hex"),
        false,
    ),
    (
        "readcap16.c0.ini",
        include_str!("fixtures/readcap16.c0.ini.hex"),
        false,
    ),
    (
        "readcap16.c0.tgt",
        include_str!("fixtures/readcap16.c0.tgt.hex"),
        false,
    ),
    (
        "read10.c0.ini",
        include_str!("fixtures/read10.c0.ini.hex"),
        false,
    ),
    (
        "read10.c0.tgt",
        include_str!("fixtures/read10.c0.tgt.hex"),
        false,
    ),
    (
        "read10.c1.ini",
        include_str!("fixtures/read10.c1.ini.hex"),
        false,
    ),
    (
        "read10.c1.tgt",
        include_str!("fixtures/read10.c1.tgt.hex"),
        false,
    ),
    (
        "hdigest.c0.ini",
        include_str!("fixtures/hdigest.c0.ini.hex"),
        true,
    ),
    (
        "hdigest.c0.tgt",
        include_str!("fixtures/hdigest.c0.tgt.hex"),
        true,
    ),
];

fn fixture(name: &str) -> (Vec<Vec<u8>>, bool) {
    let (_, text, hd) = FIXTURES
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    let pdus = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| hex::decode(l.trim()).expect("fixture is hex"))
        .collect();
    (pdus, *hd)
}

/// The limits in force for the PDU at the front of `buf`: login PDUs go
/// without digests, later ones with the negotiated HeaderDigest. The
/// 262144-byte limit is the MaxRecvDataSegmentLength both sides declared.
fn limits_for(buf: &[u8], header_digest: bool) -> FrameLimits {
    let login = matches!(
        Opcode(buf[0] & 0x3f),
        Opcode::LOGIN_REQUEST | Opcode::LOGIN_RESPONSE
    );
    FrameLimits {
        max_recv_data_segment: 262_144,
        header_digest: header_digest && !login,
        data_digest: false,
    }
}

/// Frames a whole fixture stream fed in `chunk`-byte pieces; returns the raw
/// PDUs, checking that each one consumed exactly its captured bytes.
fn frame_stream(lines: &[Vec<u8>], hd: bool, chunk: usize) -> Vec<RawPdu> {
    let stream: Vec<u8> = lines.concat();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    while fed < stream.len() {
        let n = chunk.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        while buf.len() >= BHS_LEN {
            let limits = limits_for(&buf, hd);
            match decode_frame(&mut buf, &limits).expect("captured PDU frames") {
                Some(raw) => {
                    let expect = &lines[out.len()];
                    consumed += expect.len();
                    assert_eq!(buf.len(), fed - consumed, "PDU {} length", out.len());
                    out.push(raw);
                }
                None => break,
            }
        }
    }
    assert!(buf.is_empty(), "trailing bytes after the last PDU");
    assert_eq!(out.len(), lines.len());
    out
}

/// Decodes every PDU of a fixture (framed as one stream) and checks that
/// re-encoding gives back the captured bytes.
fn decode_all(name: &str) -> Vec<Pdu> {
    let (lines, hd) = fixture(name);
    let raws = frame_stream(&lines, hd, usize::MAX);
    raws.iter()
        .zip(&lines)
        .enumerate()
        .map(|(i, (raw, bytes))| {
            assert!(raw.data_digest_ok);
            let pdu = Pdu::decode(raw).unwrap_or_else(|e| panic!("{name} PDU {i}: {e}"));
            let login = matches!(pdu.bhs, Bhs::LoginRequest(_) | Bhs::LoginResponse(_));
            let digests = Digests {
                header: hd && !login,
                data: false,
            };
            assert_eq!(
                hex::encode(pdu.to_vec(digests)),
                hex::encode(bytes),
                "{name} PDU {i} re-encodes differently"
            );
            pdu
        })
        .collect()
}

/// The key=value pairs of a text data segment (RFC 7143 §6), split naively:
/// this test must not depend on the login module's parser.
fn keys(data: &Bytes) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let s = std::str::from_utf8(kv).expect("text keys are UTF-8");
            let (k, v) = s.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn key<'a>(kv: &'a [(String, String)], k: &str) -> Option<&'a str> {
    kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

#[test]
fn every_fixture_frames_decodes_and_re_encodes_identically() {
    let mut total = 0;
    for (name, _, _) in FIXTURES {
        total += decode_all(name).len();
    }
    assert!(total >= 100, "only {total} golden PDUs");
}

#[test]
fn framing_real_streams_in_small_pieces() {
    // TCP may cut a stream anywhere; the framer must not care.
    for (name, _, _) in FIXTURES {
        let (lines, hd) = fixture(name);
        let whole = frame_stream(&lines, hd, usize::MAX);
        for chunk in [1, 3, 47, 49, 1448] {
            assert_eq!(
                frame_stream(&lines, hd, chunk),
                whole,
                "{name} chunk {chunk}"
            );
        }
    }
}

#[test]
fn discovery_login_text_logout_initiator() {
    let p = decode_all("discovery.c0.ini");
    assert_eq!(p.len(), 3);
    let Bhs::LoginRequest(l) = &p[0].bhs else {
        panic!("{:?}", p[0].bhs)
    };
    assert_eq!(
        l.flags,
        LoginFlags {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3
        }
    );
    assert_eq!((l.version_max, l.version_min), (0, 0));
    assert_eq!(l.isid, [0x80, 0x64, 0xaa, 0x31, 0x00, 0x00]);
    assert_eq!(l.tsih, 0);
    assert_eq!(l.itt, Itt(0x0b3e_c51c));
    assert_eq!(l.cid, 0);
    assert_eq!(l.cmd_sn, SeqNum(1_061_473_439));
    assert_eq!(l.exp_stat_sn, SeqNum(1));
    let kv = keys(&p[0].data);
    assert_eq!(key(&kv, "SessionType"), Some("Discovery"));
    assert_eq!(
        key(&kv, "InitiatorName"),
        Some("iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls")
    );
    assert_eq!(key(&kv, "HeaderDigest"), Some("None"));
    assert_eq!(key(&kv, "MaxRecvDataSegmentLength"), Some("262144"));
    assert_eq!(kv.len(), 18);

    let Bhs::TextRequest(t) = &p[1].bhs else {
        panic!("{:?}", p[1].bhs)
    };
    assert!(t.immediate && t.final_ && !t.cont);
    assert_eq!(t.itt, Itt(0x0b3e_c51d));
    assert_eq!(t.ttt, Ttt::RESERVED);
    assert_eq!(t.cmd_sn, SeqNum(1_061_473_439));
    assert_eq!(t.exp_stat_sn, SeqNum(1));
    assert_eq!(&p[1].data[..], b"SendTargets=All\0");

    let Bhs::LogoutRequest(o) = &p[2].bhs else {
        panic!("{:?}", p[2].bhs)
    };
    assert!(o.immediate);
    assert_eq!(o.reason, 0, "close the session");
    assert_eq!(o.itt, Itt(0x0b3e_c51e));
    assert_eq!(o.exp_stat_sn, SeqNum(2));
    assert!(p[2].data.is_empty());
}

#[test]
fn discovery_login_text_logout_target() {
    let p = decode_all("discovery.c0.tgt");
    let Bhs::LoginResponse(l) = &p[0].bhs else {
        panic!("{:?}", p[0].bhs)
    };
    assert!(l.flags.transit && l.flags.csg == 1 && l.flags.nsg == 3);
    assert_eq!((l.status_class, l.status_detail), (0, 0));
    assert_eq!(l.isid, [0x80, 0x64, 0xaa, 0x31, 0x00, 0x00]);
    assert_ne!(l.tsih, 0, "the final login response assigns a TSIH");
    assert_eq!(l.itt, Itt(0x0b3e_c51c));
    assert_eq!(l.stat_sn, SeqNum(0));
    assert_eq!(l.exp_cmd_sn, SeqNum(1_061_473_439));
    assert_eq!(l.max_cmd_sn, SeqNum(1_061_473_440));
    let kv = keys(&p[0].data);
    assert_eq!(key(&kv, "TargetPortalGroupTag"), Some("1"));
    assert_eq!(key(&kv, "HeaderDigest"), Some("None"));

    let Bhs::TextResponse(t) = &p[1].bhs else {
        panic!("{:?}", p[1].bhs)
    };
    assert!(t.final_ && !t.cont);
    assert_eq!(t.ttt, Ttt::RESERVED);
    assert_eq!(t.itt, Itt(0x0b3e_c51d));
    assert_eq!(t.stat_sn, SeqNum(1));
    let kv = keys(&p[1].data);
    assert_eq!(key(&kv, "TargetName"), Some("iqn.2026-11.io.locus:golden"));
    let addr = key(&kv, "TargetAddress").expect("TargetAddress");
    assert!(
        addr.starts_with("127.0.0.1:") && addr.ends_with(",1"),
        "{addr}"
    );

    let Bhs::LogoutResponse(o) = &p[2].bhs else {
        panic!("{:?}", p[2].bhs)
    };
    assert_eq!(o.response, 0);
    assert_eq!(o.itt, Itt(0x0b3e_c51e));
    assert_eq!(o.stat_sn, SeqNum(2));
    assert_eq!((o.time2wait, o.time2retain), (0, 0));
}

#[test]
fn inquiry_commands_and_responses() {
    let ini = decode_all("inquiry.c0.ini");
    let tgt = decode_all("inquiry.c0.tgt");
    let kv = keys(&ini[0].data);
    assert_eq!(key(&kv, "SessionType"), Some("Normal"));
    assert_eq!(key(&kv, "TargetName"), Some("iqn.2026-11.io.locus:golden"));

    // TEST UNIT READY first, answered with CHECK CONDITION and sense data.
    let Bhs::ScsiCommand(tur) = &ini[1].bhs else {
        panic!("{:?}", ini[1].bhs)
    };
    assert_eq!(tur.cdb, [0; 16]);
    assert!(tur.final_ && !tur.read && !tur.write);
    assert_eq!(tur.attr, TaskAttr::Simple);
    assert_eq!(tur.lun, 0x0001_0000_0000_0000, "LUN 1, SAM-5 single level");
    let Bhs::ScsiResponse(r) = &tgt[1].bhs else {
        panic!("{:?}", tgt[1].bhs)
    };
    assert_eq!(r.itt, tur.itt);
    assert_eq!((r.response, r.status), (0, 0x02), "CHECK CONDITION");
    assert_eq!(r.residual, Residual::None);
    let sense = &tgt[1].data;
    let sense_len = usize::from(u16::from_be_bytes([sense[0], sense[1]]));
    assert_eq!(sense_len + 2, sense.len(), "SenseLength prefix (§11.4.7)");
    assert_eq!(sense[2] & 0x7f, 0x70, "fixed-format sense");

    // INQUIRY, allocation length 64, answered by one Data-In with status.
    let Bhs::ScsiCommand(inq) = &ini[3].bhs else {
        panic!("{:?}", ini[3].bhs)
    };
    assert_eq!(inq.cdb[..6], [0x12, 0, 0, 0, 0x40, 0]);
    assert!(inq.read && inq.final_ && !inq.write);
    assert_eq!(inq.expected_len, 64);
    assert_eq!(inq.cmd_sn, tur.cmd_sn.plus(2));
    let Bhs::DataIn(d) = &tgt[3].bhs else {
        panic!("{:?}", tgt[3].bhs)
    };
    assert_eq!(d.itt, inq.itt);
    assert!(d.final_ && !d.ack);
    assert_eq!(d.status, Some(0), "phase-collapsed GOOD status");
    assert_eq!(d.ttt, Ttt::RESERVED);
    assert_eq!(d.data_sn, 0);
    assert_eq!(d.buffer_offset, 0);
    assert_eq!(tgt[3].data.len(), 64);
    assert_eq!(tgt[3].data[0] & 0x1f, 0, "peripheral device type: disk");
    assert_eq!(&tgt[3].data[8..12], b"IET ", "tgt's vendor id");

    let Bhs::LogoutRequest(_) = ini[5].bhs else {
        panic!("{:?}", ini[5].bhs)
    };
    let Bhs::LogoutResponse(_) = tgt[5].bhs else {
        panic!("{:?}", tgt[5].bhs)
    };
}

#[test]
fn read_capacity_16() {
    let ini = decode_all("readcap16.c0.ini");
    let tgt = decode_all("readcap16.c0.tgt");
    let Bhs::ScsiCommand(c) = &ini[3].bhs else {
        panic!("{:?}", ini[3].bhs)
    };
    assert_eq!(c.cdb[0], 0x9e, "SERVICE ACTION IN(16)");
    assert_eq!(c.cdb[1] & 0x1f, 0x10, "READ CAPACITY(16)");
    assert_eq!(c.expected_len, 32);
    let Bhs::DataIn(d) = &tgt[3].bhs else {
        panic!("{:?}", tgt[3].bhs)
    };
    assert_eq!(d.itt, c.itt);
    assert_eq!(d.status, Some(0));
    let data = &tgt[3].data;
    assert_eq!(data.len(), 32);
    let last_lba = u64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
    let block = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    assert_eq!(block, 512);
    assert_eq!(
        (last_lba + 1) * u64::from(block),
        1024 * 1024,
        "the 1 MiB LUN"
    );
}

#[test]
fn read10_data_in_and_underflow_residual() {
    let ini = decode_all("read10.c1.ini");
    let tgt = decode_all("read10.c1.tgt");
    for i in 3..tgt.len() {
        let Bhs::ScsiCommand(c) = &ini[i].bhs else {
            panic!("{:?}", ini[i].bhs)
        };
        let blocks = u16::from_be_bytes([c.cdb[7], c.cdb[8]]);
        assert_eq!(c.cdb[0], 0x28, "READ(10)");
        assert_eq!(u32::from(blocks), (i as u32) - 2);
        assert_eq!(c.expected_len, u32::from(blocks) * 512);
        let Bhs::DataIn(d) = &tgt[i].bhs else {
            panic!("{:?}", tgt[i].bhs)
        };
        assert_eq!(d.itt, c.itt);
        assert_eq!(d.status, Some(0));
        assert_eq!(d.residual, Residual::None);
        assert_eq!(tgt[i].data.len(), c.expected_len as usize);
        assert!(tgt[i].data.iter().all(|&b| b == 0), "a sparse LUN reads 0");
    }

    // In iscsi-test-cu's setup session, tgtd answers a 16 KiB PERSISTENT
    // RESERVE IN with 8 bytes and the U bit.
    let ini = decode_all("read10.c0.ini");
    let tgt = decode_all("read10.c0.tgt");
    let Bhs::ScsiCommand(c) = &ini[3].bhs else {
        panic!("{:?}", ini[3].bhs)
    };
    assert_eq!(c.cdb[0], 0x5e);
    let Bhs::DataIn(d) = &tgt[3].bhs else {
        panic!("{:?}", tgt[3].bhs)
    };
    assert_eq!(d.residual, Residual::Underflow(0x3ff8));
    assert_eq!(c.expected_len - tgt[3].data.len() as u32, 0x3ff8);
}

#[test]
fn header_digest_capture_verifies() {
    let (lines, hd) = fixture("hdigest.c0.tgt");
    assert!(hd);
    let p = decode_all("hdigest.c0.tgt");
    let Bhs::LoginResponse(_) = p[0].bhs else {
        panic!("{:?}", p[0].bhs)
    };
    assert_eq!(key(&keys(&p[0].data), "HeaderDigest"), Some("CRC32C"));
    assert_eq!(
        key(&keys(&decode_all("hdigest.c0.ini")[0].data), "HeaderDigest"),
        Some("None,CRC32C")
    );
    // After login every PDU has a digest over its BHS, checked here
    // independently of the framer.
    for (i, l) in lines.iter().enumerate().skip(1) {
        let d = u32::from_le_bytes(l[48..52].try_into().expect("4 bytes"));
        assert_eq!(d, crc32c(&l[..48]), "PDU {i}");
    }
    // One flipped digest bit is a HeaderDigest fault.
    let limits = FrameLimits {
        max_recv_data_segment: 262_144,
        header_digest: true,
        data_digest: false,
    };
    for (i, l) in lines.iter().enumerate().skip(1) {
        let mut bad = l.clone();
        bad[49] ^= 0x10;
        let mut buf = BytesMut::from(&bad[..]);
        assert!(
            matches!(
                decode_frame(&mut buf, &limits),
                Err(FrameError::HeaderDigest { .. })
            ),
            "PDU {i}"
        );
    }
    // Framed without header digests, the same bytes are misread: the digest
    // is taken for data, so the framer does not see the stream it expects.
    let nodigest = FrameLimits {
        header_digest: false,
        ..limits
    };
    let mut buf = BytesMut::from(&lines[1][..]);
    let raw = decode_frame(&mut buf, &nodigest)
        .expect("frames")
        .expect("complete");
    assert_ne!(buf.len(), 0, "4 digest bytes are left over");
    assert_eq!(raw.data.len(), 20);
}
