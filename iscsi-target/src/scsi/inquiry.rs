//! INQUIRY with VPD pages (SPC-4 6.6, 7.8; SBC-3 6.6), READ CAPACITY
//! (SBC-3 5.15/5.16) and REPORT TARGET PORT GROUPS (SPC-4 6.36).

use bytes::Bytes;

use super::cdb::{be16, be32, be64, u8_at};
use super::lu::{
    truncate, CmdResult, Ctx, LogicalUnit, MAX_CAW_BLOCKS, MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BYTES,
};
use super::sense::Sense;

const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

fn pad(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) { b } else { b' ' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// INQUIRY for a LUN that is not configured: peripheral qualifier 3,
/// device type 1Fh (SPC-4 6.6.2).
pub(crate) fn inquiry_no_lun(cdb: &[u8]) -> CmdResult {
    let alloc = u32::from(be16(cdb, 3));
    if u8_at(cdb, 1) & 1 != 0 {
        return Err(super::sense::LUN_NOT_SUPPORTED.into());
    }
    if u8_at(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let mut d = vec![0u8; 36];
    d[0] = 0x7f; // peripheral qualifier 011b, device type 1Fh
    d[2] = 0x06;
    d[3] = 0x12;
    d[4] = 31;
    Ok(truncate(d.into(), alloc))
}

/// INQUIRY (SPC-4 6.6): standard data or a VPD page.
pub(crate) fn inquiry(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let evpd = u8_at(cdb, 1) & 1 != 0;
    let page = u8_at(cdb, 2);
    let alloc = u32::from(be16(cdb, 3));
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb_field(2, None).into());
        }
        return Ok(truncate(standard(lu), alloc));
    }
    let body: Vec<u8> = match page {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => lu.cfg.serial.as_bytes().to_vec(),
        0x83 => device_id(lu, ctx),
        0xb0 => block_limits(lu),
        0xb1 => {
            let mut v = vec![0u8; 0x3c];
            v[1] = 0x01; // MEDIUM ROTATION RATE: non-rotating medium
                         // WABEREQ 01b: a read after SANITIZE BLOCK ERASE completes
                         // GOOD (it reads zeroes); WACEREQ 00b: no CRYPTO ERASE
                         // (SBC-4 6.6.2).
            v[3] = 0x40;
            v
        }
        0xb2 => {
            let mut v = vec![0u8; 4];
            if lu.cfg.thin {
                v[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU LBPWS LBPWS10 LBPRZ
                v[2] = 0x02; // PROVISIONING TYPE: thin
            }
            v
        }
        _ => return Err(Sense::invalid_cdb_field(2, None).into()),
    };
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&[0x00, page]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(truncate(out.into(), alloc))
}

fn standard(lu: &LogicalUnit) -> Bytes {
    let mut d = vec![0u8; 74];
    d[0] = 0x00; // connected, direct access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x10 | 0x08; // TPGS = 01b: implicit ALUA; 3PC: EXTENDED COPY
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&pad(&lu.cfg.vendor, 8));
    d[16..32].copy_from_slice(&pad(&lu.cfg.product, 16));
    d[32..36].copy_from_slice(&pad(&lu.cfg.revision, 4));
    // Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI.
    for (i, v) in [0x00a0u16, 0x0460, 0x04c0, 0x0960].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d.into()
}

fn designator(out: &mut Vec<u8>, b0: u8, b1: u8, value: &[u8]) {
    out.extend_from_slice(&[b0, b1, 0, value.len() as u8]);
    out.extend_from_slice(value);
}

/// VPD 0x83 Device Identification (SPC-4 7.8.6).
fn device_id(lu: &LogicalUnit, ctx: &Ctx<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    // NAA, logical unit, binary.
    designator(&mut v, 0x01, 0x03, &lu.cfg.naa_id);
    // T10 vendor id: vendor + serial, ASCII.
    let mut t10 = pad(&lu.cfg.vendor, 8);
    t10.extend_from_slice(lu.cfg.serial.as_bytes());
    t10.truncate(252);
    designator(&mut v, 0x02, 0x01, &t10);
    // Relative target port (iSCSI, PIV, target port association).
    let rp = ctx.nexus.relative_port.to_be_bytes();
    designator(&mut v, 0x51, 0x94, &[0, 0, rp[0], rp[1]]);
    // Target port group.
    let tpg = lu.cfg.target_port_group.to_be_bytes();
    designator(&mut v, 0x51, 0x95, &[0, 0, tpg[0], tpg[1]]);
    // SCSI name string of the target device (UTF-8, NUL padded to 4).
    let mut name = ctx.target_name.as_bytes().to_vec();
    name.truncate(250);
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    designator(&mut v, 0x53, 0xa8, &name);
    v
}

/// VPD 0xB0 Block Limits (SBC-3 6.6.4).
fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let bs = u64::from(lu.block_size);
    let mut v = vec![0u8; 0x3c];
    // WSNZ = 0: WRITE SAME with NUMBER OF LOGICAL BLOCKS = 0 writes up to
    // the last LBA, when that is within MAXIMUM WRITE SAME LENGTH.
    v[1] = MAX_CAW_BLOCKS;
    let gran = (4096 / bs).max(1) as u16;
    v[2..4].copy_from_slice(&gran.to_be_bytes());
    let max_xfer = (MAX_TRANSFER_BYTES / bs) as u32;
    v[4..8].copy_from_slice(&max_xfer.to_be_bytes());
    v[8..12].copy_from_slice(&((1u64 << 20) as u32 / lu.block_size).to_be_bytes());
    v[12..16].copy_from_slice(&max_xfer.to_be_bytes()); // MAXIMUM PREFETCH LENGTH
    if lu.cfg.thin {
        v[16..20].copy_from_slice(&(MAX_UNMAP_BLOCKS as u32).to_be_bytes());
        v[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        v[24..28].copy_from_slice(&u32::from(gran).to_be_bytes());
    }
    v[32..40].copy_from_slice(&(MAX_WRITE_SAME_BYTES / bs).to_be_bytes());
    // WRITE ATOMIC(16): MAXIMUM ATOMIC TRANSFER LENGTH, alignment 1, granularity 1.
    v[40..44].copy_from_slice(&max_xfer.to_be_bytes());
    v[44..48].copy_from_slice(&1u32.to_be_bytes());
    v[48..52].copy_from_slice(&1u32.to_be_bytes());
    v
}

/// READ CAPACITY(10) (SBC-3 5.15).
pub(crate) fn read_capacity10(lu: &LogicalUnit, cdb: &[u8]) -> CmdResult {
    if u8_at(cdb, 8) & 1 == 0 && be32(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let last = u32::try_from(lu.blocks - 1).unwrap_or(u32::MAX);
    let mut d = [0u8; 8];
    d[0..4].copy_from_slice(&last.to_be_bytes());
    d[4..8].copy_from_slice(&lu.block_size.to_be_bytes());
    Ok(Bytes::copy_from_slice(&d))
}

/// READ CAPACITY(16) (SBC-3 5.16), with LBPME/LBPRZ when thin.
pub(crate) fn read_capacity16(lu: &LogicalUnit, cdb: &[u8]) -> CmdResult {
    let alloc = be32(cdb, 10);
    if u8_at(cdb, 14) & 1 == 0 && be64(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let mut d = [0u8; 32];
    d[0..8].copy_from_slice(&(lu.blocks - 1).to_be_bytes());
    d[8..12].copy_from_slice(&lu.block_size.to_be_bytes());
    // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: 0 unless the LUN is
    // configured with larger physical blocks. The 4 KiB hole granularity is
    // advertised as OPTIMAL UNMAP GRANULARITY (VPD B0) either way, and GET
    // LBA STATUS reports exactly the requested LBA.
    d[13] = lu.cfg.physical_block_exponent & 0x0f;
    if lu.cfg.thin {
        d[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    Ok(truncate(Bytes::copy_from_slice(&d), alloc))
}

/// REPORT TARGET PORT GROUPS (SPC-4 6.36): one group, active/optimized,
/// containing the port the command arrived on.
pub(crate) fn report_target_port_groups(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let extended = (u8_at(cdb, 1) >> 5) == 1;
    let alloc = be32(cdb, 6);
    let mut desc = vec![0u8; 8];
    desc[0] = 0x80; // PREF, state 0h active/optimized
    desc[1] = 0x01; // AO_SUP
    desc[2..4].copy_from_slice(&lu.cfg.target_port_group.to_be_bytes());
    desc[7] = 1; // TARGET PORT COUNT
    desc.extend_from_slice(&[0, 0]);
    desc.extend_from_slice(&ctx.nexus.relative_port.to_be_bytes());
    let mut out = Vec::new();
    out.extend_from_slice(&(desc.len() as u32 + if extended { 4 } else { 0 }).to_be_bytes());
    if extended {
        out.extend_from_slice(&[0x10, 0, 0, 0]);
    }
    out.extend_from_slice(&desc);
    Ok(truncate(out.into(), alloc))
}

/// READ DEFECT DATA(10)/(12) (SBC-3 5.12/5.13): an empty defect list in
/// the requested format, PLISTV/GLISTV echoing the request.
pub(crate) fn read_defect_data(cdb: &[u8]) -> CmdResult {
    if u8_at(cdb, 0) == super::opcodes::code::READ_DEFECT_DATA_10 {
        let flags = u8_at(cdb, 2) & 0x1f;
        let alloc = u32::from(be16(cdb, 7));
        return Ok(truncate(Bytes::copy_from_slice(&[0, flags, 0, 0]), alloc));
    }
    let flags = u8_at(cdb, 1) & 0x1f;
    let alloc = be32(cdb, 6);
    Ok(truncate(
        Bytes::copy_from_slice(&[0, flags, 0, 0, 0, 0, 0, 0]),
        alloc,
    ))
}
