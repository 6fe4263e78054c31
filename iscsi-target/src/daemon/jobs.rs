//! Sync and verify jobs run by an image's writer (invariant 6,
//! ARCHITECTURE.md): the daemon side of `locus image sync`, `locus image
//! verify` and the background resync.
//!
//! Owns the conversation through the image's job document
//! ([`blockmap::sync::SyncJob`]): picking up a queued job (or one a crashed
//! writer left running: the bitmap is its progress, so it resumes),
//! running it through [`Writer::resync`] or [`Writer::verify`] in a task of
//! its own, writing its progress back every [`PUBLISH_EVERY`], noticing a
//! cancel (or a newer job that replaced it), and queueing a background
//! resync when a location with out-of-sync copies is up again and the
//! image's `auto_sync` is on. Must not know: how a batch is copied.
//!
//! ```text
//!   poll (every JOB_POLL): no job of ours running, and the feed said the
//!   document changed, or a copy has bits, or LOOK_ANYWAY passed?
//!     doc queued, or running under an older generation -> claim (CAS) -> run
//!     no unfinished doc, auto_sync, an up location with bits -> queue "auto"
//!   run: Writer::resync | verify   <-- cancel flag
//!        every PUBLISH_EVERY: CAS progress; doc cancelled / replaced -> cancel
//!        end: done | failed (error) | cancelled
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockmap::node::NodeState;
use blockmap::ops;
use blockmap::store::MetadataStore;
use blockmap::sync::{JobKind, JobState, SyncJob};
use blockmap::types::{ImageName, NodeId, UnixTime};
use drbd_like_sync::mirror::job::run_job;

use super::mirrored::chain;
use drbd_like_sync::mirror::{ResyncError, Writer};

/// How often the writer looks at its image's job document.
pub const JOB_POLL: Duration = Duration::from_secs(1);
/// How often a running job writes its progress.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often the job document is read even when the change feed said
/// nothing and no copy has bits to resync.
const LOOK_ANYWAY: Duration = Duration::from_secs(10);
/// The background resync's rate (bytes per second).
pub const AUTO_SYNC_RATE: u64 = 64 << 20;
/// After a background resync of a location failed, it is tried again only
/// once the node has beaten since (it came back), and no sooner than this,
/// doubled for every further failure up to [`AUTO_BACKOFF_MAX`].
const AUTO_BACKOFF: Duration = Duration::from_secs(5);
const AUTO_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The jobs of one writer.
pub struct Jobs {
    store: Arc<dyn MetadataStore>,
    image: ImageName,
    node: NodeId,
    writer: Arc<Writer>,
    running: Option<Running>,
    /// Locations whose background resync failed: when (monotonic and wall
    /// clock) and how many times in a row.
    backoff: BTreeMap<NodeId, Failed>,
    /// When the job document was last read.
    last_look: Instant,
}

/// The last failure of a location's background resync.
struct Failed {
    at: Instant,
    wall: UnixTime,
    times: u32,
}

impl Failed {
    /// Whether to try again: the node beat after the failure (it is back),
    /// and the back-off has passed.
    fn may_retry(&self, last_heartbeat: Option<UnixTime>) -> bool {
        let wait = AUTO_BACKOFF
            .saturating_mul(1 << self.times.min(6))
            .min(AUTO_BACKOFF_MAX);
        last_heartbeat.is_some_and(|h| h.0 > self.wall.0) && self.at.elapsed() >= wait
    }
}

struct Running {
    auto_dest: Option<NodeId>,
    cancel: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<JobState>,
}

impl Drop for Jobs {
    /// The writer stops serving: its job stops too (the document stays
    /// `running` at this generation, and the next writer resumes it).
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.task.abort();
        }
    }
}

impl Jobs {
    /// The jobs of `writer`, serving `image` on `node`.
    pub fn new(
        store: Arc<dyn MetadataStore>,
        image: ImageName,
        node: NodeId,
        writer: Arc<Writer>,
    ) -> Self {
        Jobs {
            store,
            image,
            node,
            writer,
            running: None,
            backoff: BTreeMap::new(),
            last_look: Instant::now(),
        }
    }

    /// One look at the job document: see the module doc. Store errors are
    /// logged and retried at the next poll.
    pub async fn poll(&mut self) {
        if let Some(r) = &self.running {
            if !r.task.is_finished() {
                return;
            }
            let r = self.running.take().expect("checked above");
            let state = r.task.await.unwrap_or(JobState::Failed);
            match (r.auto_dest, state) {
                (Some(dest), JobState::Failed) => {
                    let times = self.backoff.get(&dest).map_or(0, |f| f.times + 1);
                    let f = Failed {
                        at: Instant::now(),
                        wall: UnixTime::now(),
                        times,
                    };
                    self.backoff.insert(dest, f);
                }
                (Some(dest), JobState::Done) => {
                    self.backoff.remove(&dest);
                }
                _ => {}
            }
        }
        if let Err(e) = self.pick_up().await {
            tracing::debug!(image = %self.image, error = %e, "job poll failed");
        }
    }

    async fn pick_up(&mut self) -> Result<(), blockmap::Error> {
        // The store is asked only when there may be something to do: the
        // feed said the job document changed, a copy has bits to resync,
        // or a while has passed (the feed may have missed it).
        let changed = self.writer.job_changed();
        if !changed && !self.writer.needs_sync() && self.last_look.elapsed() < LOOK_ANYWAY {
            return Ok(());
        }
        self.last_look = Instant::now();
        let generation = self.writer.generation().0;
        let doc = ops::sync_job(&*self.store, &self.image).await?;
        let claim = match &doc {
            Some((v, j)) if j.state == JobState::Queued => Some((*v, j.clone())),
            // Left running by a writer that is gone (or by us before a
            // restart): the bitmap is its progress; resume it.
            Some((v, j)) if j.state == JobState::Running && j.generation != Some(generation) => {
                Some((*v, j.clone()))
            }
            Some((_, j)) if !j.state.is_finished() => None,
            _ => match self.auto_job().await? {
                Some(job) => {
                    let expected = doc.as_ref().map(|(v, _)| *v);
                    if !ops::put_sync_job(&*self.store, &self.image, expected, &job).await? {
                        return Ok(());
                    }
                    let (v, j) = ops::sync_job(&*self.store, &self.image)
                        .await?
                        .filter(|(_, j)| j.id == job.id)
                        .ok_or_else(|| blockmap::Error::Contended("job".into()))?;
                    Some((v, j))
                }
                None => None,
            },
        };
        let Some((version, mut job)) = claim else {
            return Ok(());
        };
        job.state = JobState::Running;
        job.runner = Some(self.node.clone());
        job.generation = Some(generation);
        job.started.get_or_insert_with(UnixTime::now);
        job.error = None;
        if !ops::put_sync_job(&*self.store, &self.image, Some(version), &job).await? {
            return Ok(());
        }
        let version = version + 1;
        tracing::info!(image = %self.image, id = job.id, kind = ?job.kind,
            requested_by = %job.requested_by, "running a job");
        let cancel = Arc::new(AtomicBool::new(false));
        let auto_dest = (job.requested_by == "auto")
            .then(|| job.location.clone())
            .flatten();
        let run = Run {
            store: Arc::clone(&self.store),
            image: self.image.clone(),
            writer: Arc::clone(&self.writer),
            cancel: Arc::clone(&cancel),
            job: Arc::new(Mutex::new(job.clone())),
            version,
        };
        self.running = Some(Running {
            auto_dest,
            cancel,
            task: tokio::spawn(run.run()),
        });
        Ok(())
    }

    /// A background resync to queue: the first location that is up, has
    /// bits to copy and did not just fail one, when `auto_sync` is on.
    async fn auto_job(&self) -> Result<Option<SyncJob>, blockmap::Error> {
        let rec = self.writer.mirror().cached_record();
        if !rec.image.auto_sync {
            return Ok(None);
        }
        let all = rec.image.all_blocks();
        let now = UnixTime::now();
        for n in rec.location_nodes() {
            if rec.sync_bits(&n, all).is_empty() {
                continue;
            }
            let Ok(entry) = ops::get_node(&*self.store, &n).await else {
                continue;
            };
            let retry = self
                .backoff
                .get(&n)
                .is_none_or(|f| f.may_retry(entry.last_heartbeat));
            if retry && entry.live_state(now) == NodeState::Up {
                let mut job = SyncJob::new(rand::random::<u64>() >> 1, JobKind::Sync, all, "auto");
                job.location = Some(n);
                job.rate = Some(AUTO_SYNC_RATE);
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    /// Asks the running job to stop (the writer is closing).
    pub fn cancel(&self) {
        if let Some(r) = &self.running {
            r.cancel.store(true, Ordering::Release);
        }
    }
}

/// One job being run.
struct Run {
    store: Arc<dyn MetadataStore>,
    image: ImageName,
    writer: Arc<Writer>,
    cancel: Arc<AtomicBool>,
    job: Arc<Mutex<SyncJob>>,
    /// The document version our last write left.
    version: u64,
}

impl Run {
    fn snapshot(&self) -> SyncJob {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn run(mut self) -> JobState {
        let started = Instant::now();
        let shared = Arc::clone(&self.job);
        let cancel = Arc::clone(&self.cancel);
        let writer = Arc::clone(&self.writer);
        let work = async move { run_job(&writer, &shared, &cancel, &|_| {}).await };
        tokio::pin!(work);
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        tick.tick().await;
        let outcome = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tick.tick() => {
                    if !self.publish(None).await {
                        self.cancel.store(true, Ordering::Release);
                    }
                }
            }
        };
        let (state, error) = match outcome {
            Ok(()) => (JobState::Done, None),
            Err(ResyncError::Cancelled { .. }) => (JobState::Cancelled, None),
            Err(e) => (JobState::Failed, Some(chain(&e))),
        };
        {
            let mut j = self.job.lock().unwrap_or_else(|p| p.into_inner());
            j.elapsed_ms = started.elapsed().as_millis() as u64;
            j.error = error.clone();
        }
        self.publish(Some(state)).await;
        match &error {
            Some(e) => tracing::error!(image = %self.image, error = %e, "job failed"),
            None => tracing::info!(image = %self.image, ?state, "job ended"),
        }
        state
    }

    /// Writes the job (with `state` if given). Returns false when the
    /// document was cancelled or replaced meanwhile: the job must stop,
    /// and nothing more is written.
    async fn publish(&mut self, state: Option<JobState>) -> bool {
        let mut job = self.snapshot();
        if let Some(s) = state {
            job.state = s;
        }
        for _ in 0..3 {
            match ops::put_sync_job(&*self.store, &self.image, Some(self.version), &job).await {
                Ok(true) => {
                    self.version += 1;
                    return true;
                }
                Ok(false) => match ops::sync_job(&*self.store, &self.image).await {
                    Ok(Some((v, now))) if now.id == job.id && now.state == JobState::Running => {
                        self.version = v;
                    }
                    // Cancelled, replaced, or gone.
                    _ => return false,
                },
                Err(e) => {
                    tracing::debug!(image = %self.image, error = %e, "cannot write job progress");
                    return true;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed background resync is retried only once the node beat
    /// after the failure (it came back), and not before the back-off.
    #[test]
    fn a_failed_location_is_retried_once_it_is_back() {
        let f = Failed {
            at: Instant::now() - Duration::from_secs(6),
            wall: UnixTime(1000),
            times: 0,
        };
        assert!(!f.may_retry(None), "never beat");
        assert!(
            !f.may_retry(Some(UnixTime(1000))),
            "no beat since the failure"
        );
        assert!(f.may_retry(Some(UnixTime(1001))), "back, and 5 s passed");
        let again = Failed { times: 3, ..f };
        assert!(
            !again.may_retry(Some(UnixTime(1001))),
            "the fourth failure waits 40 s"
        );
    }
}
