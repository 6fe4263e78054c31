//! The full-feature loop over in-memory streams (`tokio::io::duplex`) with
//! the tokio clock paused: keepalive and logout deadlines are reached by
//! the runtime's auto-advance when everything waits, not by real sleeps,
//! and "nothing was sent for X" is shown by what arrives before a NOP-In
//! echo, the loop's in-order barrier.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Ending, FullFeature};
use crate::pdu::{
    decode_frame, AsyncEvent, Bhs, DataOut, Digests, FrameLimits, Itt, LogoutRequest, NopOut, Pdu,
    RejectReason, ScsiCommand, SeqNum, TaskAttr, TaskMgmtRequest, TmfFunction, TmfResponseCode,
    Ttt,
};
use crate::scsi::{LogicalUnit, LunConfig, ScsiTarget};
use crate::session::io::writer_task;
use crate::session::{iscsi_nexus, ConnParams, SessionControl, TextResponder};
use drbd_like_sync::storage::{BlockBackend, MemoryBackend, StorageError};

const DEPTH: u32 = 4;
/// Writes to this LBA wait until the test opens the gate.
const GATED_LBA: u32 = 7;

/// A memory backend whose writes at [`GATED_LBA`] wait for the test.
struct Gated {
    inner: MemoryBackend,
    reached: Notify,
    open: Semaphore,
}

#[async_trait::async_trait]
impl BlockBackend for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn engine_name(&self) -> &'static str {
        "gated"
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        if offset == u64::from(GATED_LBA) * 512 {
            self.reached.notify_one();
            let _open = self.open.acquire().await;
        }
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        self.inner.write_zeroes(offset, len, unmap).await
    }
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        self.inner.allocation(offset).await
    }
}

struct NoText;

impl TextResponder for NoText {
    fn respond(&self, _request: &[u8]) -> Option<Bytes> {
        None
    }
}

/// The initiator's end of one connection whose target side runs
/// [`FullFeature::run`] on a spawned task.
struct Peer {
    tx: DuplexStream,
    rx: DuplexStream,
    buf: BytesMut,
    cmd_sn: SeqNum,
    itt: u32,
    backend: Arc<Gated>,
    shutdown: watch::Sender<bool>,
    ending: JoinHandle<Ending>,
}

fn params() -> ConnParams {
    ConnParams {
        queue_depth: DEPTH,
        nop_interval: Duration::from_secs(15),
        nop_timeout: Duration::from_secs(30),
        logout_grace: Duration::from_secs(3),
        ..ConnParams::default()
    }
}

impl Peer {
    fn start(p: ConnParams) -> Peer {
        let backend = Arc::new(Gated {
            inner: MemoryBackend::new(1 << 20),
            reached: Notify::new(),
            open: Semaphore::new(0),
        });
        let lu = LogicalUnit::new(LunConfig::new("FFP"), backend.clone()).unwrap();
        let target = Arc::new(ScsiTarget::new("iqn.2026-11.io.locus:ffp"));
        target.add_lun(0, Arc::new(lu));
        let (tx, mut target_rx) = tokio::io::duplex(1 << 20);
        let (target_tx, rx) = tokio::io::duplex(1 << 20);
        let (out, queue) = mpsc::channel(256);
        tokio::spawn(writer_task(target_tx, queue, p.nop_timeout));
        let ffp = FullFeature::new(
            p,
            Some(target),
            Arc::new(iscsi_nexus(1, "iqn.test:ini", [0x80, 0, 0, 0, 0, 1])),
            "iqn.test:ini".into(),
            Arc::new(NoText),
            out,
            SeqNum(1),
            SeqNum(0),
        );
        let (shutdown, watch_rx) = watch::channel(false);
        let ctl = SessionControl {
            shutdown: watch_rx,
            kill: Arc::new(Notify::new()),
        };
        let ending = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            ffp.run(&mut target_rx, &mut buf, ctl).await
        });
        Peer {
            tx,
            rx,
            buf: BytesMut::new(),
            cmd_sn: SeqNum(1),
            itt: 0x100,
            backend,
            shutdown,
            ending,
        }
    }

    async fn send(&mut self, pdu: &Pdu) {
        self.tx
            .write_all(&pdu.to_vec(Digests::default()))
            .await
            .unwrap();
    }

    /// The next PDU from the target, `None` once it closed.
    async fn recv(&mut self) -> Option<Pdu> {
        let limits = FrameLimits {
            max_recv_data_segment: 1 << 24,
            header_digest: false,
            data_digest: false,
        };
        loop {
            if let Some(raw) = decode_frame(&mut self.buf, &limits).unwrap() {
                return Some(Pdu::decode(&raw).unwrap());
            }
            if self.rx.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    fn next_itt(&mut self) -> Itt {
        self.itt += 1;
        Itt(self.itt)
    }

    /// A non-immediate SCSI command with the F bit set; takes a CmdSN.
    fn command(&mut self, itt: Itt, cdb: &[u8], expected_len: u32, data: Bytes) -> Pdu {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        let pdu = Pdu::new(
            Bhs::ScsiCommand(ScsiCommand {
                immediate: false,
                final_: true,
                read: false,
                write: cdb[0] == 0x2a,
                attr: TaskAttr::Simple,
                lun: 0,
                itt,
                expected_len,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: SeqNum(0),
                cdb: c,
            }),
            data,
        );
        self.cmd_sn = self.cmd_sn.next();
        pdu
    }

    fn abort_task(&mut self, ref_itt: Itt, ref_cmd_sn: SeqNum) -> Pdu {
        let itt = self.next_itt();
        Pdu::new(
            Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: TmfFunction::ABORT_TASK,
                lun: 0,
                itt,
                ref_itt,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: SeqNum(0),
                ref_cmd_sn,
                exp_data_sn: 0,
            }),
            Bytes::new(),
        )
    }

    fn nop_out(&mut self, itt: Itt, ttt: Ttt) -> Pdu {
        Pdu::new(
            Bhs::NopOut(NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: SeqNum(0),
            }),
            Bytes::new(),
        )
    }

    /// An immediate NOP-Out echo: every PDU the target sent before it is
    /// returned, in order, and the echo's MaxCmdSN.
    async fn barrier(&mut self) -> (Vec<Pdu>, SeqNum) {
        let itt = self.next_itt();
        let nop = self.nop_out(itt, Ttt::RESERVED);
        self.send(&nop).await;
        let mut before = Vec::new();
        loop {
            let p = self.recv().await.expect("NOP-In echo");
            match &p.bhs {
                Bhs::NopIn(n) if n.itt == itt => return (before, n.max_cmd_sn),
                _ => before.push(p),
            }
        }
    }

    /// The window is wide open again: MaxCmdSN = ExpCmdSN + depth - 1.
    async fn assert_window_open(&mut self) {
        let (before, max) = self.barrier().await;
        assert!(before.is_empty(), "unexpected PDUs: {before:?}");
        assert_eq!(
            max,
            self.cmd_sn.plus(DEPTH - 1),
            "every counted command gave its slot back"
        );
    }
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

const TEST_UNIT_READY: [u8; 6] = [0; 6];

/// A final Data-Out of `len` bytes at `offset` (DataSN 0).
fn data_out(itt: Itt, ttt: Ttt, offset: u32, len: usize) -> Pdu {
    Pdu::new(
        Bhs::DataOut(DataOut {
            final_: true,
            lun: 0,
            itt,
            ttt,
            exp_stat_sn: SeqNum(0),
            data_sn: 0,
            buffer_offset: offset,
        }),
        Bytes::from(vec![1u8; len]),
    )
}

fn reject_reason(p: &Pdu) -> RejectReason {
    match &p.bhs {
        Bhs::Reject(r) => r.reason,
        other => panic!("expected a Reject, got {other:?}"),
    }
}

fn tmf_response(p: &Pdu) -> TmfResponseCode {
    match &p.bhs {
        Bhs::TaskMgmtResponse(r) => r.response,
        other => panic!("expected a TMF Response, got {other:?}"),
    }
}

fn status_of(p: &Pdu) -> (Itt, u8) {
    match &p.bhs {
        Bhs::ScsiResponse(r) => (r.itt, r.status),
        other => panic!("expected a SCSI Response, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_pinged_and_an_answer_keeps_it() {
    let t0 = Instant::now();
    let mut peer = Peer::start(params());
    for round in 1..=2u32 {
        let p = peer.recv().await.expect("NOP-In ping");
        let Bhs::NopIn(n) = &p.bhs else {
            panic!("expected a NOP-In, got {:?}", p.bhs)
        };
        assert_eq!(n.itt, Itt::RESERVED, "a target-initiated ping");
        assert_ne!(n.ttt, Ttt::RESERVED, "it asks for an answer");
        assert_eq!(t0.elapsed(), Duration::from_secs(15 * u64::from(round)));
        let answer = peer.nop_out(Itt::RESERVED, n.ttt);
        peer.send(&answer).await;
    }
    // Answered pings keep it alive well past the timeout.
    peer.assert_window_open().await;
    drop(peer.tx);
    assert!(matches!(peer.ending.await.unwrap(), Ending::PeerClosed));
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_does_not_answer_the_ping_is_dropped_after_nop_timeout() {
    let t0 = Instant::now();
    let mut peer = Peer::start(params());
    let p = peer.recv().await.expect("NOP-In ping");
    assert!(matches!(p.bhs, Bhs::NopIn(_)));
    assert!(peer.recv().await.is_none(), "closed");
    assert!(matches!(peer.ending.await.unwrap(), Ending::PeerDead));
    assert_eq!(t0.elapsed(), Duration::from_secs(15 + 30));
}

#[tokio::test(start_paused = true)]
async fn shutdown_asks_for_a_logout_and_closes_after_the_grace() {
    let mut peer = Peer::start(params());
    let t0 = Instant::now();
    peer.shutdown.send(true).unwrap();
    let p = peer.recv().await.expect("Async Message");
    let Bhs::AsyncMessage(a) = &p.bhs else {
        panic!("expected an Async Message, got {:?}", p.bhs)
    };
    assert_eq!(a.event, AsyncEvent::LOGOUT_REQUEST);
    assert_eq!(a.params[2], 3, "Parameter3: seconds to log out");
    assert!(peer.recv().await.is_none(), "closed after the grace");
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert!(matches!(peer.ending.await.unwrap(), Ending::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_logout_within_the_grace_is_answered() {
    let mut peer = Peer::start(params());
    peer.shutdown.send(true).unwrap();
    assert!(matches!(
        peer.recv().await.map(|p| p.bhs),
        Some(Bhs::AsyncMessage(_))
    ));
    let itt = peer.next_itt();
    let logout = Pdu::new(
        Bhs::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: peer.cmd_sn,
            exp_stat_sn: SeqNum(0),
        }),
        Bytes::new(),
    );
    peer.send(&logout).await;
    assert!(matches!(
        peer.recv().await.map(|p| p.bhs),
        Some(Bhs::LogoutResponse(_))
    ));
    assert!(matches!(peer.ending.await.unwrap(), Ending::Logout(0)));
}

#[tokio::test(start_paused = true)]
async fn abort_task_drops_a_write_still_collecting_data() {
    let mut peer = Peer::start(params());
    let itt = peer.next_itt();
    let cmd_sn = peer.cmd_sn;
    // InitialR2T=Yes and no immediate data: the target asks for the data.
    let write = peer.command(itt, &write10(0, 1), 512, Bytes::new());
    peer.send(&write).await;
    let r2t = peer.recv().await.expect("R2T");
    let Bhs::R2t(r2t) = r2t.bhs else {
        panic!("expected an R2T, got {:?}", r2t.bhs)
    };
    let abort = peer.abort_task(itt, cmd_sn);
    peer.send(&abort).await;
    let p = peer.recv().await.expect("TMF Response");
    assert_eq!(tmf_response(&p), TmfResponseCode::COMPLETE);
    // The data arriving now has no task.
    let data_out = data_out(itt, r2t.ttt, 0, 512);
    peer.send(&data_out).await;
    let p = peer.recv().await.expect("Reject");
    assert_eq!(reject_reason(&p), RejectReason::PROTOCOL_ERROR);
    peer.assert_window_open().await;
}

#[tokio::test(start_paused = true)]
async fn abort_task_of_a_running_command_sends_no_response_for_it() {
    let mut peer = Peer::start(params());
    let itt = peer.next_itt();
    let cmd_sn = peer.cmd_sn;
    let data = Bytes::from(vec![5u8; 512]);
    let write = peer.command(itt, &write10(GATED_LBA, 1), 512, data);
    peer.send(&write).await;
    peer.backend.reached.notified().await;
    let abort = peer.abort_task(itt, cmd_sn);
    peer.send(&abort).await;
    let p = peer.recv().await.expect("TMF Response");
    assert_eq!(tmf_response(&p), TmfResponseCode::COMPLETE);
    let Bhs::TaskMgmtResponse(r) = &p.bhs else {
        unreachable!()
    };
    assert_eq!(
        r.max_cmd_sn,
        peer.cmd_sn.plus(DEPTH - 2),
        "the slot stays taken while the engine still works on it"
    );
    peer.backend.open.add_permits(1);
    // Nothing for the aborted command, and its slot came back.
    peer.assert_window_open().await;
}

#[tokio::test(start_paused = true)]
async fn a_task_tag_in_use_is_rejected() {
    let mut peer = Peer::start(params());
    let itt = peer.next_itt();
    let data = Bytes::from(vec![5u8; 512]);
    let write = peer.command(itt, &write10(GATED_LBA, 1), 512, data);
    peer.send(&write).await;
    peer.backend.reached.notified().await;
    let again = peer.command(itt, &TEST_UNIT_READY, 0, Bytes::new());
    peer.send(&again).await;
    let p = peer.recv().await.expect("Reject");
    assert_eq!(reject_reason(&p), RejectReason::TASK_IN_PROGRESS);
    peer.backend.open.add_permits(1);
    let (before, _) = peer.barrier().await;
    let statuses: Vec<_> = before.iter().map(status_of).collect();
    assert_eq!(statuses, [(itt, 0)], "the first command completes");
    peer.assert_window_open().await;
}

#[tokio::test(start_paused = true)]
async fn data_out_for_an_unknown_task_is_rejected() {
    let mut peer = Peer::start(params());
    let data_out = data_out(Itt(0x4242), Ttt(1), 0, 512);
    peer.send(&data_out).await;
    let p = peer.recv().await.expect("Reject");
    assert_eq!(reject_reason(&p), RejectReason::PROTOCOL_ERROR);
    assert_eq!(&p.data[..], &data_out.bhs_bytes()[..], "header echoed");
    peer.assert_window_open().await;
}

/// Every way a counted command can end gives its window slot back once:
/// MaxCmdSN returns to ExpCmdSN + depth - 1 after each, and more commands
/// than the depth pass through (a leaked slot would close the window and
/// the commands beyond it would be ignored).
#[tokio::test(start_paused = true)]
async fn every_counted_command_completes_exactly_once() {
    let mut peer = Peer::start(params());
    for _ in 0..DEPTH * 2 {
        // Completed with a response.
        let itt = peer.next_itt();
        let tur = peer.command(itt, &TEST_UNIT_READY, 0, Bytes::new());
        peer.send(&tur).await;
        assert_eq!(status_of(&peer.recv().await.unwrap()), (itt, 0));
        peer.assert_window_open().await;

        // Refused before it starts: more immediate data than expected.
        let itt = peer.next_itt();
        let bad = peer.command(itt, &write10(0, 1), 512, Bytes::from(vec![0u8; 1024]));
        peer.send(&bad).await;
        assert_eq!(
            reject_reason(&peer.recv().await.unwrap()),
            RejectReason::PROTOCOL_ERROR
        );
        peer.assert_window_open().await;

        // Terminated by a bad Data-Out (beyond the expected length).
        let itt = peer.next_itt();
        let w = peer.command(itt, &write10(0, 1), 512, Bytes::new());
        peer.send(&w).await;
        let Some(Bhs::R2t(r2t)) = peer.recv().await.map(|p| p.bhs) else {
            panic!("expected an R2T")
        };
        let data_out = data_out(itt, r2t.ttt, 256, 512);
        peer.send(&data_out).await;
        assert_eq!(status_of(&peer.recv().await.unwrap()), (itt, 2));
        peer.assert_window_open().await;

        // Aborted while running.
        let itt = peer.next_itt();
        let cmd_sn = peer.cmd_sn;
        let w = peer.command(itt, &write10(GATED_LBA, 1), 512, vec![9u8; 512].into());
        peer.send(&w).await;
        peer.backend.reached.notified().await;
        let abort = peer.abort_task(itt, cmd_sn);
        peer.send(&abort).await;
        assert_eq!(
            tmf_response(&peer.recv().await.unwrap()),
            TmfResponseCode::COMPLETE
        );
        peer.backend.open.add_permits(1);
        peer.assert_window_open().await;
        // The gate closes again for the next round.
        peer.backend.open.acquire().await.unwrap().forget();
    }
}
