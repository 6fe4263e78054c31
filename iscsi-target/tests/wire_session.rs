//! Session behaviour at the wire: solicited and unsolicited write data,
//! Data-In sequencing, SendTargets discovery, session reinstatement, task
//! management, and the Async logout request on shutdown.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use iscsi_target::pdu::{
    AsyncEvent, Bhs, DataOut, Itt, LoginFlags, LogoutRequest, Pdu, TaskMgmtRequest, TextRequest,
    TmfFunction, TmfResponseCode, Ttt,
};

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

/// Writes `data` answering every R2T, returns the final status.
async fn write_with_r2t(w: &mut Wire, lba: u32, data: Bytes) -> u8 {
    let blocks = (data.len() / 512) as u16;
    let cmd = w.scsi_command(
        &write10(lba, blocks),
        data.len() as u32,
        false,
        true,
        Bytes::new(),
    );
    let Bhs::ScsiCommand(c) = &cmd.bhs else {
        unreachable!()
    };
    let itt = c.itt;
    w.send(&cmd).await;
    let mut r2ts = 0;
    loop {
        let p = w.recv().await.expect("R2T or response");
        match &p.bhs {
            Bhs::R2t(r) => {
                assert_eq!(r.itt, itt);
                assert_eq!(r.r2t_sn, r2ts, "R2TSN counts up from 0");
                r2ts += 1;
                let (off, len) = (r.buffer_offset as usize, r.desired_len as usize);
                // Answer in 8 KiB Data-Out PDUs.
                let mut sent = 0;
                let mut data_sn = 0;
                while sent < len {
                    let n = (len - sent).min(8192);
                    let d = Pdu::new(
                        Bhs::DataOut(DataOut {
                            final_: sent + n == len,
                            lun: 0,
                            itt,
                            ttt: r.ttt,
                            exp_stat_sn: w.exp_stat_sn,
                            data_sn,
                            buffer_offset: (off + sent) as u32,
                        }),
                        data.slice(off + sent..off + sent + n),
                    );
                    w.send(&d).await;
                    sent += n;
                    data_sn += 1;
                }
            }
            Bhs::ScsiResponse(s) => {
                assert_eq!(s.itt, itt);
                assert!(r2ts > 0, "solicited data needed at least one R2T");
                return s.status;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn read(w: &mut Wire, lba: u32, len: usize) -> Bytes {
    let cmd = w.scsi_command(
        &read10(lba, (len / 512) as u16),
        len as u32,
        true,
        false,
        Bytes::new(),
    );
    w.send(&cmd).await;
    let mut out = BytesMut::new();
    let mut next_sn = 0;
    loop {
        let p = w.recv().await.expect("Data-In");
        match &p.bhs {
            Bhs::DataIn(d) => {
                assert_eq!(d.data_sn, next_sn, "DataSN in order");
                assert_eq!(d.buffer_offset as usize, out.len(), "offsets in order");
                next_sn += 1;
                out.extend_from_slice(&p.data);
                if let Some(status) = d.status {
                    assert_eq!(status, 0);
                    assert!(d.final_);
                    return out.freeze();
                }
            }
            Bhs::ScsiResponse(s) => {
                assert_eq!(s.status, 0);
                return out.freeze();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn solicited_write_then_read_back() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(
        TARGET,
        &[
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "65536"),
        ],
    )
    .await;
    w.expect_power_on_ua().await;
    let data = pattern(1 << 20, 3);
    assert_eq!(write_with_r2t(&mut w, 100, data.clone()).await, 0);
    let back = read(&mut w, 100, 1 << 20).await;
    assert!(back == data, "read back what was written");
}

#[tokio::test]
async fn immediate_and_unsolicited_write() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[("FirstBurstLength", "65536")]).await;
    w.expect_power_on_ua().await;
    let data = pattern(32 * 1024, 9);
    // 8 KiB immediate, the rest as unsolicited Data-Out (InitialR2T=No).
    let mut cmd = w.scsi_command(
        &write10(8, 64),
        data.len() as u32,
        false,
        true,
        data.slice(..8192),
    );
    if let Bhs::ScsiCommand(c) = &mut cmd.bhs {
        c.final_ = false;
    }
    let Bhs::ScsiCommand(c) = &cmd.bhs else {
        unreachable!()
    };
    let itt = c.itt;
    w.send(&cmd).await;
    for (i, off) in (8192..data.len()).step_by(8192).enumerate() {
        let d = Pdu::new(
            Bhs::DataOut(DataOut {
                final_: off + 8192 == data.len(),
                lun: 0,
                itt,
                ttt: Ttt::RESERVED,
                exp_stat_sn: w.exp_stat_sn,
                data_sn: i as u32,
                buffer_offset: off as u32,
            }),
            data.slice(off..off + 8192),
        );
        w.send(&d).await;
    }
    let r = w.recv().await.expect("status");
    assert_eq!(scsi_status(&r).0, 0);
    assert!(read(&mut w, 8, data.len()).await == data);
}

#[tokio::test]
async fn send_targets_lists_the_default_target() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    let r = w
        .login_step(
            LoginFlags {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
            },
            &[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Discovery"),
                ("MaxRecvDataSegmentLength", "8192"),
            ],
        )
        .await;
    assert_login_ok(&r);
    let req = Pdu::new(
        Bhs::TextRequest(TextRequest {
            immediate: true,
            final_: true,
            cont: false,
            lun: 0,
            itt: Itt(5),
            ttt: Ttt::RESERVED,
            cmd_sn: w.cmd_sn,
            exp_stat_sn: w.exp_stat_sn,
        }),
        text(&[("SendTargets", "All")]),
    );
    w.send(&req).await;
    let r = w.recv().await.expect("text response");
    let keys = parse_text(&r.data);
    assert!(
        keys.contains(&("TargetName".into(), TARGET.into())),
        "{keys:?}"
    );
    let addr = format!("{},1", d.addr);
    assert!(keys.contains(&("TargetAddress".into(), addr)), "{keys:?}");
    // SCSI commands have no place in a discovery session.
    let tur = w.scsi_command(&[0u8; 6], 0, false, false, Bytes::new());
    w.send(&tur).await;
    assert!(matches!(
        w.recv().await.expect("answer").bhs,
        Bhs::Reject(_)
    ));
}

#[tokio::test]
async fn same_isid_reinstates_the_session() {
    let d = TestDaemon::start(None).await;
    let mut old = Wire::connect(d.addr).await;
    old.login(TARGET, &[]).await;
    old.expect_power_on_ua().await;
    old.ping().await;
    let mut new = Wire::connect(d.addr).await;
    new.isid = old.isid;
    new.login(TARGET, &[]).await;
    new.expect_power_on_ua().await;
    new.ping().await;
    assert!(old.recv().await.is_none(), "the old connection was closed");
}

#[tokio::test]
async fn abort_task_for_unknown_task_and_lun_reset() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    w.expect_power_on_ua().await;
    let tmf = |w: &mut Wire, function: TmfFunction, ref_itt: u32| {
        let itt = w.next_itt();
        Pdu::new(
            Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function,
                lun: 0,
                itt,
                ref_itt: Itt(ref_itt),
                cmd_sn: w.cmd_sn,
                exp_stat_sn: w.exp_stat_sn,
                ref_cmd_sn: w.cmd_sn.plus(5),
                exp_data_sn: 0,
            }),
            Bytes::new(),
        )
    };
    let p = tmf(&mut w, TmfFunction::ABORT_TASK, 0x7777);
    w.send(&p).await;
    match w.recv().await.expect("TMF response").bhs {
        Bhs::TaskMgmtResponse(r) => assert_eq!(r.response, TmfResponseCode::NO_TASK),
        other => panic!("{other:?}"),
    }
    let p = tmf(&mut w, TmfFunction::LOGICAL_UNIT_RESET, 0);
    w.send(&p).await;
    match w.recv().await.expect("TMF response").bhs {
        Bhs::TaskMgmtResponse(r) => assert_eq!(r.response, TmfResponseCode::COMPLETE),
        other => panic!("{other:?}"),
    }
    w.ping().await;
}

#[tokio::test]
async fn logout_closes_the_session_cleanly() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    w.expect_power_on_ua().await;
    let itt = w.next_itt();
    let p = Pdu::new(
        Bhs::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: w.cmd_sn,
            exp_stat_sn: w.exp_stat_sn,
        }),
        Bytes::new(),
    );
    w.send(&p).await;
    match w.recv().await.expect("logout response").bhs {
        Bhs::LogoutResponse(r) => {
            assert_eq!(r.response, 0);
            assert_eq!(r.itt, itt);
        }
        other => panic!("{other:?}"),
    }
    assert!(w.recv().await.is_none());
}

#[tokio::test]
async fn shutdown_asks_initiators_to_log_out() {
    let d = TestDaemon::start(None).await;
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[]).await;
    w.expect_power_on_ua().await;
    w.ping().await;
    let stopper = tokio::spawn(d.stop());
    let p = w.recv().await.expect("async message");
    match p.bhs {
        Bhs::AsyncMessage(a) => assert_eq!(a.event, AsyncEvent::LOGOUT_REQUEST),
        other => panic!("{other:?}"),
    }
    let itt = w.next_itt();
    let logout = Pdu::new(
        Bhs::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: w.cmd_sn,
            exp_stat_sn: w.exp_stat_sn,
        }),
        Bytes::new(),
    );
    w.send(&logout).await;
    assert!(matches!(
        w.recv().await.expect("logout response").bhs,
        Bhs::LogoutResponse(_)
    ));
    stopper
        .await
        .expect("daemon stopped after the session logged out");
}

// The keepalive itself (ping after idle, drop after nop_timeout) is tested
// with a paused clock in `session::ffp::tests`.

/// The NOP-Out that answers a target ping with transfer tag `ttt`
/// (RFC 7143 §11.18).
fn ping_answer(w: &Wire, ttt: Ttt) -> Pdu {
    Pdu::new(
        Bhs::NopOut(iscsi_target::pdu::NopOut {
            immediate: true,
            lun: 0,
            itt: Itt::RESERVED,
            ttt,
            cmd_sn: w.cmd_sn,
            exp_stat_sn: w.exp_stat_sn,
        }),
        Bytes::new(),
    )
}

/// READ data goes out straight from the page cache when no data digest is
/// negotiated (zero-copy Data-In) and through a buffer when one is. Both
/// must deliver exactly what was written, across many Data-In PDUs and
/// bursts, after an overwrite, and cut to a short expected length.
#[tokio::test]
async fn read_data_is_exact_with_and_without_data_digest() {
    let d = TestDaemon::start(None).await;
    let data = pattern(3 << 20, 41);
    let mut w = Wire::connect(d.addr).await;
    w.login(TARGET, &[("MaxBurstLength", "1048576")]).await;
    w.expect_power_on_ua().await;
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let lba = 1000 + (i as u32) * 2048;
        assert_eq!(
            write_with_r2t(&mut w, lba, Bytes::copy_from_slice(chunk)).await,
            0
        );
    }
    for digest in ["None", "CRC32C"] {
        let mut r = Wire::connect(d.addr).await;
        r.login(TARGET, &[("DataDigest", digest)]).await;
        r.expect_power_on_ua().await;
        // 3 MiB in 256 KiB PDUs over three 1 MiB bursts, then odd pieces.
        let mut whole = BytesMut::new();
        for i in 0..3u32 {
            whole.extend_from_slice(&read(&mut r, 1000 + i * 2048, 1 << 20).await);
        }
        assert!(whole.freeze() == data, "{digest}: 3 MiB read back");
        let odd = read(&mut r, 1000 + 3, 17 * 512).await;
        assert!(odd == data.slice(3 * 512..20 * 512), "{digest}: odd range");

        // An expected length shorter than the READ: the data is cut and
        // the overflow reported in the status.
        let cmd = r.scsi_command(&read10(1000, 16), 4096, true, false, Bytes::new());
        r.send(&cmd).await;
        let p = r.recv().await.expect("Data-In");
        let Bhs::DataIn(di) = &p.bhs else {
            panic!("{digest}: expected Data-In, got {:?}", p.bhs)
        };
        assert_eq!(di.status, Some(0), "{digest}: status collapsed");
        assert_eq!(
            di.residual,
            iscsi_target::pdu::Residual::Overflow(4096),
            "{digest}"
        );
        assert!(p.data == data.slice(..4096), "{digest}: truncated data");
    }
    // A later write is seen by the next read (the page cache is shared).
    let newer = pattern(1 << 20, 99);
    assert_eq!(write_with_r2t(&mut w, 1000, newer.clone()).await, 0);
    assert!(read(&mut w, 1000, 1 << 20).await == newer, "overwrite seen");
    w.ping().await;
}

/// Receives the next PDU that is not a target ping, answering pings (the
/// keepalive must not drop an initiator that is only waiting).
async fn recv_answering_pings(w: &mut Wire) -> Option<Pdu> {
    loop {
        let p = w.recv().await?;
        match &p.bhs {
            Bhs::NopIn(n) if n.itt == Itt::RESERVED && n.ttt != Ttt::RESERVED => {
                let answer = ping_answer(w, n.ttt);
                w.send(&answer).await;
            }
            _ => return Some(p),
        }
    }
}

/// An initiator that stops reading its socket (a frozen host) is dropped
/// once it has taken no data for `nop_timeout`, and the page-cache ranges
/// queued for its READs are released: a COMPARE AND WRITE from another
/// session, which waits for those ranges before it runs, completes.
#[tokio::test]
async fn a_peer_that_stops_reading_is_dropped_and_releases_its_reads() {
    let d = TestDaemon::start(Some("nop_interval_secs = 1\nnop_timeout_secs = 1\n")).await;
    let mut b = Wire::connect(d.addr).await;
    b.login(TARGET, &[]).await;
    b.expect_power_on_ua().await;
    let data = pattern(1 << 20, 5);
    assert_eq!(write_with_r2t(&mut b, 0, data.clone()).await, 0);

    // A asks for 32 MiB and reads none of it: far more than the socket
    // buffers hold, so the target's writer stalls with ranges queued.
    let mut a = Wire::connect(d.addr).await;
    a.login(TARGET, &[]).await;
    a.expect_power_on_ua().await;
    for _ in 0..32 {
        let cmd = a.scsi_command(&read10(0, 2048), 1 << 20, true, false, Bytes::new());
        a.send(&cmd).await;
    }

    // COMPARE AND WRITE(16) of block 0: compare with what is there, write
    // new data. It turns zero-copy off on the LU and waits for A's ranges.
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[13] = 1;
    let new = pattern(512, 77);
    let mut payload = BytesMut::from(&data[..512]);
    payload.extend_from_slice(&new);
    let cmd = b.scsi_command(&caw, 1024, false, true, payload.freeze());
    b.send(&cmd).await;
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        recv_answering_pings(&mut b),
    )
    .await
    .expect("COMPARE AND WRITE answered once the stalled session is gone")
    .expect("response");
    assert_eq!(scsi_status(&r), (0, None), "COMPARE AND WRITE succeeded");
    assert!(read(&mut b, 0, 512).await == new, "the new block is there");

    // The target closed A: what it had buffered drains, then EOF.
    while a.recv().await.is_some() {}
}

/// SPC-4 5.14: every new I_T nexus starts with POWER ON, RESET, OR BUS
/// DEVICE RESET OCCURRED, reported once, on the first command that is not
/// INQUIRY, REPORT LUNS or REQUEST SENSE; another session's UA is its own.
#[tokio::test]
async fn each_new_session_reports_power_on_once() {
    let d = TestDaemon::start(None).await;
    let mut a = Wire::connect(d.addr).await;
    a.login(TARGET, &[]).await;
    let inquiry = a.scsi_command(&[0x12, 0, 0, 0, 36, 0], 36, true, false, Bytes::new());
    a.send(&inquiry).await;
    let r = a.recv().await.expect("INQUIRY data");
    assert_eq!(scsi_status(&r).0, 0, "INQUIRY is not held up by the UA");
    a.expect_power_on_ua().await;

    let mut b = Wire::connect(d.addr).await;
    b.isid[5] ^= 0x55;
    b.login(TARGET, &[]).await;
    b.expect_power_on_ua().await;
    assert_eq!(a.test_unit_ready().await, (0, None), "b's UA is not a's");

    // A reinstated session is a new I_T nexus too.
    let mut c = Wire::connect(d.addr).await;
    c.isid = b.isid;
    c.login(TARGET, &[]).await;
    c.expect_power_on_ua().await;
}
