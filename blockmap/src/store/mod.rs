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
//!   after [`MetadataStore::subscribe`] returned;
//! - the writer primitives (`mark_dirty`, `clear_dirty`, the lease and the
//!   activity log) each run as one atomic step on the server (one Lua script
//!   in Redis, one redb transaction embedded: one round trip), checked
//!   against the image's current generation. A refused call changes nothing.
//!
//! Generations (invariant 4, ARCHITECTURE.md) rise only through
//! [`MetadataStore::acquire_lease`] (or a header commit, as the older
//! `ops::bump_generation` does); every writer primitive that takes a
//! `generation` refuses a stale one with [`Error::Fenced`]
//! ([`crate::ErrorKind::Conflict`]).

pub mod embedded;
pub mod redis;

use crate::change::{Change, DocKind};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::record::ImageRecord;
use crate::types::{ByteSize, ImageName, NodeId, UnixMillis};
use crate::writer::{ActivityLog, Lease, MarkOutcome};
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

    /// Sets the bits `[first, last)` of each range of `bits` (bit indexes at
    /// the image's granularity) in `node`'s dirty bitmap, iff the image's
    /// generation is still `generation` (else [`Error::Fenced`], nothing
    /// written). Invariant 1 (ARCHITECTURE.md): when this returns `Ok` the
    /// mark is durable (Redis: only with `appendonly yes` and
    /// `appendfsync always`; embedded: the redb commit is fsynced).
    ///
    /// One round trip, touching only the bitmap chunks of the ranges (never
    /// a read-modify-write of the record). Bumps the image version (so a
    /// concurrent `commit_image` from an older read cannot overwrite the
    /// bits) and publishes [`Change::Dirty`]. Refuses, changing nothing,
    /// empty or reversed ranges and ranges past the end ([`Error::Invalid`])
    /// and blocks where `node` is not a location ([`Error::NotALocation`]).
    /// An empty `bits` checks the generation and changes nothing.
    async fn mark_dirty(
        &self,
        name: &ImageName,
        node: &NodeId,
        generation: u64,
        bits: &[(u64, u64)],
    ) -> Result<MarkOutcome>;

    /// Clears bits, otherwise exactly as [`MetadataStore::mark_dirty`]
    /// (resync calls it as copied ranges land). Chunks that become clean are
    /// deleted.
    async fn clear_dirty(
        &self,
        name: &ImageName,
        node: &NodeId,
        generation: u64,
        bits: &[(u64, u64)],
    ) -> Result<MarkOutcome>;

    /// Takes the write lease of `name` for `holder` until `now + ttl_ms`.
    /// Succeeds when the lease is free, expired at `now`, or already held
    /// by `holder` (a restarted writer is a new writer); fails with
    /// [`Error::LeaseHeld`] otherwise. Every success raises the image's
    /// generation by one and its version, atomically, and publishes
    /// [`Change::Lease`]. Takeover after a crash is: wait out the TTL, then
    /// acquire. `now` is wall-clock time, passed in so that tests and
    /// callers control it.
    async fn acquire_lease(
        &self,
        name: &ImageName,
        holder: &NodeId,
        ttl_ms: u64,
        now: UnixMillis,
    ) -> Result<Lease>;

    /// Extends the lease to `now + ttl_ms` iff the image is still at
    /// `generation` ([`Error::Fenced`] otherwise) and the stored lease has
    /// `holder` and `generation` ([`Error::LeaseNotHeld`] otherwise, e.g.
    /// after a release). A lease that expired but was not taken over may be
    /// renewed: the generation did not move, so nobody else wrote.
    /// Does not bump the image version and publishes nothing.
    async fn renew_lease(
        &self,
        name: &ImageName,
        holder: &NodeId,
        generation: u64,
        ttl_ms: u64,
        now: UnixMillis,
    ) -> Result<Lease>;

    /// Gives the lease up, under the same checks as
    /// [`MetadataStore::renew_lease`]. The generation stays; the next
    /// acquire raises it. Publishes [`Change::Lease`] with no holder.
    async fn release_lease(&self, name: &ImageName, holder: &NodeId, generation: u64)
        -> Result<()>;

    /// The stored lease, if any (it may have expired: compare with the
    /// time). For `locus image info`: holder, generation, expiry.
    async fn get_lease(&self, name: &ImageName) -> Result<Option<Lease>>;

    /// Whether a change this store acknowledged survives a crash of the
    /// store's host: an out-of-sync mark is durable only then (invariant 1,
    /// ARCHITECTURE.md). Redis is durable only with `appendonly yes` and
    /// `appendfsync always`; the embedded store commits with fsync.
    async fn durability(&self) -> Result<Durability>;

    /// Adds hot extents to the activity log (invariant 5, ARCHITECTURE.md),
    /// iff the image is at `generation` ([`Error::Fenced`]) and the log was
    /// reset by this generation ([`Error::ActivityLogNotTakenOver`]).
    /// Durable on `Ok`, one round trip. Adding a present extent is a no-op.
    async fn al_add(&self, name: &ImageName, generation: u64, extents: &[u64]) -> Result<()>;

    /// Removes extents from the activity log, under the checks of
    /// [`MetadataStore::al_add`].
    async fn al_remove(&self, name: &ImageName, generation: u64, extents: &[u64]) -> Result<()>;

    /// The activity log ([`ActivityLog::default`] if no writer reset it yet).
    async fn al_get(&self, name: &ImageName) -> Result<ActivityLog>;

    /// Replaces the activity log with `extents` of `extent_size` owned by
    /// `generation`, iff the image is at `generation` ([`Error::Fenced`]),
    /// and returns the log it replaced. A new writer, after acquiring the
    /// lease, reads the old log ([`MetadataStore::al_get`]), reconciles its
    /// extents, then resets (keeping any extents it still needs in
    /// `extents`). From then on the old generation's `al_add` is fenced.
    /// `extent_size` must be a power of two ([`Error::Invalid`]).
    async fn al_reset(
        &self,
        name: &ImageName,
        generation: u64,
        extent_size: ByteSize,
        extents: &[u64],
    ) -> Result<ActivityLog>;
}

/// What [`MetadataStore::durability`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Durability {
    /// Every acknowledged change is on stable storage.
    pub durable: bool,
    /// What was checked, for operators (e.g. "appendonly no").
    pub detail: String,
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
