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
use blockmap::types::{BlockIndex, ByteSize, ImageName, Iqn, NodeId};
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

fn spec(name: &str, size: ByteSize, locs: &[&str]) -> ImageSpec {
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

/// The UKAI walkthrough on the model (DESIGN.md invariant 7).
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
