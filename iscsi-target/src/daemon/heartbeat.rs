//! Node liveness: while `locusd` runs with a metadata store, it refreshes
//! its node's heartbeat in the node registry every [`INTERVAL`], so that
//! `locus cluster status` tells up from down by real liveness, and marks
//! the node down when it shuts down cleanly.
//!
//! Owns only the timer loop; the record is `blockmap::ops::heartbeat`. A
//! store error is logged once per change of outcome (not every beat) and
//! never stops the daemon: the next beat tries again, on the handle that
//! `store` returns then (the target role's `StoreSync` keeps it fresh
//! across a Redis restart).

use std::sync::Arc;
use std::time::Duration;

use blockmap::node::NodeState;
use blockmap::ops;
use tokio::sync::watch;

use blockmap::store::MetadataStore;
use blockmap::types::NodeId;

/// Time between two heartbeats. A node whose last heartbeat is older than
/// three of these is shown as down (`blockmap::ops::cluster_status`).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Beats once now, then every [`INTERVAL`] until `shutdown` becomes true;
/// then records the node as down. Cancel-safe: dropping the future stops
/// the beats without a final record.
pub async fn run(
    store: impl Fn() -> Arc<dyn MetadataStore> + Send + 'static,
    node: NodeId,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
        }
        let result = ops::heartbeat(&*store(), &node, NodeState::Up).await;
        match (result, &failing) {
            (Ok(_), Some(_)) => {
                tracing::info!(node = %&node, "heartbeats reach the metadata store again");
                failing = None;
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                let msg = e.to_string();
                if failing.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(node = %&node, error = %msg,
                        "cannot record this node's heartbeat; `locus cluster status` will show it down");
                    failing = Some(msg);
                }
            }
        }
    }
    if let Err(e) = ops::heartbeat(&*store(), &node, NodeState::Down).await {
        tracing::warn!(node = %&node, error = %e, "cannot record this node as down at shutdown");
    }
}
