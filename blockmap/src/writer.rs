//! What the single writer of an image keeps in the metadata store, besides
//! placement: the write lease that carries the fencing generation
//! (invariant 4, ARCHITECTURE.md), the activity log of hot extents
//! (invariant 5), and the outcome of a durable dirty mark (invariant 1).
//!
//! These are plain values. The store methods that read and change them are
//! on [`crate::store::MetadataStore`]; every change is checked against the
//! image's current generation in the store, atomically, so a writer that
//! lost the lease (a zombie) can change nothing.

use crate::types::{ByteSize, NodeId, UnixMillis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Default activity-log extent size (the writer chooses; stored with the log).
pub const DEFAULT_AL_EXTENT: ByteSize = ByteSize::mib(4);

/// The write lease of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node that holds it.
    pub holder: NodeId,
    /// The image generation its acquisition produced: the fencing token the
    /// holder stamps on every write.
    pub generation: u64,
    /// Wall-clock expiry in the store's terms. Valid while `now < expires`.
    pub expires: UnixMillis,
}

impl Lease {
    /// Whether the lease has expired at `now`.
    pub fn expired_at(&self, now: UnixMillis) -> bool {
        now >= self.expires
    }
}

/// The activity log (write-intent record) of an image: extents recorded hot
/// by the writer of `generation`. A new writer reads it, reconciles those
/// extents, then replaces it with `al_reset` at its own generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityLog {
    /// The generation of the writer that owns the log (0: never reset).
    pub generation: u64,
    /// Bytes per extent: extent `e` covers `[e * extent_size, (e + 1) * extent_size)`.
    pub extent_size: ByteSize,
    /// Hot extent indexes.
    pub extents: BTreeSet<u64>,
}

impl Default for ActivityLog {
    fn default() -> Self {
        Self {
            generation: 0,
            extent_size: DEFAULT_AL_EXTENT,
            extents: BTreeSet::new(),
        }
    }
}

/// What a successful `mark_dirty` / `clear_dirty` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkOutcome {
    /// The image version after the change (unchanged for an empty request).
    /// A cache at `version - 1` may apply the change's bits instead of
    /// reloading; any other cached version must reload.
    pub version: u64,
}
