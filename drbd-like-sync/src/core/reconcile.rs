//! The reconciliation a new writer runs before it serves (invariant 5,
//! ARCHITECTURE.md).
//!
//! Owns the plan and its progress. Input: the previous writer's hot
//! activity-log extents, the in-sync copies of each (per the store's marks)
//! and which copies are reachable now. For each extent one reachable in-sync
//! copy is the source and the other reachable in-sync copies are
//! destinations; every unreachable in-sync copy, and the old writer's own
//! copy (a zombie may still write to its local disk around the fence), is
//! marked dirty for the extent instead. A copy in sync for only part of the
//! extent is treated the same way, but is never a source. An in-flight write of the old writer
//! may have landed on some copies and not others; after the plan the copies
//! that stay in sync hold the same bytes.
//!
//! ```text
//!                 all copies done and all marks durable
//!   Running ------------------------------------------> Done (serving may begin)
//!      |
//!      `-- a mark fails, or a source cannot be read --> Failed (re-plan; do not serve)
//!   a destination that fails: its mark is added to the plan (still Running)
//! ```
//!
//! Knows nothing of how copies are read, compared or written.

use std::collections::{BTreeMap, BTreeSet};

use blockmap::types::NodeId;

use super::units::{ByteRange, ExtentIndex};
use super::write::MarkDirty;

/// One hot extent of the previous writer and its in-sync copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentCopies {
    /// The extent.
    pub extent: ExtentIndex,
    /// Its bytes (clipped to the image).
    pub range: ByteRange,
    /// Copies in sync for the whole extent, in the order preferred as source.
    pub in_sync: Vec<NodeId>,
    /// Copies in sync for only part of the extent. The old writer may have
    /// written their clean part, so they are destinations (or marked), but
    /// never a source.
    pub partly_in_sync: Vec<NodeId>,
}

/// How a destination is brought level with the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Copy the whole extent.
    CopyAll,
    /// Compare checksums of `chunk`-byte chunks and copy only those differing.
    CompareChunks {
        /// Chunk size in bytes.
        chunk: u64,
    },
}

/// The plan for one extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentPlan {
    /// The extent.
    pub extent: ExtentIndex,
    /// Its bytes.
    pub range: ByteRange,
    /// The copy read from.
    pub source: NodeId,
    /// The copies written to.
    pub dests: Vec<NodeId>,
    /// The copies marked dirty for the extent.
    pub marks: Vec<NodeId>,
}

/// An effect of the reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileEffect {
    /// Bring `to` level with `from` on `range` (with the new generation).
    Copy {
        /// The extent.
        extent: ExtentIndex,
        /// Its bytes.
        range: ByteRange,
        /// Source copy.
        from: NodeId,
        /// Destination copy.
        to: NodeId,
        /// Full copy or compare-then-copy.
        method: Method,
    },
    /// Mark a copy dirty for an extent, durably; report the outcome with
    /// the extent.
    Mark(ExtentIndex, MarkDirty),
}

/// Which side of a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source could not be read.
    Source,
    /// The destination could not be written.
    Dest,
}

/// What the caller reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileEvent {
    /// The copy of `extent` to `to` completed.
    CopyDone(ExtentIndex, NodeId),
    /// The copy of `extent` to `to` failed.
    CopyFailed(ExtentIndex, NodeId, Side),
    /// The mark of `node` for `extent` is durable.
    MarkDurable(ExtentIndex, NodeId),
    /// The mark of `node` for `extent` failed.
    MarkFailed(ExtentIndex, NodeId),
}

/// Why the plan cannot be made or completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// No reachable, trusted in-sync copy of the extent: do not serve.
    #[error("no reachable in-sync copy of extent {0:?}")]
    NoSource(ExtentIndex),
    /// A mark could not be persisted.
    #[error("mark of {1} for extent {0:?} failed")]
    MarkFailed(ExtentIndex, NodeId),
    /// The source of an extent failed: re-plan without it.
    #[error("source {1} of extent {0:?} failed")]
    SourceFailed(ExtentIndex, NodeId),
    /// The event names no pending copy or mark.
    #[error("unexpected reconciliation event {0:?}")]
    Unexpected(ReconcileEvent),
}

/// Builds the plan. `distrust` is the old writer's node, whose copy is
/// marked even if reachable. Errors when an extent has no source.
pub fn plan(
    extents: &[ExtentCopies],
    reachable: &BTreeSet<NodeId>,
    distrust: Option<&NodeId>,
) -> Result<Vec<ExtentPlan>, ReconcileError> {
    let mut out = Vec::with_capacity(extents.len());
    for x in extents {
        let (good, marks): (Vec<NodeId>, Vec<NodeId>) = x
            .in_sync
            .iter()
            .cloned()
            .partition(|n| reachable.contains(n) && Some(n) != distrust);
        let (partly_good, partly_marks): (Vec<NodeId>, Vec<NodeId>) = x
            .partly_in_sync
            .iter()
            .cloned()
            .partition(|n| reachable.contains(n) && Some(n) != distrust);
        let mut good = good.into_iter();
        let source = good.next().ok_or(ReconcileError::NoSource(x.extent))?;
        out.push(ExtentPlan {
            extent: x.extent,
            range: x.range,
            source,
            dests: good.chain(partly_good).collect(),
            marks: marks.into_iter().chain(partly_marks).collect(),
        });
    }
    Ok(out)
}

/// Progress of the plan (see the module diagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileState {
    /// Copies or marks outstanding.
    Running,
    /// Everything done: serving may begin.
    Done,
    /// Cannot complete.
    Failed(ReconcileError),
}

/// Runs a plan to completion. Never panics.
#[derive(Debug, Clone)]
pub struct Reconciler {
    copies: BTreeSet<(ExtentIndex, NodeId)>,
    marks: BTreeMap<(ExtentIndex, NodeId), ByteRange>,
    ranges: BTreeMap<ExtentIndex, ByteRange>,
    state: ReconcileState,
}

impl Reconciler {
    /// Starts a plan: returns the machine and every effect, to run in
    /// parallel.
    pub fn start(plan: &[ExtentPlan], method: Method) -> (Self, Vec<ReconcileEffect>) {
        let mut fx = Vec::new();
        let mut r = Reconciler {
            copies: BTreeSet::new(),
            marks: BTreeMap::new(),
            ranges: BTreeMap::new(),
            state: ReconcileState::Running,
        };
        for p in plan {
            r.ranges.insert(p.extent, p.range);
            for to in &p.dests {
                r.copies.insert((p.extent, to.clone()));
                fx.push(ReconcileEffect::Copy {
                    extent: p.extent,
                    range: p.range,
                    from: p.source.clone(),
                    to: to.clone(),
                    method,
                });
            }
            for n in &p.marks {
                fx.push(r.add_mark(p.extent, n.clone(), p.range));
            }
        }
        r.settle();
        (r, fx)
    }

    fn add_mark(&mut self, extent: ExtentIndex, node: NodeId, range: ByteRange) -> ReconcileEffect {
        self.marks.insert((extent, node.clone()), range);
        ReconcileEffect::Mark(
            extent,
            MarkDirty {
                node,
                ranges: vec![range],
            },
        )
    }

    fn settle(&mut self) {
        if self.state == ReconcileState::Running && self.copies.is_empty() && self.marks.is_empty()
        {
            self.state = ReconcileState::Done;
        }
    }

    /// The state.
    pub fn state(&self) -> &ReconcileState {
        &self.state
    }

    /// True when serving may begin.
    pub fn done(&self) -> bool {
        self.state == ReconcileState::Done
    }

    /// Applies one event; returns new effects (a mark for a failed
    /// destination). Events after the end are errors.
    pub fn step(&mut self, ev: ReconcileEvent) -> Result<Vec<ReconcileEffect>, ReconcileError> {
        if self.state != ReconcileState::Running {
            return Err(ReconcileError::Unexpected(ev));
        }
        let unexpected = ReconcileError::Unexpected(ev.clone());
        let mut fx = Vec::new();
        match ev {
            ReconcileEvent::CopyDone(e, n) => {
                if !self.copies.remove(&(e, n)) {
                    return Err(unexpected);
                }
            }
            ReconcileEvent::CopyFailed(e, n, side) => {
                if !self.copies.remove(&(e, n.clone())) {
                    return Err(unexpected);
                }
                match side {
                    Side::Dest => {
                        let range = self.ranges.get(&e).copied().unwrap_or_default();
                        fx.push(self.add_mark(e, n, range));
                    }
                    Side::Source => {
                        self.state = ReconcileState::Failed(ReconcileError::SourceFailed(e, n));
                    }
                }
            }
            ReconcileEvent::MarkDurable(e, n) => {
                if self.marks.remove(&(e, n)).is_none() {
                    return Err(unexpected);
                }
            }
            ReconcileEvent::MarkFailed(e, n) => {
                if self.marks.remove(&(e, n.clone())).is_none() {
                    return Err(unexpected);
                }
                self.state = ReconcileState::Failed(ReconcileError::MarkFailed(e, n));
            }
        }
        self.settle();
        Ok(fx)
    }
}
