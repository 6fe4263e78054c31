//! Resync, verify and their failures end to end (invariant 6,
//! ARCHITECTURE.md): three `locusd` processes, a Redis with AOF fsync
//! always, `qemu-io` through QEMU's libiscsi driver, and `locus image sync`
//! / `locus image verify` as an operator runs them.
//!
//! - catch-up: a node killed with `kill -9` mid-workload comes back, and
//!   `image sync` copies no more than 1.1x what was written while it was
//!   down; every copy is then identical;
//! - sync under load: the initiator keeps writing while the sync runs;
//!   every acknowledged write reads back, and the copies are identical;
//! - resume: the lease holder is killed mid-sync and restarted; the sync
//!   finishes without copying again what had landed;
//! - verify: bytes changed behind Locus's back are found, marked, repaired;
//! - bad input: unknown image or location, no in-sync source, a destination
//!   whose disk fills up mid-sync.

mod cluster;
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster::{
    acks, check, log_of, one_at_a_time, write_behind_locus, Cluster, Entry, Initiator, Layout,
    Workload, GRAIN, IMAGE, IMAGE_BYTES, LIMIT,
};
use common::Run;

/// `locus image sync ARGS --json`, its summary and exit code.
fn sync(c: &Cluster, extra: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec!["--json", "image", "sync", IMAGE];
    args.extend_from_slice(extra);
    let r = c.locus(&args);
    let v = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
    (r, v)
}

fn copied(v: &serde_json::Value, node: &str) -> u64 {
    v["copied_bytes"][node].as_u64().unwrap_or(0)
}

/// Bytes the writes in `entries` cover, each counted once per write (the
/// "bytes written" of the catch-up ratio).
fn written(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.len).sum()
}

fn identical(c: &Cluster, what: &str) {
    let n1 = c.read_copy(0);
    for i in 1..c.nodes.len() {
        let other = c.read_copy(i);
        if n1 != other {
            let first = n1.iter().zip(&other).position(|(a, b)| a != b);
            panic!(
                "{what}: n1 and n{} differ (first at byte {first:?})\n{}",
                i + 1,
                c.logs()
            );
        }
    }
}

#[test]
fn a_returning_node_catches_up_by_copying_only_what_it_missed() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    // The operator resyncs by hand here, so that the bytes are this
    // command's to count.
    c.locus(&["image", "set", IMAGE, "--auto-sync", "off"]).ok();
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_8001,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 100);
    c.kill_node(2);
    let at_kill = w.snapshot().len();
    w.wait_more_acks(&c, 300);
    let entries = w.finish();
    assert!(
        entries.iter().all(|e| e.outcome == cluster::Outcome::Acked),
        "writes failed with one node down\n{}",
        c.logs()
    );
    let down: u64 = written(&entries[at_kill.saturating_sub(1)..]);
    c.start_node(2);
    let started = Instant::now();
    let (r, v) = sync(&c, &[]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, c.logs());
    let got = copied(&v, "n3");
    eprintln!(
        "catch-up: {got} bytes copied for {down} bytes written while n3 was down \
         ({:.3}x) in {:.2}s; UKAI (whole 1 MiB blocks here) and a full rebuild would copy \
         {} and {IMAGE_BYTES}",
        got as f64 / down as f64,
        started.elapsed().as_secs_f64(),
        whole_blocks(&entries[at_kill.saturating_sub(1)..], 1 << 20)
    );
    assert!(got > 0, "nothing was copied: {v}");
    assert!(
        got as f64 <= 1.1 * down as f64,
        "copied {got} bytes for {down} written while down"
    );
    assert_eq!(copied(&v, "n2"), 0, "n2 missed nothing: {v}");
    assert!(c.dirty_grains(2).is_empty(), "n3 still has dirty bits");
    let log = log_of(&entries);
    check(&log, "the LUN at n1", &c.read_lun(0), &BTreeSet::new(), &c);
    c.stop_node(0);
    identical(&c, "after the catch-up");
}

/// What copying whole blocks (UKAI's unit) would cost for these writes.
fn whole_blocks(entries: &[Entry], block: u64) -> u64 {
    let blocks: BTreeSet<u64> = entries
        .iter()
        .flat_map(|e| e.offset / block..(e.offset + e.len).div_ceil(block))
        .collect();
    blocks.len() as u64 * block
}

#[test]
fn a_sync_under_load_keeps_every_acknowledged_write_and_ends_identical() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    c.locus(&["image", "set", IMAGE, "--auto-sync", "off"]).ok();
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_8002,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 50);
    c.kill_node(2);
    w.wait_more_acks(&c, 300);
    c.start_node(2);
    // The sync runs while the same initiator keeps writing everywhere.
    let before = acks(&w.snapshot());
    let (r, v) = sync(&c, &["--rate", "20"]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, c.logs());
    let during = acks(&w.snapshot()) - before;
    let entries = w.finish();
    eprintln!("sync under load: {v} with {during} writes acknowledged meanwhile");
    assert!(during > 0, "no write ran alongside the sync");
    assert!(c.dirty_grains(2).is_empty(), "n3 still has dirty bits");
    let log = log_of(&entries);
    check(&log, "the LUN at n1", &c.read_lun(0), &BTreeSet::new(), &c);
    c.stop_node(0);
    identical(&c, "after a sync under load");
    check(&log, "n3's copy", &c.read_copy(2), &BTreeSet::new(), &c);
}

#[test]
fn a_sync_whose_lease_holder_is_killed_resumes_without_copying_again() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout {
        locations: vec![0, 1],
        ..Layout::all_on_one_site(3)
    });
    c.locus(&["image", "set", IMAGE, "--auto-sync", "off"]).ok();
    // 48 MiB of data for a new location to receive.
    let mut ini = Initiator::open(&c.nodes[0]);
    for i in 0..48u64 {
        let o = ini.write(i << 20, 1 << 20, 1 + i as u8, LIMIT);
        assert_eq!(o, cluster::Outcome::Acked, "{}", c.logs());
    }
    drop(ini);
    c.locus(&["location", "add", IMAGE, "n3"]).ok();
    // A slow sync (8 MB/s: six seconds), followed by `locus` in the
    // background; the holder dies a third of the way in.
    let follower = common::cmd(&c.url, &["--json", "image", "sync", IMAGE, "--rate", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("locus: {e}"));
    // The sync has begun once the new copy's bits are set (begin_sync),
    // and has landed a third once they are down to two thirds.
    let deadline = Instant::now() + LIMIT;
    let mut begun = false;
    loop {
        let left = c.dirty_grains(2).len() as u64 * GRAIN;
        begun |= left > 0;
        if begun && left <= IMAGE_BYTES * 2 / 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sync does not progress ({left} bytes left)\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill_node(0);
    let left_at_kill = c.dirty_grains(2).len() as u64 * GRAIN;
    c.start_node(0);
    let out = follower
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{e}"));
    let r: Run = out.into();
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, c.logs());
    let v = r.json();
    // The resumed run covered at most what was left when the holder died.
    let total = v["total_bytes"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "resume: {left_at_kill} bytes left at the kill, the resumed run covered {total}: {v}"
    );
    assert!(total <= left_at_kill, "copied again what had landed: {v}");
    assert!(c.dirty_grains(2).is_empty());
    c.stop_node(0);
    identical(&c, "after a resumed sync");
}

#[test]
fn verify_finds_bytes_changed_behind_locus_and_sync_repairs_them() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    c.locus(&["image", "set", IMAGE, "--auto-sync", "off"]).ok();
    let mut ini = Initiator::open(&c.nodes[0]);
    for i in 0..8u64 {
        let o = ini.write(i << 20, 1 << 20, 7, LIMIT);
        assert_eq!(o, cluster::Outcome::Acked, "{}", c.logs());
    }
    drop(ini);
    // A few bytes of n2's copy rot, in block 5 (1 MiB blocks), grain 1283.
    let at = (5 << 20) + 3 * GRAIN + 100;
    write_behind_locus(&c.nodes[1].copy_path(), at, 3, 0xee);
    let r = c.locus(&["--json", "image", "verify", IMAGE]);
    assert_eq!(r.code, 7, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    let m = v["mismatches"].as_array().cloned().unwrap_or_default();
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["block"], 5, "{v}");
    assert_eq!(m[0]["offset"], (5 << 20) + 3 * GRAIN, "{v}");
    assert_eq!(m[0]["differ"], serde_json::json!(["n2"]), "{v}");
    assert!(r.stderr.contains("locus image sync"), "{}", r.stderr);
    assert_eq!(
        c.dirty_grains(1),
        BTreeSet::from([(5 << 20) / GRAIN + 3]),
        "exactly the rotten grain is marked"
    );
    let (r, v) = sync(&c, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(copied(&v, "n2"), GRAIN, "{v}");
    c.locus(&["image", "verify", IMAGE]).ok();
    c.stop_node(0);
    identical(&c, "after the repair");
}

#[test]
fn bad_sync_requests_get_clear_errors_and_change_nothing() {
    let _one = one_at_a_time();
    let c = Cluster::start(&Layout {
        locations: vec![0, 1],
        small_disk: Some((2, "2M")),
        ..Layout::all_on_one_site(3)
    });
    c.locus(&["image", "set", IMAGE, "--auto-sync", "off"]).ok();
    // Unknown image, unknown location.
    let r = c.locus(&["image", "sync", "nosuch"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nosuch"), "{}", r.stderr);
    let r = c.locus(&["image", "verify", IMAGE, "--location", "n9"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("n9"), "{}", r.stderr);
    let r = c.locus(&["image", "sync", IMAGE, "--end", "99999"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // 8 MiB of data; then n3 (a 2 MiB disk) is added and synced: it fills
    // up mid-sync. The sync stops, naming the node and the reason.
    let mut ini = Initiator::open(&c.nodes[0]);
    for i in 0..8u64 {
        assert_eq!(
            ini.write(i << 20, 1 << 20, 9, LIMIT),
            cluster::Outcome::Acked
        );
    }
    c.locus(&["location", "add", IMAGE, "n3"]).ok();
    let (r, v) = sync(&c, &[]);
    assert_eq!(r.code, 7, "{}\n{}", r.stdout, r.stderr);
    let err = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("n3") && err.to_lowercase().contains("space"),
        "{v}"
    );
    // Nothing in sync was lost: the writes still read back, n1 and n2 are
    // clean, and n3 stays out-of-sync where it did not land.
    assert!(c.dirty_grains(0).is_empty() && c.dirty_grains(1).is_empty());
    assert!(!c.dirty_grains(2).is_empty());
    for i in 0..8u64 {
        assert_eq!(ini.write(i << 20, 4096, 10, LIMIT), cluster::Outcome::Acked);
    }
    drop(ini);
    let lun = c.read_lun(0);
    assert!(lun[..8 << 20]
        .chunks(1 << 20)
        .all(|ch| ch[0] == 10 && ch[4096] == 9));
    // No in-sync source for a range: both in-sync copies are marked there
    // (as when every copy failed a write). Refused, naming the block.
    c.locus(&["location", "remove", IMAGE, "n3"]).ok();
    c.mark_dirty(&["n1", "n2"], (3 << 20) / GRAIN, (3 << 20) / GRAIN + 2);
    let (r, v) = sync(&c, &[]);
    assert_eq!(r.code, 7, "{}\n{}", r.stdout, r.stderr);
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("no in-sync copy") && err.contains("blocks 3 "),
        "{v}"
    );
    assert_eq!(c.dirty_grains(1).len(), 2, "nothing changed");
}

/// The workflow Locus exists for (README, "Moving a VM's disk to another
/// site"): a copy at the new site, synchronised while the VM writes, the
/// serving target moved there, the old site's copies dropped; every
/// acknowledged write is still there at the end.
#[test]
fn a_disk_moves_to_another_site_under_a_write_workload() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout {
        sites: vec!["tokyo", "tokyo", "osaka"],
        locations: vec![0, 1],
        ..Layout::all_on_one_site(3)
    });
    let show = |r: &Run, cmd: &str| eprintln!("$ locus {cmd}\n{}", r.stdout.trim_end());
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_8006,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 100);
    // 1. A copy at the new site: out of sync until synchronised.
    let r = c.locus(&["location", "add", IMAGE, "n3"]).ok();
    show(&r, "location add vm1 n3");
    // 2. Synchronise it while the VM keeps writing.
    let r = c.locus(&["image", "sync", IMAGE]).ok();
    show(&r, "image sync vm1");
    w.wait_more_acks(&c, 50);
    let r = c.locus(&["image", "info", IMAGE]).ok();
    show(&r, "image info vm1");
    assert!(r.stdout.contains("n3:in-sync"), "{}", r.stdout);
    // 3. Move the serving target: the initiator logs in again at n3.
    let mut entries = w.finish();
    let r = c.locus(&["image", "move", IMAGE, "--to", "n3"]).ok();
    show(&r, "image move vm1 --to n3");
    c.wait_served(2);
    let w = Workload::spawn(
        Initiator::open(&c.nodes[2]),
        0x5eed_8007,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 100);
    // 4. Drop the old site.
    for n in ["n1", "n2"] {
        let r = c.locus(&["location", "remove", IMAGE, n]).ok();
        show(&r, &format!("location remove vm1 {n}"));
    }
    w.wait_more_acks(&c, 50);
    entries.extend(w.finish());
    let r = c.locus(&["image", "info", IMAGE]).ok();
    show(&r, "image info vm1");
    assert!(
        entries.iter().all(|e| e.outcome == cluster::Outcome::Acked),
        "a write failed during the move\n{}",
        c.logs()
    );
    let log = log_of(&entries);
    check(&log, "the LUN at n3", &c.read_lun(2), &BTreeSet::new(), &c);
    c.stop_node(2);
    check(&log, "n3's copy", &c.read_copy(2), &BTreeSet::new(), &c);
}

/// With `auto_sync` on (the default), the lease holder resyncs a node that
/// comes back by itself. (With it off, nothing moves until an operator
/// asks: the catch-up test turns it off and finds every byte still to copy
/// when it runs `image sync`.)
#[test]
fn a_node_that_comes_back_is_resynced_in_the_background() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_8008,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 50);
    c.kill_node(2);
    w.wait_more_acks(&c, 200);
    let entries = w.finish();
    let missed = c.dirty_grains(2).len();
    assert!(missed > 0, "n3 missed nothing");
    c.start_node(2);
    let deadline = Instant::now() + LIMIT;
    while !c.dirty_grains(2).is_empty() {
        assert!(
            Instant::now() < deadline,
            "n3 was not resynced in the background ({} grains left)\n{}",
            c.dirty_grains(2).len(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("background resync: {missed} grains of n3 caught up");
    let log = log_of(&entries);
    c.stop_node(0);
    identical(&c, "after the background resync");
    check(&log, "n3's copy", &c.read_copy(2), &BTreeSet::new(), &c);
}
