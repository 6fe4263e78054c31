//! The writer of an image: a [`Mirror`] behind its write lease (invariant
//! 4, ARCHITECTURE.md) and its activity log, reconciled on takeover before
//! it serves (invariant 5).
//!
//! Owns the life of one writer; drives [`crate::core::lease`],
//! [`crate::core::activity_log`] and [`crate::core::reconcile`] (it decides
//! nothing they decide). Must not know: SCSI, the wire format.
//!
//! ```text
//!   Writer::take
//!     acquire_lease (refused while another holder's lease is unexpired)
//!       | generation g = previous + 1
//!       v
//!     reconcile: al_get (the old writer's hot extents), flush every copy at
//!       g (fences the old writer), copy each extent source -> others,
//!       mark unreachable and distrusted copies dirty; al_reset(g, [])
//!       | (the gate stays shut: nothing is acknowledged meanwhile)
//!       v
//!     serve  <=====>  renew (task; deadline = last successful send + ttl - margin)
//!       |                   | no renewal before the deadline, or fenced
//!       | close(): flush,   v
//!       | release_lease    lost: every operation fails, nothing acked
//!       v
//!     released
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use blockmap::store::MetadataStore;
use blockmap::types::{ByteSize, ImageName, NodeId, UnixMillis};
use tokio::time::Instant;

use super::al::AlDriver;
use super::lease::{LeaseGate, Renewal};
use super::{Hooks, Mirror, MirrorConfig, MirrorError};
use crate::core::activity_log::{ActivityLog, AlConfig};
use crate::core::lease::{Lease, LeaseConfig, LeaseEvent, LeaseState};
use crate::core::reconcile::ReconcileError;
use crate::core::Generation;
use crate::node::ImageTable;
use crate::storage::{BlockBackend, FileRange, StorageError};
use bytes::Bytes;

/// How a writer is taken.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The mirror; its `generation` is replaced by the one the lease gives.
    pub mirror: MirrorConfig,
    /// Lease timing (TTL asked of the store, our margin, renewal period).
    pub lease: LeaseConfig,
    /// Activity-log geometry; `extent_size` must be a power of two.
    pub al: AlConfig,
}

impl WriterConfig {
    /// Default lease (10 s TTL, 2 s margin, renew every 3 s) and log
    /// (4 MiB extents, 1024 hot: a 4 GiB working set, as DRBD's default
    /// al-extents of 1237 gives).
    pub fn new(mirror: MirrorConfig) -> Self {
        WriterConfig {
            mirror,
            lease: LeaseConfig::default(),
            al: AlConfig::default(),
        }
    }
}

/// Why a writer could not be taken or closed.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Another node holds an unexpired lease.
    #[error(
        "image {image}: write lease held by {holder} (generation {generation}) until {expires:?}"
    )]
    LeaseHeld {
        /// The image.
        image: ImageName,
        /// The holder.
        holder: NodeId,
        /// Its generation.
        generation: u64,
        /// Its expiry (store wall clock, ms).
        expires: UnixMillis,
    },
    /// The store refused or failed a step of the writer's life.
    #[error("image {image}: {step} failed in the metadata store")]
    Store {
        /// The image.
        image: ImageName,
        /// The step (acquire_lease, al_get, al_reset, release_lease, ...).
        step: &'static str,
        /// The store's error.
        #[source]
        source: blockmap::Error,
    },
    /// The grant came back after our deadline had already passed.
    #[error("image {image}: the lease grant arrived too late to use")]
    GrantTooLate {
        /// The image.
        image: ImageName,
    },
    /// The configuration cannot work.
    #[error("invalid writer configuration: {0}")]
    Config(&'static str),
    /// The mirror could not be opened.
    #[error(transparent)]
    Open(#[from] MirrorError),
    /// Reconciliation could not complete: the writer does not serve.
    #[error("image {image}: reconciliation of the previous writer's extents failed")]
    Reconcile {
        /// The image.
        image: ImageName,
        /// What the core said.
        #[source]
        source: ReconcileError,
    },
    /// The final flush on close failed (the lease is still released).
    #[error("image {image}: flush on close failed")]
    Flush {
        /// The image.
        image: ImageName,
        /// The mirror's error.
        #[source]
        source: StorageError,
    },
}

/// What reconciliation on takeover did (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeoverReport {
    /// The previous lease holder (distrusted), if any.
    pub previous_holder: Option<NodeId>,
    /// The generation of the activity log found (the previous writer's).
    pub previous_log_generation: u64,
    /// The previous writer's hot extents (of its extent size).
    pub hot_extents: BTreeSet<u64>,
    /// Copies that answered at the new generation.
    pub reachable: BTreeSet<NodeId>,
    /// Extent copies made, as (extent, from, to).
    pub copies: Vec<(u64, NodeId, NodeId)>,
    /// Copies marked dirty, as (extent, node).
    pub marks: Vec<(u64, NodeId)>,
}

/// The single writer of one image: a serving [`Mirror`] whose every
/// acknowledgement is gated by the lease. Dropping it is a crash (no
/// release: the next writer waits out the TTL and reconciles).
pub struct Writer {
    mirror: Mirror,
    gate: Arc<LeaseGate>,
    al: Arc<AlDriver>,
    store: Arc<dyn MetadataStore>,
    image: ImageName,
    holder: NodeId,
    /// The renewal task; aborted when the writer goes (a crash).
    renewal: AbortOnDrop,
    report: TakeoverReport,
}

impl Writer {
    /// Takes the write lease of `cfg.mirror.image` as node `images.node()`,
    /// reconciles the previous writer's activity-log extents, resets the
    /// log at the new generation, and only then returns the serving
    /// writer. Fails with [`WriterError::LeaseHeld`] while another node's
    /// lease is unexpired. On any failure after the lease was taken the
    /// lease is left to expire (the log is untouched, so the next writer
    /// reconciles the same extents).
    pub async fn take(
        cfg: WriterConfig,
        store: Arc<dyn MetadataStore>,
        images: Arc<ImageTable>,
    ) -> Result<Writer, WriterError> {
        let WriterConfig {
            mut mirror,
            lease: lcfg,
            al: alcfg,
        } = cfg;
        if lcfg.margin >= lcfg.ttl || lcfg.renew_after >= lcfg.ttl.minus(lcfg.margin) {
            return Err(WriterError::Config(
                "lease: need margin < ttl and renew_after < ttl - margin",
            ));
        }
        if !alcfg.extent_size.is_power_of_two() || alcfg.capacity == 0 {
            return Err(WriterError::Config(
                "activity log: extent_size must be a power of two, capacity at least 1",
            ));
        }
        let image = mirror.image.clone();
        let holder = images.node().clone();
        let serr = |step: &'static str| {
            let image = image.clone();
            move |source| WriterError::Store {
                image,
                step,
                source,
            }
        };
        // The holder before us is the old writer, distrusted below. Our
        // own earlier lease (a restart of this node) is not: that process
        // is gone, and its copy is the one this node serves from.
        let previous = store
            .get_lease(&image)
            .await
            .map_err(serr("get_lease"))?
            .map(|l| l.holder)
            .filter(|h| *h != holder);

        // Invariant 4: the lease, timed from when the request was sent.
        let epoch = Instant::now();
        let mut lease = Lease::new(lcfg);
        let gate_now = |e: Instant| crate::core::Millis(e.elapsed().as_millis() as u64);
        lease
            .step(LeaseEvent::Acquire, gate_now(epoch))
            .map_err(|_| WriterError::Config("lease machine refused Acquire"))?;
        let granted = match store
            .acquire_lease(&image, &holder, lcfg.ttl.0, UnixMillis::now())
            .await
        {
            Ok(l) => l,
            Err(blockmap::Error::LeaseHeld {
                holder: h,
                generation,
                expires,
                ..
            }) => {
                return Err(WriterError::LeaseHeld {
                    image,
                    holder: h,
                    generation,
                    expires,
                })
            }
            Err(e) => return Err(serr("acquire_lease")(e)),
        };
        let generation = Generation(granted.generation);
        let _ = lease.step(LeaseEvent::Granted(generation), gate_now(epoch));
        if !matches!(lease.state(), LeaseState::Held(_)) {
            return Err(WriterError::GrantTooLate { image });
        }
        let gate = Arc::new(LeaseGate::new(epoch, lease));
        // Renewing starts now: reconciliation may outlast a renewal period.
        let poll = Duration::from_millis((lcfg.margin.0 / 4).clamp(5, 250));
        let renewal = tokio::spawn(
            Renewal {
                gate: Arc::clone(&gate),
                store: Arc::clone(&store),
                image: image.clone(),
                holder: holder.clone(),
                ttl: lcfg.ttl,
                poll,
            }
            .run(),
        );
        let abort = AbortOnDrop(Some(renewal));

        mirror.generation = generation;
        let al = Arc::new(AlDriver::new(
            Arc::clone(&store),
            image.clone(),
            generation.0,
            mirror.mark_timeout,
            ActivityLog::new(alcfg),
        ));
        let hooks = Hooks {
            gate: Some(Arc::clone(&gate)),
            al: Some(Arc::clone(&al)),
        };
        let m = Mirror::open_with(mirror, Arc::clone(&store), images, hooks).await?;

        // Invariant 5: reconcile the old writer's extents before serving.
        let old = store.al_get(&image).await.map_err(serr("al_get"))?;
        let done = m
            .inner
            .reconcile_takeover(old.extent_size.bytes(), &old.extents, previous.as_ref())
            .await
            .map_err(|source| WriterError::Reconcile {
                image: image.clone(),
                source,
            })?;
        store
            .al_reset(&image, generation.0, ByteSize(alcfg.extent_size), &[])
            .await
            .map_err(serr("al_reset"))?;
        let _ = gate.lease().step(LeaseEvent::ReconcileDone, gate.now());
        tracing::info!(%image, %generation, extents = old.extents.len(), "writer serving");
        let report = TakeoverReport {
            previous_holder: previous,
            previous_log_generation: old.generation,
            hot_extents: old.extents,
            reachable: done.reachable,
            copies: done.copies,
            marks: done.marks,
        };
        Ok(Writer {
            mirror: m,
            gate,
            al,
            store,
            image,
            holder,
            renewal: abort,
            report,
        })
    }

    /// The mirror to serve I/O through (every acknowledgement is gated).
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// The generation the lease gave (the fencing token on every request).
    pub fn generation(&self) -> Generation {
        self.mirror.inner.cfg.generation
    }

    /// What reconciliation did before serving began.
    pub fn takeover(&self) -> &TakeoverReport {
        &self.report
    }

    /// Whether an operation completing now may be acknowledged.
    pub fn may_ack(&self) -> bool {
        self.gate.may_ack()
    }

    /// Whether this writer can never acknowledge again: its lease was lost
    /// (no renewal before the deadline, or refused by the store), released,
    /// or a copy refused its generation. The daemon then withdraws the LUN
    /// and tries to take the lease anew.
    pub fn is_lost(&self) -> bool {
        self.mirror.is_fenced()
            || (!self.gate.may_ack() && self.gate.deadline().is_none_or(|d| d <= Instant::now()))
    }

    /// The copies that failed under this writer (see [`Mirror::problems`]).
    pub fn problems(&self) -> Vec<super::Problem> {
        self.mirror.problems()
    }

    /// Per-location counters (see [`Mirror::stats`]).
    pub fn stats(&self) -> std::collections::BTreeMap<NodeId, super::LocationStats> {
        self.mirror.stats()
    }

    /// When acknowledgements stop unless a renewal succeeds first (`None`
    /// once the lease is lost, released or revoked). On the tokio clock.
    pub fn deadline(&self) -> Option<Instant> {
        self.gate.deadline()
    }

    /// Activity-log transactions sent to the store so far (one round trip
    /// each). Writes inside the hot working set add none.
    pub fn al_round_trips(&self) -> u64 {
        self.al.round_trips()
    }

    /// The extents this writer believes hot in the store.
    pub fn al_hot(&self) -> BTreeSet<u64> {
        self.al.hot().into_iter().map(|e| e.0).collect()
    }

    /// Resyncs out-of-sync copies of the image while it serves (invariant
    /// 6): see [`super::resync`]. `progress` is called after every batch,
    /// `cancel` looked at between batches. Whatever stops it, the ranges
    /// that landed stay in sync and the rest stay marked.
    pub async fn resync(
        &self,
        req: &super::ResyncRequest,
        progress: &mut (dyn FnMut(&super::ResyncProgress) + Send),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<super::ResyncProgress, super::ResyncError> {
        self.mirror.inner.resync(req, progress, cancel).await
    }

    /// Verifies the in-sync copies of `blocks` against each other (only
    /// `location` against the rest, if given) by checksums, and marks the
    /// copies that differ out-of-sync: see [`super::verify`].
    pub async fn verify(
        &self,
        blocks: blockmap::types::BlockRange,
        location: Option<&NodeId>,
        progress: &mut (dyn FnMut(&super::VerifyReport) + Send),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<super::VerifyReport, super::ResyncError> {
        self.mirror
            .inner
            .verify(blocks, location, progress, cancel)
            .await
    }

    /// Whether some copy of the image has anything to resync (cheap: the
    /// cached record, not copied).
    pub fn needs_sync(&self) -> bool {
        self.mirror.inner.cache.needs_sync()
    }

    /// Whether the change feed said that the image's sync job document
    /// changed since the last call (true at first, and after the feed
    /// resubscribed it may be late: callers also look now and then).
    pub fn job_changed(&self) -> bool {
        self.mirror.inner.cache.take_job_changed()
    }

    /// Graceful close: flush every copy, stop acknowledging, release the
    /// lease (the generation stays; the next writer's acquire raises it).
    /// The lease is released even if the flush failed (that error is
    /// returned); the log keeps our hot extents for the next writer.
    /// Callable through a shared handle (a LUN may still hold one): every
    /// operation after it fails.
    pub async fn close(&self) -> Result<(), WriterError> {
        let flushed = self.mirror.flush().await;
        self.renewal.abort();
        let g = self.generation();
        let _ = self.gate.lease().step(LeaseEvent::Release, self.gate.now());
        self.store
            .release_lease(&self.image, &self.holder, g.0)
            .await
            .map_err(|source| WriterError::Store {
                image: self.image.clone(),
                step: "release_lease",
                source,
            })?;
        flushed.map_err(|source| WriterError::Flush {
            image: self.image.clone(),
            source,
        })
    }

    /// Stops renewing without releasing, as a crashed or partitioned
    /// writer would, and hands back the mirror: its gate closes at the
    /// lease deadline, and storage nodes refuse it once a new writer took
    /// over. For fault drills and tests.
    pub fn abandon(self) -> Mirror {
        self.renewal.abort();
        self.mirror
    }
}

/// The writer serves as the mirror does; every call goes through the
/// lease's ack gate and the activity log (see [`Mirror`]).
#[async_trait::async_trait]
impl BlockBackend for Writer {
    fn size(&self) -> u64 {
        self.mirror.size()
    }

    fn engine_name(&self) -> &'static str {
        "mirror-writer"
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        self.mirror.read(offset, len).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        self.mirror.write(offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), StorageError> {
        self.mirror.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.mirror.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        self.mirror.write_zeroes(offset, len, unmap).await
    }

    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        self.mirror.allocation(offset).await
    }

    fn cached_range(&self, offset: u64, len: usize) -> Option<FileRange> {
        self.mirror.cached_range(offset, len)
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("mirror", &self.mirror)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// Aborts the renewal task when dropped: if `take` fails after starting
/// it, and when the writer is dropped or abandoned.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn abort(&self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.abort();
    }
}
