//! Persistent reservations with two nexuses, persistence across a reload,
//! and RESERVE/RELEASE(6).

mod gated;
mod scsi_util;
use std::sync::Arc;

use drbd_like_sync::storage::MemoryBackend;
use gated::GatedWrites;
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

const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_AND_MOVE: u8 = 7;

/// a holds a Registrants Only reservation, b (registered) has a write in
/// flight, and a preempts b's key with `service_action`. Returns the status
/// b's write ends with, and what b's next command gets.
async fn preempt_during_a_write(service_action: u8) -> (u8, iscsi_target::scsi::ScsiResponse) {
    let backend = Arc::new(GatedWrites::new(BLOCKS * 512, None));
    let t = Arc::new(ScsiTarget::new("iqn.2024-01.test:target"));
    let lu = LogicalUnit::new(LunConfig::new("SERPA01"), backend.clone()).unwrap();
    t.add_lun(0, Arc::new(lu));
    let (a, b) = (nexus(1), nexus(2));
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    good(&prout(&t, &b, REGISTER, 0, 0, 0xb).await);
    good(&prout(&t, &a, RESERVE, WE_RO, 0xa, 0).await);
    let writer = {
        let (t, b) = (t.clone(), b.clone());
        tokio::spawn(async move { exec(&t, &b, &write10(8, 1, false), 512, &[7; 512]).await })
    };
    backend.reached().await;
    good(&prout(&t, &a, service_action, WE_RO, 0xa, 0xb).await);
    backend.open();
    let status = writer.await.expect("writer task").status.0;
    let next = exec(&t, &b, &write10(8, 1, false), 512, &[8; 512]).await;
    (status, next)
}

/// SPC-4 5.13.11.2.4: PREEMPT AND ABORT also aborts the preempted nexus's
/// tasks; with TAS=1 (Control mode page) they end with TASK ABORTED. A plain
/// PREEMPT leaves them alone. Either way b then learns it was preempted.
#[tokio::test]
async fn preempt_and_abort_aborts_the_preempted_nexus_tasks() {
    let (status, next) = preempt_during_a_write(PREEMPT).await;
    assert_eq!(status, 0x00, "PREEMPT does not abort b's write");
    check(&next, 6, 0x2a, 0x05);

    let (status, next) = preempt_during_a_write(PREEMPT_AND_ABORT).await;
    assert_eq!(
        status, 0x40,
        "PREEMPT AND ABORT ends b's write with TASK ABORTED"
    );
    check(&next, 6, 0x2a, 0x05);

    // TAS is reported in the Control mode page (SPC-4 7.5.8).
    let t = target();
    let r = exec(&t, &nexus(1), &[0x1a, 0x08, 0x0a, 0, 255, 0], 255, &[]).await;
    good(&r);
    assert_eq!(r.data_in[4], 0x0a, "the Control page follows the header");
    assert_eq!(r.data_in[4 + 5] & 0x40, 0x40, "TAS set");
}

/// An iSCSI TransportID, format 01b (SPC-4 7.6.4.6), of `nexus(id)`'s port.
fn transport_id(id: u64) -> Vec<u8> {
    let port = nexus(id).initiator_port;
    let len = (port.len() + 1).div_ceil(4) * 4;
    let mut tid = vec![0x45, 0];
    tid.extend_from_slice(&(len as u16).to_be_bytes());
    tid.extend_from_slice(port.as_bytes());
    tid.resize(4 + len, 0);
    tid
}

fn move_params(key: u64, sa_key: u64, unreg: bool, rel_port: u16, tid: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[17] = if unreg { 0x02 } else { 0 };
    p[18..20].copy_from_slice(&rel_port.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

async fn register_and_move(
    t: &ScsiTarget,
    n: &scsi_util_nexus::N,
    params: &[u8],
) -> iscsi_target::scsi::ScsiResponse {
    let mut cdb = [0x5f, REGISTER_AND_MOVE, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[5..9].copy_from_slice(&(params.len() as u32).to_be_bytes());
    exec(t, n, &cdb, params.len() as u32, params).await
}

/// SPC-4 5.13.8: the holder moves its reservation to another I_T nexus,
/// which is registered with the service action key if it was not.
#[tokio::test]
async fn register_and_move_hands_the_reservation_over() {
    let t = target();
    let (a, b, c) = (nexus(1), nexus(2), nexus(3));
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    good(&prout(&t, &c, REGISTER, 0, 0, 0xc).await);
    // No reservation yet: nothing to move.
    conflict(&register_and_move(&t, &a, &move_params(0xa, 0xb, false, 1, &transport_id(2))).await);
    good(&prout(&t, &a, RESERVE, EA, 0xa, 0).await);
    conflict(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    // Only the holder may move it, with its own key.
    conflict(&register_and_move(&t, &c, &move_params(0xc, 0xb, false, 1, &transport_id(2))).await);
    conflict(
        &register_and_move(&t, &a, &move_params(0xbad, 0xb, false, 1, &transport_id(2))).await,
    );
    // Bad destinations and keys.
    check(
        &register_and_move(&t, &a, &move_params(0xa, 0, false, 1, &transport_id(2))).await,
        5,
        0x26,
        0x00,
    );
    check(
        &register_and_move(&t, &a, &move_params(0xa, 0xb, false, 1, &transport_id(1))).await,
        5,
        0x26,
        0x00,
    );
    check(
        &register_and_move(&t, &a, &move_params(0xa, 0xb, false, 9, &transport_id(2))).await,
        5,
        0x26,
        0x00,
    );
    let mut short = move_params(0xa, 0xb, false, 1, &transport_id(2));
    short.truncate(30);
    let mut cdb = [0x5f, REGISTER_AND_MOVE, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[5..9].copy_from_slice(&30u32.to_be_bytes());
    check(&exec(&t, &a, &cdb, 30, &short).await, 5, 0x1a, 0x00);

    let (gen, _) = read_keys(&t, &a).await;
    good(&register_and_move(&t, &a, &move_params(0xa, 0xb, false, 1, &transport_id(2))).await);
    // b holds it now, registered with key 0xb; a stays registered.
    assert_eq!(read_reservation(&t, &a).await, Some((0xb, EA)));
    let (gen2, mut keys) = read_keys(&t, &a).await;
    keys.sort();
    assert_eq!(keys, vec![0xa, 0xb, 0xc]);
    assert!(gen2 > gen, "the generation advances");
    good(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
    conflict(&exec(&t, &a, &read10(0, 1), 512, &[]).await);

    // b moves it on to c (already registered, keeps its key) and unregisters.
    good(&register_and_move(&t, &b, &move_params(0xb, 0xbb, true, 1, &transport_id(3))).await);
    assert_eq!(read_reservation(&t, &c).await, Some((0xc, EA)));
    let (_, mut keys) = read_keys(&t, &c).await;
    keys.sort();
    assert_eq!(keys, vec![0xa, 0xc]);
    conflict(&exec(&t, &b, &read10(0, 1), 512, &[]).await);

    // An all-registrants reservation has no holder to move.
    good(&prout(&t, &c, RELEASE, EA, 0xc, 0).await);
    good(&prout(&t, &c, RESERVE, EA_AR, 0xc, 0).await);
    conflict(&register_and_move(&t, &c, &move_params(0xc, 0xb, false, 1, &transport_id(2))).await);
}

/// A PERSISTENT RESERVE OUT whose save is stuck must not stall the other
/// commands of the LU, and a save that fails changes nothing. The save's
/// temp file is made a FIFO: opening it for writing blocks until the test
/// opens the other end, and fsync on a pipe then fails (EINVAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_reservation_save_stalls_no_other_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun0.pr");
    let fifo = path.with_extension("tmp");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other effect.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let mut cfg = LunConfig::new("STUCKPR");
    cfg.pr_path = Some(path.clone());
    let t = Arc::new(ScsiTarget::new("t"));
    let backend = Arc::new(MemoryBackend::new(BLOCKS * 512));
    t.add_lun(0, Arc::new(LogicalUnit::new(cfg, backend).unwrap()));
    let (a, b) = (nexus(1), nexus(2));

    let register = {
        let (t, a) = (t.clone(), a.clone());
        tokio::spawn(async move { prout(&t, &a, REGISTER, 0, 0, 0xa).await })
    };
    // Wait until the save is stuck opening the FIFO: one of our threads is
    // parked in the kernel waiting for the pipe's reader.
    let stuck = async {
        while !a_thread_waits_for_a_fifo_reader() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), stuck)
        .await
        .expect("the REGISTER's save reached the FIFO");
    // While a's REGISTER waits on its save, b's commands run, and see the
    // state before it. The timeout is a bound, not a synchronisation.
    let others = {
        let (t, b) = (t.clone(), b.clone());
        tokio::spawn(async move {
            good(&exec(&t, &b, &write10(0, 1, false), 512, &[1; 512]).await);
            good(&exec(&t, &b, &read10(0, 1), 512, &[]).await);
            read_keys(&t, &b).await
        })
    };
    let Ok(others) = tokio::time::timeout(std::time::Duration::from_secs(20), others).await else {
        // Unstick the save so that the runtime can shut down, then fail.
        let _ = std::fs::read(&fifo);
        panic!("other commands of the LU stalled behind a reservation save");
    };
    let (_, keys) = others.unwrap();
    assert!(
        keys.is_empty(),
        "the registration is not visible before it is saved"
    );
    assert!(!register.is_finished(), "the REGISTER is still saving");

    // Let the save go on: it writes into the pipe, then fsync fails.
    let drain = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).map(|b| b.len()))
    };
    let r = register.await.unwrap();
    check(&r, 5, 0x55, 0x04);
    assert!(
        drain.join().unwrap().unwrap() > 0,
        "the save wrote its JSON"
    );
    let (_, keys) = read_keys(&t, &b).await;
    assert!(keys.is_empty(), "a failed save changes nothing");

    // With a normal temp file the same REGISTER succeeds and persists.
    std::fs::remove_file(&fifo).unwrap();
    good(&prout(&t, &a, REGISTER, 0, 0, 0xa).await);
    assert_eq!(read_keys(&t, &b).await.1, vec![0xa]);
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("\"key\": 10"));
}

/// Whether a thread of this process is blocked opening a FIFO that has no
/// reader yet (the kernel's `wait_for_partner`, in /proc/self/task/*/wchan).
fn a_thread_waits_for_a_fifo_reader() -> bool {
    std::fs::read_dir("/proc/self/task")
        .expect("procfs")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("wchan")).ok())
        .any(|w| w.trim() == "wait_for_partner")
}
