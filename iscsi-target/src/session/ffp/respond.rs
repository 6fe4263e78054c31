//! The PDUs that carry a finished command back: Data-In in pieces of at
//! most MaxRecvDataSegmentLength within bursts of MaxBurstLength, with the
//! status collapsed into the last Data-In when it is GOOD, or a SCSI
//! Response (RFC 7143 §11.4, §11.7.1; §11.8.1 for the collapse).
//!
//! A pure builder: it turns a [`scsi::ScsiResponse`] into encoded chunks
//! and sends nothing.

use bytes::{BufMut, Bytes, BytesMut};

use super::super::io::Chunk;
use super::super::ConnParams;
use crate::pdu::{Bhs, DataIn, Digests, Itt, Pdu, Residual, ScsiResponse, SeqNum, Ttt};
use crate::scsi;

/// The sequence numbers a status-carrying PDU reports (RFC 7143 §3.2.2.2).
#[derive(Debug, Clone, Copy)]
pub(super) struct Numbers {
    /// StatSN of the status (exactly one PDU of a response carries it).
    pub stat_sn: SeqNum,
    /// ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// MaxCmdSN.
    pub max_cmd_sn: SeqNum,
}

/// Appends the wire form of `pdu` to `out`.
pub(super) fn encode(pdu: &Pdu, digests: Digests, out: &mut Vec<Chunk>) {
    let mut bufs = Vec::with_capacity(3);
    pdu.encode(digests, &mut bufs);
    out.extend(bufs.into_iter().map(Chunk::Mem));
}

/// The Data-In PDUs and status of a finished command. Uses `n.stat_sn` for
/// its one status.
pub(super) fn response_chunks(
    itt: Itt,
    resp: scsi::ScsiResponse,
    p: &ConnParams,
    digests: Digests,
    n: Numbers,
) -> Vec<Chunk> {
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
        let seg = p.max_xmit_data_segment_length.max(512) as usize;
        let burst = p.max_burst_length.max(512) as usize;
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
                stat_sn: if with_status { n.stat_sn } else { SeqNum(0) },
                exp_cmd_sn: n.exp_cmd_sn,
                max_cmd_sn: n.max_cmd_sn,
                data_sn,
                buffer_offset: off as u32,
            });
            match &file {
                // Zero-copy: the header from memory, the data segment
                // straight from the page cache (no data digest here).
                Some(f) => {
                    let pdu = Pdu::new(bhs, Bytes::new());
                    parts.push(Chunk::Mem(pdu.encode_header_for(len, digests)));
                    parts.push(Chunk::File(f.slice(off, len)));
                    let pad = crate::pdu::pad_len(len);
                    if pad > 0 {
                        parts.push(Chunk::Mem(Bytes::from_static(&[0u8; 4][..pad])));
                    }
                }
                None => encode(
                    &Pdu::new(bhs, data.slice(off..off + len)),
                    digests,
                    &mut parts,
                ),
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
                stat_sn: n.stat_sn,
                exp_cmd_sn: n.exp_cmd_sn,
                max_cmd_sn: n.max_cmd_sn,
                exp_data_sn: data_sn,
                bidi_residual: 0,
            }),
            sense,
        );
        encode(&pdu, digests, &mut parts);
    }
    parts
}
