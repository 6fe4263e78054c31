//! The mirror's cached [`ImageRecord`] (placement and dirty bits) and what
//! it answers: the [`BlockView`]s of a write, the in-sync copies of a read.
//!
//! Owns the cache and its upkeep from the change feed: a
//! [`Change::Dirty`] whose version follows the cached one is applied in
//! place, anything else newer reloads the record. The mirror also applies
//! its own marks here the moment it asks for them, so the next write or
//! read already treats the copy as dirty. A mark that the store then
//! refuses leaves the cache dirtier than the store. That keeps reads away
//! from the copy, but a write plan would skip the copy there without
//! marking it ([`CopyState::Dirty`]), so such marks are kept as *overdue*
//! (re-applied after every reload) until a write over them makes them
//! durable first (invariant 1). A mark the store confirmed at a version the
//! cache has not reached yet is kept too, and re-applied by a reload of an
//! older record (fetched before the mark), until the cache reaches it: else
//! reads could use the marked copy meanwhile (invariant 3).
//!
//! Knows nothing of copies, sockets or the ack rule; it never calls the
//! store on the I/O path (only on reload).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use blockmap::change::{Change, DocKind};
use blockmap::placement::SyncState;
use blockmap::record::ImageRecord;
use blockmap::store::{ChangeFeed, MetadataStore};
use blockmap::types::{BlockIndex, ImageName, NodeId};

use crate::core::write::{BlockView, CopyState, LocationView, MarkDirty};
use crate::core::ByteRange;

/// How far [`PlacementCache::in_sync_extent`] looks ahead, in blocks.
const EXTENT_SCAN_BLOCKS: u64 = 1024;

/// The cached record of one image.
pub(crate) struct PlacementCache {
    name: ImageName,
    store: Arc<dyn MetadataStore>,
    rec: RwLock<ImageRecord>,
    /// Marks applied here whose store write failed (see the module docs).
    overdue: Mutex<Vec<MarkDirty>>,
    /// Marks the store confirmed at a version this cache has not reached
    /// yet: (version, node, bits). A reload that fetched an older record
    /// re-applies them, or it would call the copy clean there until the
    /// feed caught up, and a read could use it (invariant 3).
    confirmed: Mutex<Vec<ConfirmedMark>>,
    /// Set when the feed says the image's job document changed (a sync or
    /// verify was asked for); the writer's job loop takes it.
    job_changed: AtomicBool,
}

/// A mark the store confirmed: (its version, the node, its bit ranges).
type ConfirmedMark = (u64, NodeId, Vec<(u64, u64)>);

impl PlacementCache {
    /// A cache starting from `rec`.
    pub(crate) fn new(store: Arc<dyn MetadataStore>, rec: ImageRecord) -> Self {
        PlacementCache {
            name: rec.image.name.clone(),
            store,
            rec: RwLock::new(rec),
            overdue: Mutex::new(Vec::new()),
            confirmed: Mutex::new(Vec::new()),
            job_changed: AtomicBool::new(true),
        }
    }

    /// Keeps `m` as overdue: the store refused it (or did not answer), but
    /// its bits stay set here, across reloads.
    pub(crate) fn mark_overdue(&self, m: MarkDirty) {
        self.overdue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(m);
    }

    /// Takes out the overdue marks with a range overlapping `range`: the
    /// caller makes them durable before it plans a write there.
    pub(crate) fn take_overdue(&self, range: ByteRange) -> Vec<MarkDirty> {
        let mut overdue = self.overdue.lock().unwrap_or_else(|e| e.into_inner());
        let (due, keep): (Vec<MarkDirty>, Vec<MarkDirty>) = overdue
            .drain(..)
            .partition(|m| m.ranges.iter().any(|r| r.intersect(&range).is_some()));
        *overdue = keep;
        due
    }

    /// Sets the bits of every overdue mark in `rec` (after a reload).
    fn reapply_overdue(&self, rec: &mut ImageRecord) {
        for m in self
            .overdue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let bits: Result<Vec<_>, _> = m
                .ranges
                .iter()
                .map(|r| rec.image.bits_for_bytes(r.offset, r.len))
                .collect();
            if let Err(e) = bits.and_then(|b| rec.set_dirty_bits(&m.node, &b, true)) {
                tracing::warn!(image = %self.name, node = %m.node, error = %e,
                    "cannot re-apply an overdue mark to the cache");
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ImageRecord> {
        self.rec.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ImageRecord> {
        self.rec.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the cached record (tests, diagnostics).
    pub(crate) fn snapshot(&self) -> ImageRecord {
        self.read().clone()
    }

    /// The image size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.read().image.size.bytes()
    }

    /// The blocks touched by `range` (non-empty, inside the image), each cut
    /// to the part of `range` inside it.
    fn pieces(rec: &ImageRecord, range: ByteRange) -> Vec<(BlockIndex, ByteRange)> {
        let bs = rec.image.block_size.bytes();
        let first = range.offset / bs;
        let last = (range.end() - 1) / bs;
        (first..=last)
            .filter_map(|b| {
                ByteRange::new(b * bs, bs)
                    .intersect(&range)
                    .map(|r| (BlockIndex(b), r))
            })
            .collect()
    }

    /// The state of `node`'s copy of `block` for the bytes `r` (inside the
    /// block), as a read sees it: the coarse state first (out-of-sync or
    /// syncing is `Dirty`), then the dirty bits covering `r` (all set
    /// `Dirty`, some set `PartlyDirty`).
    fn state(rec: &ImageRecord, block: BlockIndex, node: &NodeId, r: ByteRange) -> CopyState {
        Self::state_as(rec, block, node, r, false)
    }

    /// [`Self::state`], or with `writing` as a write plan sees it: a
    /// syncing copy is current wherever its bits are clear (a resync batch
    /// landed there and cleared them), so it takes the writes there, or it
    /// would go stale behind the resync (invariant 6). It is still not read
    /// from until the whole block is in sync.
    fn state_as(
        rec: &ImageRecord,
        block: BlockIndex,
        node: &NodeId,
        r: ByteRange,
        writing: bool,
    ) -> CopyState {
        let coarse = rec
            .placement
            .locations_of(block)
            .and_then(|l| l.get(node).copied());
        let current = match coarse {
            Some(SyncState::InSync) => true,
            Some(SyncState::Syncing) => writing,
            _ => false,
        };
        if !current {
            return CopyState::Dirty;
        }
        let Some(bm) = rec.dirty.get(node) else {
            return CopyState::InSync;
        };
        let Ok((f, l)) = rec.image.bits_for_bytes(r.offset, r.len) else {
            return CopyState::Dirty;
        };
        match bm.count_in(f, l) {
            0 => CopyState::InSync,
            n if n == l - f => CopyState::Dirty,
            _ => CopyState::PartlyDirty,
        }
    }

    /// One [`BlockView`] per block touched by `range`, in order, for
    /// [`crate::core::write::WritePlan::new`].
    pub(crate) fn block_views(&self, range: ByteRange) -> Vec<BlockView> {
        let rec = self.read();
        Self::pieces(&rec, range)
            .into_iter()
            .map(|(b, r)| {
                let locations = rec
                    .placement
                    .locations_of(b)
                    .map(|l| {
                        l.keys()
                            .map(|n| LocationView {
                                node: n.clone(),
                                state: Self::state_as(&rec, b, n, r, true),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                BlockView {
                    range: r,
                    locations,
                }
            })
            .collect()
    }

    /// `range` cut into pieces with the same in-sync copies (adjacent blocks
    /// with the same set are merged, so a read is one request per copy
    /// where it can be).
    pub(crate) fn read_pieces(&self, range: ByteRange) -> Vec<(ByteRange, Vec<NodeId>)> {
        let rec = self.read();
        let mut out: Vec<(ByteRange, Vec<NodeId>)> = Vec::new();
        for (b, r) in Self::pieces(&rec, range) {
            let in_sync: Vec<NodeId> = rec
                .placement
                .locations_of(b)
                .map(|l| {
                    l.keys()
                        .filter(|n| Self::state(&rec, b, n, r) == CopyState::InSync)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            match out.last_mut() {
                Some((last, nodes)) if *nodes == in_sync && last.end() == r.offset => {
                    *last = ByteRange::from_bounds(last.offset, r.end());
                }
                _ => out.push((r, in_sync)),
            }
        }
        out
    }

    /// The nodes that take writes somewhere in `range` (in sync, or
    /// syncing with clear bits there): the copies a takeover must level or
    /// mark.
    pub(crate) fn write_receivers(&self, range: ByteRange) -> BTreeSet<NodeId> {
        let rec = self.read();
        let mut out = BTreeSet::new();
        for (b, r) in Self::pieces(&rec, range) {
            if let Some(l) = rec.placement.locations_of(b) {
                for n in l.keys() {
                    if Self::state_as(&rec, b, n, r, true) != CopyState::Dirty {
                        out.insert(n.clone());
                    }
                }
            }
        }
        out
    }

    /// True when `node` holds an in-sync copy of every byte of `range`.
    pub(crate) fn in_sync(&self, node: &NodeId, range: ByteRange) -> bool {
        let rec = self.read();
        Self::pieces(&rec, range)
            .into_iter()
            .all(|(b, r)| Self::state(&rec, b, node, r) == CopyState::InSync)
    }

    /// From `offset`: whether `node` is in sync there, and where that run
    /// of blocks ends (at most [`EXTENT_SCAN_BLOCKS`] ahead, and never past
    /// the image).
    pub(crate) fn in_sync_extent(&self, node: &NodeId, offset: u64) -> (bool, u64) {
        let rec = self.read();
        let size = rec.image.size.bytes();
        let bs = rec.image.block_size.bytes();
        let state = |b: u64| {
            let r = ByteRange::from_bounds((b * bs).max(offset), ((b + 1) * bs).min(size));
            Self::state(&rec, BlockIndex(b), node, r) == CopyState::InSync
        };
        let first = offset / bs;
        let want = state(first);
        let mut b = first + 1;
        while b * bs < size && b < first + EXTENT_SCAN_BLOCKS && state(b) == want {
            b += 1;
        }
        (want, (b * bs).min(size))
    }

    /// Nodes in sync for at least one block (the copies a flush must reach).
    pub(crate) fn nodes_in_sync_somewhere(&self) -> BTreeSet<NodeId> {
        let rec = self.read();
        let mut out = BTreeSet::new();
        for run in rec.placement.runs() {
            for (n, s) in &run.locations {
                // A syncing copy takes writes where its bits are clear, so
                // it must flush them too (invariant 2).
                if matches!(*s, SyncState::InSync | SyncState::Syncing) {
                    out.insert(n.clone());
                }
            }
        }
        // A copy whose every bit is dirty still gets the flush: harmless,
        // and cheaper than proving it is dirty everywhere.
        out
    }

    /// The bit ranges `[first, last)` of byte `ranges`, at the image's
    /// granularity.
    pub(crate) fn bits(&self, ranges: &[ByteRange]) -> Result<Vec<(u64, u64)>, blockmap::Error> {
        let rec = self.read();
        ranges
            .iter()
            .map(|r| rec.image.bits_for_bytes(r.offset, r.len))
            .collect()
    }

    /// Sets `bits` of `node` in the cache (a mark asked for or made).
    pub(crate) fn apply_mark(&self, node: &NodeId, bits: &[(u64, u64)]) {
        if let Err(e) = self.write().set_dirty_bits(node, bits, true) {
            tracing::warn!(image = %self.name, %node, error = %e, "cannot apply a mark to the cache");
        }
    }

    /// Clears `bits` of `node` after the store cleared them at `version`
    /// (a resync batch landed). Returns once the cache shows them clear:
    /// applied in place when the cache is at `version - 1`, else by a
    /// reload (which gives `version` or later). The resync holds the range
    /// lock meanwhile, so no write plans there with the bits still set.
    pub(crate) async fn apply_clear(
        &self,
        node: &NodeId,
        bits: &[(u64, u64)],
        version: u64,
    ) -> Result<(), blockmap::Error> {
        {
            let mut rec = self.write();
            if version <= rec.version {
                // The feed got here first (or a reload did).
                return Ok(());
            }
            if version == rec.version + 1 && rec.set_dirty_bits(node, bits, false).is_ok() {
                rec.version = version;
                return Ok(());
            }
        }
        self.reload().await
    }

    /// Whether some copy has anything to resync (a dirty bit, or a block
    /// not in sync), without copying the record.
    pub(crate) fn needs_sync(&self) -> bool {
        let rec = self.read();
        rec.dirty.values().any(|b| !b.is_clean())
            || rec
                .placement
                .runs()
                .iter()
                .any(|r| r.locations.values().any(|s| *s != SyncState::InSync))
    }

    /// Whether the image's job document changed since the last call (true
    /// at first).
    pub(crate) fn take_job_changed(&self) -> bool {
        self.job_changed.swap(false, Ordering::AcqRel)
    }

    /// Sets `bits` of `node` once the store confirmed them at `version`:
    /// in place (and the cache moves to `version`) when the cache is at
    /// `version - 1`; otherwise they are also kept until the cache reaches
    /// `version`, so that no reload of an older record drops them.
    pub(crate) fn apply_confirmed_mark(&self, node: &NodeId, bits: &[(u64, u64)], version: u64) {
        let mut rec = self.write();
        if let Err(e) = rec.set_dirty_bits(node, bits, true) {
            tracing::warn!(image = %self.name, %node, error = %e, "cannot apply a mark to the cache");
            return;
        }
        if version == rec.version + 1 {
            rec.version = version;
        } else if version > rec.version {
            self.confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((version, node.clone(), bits.to_vec()));
        }
    }

    /// Re-applies the confirmed marks newer than `rec` (after a reload),
    /// and forgets those it includes.
    fn reapply_confirmed(&self, rec: &mut ImageRecord) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        confirmed.retain(|(v, _, _)| *v > rec.version);
        for (_, node, bits) in confirmed.iter() {
            if let Err(e) = rec.set_dirty_bits(node, bits, true) {
                tracing::warn!(image = %self.name, %node, error = %e,
                    "cannot re-apply a confirmed mark to the cache");
            }
        }
    }

    /// Applies one change; returns true when the record must be reloaded.
    fn apply_change(&self, change: &Change) -> bool {
        let mut rec = self.write();
        match change {
            Change::Dirty {
                name,
                node,
                dirty,
                bits,
                version,
            } if name == self.name.as_str() => {
                if *version <= rec.version {
                    return false;
                }
                if *version != rec.version + 1 {
                    return true;
                }
                let Ok(node) = NodeId::new(node.clone()) else {
                    return true;
                };
                if rec.set_dirty_bits(&node, bits, *dirty).is_err() {
                    return true;
                }
                rec.version = *version;
                false
            }
            Change::Image { name, version } | Change::Lease { name, version, .. }
                if name == self.name.as_str() =>
            {
                *version > rec.version
            }
            Change::Doc {
                kind: DocKind::Sync,
                key,
            } if key == self.name.as_str() => {
                self.job_changed.store(true, Ordering::Release);
                false
            }
            _ => false,
        }
    }

    /// Reloads the record from the store (kept if the store's is older).
    pub(crate) async fn reload(&self) -> Result<(), blockmap::Error> {
        let fresh = self.store.load_image(&self.name).await?;
        self.install(fresh);
        Ok(())
    }

    /// Replaces the cached record with `fresh` unless the cache is newer,
    /// keeping the marks that `fresh` may predate (overdue and confirmed).
    fn install(&self, fresh: ImageRecord) {
        let mut rec = self.write();
        if fresh.version >= rec.version {
            *rec = fresh;
            self.reapply_overdue(&mut rec);
            self.reapply_confirmed(&mut rec);
        }
    }

    /// Follows the change feed until the task is aborted; resubscribes
    /// (and reloads, since a feed does not replay its gap) when it ends.
    pub(crate) async fn follow(self: Arc<Self>, mut feed: ChangeFeed) {
        loop {
            match feed.next().await {
                Some(Ok(change)) => {
                    if self.apply_change(&change) {
                        if let Err(e) = self.reload().await {
                            tracing::warn!(image = %self.name, error = %e, "placement reload failed");
                        }
                    }
                }
                Some(Err(_)) | None => {
                    feed = self.resubscribe().await;
                }
            }
        }
    }

    async fn resubscribe(&self) -> ChangeFeed {
        loop {
            // Back off: the store is down or restarting.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(f) = self.store.subscribe().await {
                if let Err(e) = self.reload().await {
                    tracing::warn!(image = %self.name, error = %e, "placement reload failed");
                }
                return f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockmap::image::ImageSpec;
    use blockmap::types::ByteSize;

    /// A reload that fetched the record before a mark was made must not
    /// drop the mark: reads would use the marked copy until the change
    /// feed caught up (invariant 3).
    #[tokio::test]
    async fn a_stale_reload_keeps_a_confirmed_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn MetadataStore> = Arc::new(
            blockmap::store::embedded::EmbeddedStore::open(dir.path().into()).expect("store"),
        );
        let (a, b) = (NodeId::new("a").expect("id"), NodeId::new("b").expect("id"));
        let name = ImageName::new("img").expect("name");
        let spec = ImageSpec::new(name.clone(), ByteSize::mib(8), vec![a.clone(), b.clone()]);
        let new = ImageRecord::create(&spec).expect("record");
        store.create_image(&new).await.expect("create");
        let rec = store.load_image(&name).await.expect("load");
        let cache = PlacementCache::new(Arc::clone(&store), rec);
        // A reload starts and fetches the record...
        let stale = store.load_image(&name).await.expect("load");
        // ...meanwhile another change and our mark land in the store.
        store
            .mark_dirty(&name, &a, 0, &[(100, 101)])
            .await
            .expect("mark a");
        let bits = [(0u64, 2u64)];
        let out = store.mark_dirty(&name, &b, 0, &bits).await.expect("mark b");
        cache.apply_confirmed_mark(&b, &bits, out.version);
        let range = ByteRange::new(0, 4096);
        assert!(!cache.in_sync(&b, range));
        // ...and then the reload installs what it fetched.
        cache.install(stale);
        assert!(
            !cache.in_sync(&b, range),
            "the stale reload dropped the mark"
        );
        // Once the cache has a record with the mark, it is forgotten.
        cache.reload().await.expect("reload");
        assert!(!cache.in_sync(&b, range));
        assert!(cache.confirmed.lock().expect("lock").is_empty());
        assert!(cache.needs_sync(), "b has dirty bits");
        // The writer's job loop hears of its image's job document only.
        assert!(cache.take_job_changed(), "true at first");
        assert!(!cache.take_job_changed());
        let doc = |key: &str| Change::Doc {
            kind: DocKind::Sync,
            key: key.into(),
        };
        assert!(!cache.apply_change(&doc("other")));
        assert!(!cache.take_job_changed());
        assert!(!cache.apply_change(&doc("img")));
        assert!(cache.take_job_changed());
    }
}
