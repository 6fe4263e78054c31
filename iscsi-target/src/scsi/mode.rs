//! MODE SENSE / MODE SELECT 6 and 10 (SPC-4 6.11-6.14, 7.5) with the
//! caching (08h), control (0Ah) and informational exceptions (1Ch) pages.
//! WCE (caching) and SWP (control) are changeable; nothing can be saved.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::cdb::{be16, u8_at};
use super::lu::{truncate, CmdResult, Ctx, Fail, LogicalUnit};
use super::opcodes::code::*;
use super::sense::{self, Sense};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const IEC: u8 = 0x1c;
const PAGES: [u8; 3] = [CACHING, CONTROL, IEC];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

fn page(lu: &LogicalUnit, code: u8, pc: Pc) -> Vec<u8> {
    match code {
        CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = CACHING;
            p[1] = 18;
            let wce = match pc {
                Pc::Current => lu.write_cache_enabled(),
                Pc::Changeable => true,
                Pc::Default => lu.cfg.write_cache,
            };
            if wce {
                p[2] |= 0x04;
            }
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = CONTROL;
            p[1] = 10;
            // TST 000b (byte 2): one task set per LU shared by every I_T
            // nexus, which is how `gate` orders ORDERED tasks.
            let swp = match pc {
                Pc::Current => lu.software_write_protected(),
                Pc::Changeable => true,
                Pc::Default => false,
            };
            if swp {
                p[4] |= 0x08; // SWP
            }
            if pc != Pc::Changeable {
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                p[5] = 0x40; // TAS: tasks aborted by another nexus end with TASK ABORTED
                p[8] = 0xff; // BUSY TIMEOUT PERIOD: unlimited
                p[9] = 0xff;
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = IEC;
            p[1] = 10;
            if pc != Pc::Changeable {
                p[2] = 0x08; // DEXCPT
            }
            p
        }
    }
}

/// MODE SENSE(6)/(10) (SPC-4 6.11/6.12).
pub(crate) fn mode_sense(lu: &LogicalUnit, cdb: &[u8]) -> CmdResult {
    let ten = u8_at(cdb, 0) == MODE_SENSE_10;
    let dbd = u8_at(cdb, 1) & 0x08 != 0;
    let llbaa = ten && u8_at(cdb, 1) & 0x10 != 0;
    let pc = match u8_at(cdb, 2) >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => return Err(sense::SAVING_PARAMS_UNSUPPORTED.into()),
    };
    let code = u8_at(cdb, 2) & 0x3f;
    let sub = u8_at(cdb, 3);
    let alloc = if ten {
        u32::from(be16(cdb, 7))
    } else {
        u32::from(u8_at(cdb, 4))
    };
    let mut pages = Vec::new();
    match (code, sub) {
        (0x3f, 0x00 | 0xff) => {
            for c in PAGES {
                pages.extend(page(lu, c, pc));
            }
        }
        (c, 0x00) if PAGES.contains(&c) => pages.extend(page(lu, c, pc)),
        (c, _) if c == 0x3f || PAGES.contains(&c) => {
            return Err(Sense::invalid_cdb_field(3, None).into());
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(5)).into()),
    }
    let mut bd = Vec::new();
    if !dbd {
        let bs = lu.block_size.to_be_bytes();
        if llbaa {
            bd.extend_from_slice(&lu.blocks.to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&bs);
        } else {
            let n = u32::try_from(lu.blocks).unwrap_or(u32::MAX);
            let n = if ten { n } else { n.min(0x00ff_ffff) };
            bd.extend_from_slice(&n.to_be_bytes());
            if !ten {
                bd[0] = 0; // density code
            }
            bd.extend_from_slice(&[0, bs[1], bs[2], bs[3]]);
            if !ten {
                // 6-byte descriptor form: density(1) blocks(3) rsvd(1) len(3)
                let blocks = n.to_be_bytes();
                bd = vec![0, blocks[1], blocks[2], blocks[3], 0, bs[1], bs[2], bs[3]];
            }
        }
    }
    // DEVICE-SPECIFIC PARAMETER: WP (read-only or SWP), DPOFUA (SBC-4 6.5.1).
    let dsp = 0x10 | if lu.write_protected() { 0x80 } else { 0 };
    let mut out = Vec::new();
    if ten {
        let total = 8 + bd.len() + pages.len();
        out.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        out.extend_from_slice(&[0, dsp, u8::from(llbaa), 0]);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let total = 4 + bd.len() + pages.len();
        out.extend_from_slice(&[(total - 1).min(255) as u8, 0, dsp, bd.len() as u8]);
    }
    out.extend_from_slice(&bd);
    out.extend_from_slice(&pages);
    Ok(truncate(Bytes::from(out), alloc))
}

/// MODE SELECT(6)/(10) (SPC-4 6.9/6.10). SP=1 is rejected (nothing can be
/// saved); every page must match the current values except the bits the
/// changeable mask allows (WCE, SWP). A WCE or SWP change raises MODE
/// PARAMETERS CHANGED for the other nexuses. Returns whether the cache must
/// be flushed: WCE went from 1 to 0, or SWP from 0 to 1 (SPC-4 7.5.8: the
/// medium is protected once the cached writes are on it).
pub(crate) fn mode_select(lu: &LogicalUnit, ctx: &Ctx<'_>) -> Result<bool, Fail> {
    let cdb = ctx.cdb();
    let ten = u8_at(cdb, 0) == MODE_SELECT_10;
    if u8_at(cdb, 1) & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0)).into());
    }
    let plen = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(u8_at(cdb, 4))
    };
    if plen == 0 {
        return Ok(false);
    }
    let p = super::rw::data_out(ctx, plen)?;
    let hdr = if ten { 8 } else { 4 };
    if plen < hdr {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    let bdl = if ten {
        usize::from(be16(&p, 6))
    } else {
        usize::from(u8_at(&p, 3))
    };
    if hdr + bdl > plen {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    // Block descriptors may only restate the block length.
    if bdl >= 8 {
        let len = super::cdb::be24(&p, hdr + bdl - 3);
        if len != 0 && len != lu.block_size {
            return Err(Sense::invalid_param_field((hdr + bdl - 3) as u16, None).into());
        }
    }
    let mut pos = hdr + bdl;
    let mut new_wce = None;
    let mut new_swp = None;
    while pos < plen {
        if pos + 2 > plen {
            return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
        }
        let code = p[pos] & 0x3f;
        if p[pos] & 0x40 != 0 {
            return Err(Sense::invalid_param_field(pos as u16, Some(6)).into());
        }
        let len = usize::from(p[pos + 1]) + 2;
        if pos + len > plen {
            return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
        }
        if !PAGES.contains(&code) {
            return Err(Sense::invalid_param_field(pos as u16, None).into());
        }
        let cur = page(lu, code, Pc::Current);
        let mask = page(lu, code, Pc::Changeable);
        if len != cur.len() {
            return Err(Sense::invalid_param_field((pos + 1) as u16, None).into());
        }
        for i in 2..len {
            let diff = (p[pos + i] ^ cur[i]) & !mask[i];
            if diff != 0 {
                return Err(Sense::invalid_param_field((pos + i) as u16, None).into());
            }
        }
        match code {
            CACHING => new_wce = Some(p[pos + 2] & 0x04 != 0),
            CONTROL => new_swp = Some(p[pos + 4] & 0x08 != 0),
            _ => {}
        }
        pos += len;
    }
    let mut flush = false;
    let mut changed = false;
    if let Some(wce) = new_wce {
        let old = lu.wce.swap(wce, Ordering::Relaxed);
        changed |= old != wce;
        flush |= old && !wce;
    }
    if let Some(swp) = new_swp {
        let old = lu.swp.swap(swp, Ordering::Relaxed);
        changed |= old != swp;
        flush |= !old && swp;
    }
    if changed {
        lu.lock()
            .ua_others(Some(ctx.nexus.id), sense::UA_MODE_PARAMS_CHANGED);
    }
    Ok(flush)
}
