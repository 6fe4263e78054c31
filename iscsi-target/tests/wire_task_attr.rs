//! Task attributes at the wire (SAM-5 §8.6): an ORDERED command does not
//! start before a slow earlier command on the same LU, from another session
//! too (one task set per LU, shared by every nexus), and a HEAD OF QUEUE
//! command passes the waiting ORDERED one. The slow command is a write that
//! a gated backend holds until the test releases it; no timing is involved.

mod common;
mod gated;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use gated::GatedWrites;
use iscsi_target::daemon::config::Config;
use iscsi_target::pdu::{Bhs, Itt, Pdu, TaskAttr};
use iscsi_target::scsi::{LogicalUnit, LunConfig};
use iscsi_target::session::TargetLookup;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Writes to this LBA wait until the test opens the gate.
const GATED_LBA: u32 = 7;

/// The default target with LUN 0 on a [`GatedWrites`] backend.
struct GatedDaemon {
    addr: std::net::SocketAddr,
    backend: Arc<GatedWrites>,
    _dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
}

impl GatedDaemon {
    async fn start() -> GatedDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::default();
        cfg.targets[0].luns[0].size = "16M".into();
        cfg.data_dir = dir.path().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        cfg.listen = vec![addr];
        let targets = iscsi_target::daemon::build_targets(&cfg, std::slice::from_ref(&listener))
            .expect("targets build");
        let backend = Arc::new(GatedWrites::new(16 << 20, Some(u64::from(GATED_LBA) * 512)));
        let lu = LogicalUnit::new(LunConfig::new("GATED"), backend.clone()).expect("LU");
        targets
            .scsi_target(TARGET)
            .expect("default target")
            .add_lun(0, Arc::new(lu));
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(async move {
            iscsi_target::daemon::serve(&cfg, targets, vec![listener], rx).await;
        });
        GatedDaemon {
            addr,
            backend,
            _dir: dir,
            shutdown,
        }
    }

    async fn session(&self) -> Wire {
        let mut w = Wire::connect(self.addr).await;
        w.login(TARGET, &[]).await;
        w.expect_power_on_ua().await;
        w
    }
}

impl Drop for GatedDaemon {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn write10(lba: u32) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[8] = 1;
    c
}

const TEST_UNIT_READY: [u8; 6] = [0; 6];

/// A TEST UNIT READY with task attribute `attr`, and its ITT.
fn tur(w: &mut Wire, attr: TaskAttr) -> (Pdu, Itt) {
    let mut pdu = w.scsi_command(&TEST_UNIT_READY, 0, false, false, Bytes::new());
    let Bhs::ScsiCommand(c) = &mut pdu.bhs else {
        unreachable!()
    };
    c.attr = attr;
    let itt = c.itt;
    (pdu, itt)
}

fn response_itt(p: &Pdu) -> Itt {
    match &p.bhs {
        Bhs::ScsiResponse(r) => r.itt,
        other => panic!("expected a SCSI Response, got {other:?}"),
    }
}

/// Every PDU the target sends on `w` before the answer to a NOP-Out sent
/// now (the connection answers in order: anything already done shows up
/// first).
async fn sent_before_ping(w: &mut Wire) -> Vec<Pdu> {
    let nop = w.nop_out(Bytes::new());
    let Bhs::NopOut(n) = &nop.bhs else {
        unreachable!()
    };
    let itt = n.itt;
    w.send(&nop).await;
    let mut before = Vec::new();
    loop {
        let p = w.recv().await.expect("NOP-In");
        match &p.bhs {
            Bhs::NopIn(n) if n.itt == itt => return before,
            _ => before.push(p),
        }
    }
}

#[tokio::test]
async fn ordered_waits_for_an_earlier_command_from_another_session() {
    let d = GatedDaemon::start().await;
    let mut a = d.session().await;
    let mut b = d.session().await;

    // A: a SIMPLE write that the backend holds.
    let write = a.scsi_command(&write10(GATED_LBA), 512, false, true, vec![3u8; 512].into());
    a.send(&write).await;
    d.backend.reached().await;

    // B: an ORDERED command arrives after it. As SIMPLE it would finish at
    // once; ORDERED, it must wait for A's write.
    let (ordered, ordered_itt) = tur(&mut b, TaskAttr::Ordered);
    b.send(&ordered).await;
    let early = sent_before_ping(&mut b).await;
    assert!(
        early.is_empty(),
        "the ORDERED command completed before the earlier write: {early:?}"
    );

    // HEAD OF QUEUE passes the waiting ORDERED command.
    let (hoq, hoq_itt) = tur(&mut b, TaskAttr::HeadOfQueue);
    b.send(&hoq).await;
    let p = b.recv().await.expect("HEAD OF QUEUE response");
    assert_eq!(response_itt(&p), hoq_itt, "HEAD OF QUEUE first");
    assert_eq!(scsi_status(&p), (0, None));

    // The write ends; then the ORDERED command runs.
    d.backend.open();
    let p = a.recv().await.expect("write response");
    assert_eq!(scsi_status(&p), (0, None), "the write completed");
    let p = b.recv().await.expect("ORDERED response");
    assert_eq!(response_itt(&p), ordered_itt);
    assert_eq!(scsi_status(&p), (0, None));
    a.ping().await;
    b.ping().await;
}

#[tokio::test]
async fn a_simple_command_after_an_ordered_one_waits_for_it() {
    let d = GatedDaemon::start().await;
    let mut a = d.session().await;
    // The ORDERED write is held by the backend; a later SIMPLE command,
    // from the same session, may not pass it.
    let mut write = a.scsi_command(&write10(GATED_LBA), 512, false, true, vec![3u8; 512].into());
    let Bhs::ScsiCommand(c) = &mut write.bhs else {
        unreachable!()
    };
    c.attr = TaskAttr::Ordered;
    let write_itt = c.itt;
    a.send(&write).await;
    d.backend.reached().await;
    let (simple, simple_itt) = tur(&mut a, TaskAttr::Simple);
    a.send(&simple).await;
    let early = sent_before_ping(&mut a).await;
    assert!(
        early.is_empty(),
        "SIMPLE passed the ORDERED write: {early:?}"
    );
    d.backend.open();
    let first = a.recv().await.expect("response");
    let second = a.recv().await.expect("response");
    assert_eq!(
        [response_itt(&first), response_itt(&second)],
        [write_itt, simple_itt]
    );
}
