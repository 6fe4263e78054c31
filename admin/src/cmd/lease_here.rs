//! Taking an image's write lease in the `locus` process itself, as node
//! [`CLI_NODE`], for the commands that need the image's writer while no
//! node serves it: `image sync` and `verify` run here, `import`, `export`.
//!
//! The writer is an ordinary [`Writer`]: it reconciles the previous
//! writer's extents like any new writer, writes every copy (protocol C) and
//! is fenced like any other (invariants 1, 4, 5, ARCHITECTURE.md). It holds
//! no copy itself: its image table is an empty temporary directory.
//! Knows nothing of what the writer is used for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockmap::store::MetadataStore;
use blockmap::types::{ImageName, NodeId, UnixMillis};
use blockmap::writer::Lease;
use drbd_like_sync::mirror::{MirrorConfig, Writer, WriterConfig, WriterError};
use drbd_like_sync::node::{ImageTable, StoreCatalog};
use drbd_like_sync::proto::{ClusterSecret, HandshakeConfig};
use drbd_like_sync::storage::EngineChoice;

use crate::exit::{chain, CliError, CliResult};

/// The node id `locus` uses when it takes a lease itself.
pub const CLI_NODE: &str = "locus-cli";

/// `--cluster-secret-file`, flattened into the commands that may take an
/// image's lease here.
#[derive(Debug, clap::Args)]
pub struct SecretArg {
    /// Cluster secret file (the one locusd is given), so that locus can
    /// take the image's write lease itself when no node holds it.
    #[arg(long, env = "LOCUS_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
}

/// The lease of `image` when a node other than `locus` holds it and it has
/// not expired: that node is the image's writer, and `locus` cannot take
/// the lease now. `None` when the lease is free, expired, or an earlier
/// `locus` run's.
pub async fn live_holder(store: &dyn MetadataStore, image: &ImageName) -> CliResult<Option<Lease>> {
    let lease = store.get_lease(image).await?;
    Ok(lease.filter(|l| !l.expired_at(UnixMillis::now()) && l.holder.as_str() != CLI_NODE))
}

/// An image's writer taken by `locus`, with the temporary directory its
/// image table points at. Dropping it without [`WriterHere::close`] is a
/// crash: the lease expires after its TTL and the next writer reconciles.
pub struct WriterHere {
    writer: Writer,
    _dir: tempfile::TempDir,
}

impl WriterHere {
    /// Takes the write lease of `image` as [`CLI_NODE`] with the cluster
    /// secret (see [`read_secret`]), reconciles, and returns the serving
    /// writer. Refused (exit 3) while another node holds the lease.
    pub async fn take(
        store: &Arc<dyn MetadataStore>,
        image: &ImageName,
        secret: ClusterSecret,
    ) -> CliResult<WriterHere> {
        let node = NodeId::new(CLI_NODE).map_err(CliError::Store)?;
        let dir = tempfile::tempdir()
            .map_err(|e| CliError::Invalid(format!("cannot make a temporary directory: {e}")))?;
        let table = Arc::new(ImageTable::new(
            node.clone(),
            dir.path(),
            EngineChoice::Auto.into(),
            Arc::new(StoreCatalog(Arc::clone(store))),
        ));
        let handshake = HandshakeConfig {
            node_id: node,
            secret,
        };
        let cfg = WriterConfig::new(MirrorConfig::new(
            image.clone(),
            drbd_like_sync::core::Generation(0),
            handshake,
        ));
        let writer = Writer::take(cfg, Arc::clone(store), table)
            .await
            .map_err(|e| {
                CliError::Refused(format!("cannot take the write lease: {}", chain(&e)))
            })?;
        Ok(WriterHere { writer, _dir: dir })
    }

    /// The writer, to read and write the image through.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Flushes every copy and releases the lease (see [`Writer::close`]).
    pub async fn close(self) -> Result<(), WriterError> {
        self.writer.close().await
    }
}

/// The cluster secret in `path`, without a trailing newline (as locusd
/// reads it). An unreadable file is bad input (exit 1).
pub fn read_secret(path: &Path) -> CliResult<ClusterSecret> {
    let mut s = std::fs::read(path).map_err(|e| {
        CliError::Invalid(format!(
            "cannot read the cluster secret file {}: {e}",
            path.display()
        ))
    })?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    Ok(ClusterSecret::new(s))
}
