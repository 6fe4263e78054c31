//! Per-image I/O statistics. The serving target counts them in memory and
//! writes them to the store every few seconds (never per I/O); `locus
//! stats` and `locus errors` read them.

use crate::types::{NodeId, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counters for one image, since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStats {
    /// READ commands completed.
    pub reads: u64,
    /// WRITE commands completed.
    pub writes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Sum of read latencies, microseconds.
    pub read_latency_us_total: u64,
    /// Sum of write latencies, microseconds.
    pub write_latency_us_total: u64,
    /// Per location: what the serving target asked of that copy.
    #[serde(default)]
    pub locations: BTreeMap<NodeId, LocationIo>,
    /// Copies that failed under the serving target, latest reason first
    /// seen at `since` (`locus errors` shows those still out of sync).
    #[serde(default)]
    pub problems: Vec<CopyProblem>,
    /// The node that wrote these figures last (the lease holder).
    #[serde(default)]
    pub reported_by: Option<NodeId>,
    /// The generation of its lease: with `reported_by`, it tells that the
    /// writer which took the lease at this generation is serving.
    #[serde(default)]
    pub generation: Option<u64>,
    /// When it wrote them.
    #[serde(default)]
    pub updated: Option<UnixTime>,
}

/// The I/O a serving target did on one copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationIo {
    /// Reads this copy served.
    pub reads: u64,
    /// Bytes it served.
    pub read_bytes: u64,
    /// Writes, zeroings and discards it accepted.
    pub writes: u64,
    /// Bytes of those.
    pub write_bytes: u64,
    /// Flushes it completed.
    pub flushes: u64,
    /// Operations it failed.
    pub errors: u64,
    /// Sum of the time of all its operations, microseconds.
    pub latency_us_sum: u64,
}

impl LocationIo {
    /// The sum of two sets of counters (a saved base plus a live count).
    pub fn plus(self, o: LocationIo) -> LocationIo {
        LocationIo {
            reads: self.reads + o.reads,
            read_bytes: self.read_bytes + o.read_bytes,
            writes: self.writes + o.writes,
            write_bytes: self.write_bytes + o.write_bytes,
            flushes: self.flushes + o.flushes,
            errors: self.errors + o.errors,
            latency_us_sum: self.latency_us_sum + o.latency_us_sum,
        }
    }
}

/// A copy that failed: the write path marked it out of sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProblem {
    /// The location.
    pub node: NodeId,
    /// The latest failure.
    pub reason: String,
    /// The first failure.
    pub since: UnixTime,
}
