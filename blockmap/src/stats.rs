//! Per-image I/O statistics. Targets accumulate them and write them to the
//! store; `locus stats` reads them.

use serde::{Deserialize, Serialize};

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
}
