//! The writer shell (tier 3: real node servers on 127.0.0.1:0, a real
//! redis-server with AOF fsync always, temp dirs): the lease and its ack
//! gate (invariant 4, ARCHITECTURE.md), the activity log and
//! reconciliation on takeover (invariant 5).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use blockmap::types::UnixMillis;
use bytes::Bytes;
use common::cluster::{id, Cluster};
use common::storage_suite::pattern;
use drbd_like_sync::core::activity_log::AlConfig;
use drbd_like_sync::core::lease::LeaseConfig;
use drbd_like_sync::core::{Generation, Millis};
use drbd_like_sync::mirror::{Writer, WriterConfig, WriterError};
use drbd_like_sync::proto::Op;
use drbd_like_sync::storage::BlockBackend;
use tokio::time::Instant;

const SIZE: u64 = 32 << 20;
/// Activity-log extents of the tests: 1 MiB (16 dirty bits of 64 KiB).
const EXT: u64 = 1 << 20;
const BITS_PER_EXT: u64 = EXT / (64 << 10);

/// A writer config for node `i`: lease of `ttl_ms` with a quarter of it as
/// margin and a renewal every fifth; 1 MiB extents, 8 hot at most.
fn wcfg(c: &Cluster, i: usize, ttl_ms: u64) -> WriterConfig {
    let mut cfg = WriterConfig::new(c.config_of(i));
    cfg.lease = LeaseConfig {
        ttl: Millis(ttl_ms),
        margin: Millis(ttl_ms / 4),
        renew_after: Millis(ttl_ms / 5),
    };
    cfg.al = AlConfig {
        extent_size: EXT,
        capacity: 8,
    };
    cfg
}

async fn take(c: &Cluster, i: usize, ttl_ms: u64) -> Result<Writer, WriterError> {
    Writer::take(
        wcfg(c, i, ttl_ms),
        Arc::clone(&c.store),
        Arc::clone(&c.nodes[i].table),
    )
    .await
}

/// Polls the store until the stored lease has expired (the TTL ran out).
async fn wait_lease_expired(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = c.store.get_lease(&c.image).await.expect("get_lease");
        if l.as_ref().is_none_or(|l| l.expired_at(UnixMillis::now())) {
            return;
        }
        assert!(Instant::now() < deadline, "lease never expired: {l:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The dirty-bit runs of extents `es`.
fn ext_bits(es: &[u64]) -> Vec<(u64, u64)> {
    es.iter()
        .map(|e| (e * BITS_PER_EXT, (e + 1) * BITS_PER_EXT))
        .collect()
}

/// Stops node `i` and listens on its port without ever answering, so
/// every operation on it lasts the connect timeout. Abort the task to end.
async fn silence(c: &mut Cluster, i: usize) -> tokio::task::JoinHandle<()> {
    c.nodes[i].stop().await;
    let silent = tokio::net::TcpListener::bind(c.nodes[i].addr)
        .await
        .expect("rebind the node's port");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    })
}

async fn store_hot(c: &Cluster) -> (u64, BTreeSet<u64>) {
    let log = c.store.al_get(&c.image).await.expect("al_get");
    (log.generation, log.extents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_reconciles_hot_extents_and_fences_the_old_writer() {
    let c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let a = take(&c, 0, 300).await.expect("A takes the lease");
    let ga = a.generation();
    let hot = [1u64, 3, 5];
    for e in hot {
        a.mirror()
            .write(e * EXT + 4096, pattern(e as u8, 8192), false)
            .await
            .expect("A writes");
    }
    // Invariant 5: the extents are hot in the store, at A's generation.
    assert_eq!(store_hot(&c).await, (ga.0, hot.into_iter().collect()));
    // A write that reached n2 only before A crashed: the copies diverge.
    let n2 = c.nodes[2].table.get(&c.image).await.expect("n2 copy");
    n2.backend()
        .write(3 * EXT + 4096, pattern(99, 8192), false)
        .await
        .expect("diverge n2");
    assert!(
        c.read_copy(1, 3 * EXT, EXT as usize).await != c.read_copy(2, 3 * EXT, EXT as usize).await
    );

    // A crashes: no release, no more renewals.
    let zombie = a.abandon();
    wait_lease_expired(&c).await;
    let b = take(&c, 1, 10_000).await.expect("B takes over");
    assert_eq!(b.generation(), Generation(ga.0 + 1));
    let rep = b.takeover().clone();
    assert_eq!(rep.previous_holder, Some(id("n0")));
    assert_eq!(rep.hot_extents, hot.into_iter().collect());

    // Before B serves anything: the trusted reachable copies (n1, n2) are
    // identical on every hot extent, holding what A acknowledged.
    for e in hot {
        let one = c.read_copy(1, e * EXT, EXT as usize).await;
        let two = c.read_copy(2, e * EXT, EXT as usize).await;
        assert!(one == two, "extent {e} differs after reconciliation");
        assert!(one.slice(4096..4096 + 8192) == pattern(e as u8, 8192));
    }
    // The old writer's own copy is distrusted: dirty on its hot extents.
    assert_eq!(c.dirty_runs(&id("n0")).await, ext_bits(&hot));
    assert!(c.dirty_runs(&id("n1")).await.is_empty());
    assert!(c.dirty_runs(&id("n2")).await.is_empty());
    // The log now belongs to B, empty.
    assert_eq!(store_hot(&c).await, (b.generation().0, BTreeSet::new()));

    // A is fenced everywhere: its mirror fails, and every node refuses its
    // generation on the wire (not just A's own gate).
    assert!(zombie.write(0, pattern(7, 4096), false).await.is_err());
    for i in 0..3 {
        let res = c.client(i).await.call(&c.image, ga, Op::Flush).await;
        assert!(res.is_err(), "n{i} still admits generation {ga}");
    }
    // B serves; reads come from in-sync copies.
    b.mirror()
        .write(3 * EXT, pattern(5, 4096), true)
        .await
        .expect("B writes");
    assert!(b.mirror().read(3 * EXT, 4096).await.expect("B reads") == pattern(5, 4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_distrusted_copies_are_marked_at_takeover() {
    let mut c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let a = take(&c, 0, 300).await.expect("A takes the lease");
    for e in [2u64, 4] {
        a.mirror()
            .write(e * EXT, pattern(e as u8, 4096), false)
            .await
            .expect("A writes");
    }
    drop(a); // a crash
    c.nodes[2].stop().await;
    wait_lease_expired(&c).await;
    let b = take(&c, 1, 10_000).await.expect("B takes over");
    let rep = b.takeover();
    assert_eq!(rep.reachable, [id("n0"), id("n1")].into_iter().collect());
    // n2 is unreachable and n0 (A's local copy) distrusted: both marked for
    // A's hot extents; n1, the only trusted copy, is the source of nothing
    // to copy.
    let marks: BTreeSet<_> = rep.marks.iter().cloned().collect();
    let want: BTreeSet<_> = [(2, id("n0")), (2, id("n2")), (4, id("n0")), (4, id("n2"))]
        .into_iter()
        .collect();
    assert_eq!(marks, want);
    assert!(rep.copies.is_empty(), "{:?}", rep.copies);
    assert_eq!(c.dirty_runs(&id("n0")).await, ext_bits(&[2, 4]));
    assert_eq!(c.dirty_runs(&id("n2")).await, ext_bits(&[2, 4]));
    assert!(c.dirty_runs(&id("n1")).await.is_empty());
    // B serves those extents from n1.
    assert!(b.mirror().read(2 * EXT, 4096).await.expect("read") == pattern(2, 4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_refused_while_another_holder_is_live() {
    let c = Cluster::start_unleased(&[Some("a"); 2], &[0, 1], SIZE).await;
    let a = take(&c, 0, 10_000).await.expect("A takes the lease");
    let err = take(&c, 1, 10_000).await.expect_err("B must be refused");
    match &err {
        WriterError::LeaseHeld {
            holder, generation, ..
        } => {
            assert_eq!(*holder, id("n0"));
            assert_eq!(*generation, a.generation().0);
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(err.to_string().contains("n0"), "{err}");
    // A still serves; a graceful close releases, and B may take at once.
    a.mirror()
        .write(0, pattern(1, 4096), false)
        .await
        .expect("A serves");
    let ga = a.generation();
    a.close().await.expect("close");
    let b = take(&c, 1, 10_000).await.expect("B after release");
    assert_eq!(b.generation(), Generation(ga.0 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_failure_stops_acks_before_the_ttl() {
    // TTL 1500 ms, margin 375 ms, renewal every 300 ms. The gate closes at
    // (send time of the last successful renewal) + 1125 ms; the store keeps
    // the lease until (wall time read just after that send) + 1500 ms, so
    // acks stop at least the 375 ms margin before another writer can win.
    let mut c = Cluster::start_unleased(&[Some("a"); 2], &[0, 1], SIZE).await;
    let w = take(&c, 0, 1500).await.expect("take");
    let m = w.mirror();
    m.write(0, pattern(1, 4096), false).await.expect("warm");
    // Let at least one renewal go through, then the store goes away.
    let first = w.deadline().expect("held");
    let until = Instant::now() + Duration::from_secs(5);
    while w.deadline().expect("held") == first {
        assert!(Instant::now() < until, "no renewal happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = c
        .store
        .get_lease(&c.image)
        .await
        .expect("get")
        .expect("lease");
    c.redis.stop();
    let deadline = w.deadline().expect("held");
    // Writes to the warm extent need no store: they succeed until the
    // deadline, then fail. The first failure comes while the store's lease
    // is still valid (our deadline is the margin before it).
    let mut oks = 0;
    let failed_at = loop {
        let res = m.write(0, pattern(2, 4096), false).await;
        let now = Instant::now();
        match res {
            Ok(()) => {
                // The gate is checked right before Ok: only the return
                // itself may straddle the deadline (microseconds, but a
                // loaded CI machine may deschedule this task for a while,
                // so allow 100 ms: still 275 ms inside the margin). What
                // must hold is that no Ok comes once the store could give
                // the lease to another writer.
                assert!(
                    now <= deadline + Duration::from_millis(100),
                    "acknowledged after the deadline"
                );
                assert!(
                    UnixMillis::now() < stored.expires,
                    "acknowledged after the store's lease ended"
                );
                oks += 1;
            }
            Err(_) => break (now, UnixMillis::now()),
        }
        assert!(
            now < deadline + Duration::from_secs(2),
            "writes never failed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        oks > 0,
        "no write succeeded between the kill and the deadline"
    );
    assert!(failed_at.0 >= deadline - Duration::from_millis(20));
    assert!(
        failed_at.1 < stored.expires,
        "first refusal at {:?}, the store's lease ran until {:?}",
        failed_at.1,
        stored.expires
    );
    assert!(!w.may_ack());
    assert!(m.flush().await.is_err());
    assert!(m.read(0, 4096).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_set_writes_cost_no_al_round_trips() {
    let c = Cluster::start_unleased(&[Some("a"); 2], &[0, 1], SIZE).await;
    let w = take(&c, 0, 10_000).await.expect("take");
    let m = w.mirror();
    assert_eq!(w.al_round_trips(), 0);
    for e in 0..4u64 {
        m.write(e * EXT, pattern(e as u8, 4096), false)
            .await
            .expect("warm");
    }
    let warm = w.al_round_trips();
    assert!((1..=4).contains(&warm), "{warm}");
    let set: BTreeSet<u64> = (0..4).collect();
    assert_eq!(w.al_hot(), set);
    assert_eq!(store_hot(&c).await, (w.generation().0, set.clone()));
    for i in 0..1000u64 {
        let off = (i % 4) * EXT + (i * 4096) % (EXT - 4096);
        m.write(off, Bytes::from(vec![i as u8; 4096]), false)
            .await
            .expect("write");
    }
    assert_eq!(
        w.al_round_trips(),
        warm,
        "working-set writes went to the store"
    );
    assert_eq!(store_hot(&c).await.1, set);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extents_are_hot_while_a_write_is_in_flight() {
    let mut c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    // n2 never answers: a write stays in flight for the copy timeout.
    let _silent = silence(&mut c, 2).await;
    let mut cfg = wcfg(&c, 0, 60_000);
    cfg.mirror.connect_timeout = Duration::from_secs(2);
    cfg.mirror.copy_timeout = Duration::from_secs(2);
    let w = Arc::new(
        Writer::take(cfg, Arc::clone(&c.store), Arc::clone(&c.nodes[0].table))
            .await
            .expect("take"),
    );
    let w2 = Arc::clone(&w);
    let write = tokio::spawn(async move {
        w2.mirror()
            .write(8 * EXT, Bytes::from(vec![3u8; 4 * EXT as usize]), true)
            .await
    });
    let want: BTreeSet<u64> = (8..12).collect();
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        // Read the copy first: once data is there, the log must show it.
        let on_copy = c.read_copy(1, 8 * EXT, 4096).await;
        let hot = store_hot(&c).await.1;
        if want.is_subset(&hot) {
            break;
        }
        assert!(on_copy.iter().all(|b| *b == 0), "data out before the log");
        assert!(Instant::now() < until, "extents never became hot");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !write.is_finished(),
        "the write ended before we saw the log"
    );
    write.await.expect("join").expect("n0 and n1 took it");
    assert!(want.is_subset(&store_hot(&c).await.1));
    assert!(want.is_subset(&w.al_hot()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_al_add_fails_the_write() {
    let mut c = Cluster::start_unleased(&[Some("a"); 2], &[0, 1], SIZE).await;
    let w = take(&c, 0, 60_000).await.expect("take");
    let m = w.mirror();
    m.write(0, pattern(1, 4096), false).await.expect("warm");
    c.redis.stop();
    // A new extent needs an al_add, which cannot be made: Err, and no data
    // went out to any copy.
    assert!(m.write(5 * EXT, pattern(2, 4096), false).await.is_err());
    for i in 0..2 {
        let got = c.read_copy(i, 5 * EXT, 4096).await;
        assert!(got.iter().all(|b| *b == 0), "n{i} got data without the log");
    }
    // The warm extent needs no store round trip: still served.
    m.write(4096, pattern(3, 4096), false)
        .await
        .expect("warm extent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_outlives_the_lease_is_not_acknowledged() {
    let mut c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    // n2 goes silent: every operation on it lasts the connect timeout.
    let _silent = silence(&mut c, 2).await;
    let mut cfg = wcfg(&c, 0, 2000);
    cfg.mirror.connect_timeout = Duration::from_secs(3);
    cfg.mirror.copy_timeout = Duration::from_secs(3);
    let w = Arc::new(
        Writer::take(cfg, Arc::clone(&c.store), Arc::clone(&c.nodes[0].table))
            .await
            .expect("take"),
    );
    let w2 = Arc::clone(&w);
    let write = tokio::spawn(async move { w2.mirror().write(0, pattern(4, 4096), false).await });
    // The lease is taken away in the store (an operator, or a takeover):
    // the next renewal is refused and the gate closes, mid-write.
    c.store
        .release_lease(&c.image, &id("n0"), w.generation().0)
        .await
        .expect("release behind the writer's back");
    let until = Instant::now() + Duration::from_secs(2);
    while w.may_ack() {
        assert!(Instant::now() < until, "the gate never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !write.is_finished(),
        "the write ended before the gate closed"
    );
    // n0 and n1 took it and n2's failure gets marked: the core says GOOD,
    // but the gate is shut by now, so Ok must not go out.
    let res = write.await.expect("join");
    assert!(res.is_err(), "acknowledged after the lease was gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_writer_reconciles_its_own_extents_at_once() {
    let c = Cluster::start_unleased(&[Some("a"); 2], &[0, 1], SIZE).await;
    let a = take(&c, 0, 60_000).await.expect("first life");
    let ga = a.generation();
    a.mirror()
        .write(2 * EXT, pattern(2, 4096), false)
        .await
        .expect("write");
    // Landed on the peer only before the crash.
    let n1 = c.nodes[1].table.get(&c.image).await.expect("n1 copy");
    n1.backend()
        .write(2 * EXT, pattern(9, 4096), false)
        .await
        .expect("diverge n1");
    drop(a);
    // The same node may take its own unexpired lease again (a new writer).
    let b = take(&c, 0, 60_000).await.expect("second life");
    assert_eq!(b.generation(), Generation(ga.0 + 1));
    let rep = b.takeover();
    assert_eq!(rep.previous_holder, None, "our own earlier life is trusted");
    assert!(rep.marks.is_empty(), "{:?}", rep.marks);
    assert_eq!(rep.copies, vec![(2, id("n0"), id("n1"))]);
    assert!(
        c.read_copy(0, 2 * EXT, EXT as usize).await == c.read_copy(1, 2 * EXT, EXT as usize).await
    );
    assert_eq!(store_hot(&c).await, (b.generation().0, BTreeSet::new()));
}
