//! Invariant tests for [`super::ImageRecord`] (invariant 7, ARCHITECTURE.md).

use super::*;
use crate::error::ErrorKind;
use crate::types::{ByteSize, ImageName};

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn rec(size: ByteSize, locs: &[&str]) -> ImageRecord {
    let spec = ImageSpec::new(
        ImageName::new("img").unwrap_or_else(|e| panic!("{e}")),
        size,
        locs.iter().map(|s| n(s)).collect(),
    );
    ImageRecord::create(&spec).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn geometry_is_validated() {
    let mut spec = ImageSpec::new(
        ImageName::new("x").unwrap_or_else(|e| panic!("{e}")),
        ByteSize(1000),
        vec![n("a")],
    );
    assert_eq!(
        ImageRecord::create(&spec).err().map(|e| e.kind()),
        Some(ErrorKind::Invalid)
    );
    spec.size = ByteSize::gib(1);
    spec.block_size = ByteSize(3 << 20);
    let e = ImageRecord::create(&spec)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("power of two"), "{e}");
    spec.block_size = ByteSize::mib(4);
    spec.locations = vec![];
    assert!(ImageRecord::create(&spec).is_err());
    spec.locations = vec![n("a"), n("a")];
    assert!(ImageRecord::create(&spec).is_err());
}

#[test]
fn new_location_starts_out_of_sync() -> Result<()> {
    let mut r = rec(ByteSize::gib(1), &["a"]);
    r.add_location(&n("b"), BlockRange::new(0, 256)?)?;
    assert_eq!(
        r.block_state(BlockIndex(7), &n("b")),
        Some(SyncState::OutOfSync)
    );
    assert_eq!(
        r.block_state(BlockIndex(7), &n("a")),
        Some(SyncState::InSync)
    );
    let again = r.add_location(&n("b"), BlockRange::new(0, 1)?);
    assert_eq!(again.err().map(|e| e.kind()), Some(ErrorKind::Conflict));
    Ok(())
}

#[test]
fn removing_last_in_sync_copy_is_refused_with_ranges() -> Result<()> {
    let mut r = rec(ByteSize::gib(1), &["a"]);
    r.add_location(&n("b"), r.image.all_blocks())?;
    r.set_sync_state(&n("b"), BlockRange::new(0, 100)?, SyncState::Syncing)?;
    r.set_sync_state(&n("b"), BlockRange::new(0, 100)?, SyncState::InSync)?;
    let before = r.clone();
    let err = r.remove_location(&n("a"), r.image.all_blocks());
    match err {
        Err(Error::LastInSyncCopy { ranges, .. }) => {
            assert_eq!(ranges.to_string(), "100-255");
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    assert_eq!(r, before, "a refused removal changes nothing");
    // Removing only the blocks b has in sync is fine.
    r.remove_location(&n("a"), BlockRange::new(0, 100)?)?;
    assert_eq!(r.block_state(BlockIndex(5), &n("a")), None);
    assert_eq!(r.placement.runs().len(), 2);
    Ok(())
}

#[test]
fn dirty_bits_make_a_block_out_of_sync() -> Result<()> {
    let mut r = rec(ByteSize::gib(1), &["a", "b"]);
    // 64 KiB at 10 MiB + 4 KiB: block 2, one bit.
    r.mark_bytes(&n("b"), (10 << 20) + 4096, 4096, true)?;
    assert_eq!(
        r.block_state(BlockIndex(2), &n("b")),
        Some(SyncState::OutOfSync)
    );
    assert_eq!(
        r.block_state(BlockIndex(3), &n("b")),
        Some(SyncState::InSync)
    );
    // a is now the only in-sync copy of block 2.
    let e = r.remove_location(&n("a"), BlockRange::new(0, 4)?);
    assert_eq!(
        e.err().map(|e| e.to_string().contains("blocks 2;")),
        Some(true)
    );
    // Marking it in sync does not clear bits; resync clears them.
    r.set_sync_state(&n("b"), BlockRange::new(2, 3)?, SyncState::InSync)?;
    assert!(!r.dirty.is_empty());
    r.mark_bytes(&n("b"), 10 << 20, 1 << 20, false)?;
    assert!(r.dirty.is_empty());
    r.remove_location(&n("a"), BlockRange::new(0, 4)?)?;
    Ok(())
}

#[test]
fn ranges_past_end_and_unknown_locations_are_refused() -> Result<()> {
    let mut r = rec(ByteSize::mib(40), &["a"]);
    assert_eq!(r.image.block_count(), 10);
    let e = r.add_location(&n("b"), BlockRange::new(5, 11)?);
    assert_eq!(e.err().map(|e| e.kind()), Some(ErrorKind::Invalid));
    let e = r.set_sync_state(&n("z"), BlockRange::new(0, 1)?, SyncState::InSync);
    assert_eq!(e.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    assert!(r.mark_bytes(&n("a"), 40 << 20, 1, true).is_err());
    Ok(())
}

#[test]
fn one_block_change_diff_is_small() -> Result<()> {
    let mut r = rec(ByteSize::tib(1), &["a", "b", "c"]);
    assert_eq!(r.image.block_count(), 262_144);
    let old = r.clone();
    r.set_sync_state(&n("b"), BlockRange::new(1000, 1001)?, SyncState::OutOfSync)?;
    let d = r.diff(&old);
    assert!(d.header.is_none());
    assert_eq!(d.runs_set.len(), 3, "{d:?}");
    let old = r.clone();
    r.mark_bytes(&n("c"), 1 << 39, 512, true)?;
    let d = r.diff(&old);
    assert_eq!(d.bitmaps.len(), 1);
    match &d.bitmaps[0].1 {
        BitmapChange::Spans(s) => assert_eq!(s.iter().map(|(_, b)| b.len()).sum::<usize>(), 1),
        BitmapChange::Delete => panic!("expected spans"),
    }
    Ok(())
}

#[test]
fn refused_transitions_name_node_blocks_and_states() -> Result<()> {
    let mut r = rec(ByteSize::gib(1), &["a"]);
    r.add_location(&n("b"), BlockRange::new(10, 20)?)?;
    let before = r.clone();
    // b: blocks 10-19 out of sync; a: in sync.
    match r.set_sync_state(&n("b"), BlockRange::new(10, 20)?, SyncState::InSync) {
        Err(e @ Error::SyncTransition { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Refused);
            let m = e.to_string();
            for part in [
                "'b'",
                "'img'",
                "from out-of-sync to in-sync",
                "blocks 10-19",
            ] {
                assert!(m.contains(part), "{m} lacks {part}");
            }
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    match r.set_sync_state(&n("a"), BlockRange::new(0, 5)?, SyncState::Syncing) {
        Err(e @ Error::SyncTransition { .. }) => {
            assert!(
                e.to_string()
                    .contains("from in-sync to syncing for blocks 0-4"),
                "{e}"
            )
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    assert_eq!(r, before, "refusals change nothing");
    Ok(())
}

#[test]
fn syncing_to_in_sync_needs_clean_bits() -> Result<()> {
    let mut r = rec(ByteSize::gib(1), &["a"]);
    r.add_location(&n("b"), r.image.all_blocks())?;
    r.set_sync_state(&n("b"), BlockRange::new(0, 8)?, SyncState::Syncing)?;
    // A foreground write failed on b during the resync: block 3 is dirty.
    r.mark_bytes(&n("b"), 3 << 22, 4096, true)?;
    let before = r.clone();
    match r.set_sync_state(&n("b"), BlockRange::new(0, 8)?, SyncState::InSync) {
        Err(e @ Error::DirtyBitsSet { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Refused);
            assert!(
                e.to_string().contains("1 dirty region(s) in blocks 3"),
                "{e}"
            );
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    assert_eq!(r, before);
    // Resync copies the range and clears its bits; then it may finish.
    r.set_dirty_bits(&n("b"), &[(3 * 64, 4 * 64)], false)?;
    r.set_sync_state(&n("b"), BlockRange::new(0, 8)?, SyncState::InSync)?;
    assert_eq!(
        r.block_state(BlockIndex(3), &n("b")),
        Some(SyncState::InSync)
    );
    // Idempotent: in-sync to in-sync is allowed.
    r.set_sync_state(&n("b"), BlockRange::new(0, 8)?, SyncState::InSync)?;
    Ok(())
}

#[test]
fn dirty_bit_ranges_are_checked() -> Result<()> {
    let mut r = rec(ByteSize::mib(40), &["a"]);
    let total = r.image.bitmap_bits();
    assert_eq!(total, 640);
    let before = r.clone();
    for bad in [(5, 5), (6, 5), (0, total + 1)] {
        let e = r.set_dirty_bits(&n("a"), &[(0, 1), bad], true);
        assert_eq!(
            e.err().map(|e| e.kind()),
            Some(ErrorKind::Invalid),
            "{bad:?}"
        );
    }
    let e = r.set_dirty_bits(&n("z"), &[(0, 1)], true);
    assert_eq!(e.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    assert_eq!(r, before);
    r.set_dirty_bits(&n("a"), &[(0, 3), (100, 164), (total - 1, total)], true)?;
    assert_eq!(r.dirty.get(&n("a")).map(|b| b.count()), Some(3 + 64 + 1));
    r.set_dirty_bits(&n("a"), &[(0, total)], false)?;
    assert!(r.dirty.is_empty());
    Ok(())
}

/// Resync bookkeeping (invariant 6): a whole out-of-sync copy is turned
/// into set bits and `syncing` in one change; the bits are the progress;
/// only blocks whose bits are clear reach in-sync.
#[test]
fn a_resync_goes_through_its_bits() {
    let mut r = rec(ByteSize::mib(16), &["a"]);
    let (a, b) = (n("a"), n("b"));
    let bpb = r.image.bits_per_block();
    let all = r.image.all_blocks();
    r.add_location(&b, all).unwrap_or_else(|e| panic!("{e}"));
    // Before it starts, every bit of the new copy must be copied.
    assert_eq!(r.sync_bits(&b, all), vec![(0, 4 * bpb)]);
    assert_eq!(r.sync_bits(&a, all), vec![]);
    let started = r.begin_sync(&b, all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(started, vec![all]);
    assert_eq!(r.block_state(BlockIndex(0), &b), Some(SyncState::Syncing));
    assert_eq!(r.sync_bits(&b, all), vec![(0, 4 * bpb)]);
    // Blocks 0 and 2 land; block 1 lands half.
    r.set_dirty_bits(
        &b,
        &[(0, bpb), (2 * bpb, 3 * bpb), (bpb, bpb + bpb / 2)],
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.sync_bits(&b, all),
        vec![(bpb + bpb / 2, 2 * bpb), (3 * bpb, 4 * bpb)]
    );
    // Starting again (a resumed resync) changes nothing: the bits stay.
    assert_eq!(
        r.begin_sync(&b, all).unwrap_or_else(|e| panic!("{e}")),
        vec![]
    );
    let done = r.finish_sync(&b, all).unwrap_or_else(|e| panic!("{e}"));
    let blocks: Vec<String> = done.iter().map(|r| r.to_string()).collect();
    assert_eq!(blocks, vec!["0", "2"]);
    assert_eq!(r.block_state(BlockIndex(0), &b), Some(SyncState::InSync));
    assert_eq!(r.block_state(BlockIndex(1), &b), Some(SyncState::Syncing));
    // A copy in sync with a few dirty bits (a missed write) needs only those.
    r.set_dirty_bits(&a, &[(5, 7)], true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.sync_bits(&a, all), vec![(5, 7)]);
    assert_eq!(
        r.begin_sync(&a, all).unwrap_or_else(|e| panic!("{e}")),
        vec![]
    );
    assert_eq!(r.block_state(BlockIndex(0), &a), Some(SyncState::OutOfSync));
    // Not a location: refused, naming it.
    let e = r.begin_sync(&n("c"), all).err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("'c'") || e.contains(" c ")),
        "{e:?}"
    );
}
