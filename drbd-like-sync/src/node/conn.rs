//! One replication connection, server side: the handshake (invariant 8,
//! ARCHITECTURE.md), then requests served concurrently, each checked
//! against its copy's generation gate before it touches the data.
//!
//! ```text
//!   accept --> Handshake --(Done)--> Serving --(peer closes / fault)--> closed
//!                  |                     |
//!                  `--(Failed: Fatal)--> closed (logged with the peer address)
//! ```
//!
//! A wrong secret or protocol version ends the connection after the Fatal
//! frame that says why; nothing else happens on it. In the serving state
//! each request runs as its own task (at most `max_inflight` at once per
//! connection, which is the back-pressure: the reader stops reading), and
//! one writer task sends the responses in batches.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use super::images::CopyError;
use super::wire::{self, FrameReader, WireError};
use super::StorageNode;
use crate::proto::{
    chunk_checksum, ErrorCode, ErrorReply, Fatal, Generation, Message, Nonce, Op, Request,
    Response, ServerHandshake, Step,
};
use crate::storage::{StorageError, StorageErrorKind};

/// Largest piece read at once for `Checksum` and `StreamRange`.
const PIECE: u64 = 1 << 20;

/// Serves one accepted connection until the peer closes it or it fails.
pub(super) async fn serve(stream: TcpStream, peer: SocketAddr, node: Arc<StorageNode>) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, node.cfg.limits);
    let mut scratch = BytesMut::new();
    let hs = tokio::time::timeout(
        node.cfg.handshake_timeout,
        handshake(&mut reader, &mut wr, &mut scratch, &node),
    )
    .await;
    let client = match hs {
        Ok(Ok(id)) => id,
        Ok(Err(WireError::Closed)) => {
            // A bare connect and close (a readiness probe, a port scan).
            tracing::debug!(peer = %peer, "replication connection closed before the handshake");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, error = %e, "replication peer refused");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %peer, "replication peer refused: no handshake in time");
            return;
        }
    };
    tracing::info!(peer = %peer, node = %client, "replication peer authenticated");
    let (tx, rx) = mpsc::channel::<Message>(1024);
    let writer = tokio::spawn(write_responses(wr, rx));
    let permits = Arc::new(Semaphore::new(node.cfg.max_inflight));
    let end = loop {
        let msg = match reader.next().await {
            Ok(m) => m,
            Err(WireError::Closed) => break None,
            Err(e) => break Some(e.to_string()),
        };
        match msg {
            Message::Request(req) => {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break None;
                };
                let node = Arc::clone(&node);
                let tx = tx.clone();
                tokio::spawn(async move {
                    execute(&node, req, &tx).await;
                    drop(permit);
                });
            }
            Message::Ping(id) => {
                let _ = tx.send(ok(id, Bytes::new())).await;
            }
            Message::Unknown(u) => match u.request_id() {
                Some(id) => {
                    let e = ErrorReply::new(
                        id,
                        ErrorCode::UNSUPPORTED,
                        format!("opcode {} is not supported by this node", u.opcode),
                    );
                    let _ = tx.send(Message::Response(Response::Error(e))).await;
                }
                None => break Some(format!("unexpected frame with opcode {}", u.opcode)),
            },
            other => break Some(format!("unexpected {} after the handshake", other.name())),
        }
    };
    if let Some(why) = end {
        tracing::warn!(peer = %peer, node = %client, error = %why, "replication connection closed");
        let _ = tx
            .send(Message::Fatal(Fatal {
                code: ErrorCode::PROTOCOL,
                version: crate::proto::PROTOCOL_VERSION,
                message: why,
            }))
            .await;
    }
    drop(tx);
    let _ = writer.await;
}

/// Runs the server side of the handshake; the authenticated client's id.
async fn handshake(
    reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    scratch: &mut BytesMut,
    node: &StorageNode,
) -> Result<blockmap::types::NodeId, WireError> {
    let mut machine = ServerHandshake::new(node.handshake_config(), Nonce(rand::random()));
    loop {
        let msg = match reader.next().await {
            Ok(m) => m,
            Err(WireError::Proto(e)) => {
                // Tell the peer why before closing: an oversized or garbled
                // frame gets a Fatal naming the fault.
                let _ = wire::write_all(wr, &[Message::Fatal(Fatal::for_error(&e))], scratch).await;
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        match machine.step(&msg) {
            Step::Send(m) => wire::write_all(wr, &[m], scratch).await?,
            Step::Done { send, peer } => {
                if let Some(m) = send {
                    wire::write_all(wr, &[m], scratch).await?;
                }
                return Ok(peer);
            }
            Step::Failed { send, error } => {
                if let Some(m) = send {
                    let _ = wire::write_all(wr, &[m], scratch).await;
                }
                return Err(error.into());
            }
        }
    }
}

/// Sends responses, as many per write as are queued.
async fn write_responses(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Message>) {
    let mut scratch = BytesMut::new();
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        if wire::write_all(&mut wr, &batch, &mut scratch)
            .await
            .is_err()
        {
            return;
        }
        batch.clear();
    }
}

fn ok(id: crate::proto::RequestId, data: Bytes) -> Message {
    Message::Response(Response::Ok { id, data })
}

fn error_reply(id: crate::proto::RequestId, e: &CopyError) -> Message {
    let reply = match e {
        CopyError::Fenced { current, .. } => {
            ErrorReply::fenced(id, Generation(*current), e.to_string())
        }
        CopyError::UnknownImage(_) | CopyError::NotPlacedHere { .. } => {
            ErrorReply::new(id, ErrorCode::UNKNOWN_IMAGE, e.to_string())
        }
        CopyError::Catalog { .. } => ErrorReply::new(id, ErrorCode::IO, e.to_string()),
        CopyError::Storage(s) => {
            let code = match s.kind() {
                StorageErrorKind::NoSpace => ErrorCode::NO_SPACE,
                StorageErrorKind::OutOfRange => ErrorCode::OUT_OF_RANGE,
                StorageErrorKind::Unsupported => ErrorCode::UNSUPPORTED,
                _ => ErrorCode::IO,
            };
            // The error chain names the cause (ENOSPC, EIO, ...).
            let mut msg = s.to_string();
            let mut src = std::error::Error::source(s);
            while let Some(cause) = src {
                msg.push_str(": ");
                msg.push_str(&cause.to_string());
                src = cause.source();
            }
            ErrorReply::new(id, code, msg)
        }
    };
    Message::Response(Response::Error(reply))
}

/// Runs one request and sends its response(s).
async fn execute(node: &StorageNode, req: Request, tx: &mpsc::Sender<Message>) {
    let id = req.id;
    let result = run_op(node, req, tx).await;
    let msg = match result {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => error_reply(id, &e),
    };
    let _ = tx.send(msg).await;
}

/// The operation itself, behind the gate. `Ok(None)` when the responses
/// were sent already (a stream).
async fn run_op(
    node: &StorageNode,
    req: Request,
    tx: &mpsc::Sender<Message>,
) -> Result<Option<Message>, CopyError> {
    let copy = node.images.get(&req.image).await?;
    let _admitted = copy.admit(req.generation).await?;
    let b = copy.backend();
    let id = req.id;
    let max_data = u64::from(
        node.cfg
            .limits
            .max_body_len
            .saturating_sub(crate::proto::BODY_OVERHEAD),
    );
    let too_big = |len: u64| -> Result<(), CopyError> {
        if len > max_data {
            return Err(StorageError::OutOfRange {
                offset: 0,
                len,
                size: max_data,
            }
            .into());
        }
        Ok(())
    };
    Ok(Some(match req.op {
        Op::Read { offset, len } => {
            too_big(u64::from(len))?;
            ok(id, b.read(offset, len as usize).await?)
        }
        Op::Write { offset, data, fua } => {
            b.write(offset, data, fua).await?;
            ok(id, Bytes::new())
        }
        Op::Flush => {
            b.flush().await?;
            ok(id, Bytes::new())
        }
        Op::WriteZeroes { offset, len } => {
            b.write_zeroes(offset, len, false).await?;
            ok(id, Bytes::new())
        }
        Op::Discard { offset, len } => {
            b.discard(offset, len).await?;
            ok(id, Bytes::new())
        }
        Op::Checksum { offset, len, chunk } => {
            crate::storage::check_range(offset, len, b.size())?;
            if chunk == 0 || u64::from(chunk) > max_data || len / u64::from(chunk) > max_data / 8 {
                return Err(StorageError::OutOfRange {
                    offset,
                    len,
                    size: b.size(),
                }
                .into());
            }
            let mut sums = Vec::with_capacity(len.div_ceil(u64::from(chunk)) as usize);
            let mut pos = offset;
            while pos < offset + len {
                let n = u64::from(chunk).min(offset + len - pos);
                sums.push(chunk_checksum(&b.read(pos, n as usize).await?));
                pos += n;
            }
            Message::Response(Response::Checksums { id, chunk, sums })
        }
        Op::StreamRange { offset, len } => {
            crate::storage::check_range(offset, len, b.size())?;
            let end = offset + len;
            let mut pos = offset;
            while pos < end {
                let (mapped, extent) = b.allocation(pos).await?;
                let run = extent.max(1).min(end - pos);
                if !mapped {
                    let hole = Response::StreamHole {
                        id,
                        offset: pos,
                        len: run,
                    };
                    if tx.send(Message::Response(hole)).await.is_err() {
                        return Ok(None);
                    }
                    pos += run;
                    continue;
                }
                let stop = pos + run;
                while pos < stop {
                    let n = PIECE.min(stop - pos);
                    let data = b.read(pos, n as usize).await?;
                    let chunk = Response::StreamChunk {
                        id,
                        offset: pos,
                        data,
                    };
                    if tx.send(Message::Response(chunk)).await.is_err() {
                        return Ok(None);
                    }
                    pos += n;
                }
            }
            Message::Response(Response::StreamEnd { id })
        }
    }))
}
