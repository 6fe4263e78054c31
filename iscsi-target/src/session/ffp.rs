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
//!          +--> keepalive timer ------------> NOP-In ping, or drop a dead peer
//!          +--> shutdown / reinstatement --> Async logout request, then close
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::io::{read_pdu, Chunk, Outbox, StreamError};
use super::window::{Admission, CmdWindow};
use super::write_task::WriteTask;
use super::{ConnParams, SessionControl, TextResponder};
use crate::pdu::{
    AsyncEvent, AsyncMessage, Bhs, BhsBytes, Common, DataIn, DataOut, Digests, FrameLimits, Itt,
    LogoutRequest, LogoutResponse, NopIn, NopOut, Pdu, PduError, R2t, RawPdu, Reject, RejectReason,
    Residual, ScsiCommand, ScsiResponse, SeqNum, TaskMgmtRequest, TextRequest, TextResponse, Ttt,
};
use crate::scsi::{self, Nexus, ScsiRequest, ScsiTarget};

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

struct Completed {
    itt: Itt,
    resp: scsi::ScsiResponse,
}

/// A write command collecting its Data-Out.
struct Collecting {
    cmd: ScsiCommand,
    cdb: Bytes,
    task: WriteTask,
    counted: bool,
}

/// A command running on the SCSI layer.
struct Running {
    lun: u64,
    counted: bool,
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
    writes: HashMap<Itt, Collecting>,
    running: FuturesUnordered<BoxFuture<'static, Completed>>,
    running_itts: HashMap<Itt, Running>,
    aborted: HashSet<Itt>,
    next_ttt: u32,
    ping_outstanding: Option<Instant>,
    text_pending: Option<(Itt, Ttt, Bytes)>,
    logout_requested: bool,
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
            params,
            target,
            nexus,
            initiator_name,
            text,
            out,
            stat_sn,
            writes: HashMap::new(),
            running: FuturesUnordered::new(),
            running_itts: HashMap::new(),
            aborted: HashSet::new(),
            next_ttt: 1,
            ping_outstanding: None,
            text_pending: None,
            logout_requested: false,
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
        let mut idle_deadline = Instant::now() + self.params.nop_interval;
        let mut logout_deadline: Option<Instant> = None;
        // Closed when the writer has stopped (socket error, or a peer that
        // stopped taking data): nothing more can be answered.
        let outbox = self.out.clone();
        loop {
            let timer = match (self.ping_outstanding, logout_deadline) {
                (_, Some(d)) => d.min(idle_deadline),
                (Some(sent), None) => sent + self.params.nop_timeout,
                (None, None) => idle_deadline,
            };
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
                changed = ctl.shutdown.changed(), if logout_deadline.is_none() => {
                    if changed.is_err() || *ctl.shutdown.borrow() {
                        self.request_logout().await;
                        logout_deadline = Some(Instant::now() + self.params.logout_grace);
                    }
                }
                Some(done) = self.running.next(), if !self.running.is_empty() => {
                    self.complete(done).await;
                }
                frame = read_pdu(reader, buf, &limits) => {
                    idle_deadline = Instant::now() + self.params.nop_interval;
                    let raw = match frame {
                        Ok(Some(raw)) => raw,
                        Ok(None) => { self.drain().await; return Ending::PeerClosed; }
                        Err(StreamError::Io(e)) => { return Ending::Fault(e.to_string()); }
                        Err(e) => { self.drain().await; return Ending::Fault(e.to_string()); }
                    };
                    if let Some(end) = self.on_pdu(raw).await {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(timer) => {
                    let now = Instant::now();
                    if logout_deadline.is_some_and(|d| now >= d) {
                        self.drain().await;
                        return Ending::Closed;
                    }
                    if let Some(sent) = self.ping_outstanding {
                        if now >= sent + self.params.nop_timeout {
                            return Ending::PeerDead;
                        }
                    } else if now >= idle_deadline {
                        self.ping().await;
                    }
                }
            }
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

    fn take_stat_sn(&mut self) -> SeqNum {
        let s = self.stat_sn;
        self.stat_sn = s.next();
        s
    }

    async fn send(&mut self, pdus: impl IntoIterator<Item = Pdu>) {
        let mut parts = Vec::new();
        for p in pdus {
            self.encode(&p, &mut parts);
        }
        self.send_chunks(parts).await;
    }

    fn encode(&self, pdu: &Pdu, out: &mut Vec<Chunk>) {
        let mut bufs = Vec::with_capacity(3);
        pdu.encode(self.digests, &mut bufs);
        out.extend(bufs.into_iter().map(Chunk::Mem));
    }

    async fn send_chunks(&mut self, chunks: Vec<Chunk>) {
        // A closed writer means the socket is gone; `run` sees the outbox
        // closed and ends the session.
        let _ = self.out.send(chunks).await;
    }

    async fn reject(&mut self, reason: RejectReason, header: &BhsBytes) {
        let pdu = Pdu::new(
            Bhs::Reject(Reject {
                reason,
                stat_sn: self.take_stat_sn(),
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
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
                self.ping_outstanding = None;
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

    async fn on_scsi_command(
        &mut self,
        cmd: ScsiCommand,
        ahs: Vec<crate::pdu::Ahs>,
        data: Bytes,
        counted: bool,
    ) {
        let mut cdb = BytesMut::with_capacity(32);
        cdb.put_slice(&cmd.cdb);
        for a in ahs
            .iter()
            .filter(|a| a.ahs_type == crate::pdu::Ahs::EXTENDED_CDB)
        {
            cdb.put_slice(&a.data);
        }
        let cdb = cdb.freeze();
        if self.writes.contains_key(&cmd.itt) || self.running_itts.contains_key(&cmd.itt) {
            // RFC 7143 §11.17.1: a task tag already in use.
            self.finish_counted(counted);
            let h = Pdu::new(Bhs::ScsiCommand(cmd), Bytes::new()).bhs_bytes();
            self.reject(RejectReason::TASK_IN_PROGRESS, &h).await;
            return;
        }
        if !cmd.write || cmd.expected_len == 0 {
            self.start(cmd, cdb, Bytes::new(), counted);
            return;
        }
        if data.len() as u32 > cmd.expected_len
            || (!self.params.immediate_data && !data.is_empty())
            || data.len() as u32 > self.params.first_burst_length
        {
            self.finish_counted(counted);
            let h = Pdu::new(Bhs::ScsiCommand(cmd), Bytes::new()).bhs_bytes();
            self.reject(RejectReason::PROTOCOL_ERROR, &h).await;
            return;
        }
        if cmd.expected_len > self.params.max_write_buffer {
            // Refuse before allocating: ILLEGAL REQUEST, INVALID FIELD IN CDB.
            // The Block Limits VPD page tells initiators the bound. Any
            // unsolicited Data-Out that follows finds no task and is rejected.
            self.finish_counted(counted);
            let resp = scsi::ScsiResponse::check_condition(scsi::sense::INVALID_FIELD_IN_CDB);
            self.respond(cmd.itt, resp).await;
            return;
        }
        let mut task = WriteTask::new(cmd.expected_len, data, cmd.final_, &self.params);
        if task.is_complete() {
            self.start(cmd, cdb, task.into_data(), counted);
            return;
        }
        let r2ts = task.next_r2ts(&self.params, ttt_allocator(&mut self.next_ttt));
        let (itt, lun) = (cmd.itt, cmd.lun);
        self.writes.insert(
            itt,
            Collecting {
                cmd,
                cdb,
                task,
                counted,
            },
        );
        self.send_r2ts(itt, lun, r2ts).await;
    }

    async fn send_r2ts(&mut self, itt: Itt, lun: u64, r2ts: Vec<super::write_task::R2tRequest>) {
        if r2ts.is_empty() {
            return;
        }
        let pdus: Vec<Pdu> = r2ts
            .into_iter()
            .map(|r| {
                Pdu::new(
                    Bhs::R2t(R2t {
                        lun,
                        itt,
                        ttt: r.ttt,
                        stat_sn: self.stat_sn,
                        exp_cmd_sn: self.window.exp_cmd_sn(),
                        max_cmd_sn: self.window.max_cmd_sn(),
                        r2t_sn: r.r2t_sn,
                        buffer_offset: r.offset,
                        desired_len: r.len,
                    }),
                    Bytes::new(),
                )
            })
            .collect();
        self.send(pdus).await;
    }

    async fn on_data_out(&mut self, d: &DataOut, payload: &Bytes, header: &BhsBytes) {
        let Some(c) = self.writes.get_mut(&d.itt) else {
            // RFC 7143 §11.7: Data-Out for a task we do not know.
            tracing::warn!(itt = d.itt.0, "Data-Out for an unknown task");
            self.reject(RejectReason::PROTOCOL_ERROR, header).await;
            return;
        };
        if let Err(e) = c.task.on_data_out(d, payload) {
            // The command cannot complete as sent: terminate it with CHECK
            // CONDITION, ABORTED COMMAND / DATA PHASE ERROR (SPC-4 4.5.6).
            // Further Data-Out for it finds no task and is rejected.
            tracing::warn!(itt = d.itt.0, error = %e, "bad Data-Out: task terminated");
            if let Some(c) = self.writes.remove(&d.itt) {
                self.finish_counted(c.counted);
            }
            let resp = scsi::ScsiResponse::check_condition(scsi::sense::DATA_PHASE_ERROR);
            self.respond(d.itt, resp).await;
            return;
        }
        if c.task.is_complete() {
            if let Some(c) = self.writes.remove(&d.itt) {
                self.start(c.cmd, c.cdb, c.task.into_data(), c.counted);
            }
            return;
        }
        let r2ts = c
            .task
            .next_r2ts(&self.params, ttt_allocator(&mut self.next_ttt));
        let lun = c.cmd.lun;
        self.send_r2ts(d.itt, lun, r2ts).await;
    }

    /// Starts a SCSI command on the SCSI layer.
    fn start(&mut self, cmd: ScsiCommand, cdb: Bytes, data_out: Bytes, counted: bool) {
        // Only Normal sessions, which have a target, get here.
        let Some(target) = self.target.clone() else {
            self.finish_counted(counted);
            return;
        };
        let nexus = self.nexus.clone();
        let itt = cmd.itt;
        let req = ScsiRequest {
            lun: scsi::lun_from_wire(cmd.lun.to_be_bytes()),
            cdb,
            expected_len: cmd.expected_len,
            data_out,
            attr: task_attr(cmd.attr),
            // Data from a file cannot be digested without reading it.
            zero_copy: !self.digests.data,
        };
        self.running_itts.insert(
            itt,
            Running {
                lun: cmd.lun,
                counted,
            },
        );
        self.running.push(
            async move {
                let resp = target.execute(&nexus, req).await;
                Completed { itt, resp }
            }
            .boxed(),
        );
    }

    async fn complete(&mut self, done: Completed) {
        if let Some(r) = self.running_itts.remove(&done.itt) {
            self.finish_counted(r.counted);
        }
        if self.aborted.remove(&done.itt) {
            return;
        }
        self.respond(done.itt, done.resp).await;
    }

    /// Sends the Data-In PDUs and status of a finished command: status is
    /// collapsed into the last Data-In when it is GOOD (RFC 7143 §11.8.1).
    async fn respond(&mut self, itt: Itt, resp: scsi::ScsiResponse) {
        let status = resp.status.0;
        let residual = match resp.residual {
            scsi::Residual::None => Residual::None,
            scsi::Residual::Underflow(n) => Residual::Underflow(n),
            scsi::Residual::Overflow(n) => Residual::Overflow(n),
        };
        let collapse = resp.sense.is_none() && status == 0;
        let file = resp.data_in_file;
        let data = resp.data_in;
        let total = file.as_ref().map_or(data.len(), |f| f.len());
        let mut parts = Vec::new();
        let mut data_sn = 0u32;
        if total > 0 {
            let seg = self.params.max_xmit_data_segment_length.max(512) as usize;
            let burst = self.params.max_burst_length.max(512) as usize;
            let mut off = 0usize;
            while off < total {
                let len = seg.min(total - off).min(burst - off % burst);
                let last = off + len == total;
                let end_of_burst = (off + len).is_multiple_of(burst);
                let with_status = last && collapse;
                let bhs = Bhs::DataIn(DataIn {
                    final_: last || end_of_burst,
                    ack: false,
                    residual: if with_status {
                        residual
                    } else {
                        Residual::None
                    },
                    status: with_status.then_some(status),
                    lun: 0,
                    itt,
                    ttt: Ttt::RESERVED,
                    stat_sn: if with_status {
                        self.take_stat_sn()
                    } else {
                        SeqNum(0)
                    },
                    exp_cmd_sn: self.window.exp_cmd_sn(),
                    max_cmd_sn: self.window.max_cmd_sn(),
                    data_sn,
                    buffer_offset: off as u32,
                });
                match &file {
                    // Zero-copy: the header from memory, the data segment
                    // straight from the page cache (no data digest here).
                    Some(f) => {
                        let pdu = Pdu::new(bhs, Bytes::new());
                        parts.push(Chunk::Mem(pdu.encode_header_for(len, self.digests)));
                        parts.push(Chunk::File(f.slice(off, len)));
                        let pad = crate::pdu::pad_len(len);
                        if pad > 0 {
                            parts.push(Chunk::Mem(Bytes::from_static(&[0u8; 4][..pad])));
                        }
                    }
                    None => self.encode(&Pdu::new(bhs, data.slice(off..off + len)), &mut parts),
                }
                data_sn += 1;
                off += len;
            }
        }
        if total == 0 || !collapse {
            let sense = match &resp.sense {
                Some(s) => {
                    let mut b = BytesMut::with_capacity(2 + s.len());
                    b.put_u16(s.len() as u16);
                    b.put_slice(s);
                    b.freeze()
                }
                None => Bytes::new(),
            };
            let pdu = Pdu::new(
                Bhs::ScsiResponse(ScsiResponse {
                    bidi_flags: 0,
                    residual,
                    response: 0,
                    status,
                    itt,
                    snack_tag: 0,
                    stat_sn: self.take_stat_sn(),
                    exp_cmd_sn: self.window.exp_cmd_sn(),
                    max_cmd_sn: self.window.max_cmd_sn(),
                    exp_data_sn: data_sn,
                    bidi_residual: 0,
                }),
                sense,
            );
            self.encode(&pdu, &mut parts);
        }
        self.send_chunks(parts).await;
    }

    async fn on_nop_out(&mut self, n: NopOut, data: Bytes) {
        // A NOP-Out with a valid ITT asks for a NOP-In echoing its data
        // (RFC 7143 §11.18.5); StatSN advances for it.
        let pdu = Pdu::new(
            Bhs::NopIn(NopIn {
                lun: n.lun,
                itt: n.itt,
                ttt: Ttt::RESERVED,
                stat_sn: self.take_stat_sn(),
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            }),
            data,
        );
        self.send([pdu]).await;
    }

    async fn ping(&mut self) {
        let ttt = Ttt(self.next_ttt);
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
        self.ping_outstanding = Some(Instant::now());
        let pdu = Pdu::new(
            Bhs::NopIn(NopIn {
                lun: 0,
                itt: Itt::RESERVED,
                ttt,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            }),
            Bytes::new(),
        );
        self.send([pdu]).await;
    }

    async fn request_logout(&mut self) {
        if self.logout_requested {
            return;
        }
        self.logout_requested = true;
        let pdu = Pdu::new(
            Bhs::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
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
        // initiator before the logout response (RFC 7143 §11.14).
        self.drain().await;
        let response = match l.reason {
            0 | 1 => 0,
            2 => 2,
            _ => 3,
        };
        let pdu = Pdu::new(
            Bhs::LogoutResponse(LogoutResponse {
                response,
                itt: l.itt,
                stat_sn: self.take_stat_sn(),
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
                time2wait: 0,
                time2retain: 0,
            }),
            Bytes::new(),
        );
        self.send([pdu]).await;
        Ending::Logout(l.reason)
    }

    async fn on_text(&mut self, t: TextRequest, data: Bytes, header: &BhsBytes) {
        let body = if t.ttt != Ttt::RESERVED {
            // Continuation of a long answer (RFC 7143 §11.11.1).
            match self.text_pending.take() {
                Some((itt, ttt, rest)) if itt == t.itt && ttt == t.ttt => rest,
                _ => {
                    self.reject(RejectReason::PROTOCOL_ERROR, header).await;
                    return;
                }
            }
        } else {
            match self.text.respond(&data) {
                Some(b) => b,
                None => {
                    // Malformed text (RFC 7143 §6.1), e.g. a last key=value
                    // pair without its NUL. Reason 0x04 "Protocol Error", not
                    // 0x09 "Invalid PDU field": every header field of the
                    // request is valid; it is the data segment that breaks
                    // the text format the protocol defines (§11.17.1).
                    self.reject(RejectReason::PROTOCOL_ERROR, header).await;
                    return;
                }
            }
        };
        let max = self.params.max_xmit_data_segment_length.max(512) as usize;
        let (now, rest) = if body.len() > max {
            (body.slice(..max), Some(body.slice(max..)))
        } else {
            (body, None)
        };
        let ttt = match rest {
            Some(rest) => {
                let ttt = Ttt(self.next_ttt);
                self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
                self.text_pending = Some((t.itt, ttt, rest));
                ttt
            }
            None => Ttt::RESERVED,
        };
        let pdu = Pdu::new(
            Bhs::TextResponse(TextResponse {
                final_: ttt == Ttt::RESERVED,
                cont: ttt != Ttt::RESERVED,
                lun: t.lun,
                itt: t.itt,
                ttt,
                stat_sn: self.take_stat_sn(),
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            }),
            now,
        );
        self.send([pdu]).await;
    }

    async fn on_tmf(&mut self, t: TaskMgmtRequest) -> Option<Ending> {
        let (code, end) = super::tmf::apply(self, &t);
        let pdu = Pdu::new(
            Bhs::TaskMgmtResponse(crate::pdu::TaskMgmtResponse {
                response: code,
                itt: t.itt,
                stat_sn: self.take_stat_sn(),
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            }),
            Bytes::new(),
        );
        self.send([pdu]).await;
        if end {
            self.drain().await;
            return Some(Ending::Closed);
        }
        None
    }

    // Accessors for the task-management module.

    pub(super) fn window(&self) -> &CmdWindow<Pdu> {
        &self.window
    }

    pub(super) fn target(&self) -> Option<&ScsiTarget> {
        self.target.as_deref()
    }

    pub(super) fn nexus(&self) -> &Nexus {
        &self.nexus
    }

    /// Aborts the tasks matching `pred` (by ITT and LUN field): write
    /// collection is dropped, and running commands lose their response.
    /// Returns how many were found.
    pub(super) fn abort_where(&mut self, pred: impl Fn(Itt, u64) -> bool) -> usize {
        let collecting: Vec<Itt> = self
            .writes
            .iter()
            .filter(|(itt, c)| pred(**itt, c.cmd.lun))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in &collecting {
            if let Some(c) = self.writes.remove(itt) {
                self.finish_counted(c.counted);
            }
        }
        let running: Vec<Itt> = self
            .running_itts
            .iter()
            .filter(|(itt, r)| pred(**itt, r.lun))
            .map(|(itt, _)| *itt)
            .collect();
        let n = collecting.len() + running.len();
        self.aborted.extend(running);
        n
    }
}

/// Hands out connection-unique Target Transfer Tags, never the reserved one.
fn ttt_allocator(next: &mut u32) -> impl FnMut() -> Ttt + '_ {
    move || {
        let t = *next;
        *next = next.wrapping_add(1);
        if *next == 0 || *next == Ttt::RESERVED.0 {
            *next = 1;
        }
        Ttt(t)
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

fn task_attr(a: crate::pdu::TaskAttr) -> scsi::TaskAttr {
    use crate::pdu::TaskAttr as P;
    match a {
        P::Ordered => scsi::TaskAttr::Ordered,
        P::HeadOfQueue => scsi::TaskAttr::HeadOfQueue,
        P::Aca => scsi::TaskAttr::Aca,
        _ => scsi::TaskAttr::Simple,
    }
}
