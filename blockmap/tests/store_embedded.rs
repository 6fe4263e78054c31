//! The conformance suite against the embedded (redb) store, plus its own
//! failure modes.

mod conformance;

use blockmap::error::{Error, ErrorKind};
use blockmap::store::embedded::EmbeddedStore;
use conformance::Store;
use std::sync::Arc;
use std::time::Duration;

fn open(dir: &tempfile::TempDir) -> Store {
    Arc::new(
        EmbeddedStore::open(dir.path().to_path_buf())
            .unwrap_or_else(|e| panic!("{e}"))
            .with_poll_interval(Duration::from_millis(10)),
    )
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn images_roundtrip() {
    let d = tmp();
    conformance::images_roundtrip(open(&d)).await;
}

#[tokio::test]
async fn placement_walkthrough() {
    let d = tmp();
    conformance::placement_walkthrough(open(&d)).await;
}

#[tokio::test]
async fn dirty_bitmaps() {
    let d = tmp();
    conformance::dirty_bitmaps(open(&d)).await;
}

#[tokio::test]
async fn nodes_and_targets() {
    let d = tmp();
    conformance::nodes_and_targets(open(&d)).await;
}

#[tokio::test]
async fn stale_commit_conflicts() {
    let d = tmp();
    conformance::stale_commit_conflicts(open(&d), open(&d)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_lose_nothing() {
    let d = tmp();
    conformance::racing_writers_lose_nothing(open(&d), open(&d), 25).await;
}

#[tokio::test]
async fn change_feed_delivers() {
    let d = tmp();
    conformance::change_feed_delivers(open(&d), open(&d)).await;
}

#[tokio::test]
async fn dirty_marks() {
    let d = tmp();
    conformance::dirty_marks(open(&d), open(&d)).await;
}

#[tokio::test]
async fn stale_generation_is_fenced() {
    let d = tmp();
    conformance::stale_generation_is_fenced(open(&d), open(&d)).await;
}

#[tokio::test]
async fn lease_lifecycle() {
    let d = tmp();
    conformance::lease_lifecycle(open(&d), open(&d)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_acquire_one_wins() {
    let d = tmp();
    conformance::racing_acquire_one_wins(open(&d), open(&d), 20).await;
}

#[tokio::test]
async fn activity_log_takeover() {
    let d = tmp();
    conformance::activity_log_takeover(open(&d), open(&d)).await;
}

#[tokio::test]
async fn corrupt_file_is_named() {
    let d = tmp();
    let path = d.path().join("metadata.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap_or_else(|e| panic!("{e}"));
    match EmbeddedStore::open(d.path().to_path_buf()) {
        Err(e @ Error::CorruptFile { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
    // Nothing was overwritten.
    assert_eq!(std::fs::read(&path).ok(), Some(vec![0x5a; 8192]));
}

/// Handles that open the file per operation (as a daemon sharing the store
/// with the CLI would) race without losing updates, and see each other's
/// changes on the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_handles_race_and_feed() {
    let (d1, d2) = (tmp(), tmp());
    let released = |d: &tempfile::TempDir| -> Store {
        Arc::new(
            EmbeddedStore::open(d.path().to_path_buf())
                .unwrap_or_else(|e| panic!("{e}"))
                .release_between_operations()
                .with_poll_interval(Duration::from_millis(10)),
        )
    };
    conformance::change_feed_delivers(released(&d1), released(&d1)).await;
    conformance::racing_writers_lose_nothing(released(&d2), released(&d2), 5).await;
}
