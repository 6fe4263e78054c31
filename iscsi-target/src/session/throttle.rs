//! The failed-authentication throttle: after repeated CHAP failures from one
//! InitiatorName or one source address, the verdict on the next attempt is
//! delayed with an exponential backoff, so that a CHAP secret (RFC 7143
//! §12.1.3) cannot be guessed at line rate.
//!
//! Owns the failure counts per name and per address and the backoff policy;
//! the connection layer asks it for the delay of each CHAP verdict and
//! sleeps that long in its own task (`tokio::time::sleep`), never blocking a
//! runtime thread. One [`AuthThrottle`] per daemon, in the
//! [`super::ConnectionContext`]: no process-wide state, so several daemons
//! in one test process do not throttle each other.
//!
//! Policy ([`BackoffPolicy`]): a name gets 3 free failures, an address 10
//! (one address may hold many initiators: a hypervisor's guests, a NAT);
//! beyond its allowance each failure doubles the delay from 100 ms up to
//! 5 s. The delay of an attempt is the larger of its name's and its
//! address's, so an initiator with a new name *and* a new address is never
//! slowed, while guessing from one address under ever new names is. The
//! delay is applied to the verdict whether it passes or fails: answering a
//! right guess at once would tell it apart from a delayed wrong one. A
//! success forgets its name's failures (not its address's: one initiator's
//! success vouches for no other behind that address); counts not refreshed
//! by a failure for 10 minutes are forgotten.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::login::AuthVerdict;

/// The backoff of the throttle (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failures of one name answered without delay.
    pub free_per_name: u32,
    /// Failures from one address answered without delay.
    pub free_per_address: u32,
    /// The delay of the first failure beyond an allowance; each further
    /// failure doubles it.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// A count is forgotten this long after its last failure.
    pub forget_after: Duration,
    /// At most this many names and as many addresses are tracked; beyond
    /// that, the least recently failing entry is dropped.
    pub max_entries: usize,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            free_per_name: 3,
            free_per_address: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            forget_after: Duration::from_secs(10 * 60),
            max_entries: 4096,
        }
    }
}

impl BackoffPolicy {
    /// The delay for an attempt after `failures` earlier failures with
    /// `free` of them allowed: zero up to the allowance, then `base`,
    /// doubling, capped at `cap`.
    pub fn delay(&self, failures: u32, free: u32) -> Duration {
        let Some(over) = failures.checked_sub(free) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Failures of one name or one address.
#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Failure counts keyed by `K`, forgetting stale ones.
#[derive(Debug)]
struct Counts<K> {
    map: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
        }
    }

    fn failures(&self, key: &K, now: Instant, policy: &BackoffPolicy) -> u32 {
        match self.map.get(key) {
            Some(e) if now.saturating_duration_since(e.last) < policy.forget_after => e.failures,
            _ => 0,
        }
    }

    fn fail(&mut self, key: &K, now: Instant, policy: &BackoffPolicy) {
        let failures = self.failures(key, now, policy).saturating_add(1);
        if !self.map.contains_key(key) && self.map.len() >= policy.max_entries {
            self.map
                .retain(|_, e| now.saturating_duration_since(e.last) < policy.forget_after);
            if self.map.len() >= policy.max_entries {
                let oldest = self
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert(
            key.clone(),
            Entry {
                failures,
                last: now,
            },
        );
    }
}

#[derive(Debug)]
struct Inner {
    names: Counts<String>,
    addresses: Counts<IpAddr>,
}

/// One daemon's failed-authentication throttle (see the module docs).
#[derive(Debug)]
pub struct AuthThrottle {
    policy: BackoffPolicy,
    inner: Mutex<Inner>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::new(BackoffPolicy::default())
    }
}

impl AuthThrottle {
    /// A throttle with `policy` and no failures recorded.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            inner: Mutex::new(Inner {
                names: Counts::new(),
                addresses: Counts::new(),
            }),
        }
    }

    /// Records the verdict of one CHAP exchange by `name` (`None` when the
    /// login never declared one) from `address` at `now`, and returns how
    /// long to hold its answer back. The delay depends on the failures
    /// before this one, not on the verdict.
    pub fn judge(
        &self,
        name: Option<&str>,
        address: IpAddr,
        verdict: AuthVerdict,
        now: Instant,
    ) -> Duration {
        let p = &self.policy;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let name = name.map(str::to_owned);
        let by_name = name.as_ref().map_or(0, |n| inner.names.failures(n, now, p));
        let by_address = inner.addresses.failures(&address, now, p);
        let delay = p
            .delay(by_name, p.free_per_name)
            .max(p.delay(by_address, p.free_per_address));
        match verdict {
            AuthVerdict::Failed => {
                if let Some(n) = &name {
                    inner.names.fail(n, now, p);
                }
                inner.addresses.fail(&address, now, p);
            }
            AuthVerdict::Passed => {
                if let Some(n) = &name {
                    inner.names.map.remove(n);
                }
            }
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
    const MS: Duration = Duration::from_millis(1);

    fn fail(t: &AuthThrottle, name: &str, addr: IpAddr, now: Instant) -> Duration {
        t.judge(Some(name), addr, AuthVerdict::Failed, now)
    }

    #[test]
    fn backoff_is_free_then_doubles_up_to_the_cap() {
        let p = BackoffPolicy::default();
        let delays: Vec<u128> = (0..12).map(|n| p.delay(n, 3).as_millis()).collect();
        assert_eq!(
            delays,
            [0, 0, 0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(p.delay(u32::MAX, 0), p.cap);
    }

    #[test]
    fn one_name_is_delayed_after_three_failures() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let got: Vec<Duration> = (0..6).map(|_| fail(&t, "iqn.x:m", A, now)).collect();
        assert_eq!(
            got,
            [
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                100 * MS,
                200 * MS,
                400 * MS
            ]
        );
        // A new name from a new address is not slowed.
        assert_eq!(fail(&t, "iqn.x:other", B, now), Duration::ZERO);
        // The same name from a new address is.
        assert_eq!(fail(&t, "iqn.x:m", B, now), 800 * MS);
    }

    #[test]
    fn one_address_is_delayed_after_ten_failures_under_any_names() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..10 {
            assert_eq!(fail(&t, &format!("iqn.x:{i}"), A, now), Duration::ZERO);
        }
        assert_eq!(fail(&t, "iqn.x:new", A, now), 100 * MS);
        assert_eq!(t.judge(None, A, AuthVerdict::Failed, now), 200 * MS);
        assert_eq!(fail(&t, "iqn.x:new", B, now), Duration::ZERO);
    }

    #[test]
    fn a_throttled_pass_is_delayed_too_and_resets_the_name() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for _ in 0..4 {
            fail(&t, "iqn.x:m", A, now);
        }
        assert_eq!(
            t.judge(Some("iqn.x:m"), A, AuthVerdict::Passed, now),
            200 * MS
        );
        // The name starts over; the address keeps its 4 failures (< 10).
        assert_eq!(fail(&t, "iqn.x:m", A, now), Duration::ZERO);
        assert_eq!(
            t.judge(Some("iqn.x:n"), A, AuthVerdict::Passed, now),
            Duration::ZERO
        );
    }

    #[test]
    fn counts_are_forgotten_after_quiet_minutes() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for _ in 0..5 {
            fail(&t, "iqn.x:m", A, now);
        }
        let later = now + Duration::from_secs(9 * 60);
        assert_eq!(fail(&t, "iqn.x:m", A, later), 400 * MS);
        // Ten quiet minutes after the last failure, all is forgotten.
        let quiet = later + Duration::from_secs(10 * 60);
        assert_eq!(fail(&t, "iqn.x:m", A, quiet), Duration::ZERO);
    }

    #[test]
    fn tracked_entries_are_bounded() {
        let t = AuthThrottle::new(BackoffPolicy {
            max_entries: 4,
            free_per_address: u32::MAX,
            ..BackoffPolicy::default()
        });
        let now = Instant::now();
        for _ in 0..4 {
            fail(&t, "iqn.x:m", A, now);
        }
        for i in 0..4u32 {
            fail(&t, &format!("iqn.x:{i}"), A, now + (i + 1) * MS);
        }
        let inner = t.inner.lock().unwrap();
        assert_eq!(inner.names.map.len(), 4);
        assert!(
            !inner.names.map.contains_key("iqn.x:m"),
            "the least recently failing name was dropped"
        );
    }
}
