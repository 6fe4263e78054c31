//! Medium access: READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY,
//! COMPARE AND WRITE, ORWRITE, SYNCHRONIZE CACHE, PRE-FETCH and START
//! STOP UNIT (SBC-3 5.x). The READ/WRITE path allocates nothing beyond the
//! data buffer: Data-Out is sliced (not copied) into the backend.

use bytes::{Bytes, BytesMut};

use super::cdb::{be16, be24, be32, be64, u8_at};
use super::lu::{
    read_error, write_error, CmdResult, Ctx, Fail, LogicalUnit, Payload, MAX_CAW_BLOCKS,
    MAX_TRANSFER_BYTES,
};
use super::opcodes::{code::*, Xfer};
use super::sense::{self, Sense};

/// LBA and transfer length of a 6/10/12/16-byte block command.
pub(crate) fn lba_len(cdb: &[u8]) -> (u64, u64) {
    if cdb.first() == Some(&WRITE_ATOMIC_16) {
        return (be64(cdb, 2), u64::from(be16(cdb, 12)));
    }
    match cdb.first().copied().unwrap_or(0) >> 5 {
        0 => {
            let lba = u64::from(be24(cdb, 1) & 0x1f_ffff);
            let n = u64::from(u8_at(cdb, 4));
            (lba, if n == 0 { 256 } else { n })
        }
        1 | 2 => (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7))),
        5 => (u64::from(be32(cdb, 2)), u64::from(be32(cdb, 6))),
        _ => (be64(cdb, 2), u64::from(be32(cdb, 10))),
    }
}

/// `n` blocks in bytes, refusing transfers above the advertised maximum
/// (SBC-3 6.6.4 MAXIMUM TRANSFER LENGTH) with INVALID FIELD IN CDB.
fn xfer_bytes(lu: &LogicalUnit, cdb: &[u8], n: u64) -> Result<usize, Sense> {
    let bytes = n.saturating_mul(u64::from(lu.block_size));
    if bytes > MAX_TRANSFER_BYTES {
        let off = match cdb.first().copied().unwrap_or(0) >> 5 {
            0 => 4,
            1 | 2 => 7,
            5 => 6,
            _ if cdb.first() == Some(&WRITE_ATOMIC_16) => 12,
            _ => 10,
        };
        return Err(Sense::invalid_cdb_field(off, None));
    }
    Ok(bytes as usize)
}

/// The first `len` bytes of Data-Out; INVALID FIELD IN COMMAND INFORMATION
/// UNIT when the transport delivered fewer.
pub(crate) fn data_out(ctx: &Ctx<'_>, len: usize) -> Result<Bytes, Sense> {
    if ctx.req.data_out.len() < len {
        return Err(sense::INVALID_FIELD_IN_IU);
    }
    Ok(ctx.req.data_out.slice(..len))
}

/// READ/WRITE 6/10/12/16 and WRITE AND VERIFY 10/12/16 (SBC-3 5.8-5.11, 5.36-5.43).
///
/// READ data goes out as a cached file range when the transport allows it
/// (`ScsiRequest::zero_copy`), else in memory.
pub(crate) async fn read_write(lu: &LogicalUnit, ctx: &Ctx<'_>) -> Result<Payload, Fail> {
    let cdb = ctx.cdb();
    let op = ctx.info.opcode;
    let (lba, n) = lba_len(cdb);
    // Every command routed here that is not Data-In is a write.
    let is_write = ctx.info.xfer != Xfer::In;
    if is_write {
        lu.check_writable()?;
    }
    lu.check_range(lba, n)?;
    let len = xfer_bytes(lu, cdb, n)?;
    let off = lu.byte_offset(lba);
    if !is_write {
        if len == 0 {
            return Ok(Payload::Mem(Bytes::new()));
        }
        let _g = lu.shared_io(off, len as u64).await;
        if ctx.req.zero_copy {
            if let Some(range) = lu.zero_copy.range(lu.backend.as_ref(), off, len) {
                return Ok(Payload::File(range));
            }
        }
        let data = lu.backend.read(off, len).await.map_err(read_error)?;
        return Ok(Payload::Mem(data));
    }
    // An expected length shorter than the transfer length truncates the
    // write to what was sent (the residual reports the overflow).
    let sent = ctx.req.data_out.len().min(len);
    let len = if (ctx.req.expected_len as usize) < len {
        sent
    } else {
        len
    };
    let data = data_out(ctx, len)?;
    if len == 0 {
        return Ok(Payload::Mem(Bytes::new()));
    }
    let verify = matches!(op, WRITE_VERIFY_10 | WRITE_VERIFY_12 | WRITE_VERIFY_16);
    let fua = verify || (op != WRITE_6 && u8_at(cdb, 1) & 0x08 != 0) || !lu.write_cache_enabled();
    // WRITE ATOMIC excludes every other access for its duration (SBC-4 4.29).
    if op == WRITE_ATOMIC_16 {
        let _g = lu.exclusive_io(off, len as u64).await;
        lu.backend
            .write(off, data, fua)
            .await
            .map_err(write_error)?;
        return Ok(Payload::Mem(Bytes::new()));
    }
    let _g = lu.shared_io(off, len as u64).await;
    lu.backend
        .write(off, data, fua)
        .await
        .map_err(write_error)?;
    Ok(Payload::Mem(Bytes::new()))
}

/// Index of the first differing byte.
fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// VERIFY 10/12/16 (SBC-3 5.33-5.35): BYTCHK 00b checks the range only,
/// 01b compares the Data-Out with the medium, 11b compares one block of
/// Data-Out with every block. Mismatch: MISCOMPARE DURING VERIFY OPERATION
/// with the byte offset of the first difference in INFORMATION.
pub(crate) async fn verify(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let (lba, n) = lba_len(cdb);
    let bytchk = (u8_at(cdb, 1) >> 1) & 3;
    if bytchk == 2 {
        return Err(Sense::invalid_cdb_field(1, Some(2)).into());
    }
    lu.check_range(lba, n)?;
    let len = xfer_bytes(lu, cdb, n)?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    let off = lu.byte_offset(lba);
    let medium = lu.backend.read(off, len).await.map_err(read_error)?;
    let mismatch = match bytchk {
        0 => None,
        1 => first_mismatch(&medium, &data_out(ctx, len)?),
        _ => {
            let bs = lu.block_size as usize;
            let one = data_out(ctx, bs)?;
            medium
                .chunks(bs)
                .enumerate()
                .find_map(|(i, c)| first_mismatch(c, &one).map(|p| i * bs + p))
        }
    };
    match mismatch {
        Some(p) => Err(sense::MISCOMPARE_VERIFY.with_info(p as u32).into()),
        None => Ok(Bytes::new()),
    }
}

/// COMPARE AND WRITE (SBC-3 5.2): atomic against every other command on
/// its blocks (their range held exclusively). Mismatch: MISCOMPARE DURING VERIFY OPERATION,
/// INFORMATION = offset of the first differing byte in the Data-Out buffer.
pub(crate) async fn compare_and_write(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let lba = be64(cdb, 2);
    let n = u8_at(cdb, 13);
    lu.check_writable()?;
    if n > MAX_CAW_BLOCKS {
        return Err(Sense::invalid_cdb_field(13, None).into());
    }
    lu.check_range(lba, u64::from(n))?;
    let len = usize::from(n) * lu.block_size as usize;
    // The Data-Out must be exactly the verify and the write data (SBC-3 5.2).
    if ctx.req.expected_len as usize != 2 * len {
        return Err(Sense::invalid_cdb_field(13, None).into());
    }
    if n == 0 {
        return Ok(Bytes::new());
    }
    let buf = data_out(ctx, 2 * len)?;
    let (cmp, new) = (buf.slice(..len), buf.slice(len..));
    let off = lu.byte_offset(lba);
    let fua = u8_at(cdb, 1) & 0x08 != 0 || !lu.write_cache_enabled();
    let _g = lu.exclusive_io(off, len as u64).await;
    let cur = lu.backend.read(off, len).await.map_err(read_error)?;
    if let Some(p) = first_mismatch(&cur, &cmp) {
        return Err(sense::MISCOMPARE_VERIFY.with_info(p as u32).into());
    }
    lu.backend.write(off, new, fua).await.map_err(write_error)?;
    Ok(Bytes::new())
}

/// ORWRITE(16) (SBC-3 5.7) with BMOP 000b: medium := medium OR Data-Out, atomically.
pub(crate) async fn orwrite(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let (lba, n) = lba_len(cdb);
    lu.check_writable()?;
    lu.check_range(lba, n)?;
    let len = xfer_bytes(lu, cdb, n)?;
    let data = data_out(ctx, len)?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    let off = lu.byte_offset(lba);
    let fua = u8_at(cdb, 1) & 0x08 != 0 || !lu.write_cache_enabled();
    let _g = lu.exclusive_io(off, len as u64).await;
    let cur = lu.backend.read(off, len).await.map_err(read_error)?;
    let mut out = BytesMut::from(&cur[..]);
    for (o, d) in out.iter_mut().zip(data.iter()) {
        *o |= d;
    }
    lu.backend
        .write(off, out.freeze(), fua)
        .await
        .map_err(write_error)?;
    Ok(Bytes::new())
}

/// SYNCHRONIZE CACHE 10/16 (SBC-3 5.22/5.23): range check, then flush.
pub(crate) async fn synchronize_cache(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let (lba, n) = lba_len(ctx.cdb());
    lu.check_range(lba, n)?;
    lu.backend.flush().await.map_err(write_error)?;
    Ok(Bytes::new())
}

/// PRE-FETCH 10/16 (SBC-3 5.3/5.4): nothing to cache ahead; range check.
pub(crate) fn pre_fetch(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let (lba, n) = lba_len(ctx.cdb());
    lu.check_range(lba, n)?;
    Ok(Bytes::new())
}

/// START STOP UNIT (SBC-3 5.20): the medium is always ready; a stop
/// (START=0 without NO_FLUSH) flushes the cache.
pub(crate) async fn start_stop(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let b4 = u8_at(ctx.cdb(), 4);
    let start = b4 & 0x01 != 0;
    let no_flush = b4 & 0x04 != 0;
    let power_cond = b4 >> 4;
    if !start && !no_flush && power_cond == 0 {
        lu.backend.flush().await.map_err(write_error)?;
    }
    Ok(Bytes::new())
}
