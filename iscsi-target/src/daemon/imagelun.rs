//! LUNs backed by images of the metadata store: the image's blocks are read
//! and written at this node's own location, a sparse file
//! `<data_dir>/images/<image>.img` of the image's size.
//!
//! This module owns the local copy of an image as a [`BlockBackend`]
//! ([`ImageBackend`]), the LUN geometry taken from the image header, and the
//! rule that decides whether this node may serve an image at all
//! ([`check_placement`]). It knows nothing about the change feed or targets
//! (that is [`crate::metadata`]), and it never talks to the store: the I/O
//! path only reads an atomic flag.
//!
//! Two serving rules: [`check_placement`] for the embedded store (a single
//! node: this node must hold an in-sync copy of every block, and the LUN
//! is that copy), and [`check_serving`] for a shared store with storage
//! nodes (every block needs an in-sync copy somewhere; the LUN is the
//! image's mirrored writer, see [`super::mirrored`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use blockmap::error::RangeList;
use blockmap::placement::SyncState;
use blockmap::record::ImageRecord;
use blockmap::types::{BlockIndex, BlockRange, ImageName, NodeId};
use bytes::Bytes;

use crate::scsi::{LogicalUnit, LunConfig};
use drbd_like_sync::storage::{self, BlockBackend, EngineConfig, StorageError};

/// The directory, under the data dir, that holds local copies of images.
pub const IMAGES_DIR: &str = "images";

/// Where this node keeps its copy of `image`: `<data_dir>/images/<image>.img`.
/// Image names are `[A-Za-z0-9._-]` (see [`ImageName`]) and cannot escape the
/// directory, except `.`/`..`-like names, which get a `_` prefix.
pub fn image_path(data_dir: &Path, image: &ImageName) -> PathBuf {
    let name = image.as_str();
    let safe = if name.starts_with('.') {
        format!("_{name}")
    } else {
        name.to_string()
    };
    data_dir.join(IMAGES_DIR).join(format!("{safe}.img"))
}

/// Why this node may not serve an image. Displayed for operators: it names
/// the image, the node and the blocks at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The image does not exist in the store.
    #[error("image '{image}' does not exist (see `locus image list`)")]
    ImageMissing {
        /// The image.
        image: ImageName,
    },
    /// The image's hypervisor list excludes this node.
    #[error("image '{image}' may not be served by node '{node}': its hypervisors are {allowed}")]
    NotAHypervisor {
        /// The image.
        image: ImageName,
        /// This node.
        node: NodeId,
        /// The allowed nodes, comma-separated.
        allowed: String,
    },
    /// This node holds no copy of some blocks.
    #[error(
        "image '{image}' is not served: node '{node}' is not a location of blocks {missing} \
         (add it with `locus location add {image} {node}`; mirroring to other nodes is not available yet)"
    )]
    NotALocation {
        /// The image.
        image: ImageName,
        /// This node.
        node: NodeId,
        /// The blocks this node holds no copy of.
        missing: RangeList,
    },
    /// This node's copy of some blocks is not in sync.
    #[error(
        "image '{image}' is not served: node '{node}' holds stale copies of blocks {stale} \
         (out of sync or syncing; sync them first)"
    )]
    NotInSync {
        /// The image.
        image: ImageName,
        /// This node.
        node: NodeId,
        /// The blocks whose local copy is not in sync.
        stale: RangeList,
    },
}

fn push(ranges: &mut Vec<BlockRange>, r: BlockRange) {
    match ranges.last_mut() {
        Some(l) if l.end == r.start => l.end = r.end,
        _ => ranges.push(r),
    }
}

/// The serving rule: `node` may serve `rec` only when it is one of the
/// image's hypervisors (an empty list allows every node) and holds an
/// in-sync copy of every block (invariant 3 in ARCHITECTURE.md: reads only
/// from in-sync copies; with the embedded store there is no other copy to
/// read from). Costs one pass over the runs, plus one bitmap probe per block of
/// runs where this node's dirty bitmap is not clean.
pub fn check_placement(rec: &ImageRecord, node: &NodeId) -> Result<(), PlacementError> {
    let img = &rec.image;
    if !img.hypervisors.is_empty() && !img.hypervisors.contains(node) {
        return Err(PlacementError::NotAHypervisor {
            image: img.name.clone(),
            node: node.clone(),
            allowed: img
                .hypervisors
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    let dirty = rec.dirty.get(node).filter(|b| !b.is_clean());
    for run in rec.placement.runs() {
        match run.locations.get(node) {
            None => push(&mut missing, run.range),
            Some(SyncState::InSync) if dirty.is_some() => {
                for b in run.range.start.0..run.range.end.0 {
                    if rec.block_state(BlockIndex(b), node) != Some(SyncState::InSync) {
                        push(
                            &mut stale,
                            BlockRange {
                                start: BlockIndex(b),
                                end: BlockIndex(b + 1),
                            },
                        );
                    }
                }
            }
            Some(SyncState::InSync) => {}
            Some(_) => push(&mut stale, run.range),
        }
    }
    if !missing.is_empty() {
        return Err(PlacementError::NotALocation {
            image: img.name.clone(),
            node: node.clone(),
            missing: RangeList(missing),
        });
    }
    if !stale.is_empty() {
        return Err(PlacementError::NotInSync {
            image: img.name.clone(),
            node: node.clone(),
            stale: RangeList(stale),
        });
    }
    Ok(())
}

/// Why a node may not serve a mirrored image (the rule of a store with
/// storage nodes, where a target reads and writes every copy through the
/// image's write lease). Displayed for operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServingError {
    /// The image does not exist in the store.
    #[error("image '{image}' does not exist (see `locus image list`)")]
    ImageMissing {
        /// The image.
        image: ImageName,
    },
    /// The operator moved the image to another node.
    #[error("image '{image}' is served by node '{writer}' (moved there with `locus image move`), not by '{node}'")]
    MovedElsewhere {
        /// The image.
        image: ImageName,
        /// This node.
        node: NodeId,
        /// The node it was moved to.
        writer: NodeId,
    },
    /// The image's hypervisor list excludes this node.
    #[error("image '{image}' may not be served by node '{node}': its hypervisors are {allowed}")]
    NotAHypervisor {
        /// The image.
        image: ImageName,
        /// This node.
        node: NodeId,
        /// The allowed nodes, comma-separated.
        allowed: String,
    },
    /// Some blocks have no in-sync copy anywhere: reading them could return
    /// stale data (invariant 3, ARCHITECTURE.md).
    #[error("image '{image}' is not served: blocks {blocks} have no in-sync copy on any node")]
    NoInSyncCopy {
        /// The image.
        image: ImageName,
        /// The blocks without one.
        blocks: RangeList,
    },
    /// Copies on other nodes, but no cluster secret to reach them with.
    #[error("image '{image}' has copies on other nodes ({nodes}), but this node has no cluster secret to reach them (--cluster-secret-file or LOCUS_CLUSTER_SECRET_FILE)")]
    NoSecret {
        /// The image.
        image: ImageName,
        /// The other nodes, comma-separated.
        nodes: String,
    },
}

/// The serving rule of a mirrored image: `node` may take its write lease
/// and serve it when the image was moved to `node` (or, when it was not
/// moved, `node` is one of its hypervisors or the list is empty), and every
/// block has an in-sync copy somewhere, here or on another node. Copies on
/// other nodes need the cluster secret (`has_secret`). One pass over the
/// runs, plus one bitmap probe per block of runs whose copies have dirty
/// bits.
pub fn check_serving(
    rec: &ImageRecord,
    node: &NodeId,
    has_secret: bool,
) -> Result<(), ServingError> {
    let img = &rec.image;
    if !img.may_serve(node) {
        return Err(match &img.writer {
            Some(w) => ServingError::MovedElsewhere {
                image: img.name.clone(),
                node: node.clone(),
                writer: w.clone(),
            },
            None => ServingError::NotAHypervisor {
                image: img.name.clone(),
                node: node.clone(),
                allowed: img
                    .hypervisors
                    .iter()
                    .map(NodeId::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            },
        });
    }
    let mut orphans = Vec::new();
    for run in rec.placement.runs() {
        let clean = run.locations.iter().any(|(n, st)| {
            *st == SyncState::InSync && rec.dirty.get(n).is_none_or(|b| b.is_clean())
        });
        if clean {
            continue;
        }
        for b in run.range.start.0..run.range.end.0 {
            let any = run
                .locations
                .keys()
                .any(|n| rec.block_state(BlockIndex(b), n) == Some(SyncState::InSync));
            if !any {
                push(
                    &mut orphans,
                    BlockRange {
                        start: BlockIndex(b),
                        end: BlockIndex(b + 1),
                    },
                );
            }
        }
    }
    if !orphans.is_empty() {
        return Err(ServingError::NoInSyncCopy {
            image: img.name.clone(),
            blocks: RangeList(orphans),
        });
    }
    let others: Vec<NodeId> = rec
        .location_nodes()
        .into_iter()
        .filter(|n| n != node)
        .collect();
    if !has_secret && !others.is_empty() {
        return Err(ServingError::NoSecret {
            image: img.name.clone(),
            nodes: others
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    Ok(())
}

/// The LUN geometry an image gives: size in bytes and logical block size
/// (SBC-3 §5.16 READ CAPACITY (16)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    /// Size in bytes.
    pub size: u64,
    /// Logical block size in bytes (512 or 4096).
    pub logical_block_size: u32,
}

impl ImageGeometry {
    /// The geometry of an image record.
    pub fn of(rec: &ImageRecord) -> Self {
        ImageGeometry {
            size: rec.image.size.bytes(),
            logical_block_size: u32::from(rec.image.logical_block_size),
        }
    }
}

/// This node's copy of an image, as a [`BlockBackend`] over the file engine.
///
/// It can be revoked ([`ImageBackend::revoke`]) when the placement stops
/// including this node: commands still in flight on the old LUN then fail
/// with an I/O error instead of writing to a copy that is no longer a
/// location. The check is one atomic load; the store is never consulted.
pub struct ImageBackend {
    image: ImageName,
    inner: Arc<dyn BlockBackend>,
    revoked: AtomicBool,
}

impl ImageBackend {
    /// Opens (creating sparse when absent) `<data_dir>/images/<image>.img`
    /// with exactly `size` bytes. An existing file of another size is refused.
    pub fn open(
        data_dir: &Path,
        image: &ImageName,
        size: u64,
        engine: EngineConfig,
    ) -> Result<Self, StorageError> {
        let path = image_path(data_dir, image);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Setup {
                reason: format!("create {}", dir.display()),
                source: Some(e),
            })?;
        }
        Ok(ImageBackend {
            image: image.clone(),
            inner: storage::open_file(&path, size, engine)?,
            revoked: AtomicBool::new(false),
        })
    }

    /// The image this is a copy of.
    pub fn image(&self) -> &ImageName {
        &self.image
    }

    /// Stops serving: every later operation fails with an I/O error.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    /// Whether [`ImageBackend::revoke`] was called.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    fn check(&self, op: &'static str) -> Result<(), StorageError> {
        if self.is_revoked() {
            return Err(StorageError::Io {
                op,
                source: std::io::Error::other(format!(
                    "image '{}' is no longer served by this node",
                    self.image
                )),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl BlockBackend for ImageBackend {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn engine_name(&self) -> &'static str {
        self.inner.engine_name()
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        self.check("read")?;
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        self.check("write")?;
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), StorageError> {
        // Flushing stays allowed after revocation: it only makes what was
        // already written durable.
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.check("discard")?;
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        self.check("write zeroes")?;
        self.inner.write_zeroes(offset, len, unmap).await
    }
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        self.check("allocation")?;
        self.inner.allocation(offset).await
    }
    fn cached_range(&self, offset: u64, len: usize) -> Option<drbd_like_sync::storage::FileRange> {
        // A revoked image is read (and refused) through `read`.
        if self.is_revoked() {
            return None;
        }
        self.inner.cached_range(offset, len)
    }
}

/// A logical unit over an image's local copy: geometry from the image,
/// identity (serial, NAA id) from the image name so that every target and
/// every node exposing the image shows the same device (SPC-4 §7.8.6 VPD
/// 0x83), persistent reservations in `<data_dir>/images/<image>.pr.json`.
pub fn build_unit(
    data_dir: &Path,
    image: &ImageName,
    geometry: ImageGeometry,
    engine: EngineConfig,
) -> Result<(Arc<LogicalUnit>, Arc<ImageBackend>), String> {
    let backend = Arc::new(
        ImageBackend::open(data_dir, image, geometry.size, engine).map_err(|e| {
            let mut msg = format!(
                "image '{image}': cannot open {}: {e}",
                image_path(data_dir, image).display()
            );
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        })?,
    );
    let lu = image_lun(data_dir, image, geometry, backend.clone())?;
    Ok((lu, backend))
}

/// A logical unit over any backend of `image` (its local copy, or the
/// mirrored writer): the same identity and geometry on every node, so an
/// initiator that logs in again at another node after `locus image move`
/// sees the same device.
pub fn image_lun(
    data_dir: &Path,
    image: &ImageName,
    geometry: ImageGeometry,
    backend: Arc<dyn BlockBackend>,
) -> Result<Arc<LogicalUnit>, String> {
    let id = format!("locus-image/{image}");
    use sha2::Digest;
    let serial = hex::encode(&sha2::Sha256::digest(id.as_bytes())[..8]);
    let mut cfg = LunConfig::new(&serial);
    cfg.naa_id = crate::scsi::naa_from(&id);
    cfg.logical_block_size = geometry.logical_block_size;
    cfg.write_cache = true;
    cfg.thin = true;
    cfg.pr_path = Some(image_path(data_dir, image).with_extension("pr.json"));
    let lu = LogicalUnit::new(cfg, backend)
        .map_err(|e| format!("image '{image}': cannot set up the LUN: {e}"))?;
    Ok(Arc::new(lu))
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockmap::image::ImageSpec;
    use blockmap::types::ByteSize;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).expect("node id")
    }

    fn record(locations: &[&str]) -> ImageRecord {
        let mut spec = ImageSpec::new(
            ImageName::new("vm1").expect("name"),
            ByteSize::mib(64),
            locations.iter().map(|s| n(s)).collect(),
        );
        spec.block_size = ByteSize::mib(4);
        ImageRecord::create(&spec).expect("record")
    }

    #[test]
    fn served_when_this_node_holds_every_block() {
        assert_eq!(check_placement(&record(&["a", "b"]), &n("a")), Ok(()));
    }

    #[test]
    fn not_a_location_names_the_missing_blocks() {
        let e = check_placement(&record(&["b"]), &n("a")).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, PlacementError::NotALocation { .. }), "{e:?}");
        assert!(msg.contains("'vm1'") && msg.contains("'a'") && msg.contains("blocks 0-15"));
    }

    #[test]
    fn partial_location_names_only_the_missing_range() {
        let mut rec = record(&["b"]);
        rec.add_location(&n("a"), BlockRange::new(0, 4).expect("range"))
            .expect("add");
        for state in [SyncState::Syncing, SyncState::InSync] {
            rec.set_sync_state(&n("a"), BlockRange::new(0, 4).expect("range"), state)
                .expect("sync");
        }
        let msg = check_placement(&rec, &n("a")).unwrap_err().to_string();
        assert!(msg.contains("blocks 4-15"), "{msg}");
    }

    #[test]
    fn stale_local_copy_is_not_served() {
        let mut rec = record(&["b"]);
        rec.add_location(&n("a"), rec.image.all_blocks())
            .expect("add");
        let e = check_placement(&rec, &n("a")).unwrap_err();
        assert!(matches!(e, PlacementError::NotInSync { .. }), "{e:?}");
        for state in [SyncState::Syncing, SyncState::InSync] {
            rec.set_sync_state(&n("a"), rec.image.all_blocks(), state)
                .expect("sync");
        }
        assert_eq!(check_placement(&rec, &n("a")), Ok(()));
        // 4 MiB blocks, 64 KiB granularity: a dirty byte in block 5.
        rec.mark_bytes(&n("a"), 5 * 4 * 1024 * 1024 + 10, 1, true)
            .expect("mark");
        let msg = check_placement(&rec, &n("a")).unwrap_err().to_string();
        assert!(msg.contains("blocks 5 "), "{msg}");
    }

    #[test]
    fn hypervisor_list_is_enforced() {
        let mut rec = record(&["a"]);
        rec.image.hypervisors.insert(n("h"));
        let e = check_placement(&rec, &n("a")).unwrap_err();
        assert!(matches!(e, PlacementError::NotAHypervisor { .. }), "{e:?}");
        rec.image.hypervisors.insert(n("a"));
        assert_eq!(check_placement(&rec, &n("a")), Ok(()));
    }

    #[tokio::test]
    async fn revoked_backend_refuses_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = ImageName::new("x").expect("name");
        let b = ImageBackend::open(
            dir.path(),
            &img,
            1 << 20,
            storage::EngineChoice::Pool.into(),
        )
        .expect("open");
        b.write(0, Bytes::from_static(b"hello"), false)
            .await
            .expect("write");
        assert_eq!(&b.read(0, 5).await.expect("read")[..], b"hello");
        let on_disk = std::fs::read(image_path(dir.path(), &img)).expect("file");
        assert_eq!(on_disk.len(), 1 << 20);
        assert_eq!(&on_disk[..5], b"hello");
        b.revoke();
        assert!(b.read(0, 5).await.is_err());
        assert!(b.write(0, Bytes::from_static(b"x"), false).await.is_err());
    }
}
