//! The image header: name, size, geometry, allowed hypervisors and the fencing
//! generation. Geometry validation lives here; placement lives in
//! [`crate::placement`] and sync state in [`crate::record`].

use crate::error::{Error, Result};
use crate::types::{BlockIndex, BlockRange, ByteSize, ImageName, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Default block size: 4 MiB (ARCHITECTURE.md, "blockmap and admin").
pub const DEFAULT_BLOCK_SIZE: ByteSize = ByteSize::mib(4);
/// Default out-of-sync tracking granularity: 64 KiB.
pub const DEFAULT_GRANULARITY: ByteSize = ByteSize::kib(64);
/// Finest out-of-sync tracking granularity: 4 KiB.
pub const MIN_GRANULARITY: ByteSize = ByteSize::kib(4);

/// The logical block size a LUN reports (SBC-3 §5.16 READ CAPACITY (16)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum LogicalBlockSize {
    /// 512-byte sectors.
    B512,
    /// 4096-byte sectors.
    B4096,
}

impl LogicalBlockSize {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            LogicalBlockSize::B512 => 512,
            LogicalBlockSize::B4096 => 4096,
        }
    }
}
impl TryFrom<u32> for LogicalBlockSize {
    type Error = Error;
    fn try_from(v: u32) -> Result<Self> {
        match v {
            512 => Ok(Self::B512),
            4096 => Ok(Self::B4096),
            _ => Err(Error::invalid(
                "logical block size",
                format!("{v} must be 512 or 4096"),
            )),
        }
    }
}
impl From<LogicalBlockSize> for u32 {
    fn from(v: LogicalBlockSize) -> u32 {
        v.bytes() as u32
    }
}

/// What an operator asks for when creating an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The name.
    pub name: ImageName,
    /// Size in bytes; a multiple of the logical block size.
    pub size: ByteSize,
    /// Block size; a power of two, a multiple of the logical block size.
    pub block_size: ByteSize,
    /// Logical block size.
    pub logical_block_size: LogicalBlockSize,
    /// Dirty-bitmap granularity: a power of two between 4 KiB (and the logical
    /// block size) and the block size.
    pub granularity: ByteSize,
    /// Initial locations; they start in sync (a new image is all zeros everywhere).
    pub locations: Vec<NodeId>,
    /// Nodes allowed to serve the image as an iSCSI target.
    pub hypervisors: Vec<NodeId>,
}

impl ImageSpec {
    /// A spec with the default geometry.
    pub fn new(name: ImageName, size: ByteSize, locations: Vec<NodeId>) -> Self {
        Self {
            name,
            size,
            block_size: DEFAULT_BLOCK_SIZE,
            logical_block_size: LogicalBlockSize::B512,
            granularity: DEFAULT_GRANULARITY,
            locations,
            hypervisors: Vec::new(),
        }
    }
}

/// The image header as stored. Placement and dirty bitmaps are kept apart so
/// that changing them never rewrites this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The name.
    pub name: ImageName,
    /// Size in bytes.
    pub size: ByteSize,
    /// Block size in bytes (power of two).
    pub block_size: ByteSize,
    /// Logical block size.
    pub logical_block_size: LogicalBlockSize,
    /// Dirty-bitmap granularity in bytes (power of two).
    pub granularity: ByteSize,
    /// Nodes allowed to serve this image as target.
    pub hypervisors: BTreeSet<NodeId>,
    /// Fencing token: rises each time a new target takes the write lease
    /// (invariant 4, ARCHITECTURE.md).
    pub generation: u64,
    /// The node the operator moved the image to (`locus image move`): when
    /// set, only this node takes the write lease and serves the image,
    /// whatever `hypervisors` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<NodeId>,
    /// Background resync (`locus image set --auto-sync`): when a location
    /// with out-of-sync copies is up, the lease holder resyncs it at the
    /// default rate. On unless an operator turned it off.
    #[serde(default = "default_auto_sync")]
    pub auto_sync: bool,
}

fn default_auto_sync() -> bool {
    true
}

impl Image {
    /// Validates a spec's geometry and builds the header (generation 0).
    pub fn from_spec(spec: &ImageSpec) -> Result<Self> {
        let lbs = spec.logical_block_size.bytes();
        let size = spec.size.bytes();
        if size == 0 {
            return Err(Error::invalid("size", "an image must not be empty"));
        }
        if !size.is_multiple_of(lbs) {
            return Err(Error::invalid(
                "size",
                format!("{size} bytes is not a multiple of the logical block size {lbs}"),
            ));
        }
        let bs = spec.block_size.bytes();
        if !bs.is_power_of_two() {
            return Err(Error::invalid(
                "block size",
                format!("{} ({bs} bytes) is not a power of two", spec.block_size),
            ));
        }
        if bs < lbs {
            return Err(Error::invalid(
                "block size",
                format!("{bs} bytes is smaller than the logical block size {lbs}"),
            ));
        }
        let g = spec.granularity.bytes();
        if !g.is_power_of_two() || g < MIN_GRANULARITY.bytes() || g < lbs || g > bs {
            return Err(Error::invalid(
                "granularity",
                format!(
                    "{} must be a power of two between 4K (and the logical block size) and the block size {}",
                    spec.granularity, spec.block_size
                ),
            ));
        }
        if spec.locations.is_empty() {
            return Err(Error::invalid(
                "locations",
                "an image needs at least one location",
            ));
        }
        let mut seen = BTreeSet::new();
        for n in &spec.locations {
            if !seen.insert(n) {
                return Err(Error::invalid(
                    "locations",
                    format!("node '{n}' is listed twice"),
                ));
            }
        }
        Ok(Self {
            name: spec.name.clone(),
            size: spec.size,
            block_size: spec.block_size,
            logical_block_size: spec.logical_block_size,
            granularity: spec.granularity,
            hypervisors: spec.hypervisors.iter().cloned().collect(),
            generation: 0,
            writer: None,
            auto_sync: true,
        })
    }

    /// Whether `node` may take the write lease and serve the image: the
    /// node it was moved to when there is one, else one of its hypervisors
    /// (an empty list allows every node).
    pub fn may_serve(&self, node: &NodeId) -> bool {
        match &self.writer {
            Some(w) => w == node,
            None => self.hypervisors.is_empty() || self.hypervisors.contains(node),
        }
    }

    /// Number of blocks (the last one may be partial).
    pub fn block_count(&self) -> u64 {
        self.size.bytes().div_ceil(self.block_size.bytes())
    }

    /// Dirty-bitmap bits per block.
    pub fn bits_per_block(&self) -> u64 {
        self.block_size.bytes() / self.granularity.bytes()
    }

    /// Number of dirty-bitmap bits covering the image.
    pub fn bitmap_bits(&self) -> u64 {
        self.size.bytes().div_ceil(self.granularity.bytes())
    }

    /// The whole image as a block range.
    pub fn all_blocks(&self) -> BlockRange {
        BlockRange {
            start: BlockIndex(0),
            end: BlockIndex(self.block_count()),
        }
    }

    /// Resolves optional `--start`/`--end` block bounds (end exclusive) into a
    /// range, refusing ranges past the end of the image.
    pub fn block_range(&self, start: Option<u64>, end: Option<u64>) -> Result<BlockRange> {
        let count = self.block_count();
        let s = start.unwrap_or(0);
        let e = end.unwrap_or(count);
        if e > count {
            return Err(Error::invalid(
                "block range",
                format!(
                    "end {e} is past the end of image '{}', which has {count} blocks (0-{})",
                    self.name,
                    count - 1
                ),
            ));
        }
        BlockRange::new(s, e)
    }

    /// The dirty-bitmap bits `[first, last)` covering a byte range, refusing
    /// ranges past the end of the image.
    pub fn bits_for_bytes(&self, offset: u64, len: u64) -> Result<(u64, u64)> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.size.bytes() && len > 0)
            .ok_or_else(|| {
                Error::invalid(
                    "byte range",
                    format!(
                        "{offset}+{len} is empty or past the end of image '{}' ({} bytes)",
                        self.name,
                        self.size.bytes()
                    ),
                )
            })?;
        let g = self.granularity.bytes();
        Ok((offset / g, end.div_ceil(g)))
    }
}
