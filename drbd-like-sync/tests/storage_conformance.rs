//! One conformance suite for every `BlockBackend` engine (memory, pool, io_uring).

use std::sync::Arc;

use bytes::Bytes;
use drbd_like_sync::storage::{
    open_file, resolve_engine, uring, EngineChoice, MemoryBackend, PoolBackend, ResolvedEngine,
    StorageErrorKind, UringBackend,
};

#[path = "common/storage_suite.rs"]
mod storage_suite;
use storage_suite::{conformance, pattern, SIZE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_engine_conforms() {
    conformance(Arc::new(MemoryBackend::new(SIZE))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_engine_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("lun"))
        .unwrap();
    f.set_len(SIZE).unwrap();
    conformance(Arc::new(PoolBackend::new(f, SIZE))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_engine_conforms() {
    assert!(
        uring::probe(),
        "io_uring is expected to work on this machine (kernel.io_uring_disabled?)"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("lun"))
        .unwrap();
    f.set_len(SIZE).unwrap();
    conformance(Arc::new(UringBackend::new(f, SIZE).unwrap())).await;
}

#[tokio::test]
async fn open_file_creates_sparse_and_refuses_size_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    let b = open_file(&p, SIZE, EngineChoice::Pool).unwrap();
    assert_eq!(b.engine_name(), "pool");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), SIZE);
    b.write(0, Bytes::from_static(b"hello"), true)
        .await
        .unwrap();
    drop(b);
    let err = open_file(&p, SIZE * 2, EngineChoice::Pool).err().unwrap();
    assert_eq!(err.kind(), StorageErrorKind::Setup);
    let err = open_file(&p, SIZE / 2, EngineChoice::Pool).err().unwrap();
    assert_eq!(err.kind(), StorageErrorKind::Setup);
    let b = drbd_like_sync::storage::open_file_with(
        &p,
        SIZE * 2,
        drbd_like_sync::storage::OpenOptions {
            engine: EngineChoice::Pool.into(),
            allow_grow: true,
        },
    )
    .unwrap();
    assert_eq!(b.size(), SIZE * 2);
    assert_eq!(&b.read(0, 5).await.unwrap()[..], b"hello");
}

#[test]
fn engine_resolution_falls_back() {
    use EngineChoice::*;
    assert_eq!(resolve_engine(Auto, true).unwrap(), ResolvedEngine::Uring);
    assert_eq!(resolve_engine(Auto, false).unwrap(), ResolvedEngine::Pool);
    assert_eq!(resolve_engine(Pool, true).unwrap(), ResolvedEngine::Pool);
    assert_eq!(resolve_engine(Uring, true).unwrap(), ResolvedEngine::Uring);
    assert!(resolve_engine(Uring, false).is_err());
}

/// The fast-path switches belong to the engine, not the process: two
/// engines in one process (as two nodes in one test) keep their own.
#[tokio::test]
async fn tuning_is_per_engine() {
    use drbd_like_sync::storage::{EngineConfig, Tuning};
    let dir = tempfile::tempdir().unwrap();
    let off = EngineConfig {
        choice: EngineChoice::Pool,
        tuning: Tuning {
            zero_copy: false,
            inline_writes: false,
        },
    };
    let plain = open_file(&dir.path().join("a"), SIZE, off).unwrap();
    let fast = open_file(&dir.path().join("b"), SIZE, EngineChoice::Pool).unwrap();
    for b in [&plain, &fast] {
        b.write(0, pattern(3, 1 << 20), false).await.unwrap();
        assert_eq!(b.read(0, 1 << 20).await.unwrap(), pattern(3, 1 << 20));
    }
    assert!(plain.cached_range(0, 1 << 20).is_none(), "zero copy off");
    if drbd_like_sync::storage::zero_copy_available() {
        assert!(fast.cached_range(0, 1 << 20).is_some(), "zero copy on");
    }
}
