//! The storage role inside `locusd`: serves this node's copies to peers on
//! its replication address (`drbd_like_sync::node::serve`), authenticated
//! with the cluster secret.
//!
//! Owns the decisions an operator sees at start: where to listen (the
//! `--replication-listen` address, else the `--address` the node was
//! registered with), where the secret comes from (`--cluster-secret-file`
//! or `LOCUS_CLUSTER_SECRET_FILE`), and whether the role runs at all (it
//! needs a metadata store, a node id and a secret; with `--role storage`
//! each missing piece is an error that names it, otherwise the role is off
//! and the log says why). Knows nothing of the wire protocol.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use blockmap::store::MetadataStore;
use blockmap::types::{ImageName, NodeId};
use drbd_like_sync::node::{Catalog, CopyError, ImageTable, NodeConfig, StorageNode, StoreCatalog};
use drbd_like_sync::proto::ClusterSecret;
use tokio::net::TcpListener;

use super::config::{Config, Role};
use super::metadata::open_store;

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why the storage role cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StorageRoleError {
    /// `--role storage` without a metadata store.
    #[error("--role storage needs a metadata store (--metadata / LOCUS_METADATA): the copies it serves are placed there")]
    NoStore,
    /// No secret file was given.
    #[error("--role storage needs the cluster secret (--cluster-secret-file FILE or LOCUS_CLUSTER_SECRET_FILE)")]
    NoSecret,
    /// The secret file cannot be used.
    #[error("cluster secret file {path}: {why}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No replication address: not given and the node is not registered.
    #[error("node {node} has no replication address: register it with `locus node add {node} --address HOST:PORT`, or pass --replication-listen ADDR")]
    NoAddress {
        /// This node.
        node: NodeId,
    },
    /// The registered address is not a socket address this node can bind.
    #[error("node {node} is registered with address {address:?}, which is not HOST:PORT with a numeric host; pass --replication-listen ADDR")]
    BadAddress {
        /// This node.
        node: NodeId,
        /// The registered address.
        address: String,
    },
    /// The replication address cannot be bound.
    #[error("cannot listen for replication on {addr} (another locusd there, or not an address of this host?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node registry could not be read.
    #[error("cannot read node {node} from the metadata store")]
    Store {
        /// This node.
        node: NodeId,
        /// The store's error.
        #[source]
        source: blockmap::Error,
    },
}

/// Reads the cluster secret: the file's bytes without a trailing newline,
/// at least [`MIN_SECRET_LEN`] of them. A file others can read is allowed
/// with a warning.
pub fn read_secret(path: &Path) -> Result<ClusterSecret, StorageRoleError> {
    let bad = |why: String| StorageRoleError::Secret {
        path: path.to_owned(),
        why,
    };
    let mut bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < MIN_SECRET_LEN {
        return Err(bad(format!(
            "the secret is {} bytes; use at least {MIN_SECRET_LEN} (for example `head -c 32 /dev/urandom | base64 > FILE`)",
            bytes.len()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "the cluster secret file is readable by other users; chmod 600 it");
        }
    }
    Ok(ClusterSecret::new(bytes))
}

/// A storage role ready to serve.
pub struct StorageRole {
    /// The bound replication listener.
    pub listener: TcpListener,
    /// The node with its copies.
    pub node: Arc<StorageNode>,
}

/// This node's table of copies, opened on first use, with sizes from the
/// store at `url` (reopened once after the store failed). The storage role
/// and the target role's writers share it, so the local copy has one
/// generation gate.
pub async fn image_table(
    cfg: &Config,
    url: &str,
    node: &NodeId,
) -> Result<Arc<ImageTable>, StorageRoleError> {
    let store = open_store(url)
        .await
        .map_err(|source| StorageRoleError::Store {
            node: node.clone(),
            source,
        })?;
    let catalog = Arc::new(Reopening {
        url: url.to_string(),
        current: std::sync::RwLock::new(Arc::new(StoreCatalog(store))),
    });
    Ok(Arc::new(ImageTable::new(
        node.clone(),
        &cfg.data_dir,
        cfg.engine_config(),
        catalog,
    )))
}

/// Reads the cluster secret named by the config, if any.
pub fn secret_of(cfg: &Config) -> Result<Option<ClusterSecret>, StorageRoleError> {
    cfg.cluster_secret_file
        .as_deref()
        .map(read_secret)
        .transpose()
}

/// Prepares the storage role for `cfg`, or `Ok(None)` when it is off (the
/// log says why). `table` holds this node's copies; `secret` is the
/// cluster secret read from the config's file, if any.
pub async fn prepare(
    cfg: &Config,
    url: Option<&str>,
    node: &NodeId,
    table: Option<Arc<ImageTable>>,
    secret: Option<ClusterSecret>,
) -> Result<Option<StorageRole>, StorageRoleError> {
    let required = cfg.role == Role::Storage;
    let off = |why: &str| {
        tracing::info!(reason = why, "storage role off");
        Ok(None)
    };
    let (Some(url), Some(table)) = (url, table) else {
        return if required {
            Err(StorageRoleError::NoStore)
        } else {
            Ok(None)
        };
    };
    let Some(secret) = secret else {
        return if required {
            Err(StorageRoleError::NoSecret)
        } else {
            off("no cluster secret (--cluster-secret-file)")
        };
    };
    let store = open_store(url)
        .await
        .map_err(|source| StorageRoleError::Store {
            node: node.clone(),
            source,
        })?;
    let addr = match cfg.replication_listen {
        Some(a) => a,
        None => registered_address(&*store, node).await?,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StorageRoleError::Bind { addr, source })?;
    let node = Arc::new(StorageNode::new(
        NodeConfig::new(node.clone(), secret),
        table,
    ));
    if let Ok(a) = listener.local_addr() {
        tracing::info!(replication = %a, "storage role serving copies to peers");
    }
    Ok(Some(StorageRole { listener, node }))
}

async fn registered_address(
    store: &dyn MetadataStore,
    node: &NodeId,
) -> Result<SocketAddr, StorageRoleError> {
    let n = match blockmap::ops::get_node(store, node).await {
        Ok(n) => n,
        Err(blockmap::Error::UnknownNode(_)) => {
            return Err(StorageRoleError::NoAddress { node: node.clone() })
        }
        Err(source) => {
            return Err(StorageRoleError::Store {
                node: node.clone(),
                source,
            })
        }
    };
    n.address.parse().map_err(|_| StorageRoleError::BadAddress {
        node: node.clone(),
        address: n.address.clone(),
    })
}

/// The store catalog, reopened once after the store failed (a Redis
/// connection does not come back by itself after a server restart).
struct Reopening {
    url: String,
    current: std::sync::RwLock<Arc<StoreCatalog>>,
}

#[async_trait]
impl Catalog for Reopening {
    async fn copy_size(&self, image: &ImageName, node: &NodeId) -> Result<u64, CopyError> {
        let cat = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match cat.copy_size(image, node).await {
            Err(CopyError::Catalog { .. }) => {
                let fresh = open_store(&self.url)
                    .await
                    .map_err(|source| CopyError::Catalog {
                        image: image.clone(),
                        source,
                    })?;
                let fresh = Arc::new(StoreCatalog(fresh));
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
                fresh.copy_size(image, node).await
            }
            other => other,
        }
    }
}
