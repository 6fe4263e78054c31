//! Connection liveness: the NOP-In keepalive (RFC 7143 §11.19, a target
//! ping asks for a NOP-Out answer) and the Async logout request on shutdown
//! (RFC 7143 §11.9.1, AsyncEvent 1, with Parameter3 the time to log out).
//!
//! A data enum per concern and no I/O: the loop asks for the next deadline,
//! sleeps until it, and does what [`Liveness::on_timer`] returns.
//!
//! ```text
//!   keepalive:
//!                   ping_at passes: send NOP-In
//!       Idle{ping_at} ---------------------------> PingOutstanding{dead_at}
//!         ^   | any PDU: ping_at = now+interval     |            |
//!         |   '---'                                 |            | dead_at passes
//!         '-----------  NOP-Out answer  ------------'            v
//!                                                            Dead (drop the peer)
//!   shutdown:
//!       Serving --shutdown: send Async logout request--> LogoutRequested{close_at}
//!                                                            | close_at passes
//!                                                            v
//!                                                          Close
//! ```
//!
//! The two run side by side: a peer asked to log out is still pinged.

use std::time::Duration;

use tokio::time::Instant;

/// The keepalive state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keepalive {
    /// Traffic seen; a ping goes out at `ping_at` unless more arrives.
    Idle { ping_at: Instant },
    /// A ping is out; without an answer by `dead_at` the peer is dead.
    PingOutstanding { dead_at: Instant },
}

/// The shutdown state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// Normal service.
    Serving,
    /// The initiator was asked to log out; the connection closes at
    /// `close_at` if it has not.
    LogoutRequested { close_at: Instant },
}

/// What the loop must do when the liveness timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tick {
    /// Nothing yet (woken early).
    Nothing,
    /// Send a NOP-In ping.
    Ping,
    /// The ping went unanswered: drop the connection.
    Dead,
    /// The logout grace ran out: close.
    Close,
}

/// Keepalive and shutdown state of one connection.
#[derive(Debug)]
pub(super) struct Liveness {
    keepalive: Keepalive,
    shutdown: Shutdown,
    interval: Duration,
    timeout: Duration,
    grace: Duration,
}

impl Liveness {
    /// Starts idle at `now`: `interval` of silence before a ping, `timeout`
    /// for its answer, `grace` to log out when asked.
    pub fn new(now: Instant, interval: Duration, timeout: Duration, grace: Duration) -> Self {
        Liveness {
            keepalive: Keepalive::Idle {
                ping_at: now + interval,
            },
            shutdown: Shutdown::Serving,
            interval,
            timeout,
            grace,
        }
    }

    /// When [`Self::on_timer`] has something to do next.
    pub fn deadline(&self) -> Instant {
        let keepalive = match self.keepalive {
            Keepalive::Idle { ping_at } => ping_at,
            Keepalive::PingOutstanding { dead_at } => dead_at,
        };
        match self.shutdown {
            Shutdown::Serving => keepalive,
            Shutdown::LogoutRequested { close_at } => close_at.min(keepalive),
        }
    }

    /// A PDU arrived: an idle connection's ping moves out. An outstanding
    /// ping still needs its own answer.
    pub fn on_traffic(&mut self, now: Instant) {
        if let Keepalive::Idle { ping_at } = &mut self.keepalive {
            *ping_at = now + self.interval;
        }
    }

    /// The NOP-Out answering a ping arrived (ITT 0xffffffff, RFC 7143 §11.18.1).
    pub fn on_ping_answer(&mut self, now: Instant) {
        self.keepalive = Keepalive::Idle {
            ping_at: now + self.interval,
        };
    }

    /// The daemon is shutting down. True the first time: send the Async
    /// logout request then.
    pub fn on_shutdown(&mut self, now: Instant) -> bool {
        match self.shutdown {
            Shutdown::Serving => {
                self.shutdown = Shutdown::LogoutRequested {
                    close_at: now + self.grace,
                };
                true
            }
            Shutdown::LogoutRequested { .. } => false,
        }
    }

    /// Whether a logout was requested (shutdown signals are then ignored).
    pub fn logout_requested(&self) -> bool {
        matches!(self.shutdown, Shutdown::LogoutRequested { .. })
    }

    /// The timer fired at `now`: the grace first, then the ping's answer,
    /// then a new ping.
    pub fn on_timer(&mut self, now: Instant) -> Tick {
        if let Shutdown::LogoutRequested { close_at } = self.shutdown {
            if now >= close_at {
                return Tick::Close;
            }
        }
        match self.keepalive {
            Keepalive::PingOutstanding { dead_at } if now >= dead_at => Tick::Dead,
            Keepalive::Idle { ping_at } if now >= ping_at => {
                self.keepalive = Keepalive::PingOutstanding {
                    dead_at: now + self.timeout,
                };
                Tick::Ping
            }
            _ => Tick::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_pings_then_declares_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, 15 * S, 30 * S, 3 * S);
        assert_eq!(l.deadline(), t0 + 15 * S);
        assert_eq!(l.on_timer(t0 + 14 * S), Tick::Nothing);
        l.on_traffic(t0 + 10 * S);
        assert_eq!(l.deadline(), t0 + 25 * S, "traffic moves the ping");
        assert_eq!(l.on_timer(t0 + 25 * S), Tick::Ping);
        assert_eq!(l.deadline(), t0 + 55 * S);
        l.on_traffic(t0 + 30 * S);
        assert_eq!(l.deadline(), t0 + 55 * S, "only the answer counts");
        assert_eq!(l.on_timer(t0 + 54 * S), Tick::Nothing);
        assert_eq!(l.on_timer(t0 + 55 * S), Tick::Dead);
    }

    #[test]
    fn an_answer_returns_to_idle() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, S, S, S);
        assert_eq!(l.on_timer(t0 + S), Tick::Ping);
        l.on_ping_answer(t0 + S + S / 2);
        assert_eq!(l.deadline(), t0 + 2 * S + S / 2);
        assert_eq!(l.on_timer(t0 + 2 * S), Tick::Nothing);
    }

    #[test]
    fn shutdown_requests_logout_once_and_closes_after_grace() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, 15 * S, 30 * S, 3 * S);
        assert!(!l.logout_requested());
        assert!(l.on_shutdown(t0 + S));
        assert!(!l.on_shutdown(t0 + 2 * S), "asked once");
        assert!(l.logout_requested());
        assert_eq!(l.deadline(), t0 + 4 * S);
        assert_eq!(l.on_timer(t0 + 4 * S), Tick::Close);
    }

    #[test]
    fn a_ping_due_during_the_grace_still_goes_out() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, S, S, 10 * S);
        assert!(l.on_shutdown(t0));
        assert_eq!(l.deadline(), t0 + S);
        assert_eq!(l.on_timer(t0 + S), Tick::Ping);
        assert_eq!(
            l.deadline(),
            t0 + 2 * S,
            "the answer's deadline, not a spin"
        );
        assert_eq!(l.on_timer(t0 + 2 * S), Tick::Dead);
    }
}
