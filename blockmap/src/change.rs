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
}

impl DocKind {
    /// Short name used in keys and table names.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Node => "nodes",
            DocKind::Target => "targets",
            DocKind::Stats => "stats",
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
    /// A node, target or statistics document changed or was deleted.
    Doc {
        /// Which kind.
        kind: DocKind,
        /// Its key.
        key: String,
    },
}
