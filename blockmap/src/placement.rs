//! Placement: which nodes hold a copy of each block, and the coarse sync state
//! of each copy, stored as runs of blocks that share an identical location
//! set. A fresh 1 TiB image is one run, whatever its block count.
//!
//! [`Placement`] keeps its runs normalised: sorted, contiguous from block 0 to
//! the block count, never empty, and adjacent runs always differ (they are
//! merged otherwise). Only [`crate::record`] mutates it, so the placement
//! invariants are checked in one place.

use crate::error::{Error, Result};
use crate::types::{BlockIndex, BlockRange, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Coarse sync state of one location's copy of a run of blocks. The fine
/// state comes from the dirty bitmap (see [`crate::record::ImageRecord::block_state`]).
///
/// A checked state machine: [`SyncState::transition`] is the only way a
/// copy's coarse state changes ([`crate::record::ImageRecord::set_sync_state`]
/// calls it for every run of the range).
///
/// ```text
///                 resync starts
///   out-of-sync ----------------> syncing
///     ^     ^  <----------------    |
///     |     |  failed/interrupted   | copy done, dirty bits of the
///     |     |                       | blocks clear (else refused)
///     |     |                       v
///     |     `------------------- in-sync
///     |       a copy failed, or verify found a mismatch
///     |
///   (a location added later starts here: invariant 7, ARCHITECTURE.md)
///
///   refused: in-sync -> syncing   (mark it out-of-sync first)
///            out-of-sync -> in-sync (must go through syncing)
///   a state to itself is allowed and changes nothing (idempotent retries)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// The copy holds current data, except where the dirty bitmap says otherwise.
    InSync,
    /// The whole copy is stale (for example a new location).
    OutOfSync,
    /// A resync is copying data into it; not readable yet.
    Syncing,
}

/// A coarse state change that [`SyncState::transition`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedTransition {
    /// The current state.
    pub from: SyncState,
    /// The state asked for.
    pub to: SyncState,
}

impl RefusedTransition {
    /// What the caller must do instead, written for an operator.
    pub fn hint(&self) -> &'static str {
        match (self.from, self.to) {
            (SyncState::InSync, SyncState::Syncing) => {
                "a copy in sync is resynced through its dirty bits; mark it out-of-sync first to copy it whole"
            }
            (SyncState::OutOfSync, SyncState::InSync) => {
                "a stale copy must be resynced: set it syncing, copy the data, then set it in-sync"
            }
            _ => "see the SyncState diagram",
        }
    }
}

impl SyncState {
    /// The one checked transition of a copy's coarse state (see the diagram
    /// on [`SyncState`]). Returns the new state, or the refused pair.
    /// Dirty-bit rules (syncing → in-sync needs the blocks' bits clear) are
    /// checked by [`crate::record::ImageRecord::set_sync_state`], which
    /// knows the bitmap.
    pub fn transition(self, to: SyncState) -> Result<SyncState, RefusedTransition> {
        use SyncState::*;
        match (self, to) {
            (a, b) if a == b => Ok(b),
            (OutOfSync, Syncing)
            | (Syncing, InSync)
            | (Syncing, OutOfSync)
            | (InSync, OutOfSync) => Ok(to),
            (InSync, Syncing) | (OutOfSync, InSync) => Err(RefusedTransition { from: self, to }),
            // Every pair is listed above; kept for exhaustiveness.
            _ => Err(RefusedTransition { from: self, to }),
        }
    }

    /// One-letter code used in compact encodings.
    pub fn code(self) -> char {
        match self {
            SyncState::InSync => 'i',
            SyncState::OutOfSync => 'o',
            SyncState::Syncing => 's',
        }
    }
    /// Inverse of [`SyncState::code`].
    pub fn from_code(c: char) -> Option<Self> {
        match c {
            'i' => Some(SyncState::InSync),
            'o' => Some(SyncState::OutOfSync),
            's' => Some(SyncState::Syncing),
            _ => None,
        }
    }
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncState::InSync => "in-sync",
            SyncState::OutOfSync => "out-of-sync",
            SyncState::Syncing => "syncing",
        })
    }
}

/// The locations of a run, with the coarse state of each copy.
pub type LocationSet = BTreeMap<NodeId, SyncState>;

/// Blocks `[range.start, range.end)` sharing one location set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The blocks.
    pub range: BlockRange,
    /// Their locations.
    pub locations: LocationSet,
}

impl Run {
    /// Compact value encoding `end;node=s,node=s` (the start is the key).
    pub fn encode_value(&self) -> String {
        let mut s = format!("{};", self.range.end.0);
        for (i, (n, st)) in self.locations.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(n.as_str());
            s.push('=');
            s.push(st.code());
        }
        s
    }

    /// Inverse of [`Run::encode_value`].
    pub fn decode(start: u64, value: &str) -> Result<Self> {
        let bad = |why: &str| Error::CorruptRecord {
            key: format!("run at block {start}"),
            why: format!("{why} in '{value}'"),
        };
        let (end, locs) = value.split_once(';').ok_or_else(|| bad("no ';'"))?;
        let end: u64 = end.parse().map_err(|_| bad("bad end"))?;
        let range = BlockRange::new(start, end).map_err(|_| bad("empty range"))?;
        let mut locations = LocationSet::new();
        for item in locs.split(',').filter(|s| !s.is_empty()) {
            let (n, st) = item.split_once('=').ok_or_else(|| bad("no '='"))?;
            let node = NodeId::new(n).map_err(|_| bad("bad node id"))?;
            let st = st
                .chars()
                .next()
                .and_then(SyncState::from_code)
                .ok_or_else(|| bad("bad state"))?;
            locations.insert(node, st);
        }
        Ok(Run { range, locations })
    }
}

/// The runs of one image, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    runs: Vec<Run>,
}

impl Placement {
    /// One run over `block_count` blocks with the given locations.
    pub fn uniform(block_count: u64, locations: LocationSet) -> Result<Self> {
        Ok(Self {
            runs: vec![Run {
                range: BlockRange::new(0, block_count)?,
                locations,
            }],
        })
    }

    /// Rebuilds from stored runs, checking that they tile `[0, block_count)`.
    pub fn from_runs(mut runs: Vec<Run>, block_count: u64) -> Result<Self> {
        runs.sort_by_key(|r| r.range.start);
        let mut next = 0;
        for r in &runs {
            if r.range.start.0 != next || r.locations.is_empty() {
                return Err(Error::CorruptRecord {
                    key: format!("run at block {}", r.range.start),
                    why: format!("runs do not tile the image (expected a run at block {next}, or the run is empty)"),
                });
            }
            next = r.range.end.0;
        }
        if next != block_count {
            return Err(Error::CorruptRecord {
                key: "runs".into(),
                why: format!("runs end at block {next}, image has {block_count} blocks"),
            });
        }
        let mut p = Self { runs };
        p.merge();
        Ok(p)
    }

    /// The runs, in block order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The locations of one block.
    pub fn locations_of(&self, block: BlockIndex) -> Option<&LocationSet> {
        let i = self.runs.partition_point(|r| r.range.end <= block);
        self.runs
            .get(i)
            .filter(|r| r.range.start <= block)
            .map(|r| &r.locations)
    }

    /// Runs overlapping `range`, clipped to it.
    pub fn clipped(&self, range: BlockRange) -> impl Iterator<Item = (BlockRange, &LocationSet)> {
        self.runs
            .iter()
            .filter_map(move |r| r.range.intersect(&range).map(|c| (c, &r.locations)))
    }

    /// Splits runs so that `at` starts a run (no-op at 0 or past the end).
    fn split_at(&mut self, at: BlockIndex) {
        let i = self.runs.partition_point(|r| r.range.end <= at);
        if let Some(r) = self.runs.get(i) {
            if r.range.start < at {
                let mut tail = r.clone();
                tail.range.start = at;
                self.runs[i].range.end = at;
                self.runs.insert(i + 1, tail);
            }
        }
    }

    /// Merges adjacent runs with identical location sets.
    fn merge(&mut self) {
        let mut out: Vec<Run> = Vec::with_capacity(self.runs.len());
        for r in self.runs.drain(..) {
            match out.last_mut() {
                Some(prev) if prev.locations == r.locations && prev.range.end == r.range.start => {
                    prev.range.end = r.range.end;
                }
                _ => out.push(r),
            }
        }
        self.runs = out;
    }

    /// Applies `f` to the location set of every block in `range` (split at its
    /// edges first, merged after). The caller checks invariants.
    pub(crate) fn modify(&mut self, range: BlockRange, mut f: impl FnMut(&mut LocationSet)) {
        self.split_at(range.start);
        self.split_at(range.end);
        for r in &mut self.runs {
            if r.range.start >= range.start && r.range.end <= range.end {
                f(&mut r.locations);
            }
        }
        self.merge();
    }

    /// Runs keyed by start block, encoded for storage.
    pub fn encoded(&self) -> BTreeMap<u64, String> {
        self.runs
            .iter()
            .map(|r| (r.range.start.0, r.encode_value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn transition_table_is_the_diagram() {
        use SyncState::*;
        let all = [InSync, OutOfSync, Syncing];
        let allowed = [
            (OutOfSync, Syncing),
            (Syncing, InSync),
            (Syncing, OutOfSync),
            (InSync, OutOfSync),
        ];
        for from in all {
            for to in all {
                let ok = from == to || allowed.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), ok, "{from} -> {to}");
                if let Err(t) = from.transition(to) {
                    assert_eq!((t.from, t.to), (from, to));
                    assert!(t.hint().contains("syncing") || t.hint().contains("out-of-sync"));
                }
            }
        }
    }

    #[test]
    fn split_and_merge_keep_runs_minimal() -> Result<()> {
        let mut p = Placement::uniform(100, [(n("a"), SyncState::InSync)].into())?;
        p.modify(BlockRange::new(10, 20)?, |l| {
            l.insert(n("b"), SyncState::OutOfSync);
        });
        assert_eq!(p.runs().len(), 3);
        p.modify(BlockRange::new(10, 20)?, |l| {
            l.remove(&n("b"));
        });
        assert_eq!(p.runs().len(), 1);
        let enc = p.encoded();
        let back = Placement::from_runs(
            enc.iter()
                .map(|(s, v)| Run::decode(*s, v))
                .collect::<Result<_>>()?,
            100,
        )?;
        assert_eq!(back, p);
        assert!(Placement::from_runs(vec![], 100).is_err());
        Ok(())
    }
}
