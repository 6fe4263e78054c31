//! One operation on one copy: the local copy straight through its engine
//! (behind the same generation gate remote nodes apply), a remote copy
//! through its [`PeerClient`], each bounded by the copy timeout.
//!
//! Owns how an operation is cut into requests (at most [`MAX_PIECE`] bytes
//! each, pipelined on the one connection) and how every failure becomes a
//! [`CopyFailure`] with a [`FailReason`] for the core. Knows nothing of the
//! ack rule or the placement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockmap::types::{ImageName, NodeId};
use bytes::{Bytes, BytesMut};

use super::peers::Peers;
use crate::core::resync::SourcePiece;
use crate::core::write::FailReason;
use crate::core::{ByteRange, Generation};
use crate::node::{ClientError, CopyError, ImageCopy};
use crate::proto::{ErrorCode, Op, Response};
use crate::storage::{StorageError, StorageErrorKind};

/// Largest data carried by one request (well inside the default frame
/// limit of 16 MiB, so a peer with default limits accepts it).
pub(crate) const MAX_PIECE: u64 = 4 << 20;

/// What to do to a copy, for each of its ranges.
#[derive(Debug, Clone)]
pub(crate) enum CopyOp {
    /// Write the bytes of `data`, which starts at image offset `base`.
    Write {
        /// First byte of `data` in the image.
        base: u64,
        /// The whole write's data.
        data: Bytes,
        /// Force Unit Access on the copy.
        fua: bool,
    },
    /// Write zeroes; with `unmap` the copy may deallocate instead.
    Zeroes {
        /// Deallocation allowed.
        unmap: bool,
    },
    /// Deallocate.
    Discard,
    /// Flush the copy (ranges are ignored).
    Flush,
}

/// Why one copy failed one operation.
#[derive(Debug, Clone)]
pub(crate) struct CopyFailure {
    /// The core's classification.
    pub reason: FailReason,
    /// The copy ran out of space (reported as NoSpace when every copy did).
    pub no_space: bool,
    /// For operators (`Mirror::problems`).
    pub message: String,
}

impl CopyFailure {
    fn timeout(what: impl std::fmt::Display) -> Self {
        CopyFailure {
            reason: FailReason::Timeout,
            no_space: false,
            message: what.to_string(),
        }
    }

    fn from_storage(e: &StorageError) -> Self {
        CopyFailure {
            reason: FailReason::Io,
            no_space: e.kind() == StorageErrorKind::NoSpace,
            message: e.to_string(),
        }
    }

    fn from_copy(e: &CopyError) -> Self {
        match e {
            CopyError::Fenced { .. } => CopyFailure {
                reason: FailReason::Fenced,
                no_space: false,
                message: e.to_string(),
            },
            CopyError::Storage(s) => Self::from_storage(s),
            other => CopyFailure {
                reason: FailReason::Io,
                no_space: false,
                message: other.to_string(),
            },
        }
    }

    fn from_client(e: &ClientError) -> Self {
        match e {
            ClientError::Remote { reply, .. } => CopyFailure {
                reason: if reply.code == ErrorCode::FENCED {
                    FailReason::Fenced
                } else {
                    FailReason::Io
                },
                no_space: reply.code == ErrorCode::NO_SPACE,
                message: e.to_string(),
            },
            other => CopyFailure::timeout(other),
        }
    }

    /// True when the connection is suspect and should be remade.
    fn connection_suspect(&self) -> bool {
        self.reason == FailReason::Timeout
    }
}

/// Cuts `ranges` into pieces of at most [`MAX_PIECE`] bytes.
fn cut(ranges: &[ByteRange]) -> Vec<ByteRange> {
    let mut out = Vec::new();
    for r in ranges {
        let mut at = r.offset;
        while at < r.end() {
            let len = MAX_PIECE.min(r.end() - at);
            out.push(ByteRange::new(at, len));
            at += len;
        }
    }
    out
}

/// The local copy, with the generation the mirror writes at.
pub(crate) struct Local {
    pub copy: Arc<ImageCopy>,
}

impl Local {
    /// Runs `op` over `ranges` on the local engine, after the gate.
    pub(crate) async fn run(
        &self,
        g: Generation,
        op: &CopyOp,
        ranges: &[ByteRange],
    ) -> Result<(), CopyFailure> {
        let _admitted = self
            .copy
            .admit(g)
            .await
            .map_err(|e| CopyFailure::from_copy(&e))?;
        let b = self.copy.backend();
        let res = match op {
            CopyOp::Flush => b.flush().await,
            _ => {
                for r in ranges {
                    match op {
                        CopyOp::Write { base, data, fua } => {
                            let s = (r.offset - base) as usize;
                            b.write(r.offset, data.slice(s..s + r.len as usize), *fua)
                                .await
                        }
                        CopyOp::Zeroes { unmap } => b.write_zeroes(r.offset, r.len, *unmap).await,
                        CopyOp::Discard => b.discard(r.offset, r.len).await,
                        CopyOp::Flush => Ok(()),
                    }
                    .map_err(|e| CopyFailure::from_storage(&e))?;
                }
                Ok(())
            }
        };
        res.map_err(|e| CopyFailure::from_storage(&e))
    }

    /// The data and holes of `range` in the local copy, after the gate
    /// (a resync batch's source). Data comes in pieces of at most
    /// [`MAX_PIECE`] bytes.
    pub(crate) async fn stream(
        &self,
        g: Generation,
        range: ByteRange,
    ) -> Result<Vec<SourcePiece<Bytes>>, CopyFailure> {
        let _admitted = self
            .copy
            .admit(g)
            .await
            .map_err(|e| CopyFailure::from_copy(&e))?;
        let b = self.copy.backend();
        let fail = |e: StorageError| CopyFailure::from_storage(&e);
        let mut out = Vec::new();
        let mut pos = range.offset;
        while pos < range.end() {
            let (mapped, extent) = b.allocation(pos).await.map_err(fail)?;
            let stop = pos + extent.max(1).min(range.end() - pos);
            if !mapped {
                out.push(SourcePiece::Hole(ByteRange::from_bounds(pos, stop)));
                pos = stop;
                continue;
            }
            while pos < stop {
                let n = MAX_PIECE.min(stop - pos);
                out.push(SourcePiece::Data(
                    pos,
                    b.read(pos, n as usize).await.map_err(fail)?,
                ));
                pos += n;
            }
        }
        Ok(out)
    }

    /// Reads `range` from the local engine, after the gate.
    pub(crate) async fn read(&self, g: Generation, range: ByteRange) -> Result<Bytes, CopyFailure> {
        let _admitted = self
            .copy
            .admit(g)
            .await
            .map_err(|e| CopyFailure::from_copy(&e))?;
        self.copy
            .backend()
            .read(range.offset, range.len as usize)
            .await
            .map_err(|e| CopyFailure::from_storage(&e))
    }
}

/// A remote copy of one image, reached through the connector.
pub(crate) struct Remote<'a> {
    pub peers: &'a Peers,
    pub image: &'a ImageName,
    pub generation: Generation,
    pub timeout: Duration,
}

impl Remote<'_> {
    /// Runs `op` over `ranges` on `node` within the timeout; pieces are
    /// pipelined on the one connection. Records the call time.
    pub(crate) async fn run(
        &self,
        node: &NodeId,
        op: &CopyOp,
        ranges: &[ByteRange],
    ) -> Result<(), CopyFailure> {
        let requests: Vec<Op> = match op {
            CopyOp::Flush => vec![Op::Flush],
            CopyOp::Write { base, data, fua } => cut(ranges)
                .into_iter()
                .map(|r| {
                    let s = (r.offset - base) as usize;
                    Op::Write {
                        offset: r.offset,
                        data: data.slice(s..s + r.len as usize),
                        fua: *fua,
                    }
                })
                .collect(),
            // The protocol's WriteZeroes has no unmap flag: with unmap
            // allowed, a discard (reads as zeroes afterwards) is what the
            // local engine does too.
            CopyOp::Zeroes { unmap: true } | CopyOp::Discard => ranges
                .iter()
                .map(|r| Op::Discard {
                    offset: r.offset,
                    len: r.len,
                })
                .collect(),
            CopyOp::Zeroes { unmap: false } => ranges
                .iter()
                .map(|r| Op::WriteZeroes {
                    offset: r.offset,
                    len: r.len,
                })
                .collect(),
        };
        self.exchange(node, requests).await.map(|_| ())
    }

    /// Reads `range` from `node` within the timeout.
    pub(crate) async fn read(&self, node: &NodeId, range: ByteRange) -> Result<Bytes, CopyFailure> {
        let requests = cut(&[range])
            .into_iter()
            .map(|r| Op::Read {
                offset: r.offset,
                len: r.len as u32,
            })
            .collect();
        let mut parts = self.exchange(node, requests).await?;
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let mut out = BytesMut::with_capacity(range.len as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// One request with one answer (a `Checksum`), within the timeout.
    pub(crate) async fn call(&self, node: &NodeId, op: Op) -> Result<Response, CopyFailure> {
        self.with_client(node, |client| async move {
            client
                .call(self.image, self.generation, op)
                .await
                .map_err(|e| CopyFailure::from_client(&e))
        })
        .await
    }

    /// Writes data pieces and punches holes on `node`, every request
    /// pipelined on the one connection, within the timeout (a resync
    /// batch's destination).
    pub(crate) async fn put(
        &self,
        node: &NodeId,
        pieces: Vec<SourcePiece<Bytes>>,
    ) -> Result<(), CopyFailure> {
        let mut ops = Vec::with_capacity(pieces.len());
        for p in pieces {
            match p {
                SourcePiece::Data(off, data) => {
                    let mut at = 0usize;
                    while at < data.len() {
                        let n = (MAX_PIECE as usize).min(data.len() - at);
                        ops.push(Op::Write {
                            offset: off + at as u64,
                            data: data.slice(at..at + n),
                            fua: false,
                        });
                        at += n;
                    }
                }
                SourcePiece::Hole(r) => ops.push(Op::Discard {
                    offset: r.offset,
                    len: r.len,
                }),
            }
        }
        self.exchange(node, ops).await.map(|_| ())
    }

    /// The data and holes of `parts` on `node`, in order, through the
    /// protocol's `StreamRange` (one per part, pipelined; a resync batch's
    /// source), within the timeout.
    pub(crate) async fn stream(
        &self,
        node: &NodeId,
        parts: &[ByteRange],
    ) -> Result<Vec<SourcePiece<Bytes>>, CopyFailure> {
        self.with_client(node, |client| async move {
            let mut streams = Vec::with_capacity(parts.len());
            for p in parts {
                let op = Op::StreamRange {
                    offset: p.offset,
                    len: p.len,
                };
                let rx = client
                    .start(self.image, self.generation, op)
                    .map_err(|e| CopyFailure::from_client(&e))?;
                streams.push(rx);
            }
            let mut out = Vec::new();
            for mut rx in streams {
                loop {
                    match rx.recv().await {
                        Some(Response::StreamChunk { offset, data, .. }) => {
                            out.push(SourcePiece::Data(offset, data))
                        }
                        Some(Response::StreamHole { offset, len, .. }) => {
                            out.push(SourcePiece::Hole(ByteRange::new(offset, len)))
                        }
                        Some(Response::StreamEnd { .. }) => break,
                        other => return Err(not_answered(node, other)),
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Sends every request at once, then collects the answers in order.
    /// A timeout or a lost connection drops the client, so the next call
    /// reconnects (a closed client would otherwise keep a dead socket and
    /// let every later call wait out the timeout).
    async fn exchange(&self, node: &NodeId, requests: Vec<Op>) -> Result<Vec<Bytes>, CopyFailure> {
        let started = Instant::now();
        let res = self
            .with_client(node, |client| async move {
                let mut waiting = Vec::with_capacity(requests.len());
                for op in requests {
                    let rx = client
                        .start(self.image, self.generation, op)
                        .map_err(|e| CopyFailure::from_client(&e))?;
                    waiting.push(rx);
                }
                let mut out = Vec::with_capacity(waiting.len());
                for mut rx in waiting {
                    match rx.recv().await {
                        Some(Response::Ok { data, .. }) => out.push(data),
                        other => return Err(not_answered(node, other)),
                    }
                }
                Ok(out)
            })
            .await;
        // Latency counts successes only: a timeout says nothing about how
        // fast the peer is once it answers again.
        if res.is_ok() {
            self.peers.record_latency(node, started.elapsed());
        }
        res
    }

    /// Runs `work` with `node`'s client within the timeout. A timeout or a
    /// lost connection drops the client, so the next call reconnects (a
    /// closed client would otherwise keep a dead socket and let every later
    /// call wait out the timeout).
    async fn with_client<'a, T, F>(
        &'a self,
        node: &'a NodeId,
        work: impl FnOnce(Arc<crate::node::PeerClient>) -> F,
    ) -> Result<T, CopyFailure>
    where
        F: std::future::Future<Output = Result<T, CopyFailure>> + 'a,
    {
        let mut used = None;
        let run = async {
            let client = self
                .peers
                .client(node)
                .await
                .map_err(CopyFailure::timeout)?;
            used = Some(Arc::clone(&client));
            work(client).await
        };
        let res = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(CopyFailure::timeout(format!(
                "no answer from {node} within {:?}",
                self.timeout
            ))),
        };
        if let (Err(f), Some(c)) = (&res, &used) {
            if f.connection_suspect() {
                self.peers.forget(node, c).await;
            }
        }
        res
    }
}

/// The failure an answer other than the expected one means: the node's
/// error, an unexpected frame, or a lost connection.
fn not_answered(node: &NodeId, got: Option<Response>) -> CopyFailure {
    match got {
        Some(Response::Error(reply)) => CopyFailure::from_client(&ClientError::Remote {
            node: node.clone(),
            reply,
        }),
        Some(other) => CopyFailure::timeout(format!("unexpected answer from {node}: {other:?}")),
        None => CopyFailure::timeout(ClientError::ConnectionLost { node: node.clone() }),
    }
}
