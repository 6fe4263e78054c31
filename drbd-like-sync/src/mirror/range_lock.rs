//! A byte-range lock: overlapping holders exclude each other, disjoint ones
//! run together.
//!
//! The mirror holds it over a write's range for the whole fan-out (data to
//! every copy, outcomes, marks), so that two overlapping writes reach every
//! copy in the same order; without it one copy could end with A-then-B and
//! another with B-then-A, and the "in-sync" copies would differ.
//!
//! Knows nothing of copies or writes. Not fair: a waiter retries whenever
//! any holder leaves, so a long stream of overlapping writes may delay one
//! of them, but never forever while the stream has gaps.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::core::ByteRange;

/// The set of held ranges.
#[derive(Debug, Default)]
pub struct RangeLock {
    /// Held ranges with the id of their guard.
    held: Mutex<Vec<(u64, ByteRange)>>,
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
    /// Waits until no held range overlaps `range`, then holds it.
    /// Cancel-safe: a dropped call holds nothing.
    pub async fn lock(&self, range: ByteRange) -> RangeGuard<'_> {
        loop {
            // Register for the wake-up before checking, so a release between
            // the check and the await is not missed.
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                if !held.iter().any(|(_, r)| overlaps(r, &range)) {
                    let id = {
                        let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
                        *n += 1;
                        *n
                    };
                    held.push((id, range));
                    return RangeGuard { lock: self, id };
                }
            }
            notified.await;
        }
    }

    /// Number of ranges held now (for tests and diagnostics).
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.lock.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(id, _)| *id != self.id);
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
}
