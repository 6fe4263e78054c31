//! The SCSI command path of the loop (RFC 7143 §10.3, §10.7, §11.3): a
//! command either starts on the SCSI layer at once or collects its write
//! data first (immediate data, unsolicited Data-Out, R2Ts); when it
//! completes, its response goes out unless it was aborted. The task table
//! ([`super::tasks`]) keeps the state; this file does the sending.

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;

use super::super::write_task::{R2tRequest, WriteTask};
use super::respond::response_chunks;
use super::tasks::Collecting;
use super::{Completed, FullFeature};
use crate::pdu::{Ahs, Bhs, BhsBytes, DataOut, Itt, Pdu, R2t, RejectReason, ScsiCommand};
use crate::scsi::{self, ScsiRequest};

impl FullFeature {
    /// A SCSI Command PDU that passed CmdSN ordering. `counted`: it holds a
    /// window slot, which every path below gives back exactly once.
    pub(super) async fn on_scsi_command(
        &mut self,
        cmd: ScsiCommand,
        ahs: Vec<Ahs>,
        data: Bytes,
        counted: bool,
    ) {
        let mut cdb = BytesMut::with_capacity(32);
        cdb.put_slice(&cmd.cdb);
        for a in ahs.iter().filter(|a| a.ahs_type == Ahs::EXTENDED_CDB) {
            cdb.put_slice(&a.data);
        }
        let cdb = cdb.freeze();
        if self.tasks.in_use(cmd.itt) {
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
        let mut data = WriteTask::new(cmd.expected_len, data, cmd.final_, &self.params);
        if data.is_complete() {
            self.start(cmd, cdb, data.into_data(), counted);
            return;
        }
        let r2ts = data.next_r2ts(&self.params, || self.ttts.next());
        let (itt, lun) = (cmd.itt, cmd.lun);
        self.tasks.collect(
            itt,
            Collecting {
                cmd,
                cdb,
                data,
                counted,
            },
        );
        self.send_r2ts(itt, lun, r2ts).await;
    }

    async fn send_r2ts(&mut self, itt: Itt, lun: u64, r2ts: Vec<R2tRequest>) {
        if r2ts.is_empty() {
            return;
        }
        let n = self.peek_numbers();
        let pdus: Vec<Pdu> = r2ts
            .into_iter()
            .map(|r| {
                Pdu::new(
                    Bhs::R2t(R2t {
                        lun,
                        itt,
                        ttt: r.ttt,
                        stat_sn: n.stat_sn,
                        exp_cmd_sn: n.exp_cmd_sn,
                        max_cmd_sn: n.max_cmd_sn,
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

    /// A Data-Out PDU (RFC 7143 §11.7): it belongs to a collecting write,
    /// or it is rejected.
    pub(super) async fn on_data_out(&mut self, d: &DataOut, payload: &Bytes, header: &BhsBytes) {
        let Some(c) = self.tasks.collecting_mut(d.itt) else {
            // RFC 7143 §11.7: Data-Out for a task we do not know (or one
            // that is no longer collecting: aborted, or running).
            tracing::warn!(itt = d.itt.0, "Data-Out for an unknown task");
            self.reject(RejectReason::PROTOCOL_ERROR, header).await;
            return;
        };
        if let Err(e) = c.data.on_data_out(d, payload) {
            // The command cannot complete as sent: terminate it with CHECK
            // CONDITION, ABORTED COMMAND / DATA PHASE ERROR (SPC-4 4.5.6).
            // Further Data-Out for it finds no task and is rejected.
            tracing::warn!(itt = d.itt.0, error = %e, "bad Data-Out: task terminated");
            if let Some(c) = self.tasks.take_collecting(d.itt) {
                self.finish_counted(c.counted);
            }
            let resp = scsi::ScsiResponse::check_condition(scsi::sense::DATA_PHASE_ERROR);
            self.respond(d.itt, resp).await;
            return;
        }
        if c.data.is_complete() {
            if let Some(c) = self.tasks.take_collecting(d.itt) {
                self.start(c.cmd, c.cdb, c.data.into_data(), c.counted);
            }
            return;
        }
        let r2ts = c.data.next_r2ts(&self.params, || self.ttts.next());
        let lun = c.cmd.lun;
        self.send_r2ts(d.itt, lun, r2ts).await;
    }

    /// Starts a SCSI command on the SCSI layer.
    pub(super) fn start(&mut self, cmd: ScsiCommand, cdb: Bytes, data_out: Bytes, counted: bool) {
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
        self.tasks.run(itt, cmd.lun, counted);
        // The command takes its place in the LU's task set here, in CmdSN
        // order, not when the loop first polls its future (SAM-5 §8.6).
        let run = target.submit(nexus, req);
        self.running.push(
            async move {
                let resp = run.await;
                Completed { itt, resp }
            }
            .boxed(),
        );
    }

    /// A command's future completed. Every completion passes here: the
    /// task leaves the table, its window slot comes back, and its response
    /// goes out unless the task was aborted.
    pub(super) async fn complete(&mut self, done: Completed) {
        let c = self.tasks.complete(done.itt);
        self.finish_counted(c.counted);
        // A response the SCSI layer marks as aborted by another I_T nexus
        // (PREEMPT AND ABORT, SPC-4 §5.13.5) is dropped here as well.
        if c.aborted {
            return;
        }
        self.respond(done.itt, done.resp).await;
    }

    /// Sends the Data-In PDUs and status of a finished command.
    pub(super) async fn respond(&mut self, itt: Itt, resp: scsi::ScsiResponse) {
        let n = self.numbers();
        let chunks = response_chunks(itt, resp, &self.params, self.digests, n);
        self.send_chunks(chunks).await;
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
