//! The storage side of Locus, below the iSCSI target.
//!
//! - [`core`]: the sans-IO replication core (write plan and ack rule,
//!   read-copy choice, write lease, generation fencing, activity log,
//!   reconciliation). It takes events and returns effects; the shells do
//!   the I/O. Tested in simulation (`tests/sim`).
//! - [`storage`]: the [`storage::BlockBackend`] trait and its engines
//!   (io_uring, thread pool, memory), used by both roles of a node: the
//!   target role for its LUNs and local copies, the storage role for the
//!   copies it serves to peers.
//! - [`proto`]: the replication wire codec and the sans-IO handshake
//!   machines (HMAC-SHA-256 over the cluster secret, both ways).
//! - [`node`]: the storage role: serves this node's copies to peers, each
//!   operation checked against the copy's writer generation; and the client
//!   that reaches it.
//! - [`mirror`]: the target role's mirrored [`storage::BlockBackend`] of one
//!   image: writes fanned out to every in-sync copy under the core's ack
//!   rule, reads from the nearest in-sync copy; and [`mirror::Writer`], the
//!   shell that takes the write lease and gates every acknowledgement on it
//!   (invariant 4, ARCHITECTURE.md), keeps the activity log hot ahead of
//!   each write and reconciles the previous writer's extents before serving
//!   (invariant 5).
//!
//! Mirroring, out-of-sync tracking and resync are built on these; this
//! crate knows nothing about iSCSI or SCSI.

pub mod core;
pub mod mirror;
pub mod node;
pub mod proto;
pub mod storage;
