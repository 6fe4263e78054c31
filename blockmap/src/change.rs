//! Change-feed messages. Every committed metadata change publishes one, so a
//! running daemon can reload what changed without restarting.

use serde::{Deserialize, Serialize};

/// Kinds of small documents the store keeps besides images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// [`crate::node::Node`], keyed by node id.
    Node,
    /// [`crate::target::Target`], keyed by IQN.
    Target,
    /// [`crate::stats::ImageStats`], keyed by image name.
    Stats,
    /// [`crate::sync::SyncJob`], keyed by image name.
    Sync,
}

impl DocKind {
    /// Short name used in keys and table names.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Node => "nodes",
            DocKind::Target => "targets",
            DocKind::Stats => "stats",
            DocKind::Sync => "sync",
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// An image was created or changed; reload it if `version` is newer.
    Image {
        /// The image name.
        name: String,
        /// Its new version.
        version: u64,
    },
    /// An image was destroyed.
    ImageDeleted {
        /// The image name.
        name: String,
    },
    /// Dirty bits of one location were set or cleared (`mark_dirty` /
    /// `clear_dirty`). The image is now at `version`: a cache at
    /// `version - 1` applies `bits` to `node`'s bitmap; any other reloads.
    Dirty {
        /// The image name.
        name: String,
        /// The location whose bitmap changed.
        node: String,
        /// `true`: the bits were set; `false`: cleared.
        dirty: bool,
        /// Bit ranges `[first, last)` at the image's granularity.
        bits: Vec<(u64, u64)>,
        /// The image's new version (serialized last: the Redis script
        /// appends it).
        version: u64,
    },
    /// The write lease was acquired (`holder` is set; the generation rose
    /// and the image is now at `version`) or released (`holder` is `None`).
    Lease {
        /// The image name.
        name: String,
        /// The new holder, or `None` once released.
        holder: Option<String>,
        /// The lease's generation.
        generation: u64,
        /// The image's version after the change.
        version: u64,
    },
    /// A node, target or statistics document changed or was deleted.
    Doc {
        /// Which kind.
        kind: DocKind,
        /// Its key.
        key: String,
    },
}
