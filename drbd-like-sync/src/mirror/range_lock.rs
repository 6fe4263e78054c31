//! A byte-range lock with shared and exclusive holders: overlapping holders
//! exclude each other unless both are shared; disjoint ones run together.
//!
//! The mirror holds it exclusively over a write's range for the whole
//! fan-out (data to every copy, outcomes, marks), so that two overlapping
//! writes reach every copy in the same order; without it one copy could end
//! with A-then-B and another with B-then-A, and the "in-sync" copies would
//! differ. A SCSI logical unit holds it too: plain reads and writes shared,
//! COMPARE AND WRITE, ORWRITE and WRITE ATOMIC exclusively over their own
//! range only (SBC-3 §5.2), so that an atomic command stalls nothing that
//! does not touch its blocks.
//!
//! Knows nothing of copies, writes or SCSI. Not fair: a waiter retries whenever
//! any holder leaves, so a long stream of overlapping writes may delay one
//! of them, but never forever while the stream has gaps.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::core::ByteRange;

/// The set of held ranges.
#[derive(Debug, Default)]
pub struct RangeLock {
    /// Held ranges: the id of their guard, the range, and whether shared.
    held: Mutex<Vec<(u64, ByteRange, bool)>>,
    /// Counter for guard ids.
    next: Mutex<u64>,
    /// Woken whenever a range is released.
    released: Notify,
}

/// A held range; released on drop.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

/// True when two ranges share a byte; an empty range overlaps nothing.
fn overlaps(a: &ByteRange, b: &ByteRange) -> bool {
    a.intersect(b).is_some()
}

impl RangeLock {
    /// Waits until no held range overlaps `range`, then holds it
    /// exclusively. Cancel-safe: a dropped call holds nothing.
    pub async fn lock(&self, range: ByteRange) -> RangeGuard<'_> {
        self.acquire(range, false).await
    }

    /// Waits until no exclusively held range overlaps `range`, then holds it
    /// shared (other shared holders of overlapping ranges may hold it too).
    /// Cancel-safe.
    pub async fn lock_shared(&self, range: ByteRange) -> RangeGuard<'_> {
        self.acquire(range, true).await
    }

    async fn acquire(&self, range: ByteRange, shared: bool) -> RangeGuard<'_> {
        // Fast path: nothing in the way, no wake-up registration (every
        // read and write of a LU comes here).
        if let Some(g) = self.try_acquire(range, shared) {
            return g;
        }
        loop {
            // Register for the wake-up before checking again, so a release
            // between the check and the await is not missed.
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(g) = self.try_acquire(range, shared) {
                return g;
            }
            notified.await;
        }
    }

    fn try_acquire(&self, range: ByteRange, shared: bool) -> Option<RangeGuard<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let blocked = held
            .iter()
            .any(|(_, r, s)| overlaps(r, &range) && !(shared && *s));
        if blocked {
            return None;
        }
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        held.push((id, range, shared));
        Some(RangeGuard { lock: self, id })
    }

    /// Number of ranges held now (for tests and diagnostics).
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.lock.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(id, _, _)| *id != self.id);
        drop(held);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn overlapping_waits_disjoint_does_not() {
        let l = Arc::new(RangeLock::default());
        let a = l.lock(ByteRange::new(0, 100)).await;
        // Disjoint: immediate.
        let b = l.lock(ByteRange::new(100, 50)).await;
        assert_eq!(l.held(), 2);
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(ByteRange::new(50, 10)).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "still overlaps the first range");
        drop(a);
        waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.held(), 0);
    }

    #[tokio::test]
    async fn shared_holders_overlap_and_exclude_only_an_exclusive_one() {
        let l = Arc::new(RangeLock::default());
        let a = l.lock_shared(ByteRange::new(0, 100)).await;
        let b = l.lock_shared(ByteRange::new(50, 100)).await;
        assert_eq!(l.held(), 2, "overlapping shared holders run together");
        let l2 = Arc::clone(&l);
        let exclusive = tokio::spawn(async move {
            let _g = l2.lock(ByteRange::new(90, 20)).await;
        });
        tokio::task::yield_now().await;
        assert!(!exclusive.is_finished(), "overlaps both shared holders");
        drop(a);
        tokio::task::yield_now().await;
        assert!(!exclusive.is_finished(), "still overlaps the second");
        drop(b);
        exclusive.await.unwrap_or_else(|e| panic!("{e}"));
        // An exclusive holder keeps overlapping shared ones out, not
        // disjoint ones.
        let x = l.lock(ByteRange::new(0, 10)).await;
        let _far = l.lock_shared(ByteRange::new(10, 10)).await;
        let l3 = Arc::clone(&l);
        let near = tokio::spawn(async move {
            let _g = l3.lock_shared(ByteRange::new(5, 10)).await;
        });
        tokio::task::yield_now().await;
        assert!(!near.is_finished());
        drop(x);
        near.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
