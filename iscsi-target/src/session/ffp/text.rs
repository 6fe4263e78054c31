//! Text Requests in the full-feature phase (RFC 7143 §11.10, §11.11):
//! SendTargets and friends, answered through the session's
//! [`super::super::TextResponder`], with answers longer than
//! MaxRecvDataSegmentLength sent in pieces the initiator asks for one at a
//! time (a TTT names the rest, §11.11.1).

use bytes::Bytes;

use super::FullFeature;
use crate::pdu::{Bhs, BhsBytes, Itt, Pdu, RejectReason, TextRequest, TextResponse, Ttt};

/// The rest of a long Text Response, waiting for the initiator's next
/// request with this ITT and TTT.
#[derive(Debug)]
pub(super) struct PendingText {
    itt: Itt,
    ttt: Ttt,
    rest: Bytes,
}

impl FullFeature {
    /// Answers one Text Request, or rejects it (RFC 7143 §11.17.1).
    pub(super) async fn on_text(&mut self, t: TextRequest, data: Bytes, header: &BhsBytes) {
        let body = if t.ttt != Ttt::RESERVED {
            // Continuation of a long answer (RFC 7143 §11.11.1).
            match self.text_pending.take() {
                Some(p) if p.itt == t.itt && p.ttt == t.ttt => p.rest,
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
                let ttt = self.alloc_ttt();
                self.text_pending = Some(PendingText {
                    itt: t.itt,
                    ttt,
                    rest,
                });
                ttt
            }
            None => Ttt::RESERVED,
        };
        let n = self.numbers();
        let pdu = Pdu::new(
            Bhs::TextResponse(TextResponse {
                final_: ttt == Ttt::RESERVED,
                cont: ttt != Ttt::RESERVED,
                lun: t.lun,
                itt: t.itt,
                ttt,
                stat_sn: n.stat_sn,
                exp_cmd_sn: n.exp_cmd_sn,
                max_cmd_sn: n.max_cmd_sn,
            }),
            now,
        );
        self.send([pdu]).await;
    }
}
