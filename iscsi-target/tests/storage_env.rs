//! `LOCUS_STORAGE_ENGINE` selects the engine for `EngineChoice::Auto`.
//! Single test in its own binary because it mutates the environment.

use iscsi_target::storage::{open_file, uring, EngineChoice, ENGINE_ENV};

#[tokio::test]
async fn env_var_selects_engine() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: this binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var(ENGINE_ENV, "pool") };
    let b = open_file(&dir.path().join("a"), 1 << 20, EngineChoice::Auto).unwrap();
    assert_eq!(b.engine_name(), "pool");
    // SAFETY: as above.
    unsafe { std::env::set_var(ENGINE_ENV, "auto") };
    let b = open_file(&dir.path().join("b"), 1 << 20, EngineChoice::Auto).unwrap();
    let expect = if uring::probe() { "uring" } else { "pool" };
    assert_eq!(b.engine_name(), expect);
    // SAFETY: as above.
    unsafe { std::env::remove_var(ENGINE_ENV) };
    let b = open_file(&dir.path().join("c"), 1 << 20, EngineChoice::Auto).unwrap();
    assert_eq!(b.engine_name(), expect);
}
