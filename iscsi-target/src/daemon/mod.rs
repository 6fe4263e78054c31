//! The daemon shell around the protocol library: the configuration
//! ([`config`]), the target set ([`targets`]), the metadata store's targets
//! and its change feed ([`metadata`]), image-backed LUNs ([`imagelun`]), and
//! one [`run`] that serves them on every portal, hands each connection to
//! the session layer, and shuts down gracefully (Async logout requests,
//! drain, flush). `locusd`'s `main` only parses arguments and calls
//! [`run`]; tests call the same [`run`] on `127.0.0.1:0` listeners.
//!
//! The protocol modules (`pdu`, `login`, `session`, `scsi`) know nothing of
//! this shell.

pub mod config;
pub mod heartbeat;
pub mod imagelun;
pub mod jobs;
pub mod metadata;
pub mod mirrored;
pub mod storage_role;
pub mod targets;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::daemon::config::Config;
use crate::daemon::targets::{TargetSet, TargetSetupError};
use crate::login::TargetLimits;
use crate::session::{
    serve_connection, AuthThrottle, ConnParams, ConnectionContext, SessionRegistry,
};

/// How long shutdown waits for sessions beyond their logout grace period.
const DRAIN_MARGIN: Duration = Duration::from_secs(10);

/// Builds the targets of `cfg` (creating the data dir and sparse images when
/// absent).
pub fn build_targets(
    cfg: &Config,
    listeners: &[TcpListener],
) -> Result<Arc<TargetSet>, TargetSetupError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        TargetSetupError::Config(format!(
            "cannot create data dir {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let portals: Vec<_> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    Ok(Arc::new(TargetSet::from_config(cfg, &portals)?))
}

/// The connection settings from the config that login does not negotiate.
pub fn base_params(cfg: &Config) -> ConnParams {
    ConnParams {
        queue_depth: cfg.queue_depth,
        nop_interval: Duration::from_secs(cfg.nop_interval_secs.max(1)),
        nop_timeout: Duration::from_secs(cfg.nop_timeout_secs.max(1)),
        ..ConnParams::default()
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A configured target or LUN could not be built.
    #[error(transparent)]
    Targets(#[from] TargetSetupError),
    /// The storage role cannot start (secret, address, store).
    #[error(transparent)]
    StorageRole(#[from] storage_role::StorageRoleError),
    /// The node id is not a valid node name.
    #[error("invalid node id")]
    NodeId(#[source] blockmap::Error),
    /// The metadata store could not be opened or read at start.
    #[error("cannot serve the targets of the metadata store {url} (--metadata / LOCUS_METADATA)")]
    Store {
        /// The store's URL.
        url: String,
        /// The store's own message.
        #[source]
        source: blockmap::Error,
    },
}

/// The whole daemon: builds the targets of `cfg` (creating the data dir and
/// sparse images when absent), serves the metadata store's targets too when
/// `cfg.metadata` names one, and serves every portal in `listeners` until
/// `shutdown` becomes true (see [`serve`]). `main` and the tests call this
/// one function.
pub async fn run(
    cfg: Config,
    listeners: Vec<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let node_name = cfg.node.clone().unwrap_or_else(metadata::default_node_id);
    let node = blockmap::types::NodeId::new(node_name.as_str()).map_err(DaemonError::NodeId)?;
    let mut tasks = Vec::new();
    let secret = storage_role::secret_of(&cfg)?;
    let table = match cfg.metadata.as_deref() {
        Some(url) => Some(storage_role::image_table(&cfg, url, &node).await?),
        None => None,
    };
    if let Some(role) = storage_role::prepare(
        &cfg,
        cfg.metadata.as_deref(),
        &node,
        table.clone(),
        secret.clone(),
    )
    .await?
    {
        tasks.push(tokio::spawn(drbd_like_sync::node::serve(
            role.listener,
            role.node,
            shutdown.clone(),
        )));
    }
    if cfg.role == config::Role::Storage {
        // The storage role alone: no portal, no targets; the node still
        // beats so `locus cluster status` shows it up.
        let url = cfg.metadata.clone().unwrap_or_default();
        let store = metadata::open_store(&url)
            .await
            .map_err(|source| DaemonError::Store { url, source })?;
        metadata::warn_if_not_durable(&*store).await;
        tasks.push(tokio::spawn(heartbeat::run(
            move || Arc::clone(&store),
            node,
            shutdown,
        )));
        for task in tasks {
            let _ = task.await;
        }
        return Ok(());
    }
    let targets = build_targets(&cfg, &listeners)?;
    let mut store_sync = None;
    if let Some(url) = &cfg.metadata {
        let mirroring = match (metadata::is_shared_store(url), table) {
            (true, Some(table)) => Some(
                mirroring_context(&cfg, url, &node, table, secret)
                    .await
                    .map_err(|source| DaemonError::Store {
                        url: url.clone(),
                        source,
                    })?,
            ),
            _ => None,
        };
        let (sync, task) = metadata::start(
            url,
            &node_name,
            targets.clone(),
            &cfg,
            mirroring,
            shutdown.clone(),
        )
        .await
        .map_err(|source| DaemonError::Store {
            url: url.clone(),
            source,
        })?;
        store_sync = Some(sync.clone());
        tracing::info!(node = %node, "serving the targets of the metadata store too");
        tasks.push(task);
        tasks.push(tokio::spawn(heartbeat::run(
            move || sync.store(),
            node,
            shutdown.clone(),
        )));
    }
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(portal = %addr, data_dir = %cfg.data_dir.display(), "locusd listening");
        }
    }
    if cfg.targets.iter().any(|t| t.name == config::DEFAULT_TARGET) {
        tracing::info!(
            target = config::DEFAULT_TARGET,
            "serving the default target"
        );
    }
    serve(&cfg, targets, listeners, shutdown).await;
    // Every writer flushes its copies and gives its lease back, so the
    // next holder need not wait out the TTL.
    if let Some(sync) = store_sync {
        sync.close_all().await;
        tracing::info!("mirrored writers closed: copies flushed, leases released");
    }
    // The feed loop, the heartbeat and the storage role end on the same
    // shutdown signal; the heartbeat records the node as down on its way
    // out, and the storage role flushes its copies.
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// What the writers of this node share: its copies, its cluster secret,
/// its site (from the node registry), and the lease TTL.
async fn mirroring_context(
    cfg: &Config,
    url: &str,
    node: &blockmap::types::NodeId,
    table: Arc<drbd_like_sync::node::ImageTable>,
    secret: Option<drbd_like_sync::proto::ClusterSecret>,
) -> Result<mirrored::MirrorContext, blockmap::Error> {
    let store = metadata::open_store(url).await?;
    let site = match blockmap::ops::get_node(&*store, node).await {
        Ok(n) => n.site,
        Err(_) => None,
    };
    Ok(mirrored::MirrorContext {
        table,
        handshake: secret.map(|secret| drbd_like_sync::proto::HandshakeConfig {
            node_id: node.clone(),
            secret,
        }),
        site,
        lease: mirrored::MirrorContext::lease_from_ttl(cfg.lease_ttl_secs),
        al_extents: cfg.activity_log_extents,
        data_dir: cfg.data_dir.clone(),
    })
}

/// Serves `targets` on `listeners` until `shutdown` becomes true, then asks
/// every initiator to log out, waits for running commands, and flushes every
/// LUN to stable storage. [`run`] calls it after building the targets; tests
/// that build their own target set call it directly.
pub async fn serve(
    cfg: &Config,
    targets: Arc<TargetSet>,
    listeners: Vec<TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    let base = base_params(cfg);
    let grace = base.logout_grace;
    let ctx = Arc::new(ConnectionContext {
        targets: targets.clone(),
        registry: Arc::new(SessionRegistry::default()),
        auth_throttle: AuthThrottle::default(),
        limits: TargetLimits::default(),
        base,
        shutdown: shutdown.clone(),
    });
    let mut accepts = JoinSet::new();
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel();
    for l in listeners {
        let ctx = ctx.clone();
        let conn_tx = conn_tx.clone();
        accepts.spawn(async move {
            loop {
                match l.accept().await {
                    Ok((stream, peer)) => {
                        let task = tokio::spawn(serve_connection(stream, peer, ctx.clone()));
                        if conn_tx.send(task).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(conn_tx);
    let mut conns = Vec::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break; }
            }
            Some(task) = conn_rx.recv() => {
                conns.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                conns.push(task);
            }
        }
    }
    conns.retain(|t| !t.is_finished());
    tracing::info!(
        sessions = conns.len(),
        "shutting down: asking initiators to log out"
    );
    accepts.abort_all();
    while let Ok(task) = conn_rx.try_recv() {
        conns.push(task);
    }
    let drain = futures::future::join_all(conns);
    if tokio::time::timeout(grace + DRAIN_MARGIN, drain)
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not end in time");
    }
    for t in targets.scsi_targets() {
        t.flush_all().await;
    }
    tracing::info!("shutdown complete: all LUNs flushed");
}
