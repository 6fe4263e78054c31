//! The mirrored write path across real processes: three `locusd` nodes, a
//! `redis-server` with AOF (`appendfsync always`), and `qemu-io` through
//! QEMU's libiscsi driver as the initiator, with a log of every write it
//! had acknowledged (ARCHITECTURE.md, "Invariants"):
//!
//! - a storage node killed mid-workload costs no write, and its copy is out
//!   of sync on exactly the ranges it missed (invariant 1);
//! - a frozen writer whose lease moved acknowledges nothing more, and none
//!   of its queued writes lands on an in-sync copy (invariant 4);
//! - a writer killed mid-workload reconciles the copies before it serves
//!   again (invariant 5);
//! - reads come from the nearest in-sync copy and fail over without an
//!   error (invariant 3);
//! - Redis killed mid-workload, with a storage node failing while it is
//!   down, loses no acknowledged write and no mark (invariants 1 and 2).
//!
//! The clusters run one at a time: two 3-node clusters on a 2-core machine
//! would starve each other's lease renewals.

mod cluster;
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster::{
    acks, check, grains_of, log_of, one_at_a_time, write_behind_locus, Cluster, Entry, Initiator,
    Layout, Outcome, Rng, Workload, WriteLog, IMAGE, IMAGE_BYTES, LIMIT,
};

/// Stops n1 (which flushes every copy) and n2; then their copies must be
/// identical and hold every acknowledged write, and n3's copy must be right
/// everywhere its `dirty` bits do not cover.
fn check_copies_after_n3_died(c: &mut Cluster, log: &WriteLog, dirty: &BTreeSet<u64>) {
    c.stop_node(0);
    c.stop_node(1);
    let (n1, n2, n3) = (c.read_copy(0), c.read_copy(1), c.read_copy(2));
    assert!(n1 == n2, "the surviving copies differ");
    check(log, "n1's copy", &n1, &BTreeSet::new(), c);
    check(log, "n3's copy outside its dirty bits", &n3, dirty, c);
}

/// Grains in `a` and not in `b`, for a message.
fn missing(a: &BTreeSet<u64>, b: &BTreeSet<u64>) -> Vec<u64> {
    a.difference(b).take(10).copied().collect()
}

#[test]
fn a_storage_node_killed_mid_workload_costs_no_write_and_misses_exactly_what_it_was_not_sent() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_0001,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 200);
    let kill_sent = Instant::now();
    c.kill_node(2);
    let killed = Instant::now();
    w.wait_more_acks(&c, 200);
    let entries = w.finish();

    // The workload saw no error.
    let failed: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.outcome != Outcome::Acked)
        .collect();
    assert!(
        failed.is_empty(),
        "writes failed while a copy was lost: {failed:?}\n{}",
        c.logs()
    );
    let log = log_of(&entries);
    let none = BTreeSet::new();
    check(&log, "the LUN read back at n1", &c.read_lun(0), &none, &c);

    // n3 is out of sync on exactly what it missed: every write sent after
    // its death, and nothing outside the writes still unanswered when it
    // was killed (the one in flight then may or may not have reached it).
    let dirty = c.dirty_grains(2);
    let must = grains_of(entries.iter().filter(|e| e.issued > killed));
    let may = grains_of(entries.iter().filter(|e| e.answered >= kill_sent));
    assert!(
        must.is_subset(&dirty),
        "{} grains written after n3 died are not marked out of sync on n3, first {:?}",
        must.difference(&dirty).count(),
        missing(&must, &dirty)
    );
    assert!(
        dirty.is_subset(&may),
        "{} grains are marked out of sync on n3 that no write after its death touched, \
         first {:?}",
        dirty.difference(&may).count(),
        missing(&dirty, &may)
    );
    for i in [0, 1] {
        assert!(
            c.dirty_grains(i).is_empty(),
            "the surviving copy on {} has dirty bits",
            c.nodes[i].id
        );
    }

    // The survivors are identical and hold every acknowledged write; the
    // dead node's copy is right everywhere it is not marked.
    check_copies_after_n3_died(&mut c, &log, &dirty);
}

#[test]
fn a_frozen_writer_whose_lease_moved_acknowledges_nothing_and_lands_nothing() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    const REGION: (u64, u64) = (0, 2 << 20);
    // The frozen writer's write in flight must outwait the takeover.
    let a = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_0002,
        REGION,
        Duration::from_secs(120),
    );
    a.wait_more_acks(&c, 200);
    c.freeze_node(0, true);
    let frozen = Instant::now();

    let moved = c.locus(&["image", "move", IMAGE, "--to", "n2", "--force"]);
    assert_eq!(
        moved.code,
        0,
        "{}{}\n{}",
        moved.stdout,
        moved.stderr,
        c.logs()
    );
    c.wait_served(1);

    // The new writer overwrites the whole region.
    let mut b = Initiator::open(&c.nodes[1]);
    let mut b_entries = Vec::new();
    for (k, offset) in (REGION.0..REGION.1).step_by(64 << 10).enumerate() {
        let pattern = 0xb0 | (k % 16) as u8;
        let issued = Instant::now();
        let outcome = b.write(offset, 64 << 10, pattern, LIMIT);
        assert_eq!(
            outcome,
            Outcome::Acked,
            "at n2, offset {offset}\n{}",
            c.logs()
        );
        b_entries.push(Entry {
            offset,
            len: 64 << 10,
            pattern,
            issued,
            answered: Instant::now(),
            outcome,
        });
    }

    // Thaw the old writer: it finds its lease gone, and whatever it still
    // had queued or is sent now must be refused everywhere.
    let log_len = c.nodes[0].log_text().len();
    c.freeze_node(0, false);
    let thawed = Instant::now();
    c.wait_log(0, log_len, "write lease lost");
    a.wait_until(&c, "10 writes answered at the thawed n1", LIMIT, |e| {
        e.iter().filter(|e| e.issued > thawed).count() >= 10
    });
    let a_entries = a.finish();
    let in_flight = a_entries
        .iter()
        .find(|e| e.issued < frozen && e.answered > frozen);
    let after: Vec<&Outcome> = a_entries
        .iter()
        .filter(|e| e.issued > thawed)
        .map(|e| &e.outcome)
        .take(3)
        .collect();
    eprintln!(
        "frozen writer: {} writes; in flight at SIGSTOP: {:?}; first answers after SIGCONT: {after:?}",
        a_entries.len(),
        in_flight.map(|e| &e.outcome)
    );
    let zombie_acks: Vec<&Entry> = a_entries
        .iter()
        .filter(|e| e.issued > frozen && e.outcome == Outcome::Acked)
        .collect();
    assert!(
        zombie_acks.is_empty(),
        "the fenced writer acknowledged writes issued after it was frozen: {zombie_acks:?}"
    );

    // Only what was acknowledged before the freeze (and the one write in
    // flight then, maybe), then the new writer's writes: nothing the
    // thawed writer was sent may show on any in-sync copy.
    let before: Vec<&Entry> = a_entries.iter().filter(|e| e.issued < frozen).collect();
    let log = log_of(before.into_iter().chain(&b_entries));
    let none = BTreeSet::new();
    check(&log, "the LUN read back at n2", &c.read_lun(1), &none, &c);
    c.stop_node(1);
    c.kill_node(0);
    c.stop_node(2);
    for i in 0..3 {
        let dirty = c.dirty_grains(i);
        let what = format!(
            "{}'s copy outside its {} dirty grains",
            c.nodes[i].id,
            dirty.len()
        );
        check(&log, &what, &c.read_copy(i), &dirty, &c);
    }
    assert!(
        c.dirty_grains(1).is_empty() && c.dirty_grains(2).is_empty(),
        "the copies that the new writer reached are not in sync"
    );
}

#[test]
fn a_writer_killed_mid_workload_reconciles_the_copies_before_it_serves_again() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_0003,
        (0, 8 << 20),
        Duration::from_secs(5),
    );
    w.wait_more_acks(&c, 300);
    c.kill_node(0);
    let mut entries = w.finish();
    // A crash mid-fan-out leaves a write on some copies only. Make sure one
    // did, so that a takeover without reconciliation cannot pass: a write
    // that reached n2 alone (and was never acknowledged).
    let (offset, len, pattern) = Rng::new(0x5eed_0033).write_in(0, 8 << 20);
    entries.push(Entry {
        offset,
        len,
        pattern,
        issued: Instant::now(),
        answered: Instant::now(),
        outcome: Outcome::Failed("reached n2 only (injected)".into()),
    });
    write_behind_locus(&c.nodes[1].copy_path(), offset, len, pattern);
    let log_len = c.nodes[0].log_text().len();
    c.start_node(0);
    c.wait_served(0);
    // Before any I/O but iscsi-inq's INQUIRY: reconciliation ran...
    c.wait_log(0, log_len, "writer serving");
    let served = c.nodes[0].log_text()[log_len..].to_owned();
    assert!(
        !served.contains("extents=0"),
        "the new writer found no hot extents to reconcile:\n{served}"
    );
    // ... and left the copies identical, in sync, and holding every
    // acknowledged write.
    let log = log_of(&entries);
    let none = BTreeSet::new();
    let copies: Vec<Vec<u8>> = (0..3).map(|i| c.read_copy(i)).collect();
    for i in 1..3 {
        assert!(
            copies[i] == copies[0],
            "n1 serves again, but {}'s copy differs from n1's",
            c.nodes[i].id
        );
    }
    check(&log, "n1's copy", &copies[0], &none, &c);
    for i in 0..3 {
        assert!(
            c.dirty_grains(i).is_empty(),
            "{} has dirty bits",
            c.nodes[i].id
        );
    }
    check(&log, "the LUN read back at n1", &c.read_lun(0), &none, &c);
}

/// The reads `locus stats` counts at each location of the image.
fn location_reads(c: &Cluster) -> std::collections::BTreeMap<String, u64> {
    let st = c.locus(&["stats", IMAGE, "--json"]).ok().json();
    st["locations"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(n, io)| (n.clone(), io["reads"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `locus stats` (published every few seconds) until `done` holds.
fn wait_stats(
    c: &Cluster,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool,
) -> std::collections::BTreeMap<String, u64> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let reads = location_reads(c);
        if done(&reads) {
            return reads;
        }
        assert!(
            Instant::now() < deadline,
            "`locus stats` never showed {what}: per-location reads {reads:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn reads_come_from_the_same_site_copy_and_fail_over_without_an_error() {
    let _one = one_at_a_time();
    // n1 serves but holds no copy; n2 is on its site, n3 far away.
    let mut c = Cluster::start(&Layout {
        sites: vec!["tokyo", "tokyo", "osaka"],
        locations: vec![1, 2],
        writer: 0,
        block_size: "1M",
        small_disk: None,
    });
    let mut ini = Initiator::open(&c.nodes[0]);
    let mut rng = Rng::new(0x5eed_0004);
    let mut log = WriteLog::default();
    for _ in 0..200 {
        let (offset, len, pattern) = rng.write_in(0, IMAGE_BYTES);
        let outcome = ini.write(offset, len, pattern, LIMIT);
        assert_eq!(outcome, Outcome::Acked, "{}", c.logs());
        log.record(offset, len, pattern, &outcome);
    }
    drop(ini);
    let none = BTreeSet::new();
    check(&log, "the LUN read at n1", &c.read_lun(0), &none, &c);
    let reads = wait_stats(&c, "reads from n2", |r| r.get("n2").is_some_and(|&n| n > 0));
    assert_eq!(
        reads.get("n3").copied().unwrap_or(0),
        0,
        "n1 read from the far site while its own site had an in-sync copy: {reads:?}"
    );

    c.kill_node(1);
    check(
        &log,
        "the LUN read at n1 after n2 died",
        &c.read_lun(0),
        &none,
        &c,
    );
    wait_stats(&c, "reads failing over to n3", |r| {
        r.get("n3").is_some_and(|&n| n > 0)
    });
}

#[test]
fn redis_killed_mid_workload_while_a_copy_fails_loses_no_write_and_no_mark() {
    let _one = one_at_a_time();
    let mut c = Cluster::start(&Layout::all_on_one_site(3));
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_0005,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 200);
    c.redis.kill();
    let store_down = Instant::now();
    c.kill_node(2);
    let n3_dead = Instant::now();
    // Writes now need a mark for n3 that the store cannot take: they must
    // fail (after a bounded wait), never be acknowledged without it.
    w.wait_until(&c, "3 writes answered with the store down", LIMIT, |e| {
        e.iter().filter(|e| e.issued > n3_dead).count() >= 3
    });
    c.redis.restart();
    let store_back = Instant::now();
    w.wait_until(
        &c,
        "100 writes acknowledged after Redis came back",
        LIMIT * 2,
        |e| {
            e.iter()
                .filter(|e| e.issued > store_back && e.outcome == Outcome::Acked)
                .count()
                >= 100
        },
    );
    let entries = w.finish();
    let first_ack = entries
        .iter()
        .find(|e| e.issued > store_back && e.outcome == Outcome::Acked)
        .map(|e| e.answered - store_back);
    let waits: Vec<Duration> = entries
        .iter()
        .filter(|e| e.issued > n3_dead && e.answered < store_back)
        .map(|e| e.answered - e.issued)
        .take(4)
        .collect();
    eprintln!(
        "redis down for {:?}; the first writes needing a mark failed after {waits:?}; \
         first GOOD {first_ack:?} after it was back; {} writes, {} acknowledged",
        store_back - store_down,
        entries.len(),
        acks(&entries)
    );

    let unmarked: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.issued > n3_dead && e.answered < store_back && e.outcome == Outcome::Acked)
        .collect();
    assert!(
        unmarked.is_empty(),
        "writes were acknowledged while the store that must hold their marks was down: \
         {unmarked:?}"
    );
    // No mark lost: the AOF kept every mark made before the crash, and
    // every acknowledged write after n3's death is marked.
    let dirty = c.dirty_grains(2);
    let must = grains_of(
        entries
            .iter()
            .filter(|e| e.issued > n3_dead && e.outcome == Outcome::Acked),
    );
    assert!(
        must.is_subset(&dirty),
        "{} grains acknowledged after n3 died are not marked on n3, first {:?}",
        must.difference(&dirty).count(),
        missing(&must, &dirty)
    );
    let log = log_of(&entries);
    let none = BTreeSet::new();
    c.wait_served(0);
    check(&log, "the LUN read back at n1", &c.read_lun(0), &none, &c);
    check_copies_after_n3_died(&mut c, &log, &dirty);
}

#[test]
fn a_copy_whose_disk_fills_up_is_marked_out_of_sync_and_the_writes_stay_good() {
    let _one = one_at_a_time();
    // n3 keeps its copy on a 2 MiB tmpfs: it runs out of space early.
    let mut c = Cluster::start(&Layout {
        small_disk: Some((2, "2M")),
        ..Layout::all_on_one_site(3)
    });
    let w = Workload::spawn(
        Initiator::open(&c.nodes[0]),
        0x5eed_0006,
        (0, IMAGE_BYTES),
        LIMIT,
    );
    w.wait_more_acks(&c, 400);
    let entries = w.finish();
    let failed: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.outcome != Outcome::Acked)
        .collect();
    assert!(
        failed.is_empty(),
        "writes failed while two copies took them: {failed:?}\n{}",
        c.logs()
    );
    let dirty = c.dirty_grains(2);
    assert!(
        !dirty.is_empty(),
        "n3 took {} writes on a 2 MiB disk without one failing: the test did not fill it",
        entries.len()
    );
    // The writer publishes its copies' problems with its figures, every
    // few seconds.
    let deadline = Instant::now() + LIMIT;
    loop {
        let errors = c.locus(&["errors"]).ok().stdout;
        if errors
            .lines()
            .any(|l| l.contains("n3") && l.contains("no space left"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`locus errors` does not say that n3 is out of space:\n{errors}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = log_of(&entries);
    // What n3 did take is right; the rest is marked.
    check(
        &log,
        "n3's copy outside its dirty bits",
        &c.read_copy(2),
        &dirty,
        &c,
    );
    check(
        &log,
        "the LUN read back at n1",
        &c.read_lun(0),
        &BTreeSet::new(),
        &c,
    );
    eprintln!(
        "full disk: {} writes GOOD, {} grains of n3 marked out of sync",
        entries.len(),
        dirty.len()
    );
    c.stop_node(0);
    c.stop_node(1);
    let (n1, n2) = (c.read_copy(0), c.read_copy(1));
    assert!(n1 == n2, "the copies that had space differ");
    check(&log, "n1's copy", &n1, &BTreeSet::new(), &c);
}
