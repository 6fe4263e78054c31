//! Bad input at the wire (issue 2, "Bad input"): each case gets its defined
//! answer — a Reject PDU, a login status, CHECK CONDITION with the right
//! sense, or a closed connection — and another session on the same target
//! keeps working throughout.

mod common;

use bytes::Bytes;
use common::*;
use iscsi_target::pdu::{
    Bhs, DataOut, Itt, LoginFlags, LoginRequest, Pdu, RejectReason, SeqNum, TextRequest, Ttt,
    BHS_LEN,
};

/// A second, healthy session that must be unaffected by the bad one.
async fn bystander(d: &TestDaemon) -> Wire {
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    w
}

fn expect_reject(p: &Pdu) -> RejectReason {
    match &p.bhs {
        Bhs::Reject(r) => {
            assert_eq!(p.data.len(), BHS_LEN, "Reject carries the rejected header");
            r.reason
        }
        other => panic!("expected Reject, got {other:?}"),
    }
}

#[tokio::test]
async fn reserved_opcode_is_rejected_and_session_goes_on() {
    let d = TestDaemon::start(None).await;
    let mut other = bystander(&d).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    let mut bytes = w.nop_out(Bytes::new()).to_vec(w.digests);
    bytes[0] = 0x40 | 0x1c; // reserved opcode, immediate
    w.send_raw(&bytes).await;
    let r = w.recv().await.expect("an answer");
    assert_eq!(expect_reject(&r), RejectReason::COMMAND_NOT_SUPPORTED);
    assert_eq!(r.data[0] & 0x3f, 0x1c, "the rejected header is echoed");
    w.ping().await;
    other.ping().await;
}

#[tokio::test]
async fn wrong_header_digest_closes_only_that_connection() {
    let d = TestDaemon::start(None).await;
    let mut other = bystander(&d).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[("HeaderDigest", "CRC32C")]).await;
    assert!(w.digests.header, "target accepted CRC32C header digests");
    w.ping().await;
    let mut bytes = w.nop_out(Bytes::new()).to_vec(w.digests);
    bytes[BHS_LEN] ^= 0xff; // corrupt the digest
    w.send_raw(&bytes).await;
    assert!(
        w.recv().await.is_none(),
        "connection closed on a header digest error"
    );
    other.ping().await;
}

#[tokio::test]
async fn data_segment_above_limit_closes_the_connection() {
    let d = TestDaemon::start(None).await;
    let mut other = bystander(&d).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    let mut bytes = w.nop_out(Bytes::new()).to_vec(w.digests);
    // Announce 16 MiB - 1, far above our MaxRecvDataSegmentLength, and send
    // only the header: the target must refuse before waiting for the data.
    bytes[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    w.send_raw(&bytes[..BHS_LEN]).await;
    assert!(w.recv().await.is_none(), "connection closed");
    other.ping().await;
}

#[tokio::test]
async fn data_out_for_unknown_task_is_rejected() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    let pdu = Pdu::new(
        Bhs::DataOut(DataOut {
            final_: true,
            lun: 0,
            itt: Itt(0xdead),
            ttt: Ttt(77),
            exp_stat_sn: w.exp_stat_sn,
            data_sn: 0,
            buffer_offset: 0,
        }),
        Bytes::from(vec![0u8; 512]),
    );
    w.send(&pdu).await;
    let r = w.recv().await.expect("an answer");
    assert_eq!(expect_reject(&r), RejectReason::PROTOCOL_ERROR);
    w.ping().await;
}

#[tokio::test]
async fn cmd_sn_outside_the_window_is_ignored() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    // TEST UNIT READY with a CmdSN far beyond MaxCmdSN: RFC 7143 §3.2.2.1
    // says the target silently ignores it.
    let good_sn = w.cmd_sn;
    w.cmd_sn = SeqNum(good_sn.0.wrapping_add(100_000));
    let bogus = w.scsi_command(&[0x00; 6], 0, false, false, Bytes::new());
    w.send(&bogus).await;
    w.cmd_sn = good_sn;
    // The ping is answered, and nothing answers the ignored command.
    w.ping().await;
    let tur = w.scsi_command(&[0x00; 6], 0, false, false, Bytes::new());
    let Bhs::ScsiCommand(c) = &tur.bhs else {
        unreachable!()
    };
    let itt = c.itt;
    w.send(&tur).await;
    let r = w.recv().await.expect("response");
    match &r.bhs {
        Bhs::ScsiResponse(s) => assert_eq!(s.itt, itt, "only the in-window command is answered"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn read_beyond_end_of_lun_gets_lba_out_of_range() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    w.expect_power_on_ua().await;
    // 64 MiB LUN of 512-byte blocks: the last LBA is 131071.
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&131_071u32.to_be_bytes());
    cdb[8] = 2; // two blocks: one past the end
    let cmd = w.scsi_command(&cdb, 1024, true, false, Bytes::new());
    w.send(&cmd).await;
    let r = w.recv().await.expect("response");
    assert_eq!(scsi_status(&r), (0x02, Some((0x05, 0x21, 0x00))));
    w.ping().await;
}

#[tokio::test]
async fn invalid_cdb_field_gets_invalid_field_in_cdb() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    // INQUIRY with EVPD=0 and a nonzero PAGE CODE is invalid (SPC-4 §6.6.1).
    let cmd = w.scsi_command(
        &[0x12, 0x00, 0x80, 0x00, 0xff, 0x00],
        255,
        true,
        false,
        Bytes::new(),
    );
    w.send(&cmd).await;
    let r = w.recv().await.expect("response");
    assert_eq!(scsi_status(&r), (0x02, Some((0x05, 0x24, 0x00))));
}

#[tokio::test]
async fn connection_dropped_mid_pdu_leaves_others_working() {
    let d = TestDaemon::start(None).await;
    let mut other = bystander(&d).await;
    {
        let mut w = Wire::connect(d.addr).await;
        w.login(TARGET, &[]).await;
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        let cmd = w.scsi_command(&cdb, 4096, false, true, Bytes::from(vec![7u8; 4096]));
        let bytes = cmd.to_vec(w.digests);
        w.send_raw(&bytes[..BHS_LEN + 100]).await;
        // Dropped here, in the middle of the immediate data.
    }
    other.ping().await;
    let mut again = Wire::connect(d.addr).await;
    again.login(TARGET, &[]).await;
    again.ping().await;
}

#[tokio::test]
async fn login_to_unknown_target_is_not_found() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    let r = w
        .login_step(
            LoginFlags {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
            },
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", "iqn.2026-11.io.locus:nope"),
                ("AuthMethod", "None"),
            ],
        )
        .await;
    let Bhs::LoginResponse(lr) = &r.bhs else {
        panic!()
    };
    assert_eq!((lr.status_class, lr.status_detail), (2, 3));
    assert!(
        w.recv().await.is_none(),
        "connection closed after a failed login"
    );
}

#[tokio::test]
async fn login_with_unknown_key_answers_not_understood() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    let r = w
        .login_step(
            LoginFlags {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
            },
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", TARGET),
                ("AuthMethod", "None"),
                ("X-com.example.Fancy", "Yes"),
            ],
        )
        .await;
    assert_login_ok(&r);
    let keys = parse_text(&r.data);
    assert!(
        keys.contains(&("X-com.example.Fancy".into(), "NotUnderstood".into())),
        "{keys:?}"
    );
}

#[tokio::test]
async fn login_with_a_key_sent_twice_is_an_initiator_error() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    let r = w
        .login_step(
            LoginFlags {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
            },
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", TARGET),
                ("AuthMethod", "None"),
                ("AuthMethod", "CHAP"),
            ],
        )
        .await;
    let Bhs::LoginResponse(lr) = &r.bhs else {
        panic!()
    };
    assert_eq!(lr.status_class, 2, "initiator error class");
}

const ACL_AND_CHAP: &str = r#"
[[target]]
name = "iqn.2026-11.io.locus:acl"
acl = ["iqn.2026-11.io.locus.test:allowed"]
[[target.lun]]
id = 0
size = "16M"

[[target]]
name = "iqn.2026-11.io.locus:chap"
chap = { user = "alice", secret = "alice-secret-1" }
[[target.lun]]
id = 0
size = "16M"
"#;

#[tokio::test]
async fn initiator_not_on_acl_gets_authorization_failure() {
    let d = TestDaemon::start(Some(ACL_AND_CHAP)).await;
    let mut w = Wire::connect(d.addr).await;
    let r = w
        .login_step(
            LoginFlags {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
            },
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", "iqn.2026-11.io.locus:acl"),
                ("AuthMethod", "None"),
            ],
        )
        .await;
    let Bhs::LoginResponse(lr) = &r.bhs else {
        panic!()
    };
    assert_eq!((lr.status_class, lr.status_detail), (2, 2));
}

#[tokio::test]
async fn bad_chap_response_gets_authentication_failure() {
    let d = TestDaemon::start(Some(ACL_AND_CHAP)).await;
    let mut w = Wire::connect(d.addr).await;
    let r = w
        .login_step(
            LoginFlags {
                transit: false,
                cont: false,
                csg: 0,
                nsg: 0,
            },
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", "iqn.2026-11.io.locus:chap"),
                ("AuthMethod", "CHAP,None"),
            ],
        )
        .await;
    assert_login_ok(&r);
    assert!(parse_text(&r.data).contains(&("AuthMethod".into(), "CHAP".into())));
    let r = w
        .login_step(
            LoginFlags {
                transit: false,
                cont: false,
                csg: 0,
                nsg: 0,
            },
            &[("CHAP_A", "5")],
        )
        .await;
    assert_login_ok(&r);
    let keys = parse_text(&r.data);
    assert!(keys.iter().any(|(k, _)| k == "CHAP_C"), "{keys:?}");
    let r = w
        .login_step(
            LoginFlags {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
            },
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", "0x00112233445566778899aabbccddeeff"),
            ],
        )
        .await;
    let Bhs::LoginResponse(lr) = &r.bhs else {
        panic!()
    };
    assert_eq!((lr.status_class, lr.status_detail), (2, 1));
}

/// `text(pairs)` without the NUL after the last pair. The PDU encoder pads
/// the segment to 4 bytes with zeros; the padding is not part of the
/// declared DataSegmentLength, so it must not count as the missing NUL.
fn unterminated(pairs: &[(&str, &str)]) -> Bytes {
    let t = text(pairs);
    t.slice(..t.len() - 1)
}

#[tokio::test]
async fn login_with_an_unterminated_last_pair_is_an_initiator_error() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    let data = unterminated(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
    ]);
    assert_ne!(data.len() % 4, 0, "the PDU carries zero padding");
    let pdu = Pdu::new(
        Bhs::LoginRequest(LoginRequest {
            flags: LoginFlags {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
            },
            version_max: 0,
            version_min: 0,
            isid: w.isid,
            tsih: 0,
            itt: Itt(1),
            cid: 0,
            cmd_sn: w.cmd_sn,
            exp_stat_sn: w.exp_stat_sn,
        }),
        data,
    );
    w.send(&pdu).await;
    let r = w.recv().await.expect("login response");
    let Bhs::LoginResponse(lr) = &r.bhs else {
        panic!("expected a Login Response, got {:?}", r.bhs)
    };
    assert_eq!((lr.status_class, lr.status_detail), (2, 0));
    assert!(w.recv().await.is_none(), "connection closed");
}

fn text_request(w: &mut Wire, data: Bytes) -> Pdu {
    let itt = w.next_itt();
    Pdu::new(
        Bhs::TextRequest(TextRequest {
            immediate: true,
            final_: true,
            cont: false,
            lun: 0,
            itt,
            ttt: Ttt::RESERVED,
            cmd_sn: w.cmd_sn,
            exp_stat_sn: w.exp_stat_sn,
        }),
        data,
    )
}

#[tokio::test]
async fn text_request_with_an_unterminated_last_pair_is_rejected() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    // SendTargets= (the session's own target) and a vendor key.
    let pairs = [("SendTargets", ""), ("X-io.locus.t", "1")];
    let data = unterminated(&pairs);
    assert_ne!(data.len() % 4, 0, "the PDU carries zero padding");
    let req = text_request(&mut w, data);
    w.send(&req).await;
    let r = w.recv().await.expect("an answer");
    assert_eq!(expect_reject(&r), RejectReason::PROTOCOL_ERROR);
    assert_eq!(
        r.data[0] & 0x3f,
        0x04,
        "the rejected Text Request is echoed"
    );
    // The same request with its NUL is answered, and an empty one too.
    let req = text_request(&mut w, text(&pairs));
    w.send(&req).await;
    let r = w.recv().await.expect("text response");
    assert!(matches!(r.bhs, Bhs::TextResponse(_)), "{:?}", r.bhs);
    assert!(parse_text(&r.data).contains(&("TargetName".into(), TARGET.into())));
    let req = text_request(&mut w, Bytes::new());
    w.send(&req).await;
    let r = w.recv().await.expect("text response");
    assert!(matches!(r.bhs, Bhs::TextResponse(_)), "{:?}", r.bhs);
    w.ping().await;
}
