//! Socket plumbing for one connection: reading whole PDUs into a buffer that
//! holds many, and a writer task that flushes many PDUs with one vectored
//! write (no syscall per PDU; ARCHITECTURE.md, "one command's path").

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::pdu::{decode_frame, FrameError, FrameLimits, RawPdu};
use drbd_like_sync::storage::FileRange;

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

/// One piece of a queued message: bytes in memory, or a cached range of a
/// backing file that the writer sends with sendfile(2) (zero-copy Data-In).
#[derive(Debug)]
pub enum Chunk {
    /// Bytes in memory.
    Mem(Bytes),
    /// A range of a backing file.
    File(FileRange),
}

impl From<Bytes> for Chunk {
    fn from(b: Bytes) -> Self {
        Chunk::Mem(b)
    }
}

/// The sending side of a connection: each message is the chunks of one or
/// more encoded PDUs, written in order.
pub type Outbox = mpsc::Sender<Vec<Chunk>>;

/// What the writer writes to: a byte stream that may also be able to send
/// a file range straight from the page cache.
pub trait Sink: AsyncWrite + Unpin + Send + Sized {
    /// Writes every chunk in order and empties `chunks`, failing with
    /// `TimedOut` when the stream takes no byte for `stall`. The default
    /// writes memory chunks vectored and reads file ranges into memory first
    /// (for in-memory streams in tests).
    fn write_chunks<'a>(
        &'a mut self,
        chunks: &'a mut Vec<Chunk>,
        stall: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let mut bufs = Vec::with_capacity(chunks.len());
            for chunk in chunks.drain(..) {
                bufs.push(match chunk {
                    Chunk::Mem(b) => b,
                    Chunk::File(r) => r.read_now().map_err(io::Error::other)?,
                });
            }
            write_all_vectored(self, &mut bufs, stall).await
        })
    }
}

impl Sink for tokio::io::DuplexStream {}

impl Sink for OwnedWriteHalf {
    fn write_chunks<'a>(
        &'a mut self,
        chunks: &'a mut Vec<Chunk>,
        stall: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            if chunks.iter().any(|c| matches!(c, Chunk::File(_))) {
                let sock: &TcpStream = (*self).as_ref();
                return writev_chunks(sock, chunks, stall).await;
            }
            let mut bufs: Vec<Bytes> = chunks
                .drain(..)
                .filter_map(|c| match c {
                    Chunk::Mem(b) => Some(b),
                    Chunk::File(_) => None,
                })
                .collect();
            write_all_vectored(self, &mut bufs, stall).await
        })
    }
}

/// writev(2) of memory chunks and file ranges together, in order, waiting
/// for room as needed. A file range goes in as its address in the file's
/// shared mapping, so the kernel copies the page cache straight into the
/// socket: one copy per byte, where reading into a buffer first makes two.
/// A page that cannot be read in fails the call with EFAULT, which ends the
/// connection like any socket error.
async fn writev_chunks(
    sock: &TcpStream,
    chunks: &mut Vec<Chunk>,
    stall: Duration,
) -> io::Result<()> {
    let mut start = 0usize; // first chunk not fully written
    let mut skip = 0usize; // bytes of it already written
    while start < chunks.len() {
        no_stall(stall, sock.writable()).await?;
        let written = sock.try_io(Interest::WRITABLE, || {
            // Built here, not kept across the await: iovecs hold raw pointers.
            let iov: Vec<libc::iovec> = chunks[start..]
                .iter()
                .take(MAX_IOV)
                .enumerate()
                .map(|(i, chunk)| {
                    let (ptr, len) = match chunk {
                        Chunk::Mem(b) => (b.as_ptr(), b.len()),
                        Chunk::File(r) => (r.kernel_ptr(), r.len()),
                    };
                    let cut = if i == 0 { skip } else { 0 };
                    libc::iovec {
                        iov_base: ptr.wrapping_add(cut) as *mut libc::c_void,
                        iov_len: len - cut,
                    }
                })
                .collect();
            // SAFETY: every iovec points into a chunk that `chunks` keeps alive
            // for the call: Bytes the kernel only reads, or a live range of
            // a mapping (FileRange::kernel_ptr).
            let n =
                unsafe { libc::writev(sock.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        let mut n = match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        while n > 0 {
            let len = match &chunks[start] {
                Chunk::Mem(b) => b.len(),
                Chunk::File(r) => r.len(),
            };
            if n >= len - skip {
                n -= len - skip;
                start += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
}

/// Runs the writer: takes every queued message, then writes them all with as
/// few vectored writes as possible. Ends when all senders are gone, after
/// flushing, or on a socket error. A peer that takes no byte for `stall`
/// (it stopped reading, or its host froze) ends it with `TimedOut`: the
/// queued data, and any page-cache ranges it holds, are dropped, and the
/// session ends when its outbox closes.
pub async fn writer_task<W: Sink>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<Chunk>>,
    stall: Duration,
) -> io::Result<()> {
    let mut pending: Vec<Chunk> = Vec::with_capacity(MAX_IOV);
    while let Some(first) = rx.recv().await {
        pending.extend(first);
        while pending.len() < MAX_IOV {
            match rx.try_recv() {
                Ok(more) => pending.extend(more),
                Err(_) => break,
            }
        }
        w.write_chunks(&mut pending, stall).await?;
    }
    no_stall(stall, w.flush()).await?;
    no_stall(stall, w.shutdown()).await
}

/// `op`, or `TimedOut` if it makes no progress within `stall`.
async fn no_stall<T>(stall: Duration, op: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(stall, op).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took no data for {stall:?}"),
        ))
    })
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut Vec<Bytes>,
    stall: Duration,
) -> io::Result<()> {
    let mut start = 0;
    while start < bufs.len() {
        let end = bufs.len().min(start + MAX_IOV);
        let slices: Vec<IoSlice<'_>> = bufs[start..end].iter().map(|b| IoSlice::new(b)).collect();
        let mut n = no_stall(stall, w.write_vectored(&slices)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
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
        let task = tokio::spawn(writer_task(client, rx, Duration::from_secs(30)));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            server.read_to_end(&mut all).await.unwrap();
            all
        });
        for i in 0..50u8 {
            tx.send(vec![
                Bytes::from(vec![i; 10]).into(),
                Bytes::from(vec![i; 3]).into(),
            ])
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
