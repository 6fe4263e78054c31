//! WRITE SAME, UNMAP, GET LBA STATUS against the memory backend.

mod scsi_util;
use scsi_util::*;

fn ws16(lba: u64, n: u32, flags: u8) -> [u8; 16] {
    let mut c = rw16(0x93, lba, n);
    c[1] = flags;
    c
}

fn get_lba_status(lba: u64, alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p[0..2].copy_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
    for (lba, n) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

fn unmap_cdb(len: usize) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[tokio::test]
async fn write_same_pattern_and_unmap() {
    let t = target();
    let n = nexus(1);
    let block = pattern(4, 512);
    good(&exec(&t, &n, &ws16(16, 24, 0), 512, &block).await);
    let back = read_blocks(&t, &n, 16, 24).await;
    for c in back.chunks(512) {
        assert_eq!(c, &block[..]);
    }
    // WRITE SAME(10) with UNMAP and zero data deallocates.
    let mut c10 = [0u8; 10];
    c10[0] = 0x41;
    c10[1] = 0x08;
    c10[2..6].copy_from_slice(&16u32.to_be_bytes());
    c10[7..9].copy_from_slice(&24u16.to_be_bytes());
    good(&exec(&t, &n, &c10, 512, &[0; 512]).await);
    assert!(read_blocks(&t, &n, 16, 24).await.iter().all(|&b| b == 0));
    let r = exec(&t, &n, &get_lba_status(16, 24), 24, &[]).await;
    good(&r);
    assert_eq!(r.data_in[8 + 12], 1, "deallocated after WRITE SAME UNMAP");
    // NDOB writes zeroes with no Data-Out.
    write_blocks(&t, &n, 40, &[7; 1024]).await;
    good(&exec(&t, &n, &ws16(40, 2, 0x01 | 0x08), 0, &[]).await);
    assert!(read_blocks(&t, &n, 40, 2).await.iter().all(|&b| b == 0));
    // WRITE SAME(10) with UNMAP deallocates even when the data is not zero.
    write_blocks(&t, &n, 48, &[7; 1024]).await;
    c10[2..6].copy_from_slice(&48u32.to_be_bytes());
    c10[7..9].copy_from_slice(&2u16.to_be_bytes());
    good(&exec(&t, &n, &c10, 512, &[0xff; 512]).await);
    assert!(read_blocks(&t, &n, 48, 2).await.iter().all(|&b| b == 0));
    // Zero blocks (WSNZ = 0): up to the last LBA.
    good(&exec(&t, &n, &ws16(BLOCKS - 4, 0, 0), 512, &block).await);
    for c in read_blocks(&t, &n, (BLOCKS - 4) as u32, 4)
        .await
        .chunks(512)
    {
        assert_eq!(c, &block[..]);
    }
    check(
        &exec(&t, &n, &ws16(BLOCKS, 0, 0), 512, &block).await,
        5,
        0x21,
        0,
    );
    // Above MAXIMUM WRITE SAME LENGTH (on a LU big enough for it).
    let big = iscsi_target::scsi::ScsiTarget::new("big");
    let lu = iscsi_target::scsi::LogicalUnit::new(
        iscsi_target::scsi::LunConfig::new("BIG"),
        std::sync::Arc::new(drbd_like_sync::storage::MemoryBackend::new(1 << 30)),
    )
    .unwrap();
    big.add_lun(0, std::sync::Arc::new(lu));
    check(
        &exec(&big, &n, &ws16(0, (1 << 16) + 1, 0), 512, &block).await,
        5,
        0x24,
        0,
    );
    // Zero blocks beyond MAXIMUM WRITE SAME LENGTH from the LBA to the end.
    check(
        &exec(&big, &n, &ws16(0, 0, 0), 512, &block).await,
        5,
        0x24,
        0,
    );
    // Data-Out must be exactly one block.
    check(
        &exec(&t, &n, &ws16(0, 1, 0), 1024, &[0; 1024]).await,
        5,
        0x24,
        0,
    );
    check(
        &exec(&t, &n, &ws16(0, 1, 0), 256, &[0; 256]).await,
        5,
        0x24,
        0,
    );
    check(
        &exec(&t, &n, &ws16(0, 1, 0x10), 512, &block).await,
        5,
        0x24,
        0,
    );
    check(
        &exec(&t, &n, &ws16(BLOCKS, 1, 0), 512, &block).await,
        5,
        0x21,
        0,
    );
    check(
        &exec(&t, &n, &ws16(BLOCKS + 1, 0, 0), 512, &block).await,
        5,
        0x21,
        0,
    );
}

#[tokio::test]
async fn unmap_then_get_lba_status() {
    let t = target();
    let n = nexus(1);
    write_blocks(&t, &n, 0, &vec![1u8; 64 * 512]).await;
    let r = exec(&t, &n, &get_lba_status(0, 64), 64, &[]).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(d[8 + 12], 0, "mapped");
    assert!(u32::from_be_bytes([d[16], d[17], d[18], d[19]]) >= 64);
    let p = unmap_list(&[(8, 16), (40, 8)]);
    good(&exec(&t, &n, &unmap_cdb(p.len()), p.len() as u32, &p).await);
    let back = read_blocks(&t, &n, 0, 64).await;
    for (i, c) in back.chunks(512).enumerate() {
        let zero = (8..24).contains(&i) || (40..48).contains(&i);
        assert_eq!(c.iter().all(|&b| b == 0), zero, "block {i}");
    }
    let r = exec(&t, &n, &get_lba_status(8, 1024), 1024, &[]).await;
    let d = &r.data_in;
    let plen = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(plen + 4, d.len());
    // First descriptor: LBA 8, deallocated, 16 blocks; then mapped from 24.
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 8);
    assert_eq!(u32::from_be_bytes(d[16..20].try_into().unwrap()), 16);
    assert_eq!(d[20], 1);
    assert_eq!(u64::from_be_bytes(d[24..32].try_into().unwrap()), 24);
    assert_eq!(d[36], 0);
    check(
        &exec(&t, &n, &get_lba_status(BLOCKS, 64), 64, &[]).await,
        5,
        0x21,
        0,
    );
    // Descriptor beyond the end, empty list, short list.
    let p = unmap_list(&[(BLOCKS - 1, 2)]);
    check(
        &exec(&t, &n, &unmap_cdb(p.len()), p.len() as u32, &p).await,
        5,
        0x21,
        0,
    );
    good(&exec(&t, &n, &unmap_cdb(0), 0, &[]).await);
    check(&exec(&t, &n, &unmap_cdb(4), 4, &[0; 4]).await, 5, 0x1a, 0);
}
