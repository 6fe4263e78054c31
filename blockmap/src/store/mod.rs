//! The [`MetadataStore`] trait and how to open a backend from a URL.
//!
//! The trait is deliberately small and mechanical: load and commit image
//! records with optimistic concurrency, and keep small versioned documents
//! (nodes, targets, statistics). All policy (validation, invariants, retry)
//! lives above it in [`crate::ops`] and [`crate::record`], so both backends
//! have the same semantics by construction.
//!
//! Semantics every backend guarantees (checked by the conformance suite):
//! - `commit_image(old, new)` applies `new.diff(old)` atomically iff the
//!   stored version still equals `old.version`, increments the version and
//!   publishes a [`Change`]; otherwise it returns `Ok(false)` and changes nothing;
//! - `put_doc` with `expected = None` creates only if absent, with
//!   `Some(v)` replaces or deletes only if the stored version is `v`;
//! - a change feed subscriber receives a [`Change`] for every commit made
//!   after [`MetadataStore::subscribe`] returned.

pub mod embedded;
pub mod redis;

use crate::change::{Change, DocKind};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::record::ImageRecord;
use crate::types::ImageName;
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A document with the version it was stored at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Key within its kind.
    pub key: String,
    /// Version, starting at 1 on creation.
    pub version: u64,
    /// JSON value.
    pub value: String,
}

/// A stream of [`Change`]s. Dropping it unsubscribes.
///
/// A feed is a hint, not a log: after an `Err` or `None` (the Redis pub/sub
/// connection dropped, or the embedded store's poller failed), changes made
/// in the gap are not replayed. A daemon then subscribes again and reloads
/// everything it caches (targets, LUNs, ACLs, CHAP, placement). The embedded
/// feed also misses changes if more than [`embedded::CHANGE_LOG_LEN`] land
/// between two polls; compare `Change::Image::version` with the cached
/// record's version to detect staleness.
pub struct ChangeFeed {
    rx: mpsc::Receiver<Result<Change>>,
    task: tokio::task::JoinHandle<()>,
}

impl ChangeFeed {
    /// Wraps a receiver fed by `task`, which is aborted on drop.
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<Change>>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { rx, task }
    }

    /// The next change; `None` once the feed has ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Change>> {
        self.rx.recv().await
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A metadata store backend. See the module docs for the contract.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Where the store is, with any password masked.
    fn describe(&self) -> String;

    /// Stores a new image record (version becomes 1). Fails with
    /// [`Error::ImageExists`] if the name is taken.
    async fn create_image(&self, rec: &ImageRecord) -> Result<()>;

    /// Loads an image record with its current version.
    async fn load_image(&self, name: &ImageName) -> Result<ImageRecord>;

    /// Image headers, sorted by name.
    async fn list_images(&self) -> Result<Vec<Image>>;

    /// Commits `new` if the stored version is still `old.version`. `Ok(false)`
    /// on a version conflict (nothing written).
    async fn commit_image(&self, old: &ImageRecord, new: &ImageRecord) -> Result<bool>;

    /// Deletes an image if its stored version is `version`. `Ok(false)` on a
    /// version conflict; [`Error::ImageNotFound`] if absent.
    async fn delete_image(&self, name: &ImageName, version: u64) -> Result<bool>;

    /// One document, if present.
    async fn get_doc(&self, kind: DocKind, key: &str) -> Result<Option<Versioned>>;

    /// All documents of a kind, sorted by key.
    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Versioned>>;

    /// Creates (`expected = None`), replaces or deletes (`value = None`) a
    /// document if its version is as expected. `Ok(false)` on a mismatch.
    async fn put_doc(
        &self,
        kind: DocKind,
        key: &str,
        expected: Option<u64>,
        value: Option<String>,
    ) -> Result<bool>;

    /// Subscribes to the change feed.
    async fn subscribe(&self) -> Result<ChangeFeed>;
}

/// Default embedded store directory.
pub const DEFAULT_DATA_DIR: &str = "./locus-data";

/// Opens a store from a URL: `redis://[:password@]host:port/db`,
/// `embedded://DIR` or a bare directory path (embedded store in `DIR/metadata.redb`).
pub async fn open(url: &str) -> Result<Arc<dyn MetadataStore>> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Arc::new(redis::RedisStore::connect(url).await?))
    } else if let Some(dir) = url.strip_prefix("embedded://") {
        Ok(Arc::new(embedded::EmbeddedStore::open(PathBuf::from(dir))?))
    } else if url.contains("://") {
        Err(Error::invalid(
            "metadata URL",
            format!("'{url}': use redis://[:password@]host:port/db, embedded://DIR or a directory"),
        ))
    } else {
        Ok(Arc::new(embedded::EmbeddedStore::open(PathBuf::from(url))?))
    }
}
