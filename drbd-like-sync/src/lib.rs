//! Locus storage-node daemon: mirroring, out-of-sync tracking and resync.
//!
//! Built so far: [`proto`], the replication wire codec and handshake.

pub mod proto;
