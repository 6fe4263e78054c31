//! The peer connector: one [`PeerClient`] per remote copy's node, found
//! through the node registry, connected on first use and again, lazily,
//! after a failure; and each peer's measured latency (an EWMA of call
//! times) for the read preference of invariant 3 (ARCHITECTURE.md).
//!
//! Owns connections and latency estimates. Knows nothing of images,
//! placement or the ack rule. The registry is read only to (re)connect and
//! to learn sites, never per I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockmap::store::MetadataStore;
use blockmap::types::NodeId;
use dashmap::DashMap;

use crate::node::{ClientError, PeerClient};
use crate::proto::{HandshakeConfig, Limits};

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The node registry does not know the node, or cannot answer.
    #[error("cannot look up node {node} in the registry")]
    Registry {
        /// The node.
        node: NodeId,
        /// The store's error.
        #[source]
        source: blockmap::Error,
    },
    /// The registered address does not resolve.
    #[error("node {node}: address {address} does not resolve")]
    Address {
        /// The node.
        node: NodeId,
        /// The registered address.
        address: String,
    },
    /// Connecting or the handshake failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// One peer: its connection (if any), its site and latency.
#[derive(Default)]
struct Slot {
    /// The live client; `None` before the first use and after a failure.
    client: tokio::sync::Mutex<Option<Arc<PeerClient>>>,
    /// Site label from the registry (learned at open or on connect).
    site: Mutex<Option<String>>,
    /// Smoothed call time in microseconds; 0 = not measured yet.
    latency_us: AtomicU64,
}

/// The connector.
pub(crate) struct Peers {
    store: Arc<dyn MetadataStore>,
    handshake: HandshakeConfig,
    limits: Limits,
    connect_timeout: Duration,
    slots: DashMap<NodeId, Arc<Slot>>,
}

impl Peers {
    pub(crate) fn new(
        store: Arc<dyn MetadataStore>,
        handshake: HandshakeConfig,
        limits: Limits,
        connect_timeout: Duration,
    ) -> Self {
        Peers {
            store,
            handshake,
            limits,
            connect_timeout,
            slots: DashMap::new(),
        }
    }

    fn slot(&self, node: &NodeId) -> Arc<Slot> {
        Arc::clone(&self.slots.entry(node.clone()).or_default())
    }

    /// Learns `node`'s site from the registry (best effort: unknown stays
    /// `None`, which only lowers the node in the read order).
    pub(crate) async fn learn_site(&self, node: &NodeId) {
        if let Ok(n) = blockmap::ops::get_node(self.store.as_ref(), node).await {
            *self
                .slot(node)
                .site
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = n.site;
        }
    }

    /// The site label of `node`, if known.
    pub(crate) fn site(&self, node: &NodeId) -> Option<String> {
        self.slots
            .get(node)
            .and_then(|s| s.site.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The client for `node`, connecting if there is none. Concurrent
    /// callers share one connection attempt.
    pub(crate) async fn client(&self, node: &NodeId) -> Result<Arc<PeerClient>, PeerError> {
        let slot = self.slot(node);
        let mut c = slot.client.lock().await;
        if let Some(live) = c.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(live));
        }
        let entry = blockmap::ops::get_node(self.store.as_ref(), node)
            .await
            .map_err(|source| PeerError::Registry {
                node: node.clone(),
                source,
            })?;
        *slot.site.lock().unwrap_or_else(|e| e.into_inner()) = entry.site.clone();
        let addr: SocketAddr = tokio::net::lookup_host(entry.address.as_str())
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| PeerError::Address {
                node: node.clone(),
                address: entry.address.clone(),
            })?;
        let client = PeerClient::connect(
            addr,
            self.handshake.clone(),
            Some(node),
            self.limits,
            self.connect_timeout,
        )
        .await?;
        let client = Arc::new(client);
        *c = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Drops `client` (if it is still `node`'s), so the next call
    /// reconnects. Called after a lost connection or a timeout.
    pub(crate) async fn forget(&self, node: &NodeId, client: &Arc<PeerClient>) {
        let slot = self.slot(node);
        let mut c = slot.client.lock().await;
        if c.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *c = None;
        }
    }

    /// Folds one call time into `node`'s EWMA (weight 1/8 for the new
    /// sample, as TCP's SRTT).
    pub(crate) fn record_latency(&self, node: &NodeId, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let slot = self.slot(node);
        let old = slot.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old.saturating_mul(7).saturating_add(sample)) / 8
        };
        slot.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// `node`'s smoothed latency in microseconds, if measured.
    pub(crate) fn latency_us(&self, node: &NodeId) -> Option<u64> {
        self.slots
            .get(node)
            .map(|s| s.latency_us.load(Ordering::Relaxed))
            .filter(|l| *l > 0)
    }
}
