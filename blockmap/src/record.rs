//! [`ImageRecord`]: an image's header, placement and dirty bitmaps, and the
//! one place where placement invariants (invariant 7, ARCHITECTURE.md) are enforced:
//!
//! - a new image's locations start in sync (every copy is all zeros);
//! - a location added later starts out of sync;
//! - removing a location never drops the last in-sync copy of a block, nor
//!   the last location of a block;
//! - every block always has at least one location.
//!
//! A block's state at a location is derived: the run's coarse [`SyncState`],
//! refined by the dirty bitmap (an in-sync copy with dirty bits in the block
//! is out of sync). Operations mutate a copy; stores persist the
//! [`ImageDiff`] between the copy and what they loaded, so that a one-block
//! change writes O(1) bytes.

use crate::bitmap::DirtyBitmap;
use crate::error::{Error, RangeList, Result};
use crate::image::{Image, ImageSpec};
use crate::placement::{LocationSet, Placement, RefusedTransition, Run, SyncState};
use crate::types::{BlockIndex, BlockRange, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Everything the store knows about one image, plus the version used for
/// optimistic concurrency (every committed change increments it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The header.
    pub image: Image,
    /// Block placement.
    pub placement: Placement,
    /// Dirty bitmaps per location (absent means clean).
    pub dirty: BTreeMap<NodeId, DirtyBitmap>,
    /// Store version this record was loaded at (0 before creation).
    pub version: u64,
}

/// Push a block into a list of ranges, extending the last one when adjacent.
fn push_block(ranges: &mut Vec<BlockRange>, b: u64) {
    match ranges.last_mut() {
        Some(r) if r.end.0 == b => r.end = BlockIndex(b + 1),
        _ => ranges.push(BlockRange {
            start: BlockIndex(b),
            end: BlockIndex(b + 1),
        }),
    }
}

fn push_range(ranges: &mut Vec<BlockRange>, r: BlockRange) {
    match ranges.last_mut() {
        Some(l) if l.end == r.start => l.end = r.end,
        _ => ranges.push(r),
    }
}

impl ImageRecord {
    /// A new image: validated geometry, every initial location in sync.
    pub fn create(spec: &ImageSpec) -> Result<Self> {
        let image = Image::from_spec(spec)?;
        let locations: LocationSet = spec
            .locations
            .iter()
            .map(|n| (n.clone(), SyncState::InSync))
            .collect();
        Ok(Self {
            placement: Placement::uniform(image.block_count(), locations)?,
            image,
            dirty: BTreeMap::new(),
            version: 0,
        })
    }

    /// Every node that is a location of at least one block.
    pub fn location_nodes(&self) -> BTreeSet<NodeId> {
        self.placement
            .runs()
            .iter()
            .flat_map(|r| r.locations.keys().cloned())
            .collect()
    }

    fn bits_of_block(&self, b: u64) -> (u64, u64) {
        let bpb = self.image.bits_per_block();
        (b * bpb, ((b + 1) * bpb).min(self.image.bitmap_bits()))
    }

    /// Derived state of `node`'s copy of `block`; `None` if it is not a location.
    pub fn block_state(&self, block: BlockIndex, node: &NodeId) -> Option<SyncState> {
        let coarse = *self.placement.locations_of(block)?.get(node)?;
        Some(self.derive(coarse, block.0, node))
    }

    fn derive(&self, coarse: SyncState, b: u64, node: &NodeId) -> SyncState {
        if coarse != SyncState::InSync {
            return coarse;
        }
        let (f, l) = self.bits_of_block(b);
        match self.dirty.get(node) {
            Some(bm) if bm.any_in(f, l) => SyncState::OutOfSync,
            _ => SyncState::InSync,
        }
    }

    /// Blocks of `range` where `node` is (with `want = true`) or is not a location.
    fn location_ranges(&self, range: BlockRange, node: &NodeId, want: bool) -> Vec<BlockRange> {
        let mut out = Vec::new();
        for (r, locs) in self.placement.clipped(range) {
            if locs.contains_key(node) == want {
                push_range(&mut out, r);
            }
        }
        out
    }

    fn require_location(&self, range: BlockRange, node: &NodeId) -> Result<()> {
        let missing = self.location_ranges(range, node, false);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::NotALocation {
                image: self.image.name.clone(),
                node: node.clone(),
                ranges: RangeList(missing),
            })
        }
    }

    /// Refuses (naming the blocks) when `node` is a location of no block
    /// of `range`; blocks it does not hold are skipped by the caller.
    fn require_some_location(&self, range: BlockRange, node: &NodeId) -> Result<()> {
        if self.location_ranges(range, node, true).is_empty() {
            return Err(Error::NotALocation {
                image: self.image.name.clone(),
                node: node.clone(),
                ranges: RangeList(vec![range]),
            });
        }
        Ok(())
    }

    /// Adds `node` as a location of `range`; its copies start out of sync.
    /// Refuses if it already is a location of any block of the range.
    pub fn add_location(&mut self, node: &NodeId, range: BlockRange) -> Result<()> {
        self.check_range(range)?;
        let present = self.location_ranges(range, node, true);
        if !present.is_empty() {
            return Err(Error::AlreadyALocation {
                image: self.image.name.clone(),
                node: node.clone(),
                ranges: RangeList(present),
            });
        }
        self.placement.modify(range, |l| {
            l.insert(node.clone(), SyncState::OutOfSync);
        });
        Ok(())
    }

    /// Removes `node` as a location of `range`. Refuses, naming the blocks,
    /// if a block would lose its last in-sync copy or its last location.
    pub fn remove_location(&mut self, node: &NodeId, range: BlockRange) -> Result<()> {
        self.check_range(range)?;
        self.require_location(range, node)?;
        let mut refused = Vec::new();
        for (r, locs) in self.placement.clipped(range) {
            let others: Vec<(&NodeId, SyncState)> = locs
                .iter()
                .filter(|(n, _)| *n != node)
                .map(|(n, s)| (n, *s))
                .collect();
            for b in r.start.0..r.end.0 {
                let coarse = locs.get(node).copied().unwrap_or(SyncState::OutOfSync);
                let mine = self.derive(coarse, b, node) == SyncState::InSync;
                let other_in_sync = others
                    .iter()
                    .any(|(n, s)| self.derive(*s, b, n) == SyncState::InSync);
                if others.is_empty() || (mine && !other_in_sync) {
                    push_block(&mut refused, b);
                }
            }
        }
        if !refused.is_empty() {
            return Err(Error::LastInSyncCopy {
                image: self.image.name.clone(),
                node: node.clone(),
                ranges: RangeList(refused),
            });
        }
        self.placement.modify(range, |l| {
            l.remove(node);
        });
        // Forget the bitmap bits of blocks it no longer holds.
        if let Some(bm) = self.dirty.get_mut(node) {
            let bpb = self.image.bits_per_block();
            bm.set_range(range.start.0 * bpb, range.end.0 * bpb, false);
        }
        if !self.location_nodes().contains(node) {
            self.dirty.remove(node);
        }
        self.dirty.retain(|_, b| !b.is_clean());
        Ok(())
    }

    /// Changes the coarse state of `node`'s copies of `range`, checked by
    /// [`SyncState::transition`] for every run of the range. All or nothing:
    /// a refusal names the blocks and both states and changes nothing.
    ///
    /// Dirty-bit rule: syncing → in-sync is refused with
    /// [`Error::DirtyBitsSet`] while any dirty bit of those blocks is set for
    /// `node`. This call never clears bits: resync clears them as the ranges
    /// land ([`ImageRecord::set_dirty_bits`], or the store's `clear_dirty`),
    /// so a foreground write that failed on the copy during the resync keeps
    /// it out of sync.
    pub fn set_sync_state(
        &mut self,
        node: &NodeId,
        range: BlockRange,
        state: SyncState,
    ) -> Result<()> {
        self.check_range(range)?;
        self.require_location(range, node)?;
        let mut refused: Option<(SyncState, Vec<BlockRange>)> = None;
        let mut dirty_blocks = Vec::new();
        let mut dirty_bits = 0;
        for (r, locs) in self.placement.clipped(range) {
            let from = locs.get(node).copied().unwrap_or(SyncState::OutOfSync);
            match from.transition(state) {
                Err(t) => match &mut refused {
                    Some((f, ranges)) if *f == t.from => push_range(ranges, r),
                    Some(_) => {}
                    None => refused = Some((t.from, vec![r])),
                },
                Ok(_) if from == SyncState::Syncing && state == SyncState::InSync => {
                    let bm = self.dirty.get(node);
                    for b in r.start.0..r.end.0 {
                        let (f, l) = self.bits_of_block(b);
                        let c = bm.map_or(0, |bm| bm.count_in(f, l));
                        if c > 0 {
                            dirty_bits += c;
                            push_block(&mut dirty_blocks, b);
                        }
                    }
                }
                Ok(_) => {}
            }
        }
        if let Some((from, ranges)) = refused {
            let hint = RefusedTransition { from, to: state }.hint();
            return Err(Error::SyncTransition {
                image: self.image.name.clone(),
                node: node.clone(),
                ranges: RangeList(ranges),
                from,
                to: state,
                hint,
            });
        }
        if !dirty_blocks.is_empty() {
            return Err(Error::DirtyBitsSet {
                image: self.image.name.clone(),
                node: node.clone(),
                ranges: RangeList(dirty_blocks),
                bits: dirty_bits,
            });
        }
        self.placement.modify(range, |l| {
            l.insert(node.clone(), state);
        });
        Ok(())
    }

    /// Sets (`dirty = true`) or clears the dirty-bitmap bits of `node` in
    /// each `[first, last)` of `bits` (bit indexes at the image's
    /// granularity). Refuses, changing nothing, an empty or reversed range,
    /// a range past [`Image::bitmap_bits`] ([`Error::Invalid`]) and blocks
    /// where `node` is not a location ([`Error::NotALocation`]). This is the
    /// pure model of the stores' `mark_dirty`/`clear_dirty`.
    pub fn set_dirty_bits(
        &mut self,
        node: &NodeId,
        bits: &[(u64, u64)],
        dirty: bool,
    ) -> Result<()> {
        let total = self.image.bitmap_bits();
        let bpb = self.image.bits_per_block();
        for &(first, last) in bits {
            if first >= last || last > total {
                return Err(Error::invalid(
                    "dirty bit range",
                    format!(
                        "{first}..{last} is empty or past the end of image '{}' ({total} bits of {})",
                        self.image.name, self.image.granularity
                    ),
                ));
            }
            self.require_location(BlockRange::new(first / bpb, (last - 1) / bpb + 1)?, node)?;
        }
        let bm = self.dirty.entry(node.clone()).or_default();
        for &(first, last) in bits {
            bm.set_range(first, last, dirty);
        }
        self.dirty.retain(|_, b| !b.is_clean());
        Ok(())
    }

    /// Starts a resync of `node`'s copies in `range` (invariant 6,
    /// ARCHITECTURE.md): every block where the copy is out-of-sync as a
    /// whole gets all its dirty bits set and goes to syncing, in this one
    /// change. From then on the bitmap is the resync's progress: bits clear
    /// as copied ranges land, and a resync that stops resumes from them.
    /// Blocks already syncing (an interrupted resync) or in sync are left
    /// as they are. Returns the blocks that went to syncing.
    pub fn begin_sync(&mut self, node: &NodeId, range: BlockRange) -> Result<Vec<BlockRange>> {
        self.check_range(range)?;
        self.require_some_location(range, node)?;
        let mut stale = Vec::new();
        for (r, locs) in self.placement.clipped(range) {
            if locs.get(node) == Some(&SyncState::OutOfSync) {
                push_range(&mut stale, r);
            }
        }
        for r in &stale {
            let first = self.bits_of_block(r.start.0).0;
            let last = self.bits_of_block(r.end.0 - 1).1;
            self.dirty
                .entry(node.clone())
                .or_default()
                .set_range(first, last, true);
            self.set_sync_state(node, *r, SyncState::Syncing)?;
        }
        Ok(stale)
    }

    /// Ends a resync of `node`'s copies of `range`: every syncing block
    /// whose dirty bits are all clear goes to in-sync (the checked
    /// transition); blocks with bits left stay syncing. Returns the blocks
    /// that went to in-sync.
    pub fn finish_sync(&mut self, node: &NodeId, range: BlockRange) -> Result<Vec<BlockRange>> {
        self.check_range(range)?;
        self.require_some_location(range, node)?;
        let mut done = Vec::new();
        for (r, locs) in self.placement.clipped(range) {
            if locs.get(node) != Some(&SyncState::Syncing) {
                continue;
            }
            for b in r.start.0..r.end.0 {
                let (f, l) = self.bits_of_block(b);
                if !self.dirty.get(node).is_some_and(|bm| bm.any_in(f, l)) {
                    push_block(&mut done, b);
                }
            }
        }
        for r in &done {
            self.set_sync_state(node, *r, SyncState::InSync)?;
        }
        Ok(done)
    }

    /// The bits `[first, last)` a resync of `node`'s copies of `range` must
    /// copy: the set dirty bits, and every bit of a block where the copy is
    /// out-of-sync as a whole. Empty where `node` is not a location.
    pub fn sync_bits(&self, node: &NodeId, range: BlockRange) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |f: u64, l: u64| match out.last_mut() {
            Some(last) if last.1 == f => last.1 = l,
            _ => out.push((f, l)),
        };
        let bm = self.dirty.get(node);
        for (r, locs) in self.placement.clipped(range) {
            let Some(state) = locs.get(node) else {
                continue;
            };
            let first = self.bits_of_block(r.start.0).0;
            let last = self.bits_of_block(r.end.0 - 1).1;
            if *state == SyncState::OutOfSync {
                push(first, last);
                continue;
            }
            let Some(bm) = bm else { continue };
            let mut i = first;
            let bytes = bm.as_bytes();
            while i < last {
                // Whole clean bytes at a time: most of a bitmap is clean.
                if i.is_multiple_of(8) && bytes.get((i / 8) as usize).is_none_or(|b| *b == 0) {
                    i += 8;
                    continue;
                }
                if !bm.get(i) {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < last && bm.get(i) {
                    i += 1;
                }
                push(s, i.min(last));
            }
        }
        out
    }

    /// Marks (`dirty = true`) or clears the bytes `[offset, offset + len)` of
    /// `node`'s copy as out of sync in its dirty bitmap (invariant 1, ARCHITECTURE.md:
    /// a failed mirror write is recorded here before status goes out).
    pub fn mark_bytes(&mut self, node: &NodeId, offset: u64, len: u64, dirty: bool) -> Result<()> {
        let (first, last) = self.image.bits_for_bytes(offset, len)?;
        let bpb = self.image.bits_per_block();
        let blocks = BlockRange::new(first / bpb, (last - 1) / bpb + 1)?;
        self.require_location(blocks, node)?;
        let bm = self.dirty.entry(node.clone()).or_default();
        bm.set_range(first, last, dirty);
        self.dirty.retain(|_, b| !b.is_clean());
        Ok(())
    }

    /// Raises the fencing generation (a new writer took the lease) and returns it.
    pub fn bump_generation(&mut self) -> u64 {
        self.image.generation += 1;
        self.image.generation
    }

    fn check_range(&self, range: BlockRange) -> Result<()> {
        self.image
            .block_range(Some(range.start.0), Some(range.end.0))
            .map(|_| ())
    }

    /// Placement summarised as runs, with each location's derived state and
    /// dirty-bit count. Never larger than the number of runs.
    pub fn summary(&self) -> Vec<RunSummary> {
        self.placement
            .runs()
            .iter()
            .map(|r| RunSummary {
                blocks: r.range,
                locations: r
                    .locations
                    .iter()
                    .map(|(n, s)| {
                        let (f, _) = self.bits_of_block(r.range.start.0);
                        let (_, l) = self.bits_of_block(r.range.end.0 - 1);
                        let dirty_bits = self.dirty.get(n).map_or(0, |b| b.count_in(f, l));
                        let state = if *s == SyncState::InSync && dirty_bits > 0 {
                            SyncState::OutOfSync
                        } else {
                            *s
                        };
                        LocationSummary {
                            node: n.clone(),
                            state,
                            dirty_bits,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// What changed from `old` to `self`, for a store to persist.
    pub fn diff(&self, old: &ImageRecord) -> ImageDiff {
        let new_runs = self.placement.encoded();
        let old_runs = old.placement.encoded();
        let runs_set = new_runs
            .iter()
            .filter(|(k, v)| old_runs.get(k) != Some(v))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let runs_del = old_runs
            .keys()
            .filter(|k| !new_runs.contains_key(k))
            .copied()
            .collect();
        let empty = DirtyBitmap::default();
        let mut bitmaps = Vec::new();
        let nodes: BTreeSet<&NodeId> = self.dirty.keys().chain(old.dirty.keys()).collect();
        for n in nodes {
            let new = self.dirty.get(n).unwrap_or(&empty);
            let oldb = old.dirty.get(n).unwrap_or(&empty);
            if new == oldb {
                continue;
            }
            let change = if new.is_clean() {
                BitmapChange::Delete
            } else {
                BitmapChange::Spans(new.changed_spans(oldb))
            };
            bitmaps.push((n.clone(), change));
        }
        ImageDiff {
            header: (self.image != old.image).then(|| self.image.clone()),
            runs_set,
            runs_del,
            bitmaps,
        }
    }

    /// Rebuilds a record from stored parts.
    pub fn from_parts(
        image: Image,
        runs: BTreeMap<u64, String>,
        dirty: BTreeMap<NodeId, DirtyBitmap>,
        version: u64,
    ) -> Result<Self> {
        let runs = runs
            .iter()
            .map(|(s, v)| Run::decode(*s, v))
            .collect::<Result<Vec<_>>>()?;
        let placement = Placement::from_runs(runs, image.block_count())?;
        let mut dirty = dirty;
        dirty.retain(|_, b| !b.is_clean());
        Ok(Self {
            image,
            placement,
            dirty,
            version,
        })
    }
}

/// One run in an image summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// The blocks.
    pub blocks: BlockRange,
    /// Its locations.
    pub locations: Vec<LocationSummary>,
}

/// One location of a run in an image summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocationSummary {
    /// The node.
    pub node: NodeId,
    /// Derived state: out of sync if the coarse state is in sync but dirty bits are set.
    pub state: SyncState,
    /// Dirty-bitmap bits set within the run.
    pub dirty_bits: u64,
}

/// How one dirty bitmap changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapChange {
    /// It became clean: delete it.
    Delete,
    /// These byte spans `(offset, bytes)` changed.
    Spans(Vec<(usize, Vec<u8>)>),
}

/// The changes between two versions of an [`ImageRecord`], each part O(size
/// of the change).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageDiff {
    /// New header, if it changed.
    pub header: Option<Image>,
    /// Runs to write, keyed by start block, encoded.
    pub runs_set: Vec<(u64, String)>,
    /// Runs to delete, by start block.
    pub runs_del: Vec<u64>,
    /// Bitmaps that changed.
    pub bitmaps: Vec<(NodeId, BitmapChange)>,
}

impl ImageDiff {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.header.is_none()
            && self.runs_set.is_empty()
            && self.runs_del.is_empty()
            && self.bitmaps.is_empty()
    }
}

#[cfg(test)]
mod tests;
