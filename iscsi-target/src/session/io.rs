//! Socket plumbing for one connection: reading whole PDUs into a buffer that
//! holds many, and a writer task that flushes many PDUs with one vectored
//! write (DESIGN.md, "Performance shape": no syscall per PDU).

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::pdu::{decode_frame, FrameError, FrameLimits, RawPdu};

/// Size of the receive buffer refill; one read may bring many PDUs.
const READ_CHUNK: usize = 256 * 1024;

/// At most this many buffers go into one `writev` (IOV_MAX is 1024).
const MAX_IOV: usize = 512;

/// Errors of the connection's byte stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A framing fault: the connection must be closed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection in the middle of a PDU.
    #[error("connection closed in the middle of a PDU ({0} bytes pending)")]
    Truncated(usize),
}

/// Reads the next PDU. `Ok(None)` is a clean end of stream between PDUs.
///
/// Cancel-safe: bytes already read stay in `buf`.
pub async fn read_pdu<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> Result<Option<RawPdu>, StreamError> {
    loop {
        if let Some(pdu) = decode_frame(buf, limits)? {
            return Ok(Some(pdu));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        if reader.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(StreamError::Truncated(buf.len()))
            };
        }
    }
}

/// The sending side of a connection: each message is one or more encoded
/// PDUs, written in order.
pub type Outbox = mpsc::Sender<Vec<Bytes>>;

/// Runs the writer: takes every queued message, then writes them all with as
/// few vectored writes as possible. Ends when all senders are gone, after
/// flushing, or on a socket error.
pub async fn writer_task<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<()> {
    let mut pending: Vec<Bytes> = Vec::with_capacity(MAX_IOV);
    while let Some(first) = rx.recv().await {
        pending.extend(first);
        while pending.len() < MAX_IOV {
            match rx.try_recv() {
                Ok(more) => pending.extend(more),
                Err(_) => break,
            }
        }
        write_all_vectored(&mut w, &mut pending).await?;
    }
    w.flush().await?;
    w.shutdown().await
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut start = 0;
    while start < bufs.len() {
        let end = bufs.len().min(start + MAX_IOV);
        let slices: Vec<IoSlice<'_>> = bufs[start..end].iter().map(|b| IoSlice::new(b)).collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let b = &mut bufs[start];
            if n >= b.len() {
                n -= b.len();
                start += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
    bufs.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn truncated_pdu_is_an_error_and_clean_eof_is_not() {
        let mut buf = BytesMut::new();
        let mut empty: &[u8] = &[];
        assert!(read_pdu(&mut empty, &mut buf, &FrameLimits::LOGIN)
            .await
            .unwrap()
            .is_none());
        let mut half: &[u8] = &[0u8; 20];
        let err = read_pdu(&mut half, &mut buf, &FrameLimits::LOGIN)
            .await
            .unwrap_err();
        assert!(matches!(err, StreamError::Truncated(20)));
    }

    #[tokio::test]
    async fn writer_writes_everything_in_order() {
        let (client, mut server) = tokio::io::duplex(64);
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(writer_task(client, rx));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            server.read_to_end(&mut all).await.unwrap();
            all
        });
        for i in 0..50u8 {
            tx.send(vec![Bytes::from(vec![i; 10]), Bytes::from(vec![i; 3])])
                .await
                .unwrap();
        }
        drop(tx);
        task.await.unwrap().unwrap();
        let all = reader.await.unwrap();
        assert_eq!(all.len(), 50 * 13);
        assert!(all
            .chunks(13)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }
}
