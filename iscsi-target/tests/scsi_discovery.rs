//! INQUIRY/VPD, READ CAPACITY, REPORT LUNS, REQUEST SENSE, unknown LUNs,
//! MODE SENSE/SELECT, REPORT SUPPORTED OPERATION CODES / TMF, RTPG, UAs.

mod scsi_util;
use bytes::Bytes;
use iscsi_target::scsi::{LunConfig, ScsiRequest, TaskAttr};
use scsi_util::*;

#[tokio::test]
async fn standard_inquiry_and_vpd_pages() {
    let t = target();
    let n = nexus(1);
    let r = exec(&t, &n, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(d[0], 0x00);
    assert_eq!(d[2], 0x06);
    assert_eq!(d[3] & 0x0f, 2);
    assert_eq!(usize::from(d[4]) + 5, d.len());
    assert_eq!(&d[8..13], b"LOCUS");
    // Page list.
    let r = exec(&t, &n, &[0x12, 1, 0x00, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    // Serial.
    let r = exec(&t, &n, &[0x12, 1, 0x80, 0, 255, 0], 255, &[]).await;
    assert_eq!(&r.data_in[4..], b"SER0001");
    // Device identification: NAA first, then T10, relative port, TPG, name.
    let r = exec(&t, &n, &[0x12, 1, 0x83, 0, 255, 0], 255, &[]).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(d[1], 0x83);
    assert_eq!(d[5] & 0x0f, 3, "NAA designator");
    assert_eq!(d[8] >> 4, 6, "NAA 6");
    let mut p = 4;
    let mut types = Vec::new();
    while p + 4 <= d.len() {
        types.push(d[p + 1] & 0x0f);
        p += 4 + usize::from(d[p + 3]);
    }
    assert_eq!(types, vec![3, 1, 4, 5, 8]);
    // Block limits.
    let r = exec(&t, &n, &[0x12, 1, 0xb0, 0, 255, 0], 255, &[]).await;
    let d = &r.data_in;
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 0x3c);
    assert!(d[5] > 0, "MAXIMUM COMPARE AND WRITE LENGTH");
    assert!(
        u32::from_be_bytes([d[20], d[21], d[22], d[23]]) > 0,
        "MAX UNMAP LBA COUNT"
    );
    // Logical block provisioning.
    let r = exec(&t, &n, &[0x12, 1, 0xb2, 0, 255, 0], 255, &[]).await;
    assert_eq!(r.data_in[5] & 0xe0, 0xe0, "LBPU LBPWS LBPWS10");
    assert_eq!(r.data_in[6] & 0x07, 2, "thin");
    // Bad page, page code without EVPD.
    check(
        &exec(&t, &n, &[0x12, 1, 0x99, 0, 255, 0], 255, &[]).await,
        5,
        0x24,
        0,
    );
    check(
        &exec(&t, &n, &[0x12, 0, 0x80, 0, 255, 0], 255, &[]).await,
        5,
        0x24,
        0,
    );
    // Truncation to the allocation length.
    let r = exec(&t, &n, &[0x12, 0, 0, 0, 5, 0], 5, &[]).await;
    assert_eq!(r.data_in.len(), 5);
}

#[tokio::test]
async fn capacity() {
    let t = target();
    let n = nexus(1);
    let r = exec(&t, &n, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, &[]).await;
    good(&r);
    assert_eq!(&r.data_in[..], &[0, 0, 0x07, 0xff, 0, 0, 2, 0]);
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    let r = exec(&t, &n, &c, 32, &[]).await;
    good(&r);
    assert_eq!(
        u64::from_be_bytes(r.data_in[0..8].try_into().unwrap()),
        BLOCKS - 1
    );
    assert_eq!(r.data_in[14] & 0x80, 0x80, "LBPME");
    assert_eq!(
        r.data_in[13] & 0x0f,
        0,
        "one logical block per physical block"
    );
    let mut cfg = LunConfig::new("512e");
    cfg.physical_block_exponent = 3;
    let r = exec(&target_with(cfg), &n, &c, 32, &[]).await;
    assert_eq!(
        r.data_in[13] & 0x0f,
        3,
        "8 logical blocks per physical block"
    );
    let mut cfg = LunConfig::new("thick");
    cfg.thin = false;
    cfg.logical_block_size = 4096;
    let t2 = target_with(cfg);
    let r = exec(&t2, &n, &c, 32, &[]).await;
    assert_eq!(r.data_in[14] & 0x80, 0);
    assert_eq!(&r.data_in[8..12], &4096u32.to_be_bytes());
}

#[tokio::test]
async fn unknown_lun_handling() {
    let t = target();
    let n = nexus(1);
    let req = |cdb: &[u8], len| ScsiRequest {
        lun: 5,
        cdb: Bytes::copy_from_slice(cdb),
        expected_len: len,
        data_out: Bytes::new(),
        attr: TaskAttr::Simple,
        zero_copy: false,
    };
    let r = t.execute(&n, req(&[0x12, 0, 0, 0, 36, 0], 36)).await;
    good(&r);
    assert_eq!(r.data_in[0], 0x7f);
    let r = t.execute(&n, req(&[0x00, 0, 0, 0, 0, 0], 0)).await;
    check(&r, 5, 0x25, 0);
    let r = t.execute(&n, req(&[0xd9, 0, 0, 0, 0, 0], 0)).await;
    check(&r, 5, 0x25, 0);
    let r = t.execute(&n, req(&[0x03, 0, 0, 0, 18, 0], 18)).await;
    good(&r);
    assert_eq!((r.data_in[2], r.data_in[12]), (5, 0x25));
    // REPORT LUNS on any LUN lists the configured ones.
    good(&exec(&t, &n, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    t.add_lun(300, lu_with(LunConfig::new("B")));
    let r = t
        .execute(&n, req(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256))
        .await;
    good(&r);
    assert_eq!(&r.data_in[0..4], &16u32.to_be_bytes());
    assert_eq!(&r.data_in[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&r.data_in[16..24], &[0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    // LUN 0's nexus learns about the new LUN; REPORT LUNS clears the UA.
    let on0 = |cdb: &[u8], len| ScsiRequest {
        lun: 0,
        cdb: Bytes::copy_from_slice(cdb),
        expected_len: len,
        data_out: Bytes::new(),
        attr: TaskAttr::Simple,
        zero_copy: false,
    };
    let r = t.execute(&n, on0(&[0, 0, 0, 0, 0, 0], 0)).await;
    check(&r, 6, 0x3f, 0x0e);
    t.remove_lun(300);
    good(
        &t.execute(&n, on0(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256))
            .await,
    );
    good(&t.execute(&n, on0(&[0, 0, 0, 0, 0, 0], 0)).await);
    let r = t
        .execute(&n, req(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256))
        .await;
    assert_eq!(&r.data_in[0..4], &8u32.to_be_bytes());
}

#[tokio::test]
async fn mode_sense_and_select() {
    let t = target();
    let (a, b) = (nexus(1), nexus(2));
    good(&exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    // All pages, current values.
    let r = exec(&t, &a, &[0x1a, 0, 0x3f, 0, 255, 0], 255, &[]).await;
    good(&r);
    let d = r.data_in.clone();
    assert_eq!(usize::from(d[0]) + 1, d.len());
    assert_eq!(d[3], 8, "block descriptor");
    let pages = &d[12..];
    assert_eq!(pages[0], 0x08);
    assert_eq!(pages[2] & 0x04, 0x04, "WCE");
    // Caching page only, DBD, MODE SENSE(10).
    let r = exec(&t, &a, &[0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], 255, &[]).await;
    good(&r);
    assert_eq!(r.data_in.len(), 8 + 20);
    // Changeable: only WCE.
    let r = exec(&t, &a, &[0x1a, 0x08, 0x48, 0, 255, 0], 255, &[]).await;
    assert_eq!(r.data_in[4 + 2], 0x04);
    // Saved values are not supported.
    check(
        &exec(&t, &a, &[0x1a, 0, 0xc8, 0, 255, 0], 255, &[]).await,
        5,
        0x39,
        0,
    );
    // Unknown page.
    check(
        &exec(&t, &a, &[0x1a, 0, 0x19, 0, 255, 0], 255, &[]).await,
        5,
        0x24,
        0,
    );
    // MODE SELECT(6): clear WCE.
    let mut page = vec![0u8, 0, 0, 0];
    let mut caching = vec![0u8; 20];
    caching[0] = 0x08;
    caching[1] = 18;
    page.extend_from_slice(&caching);
    good(
        &exec(
            &t,
            &a,
            &[0x15, 0x10, 0, 0, page.len() as u8, 0],
            page.len() as u32,
            &page,
        )
        .await,
    );
    let r = exec(&t, &a, &[0x1a, 0x08, 0x08, 0, 255, 0], 255, &[]).await;
    assert_eq!(r.data_in[4 + 2] & 0x04, 0, "WCE cleared");
    // The other nexus gets MODE PARAMETERS CHANGED once.
    check(
        &exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x2a,
        0x01,
    );
    good(&exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    // Writes still work with WCE=0 (they become FUA).
    write_blocks(&t, &a, 0, &[9; 512]).await;
    // Changing a non-changeable bit is rejected.
    page[4 + 2] = 0x01; // RCD
    check(
        &exec(
            &t,
            &a,
            &[0x15, 0x10, 0, 0, page.len() as u8, 0],
            page.len() as u32,
            &page,
        )
        .await,
        5,
        0x26,
        0,
    );
    // SP=1 is rejected.
    check(
        &exec(&t, &a, &[0x15, 0x11, 0, 0, 0, 0], 0, &[]).await,
        5,
        0x24,
        0,
    );
}

#[tokio::test]
async fn report_supported_opcodes_all_options() {
    let t = target();
    let n = nexus(1);
    let mut c = [0u8; 12];
    c[0] = 0xa3;
    c[1] = 0x0c;
    c[6..10].copy_from_slice(&65535u32.to_be_bytes());
    let r = exec(&t, &n, &c, 65535, &[]).await;
    good(&r);
    let d = &r.data_in;
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len + 4, d.len());
    assert_eq!(len % 8, 0);
    let descs: Vec<(u8, u16, bool)> = d[4..]
        .chunks(8)
        .map(|x| (x[0], u16::from_be_bytes([x[2], x[3]]), x[5] & 1 != 0))
        .collect();
    assert!(descs.contains(&(0x28, 0, false)));
    assert!(descs.contains(&(0x9e, 0x10, true)));
    // Every reported command can be queried on its own, with its usage data.
    for (op, sa, servactv) in descs {
        let mut one = c;
        one[2] = if servactv { 2 } else { 1 };
        one[3] = op;
        one[4..6].copy_from_slice(&sa.to_be_bytes());
        let r = exec(&t, &n, &one, 65535, &[]).await;
        good(&r);
        assert_eq!(
            r.data_in[1] & 0x07,
            3,
            "supported {op:#x}/{sa:#x} {:?}",
            &r.data_in[..8]
        );
        assert_eq!(r.data_in[4], op);
        // The wrong reporting option is an invalid field.
        one[2] = if servactv { 1 } else { 2 };
        check(&exec(&t, &n, &one, 65535, &[]).await, 5, 0x24, 0);
    }
    // RCTD adds timeout descriptors.
    c[2] = 0x80;
    let r = exec(&t, &n, &c, 65535, &[]).await;
    assert_eq!((r.data_in.len() - 4) % 20, 0);
    // Unsupported opcode: SUPPORT 001b.
    let mut one = c;
    one[2] = 1;
    one[3] = 0xd9;
    let r = exec(&t, &n, &one, 65535, &[]).await;
    assert_eq!(r.data_in[1] & 0x07, 1);
    // TMF.
    let mut tmf = [0u8; 12];
    tmf[0] = 0xa3;
    tmf[1] = 0x0d;
    tmf[9] = 16;
    let r = exec(&t, &n, &tmf, 16, &[]).await;
    good(&r);
    assert_eq!(r.data_in[0] & 0x08, 0x08, "LURS");
    // RTPG.
    let mut rtpg = [0u8; 12];
    rtpg[0] = 0xa3;
    rtpg[1] = 0x0a;
    rtpg[9] = 255;
    let r = exec(&t, &n, &rtpg, 255, &[]).await;
    good(&r);
    assert_eq!(r.data_in[4] & 0x0f, 0, "active/optimized");
}

#[tokio::test]
async fn unit_attentions_after_resets() {
    let t = target();
    let (a, b) = (nexus(1), nexus(2));
    good(&exec(&t, &a, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    good(&exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    assert!(t.lun_reset(0, &a));
    assert!(!t.lun_reset(9, &a));
    // Every nexus, the requester included, sees the reset once.
    check(
        &exec(&t, &a, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x29,
        0x03,
    );
    good(&exec(&t, &a, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    // INQUIRY does not consume the UA; REQUEST SENSE does and reports it.
    good(&exec(&t, &b, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await);
    let r = exec(&t, &b, &[0x03, 0, 0, 0, 18, 0], 18, &[]).await;
    good(&r);
    assert_eq!(
        (r.data_in[2], r.data_in[12], r.data_in[13]),
        (6, 0x29, 0x03)
    );
    good(&exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    t.target_reset(&b, false);
    check(&exec(&t, &a, &read10(0, 1), 512, &[]).await, 6, 0x29, 0x00);
    good(&exec(&t, &a, &read10(0, 1), 512, &[]).await);
    check(&exec(&t, &b, &read10(0, 1), 512, &[]).await, 6, 0x29, 0x00);
    good(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
}

#[tokio::test]
async fn read_defect_data_is_empty() {
    let t = target();
    let n = nexus(1);
    let r = exec(&t, &n, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 32, 0], 32, &[]).await;
    good(&r);
    assert_eq!(&r.data_in[..], &[0, 0x18, 0, 0]);
    let r = exec(
        &t,
        &n,
        &[0xb7, 0x0d, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        32,
        &[],
    )
    .await;
    good(&r);
    assert_eq!(r.data_in.len(), 8);
    assert_eq!(r.data_in[1], 0x0d);
}
