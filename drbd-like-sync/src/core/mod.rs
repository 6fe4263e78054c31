//! The sans-IO replication core.
//!
//! Every module here is a pure state machine or planner: it takes events
//! (with the time as an input, [`Millis`]) and returns decisions and effects.
//! None of it knows tokio, sockets, disks or the metadata store; the mirror
//! and node shells perform the effects and report the outcomes back.
//!
//! - [`write`]: the write plan and the protocol-C ack rule (invariants 1 and 2,
//!   ARCHITECTURE.md);
//! - [`read`]: which in-sync copy to read, and what to do after a failure
//!   (invariant 3);
//! - [`lease`]: the writer's lease and when it may acknowledge (invariant 4);
//! - [`fence`]: the storage-side generation gate (invariant 4);
//! - [`activity_log`]: the write-intent extents (invariant 5);
//! - [`reconcile`]: the plan a new writer runs before it serves (invariant 5);
//! - [`resync`]: batches, the life of one batch copy, and the pace of a
//!   resync (invariant 6);
//! - [`verify`]: which copies of a range differ from the majority.

pub mod activity_log;
pub mod fence;
pub mod lease;
pub mod read;
pub mod reconcile;
pub mod resync;
pub mod units;
pub mod verify;
pub mod write;

pub use units::{coalesce, ByteRange, ExtentIndex, Generation, Millis};
