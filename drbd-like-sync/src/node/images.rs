//! The copies a storage node holds: one open [`ImageCopy`] per image, in a
//! concurrent table ([`ImageTable`]), each behind its generation gate.
//!
//! A node's copy of image NAME is `<data-dir>/images/NAME.img`, a sparse file
//! of the image's size in which only the blocks placed on this node are ever
//! written, opened through the io_uring engine (the pool engine behind it).
//! Beside it, `NAME.gen` holds the highest writer generation the node has
//! seen for the image, so that a restart cannot forget a fence.
//!
//! Owns: opening copies, the generation check of every operation (invariant
//! 4, ARCHITECTURE.md), and its persistence. Knows nothing of the wire: the
//! server ([`super::conn`]) and the target role's local copy both call
//! [`ImageCopy::admit`] before they touch the data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use blockmap::store::MetadataStore;
use blockmap::types::{ImageName, NodeId};
use dashmap::DashMap;
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::proto::Generation;
use crate::storage::{self, BlockBackend, EngineConfig, StorageError};

/// Why a copy cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The image does not exist in the catalog.
    #[error("image {0} does not exist")]
    UnknownImage(ImageName),
    /// The image exists but has no location on this node.
    #[error("image {image} has no copy on node {node}")]
    NotPlacedHere {
        /// The image.
        image: ImageName,
        /// This node.
        node: NodeId,
    },
    /// The catalog (metadata store) could not answer.
    #[error("cannot look up image {image} in the metadata store")]
    Catalog {
        /// The image.
        image: ImageName,
        /// The store's error.
        #[source]
        source: blockmap::Error,
    },
    /// The copy's file could not be opened, or its generation file is bad.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The operation carries an older generation than the copy has seen.
    #[error(
        "fenced: generation {seen} is older than generation {current} that this copy has seen"
    )]
    Fenced {
        /// The operation's generation.
        seen: u64,
        /// The highest generation the copy has seen.
        current: u64,
    },
}

/// Where a node learns the size of an image it is asked to serve.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// The image's size in bytes, if `node` holds a copy of it.
    async fn copy_size(&self, image: &ImageName, node: &NodeId) -> Result<u64, CopyError>;
}

/// The metadata store as the catalog: one `load_image` per copy opened.
pub struct StoreCatalog(pub Arc<dyn MetadataStore>);

#[async_trait]
impl Catalog for StoreCatalog {
    async fn copy_size(&self, image: &ImageName, node: &NodeId) -> Result<u64, CopyError> {
        let rec = match self.0.load_image(image).await {
            Ok(r) => r,
            Err(blockmap::Error::ImageNotFound(_)) => {
                return Err(CopyError::UnknownImage(image.clone()))
            }
            Err(source) => {
                return Err(CopyError::Catalog {
                    image: image.clone(),
                    source,
                })
            }
        };
        if !rec.location_nodes().contains(node) {
            return Err(CopyError::NotPlacedHere {
                image: image.clone(),
                node: node.clone(),
            });
        }
        Ok(rec.image.size.bytes())
    }
}

/// One image's copy on this node, behind its generation gate.
pub struct ImageCopy {
    name: ImageName,
    backend: Arc<dyn BlockBackend>,
    gen_path: PathBuf,
    /// The highest generation seen, always durable in `gen_path` (it is
    /// raised only after the file says so).
    generation: AtomicU64,
    /// Operations hold a read guard while they run; raising the generation
    /// takes the write guard, so an operation of an older writer that was
    /// admitted before the raise has finished before any operation of the
    /// new writer starts, and none is admitted after it.
    ops: RwLock<()>,
}

impl std::fmt::Debug for ImageCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCopy")
            .field("name", &self.name)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

/// Proof that an operation passed the gate; hold it while the operation
/// touches the data.
pub type Admitted<'a> = RwLockReadGuard<'a, ()>;

impl ImageCopy {
    /// Opens (creating sparse when absent) the copy of `name`, of `size`
    /// bytes, under `images_dir`, and recovers its generation.
    pub async fn open(
        images_dir: &Path,
        name: &ImageName,
        size: u64,
        engine: EngineConfig,
    ) -> Result<ImageCopy, CopyError> {
        let img = images_dir.join(format!("{name}.img"));
        let gen_path = images_dir.join(format!("{name}.gen"));
        let dir = images_dir.to_owned();
        let gp = gen_path.clone();
        let (backend, generation) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::Setup {
                reason: format!("create {}", dir.display()),
                source: Some(e),
            })?;
            let backend = storage::open_file(&img, size, engine)?;
            Ok::<_, StorageError>((backend, read_generation(&gp)?))
        })
        .await
        .map_err(|_| StorageError::EngineGone)??;
        Ok(ImageCopy {
            name: name.clone(),
            backend,
            gen_path,
            generation: AtomicU64::new(generation),
            ops: RwLock::new(()),
        })
    }

    /// The image.
    pub fn name(&self) -> &ImageName {
        &self.name
    }

    /// The copy's data.
    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.backend
    }

    /// The highest writer generation this copy has seen (durable).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation check of every operation (invariant 4): an operation
    /// of generation `g` below the highest seen is refused with
    /// [`CopyError::Fenced`]; one above it first waits for the operations
    /// already admitted, persists `g` (write, fsync, rename) and only then
    /// runs. Cancel-safe: a dropped call admits nothing, and a raise either
    /// happened durably or not at all.
    pub async fn admit(&self, g: Generation) -> Result<Admitted<'_>, CopyError> {
        let g = g.0;
        loop {
            let current = self.generation();
            if g < current {
                return Err(CopyError::Fenced { seen: g, current });
            }
            if g == current {
                let guard = self.ops.read().await;
                if self.generation() == g {
                    return Ok(guard);
                }
                // Raised while we waited: check again.
                continue;
            }
            let _raise = self.ops.write().await;
            if g > self.generation() {
                write_generation(&self.gen_path, g).await?;
                self.generation.store(g, Ordering::Release);
                tracing::info!(image = %self.name, generation = g, "new writer generation");
            }
        }
    }
}

/// Reads `NAME.gen` (0 when absent). A file that does not hold a number is
/// an error naming it: guessing would unfence an old writer.
fn read_generation(path: &Path) -> Result<u64, StorageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| StorageError::Setup {
            reason: format!(
                "{} does not hold a generation number; restore it or remove the copy",
                path.display()
            ),
            source: None,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StorageError::Setup {
            reason: format!("read {}", path.display()),
            source: Some(e),
        }),
    }
}

/// Replaces `NAME.gen` durably: a temporary file, fsync, rename, fsync of
/// the directory.
async fn write_generation(path: &Path, g: u64) -> Result<(), StorageError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let tmp = path.with_extension("gen.tmp");
        let io = |e| StorageError::from_io("persist generation", e);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{g}").map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    })
    .await
    .map_err(|_| StorageError::EngineGone)?
}

/// The copies this node has open, by image name. Opening happens once per
/// image (the first operation that names it); later operations find it in
/// the table without a lock.
pub struct ImageTable {
    node: NodeId,
    images_dir: PathBuf,
    engine: EngineConfig,
    catalog: Arc<dyn Catalog>,
    open: DashMap<ImageName, Arc<ImageCopy>>,
    /// Serialises the (rare) opens, so two first operations on one image do
    /// not open its file twice.
    opening: tokio::sync::Mutex<()>,
}

impl ImageTable {
    /// A table for node `node`, with copies under `data_dir/images`.
    pub fn new(
        node: NodeId,
        data_dir: &Path,
        engine: EngineConfig,
        catalog: Arc<dyn Catalog>,
    ) -> Self {
        ImageTable {
            node,
            images_dir: data_dir.join("images"),
            engine,
            catalog,
            open: DashMap::new(),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The copy of `image`, opened on first use (the catalog must place a
    /// copy of it on this node).
    pub async fn get(&self, image: &ImageName) -> Result<Arc<ImageCopy>, CopyError> {
        if let Some(c) = self.open.get(image) {
            return Ok(Arc::clone(&c));
        }
        let _one = self.opening.lock().await;
        if let Some(c) = self.open.get(image) {
            return Ok(Arc::clone(&c));
        }
        let size = self.catalog.copy_size(image, &self.node).await?;
        let copy = Arc::new(ImageCopy::open(&self.images_dir, image, size, self.engine).await?);
        self.open.insert(image.clone(), Arc::clone(&copy));
        Ok(copy)
    }

    /// Flushes every open copy (at shutdown).
    pub async fn flush_all(&self) {
        let copies: Vec<_> = self.open.iter().map(|e| Arc::clone(e.value())).collect();
        for c in copies {
            if let Err(e) = c.backend.flush().await {
                tracing::error!(image = %c.name, error = %e, "flush of a copy failed");
            }
        }
    }
}
