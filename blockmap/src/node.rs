//! The node registry entry: id, replication address, site, capacity, state
//! and last heartbeat.

use crate::error::{Error, Result};
use crate::types::{ByteSize, NodeId, UnixTime};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Liveness state of a node. Every transition is legal; [`Node::set_state`]
/// records when it happened so that `locus errors` can say "since when".
///
/// ```text
///   Up <----> Down
///    ^         ^
///    +-> Standby <-+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Serving.
    Up,
    /// Not answering; its copies cannot be read.
    Down,
    /// Reachable but not taking new work.
    Standby,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Standby => "standby",
        })
    }
}

/// A heartbeat older than this (three missed beats of `locusd`'s 5 s
/// interval) means the node is down, whatever its recorded state.
pub const HEARTBEAT_STALE_SECS: u64 = 15;

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Replication address, `HOST:PORT`.
    pub address: String,
    /// Site or zone label, for read preference.
    pub site: Option<String>,
    /// Storage capacity in bytes (0: unknown).
    pub capacity: ByteSize,
    /// Current state.
    pub state: NodeState,
    /// When the state last changed.
    pub state_since: UnixTime,
    /// Last heartbeat received, if any.
    pub last_heartbeat: Option<UnixTime>,
}

impl Node {
    /// A new node, state up, validating the address.
    pub fn new(
        id: NodeId,
        address: &str,
        site: Option<String>,
        capacity: ByteSize,
    ) -> Result<Self> {
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| Error::invalid("address", format!("'{address}' must be HOST:PORT")))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(Error::invalid(
                "address",
                format!("'{address}' must be HOST:PORT with a port from 1 to 65535"),
            ));
        }
        Ok(Self {
            id,
            address: address.to_string(),
            site,
            capacity,
            state: NodeState::Up,
            state_since: UnixTime::now(),
            last_heartbeat: None,
        })
    }

    /// The state that liveness shows at `now`: a node recorded up whose
    /// last heartbeat is older than [`HEARTBEAT_STALE_SECS`] (or that never
    /// sent one) is down; `locusd` beats every 5 s while it runs.
    pub fn live_state(&self, now: UnixTime) -> NodeState {
        let fresh = self
            .last_heartbeat
            .is_some_and(|t| now.0.saturating_sub(t.0) <= HEARTBEAT_STALE_SECS);
        match self.state {
            NodeState::Up if !fresh => NodeState::Down,
            s => s,
        }
    }

    /// Changes state, recording when.
    pub fn set_state(&mut self, state: NodeState) {
        if self.state != state {
            self.state = state;
            self.state_since = UnixTime::now();
        }
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    #[test]
    fn up_only_while_heartbeats_are_fresh() {
        let mut n = Node::new(
            NodeId::new("a").unwrap(),
            "127.0.0.1:7900",
            None,
            ByteSize(0),
        )
        .unwrap();
        let t = UnixTime(1_000_000);
        assert_eq!(n.live_state(t), NodeState::Down, "never beat");
        n.last_heartbeat = Some(t);
        assert_eq!(
            n.live_state(UnixTime(t.0 + HEARTBEAT_STALE_SECS)),
            NodeState::Up
        );
        assert_eq!(
            n.live_state(UnixTime(t.0 + HEARTBEAT_STALE_SECS + 1)),
            NodeState::Down
        );
        n.set_state(NodeState::Standby);
        assert_eq!(
            n.live_state(t),
            NodeState::Standby,
            "a recorded state other than up stays"
        );
    }
}
