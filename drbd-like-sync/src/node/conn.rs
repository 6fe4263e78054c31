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
//! the reader runs each request inline first; one that has to wait goes on
//! as its own task (at most `max_inflight` at once per connection, which is
//! the back-pressure: the reader stops reading). Inline answers go out
//! together before the reader waits on the socket again; a task answers
//! through the shared [`FrameSender`] itself.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::task::Poll;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::images::CopyError;
use super::wire::{self, FrameReader, FrameSender, WireError};
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
    let (sender, flusher) = FrameSender::spawn(wr);
    let sender = Arc::new(sender);
    let permits = Arc::new(Semaphore::new(node.cfg.max_inflight));
    // Answers of requests that finished inline, sent together before the
    // reader next waits on the socket (one write for a pipelined batch).
    let mut answers: Vec<Message> = Vec::new();
    let end = loop {
        let msg = match reader.buffered() {
            Ok(Some(m)) => m,
            Ok(None) => {
                if sender.send(&answers).is_err() {
                    break None;
                }
                answers.clear();
                match reader.next().await {
                    Ok(m) => m,
                    Err(WireError::Closed) => break None,
                    Err(e) => break Some(e.to_string()),
                }
            }
            Err(e) => break Some(e.to_string()),
        };
        match msg {
            Message::Request(req) => {
                let permit = match Arc::clone(&permits).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        // Full: what is answered goes out before we wait.
                        if sender.send(&answers).is_err() {
                            break None;
                        }
                        answers.clear();
                        let Ok(p) = Arc::clone(&permits).acquire_owned().await else {
                            break None;
                        };
                        p
                    }
                };
                // Run the request here first: most finish in their first
                // poll (a cached read, a small buffered write), and then
                // no task is spawned and woken for them. One that waits
                // (on the engine, the gate) goes on as its own task.
                let mut work = Box::pin(execute(Arc::clone(&node), req, Arc::clone(&sender)));
                match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
                    Poll::Ready(answer) => answers.extend(answer),
                    Poll::Pending => {
                        let sender = Arc::clone(&sender);
                        tokio::spawn(async move {
                            if let Some(m) = work.await {
                                let _ = sender.send(&[m]);
                            }
                            drop(permit);
                        });
                    }
                }
            }
            Message::Ping(id) => answers.push(ok(id, Bytes::new())),
            Message::Unknown(u) => match u.request_id() {
                Some(id) => {
                    let e = ErrorReply::new(
                        id,
                        ErrorCode::UNSUPPORTED,
                        format!("opcode {} is not supported by this node", u.opcode),
                    );
                    answers.push(Message::Response(Response::Error(e)));
                }
                None => break Some(format!("unexpected frame with opcode {}", u.opcode)),
            },
            other => break Some(format!("unexpected {} after the handshake", other.name())),
        }
    };
    if let Some(why) = end {
        tracing::warn!(peer = %peer, node = %client, error = %why, "replication connection closed");
        answers.push(Message::Fatal(Fatal {
            code: ErrorCode::PROTOCOL,
            version: crate::proto::PROTOCOL_VERSION,
            message: why,
        }));
    }
    let _ = sender.send(&answers);
    // The flusher ends once the requests still running have answered and
    // dropped their handles, and everything queued is written.
    drop(sender);
    let _ = flusher.await;
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

/// Runs one request; its answer (`None` when a stream sent its responses
/// already, or the connection failed under it).
async fn execute(node: Arc<StorageNode>, req: Request, out: Arc<FrameSender>) -> Option<Message> {
    let id = req.id;
    match run_op(&node, req, &out).await {
        Ok(m) => m,
        Err(e) => Some(error_reply(id, &e)),
    }
}

/// The operation itself, behind the gate. `Ok(None)` when the responses
/// were sent already (a stream).
async fn run_op(
    node: &StorageNode,
    req: Request,
    out: &FrameSender,
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
                    if out.send(&[Message::Response(hole)]).is_err() {
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
                    if out.send(&[Message::Response(chunk)]).is_err() {
                        return Ok(None);
                    }
                    // Paced by the socket: a long stream must not queue
                    // the range in memory.
                    out.wait_room().await;
                    pos += n;
                }
            }
            Message::Response(Response::StreamEnd { id })
        }
    }))
}
