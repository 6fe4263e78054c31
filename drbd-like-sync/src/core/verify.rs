//! Verify (`locus image verify`): which copies of a range are wrong, given
//! each in-sync copy's checksums of the range's chunks. No I/O.
//!
//! Per chunk, the copies are grouped by checksum. The largest group is the
//! majority and stays in sync; every other copy differs and is marked
//! out-of-sync for the chunk by the shell (invariant 3 then keeps reads
//! away from it, and resync repairs it). A tie between groups goes to the
//! group holding the copy listed first in `prefer` (the writer's own copy
//! first: the one it has been reading from).

use blockmap::types::NodeId;

/// One chunk whose copies disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// Index of the chunk in the range.
    pub chunk: usize,
    /// The copies that keep the chunk (the majority).
    pub majority: Vec<NodeId>,
    /// The copies that differ from it.
    pub differ: Vec<NodeId>,
}

/// Judges every chunk. `sums` holds, per copy, one checksum per chunk (all
/// of the same length; a copy with fewer sums is judged on what it has).
/// `prefer` orders copies for ties.
pub fn judge(sums: &[(NodeId, Vec<u64>)], prefer: &[NodeId]) -> Vec<Disagreement> {
    let chunks = sums.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    let rank = |n: &NodeId| prefer.iter().position(|p| p == n).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for c in 0..chunks {
        let mut groups: Vec<(u64, Vec<NodeId>)> = Vec::new();
        for (node, s) in sums {
            let Some(v) = s.get(c) else { continue };
            match groups.iter_mut().find(|(g, _)| g == v) {
                Some((_, members)) => members.push(node.clone()),
                None => groups.push((*v, vec![node.clone()])),
            }
        }
        if groups.len() < 2 {
            continue;
        }
        // Largest group first; among equals, the one with the preferred copy.
        groups.sort_by_key(|(_, m)| {
            (
                std::cmp::Reverse(m.len()),
                m.iter().map(rank).min().unwrap_or(usize::MAX),
            )
        });
        let majority = groups[0].1.clone();
        let differ = groups[1..].iter().flat_map(|(_, m)| m.clone()).collect();
        out.push(Disagreement {
            chunk: c,
            majority,
            differ,
        });
    }
    out
}
