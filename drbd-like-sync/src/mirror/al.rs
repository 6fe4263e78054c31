//! The activity-log shell (invariant 5, ARCHITECTURE.md): drives
//! [`crate::core::activity_log::ActivityLog`] against the metadata store,
//! so that a write's extents are recorded hot before its data goes out.
//!
//! Owns: the log machine of one writer, the one transaction in flight
//! (persisted by a task of its own, so a cancelled write cannot strand it)
//! and the outcomes the waiting writes read. Must not know: the copies,
//! the ack rule, the lease (the generation is given).
//!
//! ```text
//!   begin(range) --Go------------------------------------------> AlGuard
//!        |  (extents already hot: no store round trip)
//!        `--Wait(txn?)--> [task] al_add(hot) + al_remove(cool)
//!                              | Ok: extents_persisted   | Err: txn_failed
//!                              v  (next txn, if queued)   v
//!              ready(range) -> AlGuard          the write fails (Err)
//!   AlGuard dropped (the write ended, either way) -> end_write
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blockmap::store::MetadataStore;
use blockmap::types::ImageName;
use tokio::sync::watch;

use crate::core::activity_log::{ActivityLog, AlError, AlTxn, Begin};
use crate::core::{ByteRange, ExtentIndex};

/// How many failed transactions are remembered for the writes waiting on
/// them; a write that waited through more fails (conservative).
const FAILED_KEPT: usize = 256;

struct State {
    log: ActivityLog,
    /// Transaction outcomes so far.
    seq: u64,
    /// Recent failed transactions: (outcome number, hot extents).
    failed: VecDeque<(u64, Vec<ExtentIndex>)>,
}

/// The activity log of one writer, at one generation.
pub(crate) struct AlDriver {
    store: Arc<dyn MetadataStore>,
    image: ImageName,
    generation: u64,
    timeout: Duration,
    state: Mutex<State>,
    /// Bumped on every outcome and every ended write: waiters look again.
    changed: watch::Sender<u64>,
}

/// A write in flight on its extents; ends it on drop.
pub(crate) struct AlGuard {
    al: Arc<AlDriver>,
    range: ByteRange,
}

impl Drop for AlGuard {
    fn drop(&mut self) {
        if let Err(e) = self.al.state().log.end_write(self.range) {
            tracing::error!(error = %e, "activity log end_write refused");
        }
        self.al.changed.send_modify(|v| *v += 1);
    }
}

impl AlDriver {
    /// A driver over `log` for `image` at `generation`; each store call is
    /// bounded by `timeout`.
    pub(crate) fn new(
        store: Arc<dyn MetadataStore>,
        image: ImageName,
        generation: u64,
        timeout: Duration,
        log: ActivityLog,
    ) -> Self {
        AlDriver {
            store,
            image,
            generation,
            timeout,
            state: Mutex::new(State {
                log,
                seq: 0,
                failed: VecDeque::new(),
            }),
            changed: watch::channel(0).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store transactions issued so far (one round trip each).
    pub(crate) fn round_trips(&self) -> u64 {
        self.state().log.round_trips()
    }

    /// Extents believed persisted as hot.
    pub(crate) fn hot(&self) -> BTreeSet<ExtentIndex> {
        self.state().log.hot()
    }

    /// Returns once every extent of `range` is hot in the store, with the
    /// guard that keeps them hot until the write ends. Err when a
    /// transaction for them failed (the write must fail: its extents may
    /// not be recorded) or the range touches more extents than the log
    /// holds. Cancel-safe: the transaction runs in its own task.
    pub(crate) async fn begin(self: &Arc<Self>, range: ByteRange) -> Result<AlGuard, String> {
        let mut rx = self.changed.subscribe();
        let (start, txn) = loop {
            let begun = {
                let mut st = self.state();
                let seq = st.seq;
                st.log.begin_write(range).map(|b| (seq, b))
            };
            match begun {
                Ok((_, Begin::Go)) => {
                    return Ok(AlGuard {
                        al: Arc::clone(self),
                        range,
                    })
                }
                Ok((seq, Begin::Wait(txn))) => break (seq, txn),
                // Every hot extent is busy: wait for a write to end.
                Err(AlError::Full { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
            if rx.changed().await.is_err() {
                return Err("activity log closed".into());
            }
        };
        // From here the write counts as in flight: the guard ends it.
        let guard = AlGuard {
            al: Arc::clone(self),
            range,
        };
        if let Some(t) = txn {
            tokio::spawn(Arc::clone(self).persist_chain(t));
        }
        loop {
            {
                let st = self.state();
                if st.log.ready(range) {
                    return Ok(guard);
                }
                let mine: Vec<ExtentIndex> = st.log.extents_of(range).collect();
                let failed = st
                    .failed
                    .iter()
                    .any(|(s, ex)| *s > start && ex.iter().any(|e| mine.contains(e)));
                let forgotten = st.failed.len() == FAILED_KEPT
                    && st.failed.front().is_some_and(|(s, _)| *s > start + 1);
                if failed || forgotten {
                    return Err(format!(
                        "the activity log of {} could not record extents {:?} as hot",
                        self.image,
                        mine.iter().map(|e| e.0).collect::<Vec<_>>()
                    ));
                }
            }
            if rx.changed().await.is_err() {
                return Err("activity log closed".into());
            }
        }
    }

    /// Persists `txn`, then each transaction the log queues meanwhile.
    async fn persist_chain(self: Arc<Self>, txn: AlTxn) {
        let mut next = Some(txn);
        while let Some(t) = next {
            let ok = self.persist(&t).await;
            {
                let mut st = self.state();
                st.seq += 1;
                let res = if ok {
                    st.log.extents_persisted(t.id)
                } else {
                    let seq = st.seq;
                    st.failed.push_back((seq, t.hot.clone()));
                    if st.failed.len() > FAILED_KEPT {
                        st.failed.pop_front();
                    }
                    st.log.txn_failed(t.id)
                };
                next = res.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "activity log refused a transaction outcome");
                    None
                });
            }
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// One transaction in the store: the hot extents durably added (what
    /// safety needs), then the cool ones removed (only housekeeping: a
    /// store holding more hot extents than needed is safe).
    async fn persist(&self, t: &AlTxn) -> bool {
        let hot: Vec<u64> = t.hot.iter().map(|e| e.0).collect();
        let add = self.store.al_add(&self.image, self.generation, &hot);
        match tokio::time::timeout(self.timeout, add).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(image = %self.image, error = %e, "activity log add failed");
                return false;
            }
            Err(_) => {
                tracing::error!(image = %self.image, "activity log add not confirmed in time");
                return false;
            }
        }
        if !t.cool.is_empty() {
            let cool: Vec<u64> = t.cool.iter().map(|e| e.0).collect();
            let rm = self.store.al_remove(&self.image, self.generation, &cool);
            match tokio::time::timeout(self.timeout, rm).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "activity log remove failed"),
                Err(_) => tracing::warn!("activity log remove not confirmed in time"),
            }
        }
        true
    }
}
