//! Resync by the writer (invariant 6, ARCHITECTURE.md; tier 3: real node
//! servers on 127.0.0.1:0, a real redis-server with AOF fsync always, temp
//! dirs): a copy that missed writes gets exactly those back, a new location
//! gets the data and keeps the holes, writes during a resync reach every
//! copy, and ranges with no in-sync source are refused by name.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use blockmap::placement::SyncState;
use blockmap::types::{BlockIndex, BlockRange};
use common::cluster::{id, Cluster};
use common::storage_suite::pattern;
use drbd_like_sync::core::resync::BatchLimits;
use drbd_like_sync::mirror::{ResyncError, ResyncProgress, ResyncRequest, Writer, WriterConfig};
use drbd_like_sync::storage::BlockBackend;

const SIZE: u64 = 32 << 20;
const GRAN: u64 = 64 << 10;

async fn take(c: &Cluster) -> Writer {
    Writer::take(
        WriterConfig::new(c.config_of(0)),
        Arc::clone(&c.store),
        Arc::clone(&c.nodes[0].table),
    )
    .await
    .expect("take the writer")
}

fn all(c: &Cluster) -> ResyncRequest {
    let _ = c;
    ResyncRequest {
        blocks: BlockRange::new(0, SIZE / (4 << 20)).expect("range"),
        location: None,
        rate: 0,
        limits: BatchLimits::default(),
    }
}

async fn resync(w: &Writer, req: &ResyncRequest) -> Result<ResyncProgress, ResyncError> {
    let mut seen = 0u64;
    let r = w
        .resync(
            req,
            &mut |p| seen = seen.max(p.done_bytes),
            &AtomicBool::new(false),
        )
        .await;
    if let Ok(p) = &r {
        assert_eq!(seen, p.done_bytes, "progress reported up to the end");
    }
    r
}

/// Node `i`'s whole copy.
async fn copy(c: &Cluster, i: usize) -> bytes::Bytes {
    c.read_copy(i, 0, SIZE as usize).await
}

/// Bytes allocated in node `i`'s copy file.
async fn allocated(c: &Cluster, i: usize) -> u64 {
    let copy = c.nodes[i].table.get(&c.image).await.expect("copy");
    let (mut pos, mut sum) = (0, 0);
    while pos < SIZE {
        let (mapped, len) = copy.backend().allocation(pos).await.expect("allocation");
        if mapped {
            sum += len.min(SIZE - pos);
        }
        pos += len.max(1);
    }
    sum
}

/// Granule-rounded bytes of writes.
fn granules(ws: &[(u64, usize)]) -> u64 {
    let mut bits: Vec<u64> = ws
        .iter()
        .flat_map(|(o, l)| (o / GRAN)..(o + *l as u64).div_ceil(GRAN))
        .collect();
    bits.sort();
    bits.dedup();
    bits.len() as u64 * GRAN
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_copy_gets_exactly_what_it_missed() {
    let mut c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let w = take(&c).await;
    let before = [(0u64, 4096usize), (5 << 20, 100_000)];
    let missed = [
        (1u64 << 20, 70_000usize),
        ((4 << 20) - 5000, 10_000),
        (9 << 20, 1 << 20),
        (30 << 20, 100),
    ];
    // Written through (FUA): a later failed flush has nothing of these to
    // mark (invariant 2), so n2 misses exactly `missed`.
    for (i, (o, l)) in before.iter().enumerate() {
        w.write(*o, pattern(i as u8, *l), true)
            .await
            .expect("write");
    }
    c.nodes[2].stop().await;
    for (i, (o, l)) in missed.iter().enumerate() {
        w.write(*o, pattern(10 + i as u8, *l), false)
            .await
            .expect("write with n2 down");
    }
    w.flush().await.expect("flush");
    assert!(!c.dirty_runs(&id("n2")).await.is_empty());
    c.nodes[2].restart().await;
    let p = resync(&w, &all(&c)).await.expect("resync");
    // Only what n2 missed was covered, at the bitmap's granularity; the
    // parts of those granules that are holes on the source were punched.
    let d = p.dests[&id("n2")];
    assert_eq!(d.copied + d.holes, granules(&missed), "{d:?}");
    assert!(
        d.copied >= missed.iter().map(|m| m.1 as u64).sum::<u64>(),
        "{d:?}"
    );
    assert_eq!(p.dests[&id("n1")].copied, 0);
    assert_eq!(c.dirty_runs(&id("n2")).await, vec![]);
    let a = copy(&c, 0).await;
    assert!(
        a == copy(&c, 1).await && a == copy(&c, 2).await,
        "copies differ"
    );
    // n2 is read from again: the cache was told.
    let rec = w.mirror().cached_record();
    assert!(rec.dirty.get(&id("n2")).is_none_or(|b| b.is_clean()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_location_gets_the_data_and_keeps_the_holes() {
    let c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1], SIZE).await;
    let w = take(&c).await;
    for (i, o) in [0u64, 7 << 20, 20 << 20].iter().enumerate() {
        w.write(*o, pattern(i as u8, 256 << 10), true)
            .await
            .expect("write");
    }
    blockmap::ops::add_location(&*c.store, &c.image, &id("n2"), None, None)
        .await
        .expect("add location");
    w.mirror().refresh().await.expect("refresh");
    let p = resync(&w, &all(&c)).await.expect("resync");
    let d = p.dests[&id("n2")];
    assert_eq!(d.copied + d.holes, SIZE, "the whole new copy was covered");
    assert!(d.copied <= allocated(&c, 0).await, "{d:?}");
    assert!(
        d.holes >= SIZE - (4 << 20),
        "holes were punched, not written: {d:?}"
    );
    assert!(allocated(&c, 2).await <= allocated(&c, 0).await);
    assert!(copy(&c, 0).await == copy(&c, 2).await, "copies differ");
    let rec = c.store.load_image(&c.image).await.expect("load");
    for b in 0..rec.image.block_count() {
        assert_eq!(
            rec.block_state(BlockIndex(b), &id("n2")),
            Some(SyncState::InSync),
            "block {b}"
        );
    }
    assert_eq!(p.in_sync[&id("n2")].len(), 1, "{:?}", p.in_sync);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_resync_reach_every_copy() {
    let mut c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let w = Arc::new(take(&c).await);
    c.nodes[2].stop().await;
    // n2 misses half of every MiB: 16 MiB to copy back.
    for i in 0..32u64 {
        w.write(i << 20, pattern(i as u8, 512 << 10), false)
            .await
            .expect("write");
    }
    c.nodes[2].restart().await;
    // A paced resync (8 MB/s in 64 KiB batches: about a second) while the
    // same ranges are written again and again, until it is done.
    let mut req = all(&c);
    req.rate = 8 << 20;
    req.limits = BatchLimits {
        max_span: 64 << 10,
        ..BatchLimits::default()
    };
    let bg = {
        let w = Arc::clone(&w);
        tokio::spawn(async move { resync(&w, &req).await })
    };
    let mut last = std::collections::BTreeMap::new();
    let mut n = 0u64;
    while !bg.is_finished() {
        let i = (n * 7) % 32;
        let off = (i << 20) + (n % 64) * 8192;
        let tag = (n % 251) as u8;
        w.write(off, pattern(tag, 8192), false)
            .await
            .expect("write during resync");
        last.insert(off, tag);
        n += 1;
    }
    bg.await.expect("task").expect("resync");
    assert!(n > 50, "only {n} writes ran alongside the resync");
    w.flush().await.expect("flush");
    assert_eq!(c.dirty_runs(&id("n2")).await, vec![]);
    let a = copy(&c, 0).await;
    assert!(a == copy(&c, 1).await, "n0 and n1 differ");
    assert!(a == copy(&c, 2).await, "the resynced copy differs");
    for (off, tag) in last {
        let got = w.read(off, 8192).await.expect("read");
        assert!(got == pattern(tag, 8192), "stale data at {off}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_with_no_in_sync_source_is_refused_by_name() {
    let c = Cluster::start_unleased(&[Some("a"); 2], &[0, 1], SIZE).await;
    let w = take(&c).await;
    let g = w.generation().0;
    // Block 2 is dirty on both copies: nothing to copy from.
    let bits = [(2 * 64, 2 * 64 + 3)];
    for n in ["n0", "n1"] {
        c.store
            .mark_dirty(&c.image, &id(n), g, &bits)
            .await
            .expect("mark");
    }
    w.mirror().refresh().await.expect("refresh");
    let e = resync(&w, &all(&c)).await.expect_err("refused");
    assert!(
        matches!(&e, ResyncError::NoSource { blocks, .. } if blocks == "2"),
        "{e}"
    );
    assert!(e.to_string().contains("nothing was copied"), "{e}");
    // Nothing changed.
    assert_eq!(c.dirty_runs(&id("n1")).await, vec![(128, 131)]);
    // A location that does not exist is refused with the store's reason.
    let mut req = all(&c);
    req.location = Some(id("n9"));
    let e = resync(&w, &req).await.expect_err("unknown location");
    assert!(e.to_string().contains("n9"), "{e}");
}

/// A cancelled resync resumes from the bits, and while the new copy is
/// syncing it takes the writes where it already landed (or it would go
/// stale behind the resync and still be called in sync at the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_resync_resumes_and_syncing_copies_take_writes() {
    let c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1], SIZE).await;
    let w = take(&c).await;
    for i in 0..8u64 {
        w.write(i << 22, pattern(i as u8, 1 << 20), true)
            .await
            .expect("write");
    }
    blockmap::ops::add_location(&*c.store, &c.image, &id("n2"), None, None)
        .await
        .expect("add location");
    w.mirror().refresh().await.expect("refresh");
    let mut req = all(&c);
    req.limits = BatchLimits {
        max_span: 1 << 20,
        max_parts: 1,
    };
    let cancel = AtomicBool::new(false);
    let e = w
        .resync(
            &req,
            &mut |p| {
                if p.done_bytes >= 1 << 20 {
                    cancel.store(true, std::sync::atomic::Ordering::Release);
                }
            },
            &cancel,
        )
        .await
        .expect_err("cancelled");
    assert!(matches!(e, ResyncError::Cancelled { .. }), "{e}");
    let rec = c.store.load_image(&c.image).await.expect("load");
    assert_eq!(
        rec.block_state(BlockIndex(0), &id("n2")),
        Some(SyncState::Syncing)
    );
    let left = rec.sync_bits(&id("n2"), rec.image.all_blocks());
    let left_bytes: u64 = left.iter().map(|(f, l)| (l - f) * GRAN).sum();
    // The first batch (the 1 MiB of data at 0) landed, and the few in
    // flight with it; the rest did not.
    assert!(!left.iter().any(|(f, _)| *f < 16), "1 MiB landed: {left:?}");
    assert!(
        (SIZE / 2..=SIZE - (1 << 20)).contains(&left_bytes),
        "{left:?}"
    );
    // A write where n2 landed reaches n2; one where it did not, does not.
    w.write(4096, pattern(200, 4096), true)
        .await
        .expect("write");
    assert!(
        c.read_copy(2, 4096, 4096).await == pattern(200, 4096),
        "a write where the syncing copy landed did not reach it"
    );
    w.write(28 << 20, pattern(201, 4096), true)
        .await
        .expect("write");
    assert!(c.read_copy(2, 28 << 20, 4096).await != pattern(201, 4096));
    // Resumed: only what was left is covered.
    let p = resync(&w, &req).await.expect("resume");
    assert_eq!(p.total_bytes, left_bytes);
    assert!(copy(&c, 0).await == copy(&c, 2).await, "copies differ");
}

/// Verify finds a copy corrupted behind Locus's back, granule by granule,
/// marks it (reads leave it), and a resync repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_corrupted_copy_and_resync_repairs_it() {
    let c = Cluster::start_unleased(&[Some("a"); 3], &[0, 1, 2], SIZE).await;
    let w = take(&c).await;
    w.write(0, pattern(1, 8 << 20), true).await.expect("write");
    // A few bytes of n1's file change under it, in granule 70.
    let copy1 = c.nodes[1].table.get(&c.image).await.expect("copy");
    let at = 70 * GRAN + 1234;
    copy1
        .backend()
        .write(at, bytes::Bytes::from_static(b"rot"), true)
        .await
        .expect("corrupt");
    let blocks = BlockRange::new(0, SIZE / (4 << 20)).expect("range");
    let cancel = AtomicBool::new(false);
    let r = w
        .verify(blocks, None, &mut |_| {}, &cancel)
        .await
        .expect("verify");
    assert_eq!(r.done_bytes, SIZE);
    assert_eq!(r.mismatches.len(), 1, "{:?}", r.mismatches);
    let m = &r.mismatches[0];
    assert_eq!((m.range.offset, m.range.len), (70 * GRAN, GRAN));
    assert_eq!(m.differ, vec![id("n1")]);
    assert_eq!(c.dirty_runs(&id("n1")).await, vec![(70, 71)]);
    assert_eq!(c.dirty_runs(&id("n2")).await, vec![]);
    // Repaired by a resync; verify is clean again.
    let p = resync(&w, &all(&c)).await.expect("resync");
    assert_eq!(p.dests[&id("n1")].copied, GRAN);
    let r = w
        .verify(blocks, None, &mut |_| {}, &cancel)
        .await
        .expect("verify again");
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    assert!(copy(&c, 0).await == copy(&c, 1).await, "not repaired");
}
