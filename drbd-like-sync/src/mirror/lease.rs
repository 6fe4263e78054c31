//! The writer's ack gate and lease renewal (invariant 4, ARCHITECTURE.md):
//! the shell that drives [`crate::core::lease::Lease`] against the metadata
//! store.
//!
//! Owns: the lease machine of one writer, the monotonic clock it is read
//! on (a [`tokio::time::Instant`] epoch, so a paused test clock works), and
//! the renewal task. The mirror asks [`LeaseGate::may_ack`] at the start of
//! every operation and again right before it returns `Ok`; the gate answers
//! from the machine's deadline, computed from when the last successful
//! request was *sent*, so it closes before the store's TTL can run out
//! (by the configured margin), whether or not the renewal task is running.
//!
//! Must not know: the data path, the activity log, reconciliation.
//!
//! ```text
//!   renewal task, every `poll`:
//!     tick(now) --SendRenew(g)--> renew_lease(holder, g, ttl, wall now)
//!                                   | Ok            | Err / no answer
//!                                   v               v  (before the deadline)
//!                                 RenewOk        RenewFailed (retry next poll)
//!     tick(now >= deadline) --StopServing--> Lost: the gate stays closed
//!     Fenced / LeaseNotHeld from the store: revoked, the gate closes at once
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blockmap::store::MetadataStore;
use blockmap::types::{ImageName, NodeId, UnixMillis};
use tokio::time::Instant;

use crate::core::lease::{Lease, LeaseEffect, LeaseEvent, LeaseState};
use crate::core::Millis;

/// The lease machine of one writer behind a lock, on a monotonic clock.
pub(crate) struct LeaseGate {
    epoch: Instant,
    lease: Mutex<Lease>,
    /// Set when the store said the lease is not ours any more (fenced or
    /// not held): no ack from then on, whatever the deadline says.
    revoked: AtomicBool,
}

impl LeaseGate {
    /// A gate over `lease`, whose times are milliseconds since `epoch`.
    pub(crate) fn new(epoch: Instant, lease: Lease) -> Self {
        LeaseGate {
            epoch,
            lease: Mutex::new(lease),
            revoked: AtomicBool::new(false),
        }
    }

    /// Now, on the gate's clock (milliseconds since the epoch, rounded
    /// down: never later than the true time, so never past a deadline).
    pub(crate) fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// The instant of a time on the gate's clock.
    pub(crate) fn instant(&self, t: Millis) -> Instant {
        self.epoch + Duration::from_millis(t.0)
    }

    pub(crate) fn lease(&self) -> MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May an operation be acknowledged now? Only while serving, strictly
    /// before the deadline, and not revoked. Pure: it never changes the
    /// machine (the renewal task ticks it).
    pub(crate) fn may_ack(&self) -> bool {
        !self.revoked.load(Ordering::Acquire) && self.lease().may_ack(self.now())
    }

    /// The instant the gate closes unless a renewal succeeds first.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.lease().state() {
            LeaseState::Held(h) if !self.revoked.load(Ordering::Acquire) => {
                Some(self.instant(h.deadline))
            }
            _ => None,
        }
    }

    /// Closes the gate for good.
    pub(crate) fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }
}

/// What the renewal task needs.
pub(crate) struct Renewal {
    pub gate: Arc<LeaseGate>,
    pub store: Arc<dyn MetadataStore>,
    pub image: ImageName,
    pub holder: NodeId,
    /// The TTL asked of the store.
    pub ttl: Millis,
    /// How often the machine is ticked.
    pub poll: Duration,
}

impl Renewal {
    /// Ticks the machine and sends the renewals it asks for until the
    /// lease is lost, released or revoked. Aborting the task is a crash:
    /// nothing is released, and the gate closes at its deadline.
    pub(crate) async fn run(self) {
        loop {
            let now = self.gate.now();
            let mut effects = self.gate.lease().tick(now);
            while !effects.is_empty() {
                if self.gate.revoked.load(Ordering::Acquire) {
                    return;
                }
                let fx = effects.remove(0);
                match fx {
                    // Reporting the outcome may ask at once for the next
                    // renewal (after a failure): that one is sent too.
                    LeaseEffect::SendRenew(g) => effects.extend(self.renew(g.0).await),
                    LeaseEffect::StopServing => {
                        tracing::error!(image = %self.image, "write lease lost: not acknowledging any more");
                    }
                    other => tracing::warn!(?other, "unexpected lease effect from tick"),
                }
            }
            let over = !matches!(self.gate.lease().state(), LeaseState::Held(_));
            if over || self.gate.revoked.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// One renewal, bounded by the time left before the deadline (an
    /// answer after it could not reopen the gate anyway).
    async fn renew(&self, generation: u64) -> Vec<LeaseEffect> {
        let left = self
            .gate
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        // The wall-clock `now` is read after the monotonic send time the
        // machine recorded, so the store's expiry is never earlier than
        // our deadline plus the margin.
        let call = self.store.renew_lease(
            &self.image,
            &self.holder,
            generation,
            self.ttl.0,
            UnixMillis::now(),
        );
        let ev = match tokio::time::timeout(left, call).await {
            Ok(Ok(_)) => LeaseEvent::RenewOk,
            Ok(Err(e)) => {
                tracing::warn!(image = %self.image, error = %e, "lease renewal failed");
                if matches!(
                    e,
                    blockmap::Error::Fenced { .. } | blockmap::Error::LeaseNotHeld { .. }
                ) {
                    self.gate.revoke();
                }
                LeaseEvent::RenewFailed
            }
            Err(_) => {
                tracing::warn!(image = %self.image, "lease renewal not answered before the deadline");
                LeaseEvent::RenewFailed
            }
        };
        if ev == LeaseEvent::RenewFailed && !self.gate.revoked.load(Ordering::Acquire) {
            // Do not hammer a store that is down: the next try is one poll
            // later (the deadline is unaffected).
            tokio::time::sleep(self.poll).await;
        }
        let now = self.gate.now();
        match self.gate.lease().step(ev, now) {
            Ok(fx) => fx,
            Err(e) => {
                // Lost meanwhile (the deadline passed): nothing to do.
                tracing::debug!(error = %e, "lease event after the lease ended");
                Vec::new()
            }
        }
    }
}
