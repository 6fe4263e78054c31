//! Framed message I/O over a byte stream, shared by the storage server and
//! its client: one read fills the buffer with as many frames as arrived,
//! and one write flushes every message queued so far.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{self, Limits, Message, ProtoError};

/// A failure of a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("replication connection I/O error")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that do not decode.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
}

/// Reads frames from `R` into a reusable buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: Limits,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that refuses frames beyond `limits`.
    pub fn new(inner: R, limits: Limits) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            limits,
        }
    }

    /// The next message. Cancel-safe: bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Message, WireError> {
        loop {
            if let Some(msg) = proto::decode(&mut self.buf, &self.limits)? {
                return Ok(msg);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }
}

/// Encodes `msgs` into one buffer and writes it with one call.
pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    msgs: &[Message],
    scratch: &mut BytesMut,
) -> Result<(), WireError> {
    scratch.clear();
    for m in msgs {
        proto::encode(m, scratch);
    }
    w.write_all(scratch).await?;
    Ok(())
}
