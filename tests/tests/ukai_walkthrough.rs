//! The UKAI workflow against a real redis-server, checking the metadata in
//! Redis at each step: create an image on node A, add location B, check it
//! is out of sync, try to remove A (refused: last in-sync copy), mark B in
//! sync through the model's API, remove A, destroy.

mod common;

use blockmap::ops;
use blockmap::placement::SyncState;
use blockmap::store::redis::RedisStore;
use blockmap::store::MetadataStore;
use blockmap::types::{BlockIndex, ImageName, NodeId};
use blockmap::ErrorKind;
use common::locus;
use common::redis::RedisServer;

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn ukai_walkthrough_on_redis() {
    let srv = RedisServer::start();
    let m = srv.url.as_str();
    let store = RedisStore::connect(m)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name = ImageName::new("ukai").unwrap_or_else(|e| panic!("{e}"));
    let mut feed = store.subscribe().await.unwrap_or_else(|e| panic!("{e}"));

    locus(m, &["node", "add", "A", "--address", "127.0.0.1:7001"]).ok();
    locus(m, &["node", "add", "B", "--address", "127.0.0.1:7002"]).ok();

    // 1. Create on A: one run, A in sync.
    locus(
        m,
        &[
            "image",
            "create",
            "ukai",
            "--size",
            "8G",
            "--block-size",
            "4M",
            "--location",
            "A",
        ],
    )
    .ok();
    let r = store
        .load_image(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.image.block_count(), 2048);
    assert_eq!(r.placement.runs().len(), 1);
    assert_eq!(
        r.block_state(BlockIndex(2047), &n("A")),
        Some(SyncState::InSync)
    );

    // 2. Add B: out of sync everywhere.
    locus(m, &["location", "add", "ukai", "B"]).ok();
    let r = store
        .load_image(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for b in [0, 1024, 2047] {
        assert_eq!(
            r.block_state(BlockIndex(b), &n("B")),
            Some(SyncState::OutOfSync)
        );
    }
    let info = locus(m, &["--json", "image", "info", "ukai"]).ok().json();
    assert_eq!(info["placement"][0]["locations"][1]["state"], "out-of-sync");

    // 3. Removing A is refused and changes nothing.
    let before = r.clone();
    let out = locus(m, &["location", "remove", "ukai", "A"]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("last in-sync copy of blocks 0-2047"),
        "{}",
        out.stderr
    );
    assert_eq!(store.load_image(&name).await.ok(), Some(before));

    // 4. Mark B in sync through the model's API, the way resync will:
    //    out-of-sync -> syncing -> in-sync (the direct step is refused).
    let e = ops::set_sync_state(&store, &name, &n("C"), None, None, SyncState::InSync).await;
    assert_eq!(e.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    let e = ops::set_sync_state(&store, &name, &n("B"), None, None, SyncState::InSync).await;
    assert_eq!(e.err().map(|e| e.kind()), Some(ErrorKind::Refused));
    for state in [SyncState::Syncing, SyncState::InSync] {
        ops::set_sync_state(&store, &name, &n("B"), None, None, state)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let r = store
        .load_image(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.block_state(BlockIndex(7), &n("B")),
        Some(SyncState::InSync)
    );

    // 5. Now A can go.
    locus(m, &["location", "remove", "ukai", "A"]).ok();
    let r = store
        .load_image(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.location_nodes().into_iter().collect::<Vec<_>>(),
        vec![n("B")]
    );

    // 6. Destroy: gone from Redis, keys included.
    locus(m, &["image", "destroy", "ukai"]).ok();
    assert_eq!(
        store.load_image(&name).await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        locus(m, &["--json", "image", "list"]).ok().json(),
        serde_json::json!([])
    );
    let client = redis::Client::open(m).unwrap_or_else(|e| panic!("{e}"));
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("locus:*ukai*")
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(left.is_empty(), "keys left behind: {left:?}");

    // The change feed saw every step: 2 nodes, create, add, set (syncing,
    // then in-sync), remove, destroy.
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let c = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
            .await
            .unwrap_or_else(|_| panic!("change feed stalled after {seen:?}"));
        seen.push(
            c.unwrap_or_else(|| panic!("feed ended"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    assert_eq!(
        seen.last(),
        Some(&blockmap::change::Change::ImageDeleted {
            name: "ukai".into()
        })
    );
}
