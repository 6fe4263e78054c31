//! READ/WRITE family, VERIFY, COMPARE AND WRITE, ORWRITE, residuals.

mod scsi_util;
use iscsi_target::scsi::{LunConfig, Residual};
use scsi_util::*;

#[tokio::test]
async fn write_then_read_roundtrip_all_sizes() {
    let t = target();
    let n = nexus(1);
    let d = pattern(7, 4 * BS as usize);
    write_blocks(&t, &n, 10, &d).await;
    assert_eq!(&read_blocks(&t, &n, 10, 4).await[..], &d[..]);
    // READ(6), READ(12), READ(16) see the same data.
    let r = exec(&t, &n, &[0x08, 0, 0, 10, 4, 0], 4 * BS, &[]).await;
    good(&r);
    assert_eq!(&r.data_in[..], &d[..]);
    let r = exec(
        &t,
        &n,
        &[0xa8, 0, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0],
        4 * BS,
        &[],
    )
    .await;
    good(&r);
    assert_eq!(&r.data_in[..], &d[..]);
    let r = exec(&t, &n, &rw16(0x88, 10, 4), 4 * BS, &[]).await;
    good(&r);
    assert_eq!(&r.data_in[..], &d[..]);
    // WRITE(16) with FUA, WRITE(12), WRITE(6).
    let d2 = pattern(9, BS as usize);
    let mut c = rw16(0x8a, 20, 1);
    c[1] = 0x08;
    good(&exec(&t, &n, &c, BS, &d2).await);
    good(&exec(&t, &n, &[0xaa, 0, 0, 0, 0, 21, 0, 0, 0, 1, 0, 0], BS, &d2).await);
    good(&exec(&t, &n, &[0x0a, 0, 0, 22, 1, 0], BS, &d2).await);
    let back = read_blocks(&t, &n, 20, 3).await;
    for i in 0..3 {
        assert_eq!(&back[i * 512..(i + 1) * 512], &d2[..]);
    }
    // Unwritten blocks read as zeroes.
    assert!(read_blocks(&t, &n, 1000, 2).await.iter().all(|&b| b == 0));
}

#[tokio::test]
async fn out_of_range_and_invalid_fields() {
    let t = target();
    let n = nexus(1);
    let last = (BLOCKS - 1) as u32;
    check(
        &exec(&t, &n, &read10(last, 2), 2 * BS, &[]).await,
        5,
        0x21,
        0,
    );
    check(
        &exec(&t, &n, &read10(last + 2, 0), 0, &[]).await,
        5,
        0x21,
        0,
    );
    good(&exec(&t, &n, &read10(0, 0), 0, &[]).await);
    check(
        &exec(&t, &n, &rw16(0x88, u64::MAX, 1), BS, &[]).await,
        5,
        0x21,
        0,
    );
    check(
        &exec(&t, &n, &write10(last, 2, false), 2 * BS, &[0; 1024]).await,
        5,
        0x21,
        0,
    );
    // RDPROTECT != 0 is an invalid field (no protection information).
    let mut c = read10(0, 1);
    c[1] = 0x20;
    let r = exec(&t, &n, &c, BS, &[]).await;
    check(&r, 5, 0x24, 0);
    let s = r.sense.unwrap();
    assert_eq!(s[15] & 0xc0, 0xc0, "SKSV and C/D set");
    assert_eq!(
        u16::from_be_bytes([s[16], s[17]]),
        1,
        "field pointer to byte 1"
    );
    // DPO / FUA / FUA_NV are accepted.
    let mut c = write10(0, 1, false);
    c[1] = 0x10 | 0x08 | 0x02;
    good(&exec(&t, &n, &c, BS, &[1; 512]).await);
    // Unknown opcode and unknown LUN.
    check(
        &exec(&t, &n, &[0xd9, 0, 0, 0, 0, 0], 0, &[]).await,
        5,
        0x20,
        0,
    );
}

#[tokio::test]
async fn residuals_follow_rfc7143() {
    let t = target();
    let n = nexus(1);
    // READ one block, EDTL 0: overflow of one block, GOOD.
    let r = exec(&t, &n, &read10(0, 1), 0, &[]).await;
    good(&r);
    assert_eq!(r.residual, Residual::Overflow(BS));
    assert!(r.data_in.is_empty());
    // EDTL 10000: underflow.
    let r = exec(&t, &n, &read10(0, 1), 10000, &[]).await;
    good(&r);
    assert_eq!(r.data_in.len(), 512);
    assert_eq!(r.residual, Residual::Underflow(10000 - BS));
    // EDTL 200: truncated data, overflow 312.
    let r = exec(&t, &n, &read10(0, 1), 200, &[]).await;
    assert_eq!(r.data_in.len(), 200);
    assert_eq!(r.residual, Residual::Overflow(312));
    // WRITE one block with EDTL 200: the 200 bytes sent are written, the
    // rest of the block is untouched, GOOD with an overflow of 312.
    let r = exec(&t, &n, &write10(5, 1, false), 200, &[0xbb; 200]).await;
    good(&r);
    assert_eq!(r.residual, Residual::Overflow(312));
    let b = read_blocks(&t, &n, 5, 1).await;
    assert!(b[..200].iter().all(|&x| x == 0xbb));
    assert!(b[200..].iter().all(|&x| x == 0));
    // WRITE two blocks with EDTL one block: the first block is written.
    let r = exec(&t, &n, &write10(10, 2, false), 512, &[0xdd; 512]).await;
    good(&r);
    assert_eq!(r.residual, Residual::Overflow(512));
    let b = read_blocks(&t, &n, 10, 2).await;
    assert!(b[..512].iter().all(|&x| x == 0xdd));
    assert!(b[512..].iter().all(|&x| x == 0));
    // EDTL 0: nothing written, overflow of one block.
    let r = exec(&t, &n, &write10(8, 1, false), 0, &[]).await;
    good(&r);
    assert_eq!(r.residual, Residual::Overflow(512));
    // A parameter list cut short by the expected length is refused.
    let r = exec(&t, &n, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], 10, &[0; 10]).await;
    check(&r, 5, 0x0e, 0x03);
    assert_eq!(r.residual, Residual::Overflow(14));
    // WRITE one block with EDTL 1024: the block is written, underflow 512.
    let r = exec(&t, &n, &write10(5, 1, false), 1024, &[0xcc; 1024]).await;
    good(&r);
    assert_eq!(r.residual, Residual::Underflow(512));
    let b = read_blocks(&t, &n, 5, 2).await;
    assert!(b[..512].iter().all(|&x| x == 0xcc));
    assert!(b[512..].iter().all(|&x| x == 0));
    // INQUIRY with a large allocation: underflow of what was not produced.
    let r = exec(&t, &n, &[0x12, 0, 0, 0, 255, 0], 255, &[]).await;
    good(&r);
    assert_eq!(
        r.residual,
        Residual::Underflow(255 - r.data_in.len() as u32)
    );
    // TEST UNIT READY with EDTL 0: no residual.
    no_residual(&exec(&t, &n, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
}

#[tokio::test]
async fn verify_bytchk_and_miscompare() {
    let t = target();
    let n = nexus(1);
    let d = pattern(3, 2 * BS as usize);
    write_blocks(&t, &n, 100, &d).await;
    // BYTCHK 0.
    good(&exec(&t, &n, &[0x2f, 0, 0, 0, 0, 100, 0, 0, 2, 0], 0, &[]).await);
    // BYTCHK 1, equal.
    good(&exec(&t, &n, &[0x2f, 0x02, 0, 0, 0, 100, 0, 0, 2, 0], 1024, &d).await);
    // BYTCHK 1, differs at byte 700.
    let mut bad = d.clone();
    bad[700] ^= 0xff;
    let r = exec(&t, &n, &[0x2f, 0x02, 0, 0, 0, 100, 0, 0, 2, 0], 1024, &bad).await;
    check(&r, 0x0e, 0x1d, 0);
    let s = r.sense.unwrap();
    assert_eq!(s[0] & 0x80, 0x80, "INFORMATION valid");
    assert_eq!(u32::from_be_bytes([s[3], s[4], s[5], s[6]]), 700);
    // VERIFY(16) beyond the end.
    let mut c = rw16(0x8f, BLOCKS, 1);
    c[1] = 0;
    check(&exec(&t, &n, &c, 0, &[]).await, 5, 0x21, 0);
}

#[tokio::test]
async fn compare_and_write_is_atomic_and_reports_offset() {
    let t = target();
    let n = nexus(1);
    let old = pattern(1, 512);
    write_blocks(&t, &n, 7, &old).await;
    let new = pattern(2, 512);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&7u64.to_be_bytes());
    cdb[13] = 1;
    let mut buf = old.clone();
    buf.extend_from_slice(&new);
    good(&exec(&t, &n, &cdb, 1024, &buf).await);
    assert_eq!(&read_blocks(&t, &n, 7, 1).await[..], &new[..]);
    // Now the compare data (old) differs from the medium (new) at byte 0..
    let r = exec(&t, &n, &cdb, 1024, &buf).await;
    check(&r, 0x0e, 0x1d, 0);
    let s = r.sense.unwrap();
    let first = old.iter().zip(&new).position(|(a, b)| a != b).unwrap() as u32;
    assert_eq!(u32::from_be_bytes([s[3], s[4], s[5], s[6]]), first);
    assert_eq!(
        &read_blocks(&t, &n, 7, 1).await[..],
        &new[..],
        "no write on miscompare"
    );
    // Too many blocks.
    cdb[13] = 200;
    check(
        &exec(&t, &n, &cdb, 200 * 1024, &vec![0; 200 * 1024]).await,
        5,
        0x24,
        0,
    );
    // Concurrent CAWs on the same block: exactly one of two racing
    // identical swaps succeeds.
    cdb[13] = 1;
    let mut swap = new.clone();
    swap.extend_from_slice(&pattern(5, 512));
    let (a, b) = tokio::join!(
        exec(&t, &n, &cdb, 1024, &swap),
        exec(&t, &n, &cdb, 1024, &swap)
    );
    let goods = [a.status, b.status].iter().filter(|s| s.0 == 0).count();
    assert_eq!(goods, 1);
}

#[tokio::test]
async fn orwrite_ors_data() {
    let t = target();
    let n = nexus(1);
    write_blocks(&t, &n, 3, &[0x0f; 512]).await;
    good(&exec(&t, &n, &rw16(0x8b, 3, 1), 512, &[0xf0; 512]).await);
    assert!(read_blocks(&t, &n, 3, 1).await.iter().all(|&b| b == 0xff));
}

#[tokio::test]
async fn read_only_lu_rejects_writes() {
    let mut cfg = LunConfig::new("RO");
    cfg.read_only = true;
    let t = target_with(cfg);
    let n = nexus(1);
    check(
        &exec(&t, &n, &write10(0, 1, false), 512, &[0; 512]).await,
        7,
        0x27,
        0,
    );
    good(&exec(&t, &n, &read10(0, 1), 512, &[]).await);
    // Write protection is reported before Data-Out length problems.
    let ws = [0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0];
    check(&exec(&t, &n, &ws, 0, &[]).await, 7, 0x27, 0);
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[13] = 1;
    check(&exec(&t, &n, &caw, 0, &[]).await, 7, 0x27, 0);
    // MODE SENSE reports WP.
    let r = exec(&t, &n, &[0x1a, 0, 0x3f, 0, 255, 0], 255, &[]).await;
    good(&r);
    assert_eq!(r.data_in[2] & 0x80, 0x80);
}

#[tokio::test]
async fn sync_cache_prefetch_start_stop() {
    let t = target();
    let n = nexus(1);
    good(&exec(&t, &n, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]).await);
    check(
        &exec(&t, &n, &rw16(0x91, BLOCKS, 1), 0, &[]).await,
        5,
        0x21,
        0,
    );
    good(&exec(&t, &n, &[0x34, 0, 0, 0, 0, 0, 0, 0, 8, 0], 0, &[]).await);
    check(
        &exec(&t, &n, &rw16(0x90, BLOCKS + 1, 0), 0, &[]).await,
        5,
        0x21,
        0,
    );
    good(&exec(&t, &n, &[0x1b, 0, 0, 0, 0, 0], 0, &[]).await);
    good(&exec(&t, &n, &[0x1b, 0, 0, 0, 1, 0], 0, &[]).await);
}

#[tokio::test]
async fn caw_data_out_must_match_and_write_atomic_works() {
    let t = target();
    let n = nexus(1);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[13] = 1;
    // 4 blocks of Data-Out for NLB 1 (too much) and for NLB 3 (too little).
    check(&exec(&t, &n, &cdb, 2048, &[0; 2048]).await, 5, 0x24, 0);
    cdb[13] = 3;
    check(&exec(&t, &n, &cdb, 2048, &[0; 2048]).await, 5, 0x24, 0);
    // NLB 0 with Data-Out is also a length mismatch.
    cdb[13] = 0;
    check(&exec(&t, &n, &cdb, 1024, &[0; 1024]).await, 5, 0x24, 0);
    good(&exec(&t, &n, &cdb, 0, &[]).await);
    // WRITE ATOMIC(16): LBA in bytes 2..10, length in 12..14.
    let mut wa = [0u8; 16];
    wa[0] = 0x9c;
    wa[2..10].copy_from_slice(&9u64.to_be_bytes());
    wa[12..14].copy_from_slice(&2u16.to_be_bytes());
    let d = pattern(11, 1024);
    good(&exec(&t, &n, &wa, 1024, &d).await);
    assert_eq!(&read_blocks(&t, &n, 9, 2).await[..], &d[..]);
    wa[2..10].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    check(&exec(&t, &n, &wa, 1024, &d).await, 5, 0x21, 0);
    // VPD B0 advertises it.
    let r = exec(&t, &n, &[0x12, 1, 0xb0, 0, 255, 0], 255, &[]).await;
    assert!(u32::from_be_bytes(r.data_in[44..48].try_into().unwrap()) > 0);
}

fn xcopy_params(naa: &[u8], segs: &[(u16, u16, u16, u64, u64)]) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = 1;
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[8..12].copy_from_slice(&((segs.len() * 28) as u32).to_be_bytes());
    let mut t = vec![0u8; 32];
    t[0] = 0xe4;
    t[4] = 0x01; // binary
    t[5] = 0x03; // NAA
    t[7] = naa.len() as u8;
    t[8..8 + naa.len()].copy_from_slice(naa);
    t[29..32].copy_from_slice(&[0, 2, 0]);
    p.extend_from_slice(&t);
    for &(src, dst, n, sl, dl) in segs {
        let mut s = vec![0u8; 28];
        s[0] = 0x02;
        s[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        s[4..6].copy_from_slice(&src.to_be_bytes());
        s[6..8].copy_from_slice(&dst.to_be_bytes());
        s[10..12].copy_from_slice(&n.to_be_bytes());
        s[12..20].copy_from_slice(&sl.to_be_bytes());
        s[20..28].copy_from_slice(&dl.to_be_bytes());
        p.extend_from_slice(&s);
    }
    p
}

fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

#[tokio::test]
async fn extended_copy_block_to_block() {
    let t = target();
    let n = nexus(1);
    // NAA designator from VPD 0x83 (first designator, 16 bytes).
    let r = exec(&t, &n, &[0x12, 1, 0x83, 0, 255, 0], 255, &[]).await;
    let naa = r.data_in[8..24].to_vec();
    let src = pattern(21, 8 * 512);
    write_blocks(&t, &n, 0, &src).await;
    let p = xcopy_params(&naa, &[(0, 0, 8, 0, 100)]);
    good(&exec(&t, &n, &xcopy_cdb(p.len()), p.len() as u32, &p).await);
    assert_eq!(&read_blocks(&t, &n, 100, 8).await[..], &src[..]);
    // The held results of list identifier 1 can be read once.
    let mut cs = [0u8; 16];
    cs[0] = 0x84;
    cs[2] = 1;
    cs[13] = 12;
    let r = exec(&t, &n, &cs, 12, &[]).await;
    good(&r);
    assert_eq!(r.data_in[4], 0x01, "completed without errors");
    assert_eq!(u16::from_be_bytes([r.data_in[5], r.data_in[6]]), 1);
    assert_eq!(
        u32::from_be_bytes(r.data_in[8..12].try_into().unwrap()),
        8 * 512
    );
    check(&exec(&t, &n, &cs, 12, &[]).await, 5, 0x24, 0);
    // Truncated parameter list, bad index, beyond capacity, unknown designator.
    check(
        &exec(&t, &n, &xcopy_cdb(40), 40, &p[..40]).await,
        5,
        0x1a,
        0,
    );
    let p = xcopy_params(&naa, &[(0, 1, 8, 0, 100)]);
    check(
        &exec(&t, &n, &xcopy_cdb(p.len()), p.len() as u32, &p).await,
        0x0a,
        0x08,
        0x04,
    );
    let p = xcopy_params(&naa, &[(0, 0, 8, 0, BLOCKS - 1)]);
    check(
        &exec(&t, &n, &xcopy_cdb(p.len()), p.len() as u32, &p).await,
        0x0a,
        0x0d,
        0x02,
    );
    let p = xcopy_params(&[0x60; 16], &[(0, 0, 8, 0, 100)]);
    check(
        &exec(&t, &n, &xcopy_cdb(p.len()), p.len() as u32, &p).await,
        0x0a,
        0x08,
        0x04,
    );
    // Too many segment descriptors.
    let p = xcopy_params(&naa, &[(0, 0, 1, 0, 100); 9]);
    check(
        &exec(&t, &n, &xcopy_cdb(p.len()), p.len() as u32, &p).await,
        5,
        0x26,
        0x08,
    );
    // Empty parameter list is a no-op.
    good(&exec(&t, &n, &xcopy_cdb(0), 0, &[]).await);
    // Operating parameters list the implemented descriptor types.
    let mut c = [0u8; 16];
    c[0] = 0x84;
    c[1] = 0x03;
    c[13] = 255;
    let r = exec(&t, &n, &c, 255, &[]).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize + 4,
        d.len()
    );
    assert_eq!(&d[44..], &[0x02, 0x0a, 0xe4]);
}

/// A backend whose reads fail with EIO and whose writes fail with ENOSPC.
struct Failing;

#[async_trait::async_trait]
impl drbd_like_sync::storage::BlockBackend for Failing {
    fn size(&self) -> u64 {
        BLOCKS * 512
    }
    fn engine_name(&self) -> &'static str {
        "failing"
    }
    async fn read(
        &self,
        _: u64,
        _: usize,
    ) -> Result<bytes::Bytes, drbd_like_sync::storage::StorageError> {
        Err(drbd_like_sync::storage::StorageError::from_io(
            "read",
            std::io::Error::from_raw_os_error(libc::EIO),
        ))
    }
    async fn write(
        &self,
        _: u64,
        _: bytes::Bytes,
        _: bool,
    ) -> Result<(), drbd_like_sync::storage::StorageError> {
        Err(drbd_like_sync::storage::StorageError::from_io(
            "write",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ))
    }
    async fn flush(&self) -> Result<(), drbd_like_sync::storage::StorageError> {
        Err(drbd_like_sync::storage::StorageError::from_io(
            "flush",
            std::io::Error::from_raw_os_error(libc::EIO),
        ))
    }
    async fn discard(&self, _: u64, _: u64) -> Result<(), drbd_like_sync::storage::StorageError> {
        Ok(())
    }
    async fn write_zeroes(
        &self,
        _: u64,
        _: u64,
        _: bool,
    ) -> Result<(), drbd_like_sync::storage::StorageError> {
        Ok(())
    }
    async fn allocation(
        &self,
        _: u64,
    ) -> Result<(bool, u64), drbd_like_sync::storage::StorageError> {
        Ok((true, 512))
    }
}

#[tokio::test]
async fn storage_errors_map_to_sense() {
    let t = iscsi_target::scsi::ScsiTarget::new("t");
    let lu =
        iscsi_target::scsi::LogicalUnit::new(LunConfig::new("F"), std::sync::Arc::new(Failing))
            .unwrap();
    t.add_lun(0, std::sync::Arc::new(lu));
    let n = nexus(1);
    check(&exec(&t, &n, &read10(0, 1), 512, &[]).await, 3, 0x11, 0);
    check(
        &exec(&t, &n, &write10(0, 1, false), 512, &[0; 512]).await,
        7,
        0x27,
        0x07,
    );
    check(
        &exec(&t, &n, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]).await,
        3,
        0x0c,
        0,
    );
}

/// A memory backend whose reads at byte `gated` wait until the test opens
/// the gate: a COMPARE AND WRITE there stalls inside its exclusive section.
struct GatedReads {
    inner: drbd_like_sync::storage::MemoryBackend,
    gated: u64,
    reached: tokio::sync::Notify,
    open: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl drbd_like_sync::storage::BlockBackend for GatedReads {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn engine_name(&self) -> &'static str {
        "gated"
    }
    async fn read(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<bytes::Bytes, drbd_like_sync::storage::StorageError> {
        if offset == self.gated {
            self.reached.notify_one();
            let _p = self.open.acquire().await;
        }
        self.inner.read(offset, len).await
    }
    async fn write(
        &self,
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    ) -> Result<(), drbd_like_sync::storage::StorageError> {
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), drbd_like_sync::storage::StorageError> {
        self.inner.flush().await
    }
    async fn discard(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<(), drbd_like_sync::storage::StorageError> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), drbd_like_sync::storage::StorageError> {
        self.inner.write_zeroes(offset, len, unmap).await
    }
    async fn allocation(
        &self,
        offset: u64,
    ) -> Result<(bool, u64), drbd_like_sync::storage::StorageError> {
        self.inner.allocation(offset).await
    }
}

/// COMPARE AND WRITE holds only its own blocks (SBC-3 5.2): while one is
/// stalled between its read and its write, a WRITE elsewhere on the LU
/// completes, and a WRITE to its block waits and lands after it. (With a
/// lock over the whole LU the first WRITE would wait too.)
#[tokio::test]
async fn compare_and_write_holds_only_its_own_blocks() {
    use std::sync::Arc;
    use std::time::Duration;
    let backend = Arc::new(GatedReads {
        inner: drbd_like_sync::storage::MemoryBackend::new(BLOCKS * u64::from(BS)),
        gated: 7 * u64::from(BS),
        reached: tokio::sync::Notify::new(),
        open: tokio::sync::Semaphore::new(0),
    });
    let lu = Arc::new(
        iscsi_target::scsi::LogicalUnit::new(
            iscsi_target::scsi::LunConfig::new("GATED"),
            Arc::clone(&backend) as Arc<dyn drbd_like_sync::storage::BlockBackend>,
        )
        .unwrap(),
    );
    let t = Arc::new(iscsi_target::scsi::ScsiTarget::new(
        "iqn.2024-01.test:target",
    ));
    t.add_lun(0, lu);
    let n = nexus(1);
    let new = pattern(2, 512);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&7u64.to_be_bytes());
    cdb[13] = 1;
    let mut buf = vec![0u8; 512]; // the block is all zeroes: compare matches
    buf.extend_from_slice(&new);
    let caw = {
        let (t, n) = (Arc::clone(&t), n.clone());
        tokio::spawn(async move { exec(&t, &n, &cdb, 1024, &buf).await })
    };
    backend.reached.notified().await; // the CAW holds block 7 and waits

    // Elsewhere on the LU: not held up.
    let far = tokio::time::timeout(
        Duration::from_secs(10),
        exec(&t, &n, &write10(100, 1, false), 512, &pattern(3, 512)),
    )
    .await
    .expect("a write to another block waited for the COMPARE AND WRITE");
    good(&far);

    // The CAW's own block: waits until the CAW is done, then lands last.
    let near = {
        let (t, n) = (Arc::clone(&t), n.clone());
        tokio::spawn(
            async move { exec(&t, &n, &write10(7, 1, false), 512, &pattern(4, 512)).await },
        )
    };
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(
        !near.is_finished(),
        "a write to the CAW's block overtook it"
    );
    backend.open.add_permits(1);
    good(&caw.await.unwrap());
    good(&near.await.unwrap());
    assert_eq!(&read_blocks(&t, &n, 7, 1).await[..], &pattern(4, 512)[..]);
    assert_eq!(&read_blocks(&t, &n, 100, 1).await[..], &pattern(3, 512)[..]);
}
