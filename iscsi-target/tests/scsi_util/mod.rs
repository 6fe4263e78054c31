//! Shared helpers for the SCSI tests: a target with a memory-backed LU,
//! nexuses, CDB builders and assertions on status/sense.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use drbd_like_sync::storage::MemoryBackend;
use iscsi_target::scsi::{
    LogicalUnit, LunConfig, Nexus, Residual, ScsiRequest, ScsiResponse, ScsiStatus, ScsiTarget,
    TaskAttr,
};

pub const BLOCKS: u64 = 2048;
pub const BS: u32 = 512;

pub fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.2024-01.test:init{id},i,0x23d00000000{id}"),
        transport_id: Bytes::from(format!(
            "iqn.2024-01.test:init{id},i,0x23d00000000{id}\0\0\0\0"
        )),
        relative_port: 1,
    }
}

pub fn lu_with(cfg: LunConfig) -> Arc<LogicalUnit> {
    let size = BLOCKS * u64::from(cfg.logical_block_size);
    Arc::new(LogicalUnit::new(cfg, Arc::new(MemoryBackend::new(size))).unwrap())
}

pub fn target_with(cfg: LunConfig) -> ScsiTarget {
    let t = ScsiTarget::new("iqn.2024-01.test:target");
    t.add_lun(0, lu_with(cfg));
    t
}

pub fn target() -> ScsiTarget {
    target_with(LunConfig::new("SER0001"))
}

pub async fn exec(
    t: &ScsiTarget,
    n: &Nexus,
    cdb: &[u8],
    expected_len: u32,
    data: &[u8],
) -> ScsiResponse {
    t.execute(
        n,
        ScsiRequest {
            lun: 0,
            cdb: Bytes::copy_from_slice(cdb),
            expected_len,
            data_out: Bytes::copy_from_slice(data),
            attr: TaskAttr::Simple,
            zero_copy: false,
        },
    )
    .await
}

pub fn good(r: &ScsiResponse) {
    assert_eq!(
        r.status,
        ScsiStatus::GOOD,
        "expected GOOD, sense {:?}",
        r.sense_triple()
    );
}

pub fn check(r: &ScsiResponse, key: u8, asc: u8, ascq: u8) {
    assert_eq!(
        r.status,
        ScsiStatus::CHECK_CONDITION,
        "expected CHECK CONDITION"
    );
    assert_eq!(r.sense_triple(), Some((key, asc, ascq)));
}

pub fn conflict(r: &ScsiResponse) {
    assert_eq!(r.status, ScsiStatus::RESERVATION_CONFLICT);
}

pub fn no_residual(r: &ScsiResponse) {
    assert_eq!(r.residual, Residual::None);
}

pub fn read10(lba: u32, n: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

pub fn write10(lba: u32, n: u16, fua: bool) -> [u8; 10] {
    let mut c = read10(lba, n);
    c[0] = 0x2a;
    if fua {
        c[1] = 0x08;
    }
    c
}

pub fn rw16(op: u8, lba: u64, n: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 253) as u8))
        .collect()
}

pub async fn write_blocks(t: &ScsiTarget, n: &Nexus, lba: u32, data: &[u8]) {
    let blocks = (data.len() / BS as usize) as u16;
    let r = exec(t, n, &write10(lba, blocks, false), data.len() as u32, data).await;
    good(&r);
}

pub async fn read_blocks(t: &ScsiTarget, n: &Nexus, lba: u32, blocks: u16) -> Bytes {
    let r = exec(t, n, &read10(lba, blocks), u32::from(blocks) * BS, &[]).await;
    good(&r);
    r.data_in
}
