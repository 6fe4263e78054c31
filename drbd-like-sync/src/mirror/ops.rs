//! The operations of [`super::Mirror`]: a write-like operation or a flush
//! driven through the core's [`AckTracker`], and a read driven through
//! [`ReadChoice`].
//!
//! Every copy's operation and every mark is its own future, all driven
//! concurrently by the operation's task (a [`FuturesUnordered`]), so the
//! copies proceed in parallel, never one after another: the peers' requests
//! are on the wire before the local copy is written. No task is spawned per
//! copy, because on a loaded node each spawn and wakeup between threads
//! cost more than the local write itself (measured in `benches/mirror.rs`).
//! The driving loop feeds each outcome to the tracker and starts the marks
//! it asks for. It waits for every future, even after the status is known,
//! so a write holds its range lock until no copy can still be receiving it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use blockmap::types::NodeId;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;

use super::copies::{CopyFailure, CopyOp, Remote};
use super::stats::Counted;
use super::Inner;
use crate::core::read::{ReadChoice, ReadCopy, ReaderPlace};
use crate::core::write::{
    AckEvent, AckTracker, FailReason, FlushPlan, MarkDirty, Status, WriteFailure, WritePlan,
};
use crate::core::ByteRange;
use crate::storage::StorageError;

/// The futures of one operation: each copy's I/O and each mark, each with
/// its panic caught (one copy's bug must not unwind through the others,
/// dropping them mid-flight and the range lock with them).
type Work = FuturesUnordered<BoxFuture<'static, std::thread::Result<Event>>>;

/// Adds `f` to `work`.
fn push(work: &mut Work, f: impl std::future::Future<Output = Event> + Send + 'static) {
    work.push(Box::pin(std::panic::AssertUnwindSafe(f).catch_unwind()));
}

/// What one copy or mark reports.
enum Event {
    /// A copy's outcome, with the ranges it was sent.
    Copy(NodeId, Vec<ByteRange>, Result<(), CopyFailure>),
    /// A mark's outcome.
    Mark(NodeId, Result<(), String>),
}

/// The error a failed operation returns.
fn io_error(op: &'static str, why: String) -> StorageError {
    StorageError::Io {
        op,
        source: std::io::Error::other(why),
    }
}

/// What the driving loop learnt besides the status.
#[derive(Default)]
struct Seen {
    /// A copy refused our generation.
    fenced: bool,
    /// Copies that failed, and whether each was out of space.
    failed: Vec<bool>,
    /// Copies that accepted.
    accepted: usize,
}

impl Inner {
    fn check_fenced(&self, op: &'static str) -> Result<(), StorageError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(io_error(
                op,
                format!(
                    "fenced: image {} has a writer newer than generation {}",
                    self.cfg.image, self.cfg.generation
                ),
            ));
        }
        Ok(())
    }

    /// The ack gate (invariant 4): not fenced, and the lease (when a
    /// [`super::Writer`] owns this mirror) lets us acknowledge now.
    /// Checked at the start of every operation and right before `Ok`.
    pub(crate) fn check_ack(&self, op: &'static str) -> Result<(), StorageError> {
        self.check_fenced(op)?;
        if let Some(g) = &self.hooks.gate {
            if !g.may_ack() {
                return Err(io_error(
                    op,
                    format!(
                        "the write lease of {} at generation {} is not held now: not acknowledging",
                        self.cfg.image, self.cfg.generation
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Write, zeroes or discard of `range` (checked against the size).
    pub(crate) async fn mutate(
        self: Arc<Self>,
        range: ByteRange,
        op: CopyOp,
        what: &'static str,
    ) -> Result<(), StorageError> {
        if range.is_empty() {
            return Ok(());
        }
        self.check_ack(what)?;
        self.foreground.fetch_add(1, Ordering::Relaxed);
        // Held until every task of this write has ended (see `drive`), so an
        // overlapping write cannot overtake it on any copy.
        let _held = self.lock.lock(range).await;
        // Invariant 5: the extents are hot in the store before any data
        // goes out, and stay so until every task of this write ended.
        let _hot = match &self.hooks.al {
            Some(al) => Some(al.begin(range).await.map_err(|why| io_error(what, why))?),
            None => None,
        };
        self.persist_overdue(range)
            .await
            .map_err(|why| io_error(what, why))?;
        // The views are taken under the lock: a mark made by the previous
        // overlapping write is already in the cache.
        let views = self.cache.block_views(range);
        let plan = WritePlan::new(range, &views).map_err(|e| io_error(what, e.to_string()))?;
        let sends = plan.sends().clone();
        let (tracker, first) = plan.start();
        let mut tasks = Work::new();
        // Up-front marks (partly dirty copies) and the data go out together:
        // the core only needs both settled before GOOD, not in order.
        for m in first {
            self.spawn_mark(&mut tasks, m);
        }
        // Peers first: their requests leave before the local write runs.
        let (local, peers): (Vec<_>, Vec<_>) =
            sends.into_iter().partition(|(n, _)| *n == self.node);
        for (node, ranges) in peers.into_iter().chain(local) {
            self.spawn_copy(&mut tasks, node, ranges, op.clone());
        }
        // A FUA write is stable on every copy that accepted it; anything
        // else waits in the copies' caches for the next flush.
        let durable = matches!(op, CopyOp::Write { fua: true, .. });
        self.drive(tracker, tasks, what, !durable).await
    }

    /// Flushes every copy that is in sync anywhere (invariant 2).
    pub(crate) async fn flush(self: Arc<Self>) -> Result<(), StorageError> {
        self.check_ack("flush")?;
        // Taken out now: writes accepted after this point belong to the
        // next flush. A copy whose flush fails has these ranges marked by
        // the tracker; one that flushes has made them stable.
        let copies: BTreeMap<NodeId, Vec<ByteRange>> = {
            let mut unflushed = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
            self.cache
                .nodes_in_sync_somewhere()
                .into_iter()
                .map(|n| {
                    let r = unflushed.remove(&n).unwrap_or_default();
                    (n, r)
                })
                .collect()
        };
        let plan = FlushPlan::new(copies.clone()).map_err(|e| io_error("flush", e.to_string()))?;
        let tracker = plan.start();
        let mut tasks = Work::new();
        for node in copies.into_keys() {
            self.spawn_copy(&mut tasks, node, Vec::new(), CopyOp::Flush);
        }
        self.drive(tracker, tasks, "flush", false).await
    }

    /// Adds `op` on `node`'s copy (local or remote) to the operation's work.
    fn spawn_copy(
        self: &Arc<Self>,
        tasks: &mut Work,
        node: NodeId,
        ranges: Vec<ByteRange>,
        op: CopyOp,
    ) {
        let me = Arc::clone(self);
        push(tasks, async move {
            let started = Instant::now();
            // The local copy goes straight to its engine, behind the same
            // generation gate a remote node applies; peers over the wire.
            let res = if node == me.node {
                match &me.local {
                    Some(l) => {
                        let work = l.run(me.cfg.generation, &op, &ranges);
                        match tokio::time::timeout(me.cfg.copy_timeout, work).await {
                            Ok(r) => r,
                            Err(_) => Err(CopyFailure {
                                reason: FailReason::Timeout,
                                no_space: false,
                                message: "the local copy did not answer in time".into(),
                            }),
                        }
                    }
                    None => Err(CopyFailure {
                        reason: FailReason::Io,
                        no_space: false,
                        message: "no local copy is open".into(),
                    }),
                }
            } else {
                me.remote().run(&node, &op, &ranges).await
            };
            let bytes: u64 = ranges.iter().map(|r| r.len).sum();
            let kind = if matches!(op, CopyOp::Flush) {
                Counted::Flush
            } else {
                Counted::Write
            };
            me.stats
                .count(&node, kind, bytes, started.elapsed(), res.is_ok());
            Event::Copy(node, ranges, res)
        });
    }

    pub(super) fn remote(&self) -> Remote<'_> {
        Remote {
            peers: &self.peers,
            image: &self.cfg.image,
            generation: self.cfg.generation,
            timeout: self.cfg.copy_timeout,
        }
    }

    /// Adds the mark `m` (to the cache at once, then the store) to the
    /// operation's work.
    fn spawn_mark(self: &Arc<Self>, tasks: &mut Work, m: MarkDirty) {
        let me = Arc::clone(self);
        push(tasks, async move {
            let res = me.persist_mark(&m).await;
            Event::Mark(m.node, res)
        });
    }

    /// The mark, durably in the store (invariant 1), within the mark
    /// timeout. The cache gets the bits before (so no read or write uses
    /// the copy meanwhile) and again after (a reload in between may have
    /// dropped them).
    pub(super) async fn persist_mark(&self, m: &MarkDirty) -> Result<(), String> {
        let bits = self.cache.bits(&m.ranges).map_err(|e| e.to_string())?;
        self.cache.apply_mark(&m.node, &bits);
        let call = self
            .store
            .mark_dirty(&self.cfg.image, &m.node, self.cfg.generation.0, &bits);
        let failed = match tokio::time::timeout(self.cfg.mark_timeout, call).await {
            Ok(Ok(outcome)) => {
                // Again, now for good: a reload since the first apply may
                // have fetched a record older than the mark.
                self.cache
                    .apply_confirmed_mark(&m.node, &bits, outcome.version);
                return Ok(());
            }
            Ok(Err(e)) => format!("mark of {} failed: {e}", m.node),
            Err(_) => format!(
                "mark of {} not confirmed within {:?}",
                m.node, self.cfg.mark_timeout
            ),
        };
        // The cache keeps the bits (no read may use those bytes of the
        // copy), so the next write there must make them durable first.
        self.cache.mark_overdue(m.clone());
        Err(failed)
    }

    /// Makes the overdue marks over `range` durable (invariant 1): the
    /// cache has their bits, so the write plan skips those copies there
    /// without marking them, and GOOD would go out with the marks only in
    /// memory. A mark that fails again stays overdue, and the write fails.
    async fn persist_overdue(&self, range: ByteRange) -> Result<(), String> {
        let mut first_failure = None;
        for m in self.cache.take_overdue(range) {
            if let Err(why) = self.persist_mark(&m).await {
                first_failure.get_or_insert(why);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Feeds every outcome to `tracker` until no future is left; returns
    /// the first status it gave. `remember` keeps accepted ranges for the
    /// next flush (not needed for FUA writes and flushes).
    async fn drive(
        self: &Arc<Self>,
        mut tracker: AckTracker,
        tasks: Work,
        what: &'static str,
        remember: bool,
    ) -> Result<(), StorageError> {
        let mut status = Status::Wait;
        let mut seen = Seen::default();
        let mut tasks = tasks;
        while let Some(joined) = tasks.next().await {
            let Ok(ev) = joined else {
                // It panicked: its outcome is lost, so the tracker never
                // settles and the status stays undecided (an error below).
                tracing::error!(op = what, "a mirror copy or mark panicked");
                continue;
            };
            let ack = match ev {
                Event::Copy(node, ranges, Ok(())) => {
                    seen.accepted += 1;
                    if remember && !ranges.is_empty() {
                        let mut u = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
                        remember_unflushed(u.entry(node.clone()).or_default(), ranges);
                    }
                    AckEvent::CopyAccepted(node)
                }
                Event::Copy(node, _, Err(f)) => {
                    tracing::warn!(op = what, %node, reason = %f.message, "copy failed");
                    // Fenced: another writer holds the image. The tracker
                    // still sees an ordinary failure (its rule), but this
                    // mirror stops acknowledging for good.
                    if f.reason == FailReason::Fenced {
                        seen.fenced = true;
                        self.fenced.store(true, Ordering::Release);
                    }
                    seen.failed.push(f.no_space);
                    self.problems.record(&node, f.message);
                    AckEvent::CopyFailed(node, f.reason)
                }
                Event::Mark(node, Ok(())) => AckEvent::MarkDurable(node),
                Event::Mark(node, Err(why)) => {
                    tracing::error!(op = what, %node, reason = %why, "out-of-sync mark failed");
                    self.problems.record(&node, why);
                    AckEvent::MarkFailed(node)
                }
            };
            // The core decides; the shell performs the marks it asks for,
            // even after the status is known (a failed copy is always marked).
            match tracker.step(ack) {
                Ok(step) => {
                    for m in step.marks {
                        self.spawn_mark(&mut tasks, m);
                    }
                    if status == Status::Wait {
                        status = step.status;
                    }
                }
                Err(e) => tracing::error!(op = what, error = %e, "ack tracker refused an event"),
            }
        }
        match status {
            // The last moment before Ok goes out: the lease must still
            // let us acknowledge (a zombie stops here).
            Status::Good if !seen.fenced => self.check_ack(what),
            Status::Good => Err(io_error(
                what,
                format!("fenced: a copy refused generation {}", self.cfg.generation),
            )),
            Status::CheckCondition(f) => {
                let why = match f {
                    WriteFailure::NoCopyAccepted(r) => format!("no copy accepted {r}"),
                    WriteFailure::MarkFailed(n) => {
                        format!("copy {n} failed and its out-of-sync mark could not be made")
                    }
                };
                // NoSpace only when nobody took it and every failure was
                // out of space, so the initiator sees the real cause.
                let all_no_space =
                    seen.accepted == 0 && !seen.failed.is_empty() && seen.failed.iter().all(|n| *n);
                if all_no_space {
                    Err(StorageError::NoSpace {
                        op: what,
                        source: std::io::Error::other(why),
                    })
                } else {
                    Err(io_error(what, why))
                }
            }
            Status::Wait | Status::Sent => Err(io_error(what, "outcome undecided".into())),
        }
    }

    /// Reads `range` (inside the image) from in-sync copies (invariant 3).
    pub(crate) async fn read(&self, range: ByteRange) -> Result<Bytes, StorageError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.check_ack("read")?;
        self.foreground.fetch_add(1, Ordering::Relaxed);
        let place = ReaderPlace {
            node: self.node.clone(),
            site: self.cfg.site.clone(),
        };
        let pieces = self.cache.read_pieces(range);
        let mut parts = Vec::with_capacity(pieces.len());
        for (r, nodes) in pieces {
            // Only in-sync copies are candidates; the core orders them
            // (local, same site, latency).
            let copies: Vec<ReadCopy> = nodes
                .into_iter()
                .map(|n| ReadCopy {
                    site: if n == self.node {
                        self.cfg.site.clone()
                    } else {
                        self.peers.site(&n)
                    },
                    latency_us: self.peers.latency_us(&n),
                    in_sync: true,
                    node: n,
                })
                .collect();
            let choice =
                ReadChoice::new(r, &place, &copies).map_err(|e| io_error("read", e.to_string()))?;
            parts.push(self.read_piece(choice, r).await?);
        }
        // A zombie's read may miss the new writer's writes.
        self.check_ack("read")?;
        // One piece (the usual case): hand its buffer over without a copy.
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let mut out = BytesMut::with_capacity(range.len as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// Tries the candidates of `choice` in order until one answers.
    async fn read_piece(
        &self,
        mut choice: ReadChoice,
        r: ByteRange,
    ) -> Result<Bytes, StorageError> {
        loop {
            let Some(node) = choice.current().cloned() else {
                return Err(io_error(
                    "read",
                    format!("no in-sync copy of {r} can be read"),
                ));
            };
            let started = Instant::now();
            let res = if node == self.node {
                match &self.local {
                    Some(l) => l.read(self.cfg.generation, r).await,
                    None => Err(CopyFailure {
                        reason: FailReason::Io,
                        no_space: false,
                        message: "no local copy is open".into(),
                    }),
                }
            } else {
                self.remote().read(&node, r).await
            };
            self.stats
                .count(&node, Counted::Read, r.len, started.elapsed(), res.is_ok());
            let f = match res {
                Ok(b) => return Ok(b),
                Err(f) => f,
            };
            tracing::warn!(%node, range = %r, reason = %f.message, "read from a copy failed");
            self.problems.record(&node, f.message.clone());
            if f.reason == FailReason::Fenced {
                // Not the writer any more: marking copies is the new
                // writer's business, not ours.
                self.fenced.store(true, Ordering::Release);
            } else if let Ok(mark) = choice.failure_mark(&node) {
                if let Err(why) = self.persist_mark(&mark).await {
                    // The copy is dirty in the cache, so this mirror no
                    // longer reads it; the read itself can still succeed.
                    self.problems.record(&node, why);
                }
            }
            if let Err(e) = choice.next_after_failure(&node) {
                return Err(io_error("read", format!("{e} (last: {})", f.message)));
            }
        }
    }
}

/// Most unflushed ranges kept per copy. Past it they collapse into the one
/// range that covers them all: a flush that then fails marks a superset of
/// what the copy may have lost, which is safe (it only costs resync), and
/// memory per copy stays bounded between flushes.
const UNFLUSHED_MAX: usize = 4096;

/// Adds `ranges` to a copy's unflushed list, coalescing only when the list
/// has doubled since it was last coalesced (amortised O(log n) per write:
/// coalescing on every write sorted the whole list each time, which made
/// 4 KiB writes at queue depth 32 thirty times slower than the engine).
fn remember_unflushed(list: &mut Vec<ByteRange>, ranges: Vec<ByteRange>) {
    list.extend(ranges);
    if list.len() < 64 || !list.len().is_power_of_two() {
        return;
    }
    *list = crate::core::coalesce(std::mem::take(list));
    if list.len() > UNFLUSHED_MAX {
        let (lo, hi) = (list[0].offset, list[list.len() - 1].end());
        *list = vec![ByteRange::from_bounds(lo, hi)];
    }
}

#[cfg(test)]
mod unflushed_tests {
    use super::*;

    #[test]
    fn unflushed_ranges_stay_bounded_and_cover_every_write() {
        let mut list = Vec::new();
        let mut all = Vec::new();
        for i in 0..100_000u64 {
            let r = ByteRange::new((i * 7919 % 65_536) * 8192, 4096);
            all.push(r);
            remember_unflushed(&mut list, vec![r]);
            assert!(list.len() <= 2 * UNFLUSHED_MAX, "bounded: {}", list.len());
        }
        let covered = crate::core::coalesce(list);
        for r in all {
            assert!(
                covered
                    .iter()
                    .any(|c| c.offset <= r.offset && r.end() <= c.end()),
                "{r:?} lost"
            );
        }
    }
}
