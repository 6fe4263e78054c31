//! The one error type of the blockmap layer. Every failure a caller can act on
//! has its own variant; [`Error::kind`] maps it to a stable [`ErrorKind`] that
//! the admin CLI turns into an exit code.

use crate::placement::SyncState;
use crate::types::{BlockRange, ImageName, NodeId, UnixMillis};
use std::path::PathBuf;

/// Stable classification of [`Error`]s. Scripts rely on these through the CLI's
/// exit codes, so variants are only ever added, never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input: a size, name, range or option that can never be valid.
    Invalid,
    /// The named object does not exist.
    NotFound,
    /// The object already exists, or the request conflicts with current state.
    Conflict,
    /// The request would break a placement invariant (invariant 7,
    /// ARCHITECTURE.md) or a checked sync-state transition.
    Refused,
    /// The metadata store cannot be reached, is busy, or rejected our credentials.
    Unavailable,
    /// The metadata store holds data this code cannot read.
    Corrupt,
}

/// Errors of the blockmap model and its metadata stores.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value failed validation; `what` names the field, `why` the rule.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The field or argument that is wrong.
        what: &'static str,
        /// The rule it breaks, written for an operator.
        why: String,
    },
    /// No image of that name.
    #[error("image '{0}' does not exist (see `locus image list`)")]
    ImageNotFound(ImageName),
    /// An image of that name already exists.
    #[error("image '{0}' already exists; pick another name or destroy it first")]
    ImageExists(ImageName),
    /// No node of that id in the registry.
    #[error("node '{0}' is not registered (add it with `locus node add {0} --address HOST:PORT`)")]
    UnknownNode(NodeId),
    /// A node of that id is already registered.
    #[error("node '{0}' is already registered")]
    NodeExists(NodeId),
    /// The node still stores or serves images and cannot be removed.
    #[error("node '{node}' still holds images: {images}; remove its locations first")]
    NodeInUse {
        /// The node.
        node: NodeId,
        /// Comma-separated image names.
        images: String,
    },
    /// No target of that IQN.
    #[error("target '{0}' does not exist (see `locus target list`)")]
    TargetNotFound(String),
    /// A target of that IQN already exists.
    #[error("target '{0}' already exists")]
    TargetExists(String),
    /// A LUN number is already in use on the target.
    #[error("LUN {lun} of target '{target}' is already in use")]
    LunInUse {
        /// The target IQN.
        target: String,
        /// The LUN number.
        lun: u64,
    },
    /// The target has no such LUN.
    #[error("target '{target}' has no LUN {lun} (see `locus target list`)")]
    LunNotFound {
        /// The target IQN.
        target: String,
        /// The LUN number.
        lun: u64,
    },
    /// The image is served by a target and `--force` was not given.
    #[error("image '{image}' is served by target(s) {targets}; remove the LUNs or use --force")]
    ImageInUse {
        /// The image.
        image: ImageName,
        /// Comma-separated IQNs.
        targets: String,
    },
    /// The node is not a location of the image for (some of) the range.
    #[error("node '{node}' is not a location of image '{image}' for blocks {ranges}")]
    NotALocation {
        /// The image.
        image: ImageName,
        /// The node.
        node: NodeId,
        /// The blocks where it is not a location.
        ranges: RangeList,
    },
    /// The node is already a location for (some of) the range.
    #[error("node '{node}' is already a location of image '{image}' for blocks {ranges}")]
    AlreadyALocation {
        /// The image.
        image: ImageName,
        /// The node.
        node: NodeId,
        /// The blocks where it already is a location.
        ranges: RangeList,
    },
    /// Invariant 7: the removal would drop the last in-sync copy of blocks.
    #[error(
        "refused: removing '{node}' from image '{image}' would drop the last in-sync copy of blocks {ranges}; \
         add another location and sync it first"
    )]
    LastInSyncCopy {
        /// The image.
        image: ImageName,
        /// The node whose removal was refused.
        node: NodeId,
        /// The blocks that would lose their last in-sync copy.
        ranges: RangeList,
    },
    /// A coarse sync-state change the state machine refuses (see
    /// [`SyncState::transition`]).
    #[error(
        "refused: node '{node}' of image '{image}' cannot go from {from} to {to} for blocks {ranges}; {hint}"
    )]
    SyncTransition {
        /// The image.
        image: ImageName,
        /// The location.
        node: NodeId,
        /// The blocks whose copy is in state `from`.
        ranges: RangeList,
        /// Their current state.
        from: SyncState,
        /// The state asked for.
        to: SyncState,
        /// What to do instead.
        hint: &'static str,
    },
    /// Syncing → in-sync while dirty bits of those blocks are still set.
    #[error(
        "refused: node '{node}' of image '{image}' still has {bits} dirty region(s) in blocks {ranges}; \
         resync must copy them and clear their bits (clear_dirty) before the copy is in sync"
    )]
    DirtyBitsSet {
        /// The image.
        image: ImageName,
        /// The location.
        node: NodeId,
        /// The blocks with dirty bits.
        ranges: RangeList,
        /// How many bits are set there.
        bits: u64,
    },
    /// Fencing (invariant 4, ARCHITECTURE.md): the caller's generation is
    /// not the image's current one; a newer writer took the lease.
    #[error(
        "fenced: generation {generation} of image '{image}' is stale (current generation {current}); \
         another writer took the lease, stop writing"
    )]
    Fenced {
        /// The image.
        image: ImageName,
        /// The generation the caller holds.
        generation: u64,
        /// The image's current generation.
        current: u64,
    },
    /// The write lease is held by another node and has not expired.
    #[error(
        "the write lease of image '{image}' is held by '{holder}' (generation {generation}) until {expires}; \
         wait for it to expire or release it there"
    )]
    LeaseHeld {
        /// The image.
        image: ImageName,
        /// The current holder.
        holder: NodeId,
        /// The holder's generation.
        generation: u64,
        /// When it expires unless renewed.
        expires: UnixMillis,
    },
    /// Renew or release of a lease the caller does not hold (released, or
    /// taken over and since released).
    #[error("node '{holder}' does not hold the write lease of image '{image}' at generation {generation}")]
    LeaseNotHeld {
        /// The image.
        image: ImageName,
        /// The node that asked.
        holder: NodeId,
        /// The generation it asked with.
        generation: u64,
    },
    /// The activity log still belongs to a previous writer: the new writer
    /// must reconcile its extents and reset the log first (invariant 5,
    /// ARCHITECTURE.md).
    #[error(
        "the activity log of image '{image}' belongs to generation {log_generation}; \
         writer generation {generation} must reconcile those extents and reset the log (al_reset) first"
    )]
    ActivityLogNotTakenOver {
        /// The image.
        image: ImageName,
        /// The caller's generation.
        generation: u64,
        /// The generation that wrote the log.
        log_generation: u64,
    },
    /// Optimistic concurrency gave up after too many conflicting writers.
    #[error("too many concurrent updates to {0}; retry")]
    Contended(String),
    /// The store cannot be reached or used right now.
    #[error("metadata store {store} unavailable: {why}")]
    Unavailable {
        /// The store, credentials masked.
        store: String,
        /// What went wrong and what to do.
        why: String,
    },
    /// The embedded store file cannot be read.
    #[error("embedded metadata store {} is corrupt or unreadable: {why}; restore it from a backup or move it aside", path.display())]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What the storage engine said.
        why: String,
    },
    /// A record in the store cannot be decoded.
    #[error("metadata store record {key} is corrupt: {why}")]
    CorruptRecord {
        /// The key of the record.
        key: String,
        /// Why it cannot be decoded.
        why: String,
    },
}

impl Error {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } => ErrorKind::Invalid,
            Error::ImageNotFound(_)
            | Error::UnknownNode(_)
            | Error::TargetNotFound(_)
            | Error::LunNotFound { .. }
            | Error::NotALocation { .. } => ErrorKind::NotFound,
            Error::ImageExists(_)
            | Error::NodeExists(_)
            | Error::TargetExists(_)
            | Error::LunInUse { .. }
            | Error::AlreadyALocation { .. }
            | Error::Contended(_)
            | Error::Fenced { .. }
            | Error::LeaseHeld { .. }
            | Error::LeaseNotHeld { .. }
            | Error::ActivityLogNotTakenOver { .. } => ErrorKind::Conflict,
            Error::NodeInUse { .. }
            | Error::ImageInUse { .. }
            | Error::LastInSyncCopy { .. }
            | Error::SyncTransition { .. }
            | Error::DirtyBitsSet { .. } => ErrorKind::Refused,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::CorruptFile { .. } | Error::CorruptRecord { .. } => ErrorKind::Corrupt,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            why: why.into(),
        }
    }
}

/// A list of block ranges, displayed as `0-9, 20-29` (inclusive ends, as an
/// operator reads them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeList(pub Vec<BlockRange>);

impl std::fmt::Display for RangeList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
