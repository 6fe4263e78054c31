//! The activity log: write-intent extents (invariant 5, ARCHITECTURE.md),
//! after DRBD's AL.
//!
//! Owns which extents of an image are "hot" (may have writes in flight) and
//! the transactions that record them in the metadata store. The image is cut
//! into extents of [`AlConfig::extent_size`] bytes (4 MiB by default). Knows
//! nothing of the store: the caller persists each [`AlTxn`] and reports it.
//!
//! Each extent moves through:
//!
//! ```text
//!            begin_write (not hot)         extents_persisted
//!   Cold ----------------------> Pending ------------------> Hot
//!    ^                                                        |
//!    `----- evicted (LRU, no write in flight): cool rides -----'
//!           along with the next transaction (lazy)
//! ```
//!
//! The safety rule: the persisted hot set is always a superset of the extents
//! with writes in flight. A write goes out only when all its extents are
//! `Hot` (persisted); an extent with writes in flight is never evicted; and
//! an eviction leaves our belief at once but the store only later, so the
//! store's set only ever holds more. Transactions are issued one at a time so
//! that the store applies them in order.
//!
//! Cost: a write whose extents are all hot costs no store round trip, so a
//! working set within the capacity costs none in steady state
//! ([`ActivityLog::round_trips`] counts them).

use std::collections::{BTreeMap, BTreeSet};

use super::units::{ByteRange, ExtentIndex};

/// Activity-log geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlConfig {
    /// Bytes per extent; non-zero.
    pub extent_size: u64,
    /// Most extents hot (persisted or pending) at once; at least 1.
    pub capacity: usize,
}

impl Default for AlConfig {
    fn default() -> Self {
        AlConfig {
            extent_size: 4 << 20,
            capacity: 1024,
        }
    }
}

/// One store transaction: add `hot`, remove `cool`, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlTxn {
    /// Sequence number, to report with [`ActivityLog::extents_persisted`].
    pub id: u64,
    /// Extents to record as hot.
    pub hot: Vec<ExtentIndex>,
    /// Extents to remove (evicted earlier; no write in flight).
    pub cool: Vec<ExtentIndex>,
}

/// The answer to [`ActivityLog::begin_write`]. Either way the write now
/// counts as in flight on its extents until [`ActivityLog::end_write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Every extent is hot: send the write now.
    Go,
    /// Hold the write until [`ActivityLog::ready`]; persist the transaction
    /// if one is given (otherwise one is in flight already).
    Wait(Option<AlTxn>),
}

/// Why a write cannot begin; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlError {
    /// Every hot extent has writes in flight: retry after an `end_write`.
    #[error("activity log full: all {capacity} hot extents are busy")]
    Full {
        /// The capacity.
        capacity: usize,
    },
    /// The write touches more extents than the capacity.
    #[error("write touches {extents} extents, more than the capacity {capacity}")]
    TooLarge {
        /// Extents touched.
        extents: u64,
        /// The capacity.
        capacity: usize,
    },
    /// `end_write` or `extents_persisted` that does not match our state.
    #[error("activity log event does not match: {0}")]
    Mismatch(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtState {
    /// Waiting for a transaction (queued or in flight).
    Pending,
    /// Persisted as hot.
    Hot,
}

#[derive(Debug, Clone, Copy)]
struct Ext {
    state: ExtState,
    in_flight: u32,
    last_used: u64,
}

/// The activity log of one image's writer. Never panics.
#[derive(Debug, Clone)]
pub struct ActivityLog {
    cfg: AlConfig,
    extents: BTreeMap<ExtentIndex, Ext>,
    clock: u64,
    next_id: u64,
    in_flight_txn: Option<AlTxn>,
    queued_hot: BTreeSet<ExtentIndex>,
    queued_cool: BTreeSet<ExtentIndex>,
    round_trips: u64,
}

impl ActivityLog {
    /// An empty log (nothing hot).
    pub fn new(cfg: AlConfig) -> Self {
        Self::resume(cfg, std::iter::empty())
    }

    /// A log whose store already records `hot` (for example the previous
    /// writer's set after reconciliation): they count as hot with no write
    /// in flight, and are cooled lazily.
    pub fn resume(cfg: AlConfig, hot: impl IntoIterator<Item = ExtentIndex>) -> Self {
        let cfg = AlConfig {
            extent_size: cfg.extent_size.max(1),
            capacity: cfg.capacity.max(1),
        };
        let mut log = ActivityLog {
            cfg,
            extents: BTreeMap::new(),
            clock: 0,
            next_id: 0,
            in_flight_txn: None,
            queued_hot: BTreeSet::new(),
            queued_cool: BTreeSet::new(),
            round_trips: 0,
        };
        for e in hot {
            if log.extents.len() < cfg.capacity {
                log.extents.insert(
                    e,
                    Ext {
                        state: ExtState::Hot,
                        in_flight: 0,
                        last_used: 0,
                    },
                );
            } else {
                log.queued_cool.insert(e);
            }
        }
        log
    }

    /// The geometry.
    pub fn config(&self) -> AlConfig {
        self.cfg
    }

    /// The extents a byte range touches.
    pub fn extents_of(&self, range: ByteRange) -> impl Iterator<Item = ExtentIndex> {
        let es = self.cfg.extent_size;
        let first = range.offset / es;
        let end = if range.is_empty() {
            first
        } else {
            range.end().div_ceil(es)
        };
        (first..end).map(ExtentIndex)
    }

    /// The byte range of one extent.
    pub fn extent_range(&self, e: ExtentIndex) -> ByteRange {
        ByteRange::new(
            e.0.saturating_mul(self.cfg.extent_size),
            self.cfg.extent_size,
        )
    }

    /// Store transactions issued so far (each is one round trip).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Extents we believe persisted as hot.
    pub fn hot(&self) -> BTreeSet<ExtentIndex> {
        self.extents
            .iter()
            .filter(|(_, x)| x.state == ExtState::Hot)
            .map(|(e, _)| *e)
            .collect()
    }

    /// Extents with writes in flight.
    pub fn in_flight(&self) -> BTreeSet<ExtentIndex> {
        self.extents
            .iter()
            .filter(|(_, x)| x.in_flight > 0)
            .map(|(e, _)| *e)
            .collect()
    }

    /// A write of `range` is about to start. See [`Begin`].
    pub fn begin_write(&mut self, range: ByteRange) -> Result<Begin, AlError> {
        let touched: Vec<ExtentIndex> = self.extents_of(range).collect();
        if touched.len() > self.cfg.capacity {
            return Err(AlError::TooLarge {
                extents: touched.len() as u64,
                capacity: self.cfg.capacity,
            });
        }
        // An extent evicted but whose cool was not sent yet is still hot in
        // the store: take it back without a round trip.
        let new: Vec<ExtentIndex> = touched
            .iter()
            .copied()
            .filter(|e| !self.extents.contains_key(e) && !self.queued_cool.contains(e))
            .collect();
        let reclaimed = touched
            .iter()
            .filter(|e| !self.extents.contains_key(e) && self.queued_cool.contains(e))
            .count();
        let need = (new.len() + reclaimed + self.extents.len()).saturating_sub(self.cfg.capacity);
        let victims = self.victims(need, &touched);
        if victims.len() < need {
            return Err(AlError::Full {
                capacity: self.cfg.capacity,
            });
        }
        // From here on nothing fails.
        for v in victims {
            self.extents.remove(&v);
            self.queued_cool.insert(v);
        }
        self.clock += 1;
        for e in &touched {
            if self.queued_cool.remove(e) {
                self.extents.insert(
                    *e,
                    Ext {
                        state: ExtState::Hot,
                        in_flight: 0,
                        last_used: 0,
                    },
                );
            }
        }
        for e in &new {
            self.extents.insert(
                *e,
                Ext {
                    state: ExtState::Pending,
                    in_flight: 0,
                    last_used: 0,
                },
            );
            self.queued_hot.insert(*e);
        }
        for e in &touched {
            if let Some(x) = self.extents.get_mut(e) {
                x.in_flight += 1;
                x.last_used = self.clock;
            }
        }
        // A pending extent whose transaction failed is queued again.
        for e in &touched {
            let pending = self
                .extents
                .get(e)
                .is_some_and(|x| x.state == ExtState::Pending);
            let sent = self
                .in_flight_txn
                .as_ref()
                .is_some_and(|t| t.hot.contains(e));
            if pending && !sent {
                self.queued_hot.insert(*e);
            }
        }
        if self.ready(range) {
            return Ok(Begin::Go);
        }
        Ok(Begin::Wait(self.issue()))
    }

    /// `need` least recently used extents with no write in flight, not
    /// pending, and not among `keep`.
    fn victims(&self, need: usize, keep: &[ExtentIndex]) -> Vec<ExtentIndex> {
        if need == 0 {
            return Vec::new();
        }
        let mut c: Vec<(u64, ExtentIndex)> = self
            .extents
            .iter()
            .filter(|(e, x)| x.in_flight == 0 && x.state == ExtState::Hot && !keep.contains(e))
            .map(|(e, x)| (x.last_used, *e))
            .collect();
        c.sort();
        c.into_iter().take(need).map(|(_, e)| e).collect()
    }

    /// Issues the queued transaction if none is in flight.
    fn issue(&mut self) -> Option<AlTxn> {
        if self.in_flight_txn.is_some() || self.queued_hot.is_empty() {
            return None;
        }
        self.next_id += 1;
        let txn = AlTxn {
            id: self.next_id,
            hot: std::mem::take(&mut self.queued_hot).into_iter().collect(),
            cool: std::mem::take(&mut self.queued_cool).into_iter().collect(),
        };
        self.round_trips += 1;
        self.in_flight_txn = Some(txn.clone());
        Some(txn)
    }

    /// True when every extent of `range` is persisted as hot.
    pub fn ready(&self, range: ByteRange) -> bool {
        self.extents_of(range).all(|e| {
            self.extents
                .get(&e)
                .is_some_and(|x| x.state == ExtState::Hot)
        })
    }

    /// Transaction `id` is durable. Returns the next transaction to persist,
    /// if writes queued more; then check [`ActivityLog::ready`] for held writes.
    pub fn extents_persisted(&mut self, id: u64) -> Result<Option<AlTxn>, AlError> {
        let txn = self.take_txn(id)?;
        for e in txn.hot {
            if let Some(x) = self.extents.get_mut(&e) {
                x.state = ExtState::Hot;
            }
        }
        Ok(self.issue())
    }

    /// Transaction `id` failed: it may or may not have happened. The writes
    /// held on its hot extents should fail (call `end_write` for each); it
    /// returns the next transaction, for extents other writes queued
    /// meanwhile. Cools are forgotten:
    /// the store holding more hot extents than needed is safe.
    pub fn txn_failed(&mut self, id: u64) -> Result<Option<AlTxn>, AlError> {
        // Not retried here: the held writes fail, and a later begin_write on
        // one of these extents queues it again.
        self.take_txn(id)?;
        self.drop_idle_pending();
        Ok(self.issue())
    }

    fn take_txn(&mut self, id: u64) -> Result<AlTxn, AlError> {
        match self.in_flight_txn.take() {
            Some(t) if t.id == id => Ok(t),
            other => {
                self.in_flight_txn = other;
                Err(AlError::Mismatch("no such transaction in flight"))
            }
        }
    }

    /// Pending extents whose writes all ended need not become hot.
    fn drop_idle_pending(&mut self) {
        let idle: Vec<ExtentIndex> = self
            .extents
            .iter()
            .filter(|(e, x)| {
                x.state == ExtState::Pending
                    && x.in_flight == 0
                    && !self
                        .in_flight_txn
                        .as_ref()
                        .is_some_and(|t| t.hot.contains(e))
            })
            .map(|(e, _)| *e)
            .collect();
        for e in idle {
            self.extents.remove(&e);
            self.queued_hot.remove(&e);
        }
    }

    /// The write of `range` finished (acknowledged or failed).
    pub fn end_write(&mut self, range: ByteRange) -> Result<(), AlError> {
        let touched: Vec<ExtentIndex> = self.extents_of(range).collect();
        if !touched
            .iter()
            .all(|e| self.extents.get(e).is_some_and(|x| x.in_flight > 0))
        {
            return Err(AlError::Mismatch("end_write without begin_write"));
        }
        for e in &touched {
            if let Some(x) = self.extents.get_mut(e) {
                x.in_flight -= 1;
            }
        }
        self.drop_idle_pending();
        Ok(())
    }
}
