//! The write plan and the protocol-C acknowledgement rule (invariant 1,
//! ARCHITECTURE.md), and the same rule for FUA and SYNCHRONIZE CACHE
//! (invariant 2).
//!
//! Owns: which copy receives which sub-ranges of a write, and when GOOD may
//! go out. Knows nothing of sockets, engines or the metadata store: the
//! caller sends the data, persists the marks this module asks for, and feeds
//! every outcome back as an [`AckEvent`].
//!
//! Each copy of a tracked operation moves through:
//!
//! ```text
//!   data:   Sending --CopyAccepted--> Accepted
//!              |
//!              `-----CopyFailed-----> Failed   (effect: mark its ranges dirty)
//!
//!   marks:  pending --MarkDurable--> durable
//!              `------MarkFailed---> failed    (=> CHECK CONDITION)
//!
//!   a partly-dirty location gets no data, only an up-front mark
//! ```
//!
//! The operation answers once: GOOD when every copy is Accepted or Marked and
//! every sub-range was accepted by at least one copy; CHECK CONDITION as soon
//! as a mark fails or every copy planned for some sub-range has failed.
//!
//! Two choices, and why:
//! - A location that is not in sync for a sub-range receives nothing. If its
//!   dirty bits already cover the sub-range ([`CopyState::Dirty`]) nothing is
//!   needed: the write leaves those bits set, so a later resync copies the new
//!   data. If only part of the sub-range is dirty ([`CopyState::PartlyDirty`]),
//!   the clean part would go stale, so the whole sub-range is marked dirty,
//!   durably, before GOOD.
//! - A failed copy is marked dirty at once, even when no copy accepted. A
//!   failed or timed-out write may still land later, so that copy can no
//!   longer be called in sync for the range; keeping the rule unconditional is
//!   what keeps in-sync copies identical. If every copy of a sub-range failed,
//!   that sub-range is left with no in-sync copy: reads of it fail until an
//!   operator repairs it, rather than returning possibly torn data. The
//!   initiator gets CHECK CONDITION (SBC-3 leaves a failed WRITE's range
//!   indeterminate).

use std::collections::BTreeMap;

use blockmap::types::NodeId;

use super::units::{coalesce, ByteRange};

/// The state of one location for the touched sub-range of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// No dirty bit covers any byte of the sub-range: the copy is current.
    InSync,
    /// Dirty bits (or a coarse out-of-sync or syncing state) cover the whole
    /// sub-range: the copy gets nothing and its bits stay set.
    Dirty,
    /// Some bytes of the sub-range are dirty, some clean: the copy gets
    /// nothing, and the whole sub-range must be marked dirty before GOOD.
    PartlyDirty,
}

/// One location of a block, as the caller's placement cache sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationView {
    /// The node holding the copy.
    pub node: NodeId,
    /// Its state for the touched sub-range.
    pub state: CopyState,
}

/// One block touched by a write: the touched sub-range (inside the block)
/// and every location of the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    /// The bytes of the write that fall into this block.
    pub range: ByteRange,
    /// The block's locations.
    pub locations: Vec<LocationView>,
}

/// Why a write cannot even be planned; the caller answers CHECK CONDITION.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The block views do not tile the write's range exactly.
    #[error("block views do not tile the write range (gap or overlap at byte {at})")]
    NotTiled {
        /// First byte where the views and the range disagree.
        at: u64,
    },
    /// A sub-range has no in-sync location at all.
    #[error("no in-sync copy of {range}")]
    NoInSyncCopy {
        /// The sub-range.
        range: ByteRange,
    },
    /// The operation touches nothing (empty range or no copy).
    #[error("empty operation")]
    Empty,
}

/// "Mark `ranges` of `node`'s copy dirty in the metadata store, durably",
/// then report [`AckEvent::MarkDurable`] or [`AckEvent::MarkFailed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkDirty {
    /// The copy to mark.
    pub node: NodeId,
    /// The byte ranges, coalesced.
    pub ranges: Vec<ByteRange>,
}

/// Which copies receive which sub-ranges of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    range: ByteRange,
    sends: BTreeMap<NodeId, Vec<ByteRange>>,
    marks: BTreeMap<NodeId, Vec<ByteRange>>,
    pieces: Vec<Piece>,
}

/// A sub-range and the copies that were asked to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    range: ByteRange,
    nodes: Vec<NodeId>,
}

impl WritePlan {
    /// Plans a write of `range` given one [`BlockView`] per touched block, in
    /// order. Every in-sync location of a block receives that block's
    /// sub-range; see the module doc for the others.
    pub fn new(range: ByteRange, blocks: &[BlockView]) -> Result<Self, PlanError> {
        if range.is_empty() {
            return Err(PlanError::Empty);
        }
        let mut next = range.offset;
        let mut sends: BTreeMap<NodeId, Vec<ByteRange>> = BTreeMap::new();
        let mut marks: BTreeMap<NodeId, Vec<ByteRange>> = BTreeMap::new();
        let mut pieces = Vec::with_capacity(blocks.len());
        for b in blocks {
            if b.range.offset != next || b.range.is_empty() {
                return Err(PlanError::NotTiled { at: next });
            }
            next = b.range.end();
            let mut nodes = Vec::new();
            for l in &b.locations {
                match l.state {
                    CopyState::InSync => {
                        sends.entry(l.node.clone()).or_default().push(b.range);
                        nodes.push(l.node.clone());
                    }
                    CopyState::Dirty => {}
                    CopyState::PartlyDirty => {
                        marks.entry(l.node.clone()).or_default().push(b.range)
                    }
                }
            }
            if nodes.is_empty() {
                return Err(PlanError::NoInSyncCopy { range: b.range });
            }
            pieces.push(Piece {
                range: b.range,
                nodes,
            });
        }
        if next != range.end() {
            return Err(PlanError::NotTiled { at: next });
        }
        for v in sends.values_mut().chain(marks.values_mut()) {
            *v = coalesce(std::mem::take(v));
        }
        Ok(WritePlan {
            range,
            sends,
            marks,
            pieces,
        })
    }

    /// The write's range.
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// For each copy that must receive data, the coalesced sub-ranges.
    pub fn sends(&self) -> &BTreeMap<NodeId, Vec<ByteRange>> {
        &self.sends
    }

    /// Partly-dirty copies, marked dirty for their sub-ranges before GOOD.
    pub fn marks(&self) -> &BTreeMap<NodeId, Vec<ByteRange>> {
        &self.marks
    }

    /// Starts tracking: returns the tracker and the marks to persist now
    /// (those of partly-dirty copies). Send the data to every copy of
    /// [`WritePlan::sends`] in parallel.
    pub fn start(self) -> (AckTracker, Vec<MarkDirty>) {
        AckTracker::new(self.sends, self.marks, self.pieces)
    }
}

/// A flush (WRITE with FUA, SYNCHRONIZE CACHE) across every in-sync copy,
/// under the same rule as a write (invariant 2, ARCHITECTURE.md): each copy
/// either flushed or is marked dirty for the ranges it had not yet made
/// stable, and at least one copy flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushPlan {
    copies: BTreeMap<NodeId, Vec<ByteRange>>,
}

impl FlushPlan {
    /// `copies`: every in-sync copy with the ranges written to it since its
    /// last successful flush (possibly none). Those ranges are what a failed
    /// flush marks dirty.
    pub fn new(copies: BTreeMap<NodeId, Vec<ByteRange>>) -> Result<Self, PlanError> {
        if copies.is_empty() {
            return Err(PlanError::Empty);
        }
        Ok(FlushPlan { copies })
    }

    /// Starts tracking: send a flush to every copy, report each outcome as
    /// [`AckEvent::CopyAccepted`] (flushed) or [`AckEvent::CopyFailed`].
    pub fn start(self) -> AckTracker {
        // One piece: the flush as a whole needs one copy that flushed.
        let piece = Piece {
            range: ByteRange::default(),
            nodes: self.copies.keys().cloned().collect(),
        };
        let copies = self
            .copies
            .into_iter()
            .map(|(n, r)| (n, coalesce(r)))
            .collect();
        AckTracker::new(copies, BTreeMap::new(), vec![piece]).0
    }
}

/// Why a copy failed; informational (every failure is handled the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The copy answered with an I/O error (disk full, medium error).
    Io,
    /// No answer in time, or the connection broke.
    Timeout,
    /// The node refused our generation: we are fenced.
    Fenced,
}

/// What the shell reports about one copy of a tracked operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckEvent {
    /// The copy took the data (or flushed).
    CopyAccepted(NodeId),
    /// The copy failed.
    CopyFailed(NodeId, FailReason),
    /// The mark asked for this copy is durable in the metadata store.
    MarkDurable(NodeId),
    /// The mark asked for this copy could not be persisted.
    MarkFailed(NodeId),
}

/// Why the operation ends in CHECK CONDITION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// Every copy asked to take this sub-range failed.
    NoCopyAccepted(ByteRange),
    /// A copy failed and its out-of-sync mark could not be persisted.
    MarkFailed(NodeId),
}

/// The answer to the initiator, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not yet decided: wait for more events.
    Wait,
    /// Send GOOD now.
    Good,
    /// Send CHECK CONDITION now.
    CheckCondition(WriteFailure),
    /// The status was already given by an earlier step; nothing to send.
    Sent,
}

/// An event the tracker cannot apply; the tracker is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The node is not a copy of this operation.
    #[error("{0} is not a copy of this operation")]
    UnknownCopy(NodeId),
    /// The event does not fit the copy's state (for example a late accept
    /// after a timeout was reported).
    #[error("unexpected {event} for copy {node}")]
    Unexpected {
        /// The copy.
        node: NodeId,
        /// The event's name.
        event: &'static str,
    },
}

/// The result of one [`AckTracker::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Marks to persist now (then report them).
    pub marks: Vec<MarkDirty>,
    /// What to answer.
    pub status: Status,
}

/// Data progress of one copy (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    /// Mark-only copy (partly dirty): it was sent nothing.
    None,
    Sending,
    Accepted,
    Failed,
}

#[derive(Debug, Clone)]
struct Copy {
    /// What the copy was sent (marked dirty if it fails).
    ranges: Vec<ByteRange>,
    data: Data,
    /// Marks asked for and not yet reported; both kinds (up-front and
    /// after a failure) must be durable before GOOD, so they are counted.
    marks_pending: u32,
    mark_failed: bool,
}

/// Tracks one write or flush until its status is known. Never panics.
#[derive(Debug, Clone)]
pub struct AckTracker {
    copies: BTreeMap<NodeId, Copy>,
    pieces: Vec<Piece>,
    answered: bool,
}

impl AckTracker {
    fn new(
        sends: BTreeMap<NodeId, Vec<ByteRange>>,
        marks: BTreeMap<NodeId, Vec<ByteRange>>,
        pieces: Vec<Piece>,
    ) -> (Self, Vec<MarkDirty>) {
        let mut copies: BTreeMap<NodeId, Copy> = sends
            .into_iter()
            .map(|(n, ranges)| {
                let c = Copy {
                    ranges,
                    data: Data::Sending,
                    marks_pending: 0,
                    mark_failed: false,
                };
                (n, c)
            })
            .collect();
        let mut first = Vec::new();
        for (node, ranges) in marks {
            // A node may be in sync for one block and partly dirty for
            // another: it then gets both its data and an up-front mark.
            let c = copies.entry(node.clone()).or_insert(Copy {
                ranges: Vec::new(),
                data: Data::None,
                marks_pending: 0,
                mark_failed: false,
            });
            c.marks_pending += 1;
            first.push(MarkDirty { node, ranges });
        }
        let t = AckTracker {
            copies,
            pieces,
            answered: false,
        };
        (t, first)
    }

    /// Applies one event. On error the tracker is unchanged.
    pub fn step(&mut self, ev: AckEvent) -> Result<Step, TrackerError> {
        let mut marks = Vec::new();
        let node = match &ev {
            AckEvent::CopyAccepted(n)
            | AckEvent::CopyFailed(n, _)
            | AckEvent::MarkDurable(n)
            | AckEvent::MarkFailed(n) => n,
        };
        let copy = self
            .copies
            .get_mut(node)
            .ok_or_else(|| TrackerError::UnknownCopy(node.clone()))?;
        let unexpected = |event| TrackerError::Unexpected {
            node: node.clone(),
            event,
        };
        match &ev {
            AckEvent::CopyAccepted(_) if copy.data == Data::Sending => copy.data = Data::Accepted,
            AckEvent::CopyAccepted(_) => return Err(unexpected("CopyAccepted")),
            AckEvent::CopyFailed(..) if copy.data == Data::Sending => {
                copy.data = Data::Failed;
                // Nothing unflushed on a failed flush: nothing to mark.
                if !copy.ranges.is_empty() {
                    copy.marks_pending += 1;
                    marks.push(MarkDirty {
                        node: node.clone(),
                        ranges: copy.ranges.clone(),
                    });
                }
            }
            AckEvent::CopyFailed(..) => return Err(unexpected("CopyFailed")),
            AckEvent::MarkDurable(_) | AckEvent::MarkFailed(_) if copy.marks_pending == 0 => {
                return Err(unexpected("mark outcome"))
            }
            AckEvent::MarkDurable(_) => copy.marks_pending -= 1,
            AckEvent::MarkFailed(_) => {
                copy.marks_pending -= 1;
                copy.mark_failed = true;
            }
        }
        let status = self.status();
        Ok(Step { marks, status })
    }

    /// The status now, answering at most once.
    fn status(&mut self) -> Status {
        if self.answered {
            return Status::Sent;
        }
        let s = self.evaluate();
        if s != Status::Wait {
            self.answered = true;
        }
        s
    }

    /// The rule of invariant 1 (ARCHITECTURE.md), over the current progress.
    fn evaluate(&self) -> Status {
        if let Some((n, _)) = self.copies.iter().find(|(_, c)| c.mark_failed) {
            return Status::CheckCondition(WriteFailure::MarkFailed(n.clone()));
        }
        // A sub-range whose every planned copy failed: nobody holds the data.
        for p in &self.pieces {
            let all_failed = p
                .nodes
                .iter()
                .all(|n| self.copies.get(n).is_none_or(|c| c.data == Data::Failed));
            if all_failed {
                return Status::CheckCondition(WriteFailure::NoCopyAccepted(p.range));
            }
        }
        let settled = self.copies.values().all(|c| {
            c.marks_pending == 0 && matches!(c.data, Data::None | Data::Accepted | Data::Failed)
        });
        if settled {
            Status::Good
        } else {
            Status::Wait
        }
    }

    /// True once the status has been given.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// Marks asked for and not yet reported.
    pub fn marks_in_flight(&self) -> u32 {
        self.copies.values().map(|c| c.marks_pending).sum()
    }
}
