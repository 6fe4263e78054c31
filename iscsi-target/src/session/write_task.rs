//! Collection of a write command's Data-Out (RFC 7143 §10.7, §11.7, §11.8):
//! immediate data, unsolicited Data-Out up to FirstBurstLength, and solicited
//! data through R2Ts of at most MaxBurstLength, at most MaxOutstandingR2T at a
//! time.
//!
//! This is a small state machine with no I/O: the connection feeds it Data-Out
//! PDUs, asks it which R2Ts to send, and takes the buffer when it is complete.
//!
//! ```text
//!   new(cmd, immediate) --> Collecting --on_data_out--> ... --> Complete
//!                             |  next_r2ts(): R2Ts to send while
//!                             |  outstanding < MaxOutstandingR2T
//! ```

use bytes::{Bytes, BytesMut};

use super::ConnParams;
use crate::pdu::{DataOut, Ttt};

/// A Data-Out that does not fit the command it names. The connection answers
/// with a Reject (RFC 7143 §11.17.1, reason "protocol error").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataOutError {
    /// Offset + length runs past the Expected Data Transfer Length.
    #[error("Data-Out [{offset}, +{len}) beyond expected length {expected}")]
    BeyondExpected {
        /// BufferOffset.
        offset: u32,
        /// Payload length.
        len: u32,
        /// EDTL.
        expected: u32,
    },
    /// Unsolicited data beyond FirstBurstLength, or when none was allowed.
    #[error("unsolicited Data-Out at offset {offset} not allowed (limit {limit})")]
    UnsolicitedNotAllowed {
        /// BufferOffset.
        offset: u32,
        /// Bytes that may arrive without an R2T.
        limit: u32,
    },
    /// A TTT that names no outstanding R2T, or data outside its range.
    #[error("Data-Out with TTT {0:#x} answers no outstanding R2T")]
    UnknownTtt(u32),
    /// DataSN out of sequence (RFC 7143 §11.7.5: DataSN counts from 0 in
    /// each unsolicited sequence and in each R2T's sequence).
    #[error("Data-Out DataSN {got}, expected {expected}")]
    DataSn {
        /// The DataSN the sequence is at.
        expected: u32,
        /// The DataSN received.
        got: u32,
    },
}

/// One R2T the connection must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRequest {
    /// Target Transfer Tag.
    pub ttt: Ttt,
    /// R2TSN.
    pub r2t_sn: u32,
    /// BufferOffset.
    pub offset: u32,
    /// Desired Data Transfer Length.
    pub len: u32,
}

#[derive(Debug)]
struct Outstanding {
    ttt: Ttt,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

/// The Data-Out collection state of one write command.
#[derive(Debug)]
pub struct WriteTask {
    expected: u32,
    buf: Buffer,
    received: u32,
    unsolicited_limit: u32,
    unsolicited_data_sn: u32,
    next_r2t_offset: u32,
    r2t_sn: u32,
    outstanding: Vec<Outstanding>,
}

#[derive(Debug)]
enum Buffer {
    /// All data came as immediate data: kept without a copy.
    Whole(Bytes),
    /// Data assembled from several PDUs.
    Assembling(BytesMut),
}

impl WriteTask {
    /// Starts collecting for a command with `expected` bytes of write data,
    /// given its immediate data and the F bit of the command PDU.
    pub fn new(expected: u32, immediate: Bytes, final_: bool, p: &ConnParams) -> Self {
        let imm_len = immediate.len() as u32;
        // RFC 7143 §13.11: unsolicited data is allowed up to FirstBurstLength
        // only when InitialR2T=No and the command's F bit is clear.
        let unsolicited_limit = if !p.initial_r2t && !final_ {
            p.first_burst_length.min(expected)
        } else {
            imm_len
        };
        let buf = if imm_len == expected {
            Buffer::Whole(immediate)
        } else {
            let mut b = BytesMut::zeroed(expected as usize);
            b[..immediate.len()].copy_from_slice(&immediate);
            Buffer::Assembling(b)
        };
        WriteTask {
            expected,
            buf,
            received: imm_len,
            unsolicited_limit: unsolicited_limit.max(imm_len),
            unsolicited_data_sn: 0,
            next_r2t_offset: unsolicited_limit.max(imm_len),
            r2t_sn: 0,
            outstanding: Vec::new(),
        }
    }

    /// Whether every expected byte has arrived.
    pub fn is_complete(&self) -> bool {
        self.received >= self.expected && self.outstanding.is_empty()
    }

    /// Applies one Data-Out PDU.
    pub fn on_data_out(&mut self, d: &DataOut, payload: &[u8]) -> Result<(), DataOutError> {
        let len = payload.len() as u32;
        let end = d.buffer_offset.saturating_add(len);
        if end > self.expected {
            return Err(DataOutError::BeyondExpected {
                offset: d.buffer_offset,
                len,
                expected: self.expected,
            });
        }
        if d.ttt == Ttt::RESERVED {
            if end > self.unsolicited_limit {
                return Err(DataOutError::UnsolicitedNotAllowed {
                    offset: d.buffer_offset,
                    limit: self.unsolicited_limit,
                });
            }
            check_data_sn(&mut self.unsolicited_data_sn, d.data_sn)?;
        } else {
            let idx = self
                .outstanding
                .iter()
                .position(|o| o.ttt == d.ttt)
                .ok_or(DataOutError::UnknownTtt(d.ttt.0))?;
            let o = &mut self.outstanding[idx];
            if d.buffer_offset < o.offset || end > o.offset + o.len {
                return Err(DataOutError::UnknownTtt(d.ttt.0));
            }
            check_data_sn(&mut o.next_data_sn, d.data_sn)?;
            o.received += len;
            if o.received >= o.len || d.final_ {
                self.outstanding.swap_remove(idx);
            }
        }
        if let Buffer::Assembling(b) = &mut self.buf {
            b[d.buffer_offset as usize..end as usize].copy_from_slice(payload);
        }
        self.received = self.received.saturating_add(len);
        Ok(())
    }

    /// The R2Ts to send now: solicits the rest of the data in MaxBurstLength
    /// pieces, keeping at most MaxOutstandingR2T outstanding. `alloc_ttt`
    /// hands out connection-unique tags.
    pub fn next_r2ts(
        &mut self,
        p: &ConnParams,
        mut alloc_ttt: impl FnMut() -> Ttt,
    ) -> Vec<R2tRequest> {
        let mut out = Vec::new();
        while self.next_r2t_offset < self.expected
            && (self.outstanding.len() as u32) < p.max_outstanding_r2t.max(1)
        {
            let len = (self.expected - self.next_r2t_offset).min(p.max_burst_length);
            let r = R2tRequest {
                ttt: alloc_ttt(),
                r2t_sn: self.r2t_sn,
                offset: self.next_r2t_offset,
                len,
            };
            self.r2t_sn += 1;
            self.next_r2t_offset += len;
            self.outstanding.push(Outstanding {
                ttt: r.ttt,
                offset: r.offset,
                len,
                received: 0,
                next_data_sn: 0,
            });
            out.push(r);
        }
        out
    }

    /// The collected data (call when complete).
    pub fn into_data(self) -> Bytes {
        match self.buf {
            Buffer::Whole(b) => b,
            Buffer::Assembling(b) => b.freeze(),
        }
    }
}

fn check_data_sn(next: &mut u32, got: u32) -> Result<(), DataOutError> {
    if got != *next {
        return Err(DataOutError::DataSn {
            expected: *next,
            got,
        });
    }
    *next = next.wrapping_add(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{Itt, SeqNum};

    fn params(initial_r2t: bool) -> ConnParams {
        ConnParams {
            initial_r2t,
            first_burst_length: 8,
            max_burst_length: 16,
            max_outstanding_r2t: 1,
            ..ConnParams::default()
        }
    }

    fn data_out(ttt: Ttt, offset: u32, final_: bool) -> DataOut {
        data_out_sn(ttt, offset, final_, 0)
    }

    fn data_out_sn(ttt: Ttt, offset: u32, final_: bool, data_sn: u32) -> DataOut {
        DataOut {
            final_,
            lun: 0,
            itt: Itt(1),
            ttt,
            exp_stat_sn: SeqNum(0),
            data_sn,
            buffer_offset: offset,
        }
    }

    #[test]
    fn immediate_data_only_is_not_copied() {
        let p = params(true);
        let imm = Bytes::from_static(b"abcd");
        let t = WriteTask::new(4, imm.clone(), true, &p);
        assert!(t.is_complete());
        let data = t.into_data();
        assert_eq!(data.as_ptr(), imm.as_ptr());
    }

    #[test]
    fn unsolicited_then_solicited() {
        let p = params(false);
        let mut t = WriteTask::new(40, Bytes::from_static(b"0123"), false, &p);
        t.on_data_out(&data_out(Ttt::RESERVED, 4, true), b"4567")
            .unwrap();
        // Unsolicited data may not pass FirstBurstLength (8).
        assert!(matches!(
            t.on_data_out(&data_out_sn(Ttt::RESERVED, 8, true, 1), b"89"),
            Err(DataOutError::UnsolicitedNotAllowed { .. })
        ));
        let mut next = 100;
        let r2ts = t.next_r2ts(&p, || {
            next += 1;
            Ttt(next)
        });
        assert_eq!(r2ts.len(), 1, "MaxOutstandingR2T=1");
        assert_eq!((r2ts[0].offset, r2ts[0].len), (8, 16));
        t.on_data_out(&data_out(r2ts[0].ttt, 8, true), &[b'x'; 16])
            .unwrap();
        let r2ts = t.next_r2ts(&p, || Ttt(7));
        assert_eq!((r2ts[0].offset, r2ts[0].len, r2ts[0].r2t_sn), (24, 16, 1));
        assert!(!t.is_complete());
        t.on_data_out(&data_out(Ttt(7), 24, true), &[b'y'; 16])
            .unwrap();
        assert!(t.is_complete());
        let data = t.into_data();
        assert_eq!(&data[..8], b"01234567");
        assert_eq!(&data[24..], &[b'y'; 16]);
    }

    #[test]
    fn data_sn_must_count_up_per_sequence() {
        let p = params(true);
        let mut t = WriteTask::new(32, Bytes::new(), true, &p);
        let r2t = t.next_r2ts(&p, || Ttt(5))[0];
        t.on_data_out(&data_out_sn(r2t.ttt, 0, false, 0), &[1; 8])
            .unwrap();
        assert_eq!(
            t.on_data_out(&data_out_sn(r2t.ttt, 8, false, 0), &[1; 8]),
            Err(DataOutError::DataSn {
                expected: 1,
                got: 0
            })
        );
        t.on_data_out(&data_out_sn(r2t.ttt, 8, true, 1), &[1; 8])
            .unwrap();
    }

    #[test]
    fn rejects_data_beyond_expected_and_unknown_ttt() {
        let p = params(true);
        let mut t = WriteTask::new(8, Bytes::new(), true, &p);
        assert!(matches!(
            t.on_data_out(&data_out(Ttt(9), 0, true), b"12345678"),
            Err(DataOutError::UnknownTtt(9))
        ));
        assert!(matches!(
            t.on_data_out(&data_out(Ttt::RESERVED, 4, true), b"12345678"),
            Err(DataOutError::BeyondExpected { .. })
        ));
    }
}
