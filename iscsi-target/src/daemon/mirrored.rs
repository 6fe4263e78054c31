//! Mirrored image LUNs: the life of one image's writer inside `locusd`.
//!
//! With a shared metadata store (Redis), a store LUN is not a local file but
//! the image's [`Writer`]: every write goes to every in-sync copy, on this
//! node and on the storage nodes (invariants 1 to 5, ARCHITECTURE.md). This
//! module owns one task per served image that takes the write lease,
//! reconciles, serves, publishes the figures operators read, and gives the
//! lease back. [`super::metadata`] decides *whether* this node should serve
//! an image (the serving rule); this module decides nothing about that, it
//! only reports when its LUN is ready or gone, through a wake-up channel.
//!
//! ```text
//!   start --> taking --Writer::take ok--> serving --stop--> closing --> done
//!               ^  | held / store error     |  (LUN withdrawn; flush,
//!               |  v                        |   release the lease)
//!               +-- retry (0.5 s .. 5 s) <--+ lost (lease not renewed, fenced)
//! ```
//!
//! While `serving`, every [`STATS_EVERY`] the task writes the image's I/O
//! counters (per location) and the copies that failed into the store, for
//! `locus stats` and `locus errors`; the I/O path itself never waits on the
//! store for that. Every [`JOB_POLL`] it looks for sync and verify jobs
//! ([`super::jobs`]), which run beside the I/O.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use blockmap::ops;
use blockmap::stats::{CopyProblem, ImageStats, LocationIo};
use blockmap::store::MetadataStore;
use blockmap::types::{ImageName, NodeId, UnixTime};
use bytes::Bytes;
use drbd_like_sync::core::lease::LeaseConfig;
use drbd_like_sync::core::{Generation, Millis};
use drbd_like_sync::mirror::{MirrorConfig, Writer, WriterConfig, WriterError};
use drbd_like_sync::node::ImageTable;
use drbd_like_sync::proto::HandshakeConfig;
use drbd_like_sync::storage::{BlockBackend, FileRange, StorageError};
use tokio::sync::{mpsc, watch};

use super::imagelun::{image_lun, ImageGeometry};
use super::jobs::{Jobs, JOB_POLL};
use crate::scsi::LogicalUnit;

/// How often a serving writer writes its figures to the store.
pub const STATS_EVERY: Duration = Duration::from_secs(2);
/// How often the task checks that its writer can still acknowledge.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// First and longest wait before trying to take the lease again.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What every mirrored LUN of this node shares.
pub struct MirrorContext {
    /// This node's copies (the storage role serves the same table, so the
    /// local copy has one generation gate for both roles).
    pub table: Arc<ImageTable>,
    /// How this node proves itself to peers; `None` without a cluster
    /// secret (then only images placed on this node alone are served).
    pub handshake: Option<HandshakeConfig>,
    /// This node's site, for the read preference.
    pub site: Option<String>,
    /// Lease timing.
    pub lease: LeaseConfig,
    /// Activity-log extents kept hot (4 MiB each).
    pub al_extents: usize,
    /// Where persistent reservations are kept.
    pub data_dir: PathBuf,
}

impl MirrorContext {
    /// Lease timing from a TTL in seconds: the margin is a fifth of it, and
    /// the holder renews every 3/10 of it (10 s: 2 s margin, renew every 3 s).
    pub fn lease_from_ttl(ttl_secs: u64) -> LeaseConfig {
        let ttl = ttl_secs.max(1) * 1000;
        LeaseConfig {
            ttl: Millis(ttl),
            margin: Millis(ttl / 5),
            renew_after: Millis(ttl * 3 / 10),
        }
    }
}

/// Where the task finds the metadata store: the daemon replaces its handle
/// after a store failure (a Redis connection does not come back by itself).
pub type StoreHandle = Arc<dyn Fn() -> Arc<dyn MetadataStore> + Send + Sync>;

/// What the LUN of an image is right now.
#[derive(Clone)]
enum State {
    /// Not serving yet, and why (for `LunProblem`s).
    Waiting(String),
    /// Serving through this LUN.
    Serving(Arc<LogicalUnit>),
}

/// One image served through its writer. Dropping it aborts the task (a
/// crash: the lease is left to expire); [`MirroredUnit::retire`] closes it
/// cleanly.
pub struct MirroredUnit {
    /// The geometry the LUN was built with.
    pub geometry: ImageGeometry,
    state: Arc<Mutex<State>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MirroredUnit {
    /// Starts the task of `image`; `wake` gets the image's name whenever
    /// its LUN appears or goes.
    pub fn start(
        ctx: Arc<MirrorContext>,
        store: StoreHandle,
        image: ImageName,
        geometry: ImageGeometry,
        wake: mpsc::UnboundedSender<ImageName>,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::Waiting(format!(
            "image '{image}': taking the write lease"
        ))));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            Task {
                ctx,
                store,
                image,
                geometry,
                state: Arc::clone(&state),
                wake,
                stop: stop_rx,
            }
            .run(),
        );
        MirroredUnit {
            geometry,
            state,
            stop,
            task: Some(task),
        }
    }

    /// The LUN while the writer serves; otherwise why not.
    pub fn lu(&self) -> Result<Arc<LogicalUnit>, String> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Serving(lu) => Ok(Arc::clone(lu)),
            State::Waiting(why) => Err(why.clone()),
        }
    }

    /// Asks the writer to stop: flush every copy, release the lease. The
    /// handle ends when it has.
    pub fn retire(mut self) -> Option<tokio::task::JoinHandle<()>> {
        let _ = self.stop.send(true);
        self.task.take()
    }
}

impl Drop for MirroredUnit {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct Task {
    ctx: Arc<MirrorContext>,
    store: StoreHandle,
    image: ImageName,
    geometry: ImageGeometry,
    state: Arc<Mutex<State>>,
    wake: mpsc::UnboundedSender<ImageName>,
    stop: watch::Receiver<bool>,
}

impl Task {
    fn set(&self, s: State) {
        let was_serving = matches!(
            &*self.state.lock().unwrap_or_else(|p| p.into_inner()),
            State::Serving(_)
        );
        let serving = matches!(s, State::Serving(_));
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
        if was_serving != serving {
            let _ = self.wake.send(self.image.clone());
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(mut self) {
        let mut retry = RETRY_MIN;
        while !self.stopping() {
            let store = (self.store)();
            let mut stop = self.stop.clone();
            let taken = tokio::select! {
                _ = stop.changed() => return,
                t = self.take(Arc::clone(&store)) => t,
            };
            let writer = match taken {
                Ok(w) => Arc::new(w),
                Err(e) => {
                    let why = match &e {
                        WriterError::LeaseHeld {
                            holder, generation, ..
                        } => {
                            retry = RETRY_MIN;
                            format!(
                                "image '{}': the write lease is held by node '{holder}' \
                                 (generation {generation}); waiting for it to be released or to expire",
                                self.image
                            )
                        }
                        other => format!("image '{}': cannot serve: {}", self.image, chain(other)),
                    };
                    tracing::debug!(image = %self.image, reason = %why, "writer not taken");
                    self.set(State::Waiting(why));
                    tokio::select! {
                        _ = self.stop.changed() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            retry = RETRY_MIN;
            let counted = Arc::new(Counted::new(Arc::clone(&writer)));
            let lu = match image_lun(
                &self.ctx.data_dir,
                &self.image,
                self.geometry,
                counted.clone(),
            ) {
                Ok(lu) => lu,
                Err(why) => {
                    // Cannot happen with a geometry that opened a writer;
                    // give the lease back rather than sit on it.
                    let _ = writer.close().await;
                    self.set(State::Waiting(why));
                    return;
                }
            };
            let t = writer.takeover();
            tracing::info!(image = %self.image, generation = %writer.generation(),
                previous = ?t.previous_holder, hot_extents = t.hot_extents.len(),
                copies = t.copies.len(), marks = t.marks.len(),
                "LUN served through the image's writer (every in-sync copy takes every write)");
            self.set(State::Serving(lu));
            let base = ops::image_stats(&*store, &self.image)
                .await
                .unwrap_or_default();
            // At once, so that `locus image move` sees this writer serve.
            publish(
                &*store,
                &self.image,
                self.ctx.table.node(),
                &writer,
                &counted,
                &base,
            )
            .await;
            let stopped = self.serve(&store, &writer, &counted, &base).await;
            self.set(State::Waiting(format!(
                "image '{}': the writer stopped serving",
                self.image
            )));
            publish(
                &*store,
                &self.image,
                self.ctx.table.node(),
                &writer,
                &counted,
                &base,
            )
            .await;
            if stopped {
                match writer.close().await {
                    Ok(()) => tracing::info!(image = %self.image, "writer closed; lease released"),
                    Err(e) => tracing::error!(image = %self.image, error = %chain(&e),
                        "closing the writer failed"),
                }
                return;
            }
            tracing::error!(image = %self.image, generation = %writer.generation(),
                "the writer lost its lease (not renewed in time, or another writer took over); \
                 LUN withdrawn, taking the lease again");
        }
    }

    async fn take(&self, store: Arc<dyn MetadataStore>) -> Result<Writer, WriterError> {
        let handshake = self
            .ctx
            .handshake
            .clone()
            .unwrap_or_else(|| HandshakeConfig {
                node_id: self.ctx.table.node().clone(),
                // No secret: this image has no copy on another node (the
                // serving rule checks it), so no peer is ever asked.
                secret: drbd_like_sync::proto::ClusterSecret::new(
                    rand::random::<[u8; 32]>().to_vec(),
                ),
            });
        let mut mirror = MirrorConfig::new(self.image.clone(), Generation(0), handshake);
        mirror.site = self.ctx.site.clone();
        let mut cfg = WriterConfig::new(mirror);
        cfg.lease = self.ctx.lease;
        cfg.al.capacity = self.ctx.al_extents.max(1);
        Writer::take(cfg, store, Arc::clone(&self.ctx.table)).await
    }

    /// Serves until asked to stop (`true`) or until the writer is lost
    /// (`false`), publishing figures on the way.
    async fn serve(
        &mut self,
        store: &Arc<dyn MetadataStore>,
        writer: &Arc<Writer>,
        counted: &Counted,
        base: &ImageStats,
    ) -> bool {
        let mut watch = tokio::time::interval(WATCH_EVERY);
        let mut last_stats = Instant::now();
        let mut last_jobs = Instant::now();
        let mut jobs = Jobs::new(
            Arc::clone(store),
            self.image.clone(),
            self.ctx.table.node().clone(),
            Arc::clone(writer),
        );
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    jobs.cancel();
                    return true;
                }
                _ = watch.tick() => {}
            }
            if writer.is_lost() {
                return false;
            }
            if last_jobs.elapsed() >= JOB_POLL {
                last_jobs = Instant::now();
                jobs.poll().await;
            }
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                publish(
                    &**store,
                    &self.image,
                    self.ctx.table.node(),
                    writer,
                    counted,
                    base,
                )
                .await;
            }
        }
    }
}

/// Writes the image's figures: `base` (what the store had when this writer
/// started) plus what this writer counted, and its failed copies.
async fn publish(
    store: &dyn MetadataStore,
    image: &ImageName,
    node: &NodeId,
    writer: &Writer,
    counted: &Counted,
    base: &ImageStats,
) {
    let mut st = base.clone();
    counted.add_to(&mut st);
    for (node, s) in writer.stats() {
        let live = LocationIo {
            reads: s.reads,
            read_bytes: s.read_bytes,
            writes: s.writes,
            write_bytes: s.write_bytes,
            flushes: s.flushes,
            errors: s.errors,
            latency_us_sum: s.latency_us_sum,
        };
        let e = st.locations.entry(node).or_default();
        *e = e.plus(live);
    }
    let mut problems: Vec<CopyProblem> = writer
        .problems()
        .into_iter()
        .map(|p| CopyProblem {
            since: UnixTime(
                p.since
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            ),
            node: p.node,
            reason: p.reason,
        })
        .collect();
    for old in &base.problems {
        if !problems.iter().any(|p| p.node == old.node) {
            problems.push(old.clone());
        }
    }
    st.problems = problems;
    st.reported_by = Some(node.clone());
    st.generation = Some(writer.generation().0);
    st.updated = Some(UnixTime::now());
    if let Err(e) = ops::put_stats(store, image, &st).await {
        tracing::debug!(image = %image, error = %e, "cannot write the image's statistics");
    }
}

/// The error and its causes on one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The writer as the LUN's backend, counting what the initiators asked
/// (image-level `locus stats`): one relaxed atomic add per counter.
struct Counted {
    writer: Arc<Writer>,
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    read_us: AtomicU64,
    write_us: AtomicU64,
}

impl Counted {
    fn new(writer: Arc<Writer>) -> Self {
        Counted {
            writer,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            read_us: AtomicU64::new(0),
            write_us: AtomicU64::new(0),
        }
    }

    fn add_to(&self, st: &mut ImageStats) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        st.reads += l(&self.reads);
        st.writes += l(&self.writes);
        st.bytes_read += l(&self.bytes_read);
        st.bytes_written += l(&self.bytes_written);
        st.read_latency_us_total += l(&self.read_us);
        st.write_latency_us_total += l(&self.write_us);
    }

    fn count(&self, n: &AtomicU64, b: &AtomicU64, us: &AtomicU64, bytes: u64, t: Instant) {
        n.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(bytes, Ordering::Relaxed);
        us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl BlockBackend for Counted {
    fn size(&self) -> u64 {
        self.writer.size()
    }
    fn engine_name(&self) -> &'static str {
        self.writer.engine_name()
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        let t = Instant::now();
        let r = self.writer.read(offset, len).await;
        if r.is_ok() {
            self.count(&self.reads, &self.bytes_read, &self.read_us, len as u64, t);
        }
        r
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        let t = Instant::now();
        let len = data.len() as u64;
        let r = self.writer.write(offset, data, fua).await;
        if r.is_ok() {
            self.count(&self.writes, &self.bytes_written, &self.write_us, len, t);
        }
        r
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.writer.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.writer.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        self.writer.write_zeroes(offset, len, unmap).await
    }
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        self.writer.allocation(offset).await
    }
    fn cached_range(&self, offset: u64, len: usize) -> Option<FileRange> {
        let r = self.writer.cached_range(offset, len);
        if r.is_some() {
            // Served from the local copy without a call: counted with no
            // latency (the zero-copy path does not come back to us).
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
        }
        r
    }
}
