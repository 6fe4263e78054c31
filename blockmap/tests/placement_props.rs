//! Property test: [`ImageRecord`] operations against a naive per-block model.
//! After every operation the runs are normalised, every block has a location,
//! derived states match the model, a refused operation changes nothing, and
//! a removal never drops a block's last in-sync copy.

use blockmap::image::{ImageSpec, LogicalBlockSize};
use blockmap::placement::SyncState;
use blockmap::record::ImageRecord;
use blockmap::types::{BlockIndex, BlockRange, ByteSize, ImageName, NodeId};
use proptest::prelude::*;
use std::collections::BTreeMap;

const BLOCKS: u64 = 48;
const BLOCK: u64 = 16 << 10;
const GRAN: u64 = 4 << 10;
const NODES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Add(usize, u64, u64),
    Remove(usize, u64, u64),
    Set(usize, u64, u64, SyncState),
    Mark(usize, u64, u64, bool),
}

fn node(i: usize) -> NodeId {
    NodeId::new(NODES[i]).unwrap_or_else(|e| panic!("{e}"))
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..BLOCKS).prop_flat_map(|s| (Just(s), s + 1..=BLOCKS))
}

fn op() -> impl Strategy<Value = Op> {
    let state = prop_oneof![
        Just(SyncState::InSync),
        Just(SyncState::OutOfSync),
        Just(SyncState::Syncing)
    ];
    prop_oneof![
        (0..3usize, range()).prop_map(|(n, (s, e))| Op::Add(n, s, e)),
        (0..3usize, range()).prop_map(|(n, (s, e))| Op::Remove(n, s, e)),
        (0..3usize, range(), state).prop_map(|(n, (s, e), st)| Op::Set(n, s, e, st)),
        (0..3usize, 0..BLOCKS * BLOCK, 1..3 * BLOCK, any::<bool>())
            .prop_map(|(n, o, l, d)| Op::Mark(n, o, l, d)),
    ]
}

/// Per block: node → (coarse state, dirty bits of the block).
type Model = Vec<BTreeMap<usize, (SyncState, Vec<bool>)>>;

fn derived(m: &Model, b: usize, n: usize) -> Option<SyncState> {
    m[b].get(&n).map(|(s, bits)| match s {
        SyncState::InSync if bits.iter().any(|x| *x) => SyncState::OutOfSync,
        s => *s,
    })
}

/// Applies `op` to the model; `false` if the record must refuse it.
fn apply(m: &mut Model, op: &Op) -> bool {
    let bpb = (BLOCK / GRAN) as usize;
    match *op {
        Op::Add(n, s, e) => {
            if (s..e).any(|b| m[b as usize].contains_key(&n)) {
                return false;
            }
            for b in s..e {
                m[b as usize].insert(n, (SyncState::OutOfSync, vec![false; bpb]));
            }
        }
        Op::Remove(n, s, e) => {
            for b in s..e {
                let b = b as usize;
                if !m[b].contains_key(&n) {
                    return false;
                }
                let mine = derived(m, b, n) == Some(SyncState::InSync);
                let others: Vec<usize> = m[b].keys().copied().filter(|o| *o != n).collect();
                let other_ok = others
                    .iter()
                    .any(|o| derived(m, b, *o) == Some(SyncState::InSync));
                if others.is_empty() || (mine && !other_ok) {
                    return false;
                }
            }
            for b in s..e {
                m[b as usize].remove(&n);
            }
        }
        Op::Set(n, s, e, st) => {
            if (s..e).any(|b| !m[b as usize].contains_key(&n)) {
                return false;
            }
            // The state machine: in-sync -> syncing and out-of-sync ->
            // in-sync are refused; syncing -> in-sync needs clean bits.
            for b in s..e {
                let (from, bits) = &m[b as usize][&n];
                let refused = matches!(
                    (*from, st),
                    (SyncState::InSync, SyncState::Syncing)
                        | (SyncState::OutOfSync, SyncState::InSync)
                ) || (*from == SyncState::Syncing
                    && st == SyncState::InSync
                    && bits.iter().any(|x| *x));
                if refused {
                    return false;
                }
            }
            for b in s..e {
                if let Some(loc) = m[b as usize].get_mut(&n) {
                    loc.0 = st;
                }
            }
        }
        Op::Mark(n, off, len, dirty) => {
            let end = off + len;
            if end > BLOCKS * BLOCK {
                return false;
            }
            let (first, last) = (off / GRAN, end.div_ceil(GRAN));
            let bpb = bpb as u64;
            if (first / bpb..=(last - 1) / bpb).any(|b| !m[b as usize].contains_key(&n)) {
                return false;
            }
            for bit in first..last {
                if let Some(loc) = m[(bit / bpb) as usize].get_mut(&n) {
                    loc.1[(bit % bpb) as usize] = dirty;
                }
            }
        }
    }
    true
}

fn run_op(r: &mut ImageRecord, op: &Op) -> bool {
    let rg = |s, e| BlockRange::new(s, e).unwrap_or_else(|e| panic!("{e}"));
    match *op {
        Op::Add(n, s, e) => r.add_location(&node(n), rg(s, e)).is_ok(),
        Op::Remove(n, s, e) => r.remove_location(&node(n), rg(s, e)).is_ok(),
        Op::Set(n, s, e, st) => r.set_sync_state(&node(n), rg(s, e), st).is_ok(),
        Op::Mark(n, o, l, d) => r.mark_bytes(&node(n), o, l, d).is_ok(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn record_matches_naive_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut spec = ImageSpec::new(
            ImageName::new("p").unwrap_or_else(|e| panic!("{e}")),
            ByteSize(BLOCKS * BLOCK),
            vec![node(0)],
        );
        spec.block_size = ByteSize(BLOCK);
        spec.granularity = ByteSize(GRAN);
        spec.logical_block_size = LogicalBlockSize::B512;
        let mut rec = ImageRecord::create(&spec).unwrap_or_else(|e| panic!("{e}"));
        let bpb = (BLOCK / GRAN) as usize;
        let mut model: Model = (0..BLOCKS).map(|_| BTreeMap::from([(0usize, (SyncState::InSync, vec![false; bpb]))])).collect();
        for op in &ops {
            let before = rec.clone();
            let had_in_sync: Vec<bool> = (0..BLOCKS as usize)
                .map(|b| (0..3).any(|n| derived(&model, b, n) == Some(SyncState::InSync)))
                .collect();
            let expect_ok = apply(&mut model, op);
            let ok = run_op(&mut rec, op);
            prop_assert_eq!(ok, expect_ok, "op {:?}", op);
            if !ok {
                prop_assert_eq!(&rec, &before, "a refused op changed the record");
            }
            // Runs are normalised and tile the image.
            let runs = rec.placement.runs();
            prop_assert_eq!(runs.first().map(|r| r.range.start.0), Some(0));
            prop_assert_eq!(runs.last().map(|r| r.range.end.0), Some(BLOCKS));
            for w in runs.windows(2) {
                prop_assert_eq!(w[0].range.end, w[1].range.start);
                prop_assert_ne!(&w[0].locations, &w[1].locations, "adjacent runs not merged");
            }
            for b in 0..BLOCKS as usize {
                prop_assert!(!model[b].is_empty());
                for n in 0..3 {
                    prop_assert_eq!(rec.block_state(BlockIndex(b as u64), &node(n)), derived(&model, b, n), "block {} node {}", b, n);
                }
                if let Op::Remove(..) = op {
                    if had_in_sync[b] {
                        prop_assert!((0..3).any(|n| derived(&model, b, n) == Some(SyncState::InSync)));
                    }
                }
            }
        }
    }
}

/// The sync-state machine alone: random transition sequences on one
/// location, with random dirty marks in between, against the diagram.
fn allowed(from: SyncState, to: SyncState, dirty: bool) -> bool {
    use SyncState::*;
    match (from, to) {
        (Syncing, InSync) => !dirty,
        (a, b) if a == b => true,
        (OutOfSync, Syncing) | (Syncing, OutOfSync) | (InSync, OutOfSync) => true,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn sync_transitions_follow_the_diagram(steps in proptest::collection::vec(
        (prop_oneof![Just(SyncState::InSync), Just(SyncState::OutOfSync), Just(SyncState::Syncing)],
         proptest::option::of(any::<bool>())),
        1..60,
    )) {
        let mut spec = ImageSpec::new(
            ImageName::new("t").unwrap_or_else(|e| panic!("{e}")),
            ByteSize(4 * BLOCK),
            vec![node(0)],
        );
        spec.block_size = ByteSize(BLOCK);
        spec.granularity = ByteSize(GRAN);
        let mut rec = ImageRecord::create(&spec).unwrap_or_else(|e| panic!("{e}"));
        let all = rec.image.all_blocks();
        rec.add_location(&node(1), all).unwrap_or_else(|e| panic!("{e}"));
        let (mut state, mut dirty) = (SyncState::OutOfSync, false);
        for (to, mark) in steps {
            if let Some(d) = mark {
                rec.set_dirty_bits(&node(1), &[(1, 2)], d).unwrap_or_else(|e| panic!("{e}"));
                dirty = d;
            }
            let before = rec.clone();
            let ok = rec.set_sync_state(&node(1), all, to).is_ok();
            prop_assert_eq!(ok, allowed(state, to, dirty), "{} -> {} (dirty {})", state, to, dirty);
            if ok {
                state = to;
            } else {
                prop_assert_eq!(&rec, &before);
            }
            let coarse = rec.placement.locations_of(BlockIndex(0)).and_then(|l| l.get(&node(1))).copied();
            prop_assert_eq!(coarse, Some(state));
            let derived = if state == SyncState::InSync && dirty { SyncState::OutOfSync } else { state };
            prop_assert_eq!(rec.block_state(BlockIndex(0), &node(1)), Some(derived));
        }
    }
}
