//! The mirrored [`BlockBackend`] a LUN uses (the target role): one image,
//! written by this node as its single writer at one generation, with every
//! write fanned out to every in-sync copy in parallel, and reads served by
//! the nearest in-sync copy.
//!
//! Owns: the placement cache of its image ([`cache`]), the connections to
//! the peers holding copies ([`peers`]), the range lock that orders
//! overlapping writes ([`range_lock`]), and driving the core: it asks
//! [`crate::core::write`] for the plan and the ack rule (invariants 1 and 2,
//! ARCHITECTURE.md) and [`crate::core::read`] for the read order (invariant
//! 3), performs what they ask (data to copies, out-of-sync marks in the
//! metadata store) and reports every outcome back. It does not decide when
//! GOOD may go out: the core does.
//!
//! Must not know: SCSI or iSCSI (it is a [`BlockBackend`] like any engine),
//! the wire format (the [`crate::node::PeerClient`] speaks it). Resync runs
//! through the same range lock and cache ([`resync`]).
//! The lease, the activity log and reconciliation live in the writer shell
//! ([`writer`]): it opens the mirror with an ack gate and an activity log
//! that the operation path consults; a bare [`Mirror::open`] has neither,
//! and its caller owns the lease.
//!
//! One write, from the LUN to the disks:
//!
//! ```text
//!  write(off, data)
//!    |  range lock [off, off+len)      (overlapping writes wait here)
//!    |  cache -> BlockView per block   (InSync / Dirty / PartlyDirty)
//!    |  core: WritePlan -> AckTracker + up-front marks
//!    |
//!    +--> local engine (admit gen) --+
//!    +--> peer A (PeerClient, 5 s) --+--> outcomes --> tracker.step
//!    +--> peer B (PeerClient, 5 s) --+                    |
//!    |                                    marks it asks --+--> store.mark_dirty
//!    |                                    (also applied to the cache at once)
//!    |  wait for every task (so the lock orders whole writes)
//!    v
//!  Status::Good -> Ok     CheckCondition -> Err(Io | NoSpace)
//! ```
//!
//! A copy that answers `Fenced` means another writer took over: the write
//! fails whatever the tracker says, and so does every later one (invariant
//! 4: a zombie stops acknowledging).

mod al;
mod cache;
mod copies;
pub mod job;
mod lease;
mod ops;
pub mod peers;
pub mod range_lock;
mod resync;
pub mod stats;
mod takeover;
mod verify;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blockmap::record::ImageRecord;
use blockmap::store::MetadataStore;
use blockmap::types::{ImageName, NodeId};
use bytes::Bytes;

use crate::core::{ByteRange, Generation};
use crate::node::{CopyError, ImageTable};
use crate::proto::{HandshakeConfig, Limits};
use crate::storage::{check_range, BlockBackend, FileRange, StorageError};

use cache::PlacementCache;
use copies::{CopyOp, Local};
use peers::Peers;
use range_lock::RangeLock;
use stats::{Problems, StatsTable};

pub use resync::{DestProgress, ResyncError, ResyncProgress, ResyncRequest};
pub use stats::{LocationStats, Problem};
pub use verify::{VerifyMismatch, VerifyReport};
pub use writer::{TakeoverReport, Writer, WriterConfig, WriterError};

/// How a mirror is opened: which image, at which generation, as which node.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The image.
    pub image: ImageName,
    /// The generation of the write lease the caller holds; stamped on
    /// every operation and every mark.
    pub generation: Generation,
    /// This node's site label (read preference after "local").
    pub site: Option<String>,
    /// How this node authenticates to peers (its id and the cluster secret).
    pub handshake: HandshakeConfig,
    /// Frame limits for peer connections.
    pub limits: Limits,
    /// After this long without an answer a copy counts as failed (5 s).
    pub copy_timeout: Duration,
    /// After this long a mark that the store has not confirmed counts as
    /// failed, and the write with it (10 s).
    pub mark_timeout: Duration,
    /// Connecting and authenticating to a peer (2 s; also bounded by
    /// `copy_timeout`).
    pub connect_timeout: Duration,
}

impl MirrorConfig {
    /// Defaults: 5 s per copy, 10 s per mark, 2 s to connect, default limits.
    pub fn new(image: ImageName, generation: Generation, handshake: HandshakeConfig) -> Self {
        MirrorConfig {
            image,
            generation,
            site: None,
            handshake,
            limits: Limits::default(),
            copy_timeout: Duration::from_secs(5),
            mark_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a mirror cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The metadata store could not give the image or its change feed.
    #[error("cannot load image {image} from the metadata store")]
    Store {
        /// The image.
        image: ImageName,
        /// The store's error.
        #[source]
        source: blockmap::Error,
    },
    /// The local copy could not be opened.
    #[error("cannot open the local copy of {image}")]
    LocalCopy {
        /// The image.
        image: ImageName,
        /// Why.
        #[source]
        source: CopyError,
    },
    /// The image table belongs to another node than the handshake names.
    #[error("the image table is node {table}'s, but the mirror runs as {node}")]
    WrongNode {
        /// The table's node.
        table: NodeId,
        /// The handshake's node.
        node: NodeId,
    },
}

/// The mirrored backend of one image. Dropping it stops following the
/// change feed; writes in flight finish.
pub struct Mirror {
    inner: Arc<Inner>,
    feed: tokio::task::JoinHandle<()>,
}

/// State shared with the tasks of one operation.
pub(crate) struct Inner {
    cfg: MirrorConfig,
    store: Arc<dyn MetadataStore>,
    node: NodeId,
    size: u64,
    cache: Arc<PlacementCache>,
    local: Option<Local>,
    peers: Peers,
    lock: RangeLock,
    /// Per copy, ranges accepted since its last successful flush: what a
    /// failed flush must mark (invariant 2).
    unflushed: Mutex<BTreeMap<NodeId, Vec<ByteRange>>>,
    stats: StatsTable,
    problems: Problems,
    /// Set once a copy answered `Fenced`: another writer exists.
    fenced: AtomicBool,
    /// Foreground operations started (writes, reads): a resync copies with
    /// fewer batches in flight while this moves, so foreground I/O keeps
    /// priority (invariant 6).
    foreground: std::sync::atomic::AtomicU64,
    /// The writer's shell, when a [`Writer`] opened the mirror.
    hooks: Hooks,
}

/// What a [`Writer`] adds to the operation path; both absent for a bare
/// [`Mirror::open`] (the caller then owns the lease and the log).
#[derive(Default)]
pub(crate) struct Hooks {
    /// The ack gate (invariant 4): checked at the start of every operation
    /// and right before it returns `Ok`.
    pub gate: Option<Arc<lease::LeaseGate>>,
    /// The activity log (invariant 5): a write's extents are hot before
    /// its data goes out.
    pub al: Option<Arc<al::AlDriver>>,
}

impl Mirror {
    /// Opens the mirror of `cfg.image` as node `images.node()`, writer at
    /// `cfg.generation`. `store` is the metadata store (placement, dirty
    /// bits, node registry); `images` the node's own copies (the local copy
    /// is written through it, not over the network). Subscribes to the
    /// change feed before loading the record, so no change is missed.
    pub async fn open(
        cfg: MirrorConfig,
        store: Arc<dyn MetadataStore>,
        images: Arc<ImageTable>,
    ) -> Result<Mirror, MirrorError> {
        Self::open_with(cfg, store, images, Hooks::default()).await
    }

    /// [`Mirror::open`] with the writer's gate and activity log.
    pub(crate) async fn open_with(
        cfg: MirrorConfig,
        store: Arc<dyn MetadataStore>,
        images: Arc<ImageTable>,
        hooks: Hooks,
    ) -> Result<Mirror, MirrorError> {
        let node = images.node().clone();
        if node != cfg.handshake.node_id {
            return Err(MirrorError::WrongNode {
                table: node,
                node: cfg.handshake.node_id.clone(),
            });
        }
        let store_err = |source| MirrorError::Store {
            image: cfg.image.clone(),
            source,
        };
        let feed = store.subscribe().await.map_err(store_err)?;
        let rec: ImageRecord = store.load_image(&cfg.image).await.map_err(store_err)?;
        let nodes = rec.location_nodes();
        let local = if nodes.contains(&node) {
            let copy = images
                .get(&cfg.image)
                .await
                .map_err(|source| MirrorError::LocalCopy {
                    image: cfg.image.clone(),
                    source,
                })?;
            Some(Local { copy })
        } else {
            None
        };
        let peers = Peers::new(
            Arc::clone(&store),
            cfg.handshake.clone(),
            cfg.limits,
            cfg.connect_timeout.min(cfg.copy_timeout),
        );
        for n in nodes.iter().filter(|n| **n != node) {
            peers.learn_site(n).await;
        }
        let cache = Arc::new(PlacementCache::new(Arc::clone(&store), rec));
        let size = cache.size();
        let feed = tokio::spawn(Arc::clone(&cache).follow(feed));
        let inner = Arc::new(Inner {
            cfg,
            store,
            node,
            size,
            cache,
            local,
            peers,
            lock: RangeLock::default(),
            unflushed: Mutex::new(BTreeMap::new()),
            stats: StatsTable::default(),
            problems: Problems::default(),
            fenced: AtomicBool::new(false),
            foreground: std::sync::atomic::AtomicU64::new(0),
            hooks,
        });
        Ok(Mirror { inner, feed })
    }

    /// The copies that failed, why (latest reason) and since when; for the
    /// daemon to publish. Kept for the mirror's lifetime.
    pub fn problems(&self) -> Vec<Problem> {
        self.inner.problems.list()
    }

    /// Per-location I/O counters since open (in memory only).
    pub fn stats(&self) -> BTreeMap<NodeId, LocationStats> {
        self.inner.stats.snapshot()
    }

    /// True once a copy refused this mirror's generation: another writer
    /// took the image, and every write fails from then on.
    pub fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// The cached record (placement and dirty bits) as the mirror sees it.
    pub fn cached_record(&self) -> ImageRecord {
        self.inner.cache.snapshot()
    }

    /// Reloads the cached record from the store now, instead of waiting
    /// for the change feed (after an operator change, and in tests).
    pub async fn refresh(&self) -> Result<(), blockmap::Error> {
        self.inner.cache.reload().await
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.feed.abort();
    }
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("image", &self.inner.cfg.image)
            .field("generation", &self.inner.cfg.generation)
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl BlockBackend for Mirror {
    fn size(&self) -> u64 {
        self.inner.size
    }

    fn engine_name(&self) -> &'static str {
        "mirror"
    }

    /// Invariant 3: per piece of the range, the in-sync copies in the
    /// core's order; a failed copy is marked and the next one tried.
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        check_range(offset, len as u64, self.inner.size)?;
        self.inner.read(ByteRange::new(offset, len as u64)).await
    }

    /// Invariant 1; with `fua`, every copy writes through to stable
    /// storage before it accepts (invariant 2).
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        check_range(offset, data.len() as u64, self.inner.size)?;
        let range = ByteRange::new(offset, data.len() as u64);
        let op = CopyOp::Write {
            base: offset,
            data,
            fua,
        };
        Arc::clone(&self.inner).mutate(range, op, "write").await
    }

    /// Invariant 2: every in-sync copy flushes, or is marked dirty for what
    /// it had not made stable.
    async fn flush(&self) -> Result<(), StorageError> {
        Arc::clone(&self.inner).flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        check_range(offset, len, self.inner.size)?;
        let range = ByteRange::new(offset, len);
        Arc::clone(&self.inner)
            .mutate(range, CopyOp::Discard, "discard")
            .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        check_range(offset, len, self.inner.size)?;
        let range = ByteRange::new(offset, len);
        Arc::clone(&self.inner)
            .mutate(range, CopyOp::Zeroes { unmap }, "write zeroes")
            .await
    }

    /// From the local copy while it is in sync from `offset` (the extent is
    /// clipped to where it stays in sync). Elsewhere, or without a local
    /// copy, the range is reported mapped: conservative (GET LBA STATUS
    /// may then say "mapped" for a hole, never "deallocated" for data),
    /// and it costs no network round trip.
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        if offset >= self.inner.size {
            return Err(StorageError::OutOfRange {
                offset,
                len: 0,
                size: self.inner.size,
            });
        }
        let Some(local) = &self.inner.local else {
            return Ok((true, self.inner.size - offset));
        };
        let (in_sync, end) = self.inner.cache.in_sync_extent(&self.inner.node, offset);
        if !in_sync {
            return Ok((true, end - offset));
        }
        let (mapped, len) = local.copy.backend().allocation(offset).await?;
        Ok((mapped, len.min(end - offset)))
    }

    /// Passes through to the local copy when it is in sync for the whole
    /// range; `None` otherwise (the caller then reads through [`Mirror`]).
    fn cached_range(&self, offset: u64, len: usize) -> Option<FileRange> {
        let local = self.inner.local.as_ref()?;
        // A writer that may not acknowledge may not serve reads either,
        // not even from its own file (invariant 4).
        if self.inner.hooks.gate.as_ref().is_some_and(|g| !g.may_ack()) {
            return None;
        }
        check_range(offset, len as u64, self.inner.size).ok()?;
        self.inner.foreground.fetch_add(1, Ordering::Relaxed);
        if len == 0
            || !self
                .inner
                .cache
                .in_sync(&self.inner.node, ByteRange::new(offset, len as u64))
        {
            return None;
        }
        local.copy.backend().cached_range(offset, len)
    }
}
