//! The full-feature phase of one connection (RFC 7143 §4, §10): a single-owner
//! event loop that reads PDUs, runs SCSI commands concurrently, and sends
//! responses in order.
//!
//! The loop owns all per-connection state; nothing here is shared across
//! tasks. Commands run as futures inside the loop (run-to-completion on the
//! connection's task), and the storage engine does the blocking work on its own
//! threads. Each iteration waits for whichever comes first:
//!
//! ```text
//!          +--> PDU from the socket ----> dispatch (command, Data-Out, TMF,
//!          |                                 NOP-Out, Text, Logout)
//!   loop --+--> a command completed ------> Data-In / SCSI Response
//!          +--> liveness timer -------------> NOP-In ping, drop a dead peer,
//!          |                                 or close after the logout grace
//!          +--> shutdown / reinstatement --> Async logout request, then close
//! ```
//!
//! The state lives in two machines, each a data enum with its diagram:
//! every SCSI task in one [`tasks::TaskTable`] (collecting data, running,
//! aborted), and the keepalive and logout request in [`liveness::Liveness`].
//! Task management decides in [`super::tmf`] and the loop applies the
//! decision. Files: `mod.rs` (the loop and dispatch), `commands.rs` (the
//! SCSI command path), `tasks.rs`, `respond.rs` (Data-In and SCSI Response
//! PDUs), `liveness.rs`, `text.rs`.
//!
//! A PDU's way through dispatch:
//!
//! ```text
//!   Data-Out ----------------------------------> the collecting task, or Reject
//!   NOP-Out answering a ping (ITT 0xffffffff) -> liveness
//!   CmdSN-carrying PDU --window--> deliver / hold until the gap fills / ignore
//!        delivered: SCSI command, NOP-Out, TMF, Text, Logout
//! ```

mod commands;
mod liveness;
mod respond;
mod tasks;
#[cfg(test)]
mod tests;
mod text;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::io::{read_pdu, Chunk, Outbox, StreamError};
use super::tmf::{self, Reset, TmfView};
use super::window::{Admission, CmdWindow};
use super::{ConnParams, SessionControl, TextResponder};
use crate::pdu::{
    AsyncEvent, AsyncMessage, Bhs, BhsBytes, Common, Digests, FrameLimits, Itt, LogoutRequest,
    LogoutResponse, NopIn, NopOut, Pdu, PduError, RawPdu, Reject, RejectReason, SeqNum,
    TaskMgmtRequest, TaskMgmtResponse, Ttt,
};
use crate::scsi::{self, lun_from_wire, Nexus, ScsiTarget};
use liveness::{Liveness, Tick};
use respond::{encode, Numbers};
use tasks::TaskTable;

/// How a connection ended.
#[derive(Debug)]
pub enum Ending {
    /// The initiator logged out (reason code kept).
    Logout(u8),
    /// The initiator closed the socket between PDUs.
    PeerClosed,
    /// The keepalive found the initiator dead.
    PeerDead,
    /// The daemon shut down or the session was reinstated elsewhere.
    Closed,
    /// A stream or protocol fault closed the connection.
    Fault(String),
}

/// A command's future finished on the SCSI layer.
struct Completed {
    itt: Itt,
    resp: scsi::ScsiResponse,
}

/// Hands out connection-unique Target Transfer Tags (R2T, NOP-In pings,
/// Text continuations), never 0 and never the reserved 0xffffffff.
#[derive(Debug)]
struct TttAlloc(u32);

impl TttAlloc {
    fn next(&mut self) -> Ttt {
        let t = self.0;
        self.0 = self.0.wrapping_add(1);
        if self.0 == 0 || self.0 == Ttt::RESERVED.0 {
            self.0 = 1;
        }
        Ttt(t)
    }
}

/// The state of the full-feature phase of one connection.
pub struct FullFeature {
    params: ConnParams,
    digests: Digests,
    target: Option<Arc<ScsiTarget>>,
    nexus: Arc<Nexus>,
    initiator_name: String,
    text: Arc<dyn TextResponder>,
    out: Outbox,
    window: CmdWindow<Pdu>,
    stat_sn: SeqNum,
    tasks: TaskTable,
    running: FuturesUnordered<BoxFuture<'static, Completed>>,
    ttts: TttAlloc,
    liveness: Liveness,
    text_pending: Option<text::PendingText>,
}

impl FullFeature {
    /// Starts the full-feature phase after a successful login.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        params: ConnParams,
        target: Option<Arc<ScsiTarget>>,
        nexus: Arc<Nexus>,
        initiator_name: String,
        text: Arc<dyn TextResponder>,
        out: Outbox,
        exp_cmd_sn: SeqNum,
        stat_sn: SeqNum,
    ) -> Self {
        FullFeature {
            digests: Digests {
                header: params.header_digest,
                data: params.data_digest,
            },
            window: CmdWindow::new(exp_cmd_sn, params.queue_depth),
            liveness: Liveness::new(
                Instant::now(),
                params.nop_interval,
                params.nop_timeout,
                params.logout_grace,
            ),
            params,
            target,
            nexus,
            initiator_name,
            text,
            out,
            stat_sn,
            tasks: TaskTable::default(),
            running: FuturesUnordered::new(),
            ttts: TttAlloc(1),
            text_pending: None,
        }
    }

    /// Runs the connection until it ends. On return all commands have
    /// completed (or were dropped with the connection).
    pub async fn run<R: AsyncRead + Unpin>(
        mut self,
        reader: &mut R,
        buf: &mut BytesMut,
        mut ctl: SessionControl,
    ) -> Ending {
        let limits = FrameLimits {
            max_recv_data_segment: self.params.max_recv_data_segment_length,
            header_digest: self.params.header_digest,
            data_digest: self.params.data_digest,
        };
        // Closed when the writer has stopped (socket error, or a peer that
        // stopped taking data): nothing more can be answered.
        let outbox = self.out.clone();
        loop {
            let timer = self.liveness.deadline();
            tokio::select! {
                biased;
                _ = ctl.kill.notified() => {
                    self.drain().await;
                    return Ending::Closed;
                }
                _ = outbox.closed() => {
                    self.drain().await;
                    return Ending::Fault("the connection stopped taking data".into());
                }
                changed = ctl.shutdown.changed(), if !self.liveness.logout_requested() => {
                    if (changed.is_err() || *ctl.shutdown.borrow())
                        && self.liveness.on_shutdown(Instant::now())
                    {
                        self.request_logout().await;
                    }
                }
                Some(done) = self.running.next(), if !self.running.is_empty() => {
                    self.complete(done).await;
                }
                frame = read_pdu(reader, buf, &limits) => {
                    self.liveness.on_traffic(Instant::now());
                    let raw = match frame {
                        Ok(Some(raw)) => raw,
                        Ok(None) => {
                            // The I_T nexus is gone now (SAM-5 6.3.4), not
                            // once its commands drained: a RESERVE(6) it held
                            // must not refuse the next command of another
                            // session. The session calls it again at its end.
                            self.nexus_lost();
                            self.drain().await;
                            return Ending::PeerClosed;
                        }
                        Err(StreamError::Io(e)) => { return Ending::Fault(e.to_string()); }
                        Err(e) => { self.drain().await; return Ending::Fault(e.to_string()); }
                    };
                    if let Some(end) = self.on_pdu(raw).await {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(timer) => {
                    match self.liveness.on_timer(Instant::now()) {
                        Tick::Nothing => {}
                        Tick::Ping => self.ping().await,
                        Tick::Dead => return Ending::PeerDead,
                        Tick::Close => {
                            self.drain().await;
                            return Ending::Closed;
                        }
                    }
                }
            }
        }
    }

    /// Tells the SCSI layer this session's I_T nexus is lost.
    fn nexus_lost(&self) {
        if let Some(t) = &self.target {
            t.nexus_lost(self.nexus.id);
        }
    }

    /// Waits for every running command, so that no write is left half done
    /// when the connection goes away. Their responses are still sent when the
    /// socket allows it.
    async fn drain(&mut self) {
        while let Some(done) = self.running.next().await {
            self.complete(done).await;
        }
    }

    /// The numbers for a PDU that carries a status: takes the next StatSN.
    fn numbers(&mut self) -> Numbers {
        let n = self.peek_numbers();
        self.stat_sn = n.stat_sn.next();
        n
    }

    /// The numbers for a PDU without a status (R2T, ping, Async): StatSN is
    /// reported, not advanced (RFC 7143 §11.8.3, §11.19.4, §11.9.2).
    fn peek_numbers(&self) -> Numbers {
        Numbers {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        }
    }

    fn alloc_ttt(&mut self) -> Ttt {
        self.ttts.next()
    }

    async fn send(&mut self, pdus: impl IntoIterator<Item = Pdu>) {
        let mut parts = Vec::new();
        for p in pdus {
            encode(&p, self.digests, &mut parts);
        }
        self.send_chunks(parts).await;
    }

    async fn send_chunks(&mut self, chunks: Vec<Chunk>) {
        // A closed writer means the socket is gone; `run` sees the outbox
        // closed and ends the session.
        let _ = self.out.send(chunks).await;
    }

    async fn reject(&mut self, reason: RejectReason, header: &BhsBytes) {
        let n = self.numbers();
        let pdu = Pdu::new(
            Bhs::Reject(Reject {
                reason,
                stat_sn: n.stat_sn,
                exp_cmd_sn: n.exp_cmd_sn,
                max_cmd_sn: n.max_cmd_sn,
                data_sn: 0,
            }),
            Bytes::copy_from_slice(header),
        );
        self.send([pdu]).await;
    }

    /// Handles one received PDU. `Some` ends the connection.
    async fn on_pdu(&mut self, raw: RawPdu) -> Option<Ending> {
        if !raw.data_digest_ok {
            // RFC 7143 §7.8: a data digest error discards the PDU and is
            // answered with a Reject; the initiator retries at the SCSI level.
            tracing::warn!(initiator = %self.initiator_name, "data digest error");
            self.reject(RejectReason::DATA_DIGEST_ERROR, &raw.bhs).await;
            return None;
        }
        let pdu = match Pdu::decode(&raw) {
            Ok(p) => p,
            Err(PduError::ReservedOpcode(op)) => {
                tracing::warn!(opcode = op, "reserved opcode rejected");
                self.reject(RejectReason::COMMAND_NOT_SUPPORTED, &raw.bhs)
                    .await;
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed PDU rejected");
                self.reject(RejectReason::INVALID_PDU_FIELD, &raw.bhs).await;
                return None;
            }
        };
        if !Common::opcode_of(&raw.bhs).is_initiator() {
            self.reject(RejectReason::PROTOCOL_ERROR, &raw.bhs).await;
            return None;
        }
        match &pdu.bhs {
            Bhs::DataOut(d) => {
                let d = d.clone();
                self.on_data_out(&d, &pdu.data, &raw.bhs).await;
                None
            }
            Bhs::NopOut(n) if n.itt == Itt::RESERVED => {
                // The answer to our ping (RFC 7143 §11.18.1).
                self.liveness.on_ping_answer(Instant::now());
                None
            }
            Bhs::LoginRequest(_) | Bhs::SnackRequest(_) => {
                // Login after login, and SNACK at ErrorRecoveryLevel 0.
                self.reject(RejectReason::PROTOCOL_ERROR, &raw.bhs).await;
                None
            }
            _ => self.sequence(pdu, &raw.bhs).await,
        }
    }

    /// Applies CmdSN ordering to a command-carrying PDU (RFC 7143 §3.2.2.1).
    async fn sequence(&mut self, pdu: Pdu, header: &BhsBytes) -> Option<Ending> {
        let Some((immediate, cmd_sn)) = cmd_sn_of(&pdu.bhs) else {
            self.reject(RejectReason::PROTOCOL_ERROR, header).await;
            return None;
        };
        if immediate {
            return self.execute(pdu, header, true).await;
        }
        match self.window.classify(cmd_sn) {
            Admission::Deliver => {
                self.window.admit();
                let end = self.execute(pdu, header, false).await;
                if end.is_some() {
                    return end;
                }
                while let Some(next) = self.window.take_next_held() {
                    self.window.admit();
                    let h = next.bhs_bytes();
                    if let Some(end) = self.execute(next, &h, false).await {
                        return Some(end);
                    }
                }
                None
            }
            Admission::Hold => {
                self.window.hold(cmd_sn, pdu);
                None
            }
            Admission::Ignore => {
                tracing::debug!(
                    cmd_sn = cmd_sn.0,
                    exp = self.window.exp_cmd_sn().0,
                    "CmdSN outside the window: ignored"
                );
                None
            }
        }
    }

    /// Runs a PDU that has passed CmdSN ordering. For non-immediate PDUs the
    /// window counts it in flight; every path must call `window.complete()`
    /// exactly once for it (`counted`).
    async fn execute(&mut self, pdu: Pdu, header: &BhsBytes, immediate: bool) -> Option<Ending> {
        let counted = !immediate;
        match pdu.bhs {
            Bhs::ScsiCommand(cmd) if self.target.is_some() => {
                self.on_scsi_command(cmd, pdu.ahs, pdu.data, counted).await;
                None
            }
            Bhs::NopOut(n) => {
                self.finish_counted(counted);
                self.on_nop_out(n, pdu.data).await;
                None
            }
            Bhs::TaskMgmtRequest(t) if self.target.is_some() => {
                self.finish_counted(counted);
                self.on_tmf(t).await
            }
            Bhs::TextRequest(t) => {
                self.finish_counted(counted);
                self.on_text(t, pdu.data, header).await;
                None
            }
            Bhs::LogoutRequest(l) => {
                self.finish_counted(counted);
                Some(self.on_logout(l).await)
            }
            _ => {
                self.finish_counted(counted);
                self.reject(RejectReason::PROTOCOL_ERROR, header).await;
                None
            }
        }
    }

    fn finish_counted(&mut self, counted: bool) {
        if counted {
            self.window.complete();
        }
    }

    async fn on_nop_out(&mut self, n: NopOut, data: Bytes) {
        // A NOP-Out with a valid ITT asks for a NOP-In echoing its data
        // (RFC 7143 §11.18.5); StatSN advances for it.
        let s = self.numbers();
        let pdu = Pdu::new(
            Bhs::NopIn(NopIn {
                lun: n.lun,
                itt: n.itt,
                ttt: Ttt::RESERVED,
                stat_sn: s.stat_sn,
                exp_cmd_sn: s.exp_cmd_sn,
                max_cmd_sn: s.max_cmd_sn,
            }),
            data,
        );
        self.send([pdu]).await;
    }

    /// A target ping: a NOP-In with a TTT that asks for a NOP-Out answer
    /// (RFC 7143 §11.19.1).
    async fn ping(&mut self) {
        let ttt = self.alloc_ttt();
        let s = self.peek_numbers();
        let pdu = Pdu::new(
            Bhs::NopIn(NopIn {
                lun: 0,
                itt: Itt::RESERVED,
                ttt,
                stat_sn: s.stat_sn,
                exp_cmd_sn: s.exp_cmd_sn,
                max_cmd_sn: s.max_cmd_sn,
            }),
            Bytes::new(),
        );
        self.send([pdu]).await;
    }

    /// The Async Message asking the initiator to log out within the grace
    /// period (RFC 7143 §11.9.1, AsyncEvent 1, Parameter3 in seconds).
    async fn request_logout(&mut self) {
        let s = self.peek_numbers();
        let pdu = Pdu::new(
            Bhs::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: s.stat_sn,
                exp_cmd_sn: s.exp_cmd_sn,
                max_cmd_sn: s.max_cmd_sn,
                event: AsyncEvent::LOGOUT_REQUEST,
                vcode: 0,
                params: [0, 0, self.params.logout_grace.as_secs().max(1) as u16],
            }),
            Bytes::new(),
        );
        self.send([pdu]).await;
    }

    async fn on_logout(&mut self, l: LogoutRequest) -> Ending {
        // Let running commands finish first: their status must reach the
        // initiator before the logout response (RFC 7143 §11.14). The nexus
        // is lost before the response goes out, so that an initiator that
        // then uses another session finds its RESERVE(6) released.
        self.drain().await;
        self.nexus_lost();
        let response = match l.reason {
            0 | 1 => 0,
            2 => 2,
            _ => 3,
        };
        let s = self.numbers();
        let pdu = Pdu::new(
            Bhs::LogoutResponse(LogoutResponse {
                response,
                itt: l.itt,
                stat_sn: s.stat_sn,
                exp_cmd_sn: s.exp_cmd_sn,
                max_cmd_sn: s.max_cmd_sn,
                time2wait: 0,
                time2retain: 0,
            }),
            Bytes::new(),
        );
        self.send([pdu]).await;
        Ending::Logout(l.reason)
    }

    /// Applies the decision of [`tmf::decide`]: aborts, the reset, the
    /// response, then the close of a cold reset.
    async fn on_tmf(&mut self, t: TaskMgmtRequest) -> Option<Ending> {
        let view = TmfView {
            ref_task_held: self.tasks.in_use(t.ref_itt),
            lun_known: self
                .target
                .as_ref()
                .is_some_and(|s| s.lun(lun_from_wire(t.lun.to_be_bytes())).is_some()),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        };
        let d = tmf::decide(&t, view);
        if let Some(scope) = d.abort {
            let aborted = self.tasks.abort(scope);
            for _ in 0..aborted.released {
                self.window.complete();
            }
        }
        if let (Some(reset), Some(target)) = (d.reset, self.target.as_ref()) {
            match reset {
                Reset::Lun(lun) => {
                    target.lun_reset(lun_from_wire(lun.to_be_bytes()), &self.nexus);
                }
                Reset::Target { cold } => target.target_reset(&self.nexus, cold),
            }
        }
        let s = self.numbers();
        let pdu = Pdu::new(
            Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: d.response,
                itt: t.itt,
                stat_sn: s.stat_sn,
                exp_cmd_sn: s.exp_cmd_sn,
                max_cmd_sn: s.max_cmd_sn,
            }),
            Bytes::new(),
        );
        self.send([pdu]).await;
        if d.close {
            self.drain().await;
            return Some(Ending::Closed);
        }
        None
    }
}

/// The immediate flag and CmdSN of PDUs that carry one.
fn cmd_sn_of(bhs: &Bhs) -> Option<(bool, SeqNum)> {
    match bhs {
        Bhs::ScsiCommand(c) => Some((c.immediate, c.cmd_sn)),
        Bhs::NopOut(n) => Some((n.immediate, n.cmd_sn)),
        Bhs::TaskMgmtRequest(t) => Some((t.immediate, t.cmd_sn)),
        Bhs::TextRequest(t) => Some((t.immediate, t.cmd_sn)),
        Bhs::LogoutRequest(l) => Some((l.immediate, l.cmd_sn)),
        _ => None,
    }
}
