//! One sync or verify job ([`blockmap::sync::SyncJob`]) run through a
//! [`Writer`], with its figures kept in the job as it goes: the part that
//! the daemon (which publishes the job) and the `locus` CLI (which runs a
//! job itself when no node holds the lease) share.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

use blockmap::sync::{JobKind, LocationProgress, Mismatch, SyncJob};

use super::resync::{ResyncError, ResyncRequest};
use super::Writer;
use crate::core::resync::BatchLimits;

/// Runs `job` (its kind, blocks, location and rate) through `writer`,
/// updating its byte counts, per-location figures, mismatches and elapsed
/// time in place, and calling `on_progress` after each update. Does not
/// change its state: the caller sets done, failed or cancelled from the
/// result. `cancel` is looked at between batches.
pub async fn run_job(
    writer: &Writer,
    job: &Mutex<SyncJob>,
    cancel: &AtomicBool,
    on_progress: &(dyn Fn(&SyncJob) + Send + Sync),
) -> Result<(), ResyncError> {
    let started = Instant::now();
    let spec = job.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let update = |f: &dyn Fn(&mut SyncJob)| {
        let mut j = job.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut j);
        j.elapsed_ms = started.elapsed().as_millis() as u64;
        on_progress(&j);
    };
    match spec.kind {
        JobKind::Sync => {
            let req = ResyncRequest {
                blocks: spec.blocks,
                location: spec.location.clone(),
                rate: spec.rate.unwrap_or(0),
                limits: BatchLimits::default(),
            };
            let mut progress = |p: &super::ResyncProgress| {
                update(&|j: &mut SyncJob| {
                    j.total_bytes = p.total_bytes;
                    j.done_bytes = p.done_bytes;
                    j.locations = p
                        .dests
                        .iter()
                        .map(|(n, d)| {
                            let lp = LocationProgress {
                                copied_bytes: d.copied,
                                hole_bytes: d.holes,
                            };
                            (n.clone(), lp)
                        })
                        .collect();
                })
            };
            writer.resync(&req, &mut progress, cancel).await.map(|_| ())
        }
        JobKind::Verify => {
            let bs = writer.mirror().cached_record().image.block_size.bytes();
            let mut progress = |r: &super::VerifyReport| {
                update(&|j: &mut SyncJob| {
                    j.total_bytes = r.total_bytes;
                    j.done_bytes = r.done_bytes;
                    j.mismatches = r
                        .mismatches
                        .iter()
                        .map(|m| Mismatch {
                            block: m.range.offset / bs,
                            offset: m.range.offset,
                            len: m.range.len,
                            majority: m.majority.clone(),
                            differ: m.differ.clone(),
                        })
                        .collect();
                })
            };
            writer
                .verify(spec.blocks, spec.location.as_ref(), &mut progress, cancel)
                .await
                .map(|_| ())
        }
    }
    .inspect(|_| update(&|_| {}))
}
