//! Read-copy choice (invariant 3, ARCHITECTURE.md).
//!
//! Owns the order in which the in-sync copies of a range are tried: the local
//! node first, then copies at the same site, then the lowest measured
//! latency (unknown latency last, ties by node id so the order is stable).
//! Copies that are not in sync for the range are never candidates. After a
//! failure the next candidate is returned with the effect "mark the failed
//! copy dirty for this range"; the initiator sees an error only when no
//! candidate is left.
//!
//! ```text
//!   Trying(i) --next_after_failure--> Trying(i+1)   (effect: mark copy i)
//!       |                                  |
//!       `--- no candidate left ------------+--> Exhausted (error)
//! ```
//!
//! Knows nothing of how a copy is read or how a mark is persisted.

use blockmap::types::NodeId;

use super::units::ByteRange;
use super::write::MarkDirty;

/// One location of the range, as the placement cache and the latency
/// estimator see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCopy {
    /// The node.
    pub node: NodeId,
    /// Its site or zone label, if known.
    pub site: Option<String>,
    /// True when no dirty bit covers any byte of the range.
    pub in_sync: bool,
    /// Smoothed read latency in microseconds, if measured.
    pub latency_us: Option<u64>,
}

/// Where the reader runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderPlace {
    /// The node the target runs on.
    pub node: NodeId,
    /// Its site label, if any.
    pub site: Option<String>,
}

/// No copy can serve the read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No in-sync copy of the range exists, or every one failed.
    #[error("no in-sync copy of {range} can be read")]
    NoCopyLeft {
        /// The range.
        range: ByteRange,
    },
    /// `next_after_failure` named a copy other than the current one.
    #[error("{0} is not the copy being tried")]
    NotCurrent(NodeId),
}

/// The read of one range: the ordered candidates and the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadChoice {
    range: ByteRange,
    order: Vec<NodeId>,
    at: usize,
}

impl ReadChoice {
    /// Orders the in-sync copies of `range` for a reader at `place`. Fails
    /// when none is in sync.
    pub fn new(
        range: ByteRange,
        place: &ReaderPlace,
        copies: &[ReadCopy],
    ) -> Result<Self, ReadError> {
        let mut c: Vec<&ReadCopy> = copies.iter().filter(|c| c.in_sync).collect();
        // Sort key: not-local, not-same-site, latency (None last), node id.
        c.sort_by_key(|c| {
            let local = c.node != place.node;
            let site = !(place.site.is_some() && c.site == place.site);
            (
                local,
                site,
                c.latency_us.unwrap_or(u64::MAX),
                c.node.clone(),
            )
        });
        let order: Vec<NodeId> = c.into_iter().map(|c| c.node.clone()).collect();
        if order.is_empty() {
            return Err(ReadError::NoCopyLeft { range });
        }
        Ok(ReadChoice {
            range,
            order,
            at: 0,
        })
    }

    /// The copy to read now.
    pub fn current(&self) -> Option<&NodeId> {
        self.order.get(self.at)
    }

    /// All candidates in order (tried ones included).
    pub fn candidates(&self) -> &[NodeId] {
        &self.order
    }

    /// The current copy `failed` could not be read: returns the effect that
    /// marks it dirty for the range, and the next candidate, or
    /// [`ReadError::NoCopyLeft`] (the mark is still due: it is returned with
    /// the error's caller through [`ReadChoice::failure_mark`]).
    pub fn next_after_failure(
        &mut self,
        failed: &NodeId,
    ) -> Result<(NodeId, MarkDirty), ReadError> {
        let mark = self.failure_mark(failed)?;
        self.at += 1;
        match self.order.get(self.at) {
            Some(n) => Ok((n.clone(), mark)),
            None => Err(ReadError::NoCopyLeft { range: self.range }),
        }
    }

    /// The mark for a failed current copy, without moving on.
    pub fn failure_mark(&self, failed: &NodeId) -> Result<MarkDirty, ReadError> {
        if self.current() != Some(failed) {
            return Err(ReadError::NotCurrent(failed.clone()));
        }
        Ok(MarkDirty {
            node: failed.clone(),
            ranges: vec![self.range],
        })
    }
}
