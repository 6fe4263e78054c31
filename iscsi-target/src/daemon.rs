//! The daemon shell: accepts connections on every portal, hands each to the
//! session layer, and shuts down gracefully (Async logout requests, drain,
//! flush). `locusd`'s `main` only parses arguments and calls [`run`]; tests
//! call the same [`run`] on `127.0.0.1:0` listeners.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::login::TargetLimits;
use crate::session::{serve_connection, ConnParams, ConnectionContext, SessionRegistry};
use crate::targets::{TargetSet, TargetSetupError};

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

/// Serves `targets` on `listeners` until `shutdown` becomes true, then asks
/// every initiator to log out, waits for running commands, and flushes every
/// LUN to stable storage.
pub async fn run(
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
