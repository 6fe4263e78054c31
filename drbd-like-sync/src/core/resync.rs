//! Resync (invariant 6, ARCHITECTURE.md): copying the dirty ranges of an
//! out-of-sync copy from an in-sync one while the writer keeps serving.
//!
//! Owns three decisions, none of which does I/O:
//! - how the dirty bits of a destination become batches ([`batches`]): byte
//!   ranges at the bitmap's granularity, each copied under one hold of the
//!   writer's range lock, bounded in data and in span so that a foreground
//!   write to the range waits at most one batch;
//! - the life of one batch ([`BatchCopy`]): read the source, write the
//!   destination (holes are punched, not written), flush it, and only then
//!   clear the bits; a failure at any step leaves the bits set, so the copy
//!   stays out of sync there and the next resync copies it again;
//! - the pace ([`Pacer`]): a token bucket in bytes per second.
//!
//! Ordering with foreground writes (the other half of invariant 6) is the
//! shell's part: it holds the range lock over a batch from before the read
//! until the cleared bits are in its placement cache. A write that comes
//! first has reached the source before the read (the destination was dirty
//! there, so it got nothing, and the copy carries the write); a write that
//! comes after sees the destination in sync and is mirrored to it. Stale
//! data therefore never lands on new data. The simulation
//! (`tests/sim`) runs batches against foreground writes, crashes and
//! takeovers and checks that no in-sync copy ever holds stale data.
//!
//! One batch:
//!
//! ```text
//!   Reading --SourceRead(pieces)--> Writing --Written--> Flushing --Flushed--> Clearing
//!      | SourceFailed: next source     | DestFailed          | DestFailed        | Cleared
//!      v (none left)                   v                     v                   v
//!   Failed(NoSource)              Failed(Dest)          Failed(Dest)            Done
//!                                                      Clearing --ClearFailed--> Failed(Store)
//! ```

use blockmap::types::NodeId;

use super::units::{ByteRange, Millis};

/// What to copy into one destination, in one hold of the range lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The destination copy.
    pub dest: NodeId,
    /// The bytes held under the range lock: from the first part's start to
    /// the last part's end.
    pub range: ByteRange,
    /// The dirty parts copied (sorted, disjoint, inside `range`;
    /// granule-aligned except at the end of the image). Scattered small
    /// parts share a batch, so that they share its flush and its store
    /// round trip.
    pub parts: Vec<ByteRange>,
    /// In-sync copies to read from, in preference order (never `dest`).
    pub sources: Vec<NodeId>,
}

impl Batch {
    /// Bytes of its parts.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.len).sum()
    }
}

/// How big a batch may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most bytes one batch holds under the lock (the longest a foreground
    /// write waits is about one batch at the copy rate).
    pub max_span: u64,
    /// Most parts in one batch.
    pub max_parts: usize,
}

impl Default for BatchLimits {
    /// 8 MiB (about 30 ms at 300 MB/s), 256 parts.
    fn default() -> Self {
        BatchLimits {
            max_span: 8 << 20,
            max_parts: 256,
        }
    }
}

/// The byte ranges of bit ranges `[first, last)` at `granularity`, clipped
/// to an image of `size` bytes, coalesced.
pub fn dirty_bytes(bits: &[(u64, u64)], granularity: u64, size: u64) -> Vec<ByteRange> {
    let ranges = bits
        .iter()
        .map(|&(f, l)| {
            let start = f.saturating_mul(granularity).min(size);
            ByteRange::from_bounds(start, l.saturating_mul(granularity).min(size).max(start))
        })
        .filter(|r| !r.is_empty())
        .collect();
    super::units::coalesce(ranges)
}

/// Cuts `dirty` (sorted, disjoint) into batches that hold at most
/// `limits.max_span` bytes and `limits.max_parts` parts, also cut wherever
/// `pieces` (the in-sync copies of consecutive parts of the image, as the
/// placement cache gives them) changes, so that every batch has one list
/// of sources. Consecutive small parts with the same sources share a
/// batch. A part with no source other than `dest` is returned in the error
/// list instead: resync cannot copy it (no in-sync copy), and the caller
/// names it.
pub fn batches(
    dest: &NodeId,
    dirty: &[ByteRange],
    pieces: &[(ByteRange, Vec<NodeId>)],
    limits: BatchLimits,
) -> (Vec<Batch>, Vec<ByteRange>) {
    let max = limits.max_span.max(1);
    let mut out: Vec<Batch> = Vec::new();
    let mut orphans = Vec::new();
    for d in dirty {
        for (p, nodes) in pieces {
            let Some(part) = d.intersect(p) else { continue };
            let sources: Vec<NodeId> = nodes.iter().filter(|n| *n != dest).cloned().collect();
            if sources.is_empty() {
                orphans.push(part);
                continue;
            }
            let mut at = part.offset;
            while at < part.end() {
                let len = max.min(part.end() - at);
                let piece = ByteRange::new(at, len);
                at += len;
                match out.last_mut() {
                    Some(b)
                        if b.sources == sources
                            && b.parts.len() < limits.max_parts.max(1)
                            && piece.end() - b.range.offset <= max =>
                    {
                        b.range = ByteRange::from_bounds(b.range.offset, piece.end());
                        b.parts.push(piece);
                    }
                    _ => out.push(Batch {
                        dest: dest.clone(),
                        range: piece,
                        parts: vec![piece],
                        sources: sources.clone(),
                    }),
                }
            }
        }
    }
    (out, super::units::coalesce(orphans))
}

/// Joins batches over known holes (`true` in the list) to their
/// neighbours with the same sources, so that a hole costs no flush and no
/// store round trip of its own: a batch takes at most `limits.max_span`
/// bytes of data parts, any length of hole parts, and at most
/// `limits.max_parts` parts. Order is kept.
pub fn join_holes(list: Vec<(Batch, bool)>, limits: BatchLimits) -> Vec<Batch> {
    let mut out: Vec<(Batch, u64)> = Vec::new();
    for (b, hole) in list {
        let data = if hole { 0 } else { b.bytes() };
        match out.last_mut() {
            Some((last, last_data))
                if last.sources == b.sources
                    && last.dest == b.dest
                    && last.parts.len() + b.parts.len() <= limits.max_parts.max(1)
                    && *last_data + data <= limits.max_span
                    && last.range.end() <= b.range.offset =>
            {
                last.range = ByteRange::from_bounds(last.range.offset, b.range.end());
                last.parts.extend(b.parts);
                *last_data += data;
            }
            _ => out.push((b, data)),
        }
    }
    out.into_iter().map(|(b, _)| b).collect()
}

/// One piece of what a source holds in a batch's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePiece<D> {
    /// Data at this image offset.
    Data(u64, D),
    /// A hole (reads as zeroes): punched on the destination.
    Hole(ByteRange),
}

/// Why a batch failed. Its bits stay set in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// No source could be read.
    #[error("no in-sync copy of {0} could be read")]
    NoSource(ByteRange),
    /// The destination refused or failed a write, a punch or the flush.
    #[error("the destination {node} failed: {why}")]
    Dest {
        /// The destination.
        node: NodeId,
        /// Its error.
        why: String,
    },
    /// The store did not clear the bits (the data is there, but the copy
    /// stays marked; the next resync copies it again).
    #[error("the metadata store did not clear the bits: {0}")]
    Store(String),
    /// An event that does not fit the state (a shell bug).
    #[error("event {event} in state {state}")]
    Unexpected {
        /// The event.
        event: &'static str,
        /// The state.
        state: &'static str,
    },
}

/// An outcome the shell reports to a [`BatchCopy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEvent<D> {
    /// The current source gave the parts, in order, as data and holes.
    SourceRead(Vec<SourcePiece<D>>),
    /// The current source failed.
    SourceFailed(String),
    /// The destination took every piece.
    Written,
    /// The destination failed a write or a punch, or its flush.
    DestFailed(String),
    /// The destination's flush completed: the pieces are stable.
    Flushed,
    /// The store cleared the bits, durably.
    Cleared,
    /// The store refused or did not answer.
    ClearFailed(String),
}

/// What the shell must do next for a [`BatchCopy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEffect<D> {
    /// Read the batch's parts from `from` (data and holes).
    Read {
        /// The source.
        from: NodeId,
    },
    /// Write these pieces to the destination (data written, holes punched).
    Write(Vec<SourcePiece<D>>),
    /// Flush the destination.
    Flush,
    /// Clear the destination's bits of the batch's parts in the store, then
    /// in the placement cache, then release the range lock.
    Clear,
    /// Nothing more: the batch is over (see [`BatchCopy::state`]).
    Finished,
}

/// Where a batch stands (see the module diagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchState {
    /// Reading source `i` of the batch's sources.
    Reading(usize),
    /// Writing the destination.
    Writing,
    /// Flushing the destination.
    Flushing,
    /// Clearing the bits.
    Clearing,
    /// The range landed and its bits are clear.
    Done,
    /// Stopped; the bits stay set.
    Failed(BatchError),
}

impl BatchState {
    fn name(&self) -> &'static str {
        match self {
            BatchState::Reading(_) => "reading",
            BatchState::Writing => "writing",
            BatchState::Flushing => "flushing",
            BatchState::Clearing => "clearing",
            BatchState::Done => "done",
            BatchState::Failed(_) => "failed",
        }
    }
}

/// One batch's copy, driven by events. `D` is the data type (bytes in the
/// daemon, stamps in the simulation).
#[derive(Debug, Clone)]
pub struct BatchCopy {
    batch: Batch,
    state: BatchState,
    /// Data bytes and hole bytes the source gave.
    data_bytes: u64,
    hole_bytes: u64,
}

impl BatchCopy {
    /// Starts a batch: the first effect reads the first source. Call with
    /// the range lock held.
    pub fn start<D>(batch: Batch) -> (BatchCopy, BatchEffect<D>) {
        let mut b = BatchCopy {
            batch,
            state: BatchState::Reading(0),
            data_bytes: 0,
            hole_bytes: 0,
        };
        let fx = match b.batch.sources.first() {
            Some(from) => BatchEffect::Read { from: from.clone() },
            None => {
                b.state = BatchState::Failed(BatchError::NoSource(b.batch.range));
                BatchEffect::Finished
            }
        };
        (b, fx)
    }

    /// The batch.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Where it stands.
    pub fn state(&self) -> &BatchState {
        &self.state
    }

    /// Bytes the source held as data, and as holes (known once read).
    pub fn bytes(&self) -> (u64, u64) {
        (self.data_bytes, self.hole_bytes)
    }

    /// The one checked transition. Never panics; an event that does not
    /// fit fails the batch (its bits stay set, which is always safe).
    pub fn step<D: AsRefLen>(&mut self, ev: BatchEvent<D>) -> BatchEffect<D> {
        use BatchEvent as E;
        use BatchState as S;
        let next = match (&self.state, ev) {
            (S::Reading(_), E::SourceRead(pieces)) => match self.check_pieces(&pieces) {
                Ok((data, holes)) => {
                    self.data_bytes = data;
                    self.hole_bytes = holes;
                    self.state = S::Writing;
                    return BatchEffect::Write(pieces);
                }
                Err(e) => S::Failed(e),
            },
            (S::Reading(i), E::SourceFailed(_)) => {
                let i = i + 1;
                match self.batch.sources.get(i) {
                    Some(from) => {
                        self.state = S::Reading(i);
                        return BatchEffect::Read { from: from.clone() };
                    }
                    None => S::Failed(BatchError::NoSource(self.batch.range)),
                }
            }
            (S::Writing, E::Written) => {
                self.state = S::Flushing;
                return BatchEffect::Flush;
            }
            (S::Flushing, E::Flushed) => {
                self.state = S::Clearing;
                return BatchEffect::Clear;
            }
            (S::Writing | S::Flushing, E::DestFailed(why)) => S::Failed(BatchError::Dest {
                node: self.batch.dest.clone(),
                why,
            }),
            (S::Clearing, E::Cleared) => S::Done,
            (S::Clearing, E::ClearFailed(why)) => S::Failed(BatchError::Store(why)),
            (s, ev) => S::Failed(BatchError::Unexpected {
                event: event_name(&ev),
                state: s.name(),
            }),
        };
        self.state = next;
        BatchEffect::Finished
    }

    /// The pieces must tile the batch's parts exactly, in order.
    fn check_pieces<D: AsRefLen>(
        &self,
        pieces: &[SourcePiece<D>],
    ) -> Result<(u64, u64), BatchError> {
        let r = self.batch.range;
        let (mut data, mut holes) = (0u64, 0u64);
        let mut it = pieces.iter();
        for part in &self.batch.parts {
            let mut at = part.offset;
            while at < part.end() {
                let (off, len, hole) = match it.next() {
                    Some(SourcePiece::Data(off, d)) => (*off, d.len_bytes(), false),
                    Some(SourcePiece::Hole(h)) => (h.offset, h.len, true),
                    None => return Err(BatchError::NoSource(r)),
                };
                if off != at || len == 0 || off + len > part.end() {
                    return Err(BatchError::NoSource(r));
                }
                at += len;
                if hole {
                    holes += len;
                } else {
                    data += len;
                }
            }
        }
        if it.next().is_some() {
            return Err(BatchError::NoSource(r));
        }
        Ok((data, holes))
    }
}

/// The length of a piece of data, in bytes.
pub trait AsRefLen {
    /// Bytes.
    fn len_bytes(&self) -> u64;
}

impl AsRefLen for bytes::Bytes {
    fn len_bytes(&self) -> u64 {
        self.len() as u64
    }
}

/// The simulation's data: one stamp standing for `len` bytes.
impl AsRefLen for (u64, u64) {
    fn len_bytes(&self) -> u64 {
        self.1
    }
}

fn event_name<D>(ev: &BatchEvent<D>) -> &'static str {
    match ev {
        BatchEvent::SourceRead(_) => "source-read",
        BatchEvent::SourceFailed(_) => "source-failed",
        BatchEvent::Written => "written",
        BatchEvent::DestFailed(_) => "dest-failed",
        BatchEvent::Flushed => "flushed",
        BatchEvent::Cleared => "cleared",
        BatchEvent::ClearFailed(_) => "clear-failed",
    }
}

/// A token bucket in bytes per second: how long to wait before the next
/// batch so that the copy keeps to its rate. Time is an input.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Bytes per second; 0 is unpaced.
    rate: u64,
    /// When the bytes sent so far are paid for.
    paid_until: Millis,
}

impl Pacer {
    /// A pacer at `rate` bytes per second (0: unpaced).
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate,
            paid_until: Millis(0),
        }
    }

    /// Counts `bytes` copied at `now`; returns when the next batch may
    /// start (`now` or later). A burst of up to one second is allowed after
    /// an idle spell, never more.
    pub fn spent(&mut self, now: Millis, bytes: u64) -> Millis {
        if self.rate == 0 {
            return now;
        }
        let start = self.paid_until.max(now.minus(Millis(1000)));
        let cost = bytes.saturating_mul(1000) / self.rate;
        self.paid_until = start.plus(Millis(cost));
        self.paid_until.max(now)
    }
}
