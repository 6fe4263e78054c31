//! The mirror under faults (tier 3: real node servers, a real
//! redis-server with AOF fsync always, temp dirs): node loss, no copy
//! accepting, marks that cannot be made, read failover, fencing, and
//! overlapping writes staying ordered on every copy.

mod common;

use std::sync::Arc;

use blockmap::types::{NodeId, UnixMillis};
use bytes::Bytes;
use common::cluster::{id, Cluster};
use common::storage_suite::pattern;
use drbd_like_sync::core::Generation;
use drbd_like_sync::proto::Op;
use drbd_like_sync::storage::BlockBackend;

const SIZE: u64 = 32 << 20;
/// The default dirty-bitmap granularity of `ImageSpec::new`.
const GRAN: u64 = 64 << 10;

/// `[first, last)` bit runs of byte ranges, merged when they touch.
fn bit_runs(ranges: &[(u64, usize)]) -> Vec<(u64, u64)> {
    let mut bits: Vec<(u64, u64)> = ranges
        .iter()
        .map(|(o, l)| (o / GRAN, (o + *l as u64).div_ceil(GRAN)))
        .collect();
    bits.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (f, l) in bits {
        match out.last_mut() {
            Some((_, e)) if *e >= f => *e = (*e).max(l),
            _ => out.push((f, l)),
        }
    }
    out
}

/// A sequence of disjoint writes, some unaligned, some crossing a block.
fn writes() -> Vec<(u64, usize)> {
    vec![
        (0, 4096),
        (1 << 20, 70_000),
        ((4 << 20) - 5000, 10_000), // crosses blocks 0 and 1
        (6 << 20, 512),
        (9 << 20, 1 << 20),
        (12 << 20, 65536),
        (14 << 20, 3 * 4096),
        ((16 << 20) + 100, 200_000),
        (20 << 20, (4 << 20) + 4096), // crosses blocks 5 and 6
        (26 << 20, 8192),
        (30 << 20, 100),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss_marks_exactly_the_missed_ranges() {
    let mut c = Cluster::start(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let m = c.mirror().await;
    let all = writes();
    let kill_at = 4;
    for (i, (off, len)) in all.iter().enumerate() {
        if i == kill_at {
            c.nodes[2].stop().await;
        }
        m.write(*off, pattern(i as u8, *len), i % 3 == 0)
            .await
            .unwrap_or_else(|e| panic!("write {i} at {off}: {e}"));
    }
    // The dead node is dirty for exactly what it missed; the others clean.
    assert_eq!(c.dirty_runs(&id("n2")).await, bit_runs(&all[kill_at..]));
    // A flush it cannot do marks what it had not made stable: the non-FUA
    // writes it took before it died (invariant 2).
    m.flush().await.expect("flush with one node dead");
    let unflushed: Vec<(u64, usize)> = (0..kill_at)
        .filter(|i| i % 3 != 0)
        .map(|i| all[i])
        .chain(all[kill_at..].iter().copied())
        .collect();
    assert_eq!(c.dirty_runs(&id("n2")).await, bit_runs(&unflushed));
    // Every acknowledged write is on every surviving copy.
    for (i, (off, len)) in all.iter().enumerate() {
        for n in [0, 1] {
            let got = c.read_copy(n, *off, *len).await;
            assert!(got == pattern(i as u8, *len), "write {i} missing on n{n}");
        }
        let back = m.read(*off, *len).await.expect("read back");
        assert!(back == pattern(i as u8, *len), "write {i} reads back");
        if i < kill_at {
            let got = c.read_copy(2, *off, *len).await;
            assert!(
                got == pattern(i as u8, *len),
                "write {i} before the loss on n2"
            );
        }
    }
    assert!(c.dirty_runs(&id("n0")).await.is_empty());
    assert!(c.dirty_runs(&id("n1")).await.is_empty());
    let p = m.problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].node, id("n2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_copy_on_a_dead_peer_fails_the_write() {
    let mut c = Cluster::start(&[Some("a"), Some("a")], &[1], SIZE).await;
    let m = c.mirror().await;
    m.write(0, pattern(1, 4096), false).await.expect("alive");
    c.nodes[1].stop().await;
    let err = m.write(8192, pattern(2, 4096), false).await;
    assert!(err.is_err(), "no copy took the write: must not be Ok");
    // The failed copy is marked anyway (its write may still land later).
    assert_eq!(c.dirty_runs(&id("n1")).await, vec![(0, 1)]);
    // No in-sync copy of that range is left: reads fail, never stale data.
    assert!(m.read(8192, 4096).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_peers_down_and_local_fenced_fails_the_write() {
    let mut c = Cluster::start(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let m = c.mirror().await;
    m.write(0, pattern(1, 4096), false).await.expect("healthy");
    c.nodes[1].stop().await;
    c.nodes[2].stop().await;
    let local = c.nodes[0].table.get(&c.image).await.expect("copy");
    drop(
        local
            .admit(Generation(c.generation.0 + 1))
            .await
            .expect("raise"),
    );
    let r = m.write(4096, pattern(2, 4096), false).await;
    assert!(r.is_err(), "no copy accepted: must not be Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mark_fails_the_write() {
    let mut c = Cluster::start(&[Some("a"), Some("a")], &[0, 1], SIZE).await;
    let m = c.mirror().await;
    m.write(0, pattern(1, 4096), false).await.expect("healthy");
    c.nodes[1].stop().await;
    // A new lease in the store: the mirror's generation is stale there, so
    // mark_dirty is Fenced, while the local copy still takes the data.
    c.store
        .acquire_lease(&c.image, &id("n0"), 600_000, UnixMillis::now())
        .await
        .expect("re-acquire");
    let r = m.write(65536, pattern(2, 4096), false).await;
    assert!(
        r.is_err(),
        "n1 failed and could not be marked: must not be Ok"
    );
    assert_eq!(
        c.read_copy(0, 65536, 4096).await,
        pattern(2, 4096),
        "the local copy did take it"
    );
    assert!(c.dirty_runs(&id("n1")).await.is_empty(), "nothing marked");
    assert!(m.problems().iter().any(|p| p.node == id("n1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_over_a_refused_mark_makes_that_mark_durable_first() {
    let mut c = Cluster::start(&[Some("a"), Some("a")], &[0, 1], SIZE).await;
    let m = c.mirror().await;
    m.write(0, pattern(1, 4096), false).await.expect("healthy");
    c.nodes[1].stop().await;
    c.store
        .acquire_lease(&c.image, &id("n0"), 600_000, UnixMillis::now())
        .await
        .expect("re-acquire");
    assert!(m.write(65536, pattern(2, 4096), false).await.is_err());
    // The refused mark is still set in the mirror's cache, so that no read
    // uses n1 there. The next write over it must not take that as "n1 is
    // already marked" and go out GOOD with the mark only in memory.
    let r = m.write(65536, pattern(3, 4096), false).await;
    assert!(
        r.is_err(),
        "GOOD over a range whose out-of-sync mark the store never took"
    );
    assert!(c.dirty_runs(&id("n1")).await.is_empty(), "nothing marked");
    // Elsewhere the write goes on failing only for its own mark.
    assert!(m.write(1 << 20, pattern(4, 4096), false).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fails_when_redis_is_gone() {
    let mut c = Cluster::start(&[Some("a"), Some("a")], &[0, 1], SIZE).await;
    let m = c.mirror().await;
    m.write(0, pattern(1, 4096), false).await.expect("healthy");
    c.nodes[1].stop().await;
    c.redis.stop();
    let r = m.write(65536, pattern(2, 4096), false).await;
    assert!(r.is_err(), "the mark cannot be made: must not be Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_to_the_next_in_sync_copy() {
    // n1 shares n0's site, n2 does not: after the local copy, n1 then n2.
    let mut c = Cluster::start(&[Some("a"), Some("a"), Some("b")], &[0, 1, 2], SIZE).await;
    let m = c.mirror().await;
    let data = pattern(7, 100_000);
    m.write(1 << 20, data.clone(), false).await.expect("write");
    assert_eq!(m.read(1 << 20, data.len()).await.expect("read"), data);
    let reads =
        |m: &drbd_like_sync::mirror::Mirror, n: &str| m.stats().get(&id(n)).map_or(0, |s| s.reads);
    assert_eq!((reads(&m, "n0"), reads(&m, "n1")), (1, 0), "local first");
    // The local copy goes out of sync for the range.
    let g = c.generation.0;
    c.store
        .mark_dirty(&c.image, &id("n0"), g, &[(16, 18)])
        .await
        .expect("mark local");
    m.refresh().await.expect("refresh");
    assert!(
        m.cached_range(1 << 20, data.len()).is_none(),
        "no zero copy from a dirty copy"
    );
    assert_eq!(m.read(1 << 20, data.len()).await.expect("read"), data);
    assert_eq!((reads(&m, "n0"), reads(&m, "n1")), (1, 1), "same site next");
    c.nodes[1].stop().await;
    assert_eq!(m.read(1 << 20, data.len()).await.expect("failover"), data);
    assert_eq!(reads(&m, "n2"), 1, "then the other site");
    // The copy that failed the read is marked for the range.
    assert_eq!(c.dirty_runs(&id("n1")).await, vec![(16, 18)]);
    // And is not tried again.
    assert_eq!(m.read(1 << 20, data.len()).await.expect("read"), data);
    assert_eq!(reads(&m, "n2"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_generation_on_the_nodes_fences_the_mirror() {
    let c = Cluster::start(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let m = c.mirror().await;
    m.write(0, pattern(1, 4096), false).await.expect("healthy");
    // Another writer reaches every node with a higher generation.
    for i in 0..3 {
        let client = c.client(i).await;
        client
            .call(&c.image, Generation(c.generation.0 + 1), Op::Flush)
            .await
            .expect("newer writer admitted");
    }
    assert!(m.write(4096, pattern(2, 4096), false).await.is_err());
    assert!(m.is_fenced());
    assert!(m.write(1 << 20, pattern(3, 4096), false).await.is_err());
    assert!(m.flush().await.is_err());
    // Nothing of the zombie's reached a copy.
    for i in 0..3 {
        assert!(c.read_copy(i, 4096, 4096).await.iter().all(|b| *b == 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_writes_reach_every_copy_in_one_order() {
    let c = Cluster::start(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let m = Arc::new(c.mirror().await);
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let m = Arc::clone(&m);
        tasks.push(tokio::spawn(async move {
            // Every write overlaps the next; offsets differ.
            let off = (2 << 20) + (i % 4) * 3000;
            m.write(off, pattern(i as u8, 40_000), false)
                .await
                .expect("write");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let span = (2 << 20, 60_000usize);
    let first = c.read_copy(0, span.0, span.1).await;
    for i in 1..3 {
        let other: Bytes = c.read_copy(i, span.0, span.1).await;
        assert!(first == other, "copy n{i} diverged");
    }
    let none: Vec<NodeId> = Vec::new();
    assert_eq!(
        m.problems()
            .iter()
            .map(|p| p.node.clone())
            .collect::<Vec<_>>(),
        none
    );
}
