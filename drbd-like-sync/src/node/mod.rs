//! The storage role of a node: it serves its copies of images to peers over
//! the replication protocol ([`crate::proto`]), on its replication address.
//!
//! - [`images`]: the copies this node holds (`<data-dir>/images/NAME.img`)
//!   and the generation gate in front of each (invariant 4,
//!   ARCHITECTURE.md), persisted in `NAME.gen`;
//! - [`conn`] (private): one connection, the handshake then the requests;
//! - [`client`]: the other end, for writers, tools and tests;
//! - [`wire`]: framed reads and batched writes over a socket.
//!
//! [`serve`] is the accept loop; `locusd` calls it with its replication
//! listener, and tests call it on `127.0.0.1:0`.

use std::sync::Arc;
use std::time::Duration;

use blockmap::types::NodeId;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proto::{ClusterSecret, HandshakeConfig, Limits};

pub mod client;
mod conn;
pub mod images;
pub mod wire;

pub use client::{ClientError, PeerClient};
pub use images::{Catalog, CopyError, ImageCopy, ImageTable, StoreCatalog};

/// How a storage node serves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id, bound into the handshake.
    pub node_id: NodeId,
    /// The cluster secret every peer must prove.
    pub secret: ClusterSecret,
    /// Largest frame accepted.
    pub limits: Limits,
    /// How long a new connection may take to authenticate.
    pub handshake_timeout: Duration,
    /// Requests in progress at once per connection (back-pressure).
    pub max_inflight: usize,
}

impl NodeConfig {
    /// Defaults for `node_id` with `secret`: default frame limits, 10 s to
    /// authenticate, 256 requests in flight per connection.
    pub fn new(node_id: NodeId, secret: ClusterSecret) -> Self {
        NodeConfig {
            node_id,
            secret,
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(10),
            max_inflight: 256,
        }
    }
}

/// A storage node: its config and its copies.
pub struct StorageNode {
    cfg: NodeConfig,
    images: Arc<ImageTable>,
}

impl StorageNode {
    /// A node serving the copies of `images`.
    pub fn new(cfg: NodeConfig, images: Arc<ImageTable>) -> Self {
        StorageNode { cfg, images }
    }

    /// The copies.
    pub fn images(&self) -> &Arc<ImageTable> {
        &self.images
    }

    fn handshake_config(&self) -> HandshakeConfig {
        HandshakeConfig {
            node_id: self.cfg.node_id.clone(),
            secret: self.cfg.secret.clone(),
        }
    }
}

/// Accepts replication connections on `listener` until `shutdown` becomes
/// true, then stops accepting, closes the connections and flushes every
/// copy.
pub async fn serve(
    listener: TcpListener,
    node: Arc<StorageNode>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(conn::serve(stream, peer, Arc::clone(&node)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replication accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    node.images.flush_all().await;
}
