//! Verify by the writer: compare checksums of every range across the
//! in-sync copies, through the protocol's `Checksum` operation (no data
//! crosses the network), and mark the copies that differ out-of-sync.
//!
//! Owns: walking the range in pieces with one set of in-sync copies, each
//! piece under the range lock (so no write is half-way on the copies while
//! they are compared), asking every copy for its checksums at the bitmap's
//! granularity, and marking what [`crate::core::verify::judge`] says
//! differs, durably, before going on. Decides nothing the core decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockmap::types::{BlockRange, NodeId};
use futures::future::join_all;

use super::copies::CopyFailure;
use super::resync::ResyncError;
use super::Inner;
use crate::core::verify::judge;
use crate::core::write::{FailReason, MarkDirty};
use crate::core::ByteRange;
use crate::proto::{chunk_checksum, Op, Response};

/// Bytes compared under one hold of the range lock.
const PIECE: u64 = 4 << 20;

/// A range whose copies disagree, and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyMismatch {
    /// The bytes (one granule of the bitmap, or the image's tail).
    pub range: ByteRange,
    /// The copies kept in sync.
    pub majority: Vec<NodeId>,
    /// The copies marked out-of-sync for the range.
    pub differ: Vec<NodeId>,
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Bytes to compare.
    pub total_bytes: u64,
    /// Bytes compared.
    pub done_bytes: u64,
    /// Ranges where the copies disagree (all marked).
    pub mismatches: Vec<VerifyMismatch>,
    /// Bytes with fewer than two in-sync copies (nothing to compare).
    pub single_copy_bytes: u64,
}

impl Inner {
    /// Verifies `blocks` (only ranges where `location`, if given, is in
    /// sync, compared with the others). `progress` is called after every
    /// piece, `cancel` looked at between pieces.
    pub(crate) async fn verify(
        self: &Arc<Self>,
        blocks: BlockRange,
        location: Option<&NodeId>,
        progress: &mut (dyn FnMut(&VerifyReport) + Send),
        cancel: &AtomicBool,
    ) -> Result<VerifyReport, ResyncError> {
        let image = self.cfg.image.to_string();
        let rec = self.cache.snapshot();
        rec.image
            .block_range(Some(blocks.start.0), Some(blocks.end.0))
            .map_err(|source| ResyncError::Store {
                image: image.clone(),
                source,
            })?;
        if let Some(n) = location {
            if !rec.location_nodes().contains(n) {
                return Err(ResyncError::Store {
                    image,
                    source: blockmap::Error::NotALocation {
                        image: rec.image.name.clone(),
                        node: n.clone(),
                        ranges: blockmap::error::RangeList(vec![blocks]),
                    },
                });
            }
        }
        let (size, bs) = (rec.image.size.bytes(), rec.image.block_size.bytes());
        let gran = rec.image.granularity.bytes();
        let whole = ByteRange::from_bounds(
            (blocks.start.0 * bs).min(size),
            (blocks.end.0 * bs).min(size),
        );
        let mut report = VerifyReport {
            total_bytes: whole.len,
            ..VerifyReport::default()
        };
        progress(&report);
        let mut at = whole.offset;
        while at < whole.end() {
            if cancel.load(Ordering::Acquire) {
                return Err(ResyncError::Cancelled { image });
            }
            if self.fenced.load(Ordering::Acquire)
                || self.hooks.gate.as_ref().is_some_and(|g| !g.may_ack())
            {
                return Err(ResyncError::Lost { image });
            }
            let piece = ByteRange::from_bounds(at, (at + PIECE).min(whole.end()));
            let _held = self.lock.lock(piece).await;
            for (r, nodes) in self.cache.read_pieces(piece) {
                let wanted = location.is_none_or(|l| nodes.contains(l));
                if nodes.len() < 2 || !wanted {
                    report.single_copy_bytes += if wanted { r.len } else { 0 };
                    continue;
                }
                let asks = nodes.iter().map(|n| self.checksums(n, r, gran));
                let answers = join_all(asks).await;
                let mut sums = Vec::new();
                for (n, a) in nodes.iter().zip(answers) {
                    match a {
                        Ok(s) => sums.push((n.clone(), s)),
                        // A copy that cannot answer is not judged; the
                        // write path marks it when it fails a write.
                        Err(f) => tracing::warn!(image = %self.cfg.image, node = %n,
                            reason = %f.message, "verify: a copy did not answer"),
                    }
                }
                let mut prefer = nodes.clone();
                prefer.sort_by_key(|n| *n != self.node);
                for d in judge(&sums, &prefer) {
                    let off = r.offset + d.chunk as u64 * gran;
                    let range = ByteRange::from_bounds(off, (off + gran).min(r.end()));
                    let differ: Vec<NodeId> = match location {
                        // Only the asked location is judged against the rest.
                        Some(l) if d.differ.contains(l) => vec![l.clone()],
                        Some(l) if d.majority.contains(l) => Vec::new(),
                        Some(_) => Vec::new(),
                        None => d.differ.clone(),
                    };
                    if differ.is_empty() {
                        continue;
                    }
                    for n in &differ {
                        let m = MarkDirty {
                            node: n.clone(),
                            ranges: vec![range],
                        };
                        self.persist_mark(&m)
                            .await
                            .map_err(|why| ResyncError::Mark {
                                image: image.clone(),
                                node: n.clone(),
                                why,
                            })?;
                    }
                    report.mismatches.push(VerifyMismatch {
                        range,
                        majority: d.majority,
                        differ,
                    });
                }
            }
            report.done_bytes += piece.len;
            at = piece.end();
            progress(&report);
        }
        Ok(report)
    }

    /// Checksums of `r` on `node`, one per `chunk` bytes.
    async fn checksums(
        &self,
        node: &NodeId,
        r: ByteRange,
        chunk: u64,
    ) -> Result<Vec<u64>, CopyFailure> {
        if *node == self.node {
            let data = self.read_from(node, r).await?;
            return Ok(data.chunks(chunk as usize).map(chunk_checksum).collect());
        }
        let op = Op::Checksum {
            offset: r.offset,
            len: r.len,
            chunk: chunk as u32,
        };
        match self.remote().call(node, op).await? {
            Response::Checksums { sums, .. } => Ok(sums),
            other => Err(CopyFailure {
                reason: FailReason::Io,
                no_space: false,
                message: format!("unexpected answer from {node}: {other:?}"),
            }),
        }
    }
}
