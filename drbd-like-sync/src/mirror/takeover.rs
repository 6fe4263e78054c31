//! Reconciliation on takeover (invariant 5, ARCHITECTURE.md): the shell
//! that runs [`crate::core::reconcile`] with the new writer's generation,
//! before it serves.
//!
//! Owns: finding which copies are reachable (a flush stamped with the new
//! generation, which also fences the old writer on every copy that answers,
//! invariant 4), the per-extent in-sync copies from the cached record, and
//! performing the plan's effects: copy an extent from the source to a
//! destination (read, then a FUA write, local engine or protocol), or mark
//! a copy dirty for it in the store. Must not know: the lease, the ack rule.
//!
//! ```text
//!   fence pass (flush at g on every location) -> reachable
//!   old log extents x cached record            -> ExtentCopies
//!   core::reconcile::plan(extents, reachable, distrust = old holder)
//!   Reconciler: Copy(from, to) | Mark(node)  ->  CopyDone / MarkDurable ...
//!   done -> serving may begin;  Failed -> the takeover fails (do not serve)
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use blockmap::types::NodeId;
use bytes::Bytes;
use tokio::task::JoinSet;

use super::copies::{CopyFailure, CopyOp};
use super::Inner;
use crate::core::reconcile::{
    plan, ExtentCopies, Method, ReconcileEffect, ReconcileError, ReconcileEvent, ReconcileState,
    Reconciler, Side,
};
use crate::core::write::FailReason;
use crate::core::{ByteRange, ExtentIndex};

/// What a takeover reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Done {
    /// The copies that answered at the new generation.
    pub reachable: BTreeSet<NodeId>,
    /// Extent copies made, as (extent, from, to).
    pub copies: Vec<(u64, NodeId, NodeId)>,
    /// Copies marked dirty, as (extent, node).
    pub marks: Vec<(u64, NodeId)>,
}

impl Inner {
    /// The locations that take a flush at our generation. Each one that
    /// does now refuses the old writer (its generation gate moved up).
    async fn fence_pass(self: &Arc<Self>) -> BTreeSet<NodeId> {
        let mut tasks = JoinSet::new();
        for node in self.cache.snapshot().location_nodes() {
            let me = Arc::clone(self);
            tasks.spawn(async move {
                let ok = me.run_on(&node, &CopyOp::Flush, &[]).await.is_ok();
                (node, ok)
            });
        }
        let mut out = BTreeSet::new();
        while let Some(j) = tasks.join_next().await {
            if let Ok((n, true)) = j {
                out.insert(n);
            }
        }
        out
    }

    /// `op` on one copy, local or remote, within the copy timeout.
    pub(super) async fn run_on(
        &self,
        node: &NodeId,
        op: &CopyOp,
        ranges: &[ByteRange],
    ) -> Result<(), CopyFailure> {
        if *node != self.node {
            return self.remote().run(node, op, ranges).await;
        }
        let Some(l) = &self.local else {
            return Err(no_local());
        };
        let work = l.run(self.cfg.generation, op, ranges);
        tokio::time::timeout(self.cfg.copy_timeout, work)
            .await
            .unwrap_or_else(|_| Err(no_local()))
    }

    /// Reads `r` from one copy, local or remote.
    pub(super) async fn read_from(
        &self,
        node: &NodeId,
        r: ByteRange,
    ) -> Result<Bytes, CopyFailure> {
        if *node != self.node {
            return self.remote().read(node, r).await;
        }
        let Some(l) = &self.local else {
            return Err(no_local());
        };
        let work = l.read(self.cfg.generation, r);
        tokio::time::timeout(self.cfg.copy_timeout, work)
            .await
            .unwrap_or_else(|_| Err(no_local()))
    }

    /// The old writer's hot extents with their in-sync copies (whole or
    /// partial), from the cached record. Sources are preferred local first.
    fn extent_copies(&self, extent_size: u64, extents: &BTreeSet<u64>) -> Vec<ExtentCopies> {
        let mut out = Vec::new();
        for &e in extents {
            let start = e.saturating_mul(extent_size);
            if start >= self.size {
                continue;
            }
            let range =
                ByteRange::from_bounds(start, start.saturating_add(extent_size).min(self.size));
            let pieces = self.cache.read_pieces(range);
            let mut any: BTreeSet<NodeId> = BTreeSet::new();
            for (_, nodes) in &pieces {
                any.extend(nodes.iter().cloned());
            }
            // No copy in sync anywhere in the extent: nothing to level
            // (every copy is already marked; resync's business).
            if any.is_empty() {
                continue;
            }
            let (mut in_sync, mut partly): (Vec<NodeId>, Vec<NodeId>) = any
                .into_iter()
                .partition(|n| pieces.iter().all(|(_, ns)| ns.contains(n)));
            // A syncing copy took the old writer's writes where its bits
            // were clear: it is not a source, but it is marked there.
            for n in self.cache.write_receivers(range) {
                if !in_sync.contains(&n) && !partly.contains(&n) {
                    partly.push(n);
                }
            }
            in_sync.sort_by_key(|n| *n != self.node);
            out.push(ExtentCopies {
                extent: ExtentIndex(e),
                range,
                in_sync,
                partly_in_sync: partly,
            });
        }
        out
    }

    /// Reconciles the previous writer's hot `extents` (of `extent_size`
    /// bytes) at this mirror's generation; `distrust` is the previous
    /// holder, whose own copy is marked dirty there rather than trusted.
    pub(crate) async fn reconcile_takeover(
        self: &Arc<Self>,
        extent_size: u64,
        extents: &BTreeSet<u64>,
        distrust: Option<&NodeId>,
    ) -> Result<Done, ReconcileError> {
        let reachable = self.fence_pass().await;
        let wanted = self.extent_copies(extent_size, extents);
        let plan = plan(&wanted, &reachable, distrust)?;
        let (mut rec, first) = Reconciler::start(&plan, Method::CopyAll);
        let mut done = Done {
            reachable,
            ..Done::default()
        };
        // One effect at a time: a takeover touches at most the log's
        // capacity of extents, and ordering keeps the report simple.
        let mut queue: VecDeque<ReconcileEffect> = first.into();
        while let Some(fx) = queue.pop_front() {
            let ev = match fx {
                ReconcileEffect::Copy {
                    extent,
                    range,
                    from,
                    to,
                    ..
                } => match self.read_from(&from, range).await {
                    Err(f) => {
                        tracing::warn!(%from, reason = %f.message, "reconcile source failed");
                        ReconcileEvent::CopyFailed(extent, to, Side::Source)
                    }
                    Ok(data) => {
                        let op = CopyOp::Write {
                            base: range.offset,
                            data,
                            fua: true,
                        };
                        match self.run_on(&to, &op, &[range]).await {
                            Ok(()) => {
                                done.copies.push((extent.0, from, to.clone()));
                                ReconcileEvent::CopyDone(extent, to)
                            }
                            Err(f) => {
                                tracing::warn!(%to, reason = %f.message, "reconcile copy failed");
                                ReconcileEvent::CopyFailed(extent, to, Side::Dest)
                            }
                        }
                    }
                },
                ReconcileEffect::Mark(extent, m) => match self.persist_mark(&m).await {
                    Ok(()) => {
                        done.marks.push((extent.0, m.node.clone()));
                        ReconcileEvent::MarkDurable(extent, m.node)
                    }
                    Err(why) => {
                        tracing::error!(node = %m.node, %why, "reconcile mark failed");
                        ReconcileEvent::MarkFailed(extent, m.node)
                    }
                },
            };
            queue.extend(rec.step(ev)?);
            if let ReconcileState::Failed(e) = rec.state() {
                return Err(e.clone());
            }
        }
        if !rec.done() {
            return Err(match rec.state() {
                ReconcileState::Failed(e) => e.clone(),
                _ => ReconcileError::NoSource(ExtentIndex(u64::MAX)),
            });
        }
        Ok(done)
    }
}

fn no_local() -> CopyFailure {
    CopyFailure {
        reason: FailReason::Io,
        no_space: false,
        message: "the local copy is not open or did not answer".into(),
    }
}
