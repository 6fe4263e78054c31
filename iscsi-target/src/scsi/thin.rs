//! Thin provisioning and zeroing: WRITE SAME 10/16, UNMAP and GET LBA
//! STATUS (SBC-3 4.7, 5.44/5.45, 5.28, 5.6).

use bytes::{Bytes, BytesMut};

use super::cdb::{be16, be32, be64, u8_at};
use super::lu::{
    read_error, truncate, write_error, CmdResult, Ctx, LogicalUnit, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BYTES,
};
use super::opcodes::code::*;
use super::rw::data_out;
use super::sense::{self, Sense};

/// Bytes per pattern write when WRITE SAME writes non-zero data.
const WS_CHUNK: usize = 1 << 20;

/// WRITE SAME 10/16 (SBC-4 5.50/5.51). WSNZ=0: zero blocks means up to the
/// last LBA, within MAXIMUM WRITE SAME LENGTH.
/// All-zero data (or NDOB) becomes a zeroing request; with UNMAP on a thin
/// LU the range is deallocated whatever the data (LBPRZ: it then reads as
/// zeroes).
pub(crate) async fn write_same(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let (lba, n) = if ctx.info.opcode == WRITE_SAME_10 {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
    } else {
        (be64(cdb, 2), u64::from(be32(cdb, 10)))
    };
    let unmap = u8_at(cdb, 1) & 0x08 != 0;
    let ndob = ctx.info.opcode == WRITE_SAME_16 && u8_at(cdb, 1) & 0x01 != 0;
    lu.check_writable()?;
    let n = if n == 0 {
        // Zero blocks: from the LBA to the last one (SBC-4 5.50.1).
        if lba >= lu.blocks {
            return Err(sense::LBA_OUT_OF_RANGE.into());
        }
        lu.blocks - lba
    } else {
        lu.check_range(lba, n)?;
        n
    };
    let len_field = if ctx.info.opcode == WRITE_SAME_10 {
        7
    } else {
        10
    };
    // A range beyond MAXIMUM WRITE SAME LENGTH (VPD B0), zero blocks
    // included, is refused (SBC-4 5.50.1).
    if n > MAX_WRITE_SAME_BYTES / u64::from(lu.block_size) {
        return Err(Sense::invalid_cdb_field(len_field, None).into());
    }
    if unmap && !lu.cfg.thin {
        return Err(Sense::invalid_cdb_field(1, Some(3)).into());
    }
    let bs = lu.block_size as usize;
    // The Data-Out must be exactly one block, or nothing with NDOB.
    let want = if ndob { 0 } else { bs };
    if ctx.req.expected_len as usize != want {
        return Err(Sense::invalid_cdb_field(len_field, None).into());
    }
    let block = if ndob { None } else { Some(data_out(ctx, bs)?) };
    let off = lu.byte_offset(lba);
    let total = n * bs as u64;
    let zero = block.as_ref().is_none_or(|b| b.iter().all(|&x| x == 0));
    let fua = !lu.write_cache_enabled();
    let _g = lu.shared_io(off, total).await;
    // UNMAP set on a thin LU deallocates whatever the Data-Out holds: the
    // blocks then read as zeroes (LBPRZ), as initiators that unmap with
    // WRITE SAME expect (SBC-4 4.7.3.4, 5.50).
    if zero || unmap {
        lu.backend
            .write_zeroes(off, total, unmap)
            .await
            .map_err(write_error)?;
        if fua {
            lu.backend.flush().await.map_err(write_error)?;
        }
        return Ok(Bytes::new());
    }
    let block = block.unwrap_or_default();
    let per = (WS_CHUNK / bs).max(1) as u64;
    let mut chunk = BytesMut::with_capacity((per.min(n) as usize) * bs);
    for _ in 0..per.min(n) {
        chunk.extend_from_slice(&block);
    }
    let chunk = chunk.freeze();
    let mut done = 0u64;
    while done < n {
        let k = per.min(n - done);
        let data = chunk.slice(..k as usize * bs);
        lu.backend
            .write(off + done * bs as u64, data, fua)
            .await
            .map_err(write_error)?;
        done += k;
    }
    Ok(Bytes::new())
}

/// UNMAP (SBC-3 5.28).
pub(crate) async fn unmap(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    if !lu.cfg.thin {
        return Err(sense::INVALID_OPCODE.into());
    }
    lu.check_writable()?;
    let plen = usize::from(be16(cdb, 7));
    if plen == 0 {
        return Ok(Bytes::new());
    }
    if plen < 8 {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    let p = data_out(ctx, plen)?;
    let bd_len = usize::from(be16(&p, 2));
    if bd_len % 16 != 0 || bd_len + 8 > plen {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    let count = bd_len / 16;
    if count as u32 > MAX_UNMAP_DESCRIPTORS {
        return Err(Sense::invalid_param_field(2, None).into());
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for i in 0..count {
        let d = 8 + 16 * i;
        let lba = be64(&p, d);
        let n = u64::from(be32(&p, d + 8));
        lu.check_range(lba, n)?;
        total += n;
        if n > MAX_UNMAP_BLOCKS || total > MAX_UNMAP_BLOCKS {
            return Err(Sense::invalid_param_field((d + 8) as u16, None).into());
        }
        ranges.push((lba, n));
    }
    let bs = u64::from(lu.block_size);
    for (lba, n) in ranges {
        if n > 0 {
            let _g = lu.shared_io(lba * bs, n * bs).await;
            lu.backend
                .discard(lba * bs, n * bs)
                .await
                .map_err(write_error)?;
        }
    }
    Ok(Bytes::new())
}

/// GET LBA STATUS (SBC-3 5.6): descriptors of mapped / deallocated extents
/// from the starting LBA, as many as fit in the allocation length.
pub(crate) async fn get_lba_status(lu: &LogicalUnit, cdb: &[u8]) -> CmdResult {
    let start = be64(cdb, 2);
    let alloc = be32(cdb, 10);
    if start >= lu.blocks {
        return Err(sense::LBA_OUT_OF_RANGE.into());
    }
    let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 64);
    let bs = u64::from(lu.block_size);
    let mut out = vec![0u8; 8];
    let mut lba = start;
    let mut count = 0;
    while lba < lu.blocks && count < max_desc {
        let (mapped, len) = lu.backend.allocation(lba * bs).await.map_err(read_error)?;
        let blocks = len.div_ceil(bs).clamp(1, lu.blocks - lba);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&lba.to_be_bytes());
        d[8..12].copy_from_slice(&u32::try_from(blocks).unwrap_or(u32::MAX).to_be_bytes());
        d[12] = if mapped { 0 } else { 1 };
        out.extend_from_slice(&d);
        lba += blocks.min(u64::from(u32::MAX));
        count += 1;
    }
    let plen = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&plen.to_be_bytes());
    Ok(truncate(out.into(), alloc))
}
