//! Resync by the image's writer (invariant 6, ARCHITECTURE.md): the shell
//! that runs [`crate::core::resync`] batches alongside foreground I/O.
//!
//! Owns: turning a request into batches from the cached record (after
//! [`blockmap::ops::begin_sync`] made whole out-of-sync blocks into set
//! bits), holding the mirror's range lock over each batch from before the
//! source is read until the cleared bits are in the placement cache,
//! performing a batch's effects (stream the source, write and punch the
//! destination, flush it, `clear_dirty` in the store), the pace, progress
//! and cancellation, and [`blockmap::ops::finish_sync`] at the end. Decides
//! nothing the core decides.
//!
//! ```text
//!   begin_sync (store) -> reload cache -> per destination: sync_bits -> batches
//!   per batch:  pace -> lock range -> BatchCopy: stream source
//!               -> write / punch dest -> flush dest -> clear_dirty
//!               -> cache shows the bits clear -> unlock -> progress
//!   per destination: finish_sync (syncing blocks with clear bits -> in-sync)
//! ```
//!
//! A stop of any kind (error, cancel, lost lease, crash) leaves the bits of
//! every batch that did not land: the next resync copies only those.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use blockmap::types::{BlockRange, NodeId};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

use super::copies::{CopyFailure, CopyOp};
use super::Inner;
use crate::core::resync::{
    batches, dirty_bytes, join_holes, Batch, BatchCopy, BatchEffect, BatchError, BatchEvent,
    BatchLimits, BatchState, Pacer, SourcePiece,
};
use crate::core::{ByteRange, Millis};

/// At most this many passes over what writes dirtied again meanwhile.
const MAX_PASSES: u32 = 8;
/// Batches copied at once (each over its own range) while no foreground
/// I/O runs; one at a time otherwise.
const IN_FLIGHT: usize = 3;
/// Largest batch over a hole of the local source (punching is cheap).
const HOLE_SPAN: u64 = 1 << 30;
/// Holes shorter than this are copied with the data around them.
const MIN_HOLE: u64 = 1 << 20;

/// What to resync.
#[derive(Debug, Clone)]
pub struct ResyncRequest {
    /// The blocks.
    pub blocks: BlockRange,
    /// Only this destination; `None`: every location with something to copy.
    pub location: Option<NodeId>,
    /// Bytes per second; 0 is unpaced.
    pub rate: u64,
    /// Batch bounds.
    pub limits: BatchLimits,
}

/// Bytes one destination received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestProgress {
    /// Data bytes written.
    pub copied: u64,
    /// Hole bytes punched.
    pub holes: u64,
}

/// Where a resync stands; the last one is its report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncProgress {
    /// Bytes to cover (dirty bytes over every destination when it started).
    pub total_bytes: u64,
    /// Bytes covered (landed and cleared).
    pub done_bytes: u64,
    /// Per destination.
    pub dests: BTreeMap<NodeId, DestProgress>,
    /// Blocks that reached in-sync at the end, per destination.
    pub in_sync: BTreeMap<NodeId, Vec<BlockRange>>,
}

/// Why a resync stopped. Everything that landed before stays in sync.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// Some dirty ranges have no in-sync copy to read from; nothing copied.
    #[error(
        "image {image}: no in-sync copy to copy from for blocks {blocks} of {node}; \
         nothing was copied"
    )]
    NoSource {
        /// The image.
        image: String,
        /// The destination.
        node: NodeId,
        /// The blocks, as an operator reads them.
        blocks: String,
    },
    /// The destination is not a location of the blocks (or unknown).
    #[error("image {image}: {source}")]
    Store {
        /// The image.
        image: String,
        /// The store's answer.
        #[source]
        source: blockmap::Error,
    },
    /// A batch failed; its bits stay set.
    #[error("image {image}: copying {range} into {dest} failed: {source}")]
    Batch {
        /// The image.
        image: String,
        /// The destination.
        dest: NodeId,
        /// The batch's bytes.
        range: ByteRange,
        /// What failed.
        #[source]
        source: BatchError,
    },
    /// A copy found to differ could not be marked out-of-sync (verify
    /// stops: reads might still use it).
    #[error("image {image}: marking {node} out-of-sync failed: {why}")]
    Mark {
        /// The image.
        image: String,
        /// The copy.
        node: NodeId,
        /// The store's answer.
        why: String,
    },
    /// Cancelled by the caller.
    #[error("image {image}: resync cancelled; what landed stays in sync")]
    Cancelled {
        /// The image.
        image: String,
    },
    /// The writer lost its lease (or was fenced): another writer resumes.
    #[error("image {image}: the writer lost its lease; the next writer resumes the resync")]
    Lost {
        /// The image.
        image: String,
    },
}

impl Inner {
    fn img(&self) -> String {
        self.cfg.image.to_string()
    }

    fn store_err(&self) -> impl Fn(blockmap::Error) -> ResyncError + '_ {
        move |source| ResyncError::Store {
            image: self.img(),
            source,
        }
    }

    /// Runs `req`: see the module doc. `progress` is called after every
    /// batch; `cancel` is looked at between batches.
    pub(crate) async fn resync(
        self: &Arc<Self>,
        req: &ResyncRequest,
        progress: &mut (dyn FnMut(&ResyncProgress) + Send),
        cancel: &AtomicBool,
    ) -> Result<ResyncProgress, ResyncError> {
        let store = Arc::clone(&self.store);
        let image = self.cfg.image.clone();
        let rec = self.cache.snapshot();
        rec.image
            .block_range(Some(req.blocks.start.0), Some(req.blocks.end.0))
            .map_err(self.store_err())?;
        let dests: Vec<NodeId> = match &req.location {
            Some(n) => vec![n.clone()],
            None => rec.location_nodes().into_iter().collect(),
        };
        // Whole out-of-sync copies become set bits (the resync's progress).
        for d in &dests {
            let needs = rec.sync_bits(d, req.blocks);
            if req.location.is_some() || !needs.is_empty() {
                blockmap::ops::begin_sync(&*store, &image, d, req.blocks)
                    .await
                    .map_err(self.store_err())?;
            }
        }
        self.cache.reload().await.map_err(self.store_err())?;
        let rec = self.cache.snapshot();
        let (size, bs) = (rec.image.size.bytes(), rec.image.block_size.bytes());
        let blocks_bytes = ByteRange::from_bounds(
            (req.blocks.start.0 * bs).min(size),
            (req.blocks.end.0 * bs).min(size),
        );
        // Plan every destination first: refuse before copying anything if
        // some dirty range has nowhere to come from.
        let mut plan: Vec<(NodeId, Vec<Batch>)> = Vec::new();
        let mut out = ResyncProgress::default();
        for d in &dests {
            let all = self.plan(d, &rec, req, blocks_bytes).await?;
            out.total_bytes += all.iter().map(Batch::bytes).sum::<u64>();
            out.dests.insert(d.clone(), DestProgress::default());
            plan.push((d.clone(), all));
        }
        progress(&out);
        let started = Instant::now();
        let mut pacer = Pacer::new(req.rate);
        for (dest, first) in plan {
            // Writes during a pass may set bits again (a write over a
            // partly dirty range marks all of it): later passes copy
            // those, while each pass has less to do.
            let mut list = first;
            let mut pass = 0;
            while !list.is_empty() {
                pass += 1;
                let before: u64 = list.iter().map(Batch::bytes).sum();
                if pass > 1 {
                    out.total_bytes += before;
                }
                self.run_pass(&dest, list, &mut out, progress, cancel, &mut pacer, started)
                    .await?;
                let rec = self.cache.snapshot();
                list = self.plan(&dest, &rec, req, blocks_bytes).await?;
                let left: u64 = list.iter().map(Batch::bytes).sum();
                if left >= before || pass >= MAX_PASSES {
                    tracing::info!(image = %self.cfg.image, %dest, left, pass,
                        "resync passes stop gaining on the writes; the rest stays marked");
                    break;
                }
            }
            let (_, done) = blockmap::ops::finish_sync(&*store, &image, &dest, req.blocks)
                .await
                .map_err(self.store_err())?;
            out.in_sync.insert(dest, done);
        }
        self.cache.reload().await.map_err(self.store_err())?;
        progress(&out);
        Ok(out)
    }

    /// The batches that copy `dest`'s dirty ranges of `within`, per `rec`;
    /// refused, naming the blocks, when some range has no source.
    async fn plan(
        &self,
        dest: &NodeId,
        rec: &blockmap::record::ImageRecord,
        req: &ResyncRequest,
        within: ByteRange,
    ) -> Result<Vec<Batch>, ResyncError> {
        let (g, size) = (rec.image.granularity.bytes(), rec.image.size.bytes());
        let bs = rec.image.block_size.bytes();
        let dirty: Vec<ByteRange> = dirty_bytes(&rec.sync_bits(dest, req.blocks), g, size)
            .into_iter()
            .filter_map(|r| r.intersect(&within))
            .collect();
        let mut all: Vec<(Batch, bool)> = Vec::new();
        let mut orphans = Vec::new();
        // Runs of segments with the same limits are cut into batches
        // together, so that scattered small ranges share batches.
        let mut run: (Vec<ByteRange>, Vec<(ByteRange, Vec<NodeId>)>) = (Vec::new(), Vec::new());
        let mut run_limits = req.limits;
        let mut cut = |run: &mut (Vec<ByteRange>, Vec<(ByteRange, Vec<NodeId>)>),
                       limits: BatchLimits| {
            let (b, o) = batches(dest, &run.0, &run.1, limits);
            let hole = limits != req.limits;
            all.extend(b.into_iter().map(|b| (b, hole)));
            orphans.extend(o);
            *run = (Vec::new(), Vec::new());
        };
        for r in &dirty {
            let pieces = self.cache.read_pieces(*r);
            for (part, limits) in self.split_holes(dest, *r, req.limits, g).await {
                if limits != run_limits && !run.0.is_empty() {
                    cut(&mut run, run_limits);
                }
                run_limits = limits;
                run.0.push(part);
                run.1.extend(
                    pieces
                        .iter()
                        .filter_map(|(p, ns)| p.intersect(&part).map(|x| (x, ns.clone()))),
                );
            }
        }
        if !run.0.is_empty() {
            cut(&mut run, run_limits);
        }
        let all = join_holes(all, req.limits);
        if !orphans.is_empty() {
            return Err(ResyncError::NoSource {
                image: self.img(),
                node: dest.clone(),
                blocks: block_list(&crate::core::coalesce(orphans), bs),
            });
        }
        Ok(all)
    }

    /// `r` cut where the local copy (when it is an in-sync source there)
    /// has large holes: those go in batches of up to [`HOLE_SPAN`], since
    /// punching costs no copy, so that a mostly empty image syncs in the
    /// time its data takes. Pieces stay aligned to `granularity`.
    async fn split_holes(
        &self,
        dest: &NodeId,
        r: ByteRange,
        limits: BatchLimits,
        granularity: u64,
    ) -> Vec<(ByteRange, BatchLimits)> {
        let whole = vec![(r, limits)];
        let Some(local) = &self.local else {
            return whole;
        };
        if *dest == self.node || !self.cache.in_sync(&self.node, r) {
            return whole;
        }
        let holes = BatchLimits {
            max_span: HOLE_SPAN,
            max_parts: 1,
        };
        let mut out: Vec<(ByteRange, BatchLimits)> = Vec::new();
        let mut pos = r.offset;
        while pos < r.end() {
            let Ok((mapped, len)) = local.copy.backend().allocation(pos).await else {
                return whole;
            };
            let mut end = (pos + len.max(1)).min(r.end());
            // Align to the bitmap: a hole piece covers whole granules.
            if end < r.end() {
                end = if mapped {
                    end.div_ceil(granularity) * granularity
                } else {
                    end / granularity * granularity
                }
                .clamp(pos, r.end());
            }
            let big_hole = !mapped && end - pos >= MIN_HOLE;
            if end <= pos {
                end = (pos + granularity).min(r.end());
            }
            let piece = ByteRange::from_bounds(pos, end);
            let kind = if big_hole { holes } else { limits };
            match out.last_mut() {
                Some((last, k)) if *k == kind && last.end() == pos => {
                    *last = ByteRange::from_bounds(last.offset, end)
                }
                _ => out.push((piece, kind)),
            }
            pos = end;
        }
        out
    }

    /// Copies one list of batches into `dest`, paced.
    #[allow(clippy::too_many_arguments)]
    async fn run_pass(
        self: &Arc<Self>,
        dest: &NodeId,
        list: Vec<Batch>,
        out: &mut ResyncProgress,
        progress: &mut (dyn FnMut(&ResyncProgress) + Send),
        cancel: &AtomicBool,
        pacer: &mut Pacer,
        started: Instant,
    ) -> Result<(), ResyncError> {
        // A few batches in flight (each over its own range, each holding
        // its own lock): one's flush and store round trip overlap the next
        // one's copy. While foreground I/O runs, one at a time: it keeps
        // priority.
        let mut list = list.into_iter();
        let mut flying = FuturesUnordered::new();
        let mut failed: Option<ResyncError> = None;
        let mut seen = self.foreground.load(Ordering::Relaxed);
        loop {
            let now = self.foreground.load(Ordering::Relaxed);
            let limit = if now == seen { IN_FLIGHT } else { 1 };
            seen = now;
            while failed.is_none() && flying.len() < limit {
                let Some(batch) = list.next() else { break };
                if cancel.load(Ordering::Acquire) {
                    failed = Some(ResyncError::Cancelled { image: self.img() });
                    break;
                }
                if self.fenced.load(Ordering::Acquire)
                    || self.hooks.gate.as_ref().is_some_and(|g| !g.may_ack())
                {
                    failed = Some(ResyncError::Lost { image: self.img() });
                    break;
                }
                let bytes = batch.bytes();
                flying.push(async move { (bytes, self.run_batch(batch).await) });
            }
            let Some((bytes, res)) = flying.next().await else {
                break;
            };
            let (data, holes) = match res {
                Ok(x) => x,
                Err(e) => {
                    // Stop launching; let the others in flight end.
                    failed.get_or_insert(e);
                    continue;
                }
            };
            let d = out.dests.entry(dest.clone()).or_default();
            d.copied += data;
            d.holes += holes;
            out.done_bytes += bytes;
            progress(out);
            // Holes cost little of the rate: count them at 1/64.
            let cost = data + holes / 64;
            let now = Millis(started.elapsed().as_millis() as u64);
            let next = pacer.spent(now, cost);
            if next > now && failed.is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(next.0 - now.0)).await;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One batch under the range lock; its data and hole bytes.
    async fn run_batch(self: &Arc<Self>, mut batch: Batch) -> Result<(u64, u64), ResyncError> {
        let _held = self.lock.lock(batch.range).await;
        // Sources as they are now, under the lock (a copy may have failed
        // since the plan was made).
        let now: Vec<NodeId> = batch
            .parts
            .iter()
            .flat_map(|p| self.cache.read_pieces(*p))
            .map(|(_, ns)| ns)
            .reduce(|a, b| a.into_iter().filter(|n| b.contains(n)).collect())
            .unwrap_or_default();
        batch.sources = now.into_iter().filter(|n| *n != batch.dest).collect();
        batch.sources.sort_by_key(|n| *n != self.node);
        let (dest, range, parts) = (batch.dest.clone(), batch.range, batch.parts.clone());
        let (mut copy, mut fx) = BatchCopy::start::<Bytes>(batch);
        loop {
            let ev = match fx {
                BatchEffect::Read { from } => match self.stream_from(&from, &parts).await {
                    Ok(pieces) => BatchEvent::SourceRead(pieces),
                    Err(f) => {
                        tracing::warn!(image = %self.cfg.image, %from, reason = %f.message,
                            "resync source failed");
                        BatchEvent::SourceFailed(f.message)
                    }
                },
                BatchEffect::Write(pieces) => match self.write_pieces(&dest, pieces).await {
                    Ok(()) => BatchEvent::Written,
                    Err(f) => BatchEvent::DestFailed(f.message),
                },
                BatchEffect::Flush => match self.run_on(&dest, &CopyOp::Flush, &[]).await {
                    Ok(()) => BatchEvent::Flushed,
                    Err(f) => BatchEvent::DestFailed(f.message),
                },
                BatchEffect::Clear => match self.clear(&dest, &parts).await {
                    Ok(()) => BatchEvent::Cleared,
                    Err(why) => BatchEvent::ClearFailed(why),
                },
                BatchEffect::Finished => break,
            };
            fx = copy.step(ev);
        }
        match copy.state() {
            BatchState::Done => Ok(copy.bytes()),
            BatchState::Failed(e) => Err(ResyncError::Batch {
                image: self.img(),
                dest,
                range,
                source: e.clone(),
            }),
            other => Err(ResyncError::Batch {
                image: self.img(),
                dest,
                range,
                source: BatchError::Unexpected {
                    event: "finished",
                    state: match other {
                        BatchState::Reading(_) => "reading",
                        _ => "unfinished",
                    },
                },
            }),
        }
    }

    /// The data and holes of `parts` on `node`, in order.
    async fn stream_from(
        &self,
        node: &NodeId,
        parts: &[ByteRange],
    ) -> Result<Vec<SourcePiece<Bytes>>, CopyFailure> {
        if *node != self.node {
            return self.remote().stream(node, parts).await;
        }
        let Some(l) = &self.local else {
            return Err(CopyFailure {
                reason: crate::core::write::FailReason::Io,
                no_space: false,
                message: "no local copy".into(),
            });
        };
        let mut out = Vec::new();
        for p in parts {
            out.extend(l.stream(self.cfg.generation, *p).await?);
        }
        Ok(out)
    }

    /// Writes data pieces and punches holes on `dest`, pipelined (no FUA:
    /// the batch flushes once at the end).
    async fn write_pieces(
        &self,
        dest: &NodeId,
        pieces: Vec<SourcePiece<Bytes>>,
    ) -> Result<(), CopyFailure> {
        if *dest != self.node {
            return self.remote().put(dest, pieces).await;
        }
        for p in pieces {
            match p {
                SourcePiece::Data(off, data) => {
                    let r = ByteRange::new(off, data.len() as u64);
                    let op = CopyOp::Write {
                        base: off,
                        data,
                        fua: false,
                    };
                    self.run_on(dest, &op, &[r]).await?;
                }
                SourcePiece::Hole(r) => self.run_on(dest, &CopyOp::Discard, &[r]).await?,
            }
        }
        Ok(())
    }

    /// Clears `dest`'s bits of `parts` in the store (generation-checked, one
    /// round trip), then in the cache.
    async fn clear(&self, dest: &NodeId, parts: &[ByteRange]) -> Result<(), String> {
        let bits = self.cache.bits(parts).map_err(|e| e.to_string())?;
        let call = self
            .store
            .clear_dirty(&self.cfg.image, dest, self.cfg.generation.0, &bits);
        let outcome = match tokio::time::timeout(self.cfg.mark_timeout, call).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the metadata store did not answer".into()),
        };
        self.cache
            .apply_clear(dest, &bits, outcome.version)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Byte ranges as the blocks they touch ("3-5, 9").
fn block_list(ranges: &[ByteRange], block_size: u64) -> String {
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    for r in ranges {
        let (f, l) = (r.offset / block_size, (r.end() - 1) / block_size);
        match blocks.last_mut() {
            Some(last) if last.1 + 1 >= f => last.1 = last.1.max(l),
            _ => blocks.push((f, l)),
        }
    }
    blocks
        .iter()
        .map(|(f, l)| {
            if f == l {
                f.to_string()
            } else {
                format!("{f}-{l}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
