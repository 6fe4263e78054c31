//! Locus mirroring: out-of-sync tracking, resync and replication.
//!
//! - [`core`]: the sans-IO replication core (write plan and ack rule, read-copy
//!   choice, write lease, generation fencing, activity log, reconciliation).
//!   It takes events and returns effects; the shells do the I/O.

pub mod core;
