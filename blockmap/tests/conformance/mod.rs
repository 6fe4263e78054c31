//! The store conformance suite: every function takes store handles and is run
//! against every backend (see `tests/store_embedded.rs`, `tests/store_redis.rs`).
#![allow(dead_code)]

use blockmap::change::Change;
use blockmap::error::{Error, ErrorKind};
use blockmap::image::ImageSpec;
use blockmap::node::Node;
use blockmap::ops;
use blockmap::placement::SyncState;
use blockmap::store::MetadataStore;
use blockmap::target::{Chap, ChapCredential};
use blockmap::types::{BlockIndex, ByteSize, ImageName, Iqn, NodeId, UnixMillis};
use blockmap::writer::ActivityLog;
use std::sync::Arc;
use std::time::Duration;

pub type Store = Arc<dyn MetadataStore>;

pub fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
}
pub fn img(s: &str) -> ImageName {
    ImageName::new(s).unwrap_or_else(|e| panic!("{e}"))
}
pub fn iqn(s: &str) -> Iqn {
    Iqn::new(s).unwrap_or_else(|e| panic!("{e}"))
}
fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

pub async fn add_nodes(s: &dyn MetadataStore, ids: &[&str]) {
    for (i, id) in ids.iter().enumerate() {
        let node = Node::new(
            n(id),
            &format!("127.0.0.1:{}", 7000 + i),
            Some("dc1".into()),
            ByteSize::tib(4),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        ops::add_node(s, node)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

pub fn spec(name: &str, size: ByteSize, locs: &[&str]) -> ImageSpec {
    ImageSpec::new(img(name), size, locs.iter().map(|s| n(s)).collect())
}

/// Create, load, list, and every bad-input case changes nothing.
pub async fn images_roundtrip(s: Store) {
    let s = &*s;
    add_nodes(s, &["a", "b"]).await;
    let rec = ops::create_image(s, &spec("disk1", ByteSize::gib(8), &["a"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let loaded = s
        .load_image(&img("disk1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded, rec);
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.image.block_count(), 2048);

    assert_eq!(
        kind(ops::create_image(s, &spec("disk1", ByteSize::gib(1), &["a"])).await),
        ErrorKind::Conflict
    );
    assert_eq!(
        kind(ops::create_image(s, &spec("disk2", ByteSize::gib(1), &["zz"])).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(ops::create_image(s, &spec("disk3", ByteSize(1000), &["a"])).await),
        ErrorKind::Invalid
    );
    let mut bad = spec("disk4", ByteSize::gib(1), &["a"]);
    bad.block_size = ByteSize(3 << 20);
    assert_eq!(kind(ops::create_image(s, &bad).await), ErrorKind::Invalid);
    let names: Vec<String> = s
        .list_images()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, vec!["disk1"], "failed creates left nothing behind");
    assert_eq!(s.load_image(&img("disk1")).await.ok(), Some(rec));
    assert_eq!(kind(s.load_image(&img("nope")).await), ErrorKind::NotFound);
    // Ranges past the end change nothing.
    assert_eq!(
        kind(ops::add_location(s, &img("disk1"), &n("b"), Some(0), Some(2049)).await),
        ErrorKind::Invalid
    );
    assert_eq!(
        s.load_image(&img("disk1")).await.map(|r| r.version).ok(),
        Some(1)
    );
}

/// The UKAI walkthrough on the model (invariant 7 in ARCHITECTURE.md:
/// placement safety).
pub async fn placement_walkthrough(s: Store) {
    let s = &*s;
    add_nodes(s, &["a", "b"]).await;
    let name = img("vm1");
    ops::create_image(s, &spec("vm1", ByteSize::gib(1), &["a"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (rec, range) = ops::add_location(s, &name, &n("b"), None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(range.len(), 256);
    let stored = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored, rec);
    assert_eq!(
        stored.block_state(BlockIndex(0), &n("b")),
        Some(SyncState::OutOfSync)
    );
    match ops::remove_location(s, &name, &n("a"), None, None).await {
        Err(e @ Error::LastInSyncCopy { .. }) => {
            assert!(e.to_string().contains("blocks 0-255"), "{e}")
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    assert_eq!(
        s.load_image(&name).await.ok(),
        Some(stored.clone()),
        "refusal changed nothing"
    );
    // Straight to in-sync is refused: a stale copy goes through syncing.
    match ops::set_sync_state(s, &name, &n("b"), None, None, SyncState::InSync).await {
        Err(e @ Error::SyncTransition { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Refused);
            let msg = e.to_string();
            for part in ["'b'", "out-of-sync", "in-sync", "blocks 0-255"] {
                assert!(msg.contains(part), "{msg} lacks {part}");
            }
        }
        other => panic!("expected a refused transition, got {other:?}"),
    }
    for st in [SyncState::Syncing, SyncState::InSync] {
        ops::set_sync_state(s, &name, &n("b"), None, None, st)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    ops::remove_location(s, &name, &n("a"), None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        after.location_nodes().into_iter().collect::<Vec<_>>(),
        vec![n("b")]
    );
    assert_eq!(
        after.block_state(BlockIndex(255), &n("b")),
        Some(SyncState::InSync)
    );
    ops::destroy_image(s, &name, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kind(s.load_image(&name).await), ErrorKind::NotFound);
    assert!(s
        .list_images()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
}

/// Dirty bits persist and derive block state; clearing deletes them.
pub async fn dirty_bitmaps(s: Store) {
    let s = &*s;
    add_nodes(s, &["a", "b"]).await;
    let name = img("bm");
    ops::create_image(s, &spec("bm", ByteSize::gib(1), &["a", "b"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ops::mark_bytes(s, &name, &n("b"), (8 << 20) + 100, 200_000, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.dirty.get(&n("b")).map(|b| b.count()), Some(4));
    assert_eq!(
        r.block_state(BlockIndex(2), &n("b")),
        Some(SyncState::OutOfSync)
    );
    assert_eq!(
        r.block_state(BlockIndex(2), &n("a")),
        Some(SyncState::InSync)
    );
    assert_eq!(
        kind(ops::remove_location(s, &name, &n("a"), Some(2), Some(3)).await),
        ErrorKind::Refused
    );
    ops::mark_bytes(s, &name, &n("b"), 8 << 20, 4 << 20, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(r.dirty.is_empty());
    assert_eq!(
        kind(ops::mark_bytes(s, &name, &n("b"), 1 << 30, 1, true).await),
        ErrorKind::Invalid
    );
    let g = ops::bump_generation(s, &name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g, 1);
    assert_eq!(
        s.load_image(&name).await.map(|r| r.image.generation).ok(),
        Some(1)
    );
}

/// Nodes and targets.
pub async fn nodes_and_targets(s: Store) {
    let s = &*s;
    add_nodes(s, &["a", "b"]).await;
    let dup = Node::new(n("a"), "127.0.0.1:1", None, ByteSize(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kind(ops::add_node(s, dup).await), ErrorKind::Conflict);
    let ids: Vec<String> = ops::list_nodes(s)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    ops::create_image(s, &spec("t1", ByteSize::gib(1), &["a"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kind(ops::remove_node(s, &n("a")).await), ErrorKind::Refused);
    ops::remove_node(s, &n("b"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kind(ops::remove_node(s, &n("b")).await),
        ErrorKind::NotFound
    );

    let t = iqn("iqn.2026-01.org.locus:t1");
    ops::create_target(s, &t)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kind(ops::create_target(s, &t).await), ErrorKind::Conflict);
    assert_eq!(ops::add_lun(s, &t, &img("t1"), None).await.ok(), Some(0));
    assert_eq!(
        kind(ops::add_lun(s, &t, &img("t1"), Some(0)).await),
        ErrorKind::Conflict
    );
    assert_eq!(
        kind(ops::add_lun(s, &t, &img("missing"), None).await),
        ErrorKind::NotFound
    );
    ops::add_acl(s, &t, &iqn("iqn.1994-05.com.redhat:client"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let chap = Chap {
        initiator: ChapCredential::new("user", "secretsecret12").unwrap_or_else(|e| panic!("{e}")),
        mutual: None,
    };
    ops::set_chap(s, &t, Some(chap.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = ops::get_target(s, &t)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.luns.get(&0), Some(&img("t1")));
    assert_eq!(got.acl.len(), 1);
    assert_eq!(got.chap, Some(chap));
    assert_eq!(
        kind(ops::destroy_image(s, &img("t1"), false).await),
        ErrorKind::Refused
    );
    ops::destroy_image(s, &img("t1"), true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ops::get_target(s, &t)
        .await
        .map(|t| t.luns.is_empty())
        .unwrap_or(false));
}

/// A stale commit is refused and changes nothing.
pub async fn stale_commit_conflicts(s1: Store, s2: Store) {
    add_nodes(&*s1, &["a"]).await;
    let name = img("cas");
    ops::create_image(&*s1, &spec("cas", ByteSize::gib(1), &["a"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let old = s1.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    let mut a = old.clone();
    a.bump_generation();
    assert!(s2
        .commit_image(&old, &a)
        .await
        .unwrap_or_else(|e| panic!("{e}")));
    let mut b = old.clone();
    b.image.hypervisors.insert(n("a"));
    assert!(!s1
        .commit_image(&old, &b)
        .await
        .unwrap_or_else(|e| panic!("{e}")));
    let now = s1.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(now.image.generation, 1);
    assert!(now.image.hypervisors.is_empty());
    assert_eq!(now.version, 2);
}

/// Two writers on separate handles racing read-modify-writes on one image:
/// no update is lost.
pub async fn racing_writers_lose_nothing(s1: Store, s2: Store, rounds: u64) {
    add_nodes(&*s1, &["a", "b"]).await;
    let name = img("race");
    ops::create_image(&*s1, &spec("race", ByteSize::gib(1), &["a", "b"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let writer = |s: Store, base: u64| {
        let name = name.clone();
        tokio::spawn(async move {
            for i in 0..rounds {
                let b = base + i;
                ops::set_sync_state(
                    &*s,
                    &name,
                    &n("b"),
                    Some(b),
                    Some(b + 1),
                    SyncState::OutOfSync,
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
                ops::update_image(&*s, &name, |r| {
                    r.bump_generation();
                    Ok(())
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            }
        })
    };
    let (x, y) = tokio::join!(writer(s1.clone(), 0), writer(s2.clone(), 100));
    x.unwrap_or_else(|e| panic!("{e}"));
    y.unwrap_or_else(|e| panic!("{e}"));
    let r = s1.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    for b in (0..rounds).chain(100..100 + rounds) {
        assert_eq!(
            r.block_state(BlockIndex(b), &n("b")),
            Some(SyncState::OutOfSync),
            "block {b} lost its update"
        );
    }
    assert_eq!(
        r.block_state(BlockIndex(rounds), &n("b")),
        Some(SyncState::InSync)
    );
    assert_eq!(r.image.generation, 2 * rounds, "a generation bump was lost");
    assert_eq!(r.version, 1 + 4 * rounds);
}

/// A change made through one handle reaches a subscriber on another.
pub async fn change_feed_delivers(s1: Store, s2: Store) {
    let mut feed = s1.subscribe().await.unwrap_or_else(|e| panic!("{e}"));
    add_nodes(&*s2, &["a"]).await;
    ops::create_image(&*s2, &spec("feed", ByteSize::gib(1), &["a"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let want = Change::Image {
        name: "feed".into(),
        version: 1,
    };
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.next().await {
                Some(Ok(c)) if c == want => return c,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("feed error: {e}"),
                None => panic!("feed ended"),
            }
        }
    })
    .await;
    assert_eq!(got.ok(), Some(want));
}

// ---- the writer primitives (invariants 1, 4 and 5, ARCHITECTURE.md) ----

fn ok<T>(r: Result<T, Error>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Waits up to 10 s for a change matching `want` on `feed`.
async fn expect_change(
    feed: &mut blockmap::store::ChangeFeed,
    want: impl Fn(&Change) -> bool,
) -> Change {
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.next().await {
                Some(Ok(c)) if want(&c) => return c,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("feed error: {e}"),
                None => panic!("feed ended"),
            }
        }
    })
    .await;
    got.unwrap_or_else(|_| panic!("no matching change within 10 s"))
}

/// Marks set exactly the given bits, are visible after a reload through
/// another handle, reach the change feed, and bad requests change nothing.
pub async fn dirty_marks(s1: Store, s2: Store) {
    add_nodes(&*s1, &["a", "b"]).await;
    let name = img("marks");
    // 8 GiB at 64 KiB: 131,072 bits, two bitmap chunks (65,536 bits each).
    ops::create_image(&*s1, &spec("marks", ByteSize::gib(8), &["a", "b"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let g = ok(s1
        .acquire_lease(&name, &n("a"), 10_000, UnixMillis(1_000))
        .await)
    .generation;
    let mut feed = ok(s2.subscribe().await);
    let bits = [(3, 5), (16, 40), (65_530, 65_540), (131_071, 131_072)];
    let v0 = ok(s1.load_image(&name).await).version;
    let out = ok(s1.mark_dirty(&name, &n("b"), g, &bits).await);
    assert_eq!(out.version, v0 + 1);
    let r = ok(s2.load_image(&name).await);
    assert_eq!(r.version, out.version);
    let bm = r
        .dirty
        .get(&n("b"))
        .unwrap_or_else(|| panic!("no bitmap for b"));
    let want = |i: u64| bits.iter().any(|(f, l)| (*f..*l).contains(&i));
    for i in (0..70_000).chain(131_000..131_072) {
        assert_eq!(bm.get(i), want(i), "bit {i}");
    }
    assert_eq!(bm.count(), 2 + 24 + 10 + 1);
    assert!(!r.dirty.contains_key(&n("a")));
    // What `locus image info --json` shows.
    let shown: u64 = r
        .summary()
        .iter()
        .flat_map(|run| run.locations.iter())
        .filter(|l| l.node == n("b"))
        .map(|l| l.dirty_bits)
        .sum();
    assert_eq!(shown, 37);
    let c = expect_change(&mut feed, |c| matches!(c, Change::Dirty { .. })).await;
    assert_eq!(
        c,
        Change::Dirty {
            name: "marks".into(),
            node: "b".into(),
            version: out.version,
            dirty: true,
            bits: bits.to_vec(),
        }
    );
    // Refusals change nothing.
    let before = ok(s1.load_image(&name).await);
    for bad in [(5, 5), (9, 3), (131_071, 131_073)] {
        assert_eq!(
            kind(s1.mark_dirty(&name, &n("b"), g, &[(0, 1), bad]).await),
            ErrorKind::Invalid
        );
    }
    assert_eq!(
        kind(s1.mark_dirty(&name, &n("zz"), g, &[(0, 1)]).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s1.mark_dirty(&img("nope"), &n("b"), g, &[(0, 1)]).await),
        ErrorKind::NotFound
    );
    assert_eq!(ok(s1.load_image(&name).await), before);
    // An empty request checks the generation and changes nothing.
    assert_eq!(
        ok(s1.mark_dirty(&name, &n("b"), g, &[]).await).version,
        before.version
    );
    // Clearing: the bits and then the chunks go.
    let out = ok(s1.clear_dirty(&name, &n("b"), g, &[(0, 65_535)]).await);
    let r = ok(s2.load_image(&name).await);
    assert_eq!(r.version, out.version);
    let bm = r
        .dirty
        .get(&n("b"))
        .unwrap_or_else(|| panic!("no bitmap for b"));
    assert_eq!(bm.count(), 5 + 1);
    assert!(bm.get(65_535) && bm.get(131_071) && !bm.get(39));
    ok(s1.clear_dirty(&name, &n("b"), g, &[(0, 131_072)]).await);
    assert!(ok(s2.load_image(&name).await).dirty.is_empty());
    let c = expect_change(&mut feed, |c| {
        matches!(c, Change::Dirty { dirty: false, .. })
    })
    .await;
    assert!(
        matches!(c, Change::Dirty { ref bits, .. } if bits == &[(0, 65_535)]),
        "{c:?}"
    );
    // Syncing -> in-sync waits for clean bits (invariant 1 meets resync).
    ops::add_location(&*s1, &name, &n("a"), None, None)
        .await
        .err()
        .unwrap_or_else(|| panic!("a is already a location"));
    let b = n("b");
    ok(ops::set_sync_state(&*s1, &name, &b, Some(0), Some(1), SyncState::OutOfSync).await);
    ok(ops::set_sync_state(&*s1, &name, &b, Some(0), Some(1), SyncState::Syncing).await);
    ok(s1.mark_dirty(&name, &b, g, &[(10, 11)]).await);
    assert_eq!(
        kind(ops::set_sync_state(&*s1, &name, &b, Some(0), Some(1), SyncState::InSync).await),
        ErrorKind::Refused
    );
    ok(s1.clear_dirty(&name, &b, g, &[(10, 11)]).await);
    ok(ops::set_sync_state(&*s1, &name, &b, Some(0), Some(1), SyncState::InSync).await);
}

/// A writer whose generation is stale (another took the lease) can change
/// nothing: marks, clears, activity-log changes, renewal and release are
/// all refused with `Fenced`.
pub async fn stale_generation_is_fenced(s1: Store, s2: Store) {
    add_nodes(&*s1, &["a", "b"]).await;
    let name = img("fence");
    ops::create_image(&*s1, &spec("fence", ByteSize::gib(1), &["a", "b"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let old = ok(s1
        .acquire_lease(&name, &n("a"), 1_000, UnixMillis(10_000))
        .await);
    ok(s1
        .al_reset(&name, old.generation, ByteSize::mib(4), &[1])
        .await);
    ok(s1
        .mark_dirty(&name, &n("b"), old.generation, &[(0, 1)])
        .await);
    // a is partitioned; its lease runs out; b takes over.
    let new = ok(s2
        .acquire_lease(&name, &n("b"), 1_000, UnixMillis(11_000))
        .await);
    assert!(new.generation > old.generation);
    let before = ok(s2.load_image(&name).await);
    let al_before = ok(s2.al_get(&name).await);
    let fenced = |r: Result<(), Error>| match r {
        Err(e @ Error::Fenced { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Conflict);
            assert!(
                e.to_string()
                    .contains(&format!("current generation {}", new.generation)),
                "{e}"
            );
        }
        other => panic!("expected Fenced, got {other:?}"),
    };
    let g = old.generation;
    fenced(s1.mark_dirty(&name, &n("b"), g, &[(5, 6)]).await.map(drop));
    fenced(s1.clear_dirty(&name, &n("b"), g, &[(0, 1)]).await.map(drop));
    fenced(s1.al_add(&name, g, &[9]).await);
    fenced(s1.al_remove(&name, g, &[1]).await);
    fenced(s1.al_reset(&name, g, ByteSize::mib(4), &[]).await.map(drop));
    fenced(
        s1.renew_lease(&name, &n("a"), g, 1_000, UnixMillis(11_001))
            .await
            .map(drop),
    );
    fenced(s1.release_lease(&name, &n("a"), g).await);
    assert_eq!(
        ok(s2.load_image(&name).await),
        before,
        "a fenced writer changed the record"
    );
    assert_eq!(ok(s2.al_get(&name).await), al_before);
    assert_eq!(ok(s2.get_lease(&name).await), Some(new.clone()));
    // The new writer works with its own generation.
    ok(s2
        .mark_dirty(&name, &n("a"), new.generation, &[(5, 6)])
        .await);
}

/// Acquire, re-acquire, renew, expiry, takeover and release, driven by
/// explicit times; generations strictly increase; the feed carries them.
pub async fn lease_lifecycle(s1: Store, s2: Store) {
    add_nodes(&*s1, &["a", "b"]).await;
    let name = img("lease");
    ops::create_image(&*s1, &spec("lease", ByteSize::gib(1), &["a"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (n("a"), n("b"));
    assert_eq!(ok(s1.get_lease(&name).await), None);
    assert_eq!(kind(s1.get_lease(&img("nope")).await), ErrorKind::NotFound);
    assert_eq!(
        kind(s1.acquire_lease(&img("nope"), &a, 10, UnixMillis(0)).await),
        ErrorKind::NotFound
    );
    let mut feed = ok(s2.subscribe().await);
    let l1 = ok(s1.acquire_lease(&name, &a, 500, UnixMillis(1_000)).await);
    assert_eq!(
        (l1.holder.clone(), l1.generation, l1.expires),
        (a.clone(), 1, UnixMillis(1_500))
    );
    let r = ok(s2.load_image(&name).await);
    assert_eq!(
        r.image.generation, 1,
        "the lease's generation is the image's"
    );
    let c = expect_change(&mut feed, |c| matches!(c, Change::Lease { .. })).await;
    assert_eq!(
        c,
        Change::Lease {
            name: "lease".into(),
            holder: Some("a".into()),
            generation: 1,
            version: r.version,
        }
    );
    // Held: b is refused before expiry.
    match s2.acquire_lease(&name, &b, 500, UnixMillis(1_499)).await {
        Err(e @ Error::LeaseHeld { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Conflict);
            assert!(e.to_string().contains("held by 'a' (generation 1)"), "{e}");
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    // a restarted: re-acquiring is a new writer with a new generation.
    let l2 = ok(s1.acquire_lease(&name, &a, 500, UnixMillis(1_200)).await);
    assert_eq!(l2.generation, 2);
    assert_eq!(
        kind(s1.renew_lease(&name, &a, 1, 500, UnixMillis(1_300)).await),
        ErrorKind::Conflict
    );
    let l2 = ok(s1.renew_lease(&name, &a, 2, 500, UnixMillis(1_400)).await);
    assert_eq!(l2.expires, UnixMillis(1_900));
    assert_eq!(ok(s2.get_lease(&name).await), Some(l2.clone()));
    assert_eq!(
        kind(s2.renew_lease(&name, &b, 2, 500, UnixMillis(1_400)).await),
        ErrorKind::Conflict
    );
    assert_eq!(
        kind(s2.acquire_lease(&name, &b, 500, UnixMillis(1_899)).await),
        ErrorKind::Conflict
    );
    // Expired: b takes over; a can no longer renew.
    let l3 = ok(s2.acquire_lease(&name, &b, 500, UnixMillis(1_900)).await);
    assert_eq!((l3.holder.clone(), l3.generation), (b.clone(), 3));
    match s1.renew_lease(&name, &a, 2, 500, UnixMillis(1_950)).await {
        Err(Error::Fenced {
            generation: 2,
            current: 3,
            ..
        }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    // An expired lease nobody took may still be renewed by its holder.
    let l3 = ok(s2.renew_lease(&name, &b, 3, 500, UnixMillis(5_000)).await);
    assert_eq!(l3.expires, UnixMillis(5_500));
    // Release: the generation stays; renew and release again are refused.
    ok(s2.release_lease(&name, &b, 3).await);
    assert_eq!(ok(s1.get_lease(&name).await), None);
    assert_eq!(ok(s1.load_image(&name).await).image.generation, 3);
    let c = expect_change(&mut feed, |c| {
        matches!(c, Change::Lease { holder: None, .. })
    })
    .await;
    assert!(matches!(c, Change::Lease { generation: 3, .. }), "{c:?}");
    for r in [
        s2.release_lease(&name, &b, 3).await,
        s2.renew_lease(&name, &b, 3, 500, UnixMillis(5_100))
            .await
            .map(drop),
    ] {
        match r {
            Err(e @ Error::LeaseNotHeld { .. }) => assert_eq!(e.kind(), ErrorKind::Conflict),
            other => panic!("expected LeaseNotHeld, got {other:?}"),
        }
    }
    // Free again: anyone may take it, with a higher generation.
    assert_eq!(
        ok(s1.acquire_lease(&name, &a, 500, UnixMillis(5_100)).await).generation,
        4
    );
    // Leases and the log go with the image.
    ok(ops::destroy_image(&*s1, &name, false).await);
    assert_eq!(kind(s1.get_lease(&name).await), ErrorKind::NotFound);
}

/// Two handles racing to acquire at the same instant: exactly one wins each
/// round, and generations strictly increase.
pub async fn racing_acquire_one_wins(s1: Store, s2: Store, rounds: u64) {
    add_nodes(&*s1, &["a", "b"]).await;
    let name = img("racelease");
    ops::create_image(&*s1, &spec("racelease", ByteSize::gib(1), &["a"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut last = 0;
    for round in 0..rounds {
        let now = UnixMillis(1_000 * (round + 1));
        let (x, y) = tokio::join!(
            {
                let (s, name) = (s1.clone(), name.clone());
                tokio::spawn(async move { s.acquire_lease(&name, &n("a"), 100, now).await })
            },
            {
                let (s, name) = (s2.clone(), name.clone());
                tokio::spawn(async move { s.acquire_lease(&name, &n("b"), 100, now).await })
            }
        );
        let (x, y) = (
            ok(x.map_err(|e| Error::invalid("join", e.to_string()))),
            ok(y.map_err(|e| Error::invalid("join", e.to_string()))),
        );
        let winner = match (x, y) {
            (Ok(l), Err(Error::LeaseHeld { .. })) | (Err(Error::LeaseHeld { .. }), Ok(l)) => l,
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        };
        assert!(
            winner.generation > last,
            "round {round}: generation did not rise"
        );
        last = winner.generation;
        assert_eq!(ok(s1.get_lease(&name).await), Some(winner.clone()));
        ok(s1
            .release_lease(&name, &winner.holder, winner.generation)
            .await);
    }
    assert_eq!(ok(s2.load_image(&name).await).image.generation, last);
}

/// The activity log: owned by a generation, replaced by the next writer
/// after it read the old extents; a zombie cannot add to it.
pub async fn activity_log_takeover(s1: Store, s2: Store) {
    add_nodes(&*s1, &["a", "b"]).await;
    let name = img("al");
    ops::create_image(&*s1, &spec("al", ByteSize::gib(1), &["a", "b"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok(s1.al_get(&name).await), ActivityLog::default());
    assert_eq!(kind(s1.al_get(&img("nope")).await), ErrorKind::NotFound);
    let g1 = ok(s1.acquire_lease(&name, &n("a"), 1_000, UnixMillis(0)).await).generation;
    // Before its reset the writer may not add (it has not reconciled).
    match s1.al_add(&name, g1, &[1]).await {
        Err(e @ Error::ActivityLogNotTakenOver { .. }) => assert_eq!(e.kind(), ErrorKind::Conflict),
        other => panic!("expected ActivityLogNotTakenOver, got {other:?}"),
    }
    assert_eq!(
        kind(s1.al_reset(&name, g1, ByteSize(3 << 20), &[]).await),
        ErrorKind::Invalid
    );
    assert_eq!(
        ok(s1.al_reset(&name, g1, ByteSize::mib(4), &[]).await),
        ActivityLog::default()
    );
    ok(s1.al_add(&name, g1, &[1, 2, 3, 1_000_000]).await);
    ok(s1.al_add(&name, g1, &[2]).await);
    ok(s1.al_remove(&name, g1, &[2, 77]).await);
    let log = ok(s2.al_get(&name).await);
    assert_eq!(log.generation, g1);
    assert_eq!(log.extent_size, ByteSize::mib(4));
    assert_eq!(
        log.extents.into_iter().collect::<Vec<_>>(),
        vec![1, 3, 1_000_000]
    );
    // a crashes or freezes; b takes over, reads a's extents, reconciles, resets.
    let g2 = ok(s2
        .acquire_lease(&name, &n("b"), 1_000, UnixMillis(1_000))
        .await)
    .generation;
    let found = ok(s2.al_get(&name).await);
    assert_eq!((found.generation, found.extents.len()), (g1, 3));
    assert_eq!(kind(s1.al_add(&name, g1, &[9]).await), ErrorKind::Conflict);
    let replaced = ok(s2.al_reset(&name, g2, ByteSize::mib(1), &[7]).await);
    assert_eq!(replaced, found, "al_reset returns the log it replaced");
    for r in [
        s1.al_add(&name, g1, &[9]).await,
        s1.al_remove(&name, g1, &[7]).await,
    ] {
        match r {
            Err(Error::Fenced { .. }) => {}
            other => panic!("zombie changed the log: {other:?}"),
        }
    }
    ok(s2.al_add(&name, g2, &[8]).await);
    let log = ok(s1.al_get(&name).await);
    assert_eq!(
        (
            log.generation,
            log.extent_size,
            log.extents.into_iter().collect::<Vec<_>>()
        ),
        (g2, ByteSize::mib(1), vec![7, 8])
    );
}
