//! The writer's lease on an image (invariant 4, ARCHITECTURE.md).
//!
//! Owns: whether this writer holds the lease, its generation, and until when
//! it may acknowledge writes. Knows nothing of the metadata store: the caller
//! sends the requests this machine asks for and reports the replies.
//!
//! ```text
//!          Acquire                 Granted(g)              ReconcileDone
//!   Free --------> Acquiring --------------> Reconciling(g) -----------> Serving(g)
//!    ^               |  Refused                  |                        |  ^
//!    |               v                           |  renew due: SendRenew  v  | RenewOk / RenewFailed
//!    |             Free                          |                    Serving(g) + renewal in flight
//!    |                                           |                        |
//!    |        tick(now >= deadline): StopServing |                        |
//!    |              Lost(g) <--------------------+------------------------'
//!    |  Release: SendRelease
//!    `------------------------------ Released(g) <-- any held state
//! ```
//!
//! The rule that makes fencing safe: the deadline is measured from the time
//! the last *successful* request (acquire or renewal) was **sent**, not from
//! when its reply came: `deadline = sent_at + ttl - margin`. The store starts
//! its TTL when it receives the request, which is after we sent it, so our
//! deadline always falls at least `margin` before the store could grant the
//! lease to a new writer (the margin also absorbs clock-rate drift). A writer
//! that fails to renew stops acknowledging at its deadline.

use super::units::{Generation, Millis};

/// Lease timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long the store keeps a lease after receiving a request.
    pub ttl: Millis,
    /// Subtracted from the TTL on our side; must be below `ttl`.
    pub margin: Millis,
    /// Renew when this long has passed since the last request was sent.
    pub renew_after: Millis,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Millis(10_000),
            margin: Millis(2_000),
            renew_after: Millis(3_000),
        }
    }
}

/// What the holder is doing with a held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running the reconciliation plan; must not acknowledge yet.
    Reconciling,
    /// Serving I/O.
    Serving,
}

/// A lease held, with its renewal progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Our generation.
    pub generation: Generation,
    /// Reconciling or serving.
    pub phase: Phase,
    /// Acknowledge only while `now < deadline`.
    pub deadline: Millis,
    /// When the last successful request was sent.
    pub last_sent: Millis,
    /// A renewal request in flight, with the time it was sent.
    pub renewal: Option<Millis>,
}

/// The lease states (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Not held, nothing asked.
    Free,
    /// An acquire request sent at `sent_at`.
    Acquiring {
        /// When the request was sent.
        sent_at: Millis,
    },
    /// Held (reconciling or serving).
    Held(Held),
    /// The deadline passed without a successful renewal.
    Lost {
        /// The generation we held.
        generation: Generation,
    },
    /// Given up on purpose.
    Released {
        /// The generation we held.
        generation: Generation,
    },
}

/// What the caller reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Start taking the lease.
    Acquire,
    /// The store granted the lease with this generation (the previous one
    /// plus one on a takeover).
    Granted(Generation),
    /// The store refused: another writer holds an unexpired lease.
    Refused,
    /// The reconciliation plan completed: serving may begin.
    ReconcileDone,
    /// The renewal in flight succeeded.
    RenewOk,
    /// The renewal in flight failed or timed out.
    RenewFailed,
    /// Give the lease up.
    Release,
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEffect {
    /// Ask the store for the lease.
    SendAcquire,
    /// Ask the store to renew our lease of generation `G`.
    SendRenew(Generation),
    /// Run the reconciliation plan with generation `G` before serving.
    StartReconcile(Generation),
    /// Stop acknowledging at once: fail in-flight commands, stop serving.
    StopServing,
    /// Tell the store we release generation `G`.
    SendRelease(Generation),
}

/// An event that does not fit the state; the machine is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lease event {event:?} is invalid in state {state:?}")]
pub struct LeaseError {
    /// The event.
    pub event: LeaseEvent,
    /// The state it arrived in.
    pub state: LeaseState,
}

/// The lease machine of one writer for one image. Never panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    cfg: LeaseConfig,
    state: LeaseState,
}

impl Lease {
    /// A free lease.
    pub fn new(cfg: LeaseConfig) -> Self {
        Lease {
            cfg,
            state: LeaseState::Free,
        }
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        self.state
    }

    /// Our generation while held.
    pub fn generation(&self) -> Option<Generation> {
        match self.state {
            LeaseState::Held(h) => Some(h.generation),
            _ => None,
        }
    }

    fn deadline_from(&self, sent_at: Millis) -> Millis {
        sent_at.plus(self.cfg.ttl).minus(self.cfg.margin)
    }

    /// May a write be acknowledged at `now`? Only while serving and strictly
    /// before the deadline (call [`Lease::tick`] too, so that effects fire).
    pub fn may_ack(&self, now: Millis) -> bool {
        matches!(self.state, LeaseState::Held(h) if h.phase == Phase::Serving && now < h.deadline)
    }

    /// The one checked transition. On error the state is unchanged.
    pub fn step(&mut self, ev: LeaseEvent, now: Millis) -> Result<Vec<LeaseEffect>, LeaseError> {
        let err = LeaseError {
            event: ev,
            state: self.state,
        };
        let (next, effects) = match (self.state, ev) {
            (
                LeaseState::Free | LeaseState::Lost { .. } | LeaseState::Released { .. },
                LeaseEvent::Acquire,
            ) => (
                LeaseState::Acquiring { sent_at: now },
                vec![LeaseEffect::SendAcquire],
            ),
            (LeaseState::Acquiring { sent_at }, LeaseEvent::Granted(g)) => {
                let deadline = self.deadline_from(sent_at);
                if now >= deadline {
                    // The grant came too late to use: treat it as lost.
                    (LeaseState::Lost { generation: g }, vec![])
                } else {
                    let h = Held {
                        generation: g,
                        phase: Phase::Reconciling,
                        deadline,
                        last_sent: sent_at,
                        renewal: None,
                    };
                    (LeaseState::Held(h), vec![LeaseEffect::StartReconcile(g)])
                }
            }
            (LeaseState::Acquiring { .. }, LeaseEvent::Refused) => (LeaseState::Free, vec![]),
            (LeaseState::Held(h), LeaseEvent::ReconcileDone) if h.phase == Phase::Reconciling => {
                let h = Held {
                    phase: Phase::Serving,
                    ..h
                };
                (LeaseState::Held(h), vec![])
            }
            (LeaseState::Held(h), LeaseEvent::RenewOk) => match h.renewal {
                Some(sent_at) => {
                    // Measured from the send time, never from the reply.
                    let h = Held {
                        deadline: h.deadline.max(self.deadline_from(sent_at)),
                        last_sent: sent_at,
                        renewal: None,
                        ..h
                    };
                    (LeaseState::Held(h), vec![])
                }
                None => return Err(err),
            },
            (LeaseState::Held(h), LeaseEvent::RenewFailed) if h.renewal.is_some() => {
                let h = Held { renewal: None, ..h };
                (LeaseState::Held(h), vec![])
            }
            (LeaseState::Held(h), LeaseEvent::Release) => (
                LeaseState::Released {
                    generation: h.generation,
                },
                vec![
                    LeaseEffect::StopServing,
                    LeaseEffect::SendRelease(h.generation),
                ],
            ),
            _ => return Err(err),
        };
        self.state = next;
        let mut effects = effects;
        effects.extend(self.tick(now));
        Ok(effects)
    }

    /// Time passed: stops serving at the deadline and asks for a renewal
    /// when one is due. Call it on a timer and before each acknowledgement.
    pub fn tick(&mut self, now: Millis) -> Vec<LeaseEffect> {
        let LeaseState::Held(h) = self.state else {
            return vec![];
        };
        if now >= h.deadline {
            self.state = LeaseState::Lost {
                generation: h.generation,
            };
            return vec![LeaseEffect::StopServing];
        }
        if h.renewal.is_none() && now >= h.last_sent.plus(self.cfg.renew_after) {
            self.state = LeaseState::Held(Held {
                renewal: Some(now),
                ..h
            });
            return vec![LeaseEffect::SendRenew(h.generation)];
        }
        vec![]
    }
}
