//! Persistent reservations with two nexuses, persistence across a reload,
//! and RESERVE/RELEASE(6).

mod scsi_util;
use std::sync::Arc;

use drbd_like_sync::storage::MemoryBackend;
use iscsi_target::scsi::{LogicalUnit, LunConfig, ScsiTarget};
use scsi_util::*;

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const REG_IGNORE: u8 = 6;
const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_AR: u8 = 8;

fn prout_cdb(sa: u8, rtype: u8) -> [u8; 10] {
    [0x5f, sa, rtype, 0, 0, 0, 0, 0, 24, 0]
}

fn prout_params(key: u64, sa_key: u64, aptpl: bool) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    p
}

async fn prout(
    t: &ScsiTarget,
    n: &scsi_util_nexus::N,
    sa: u8,
    rtype: u8,
    key: u64,
    sa_key: u64,
) -> iscsi_target::scsi::ScsiResponse {
    exec(
        t,
        n,
        &prout_cdb(sa, rtype),
        24,
        &prout_params(key, sa_key, false),
    )
    .await
}

mod scsi_util_nexus {
    pub type N = iscsi_target::scsi::Nexus;
}

async fn read_keys(t: &ScsiTarget, n: &scsi_util_nexus::N) -> (u32, Vec<u64>) {
    let r = exec(t, n, &[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], 256, &[]).await;
    good(&r);
    let d = &r.data_in;
    let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    let keys = d[8..8 + len]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (gen, keys)
}

async fn read_reservation(t: &ScsiTarget, n: &scsi_util_nexus::N) -> Option<(u64, u8)> {
    let r = exec(t, n, &[0x5e, 1, 0, 0, 0, 0, 0, 1, 0, 0], 256, &[]).await;
    good(&r);
    let d = &r.data_in;
    if u32::from_be_bytes(d[4..8].try_into().unwrap()) == 0 {
        return None;
    }
    Some((
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        d[21] & 0x0f,
    ))
}

#[tokio::test]
async fn register_reserve_and_access_rules() {
    let t = target();
    let (a, b) = (nexus(1), nexus(2));
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    // Wrong key when registered, non-zero key when not registered.
    conflict(&prout(&t, &a, REGISTER, 0, 0xbad, 0xb).await);
    conflict(&prout(&t, &b, REGISTER, 0, 0x1, 0xb).await);
    good(&prout(&t, &b, REGISTER, 0, 0, 0xb).await);
    let (gen, mut keys) = read_keys(&t, &a).await;
    keys.sort();
    assert_eq!(keys, vec![0xa, 0xb]);
    assert!(gen >= 2);
    // Unregistered nexus cannot reserve; registered can.
    let c = nexus(3);
    conflict(&prout(&t, &c, RESERVE, WE, 0, 0).await);
    good(&prout(&t, &a, RESERVE, WE, 0xa, 0).await);
    assert_eq!(read_reservation(&t, &b).await, Some((0xa, WE)));
    // Write Exclusive: others may read but not write.
    good(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    conflict(&exec(&t, &b, &write10(0, 1, false), 512, &[0; 512]).await);
    conflict(&exec(&t, &c, &write10(0, 1, false), 512, &[0; 512]).await);
    good(&exec(&t, &a, &write10(0, 1, false), 512, &[0; 512]).await);
    // Reserving again with another type conflicts; same type is fine.
    conflict(&prout(&t, &a, RESERVE, EA, 0xa, 0).await);
    good(&prout(&t, &a, RESERVE, WE, 0xa, 0).await);
    // Release with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
    check(&prout(&t, &a, RELEASE, EA, 0xa, 0).await, 5, 0x26, 0x04);
    // Non-holder release is a no-op.
    good(&prout(&t, &b, RELEASE, WE, 0xb, 0).await);
    assert!(read_reservation(&t, &a).await.is_some());
    good(&prout(&t, &a, RELEASE, WE, 0xa, 0).await);
    assert_eq!(read_reservation(&t, &a).await, None);
    // Exclusive Access: others can neither read nor write; INQUIRY still works.
    good(&prout(&t, &a, RESERVE, EA, 0xa, 0).await);
    conflict(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    good(&exec(&t, &b, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await);
    good(&exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await);
    good(&prout(&t, &a, RELEASE, EA, 0xa, 0).await);
    // Registrants-only: registrant b may write, c may only read.
    good(&prout(&t, &a, RESERVE, WE_RO, 0xa, 0).await);
    good(&exec(&t, &b, &write10(0, 1, false), 512, &[0; 512]).await);
    good(&exec(&t, &c, &read10(0, 1), 512, &[]).await);
    conflict(&exec(&t, &c, &write10(0, 1, false), 512, &[0; 512]).await);
    // Holder unregisters: reservation gone, b gets RESERVATIONS RELEASED.
    good(&prout(&t, &a, REGISTER, 0, 0xa, 0).await);
    check(
        &exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x2a,
        0x04,
    );
    assert_eq!(read_reservation(&t, &b).await, None);
    // All registrants: any registrant is a holder.
    good(&prout(&t, &a, REG_IGNORE, 0, 0, 0xaa).await);
    good(&prout(&t, &b, RESERVE, EA_AR, 0xb, 0).await);
    good(&exec(&t, &a, &read10(0, 1), 512, &[]).await);
    conflict(&exec(&t, &c, &read10(0, 1), 512, &[]).await);
    assert_eq!(read_reservation(&t, &a).await, Some((0, EA_AR)));
    // Unsupported parameter list length.
    let r = exec(&t, &a, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 20, 0], 20, &[0; 20]).await;
    check(&r, 5, 0x1a, 0);
}

#[tokio::test]
async fn preempt_and_clear() {
    let t = target();
    let (a, b) = (nexus(1), nexus(2));
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    good(&prout(&t, &b, REGISTER, 0, 0, 0xb).await);
    good(&prout(&t, &a, RESERVE, WE, 0xa, 0).await);
    // b preempts a: a's registration is removed, b holds EA.
    good(&prout(&t, &b, PREEMPT, EA, 0xb, 0xa).await);
    assert_eq!(read_reservation(&t, &b).await, Some((0xb, EA)));
    let (_, keys) = read_keys(&t, &b).await;
    assert_eq!(keys, vec![0xb]);
    check(
        &exec(&t, &a, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x2a,
        0x05,
    );
    conflict(&exec(&t, &a, &read10(0, 1), 512, &[]).await);
    // Preempting a key nobody holds conflicts.
    conflict(&prout(&t, &b, PREEMPT, EA, 0xb, 0x77).await);
    // CLEAR removes everything.
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    good(&prout(&t, &a, CLEAR, 0, 0xa, 0).await);
    assert_eq!(read_keys(&t, &a).await.1, Vec::<u64>::new());
    assert_eq!(read_reservation(&t, &a).await, None);
    check(
        &exec(&t, &b, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x2a,
        0x03,
    );
}

#[tokio::test]
async fn report_capabilities_and_full_status() {
    let t = target();
    let a = nexus(1);
    let r = exec(&t, &a, &[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], 8, &[]).await;
    good(&r);
    assert_eq!(r.data_in[1], 8);
    assert_eq!(r.data_in[4], 0xea);
    assert_eq!(r.data_in[5], 0x01);
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    good(&prout(&t, &a, RESERVE, WE, 0xa, 0).await);
    let r = exec(&t, &a, &[0x5e, 3, 0, 0, 0, 0, 0, 4, 0, 0], 1024, &[]).await;
    good(&r);
    let d = &r.data_in;
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 0xa);
    assert_eq!(d[20] & 1, 1, "R_HOLDER");
    assert_eq!(d[21], WE);
    let tid_len = u32::from_be_bytes(d[28..32].try_into().unwrap()) as usize;
    assert_eq!(&d[32..32 + tid_len], &a.transport_id[..]);
}

#[tokio::test]
async fn reservations_persist_across_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun0.pr");
    let backend = Arc::new(MemoryBackend::new(BLOCKS * 512));
    let mut cfg = LunConfig::new("PERSIST");
    cfg.pr_path = Some(path.clone());
    let (a, b) = (nexus(1), nexus(2));
    {
        let t = ScsiTarget::new("t");
        t.add_lun(
            0,
            Arc::new(LogicalUnit::new(cfg.clone(), backend.clone()).unwrap()),
        );
        good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
        good(&prout(&t, &b, REGISTER, 0, 0, 0xb).await);
        good(&prout(&t, &a, RESERVE, EA, 0xa, 0).await);
    }
    assert!(path.exists());
    let t = ScsiTarget::new("t");
    t.add_lun(0, Arc::new(LogicalUnit::new(cfg.clone(), backend).unwrap()));
    let (_, mut keys) = read_keys(&t, &a).await;
    keys.sort();
    assert_eq!(keys, vec![0xa, 0xb]);
    assert_eq!(read_reservation(&t, &a).await, Some((0xa, EA)));
    conflict(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    good(&exec(&t, &a, &read10(0, 1), 512, &[]).await);
    // Nexus loss keeps PR state.
    t.nexus_lost(a.id);
    assert_eq!(read_reservation(&t, &b).await, Some((0xa, EA)));
}

#[tokio::test]
async fn reserve6_release6_and_nexus_loss() {
    let t = target();
    let (a, b) = (nexus(1), nexus(2));
    good(&exec(&t, &a, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await);
    good(&exec(&t, &a, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await);
    conflict(&exec(&t, &b, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await);
    conflict(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    good(&exec(&t, &b, &[0x12, 0, 0, 0, 36, 0], 36, &[]).await);
    // RELEASE from a non-holder is a no-op.
    good(&exec(&t, &b, &[0x17, 0, 0, 0, 0, 0], 0, &[]).await);
    conflict(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    t.nexus_lost(a.id);
    good(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    // LU reset clears it too.
    good(&exec(&t, &b, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]).await);
    conflict(&exec(&t, &a, &write10(0, 1, false), 512, &[0; 512]).await);
    assert!(t.lun_reset(0, &a));
    check(
        &exec(&t, &a, &[0, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x29,
        0x03,
    );
    good(&exec(&t, &a, &write10(0, 1, false), 512, &[0; 512]).await);
    // PR registrations make RESERVE(6) conflict.
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    check(
        &exec(&t, &b, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await,
        6,
        0x29,
        0x03,
    );
    conflict(&exec(&t, &b, &[0x16, 0, 0, 0, 0, 0], 0, &[]).await);
}
