//! SANITIZE (SBC-4 5.30) and software write protect (SPC-4 7.5.8) against
//! the memory backend.

mod scsi_util;
use futures::FutureExt;
use iscsi_target::scsi::LunConfig;
use scsi_util::*;

const OVERWRITE: u8 = 0x01;
const BLOCK_ERASE: u8 = 0x02;
const CRYPTO_ERASE: u8 = 0x03;

fn sanitize(sa: u8, immed: bool, plen: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x48;
    c[1] = sa | if immed { 0x80 } else { 0 };
    c[7..9].copy_from_slice(&plen.to_be_bytes());
    c
}

/// OVERWRITE parameter list: one pass of `pattern`.
fn overwrite_params(pattern: &[u8]) -> Vec<u8> {
    let mut p = vec![0x01, 0];
    p.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    p.extend_from_slice(pattern);
    p
}

fn tur() -> [u8; 6] {
    [0; 6]
}

/// A Control mode page (0Ah) for MODE SELECT(6), SWP as given.
fn control_page(swp: bool) -> Vec<u8> {
    let mut p = vec![0u8; 4 + 12];
    p[4] = 0x0a;
    p[5] = 10;
    p[4 + 3] = 0x10;
    p[4 + 4] = if swp { 0x08 } else { 0 };
    p[4 + 5] = 0x40; // TAS, as the current page has it
    p[4 + 8] = 0xff;
    p[4 + 9] = 0xff;
    p
}

#[tokio::test]
async fn overwrite_writes_the_pattern_on_every_block() {
    let t = target();
    let n = nexus(1);
    write_blocks(&t, &n, 0, &pattern(3, 4096)).await;
    let p = overwrite_params(&[0xde, 0xad, 0xbe, 0xef]);
    good(
        &exec(
            &t,
            &n,
            &sanitize(OVERWRITE, false, p.len() as u16),
            p.len() as u32,
            &p,
        )
        .await,
    );
    for lba in [0u32, (BLOCKS - 8) as u32] {
        let back = read_blocks(&t, &n, lba, 8).await;
        for c in back.chunks(4) {
            assert_eq!(c, [0xde, 0xad, 0xbe, 0xef]);
        }
    }
    // PARAMETER LIST LENGTH below 5 or above block size + 4; OVERWRITE
    // COUNT 0; a pattern longer than a block.
    for plen in [0u16, 4, BS as u16 + 5] {
        let data = vec![0u8; usize::from(plen)];
        let r = exec(
            &t,
            &n,
            &sanitize(OVERWRITE, false, plen),
            plen.into(),
            &data,
        )
        .await;
        check(&r, 5, 0x24, 0);
    }
    let mut zero_count = p.clone();
    zero_count[0] = 0;
    let r = exec(&t, &n, &sanitize(OVERWRITE, false, 8), 8, &zero_count).await;
    check(&r, 5, 0x26, 0);
}

#[tokio::test]
async fn block_erase_deallocates_and_crypto_erase_is_refused() {
    let t = target();
    let n = nexus(1);
    write_blocks(&t, &n, 0, &pattern(5, 4096)).await;
    good(&exec(&t, &n, &sanitize(BLOCK_ERASE, false, 0), 0, &[]).await);
    assert!(read_blocks(&t, &n, 0, 8).await.iter().all(|&b| b == 0));
    // GET LBA STATUS: one deallocated extent over the whole LU.
    let mut gls = [0u8; 16];
    gls[0] = 0x9e;
    gls[1] = 0x12;
    gls[10..14].copy_from_slice(&24u32.to_be_bytes());
    let r = exec(&t, &n, &gls, 24, &[]).await;
    good(&r);
    assert_eq!(r.data_in[8 + 12], 1, "deallocated");
    check(
        &exec(&t, &n, &sanitize(BLOCK_ERASE, false, 8), 8, &[0; 8]).await,
        5,
        0x24,
        0,
    );
    check(
        &exec(&t, &n, &sanitize(CRYPTO_ERASE, false, 0), 0, &[]).await,
        5,
        0x24,
        0,
    );
}

/// The operation goes on when its command is dropped (aborted), and until
/// it ends every command but INQUIRY, REPORT LUNS and REQUEST SENSE gets
/// NOT READY, SANITIZE IN PROGRESS.
#[tokio::test]
async fn sanitize_outlives_its_command_and_holds_off_other_commands() {
    // Unpaced: the wait below counts yields of this runtime, not time.
    let mut cfg = LunConfig::new("SER0001");
    cfg.sanitize_rate = 0;
    let t = target_with(cfg);
    let n = nexus(1);
    write_blocks(&t, &n, 0, &pattern(7, 4096)).await;
    let p = overwrite_params(&[0x5a]);
    {
        let cdb = sanitize(OVERWRITE, false, 5);
        let cmd = exec(&t, &n, &cdb, 5, &p);
        // One poll starts the operation; dropping the future aborts the command.
        assert!(
            cmd.now_or_never().is_none(),
            "the operation cannot be done yet"
        );
    }
    check(&exec(&t, &n, &tur(), 0, &[]).await, 2, 0x04, 0x1b);
    check(&exec(&t, &n, &read10(0, 1), 512, &[]).await, 2, 0x04, 0x1b);
    good(&exec(&t, &n, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await);
    let sense = exec(&t, &n, &[0x03, 0, 0, 0, 18, 0], 18, &[]).await;
    good(&sense);
    assert_eq!(
        (sense.data_in[2], sense.data_in[12], sense.data_in[13]),
        (2, 0x04, 0x1b)
    );
    // The single-threaded test runtime runs the operation once this task yields.
    for _ in 0..1000 {
        if exec(&t, &n, &tur(), 0, &[]).await.status == iscsi_target::scsi::ScsiStatus::GOOD {
            break;
        }
        tokio::task::yield_now().await;
    }
    good(&exec(&t, &n, &tur(), 0, &[]).await);
    assert!(read_blocks(&t, &n, 0, 8).await.iter().all(|&b| b == 0x5a));
}

/// SWP is changeable with MODE SELECT; while set, writes and SANITIZE get
/// DATA PROTECT / WRITE PROTECTED, MODE SENSE shows WP, and the other
/// nexuses get MODE PARAMETERS CHANGED.
#[tokio::test]
async fn software_write_protect_refuses_writes() {
    let t = target();
    let a = nexus(1);
    let b = nexus(2);
    good(&exec(&t, &b, &tur(), 0, &[]).await);
    // Changeable values of the Control page: SWP (byte 4 bit 3).
    let r = exec(&t, &a, &[0x1a, 0x08, 0x4a, 0, 255, 0], 255, &[]).await;
    good(&r);
    assert_eq!(r.data_in[4 + 4] & 0x08, 0x08, "SWP is changeable");
    let on = control_page(true);
    good(
        &exec(
            &t,
            &a,
            &[0x15, 0x10, 0, 0, on.len() as u8, 0],
            on.len() as u32,
            &on,
        )
        .await,
    );
    check(&exec(&t, &b, &tur(), 0, &[]).await, 6, 0x2a, 0x01);
    let r = exec(&t, &a, &write10(0, 1, false), 512, &[1; 512]).await;
    check(&r, 7, 0x27, 0);
    let p = overwrite_params(&[1]);
    check(
        &exec(&t, &a, &sanitize(OVERWRITE, false, 5), 5, &p).await,
        7,
        0x27,
        0,
    );
    check(
        &exec(&t, &a, &sanitize(BLOCK_ERASE, false, 0), 0, &[]).await,
        7,
        0x27,
        0,
    );
    let r = exec(&t, &a, &[0x1a, 0x08, 0x0a, 0, 255, 0], 255, &[]).await;
    good(&r);
    assert_eq!(
        r.data_in[2] & 0x80,
        0x80,
        "WP in the device-specific parameter"
    );
    assert_eq!(r.data_in[4 + 4] & 0x08, 0x08, "SWP reads back");
    let off = control_page(false);
    good(
        &exec(
            &t,
            &a,
            &[0x15, 0x10, 0, 0, off.len() as u8, 0],
            off.len() as u32,
            &off,
        )
        .await,
    );
    good(&exec(&t, &a, &write10(0, 1, false), 512, &[1; 512]).await);
}

/// OVERWRITE keeps to `sanitize_rate` (on a paused clock, the time it takes
/// is exactly its pacing): 1 MiB at 256 KiB/s takes 4 s, unpaced no time.
#[tokio::test(start_paused = true)]
async fn overwrite_is_paced_at_the_sanitize_rate() {
    for (rate, secs) in [(256u64 << 10, 4u64), (0, 0)] {
        let mut cfg = LunConfig::new("PACED");
        cfg.sanitize_rate = rate;
        let t = target_with(cfg);
        let n = nexus(1);
        let p = overwrite_params(&[0x5a]);
        let start = tokio::time::Instant::now();
        good(
            &exec(
                &t,
                &n,
                &sanitize(OVERWRITE, false, p.len() as u16),
                p.len() as u32,
                &p,
            )
            .await,
        );
        assert_eq!(start.elapsed().as_secs(), secs, "rate {rate}");
        assert_eq!(&read_blocks(&t, &n, 0, 1).await[..4], &[0x5a; 4]);
    }
}
