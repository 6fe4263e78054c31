//! What the mirror remembers about its copies for operators: per-location
//! I/O counters (for `locus stats`) and the problems that put a copy out of
//! sync (for the daemon to publish). In memory only: the I/O path never
//! makes a store call to count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use blockmap::types::NodeId;
use dashmap::DashMap;

/// Counters of one location, as [`crate::mirror::Mirror::stats`] reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocationStats {
    /// Reads served by this copy.
    pub reads: u64,
    /// Bytes read from it.
    pub read_bytes: u64,
    /// Writes, zeroings and discards it accepted.
    pub writes: u64,
    /// Bytes of those.
    pub write_bytes: u64,
    /// Flushes it completed.
    pub flushes: u64,
    /// Operations it failed (any kind).
    pub errors: u64,
    /// Sum of the call times of all its operations, in microseconds
    /// (divide by the operation count for a mean).
    pub latency_us_sum: u64,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    flushes: AtomicU64,
    errors: AtomicU64,
    latency_us_sum: AtomicU64,
}

/// The kind of operation counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Read,
    Write,
    Flush,
}

/// All locations' counters.
#[derive(Default)]
pub(crate) struct StatsTable {
    by_node: DashMap<NodeId, Arc<Counters>>,
}

impl StatsTable {
    /// Counts one operation of `bytes` on `node` that took `took`.
    pub(crate) fn count(&self, node: &NodeId, kind: Counted, bytes: u64, took: Duration, ok: bool) {
        let c = Arc::clone(&self.by_node.entry(node.clone()).or_default());
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        c.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        if !ok {
            c.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (n, b) = match kind {
            Counted::Read => (&c.reads, Some(&c.read_bytes)),
            Counted::Write => (&c.writes, Some(&c.write_bytes)),
            Counted::Flush => (&c.flushes, None),
        };
        n.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = b {
            b.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// A snapshot of every location's counters.
    pub(crate) fn snapshot(&self) -> BTreeMap<NodeId, LocationStats> {
        self.by_node
            .iter()
            .map(|e| {
                let c = e.value();
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let s = LocationStats {
                    reads: l(&c.reads),
                    read_bytes: l(&c.read_bytes),
                    writes: l(&c.writes),
                    write_bytes: l(&c.write_bytes),
                    flushes: l(&c.flushes),
                    errors: l(&c.errors),
                    latency_us_sum: l(&c.latency_us_sum),
                };
                (e.key().clone(), s)
            })
            .collect()
    }
}

/// Why a copy is (or may be) out of sync, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The location.
    pub node: NodeId,
    /// The latest failure, for operators.
    pub reason: String,
    /// When the first failure of this copy was seen.
    pub since: SystemTime,
}

/// The problems, one per node: the first failure's time, the latest reason.
#[derive(Default)]
pub(crate) struct Problems {
    by_node: Mutex<BTreeMap<NodeId, Problem>>,
}

impl Problems {
    /// Records a failure of `node`.
    pub(crate) fn record(&self, node: &NodeId, reason: String) {
        let mut m = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(node.clone())
            .and_modify(|p| p.reason.clone_from(&reason))
            .or_insert_with(|| Problem {
                node: node.clone(),
                reason,
                since: SystemTime::now(),
            });
    }

    /// Every recorded problem, by node.
    pub(crate) fn list(&self) -> Vec<Problem> {
        let m = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        m.values().cloned().collect()
    }
}
