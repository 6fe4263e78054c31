//! The conformance suite against a real redis-server, plus Redis failure
//! modes and size checks.

mod common;
mod conformance;

use blockmap::error::ErrorKind;
use blockmap::image::ImageSpec;
use blockmap::ops;
use blockmap::placement::SyncState;
use blockmap::store::redis::RedisStore;
use blockmap::store::MetadataStore;
use blockmap::types::ByteSize;
use common::redis::RedisServer;
use conformance::{img, n, Store};
use std::sync::Arc;

async fn connect(srv: &RedisServer) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(&srv.url)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

async fn store(srv: &RedisServer) -> Store {
    connect(srv).await
}

#[tokio::test]
async fn images_roundtrip() {
    let srv = RedisServer::start();
    conformance::images_roundtrip(store(&srv).await).await;
}

#[tokio::test]
async fn placement_walkthrough() {
    let srv = RedisServer::start();
    conformance::placement_walkthrough(store(&srv).await).await;
}

#[tokio::test]
async fn dirty_bitmaps() {
    let srv = RedisServer::start();
    conformance::dirty_bitmaps(store(&srv).await).await;
}

#[tokio::test]
async fn nodes_and_targets() {
    let srv = RedisServer::start();
    conformance::nodes_and_targets(store(&srv).await).await;
}

#[tokio::test]
async fn stale_commit_conflicts() {
    let srv = RedisServer::start();
    conformance::stale_commit_conflicts(store(&srv).await, store(&srv).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_lose_nothing() {
    let srv = RedisServer::start();
    conformance::racing_writers_lose_nothing(store(&srv).await, store(&srv).await, 25).await;
}

#[tokio::test]
async fn change_feed_delivers() {
    let srv = RedisServer::start();
    conformance::change_feed_delivers(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn dirty_marks() {
    let srv = RedisServer::start();
    conformance::dirty_marks(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn stale_generation_is_fenced() {
    let srv = RedisServer::start();
    conformance::stale_generation_is_fenced(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn lease_lifecycle() {
    let srv = RedisServer::start();
    conformance::lease_lifecycle(store(&srv).await, store(&srv).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_acquire_one_wins() {
    let srv = RedisServer::start();
    conformance::racing_acquire_one_wins(store(&srv).await, store(&srv).await, 20).await;
}

#[tokio::test]
async fn activity_log_takeover() {
    let srv = RedisServer::start();
    conformance::activity_log_takeover(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn redis_down_is_a_clear_error() {
    let port = {
        let srv = RedisServer::start_with_password("unused-password");
        srv.port
    }; // server stopped: nothing listens on the port now
    let e = RedisStore::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .err();
    let e = e.unwrap_or_else(|| panic!("connect to a stopped server succeeded"));
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("cannot reach redis"), "{e}");
}

#[tokio::test]
async fn wrong_or_missing_password_is_a_clear_error() {
    let srv = RedisServer::start_with_password("right-password-123");
    for url in [
        format!("redis://:wrong-password@127.0.0.1:{}/0", srv.port),
        srv.url_without_password(),
    ] {
        let e = RedisStore::connect(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} connected"));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("authentication failed"), "{e}");
        assert!(
            !e.to_string().contains("wrong-password"),
            "password leaked: {e}"
        );
    }
    assert!(RedisStore::connect(&srv.url).await.is_ok());
}

/// Scale: a 1 TiB, 4 MiB-block, 3-location image is small in Redis, and one
/// block's state change sends O(1) bytes.
#[tokio::test]
async fn terabyte_image_is_small_and_changes_are_o1() {
    let srv = RedisServer::start();
    let s = connect(&srv).await;
    conformance::add_nodes(&*s, &["a", "b", "c"]).await;
    let name = img("big");
    let spec = ImageSpec::new(name.clone(), ByteSize::tib(1), vec![n("a"), n("b"), n("c")]);
    ops::create_image(&*s, &spec)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mem = s
        .image_memory_usage(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(mem < 1 << 20, "1 TiB image uses {mem} bytes in redis");
    let before = s.bytes_written();
    ops::set_sync_state(
        &*s,
        &name,
        &n("b"),
        Some(131_072),
        Some(131_073),
        SyncState::OutOfSync,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let sent = s.bytes_written() - before;
    assert!(sent < 1024, "one block change sent {sent} bytes");
    let before = s.bytes_written();
    ops::mark_bytes(&*s, &name, &n("c"), 700 << 30, 4096, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = s.bytes_written() - before;
    assert!(sent < 1024, "one dirty mark sent {sent} bytes");
    let r = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.placement.runs().len(), 3);
    assert_eq!(r.dirty.get(&n("c")).map(|b| b.count()), Some(1));
    let mem = s
        .image_memory_usage(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        mem < 64 << 10,
        "one dirty bit far into the image costs {mem} bytes"
    );
    // Clearing removes every bitmap key.
    ops::mark_bytes(&*s, &name, &n("c"), 700 << 30, 4096, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(srv.url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("locus:oos:*")
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(keys.is_empty(), "{keys:?}");
}
