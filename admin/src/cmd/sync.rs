//! `locus image sync` and `locus image verify`: ask the image's lease holder
//! to run a job, follow its progress, and report.
//!
//! The lease holder does the copying, because it orders every copy against
//! its own foreground writes (invariant 6, ARCHITECTURE.md). This command
//! writes a queued job into the image's job document, then follows the
//! document until the job ends, with a progress bar on a terminal (one
//! plain line every few seconds otherwise). Ctrl-C cancels the job; what
//! landed stays in sync, and running the command again resumes.
//!
//! When no node holds the lease (no target serves the image), `locus`
//! takes the lease itself for the duration, with the cluster secret
//! (`--cluster-secret-file`, see [`super::lease_here`]), reconciles like
//! any new writer, runs the job here and gives the lease back.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockmap::ops;
use blockmap::store::MetadataStore;
use blockmap::sync::{JobKind, JobState, LocationProgress, Mismatch, SyncJob};
use blockmap::types::{BlockRange, ImageName, NodeId, UnixMillis};
use drbd_like_sync::mirror::job::run_job;
use serde::Serialize;

use super::lease_here::{live_holder, read_secret, WriterHere, CLI_NODE};
use super::progress::Progress;
use crate::exit::{chain, CliError, CliResult};
use crate::output::Out;
/// How long a lease holder has to pick a queued job up.
const PICKUP_WAIT: Duration = Duration::from_secs(30);

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct JobArgs {
    /// Sync or verify.
    pub kind: JobKind,
    /// The image.
    pub image: ImageName,
    /// The blocks.
    pub blocks: BlockRange,
    /// Only this location.
    pub location: Option<NodeId>,
    /// MB/s (sync).
    pub rate_mb: Option<u64>,
    /// For taking the lease when nobody holds it.
    pub secret_file: Option<std::path::PathBuf>,
}

/// What `--json` prints at the end, and the human summary's figures.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The image.
    pub image: ImageName,
    /// `sync` or `verify`.
    pub kind: JobKind,
    /// How it ended.
    pub state: JobState,
    /// Who ran it.
    pub runner: Option<NodeId>,
    /// Bytes it covered.
    pub total_bytes: u64,
    /// Data bytes copied, per location (sync).
    pub copied_bytes: std::collections::BTreeMap<NodeId, u64>,
    /// Bytes that were holes on the source, punched instead of copied.
    pub hole_bytes: std::collections::BTreeMap<NodeId, u64>,
    /// Ranges whose copies differ (verify).
    pub mismatches: Vec<Mismatch>,
    /// Seconds the job ran.
    pub seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
}

impl Summary {
    fn of(job: &SyncJob, image: &ImageName) -> Self {
        let per = |f: fn(&LocationProgress) -> u64| {
            job.locations
                .iter()
                .map(|(n, p)| (n.clone(), f(p)))
                .collect()
        };
        Summary {
            image: image.clone(),
            kind: job.kind,
            state: job.state,
            runner: job.runner.clone(),
            total_bytes: job.total_bytes,
            copied_bytes: per(|p| p.copied_bytes),
            hole_bytes: per(|p| p.hole_bytes),
            mismatches: job.mismatches.clone(),
            seconds: job.elapsed_ms as f64 / 1000.0,
            error: job.error.clone(),
        }
    }

    fn print(&self) {
        let what = match self.kind {
            JobKind::Sync => "sync",
            JobKind::Verify => "verify",
        };
        let by = self
            .runner
            .as_ref()
            .map_or(String::new(), |r| format!(" by {r}"));
        println!(
            "{what} of image {} {}{by} in {:.1}s ({} bytes covered)",
            self.image,
            state_word(self.state),
            self.seconds,
            self.total_bytes
        );
        for (n, c) in &self.copied_bytes {
            let holes = self.hole_bytes.get(n).copied().unwrap_or(0);
            if c + holes > 0 {
                println!("  {n}: {c} bytes copied, {holes} bytes of holes punched");
            }
        }
        for m in &self.mismatches {
            println!(
                "  mismatch in block {} (bytes {}+{}): {} differ from {}; marked out-of-sync",
                m.block,
                m.offset,
                m.len,
                crate::output::list(&m.differ),
                crate::output::list(&m.majority)
            );
        }
        if let Some(e) = &self.error {
            println!("  error: {e}");
        }
    }
}

fn state_word(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "FAILED",
        JobState::Cancelled => "cancelled",
    }
}

/// Runs a sync or verify job and reports it.
pub async fn run(store: &Arc<dyn MetadataStore>, out: Out, args: JobArgs) -> CliResult {
    let s = &**store;
    let rec = s.load_image(&args.image).await?;
    if let Some(n) = &args.location {
        if !rec.location_nodes().contains(n) {
            return Err(CliError::Store(blockmap::Error::NotALocation {
                image: args.image.clone(),
                node: n.clone(),
                ranges: blockmap::error::RangeList(vec![args.blocks]),
            }));
        }
    }
    let job = match live_holder(s, &args.image).await? {
        Some(_) => follow(store, out, &args).await?,
        None => run_here(store, out, &args).await?,
    };
    let summary = Summary::of(&job, &args.image);
    out.emit(&summary, || summary.print());
    match job.state {
        JobState::Done if job.mismatches.is_empty() => Ok(()),
        JobState::Done => Err(CliError::Failed(format!(
            "image '{}': verify found {} range(s) whose copies differ; the differing copies \
             are marked out-of-sync. Run `locus image sync {}` to repair them",
            args.image,
            job.mismatches.len(),
            args.image
        ))),
        JobState::Cancelled => Err(CliError::Cancelled(format!(
            "image '{}': cancelled; what landed stays in sync, and running the command again \
             resumes where it stopped",
            args.image
        ))),
        _ => Err(CliError::Failed(format!(
            "image '{}': the job failed: {}. What landed stays in sync; the rest stays \
             out-of-sync",
            args.image,
            job.error.as_deref().unwrap_or("no reason given")
        ))),
    }
}

/// Queues the job for the lease holder and follows it.
async fn follow(store: &Arc<dyn MetadataStore>, out: Out, args: &JobArgs) -> CliResult<SyncJob> {
    let s = &**store;
    let mut job = SyncJob::new(rand::random::<u64>() >> 1, args.kind, args.blocks, "locus");
    job.location = args.location.clone();
    job.rate = args.rate_mb.map(|r| r.saturating_mul(1_000_000));
    let existing = ops::sync_job(s, &args.image).await?;
    match existing {
        // An operator's job is still on: follow it rather than start a
        // second one (after a Ctrl-C of the first `locus`, or a holder
        // that died: the next writer resumes it).
        Some((_, j))
            if !j.state.is_finished() && j.requested_by != "auto" && j.kind == args.kind =>
        {
            if !out.json {
                eprintln!(
                    "following the {} of image {} requested at {} ({}, {} of {} bytes)",
                    kind_word(j.kind),
                    args.image,
                    j.requested.0,
                    state_word(j.state),
                    j.done_bytes,
                    j.total_bytes
                );
            }
            job = j;
        }
        Some((_, j)) if !j.state.is_finished() && j.requested_by != "auto" => {
            return Err(CliError::Refused(format!(
                "image '{}': a {} requested at {} is {} ({} of {} bytes); wait for it to \
                 end, then run this again",
                args.image,
                kind_word(j.kind),
                j.requested.0,
                state_word(j.state),
                j.done_bytes,
                j.total_bytes
            )));
        }
        // A background resync in progress is replaced: its holder stops it
        // and runs this one, which resumes from the bits.
        other => {
            if !ops::put_sync_job(s, &args.image, other.map(|(v, _)| v), &job).await? {
                return Err(CliError::Refused(format!(
                    "image '{}': its job document changed meanwhile; run the command again",
                    args.image
                )));
            }
        }
    }
    let bar = Progress::new(out, kind_word(args.kind));
    let asked = Instant::now();
    // Since when no node has held the lease (the holder died and nobody
    // took over): the job waits for the next writer.
    let mut orphaned: Option<Instant> = None;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let now = ops::sync_job(s, &args.image)
            .await?
            .filter(|(_, j)| j.id == job.id);
        let Some((version, j)) = now else {
            return Err(CliError::Failed(format!(
                "image '{}': the job was replaced by another request",
                args.image
            )));
        };
        show_job(&bar, &j);
        if j.state.is_finished() {
            bar.finish();
            return Ok(j);
        }
        if j.state == JobState::Queued && asked.elapsed() > PICKUP_WAIT {
            let mut gone = j.clone();
            gone.state = JobState::Cancelled;
            let _ = ops::put_sync_job(s, &args.image, Some(version), &gone).await;
            bar.finish();
            return Err(CliError::Unavailable(format!(
                "image '{}': its lease holder did not pick the job up within {}s; is its \
                 locusd running (see `locus cluster status` and its log)?",
                args.image,
                PICKUP_WAIT.as_secs()
            )));
        }
        let held = s
            .get_lease(&args.image)
            .await?
            .is_some_and(|l| !l.expired_at(UnixMillis::now()));
        orphaned = if held {
            None
        } else {
            orphaned.or(Some(Instant::now()))
        };
        if orphaned.is_some_and(|t| t.elapsed() > PICKUP_WAIT) {
            bar.finish();
            return Err(CliError::Unavailable(format!(
                "image '{}': no node has held its lease for {}s, so the job waits ({} of {} \
                 bytes done). It resumes when a writer takes the lease again; run `locus \
                 image sync {}` then to follow it, or give --cluster-secret-file to run it \
                 here",
                args.image,
                PICKUP_WAIT.as_secs(),
                j.done_bytes,
                j.total_bytes,
                args.image
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut ctrl_c => {
                let mut c = j.clone();
                c.state = JobState::Cancelled;
                let _ = ops::put_sync_job(s, &args.image, Some(version), &c).await;
                bar.finish();
                return Ok(c);
            }
        }
    }
}

/// Nobody holds the lease: take it here, run the job, give it back.
async fn run_here(store: &Arc<dyn MetadataStore>, out: Out, args: &JobArgs) -> CliResult<SyncJob> {
    let Some(path) = &args.secret_file else {
        return Err(CliError::NotAvailable(format!(
            "image '{}': no node holds its write lease (no target serves it), so nobody can \
             run the {} for you. Start locusd on one of its hypervisors, or pass \
             --cluster-secret-file FILE (or LOCUS_CLUSTER_SECRET_FILE) so that locus takes \
             the lease itself for the duration",
            args.image,
            kind_word(args.kind)
        )));
    };
    let here = WriterHere::take(store, &args.image, read_secret(path)?).await?;
    let writer = here.writer();
    let mut job = SyncJob::new(0, args.kind, args.blocks, "locus");
    job.location = args.location.clone();
    job.rate = args.rate_mb.map(|r| r.saturating_mul(1_000_000));
    job.runner = Some(NodeId::new(CLI_NODE).map_err(CliError::Store)?);
    job.generation = Some(writer.generation().0);
    job.state = JobState::Running;
    let bar = Progress::new(out, kind_word(args.kind));
    let cancel = AtomicBool::new(false);
    let shared = std::sync::Mutex::new(job);
    let show = |j: &SyncJob| show_job(&bar, j);
    let outcome = tokio::select! {
        r = run_job(writer, &shared, &cancel, &show) => r,
        _ = tokio::signal::ctrl_c() => Err(drbd_like_sync::mirror::ResyncError::Cancelled {
            image: args.image.to_string(),
        }),
    };
    let closed = here.close().await;
    bar.finish();
    let mut job = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(()) => job.state = JobState::Done,
        Err(drbd_like_sync::mirror::ResyncError::Cancelled { .. }) => {
            job.state = JobState::Cancelled
        }
        Err(e) => {
            job.state = JobState::Failed;
            job.error = Some(chain(&e));
        }
    }
    if let Err(e) = closed {
        if job.error.is_none() {
            job.state = JobState::Failed;
            job.error = Some(chain(&e));
        }
    }
    Ok(job)
}

fn kind_word(k: JobKind) -> &'static str {
    match k {
        JobKind::Sync => "sync",
        JobKind::Verify => "verify",
    }
}

fn show_job(bar: &Progress, j: &SyncJob) {
    bar.show(
        j.done_bytes,
        j.total_bytes,
        state_word(j.state),
        Duration::from_millis(j.elapsed_ms),
    );
}
