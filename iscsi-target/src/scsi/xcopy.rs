//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS / OPERATING PARAMETERS
//! (SPC-4 6.4, 6.18, 6.19): block-to-block copies (segment descriptors
//! 02h and 0Ah) between logical units of this target, addressed by
//! identification descriptor target descriptors (E4h) that carry the NAA
//! designator of VPD page 83h.

use std::sync::Arc;

use bytes::Bytes;

use super::cdb::{be16, be32, be64};
use super::lu::{read_error, truncate, write_error, CmdResult, Ctx, Fail, LogicalUnit};
use super::sense::{self, key, Sense};

const HEADER: usize = 16;
const TARGET_DESC_LEN: usize = 32;
const MAX_TARGET_DESCS: u16 = 2;
const MAX_SEGMENT_DESCS: u16 = 8;
const MAX_DESC_LIST: u32 = 1024;
/// Largest segment in bytes (also bounds a 02h segment).
const MAX_SEGMENT_BYTES: u64 = 32 << 20;
const CHUNK: u64 = 1 << 20;

const SEG_B2B: u8 = 0x02;
const SEG_B2B_OFF: u8 = 0x0a;
const TGT_IDENT: u8 = 0xe4;

/// COPY ABORTED / UNREACHABLE COPY TARGET.
const UNREACHABLE: Sense = Sense::new(key::COPY_ABORTED, 0x08, 0x04);
/// COPY ABORTED / COPY TARGET DEVICE DATA OVERRUN (beyond capacity).
const OVERRUN: Sense = Sense::new(key::COPY_ABORTED, 0x0d, 0x02);

/// RECEIVE COPY RESULTS (SPC-4 6.18): COPY STATUS of a held list
/// identifier (released once reported), or OPERATING PARAMETERS.
pub(crate) fn receive_copy_results(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let alloc = be32(cdb, 10);
    if ctx.info.sa == Some(0x00) {
        let list_id = cdb[2];
        let Some((segments, bytes)) = lu.lock().copies.remove(&(ctx.nexus.id, list_id)) else {
            return Err(Sense::invalid_cdb_field(2, None).into());
        };
        let mut d = [0u8; 12];
        d[0..4].copy_from_slice(&8u32.to_be_bytes());
        d[4] = 0x01; // COPY MANAGER STATUS: completed without errors
        d[5..7].copy_from_slice(&segments.to_be_bytes());
        // TRANSFER COUNT in bytes (units 00h) or KiB (F1h) when larger.
        let (units, count) = match u32::try_from(bytes) {
            Ok(b) => (0x00, b),
            Err(_) => (0xf1, u32::try_from(bytes >> 10).unwrap_or(u32::MAX)),
        };
        d[7] = units;
        d[8..12].copy_from_slice(&count.to_be_bytes());
        return Ok(truncate(Bytes::copy_from_slice(&d), alloc));
    }
    let codes = [SEG_B2B, SEG_B2B_OFF, TGT_IDENT];
    let mut d = vec![0u8; 44];
    d[8..10].copy_from_slice(&MAX_TARGET_DESCS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESC_LIST.to_be_bytes());
    d[16..20].copy_from_slice(&(MAX_SEGMENT_BYTES as u32).to_be_bytes());
    d[34..36].copy_from_slice(&1u16.to_be_bytes()); // TOTAL CONCURRENT COPIES
    d[36] = 1; // MAXIMUM CONCURRENT COPIES
    d[37] = 9; // DATA SEGMENT GRANULARITY: 2^9 bytes
    d[43] = codes.len() as u8;
    d.extend_from_slice(&codes);
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(truncate(Bytes::from(d), alloc))
}

/// A copy segment resolved to byte ranges.
struct Segment {
    src: usize,
    dst: usize,
    src_off: u64,
    dst_off: u64,
    len: u64,
}

/// Find the LU whose NAA designator matches the identification descriptor.
fn resolve(ctx: &Ctx<'_>, desc: &[u8]) -> Result<Arc<LogicalUnit>, Fail> {
    // Peripheral device type must be 00h (block).
    if desc[1] & 0x1f != 0 {
        return Err(UNREACHABLE.into());
    }
    let code_set = desc[4] & 0x0f;
    let dtype = desc[5] & 0x0f;
    let len = usize::from(desc[7]);
    if len > 20 {
        return Err(Sense::invalid_param_field(7, None).into());
    }
    let id = &desc[8..8 + len];
    for lu in ctx.target.all() {
        let naa = code_set == 1 && dtype == 3 && id == lu.cfg.naa_id.as_slice();
        let mut t10 = lu.cfg.vendor.as_bytes().to_vec();
        t10.resize(8, b' ');
        t10.extend_from_slice(lu.cfg.serial.as_bytes());
        let vendor = code_set == 2 && dtype == 1 && id == t10.as_slice();
        if naa || vendor {
            let bs = super::cdb::be24(desc, 29);
            if bs != 0 && bs != lu.block_size {
                return Err(UNREACHABLE.into());
            }
            return Ok(lu);
        }
    }
    Err(UNREACHABLE.into())
}

/// EXTENDED COPY (LID1) (SPC-4 6.4).
pub(crate) async fn extended_copy(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let plen = be32(ctx.cdb(), 10) as usize;
    if plen == 0 {
        return Ok(Bytes::new());
    }
    if plen < HEADER {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    let p = super::rw::data_out(ctx, plen)?;
    let tgt_len = usize::from(be16(&p, 2));
    let seg_len = be32(&p, 8) as usize;
    let inline_len = be32(&p, 12) as usize;
    if HEADER + tgt_len + seg_len + inline_len > plen {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    if (tgt_len + seg_len) as u64 > u64::from(MAX_DESC_LIST) {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    if inline_len != 0 {
        return Err(Sense::invalid_param_field(12, None).into());
    }
    if tgt_len % TARGET_DESC_LEN != 0 {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    if tgt_len / TARGET_DESC_LEN > usize::from(MAX_TARGET_DESCS) {
        return Err(Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x06).into());
    }
    // Segment descriptors: count and types first (nothing runs on error).
    let segs_raw = &p[HEADER + tgt_len..HEADER + tgt_len + seg_len];
    let mut pos = 0;
    let mut raw = Vec::new();
    while pos < segs_raw.len() {
        if pos + 4 > segs_raw.len() {
            return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
        }
        let dlen = usize::from(be16(segs_raw, pos + 2)) + 4;
        if pos + dlen > segs_raw.len() {
            return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
        }
        raw.push(&segs_raw[pos..pos + dlen]);
        pos += dlen;
    }
    if raw.len() > usize::from(MAX_SEGMENT_DESCS) {
        return Err(Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x08).into());
    }
    // Target descriptors.
    let mut targets = Vec::new();
    for d in p[HEADER..HEADER + tgt_len].chunks(TARGET_DESC_LEN) {
        if d[0] != TGT_IDENT {
            return Err(Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x07).into());
        }
        targets.push(d);
    }
    let mut segments = Vec::new();
    for d in &raw {
        let (ty, dlen) = (d[0], d.len());
        let ok_len = match ty {
            SEG_B2B => dlen == 0x18 + 4,
            SEG_B2B_OFF => dlen == 0x1c + 4,
            _ => return Err(Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x09).into()),
        };
        if !ok_len {
            return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
        }
        let src = usize::from(be16(d, 4));
        let dst = usize::from(be16(d, 6));
        if src >= targets.len() || dst >= targets.len() {
            return Err(UNREACHABLE.into());
        }
        segments.push((ty, src, dst, *d));
    }
    // Resolve targets, then segments to byte ranges with range checks.
    let mut lus = Vec::new();
    for d in &targets {
        lus.push(resolve(ctx, d)?);
    }
    let mut plan = Vec::new();
    for (ty, src, dst, d) in segments {
        let (sbs, dbs) = (
            u64::from(lus[src].block_size),
            u64::from(lus[dst].block_size),
        );
        let (src_lba, dst_lba) = (be64(d, 12), be64(d, 20));
        let (len, src_off, dst_off) = if ty == SEG_B2B {
            let n = u64::from(be16(d, 10));
            (n * sbs, 0, 0)
        } else {
            (
                u64::from(be32(d, 8)),
                u64::from(be16(d, 28)),
                u64::from(be16(d, 30)),
            )
        };
        if len > MAX_SEGMENT_BYTES
            || len % sbs != 0
            || len % dbs != 0
            || src_off != 0
            || dst_off != 0
        {
            return Err(Sense::invalid_param_field(8, None).into());
        }
        let s_end = src_lba.checked_mul(sbs).and_then(|o| o.checked_add(len));
        let d_end = dst_lba.checked_mul(dbs).and_then(|o| o.checked_add(len));
        if s_end.is_none_or(|e| e > lus[src].backend.size())
            || d_end.is_none_or(|e| e > lus[dst].backend.size())
        {
            return Err(OVERRUN.into());
        }
        if lus[dst].cfg.read_only {
            return Err(sense::WRITE_PROTECTED.into());
        }
        plan.push(Segment {
            src,
            dst,
            src_off: src_lba * sbs,
            dst_off: dst_lba * dbs,
            len,
        });
    }
    let list_id = p[0];
    let hold = (p[1] >> 3) & 3 < 2; // LIST ID USAGE 00b/01b: keep the results
    let segments = plan.len() as u16;
    let total: u64 = plan.iter().map(|s| s.len).sum();
    for s in plan {
        let (from, to) = (&lus[s.src], &lus[s.dst]);
        let fua = !to.write_cache_enabled();
        let mut done = 0;
        while done < s.len {
            let n = (s.len - done).min(CHUNK);
            let data = {
                let _g = from.shared_io(s.src_off + done, n).await;
                from.backend
                    .read(s.src_off + done, n as usize)
                    .await
                    .map_err(read_error)?
            };
            let _g = to.shared_io(s.dst_off + done, n).await;
            to.backend
                .write(s.dst_off + done, data, fua)
                .await
                .map_err(write_error)?;
            done += n;
        }
    }
    if hold {
        lu.lock()
            .copies
            .insert((ctx.nexus.id, list_id), (segments, total));
    }
    Ok(Bytes::new())
}
