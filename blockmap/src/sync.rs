//! Resync and verify jobs (invariant 6, ARCHITECTURE.md): what an operator
//! (`locus image sync`, `locus image verify`) or the background resync asks
//! of an image's lease holder, and the progress the holder reports back.
//!
//! One job document per image ([`crate::change::DocKind::Sync`], keyed by
//! the image name), changed only with a version check: the requester
//! creates it `queued`, the lease holder moves it to `running` and then to
//! `done` or `failed`, and an operator may cancel it. The holder does the
//! copying because it orders every copy against its own foreground writes;
//! the document is only the conversation.
//!
//! ```text
//!   queued --holder picks it up--> running --all ranges landed--> done
//!     |                               |  \--error (named)-------> failed
//!     `----------cancel---------------+----> cancelled
//! ```
//!
//! A new job may replace a finished one (done, failed, cancelled). The
//! bitmap, not this document, is the resync's progress: a job that stops
//! for any reason leaves the bits of what did not land, and the next job
//! copies only those.

use crate::types::{BlockRange, NodeId, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Copy the dirty ranges of out-of-sync copies from an in-sync copy.
    Sync,
    /// Compare checksums of the in-sync copies; mark the minority dirty.
    Verify,
}

/// Where a job stands (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for the lease holder.
    Queued,
    /// The lease holder works on it.
    Running,
    /// Finished; every range it covered landed (or was checked).
    Done,
    /// Stopped on an error (see [`SyncJob::error`]).
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl JobState {
    /// True once the job will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Bytes a sync moved into one location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationProgress {
    /// Data bytes copied into it.
    pub copied_bytes: u64,
    /// Bytes that were holes on the source and were punched, not written.
    pub hole_bytes: u64,
}

/// A range whose in-sync copies disagree (verify).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The block holding the range.
    pub block: u64,
    /// First byte of the range in the image.
    pub offset: u64,
    /// Length of the range in bytes.
    pub len: u64,
    /// The copies that agree with the majority (kept in sync).
    pub majority: Vec<NodeId>,
    /// The copies that differ (marked out-of-sync for the range).
    pub differ: Vec<NodeId>,
}

/// One resync or verify job of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJob {
    /// Chosen by the requester, so that it recognises its own job.
    pub id: u64,
    /// Sync or verify.
    pub kind: JobKind,
    /// The blocks covered.
    pub blocks: BlockRange,
    /// Only this location (sync: as destination; verify: compared with
    /// the others); `None` for every location.
    #[serde(default)]
    pub location: Option<NodeId>,
    /// Copy rate limit in bytes per second; `None`: the default rate for a
    /// background job, unlimited (foreground I/O first) otherwise.
    #[serde(default)]
    pub rate: Option<u64>,
    /// `locus` for an operator, `auto` for the background resync.
    pub requested_by: String,
    /// When it was requested.
    pub requested: UnixTime,
    /// Where it stands.
    pub state: JobState,
    /// The lease holder running it, and its generation.
    #[serde(default)]
    pub runner: Option<NodeId>,
    /// The generation it runs at.
    #[serde(default)]
    pub generation: Option<u64>,
    /// Bytes the job has to cover (sync: dirty bytes when it started;
    /// verify: bytes to compare).
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes covered so far.
    #[serde(default)]
    pub done_bytes: u64,
    /// Per destination location (sync).
    #[serde(default)]
    pub locations: BTreeMap<NodeId, LocationProgress>,
    /// What verify found.
    #[serde(default)]
    pub mismatches: Vec<Mismatch>,
    /// When the holder started it.
    #[serde(default)]
    pub started: Option<UnixTime>,
    /// Milliseconds it has run (or ran).
    #[serde(default)]
    pub elapsed_ms: u64,
    /// Why it failed, for an operator.
    #[serde(default)]
    pub error: Option<String>,
}

impl SyncJob {
    /// A new queued job.
    pub fn new(id: u64, kind: JobKind, blocks: BlockRange, requested_by: &str) -> Self {
        SyncJob {
            id,
            kind,
            blocks,
            location: None,
            rate: None,
            requested_by: requested_by.to_string(),
            requested: UnixTime::now(),
            state: JobState::Queued,
            runner: None,
            generation: None,
            total_bytes: 0,
            done_bytes: 0,
            locations: BTreeMap::new(),
            mismatches: Vec::new(),
            started: None,
            elapsed_ms: 0,
            error: None,
        }
    }
}
